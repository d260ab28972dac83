"""Classification through lm-eval: tasks by name, local tasks, and agreement with the `lm_eval` CLI.

The hub's MMLU/ARC/... cannot be reached here, so a task by name is exercised on lm-eval's own
ARC-Easy task config (`include:` of lm-eval's arc_easy.yaml) pointed at local files in ARC's real
format; the paper's task names are checked against lm-eval's task index, which is offline.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest
import yaml
from helpers.models import make_tiny_checkpoint

from layerprune.data.sources import prepare_lm_eval_task
from layerprune.evaluation.evaluate import evaluate_checkpoint, write_local_lm_eval_task
from layerprune.io import read_json, write_json, write_jsonl

REPO = Path(__file__).resolve().parents[1]
LM_EVAL_TASKS_DIR = Path(lm_eval.__file__).parent / "tasks"
VARIANT = {"model": "tiny", "method": "dense", "ratio": 0.0, "recovery": "none"}

# ARC rows exactly as allenai/ai2_arc stores them (words from the tiny tokenizer's corpus).
ARC_WORDS = ["fox", "dog", "world", "layer", "model", "network", "cache", "weights"]


def arc_rows(count: int, offset: int) -> list[dict]:
    rows = []
    for i in range(count):
        words = [ARC_WORDS[(i + offset + k) % len(ARC_WORDS)] for k in range(4)]
        rows.append(
            {
                "id": f"Mercury_{offset + i:07d}",
                "question": f"the quick brown {words[0]} jumps over the lazy",
                "choices": {"text": words, "label": ["A", "B", "C", "D"]},
                "answerKey": "ABCD"[(i + offset) % 4],
            }
        )
    return rows


def write_arc_task(directory: Path) -> Path:
    """A task YAML that inherits lm-eval's arc_easy config and reads local ARC-format JSONL."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, (count, offset) in {"train": (4, 100), "validation": (2, 200), "test": (8, 0)}.items():
        write_jsonl(directory / f"{split}.jsonl", arc_rows(count, offset))
        files[split] = str(directory / f"{split}.jsonl")
    config = {
        "include": str(LM_EVAL_TASKS_DIR / "arc" / "arc_easy.yaml"),
        "task": "arc_easy_local",
        "tag": [],
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": files},
    }
    (directory / "arc_easy_local.yaml").write_text(yaml.safe_dump(config))
    return directory


BIGBENCH_TASK = {
    "source": "bigbench:test/mc",
    "type": "classification",
    "num_fewshot": 1,
    "seed": 0,
    "fewshot": [{"id": 50, "input": "the lazy", "choices": ["dog", "fox"], "label": 0}],
    "samples": [
        {"id": i, "input": f"the quick brown {w}", "choices": ["fox", "dog", "world"], "label": i % 3}
        for i, w in enumerate(["fox", "dog", "hello", "layer", "model", "cache"])
    ],
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("dense") / "m", family="llama", num_layers=2)


@pytest.fixture(scope="module")
def arc_dir(tmp_path_factory) -> Path:
    return write_arc_task(tmp_path_factory.mktemp("arc"))


def test_prepare_lm_eval_task_pins_settings(tmp_path, arc_dir):
    spec = prepare_lm_eval_task("arc_easy_local", 5, 0.2, "acc_norm", arc_dir, 3, tmp_path / "t.json")
    assert read_json(tmp_path / "t.json") == spec
    assert spec == {
        "source": "lm_eval:arc_easy_local",
        "type": "classification",
        "lm_eval_task": "arc_easy_local",
        "include_path": str(arc_dir.resolve()),
        "num_fewshot": 5,
        "limit": 0.2,
        "metric": "acc_norm",
        "seed": 3,
    }
    assert prepare_lm_eval_task("mmlu", 5, 100.0, "acc", None, 0, tmp_path / "m.json")["limit"] == 100


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_task_by_name_on_arc_format_files(checkpoint, arc_dir, tmp_path):
    """lm-eval's own ARC-Easy config (prompt, choices, target) on local ARC rows, limit as a fraction."""
    prepare_lm_eval_task("arc_easy_local", 2, 0.5, "acc", arc_dir, 0, tmp_path / "task.json")
    result = evaluate_checkpoint(
        checkpoint, tmp_path / "task.json", "arc_easy", tmp_path / "r.json",
        batch_size=4, max_new_tokens=4, seed=0, dtype="float32", variant=VARIANT,
    )  # fmt: skip
    assert (result["type"], result["metric"], result["task"]) == ("classification", "accuracy", "arc_easy")
    assert result["softmax_dtype"] == "float32"  # lm-eval's log-softmax, whatever the model's dtype
    assert result["grader"].startswith(f"lm-eval {lm_eval.__version__} arc_easy_local acc")
    test_rows = arc_rows(8, 0)
    assert result["n"] == 4  # limit 0.5 of 8 test rows: lm-eval takes the first ones
    assert [s["id"] for s in result["samples"]] == [row["id"] for row in test_rows[:4]]
    for sample, row in zip(result["samples"], test_rows, strict=False):
        assert sample["prompt"].endswith(f"Question: {row['question']}\nAnswer:")
        assert sample["prompt"].count("Question:") == 3  # two shots from the train split
        assert sample["target"] == row["choices"]["text"]["ABCD".index(row["answerKey"])]
        best = max(range(4), key=sample["loglikelihoods"].__getitem__)
        assert sample["output"] == row["choices"]["text"][best]
        assert sample["correct"] is (best == "ABCD".index(row["answerKey"]))
    assert result["value"] == pytest.approx(sum(s["correct"] for s in result["samples"]) / 4)


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_unknown_lm_eval_task_names_the_key(checkpoint, tmp_path):
    prepare_lm_eval_task("no_such_task_xyz", 0, None, "acc", None, 0, tmp_path / "task.json")
    with pytest.raises(KeyError, match="lm_eval_task.*no_such_task_xyz"):
        evaluate_checkpoint(
            checkpoint, tmp_path / "task.json", "x", tmp_path / "r.json",
            batch_size=4, max_new_tokens=4, seed=0, dtype="float32", variant=VARIANT,
        )  # fmt: skip


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_paper_classification_tasks_are_lm_eval_tasks():
    """Every lm_eval_task of configs/paper.yaml is in lm-eval's (offline) task index."""
    from lm_eval.tasks import TaskManager

    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    names = {t["lm_eval_task"] for t in paper["tasks"].values() if "lm_eval_task" in t}
    assert names == {"mmlu", "arc_challenge", "arc_easy", "hellaswag", "winogrande", "piqa", "openbookqa"}
    known = set(TaskManager().all_tasks)
    assert names <= known, names - known
    for settings in paper["tasks"].values():
        if "lm_eval_task" in settings:
            assert (settings["num_fewshot"], settings["limit"]) == (5, 0.2)


def run_lm_eval_cli(checkpoint: Path, task: str, include_path: Path, num_fewshot: int, limit, out: Path) -> tuple:
    """The `lm_eval` command line as a user types it; returns (acc, {doc id: loglikelihoods})."""
    command = [
        str(Path(sys.executable).parent / "lm_eval"),
        "--model", "hf", "--model_args", f"pretrained={checkpoint},dtype=float32",
        "--tasks", task, "--include_path", str(include_path), "--num_fewshot", str(num_fewshot),
        "--batch_size", "4", "--seed", "0", "--output_path", str(out), "--log_samples", "--device", "cpu",
    ]  # fmt: skip
    if limit is not None:
        command += ["--limit", str(limit)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()]
    lls = {s["doc"].get("id", s["doc_id"]): [float(r[0]) for r in s["filtered_resps"]] for s in samples}
    return results["results"][task]["acc,none"], lls


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bigbench_local", "arc_by_name"])
def test_pipeline_agrees_with_lm_eval_cli(checkpoint, arc_dir, tmp_path, kind):
    """Same checkpoint, task, shots, limit and seed: the pipeline's numbers are lm_eval's numbers."""
    if kind == "bigbench_local":
        task_dir = tmp_path / "local"
        task_dir.mkdir()
        lm_eval_name = write_local_lm_eval_task(BIGBENCH_TASK, "mc", task_dir)
        write_json(tmp_path / "task.json", BIGBENCH_TASK)
        num_fewshot, limit = BIGBENCH_TASK["num_fewshot"], None
    else:
        task_dir, lm_eval_name, num_fewshot, limit = arc_dir, "arc_easy_local", 3, 0.75
        prepare_lm_eval_task(lm_eval_name, num_fewshot, limit, "acc", arc_dir, 0, tmp_path / "task.json")
    result = evaluate_checkpoint(
        checkpoint, tmp_path / "task.json", "mc", tmp_path / "r.json",
        batch_size=4, max_new_tokens=4, seed=0, dtype="float32", variant=VARIANT,
    )  # fmt: skip
    cli_acc, cli_lls = run_lm_eval_cli(checkpoint, lm_eval_name, task_dir, num_fewshot, limit, tmp_path / "cli")
    assert result["value"] == cli_acc
    pipeline_lls = {s["id"]: s["loglikelihoods"] for s in result["samples"]}
    assert sorted(pipeline_lls, key=str) == sorted(cli_lls, key=str)
    for doc_id, lls in pipeline_lls.items():
        assert lls == pytest.approx(cli_lls[doc_id], abs=1e-5)
    assert len(cli_lls) == result["n"] > 0 and not math.isnan(result["stderr"])


@pytest.mark.slow  # lm-eval indexes its ~10k task YAMLs twice (~80 s on 2 busy cores)
def test_fetch_lm_eval_data_builds_each_named_task_and_skips_the_others(arc_dir, tmp_path, capsys):
    """The offline-cluster step: every lm-eval task of the task files is built (its data loaded, here from
    local files), BIG-bench task files are skipped, an unknown task names its file."""
    from layerprune.cli import main

    prepare_lm_eval_task("arc_easy_local", 2, 0.5, "acc", arc_dir, 0, tmp_path / "arc.json")
    write_json(tmp_path / "plural.json", {"type": "generative", "samples": []})
    main(["fetch-lm-eval-data", str(tmp_path / "arc.json"), str(tmp_path / "plural.json")])
    assert capsys.readouterr().out.splitlines() == [
        "arc_easy_local: 8 documents",
        "layerprune fetch-lm-eval-data: 1 lm-eval task(s) in the datasets cache",
    ]
    prepare_lm_eval_task("no_such_task_xyz", 0, None, "acc", None, 0, tmp_path / "bad.json")
    with pytest.raises(KeyError, match=r"bad.json: lm-eval knows no task or group 'no_such_task_xyz'"):
        main(["fetch-lm-eval-data", str(tmp_path / "bad.json")])


def long_task(longest: int) -> dict:
    """A local multiple-choice task whose inputs run from 4 words up to `longest` (tiny tokenizer: a word a token)."""
    words = " ".join(" ".join(line for line in ARC_WORDS) for _ in range(longest)).split()
    lengths = [4 + (longest - 4) * i // 9 for i in range(10)]
    return {
        **BIGBENCH_TASK,
        "samples": [
            {"id": i, "input": " ".join(words[i : i + n]), "choices": ["fox", "dog", "world"], "label": i % 3}
            for i, n in enumerate(lengths)
        ],
    }


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_lm_eval_batches_are_sized_by_a_token_budget(checkpoint, monkeypatch):
    """evaluation.max_batch_tokens: each lm-eval forward pass holds rows x padded length within the budget
    (one row at least), so a task's batches shrink as its longest request grows; the scores are those of a
    fixed batch size."""
    from lm_eval.models.huggingface import HFLM

    from layerprune.evaluation.evaluate import evaluate_classification
    from layerprune.models.checkpoints import load_checkpoint

    shapes: list[tuple[int, int]] = []
    model_call = HFLM._model_call

    def recording_call(self, inps, *args, **kwargs):
        shapes.append(tuple(inps.shape))
        return model_call(self, inps, *args, **kwargs)

    monkeypatch.setattr(HFLM, "_model_call", recording_call)
    model, tokenizer = load_checkpoint(checkpoint, dtype="float32")
    budget, first_rows = 96, []
    for longest in (12, 30, 60):
        task = long_task(longest)
        shapes.clear()
        budgeted = evaluate_classification(model, tokenizer, task, "long", 8, 0, max_batch_tokens=budget)
        forwards = list(shapes)
        assert sum(rows for rows, _ in forwards) == len(task["samples"])  # one row per context (one-token choices)
        for rows, length in forwards:
            assert rows * length <= budget or rows == 1, forwards
            assert rows == min(8, max(1, budget // length)) or rows == len(task["samples"]) - sum(
                r for r, _ in forwards[:-1]
            ), forwards
        first_rows.append(forwards[0][0])
        shapes.clear()
        fixed = evaluate_classification(model, tokenizer, task, "long", 8, 0)
        assert [rows for rows, _ in shapes] == [8, 2]  # batch_size alone, as before
        assert budgeted["value"] == fixed["value"]
        for ours, theirs in zip(budgeted["samples"], fixed["samples"], strict=True):
            assert (ours["id"], ours["output"], ours["correct"]) == (theirs["id"], theirs["output"], theirs["correct"])
            assert ours["loglikelihoods"] == pytest.approx(theirs["loglikelihoods"], abs=1e-5)
    assert first_rows[0] > first_rows[1] > first_rows[2] >= 1, first_rows


def test_cli_evaluate_passes_max_batch_tokens_to_lm_eval(checkpoint, tmp_path, monkeypatch):
    """`layerprune evaluate --max-batch-tokens` (what the workflow's settings become) bounds lm-eval's batches
    and is recorded in the result."""
    from lm_eval.models.huggingface import HFLM

    from layerprune.cli import main

    shapes: list[tuple[int, int]] = []
    model_call = HFLM._model_call
    monkeypatch.setattr(
        HFLM, "_model_call", lambda self, inps, *a, **k: shapes.append(inps.shape) or model_call(self, inps, *a, **k)
    )
    write_json(tmp_path / "task.json", long_task(30))
    main(
        ["evaluate", "--model", str(checkpoint), "--task-file", str(tmp_path / "task.json"), "--task-name", "long",
         "--model-name", "tiny", "--batch-size", "8", "--max-batch-tokens", "80", "--dtype", "float32",
         "--threads", "1", "--out", str(tmp_path / "r.json")]
    )  # fmt: skip
    assert len(shapes) > 2 and all(rows * length <= 80 or rows == 1 for rows, length in shapes), shapes
    result = read_json(tmp_path / "r.json")
    assert result["settings"]["max_batch_tokens"] == 80 and result["n"] == 10
