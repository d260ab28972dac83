"""configs/paper.yaml is the authors' setup, and the paper-mini fixtures (tests/fixtures/paper_mini)
load through the real loaders: our task preparation, lm-eval by task name over local rows, the
code sandbox, the hub-format prompt set and its per-model length filter, the iterative probes.

The fixtures' rows follow the hub datasets' schemas; the tiny model is built from
tests/fixtures/paper_mini/build.py (seeded, a word-level tokenizer over the fixtures' text).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import lm_eval
import pytest
import yaml

from layerprune.data.sources import (
    filter_prompt_set,
    holdout_split,
    prepare_lm_eval_task,
    prepare_prompt_set,
    prompt_token_ids,
)
from layerprune.evaluation.evaluate import evaluate_checkpoint
from layerprune.evaluation.generative import Sampling
from layerprune.evaluation.graders import grade_code
from layerprune.evaluation.sandbox import SandboxLimits
from layerprune.evaluation.tasks import prepare_task_spec, read_rows, task_sample_ids
from layerprune.io import read_json, read_jsonl
from layerprune.scoring.iterative import iterative_removal, load_probe_tasks

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "tests" / "fixtures" / "paper_mini"
sys.path.insert(0, str(MINI))
import build  # noqa: E402
import rows  # noqa: E402

PAPER = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
PAPER_TEXT = (REPO / "configs" / "paper.yaml").read_text()
MINI_CONFIG = build.load_config()
LM_EVAL_TASKS_DIR = Path(lm_eval.__file__).parent / "tasks"
PAPER_SAMPLING = {"temperature": 0.9, "top_k": 50, "top_p": 1.0}
VARIANT = {"model": "tiny", "method": "dense", "ratio": 0.0, "recovery": "none"}
LIMITS = SandboxLimits(timeout_s=30, cpu_s=30, memory_mb=1024, nproc=16)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build.build_model(tmp_path_factory.mktemp("paper-mini") / "model")


# ------------------------------------------------------------------ paper.yaml


def test_paper_iterative_probes_are_the_authors():
    iterative = PAPER["scoring"]["iterative"]
    assert iterative == {
        "probe_tasks": ["gsm8k_probe", "humaneval_plus_probe", "xsum_probe"],
        "num_samples": 100,
        "probe_batch_size": 50,  # ours: one probe in 2 generation batches (bench/cost_model.py)
        # layer_pruner/script.py: mean of pruned / dense, ties to the later layer, layer 0 kept
        "criterion": "mean_ratio",
        "tie_break": "later",
        "keep_first_layer": True,
    }
    expected = {
        "gsm8k_probe": ("gsm8k", "openai/gsm8k", "train"),
        "humaneval_plus_probe": ("humaneval", "evalplus/humanevalplus", "test"),
        "xsum_probe": ("xsum", "EdinburghNLP/xsum", "validation"),
    }
    for name, (dataset, hub, split) in expected.items():
        task = PAPER["tasks"][name]
        assert (task["dataset"], task["hub"], task["split"], task["limit"]) == (dataset, hub, split, 100)
        assert {key: task[key] for key in PAPER_SAMPLING} == PAPER_SAMPLING and task["prompting"] == "chat"
    # the paper's selection rule is the library's default
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(iterative_removal).parameters.items()
        if name in ("criterion", "tie_break", "keep_first_layer")
    }
    assert defaults == {"criterion": "mean_ratio", "tie_break": "later", "keep_first_layer": True}
    # and paper.yaml sets it (and the SFT eval split) as config keys, not comments
    assert PAPER["recovery"]["eval_fraction"] == 0.1
    probes = PAPER["scoring"]["iterative"]["probe_tasks"]
    assert all(PAPER["tasks"][name]["evaluate"] is False for name in probes)  # prepared, never evaluated


def test_paper_sgr_recovery_and_evaluation_settings():
    prompts, selfgen, recovery = PAPER["prompts"], PAPER["selfgen"], PAPER["recovery"]
    assert (prompts["path"], prompts["prompt_fields"], prompts["response_field"]) == (
        "yahma/alpaca-cleaned",
        ["instruction", "input"],
        "output",
    )
    assert (prompts["system_prompt"], prompts["max_prompt_tokens"]) == ("You are a helpful assistant.", 8000)
    assert (selfgen["temperature"], selfgen["top_p"]) == (0.9, 0.95)
    assert recovery["trainer"] == "qlora" and recovery["lr_scheduler"] == "constant_with_warmup"
    assert (recovery["lora_r"], recovery["lora_alpha"], recovery["lora_dropout"]) == (64, 16, 0.05)
    assert (recovery["batch_size"], recovery["grad_accum"], recovery["num_epochs"]) == (4, 2, 1)
    tasks = PAPER["tasks"]
    metrics = {name: t["lm_eval_metric"] for name, t in tasks.items() if "lm_eval_task" in t}
    assert metrics == {
        "mmlu": "acc",
        "arc_challenge": "acc_norm",
        "arc_easy": "acc",
        "hellaswag": "acc_norm",
        "winogrande": "acc",
        "piqa": "acc",
        "openbookqa": "acc_norm",
    }
    limits = {name: tasks[name].get("limit") for name in ("gsm8k", "math500", "humaneval_plus", "mbpp_plus", "xsum")}
    assert limits == {"gsm8k": 1000, "math500": None, "humaneval_plus": None, "mbpp_plus": None, "xsum": 1000}
    for name in limits:
        assert {key: tasks[name][key] for key in PAPER_SAMPLING} == PAPER_SAMPLING
        assert tasks[name].get("num_samples", 1) == 1
    assert PAPER["evaluation"]["sandbox"]["timeout_s"] == 30
    probe = tasks["arithmetic_probe"]
    assert (probe["grader"], probe["num_fewshot"], len(probe["builtin_task"])) == ("first_digit", 3, 3)


def test_paper_yaml_names_its_sources():
    """Every group of settings names the file of the authors' repository it comes from."""
    for source in (
        "layer_pruner/script.py",
        "layer_pruner/input_config.yaml",
        "layer_pruner/utils/dataset_loader.py",
        "self_generate/generate_responses.py",
        "self_generate/job_filter.sh",
        "train/sft_trainer.py",
        "train/8reverse_lora_self_dolci_llama.sh",
        "eval/classif_eval/classif_job_lmeval.sh",
        "eval/gen_eval/job_eval.sh",
        "analysis/arithmetic_ablation.ipynb",
    ):
        assert source in PAPER_TEXT, source


# ------------------------------------------------------------------ paper-mini config


def test_paper_mini_config_mirrors_paper_yaml():
    from snakemake.utils import validate

    mini = yaml.safe_load((MINI / "config.yaml").read_text())
    validate(mini, str(REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=False)
    assert mini["scoring"]["methods"] == PAPER["scoring"]["methods"]
    assert mini["scoring"]["iterative"]["probe_tasks"] == PAPER["scoring"]["iterative"]["probe_tasks"]
    assert mini["recovery"]["trainer"] == "qlora" and mini["recovery"]["methods"] == PAPER["recovery"]["methods"]
    assert set(mini["recovery"]) == set(PAPER["recovery"])
    same = ("source", "prompt_fields", "response_field", "separator", "system_prompt", "split")
    assert {k: mini["prompts"][k] for k in same} == {k: PAPER["prompts"][k] for k in same}
    assert {rule: set(r) for rule, r in mini["resources"].items()} == {
        rule: set(r) for rule, r in PAPER["resources"].items()
    }
    data_source = {"hub", "hub_config", "split", "file", "lm_eval_include_path"}
    assert set(mini["tasks"]) <= set(PAPER["tasks"])
    assert {"winogrande", "piqa", "openbookqa"} == set(PAPER["tasks"]) - set(mini["tasks"])  # no fixtures
    for name, task in mini["tasks"].items():
        paper = PAPER["tasks"][name]
        assert set(task) - data_source == set(paper) - data_source, name
        for key in ("type", "dataset", "lm_eval_task", "lm_eval_metric", "prompting", "grader", "num_fewshot"):
            assert task.get(key) == paper.get(key), (name, key)
        for key in ("temperature", "top_k", "top_p"):
            assert task.get(key) == paper.get(key), (name, key)
        if "lm_eval_task" in task or "file" in task:
            assert task.get("limit") == paper.get("limit"), name
    for path in (
        [t["file"] for t in MINI_CONFIG["tasks"].values() if "file" in t]
        + [t["lm_eval_include_path"] for t in MINI_CONFIG["tasks"].values() if "lm_eval_include_path" in t]
        + [MINI_CONFIG["prompts"]["path"]]
    ):
        assert Path(path).exists(), path


# ------------------------------------------------------------------ fixtures: formats


HUB_COLUMNS = {
    "gsm8k/main/train-00000-of-00001.parquet": ["question", "answer"],
    "math500/test.jsonl": ["problem", "solution", "answer", "subject", "level", "unique_id"],
    "humanevalplus/test-00000-of-00001.parquet": ["task_id", "prompt", "canonical_solution", "entry_point", "test"],
    "mbppplus/test-00000-of-00001.parquet": [
        "task_id",
        "code",
        "prompt",
        "source_file",
        "test_imports",
        "test_list",
        "test",
    ],
    "xsum/validation-00000-of-00001.parquet": ["document", "summary", "id"],
    "ai2_arc/ARC-Challenge/test-00000-of-00001.parquet": ["id", "question", "choices", "answerKey"],
    "hellaswag/validation-00000-of-00001.parquet": [
        "ind",
        "activity_label",
        "ctx_a",
        "ctx_b",
        "ctx",
        "endings",
        "source_id",
        "split",
        "split_type",
        "label",
    ],
    "mmlu/high_school_geography/dev-00000-of-00001.parquet": ["question", "subject", "choices", "answer"],
}


@pytest.mark.parametrize("relative", sorted(HUB_COLUMNS))
def test_fixture_files_have_the_hub_schemas(relative):
    loaded = read_rows(MINI / "data" / relative)
    assert loaded and all(list(row) == HUB_COLUMNS[relative] for row in loaded)


def test_fixture_files_hold_the_rows_and_types():
    assert read_rows(MINI / "data" / "gsm8k/main/test-00000-of-00001.parquet") == rows.GSM8K["test"]
    mbpp = read_rows(MINI / "data" / "mbppplus/test-00000-of-00001.parquet")
    assert isinstance(mbpp[0]["task_id"], int) and isinstance(mbpp[0]["test_list"], list)
    hellaswag = read_rows(MINI / "data" / "hellaswag/validation-00000-of-00001.parquet")
    assert all(isinstance(row["label"], str) for row in hellaswag)  # a string in Rowan/hellaswag
    arc = read_rows(MINI / "data" / "ai2_arc/ARC-Easy/train-00000-of-00001.parquet")
    assert arc[0]["choices"] == {"text": ["roots", "leaves", "flowers", "seeds"], "label": ["A", "B", "C", "D"]}
    alpaca = read_rows(MINI / "data" / "alpaca-cleaned", split="train")
    assert alpaca == rows.ALPACA_CLEANED["train"] and list(alpaca[0]) == ["output", "input", "instruction"]


# ------------------------------------------------------------------ fixtures: through the loaders


GENERATIVE = [name for name, task in MINI_CONFIG["tasks"].items() if task["type"] == "generative" and "file" in task]


@pytest.mark.parametrize("name", GENERATIVE)
def test_generative_fixtures_prepare_through_the_task_loader(name, tmp_path):
    spec = MINI_CONFIG["tasks"][name]
    task = prepare_task_spec(spec, tmp_path / "bigbench", MINI_CONFIG["seed"], tmp_path / f"{name}.json")
    assert read_json(tmp_path / f"{name}.json") == task
    assert task["source"] == f"file:{spec['file']}" and task["grader"] in ("math_verify", "code", "rouge_l")
    source_rows = read_rows(spec["file"])
    assert len(task["samples"]) == min(len(source_rows), spec.get("limit") or len(source_rows))
    for sample in task["samples"]:
        assert sample["input"] and sample["targets"][0]


def test_gsm8k_targets_are_the_final_numbers(tmp_path):
    task = prepare_task_spec(MINI_CONFIG["tasks"]["gsm8k"], tmp_path, 0, tmp_path / "g.json")
    by_question = {s["input"]: s for s in task["samples"]}
    farmer = by_question["A farmer has 1,200 eggs and sells 200 of them. How many eggs are left?"]
    assert farmer["targets"] == ["1000"] and "<<" not in farmer["solution"]


@pytest.mark.parametrize("name", ["humaneval_plus", "mbpp_plus"])
def test_code_fixtures_pass_their_own_tests(name, tmp_path):
    """The canonical solutions pass their real tests in the sandbox (30 s, the paper's timeout); a wrong one fails."""
    task = prepare_task_spec(MINI_CONFIG["tasks"][name], tmp_path, 0, tmp_path / "c.json")
    for sample in task["samples"]:
        assert grade_code(sample, sample["solution"], False, LIMITS)["error_bucket"] == "pass", sample["id"]
    sample = task["samples"][0]
    wrong = "    return None\n" if name == "humaneval_plus" else sample["solution"].replace("return", "return None and")
    assert grade_code(sample, wrong, False, LIMITS)["error_bucket"] != "pass"


def test_probe_and_evaluation_can_be_disjoint(tmp_path):
    """A held-out HumanEval+: the probe's problems leave the evaluated pool (the authors' probe does not)."""
    probe_spec = {**MINI_CONFIG["tasks"]["humaneval_plus_probe"], "limit": 2}
    probe = prepare_task_spec(probe_spec, tmp_path, 0, tmp_path / "probe.json")
    leaky = prepare_task_spec(MINI_CONFIG["tasks"]["humaneval_plus"], tmp_path, 0, tmp_path / "leaky.json")
    held_out = prepare_task_spec(
        MINI_CONFIG["tasks"]["humaneval_plus"],
        tmp_path,
        0,
        tmp_path / "held_out.json",
        exclude_ids=task_sample_ids([tmp_path / "probe.json"]),
    )
    probe_ids = {s["id"] for s in probe["samples"]}
    assert probe_ids <= {s["id"] for s in leaky["samples"]}  # train = test
    assert not probe_ids & {s["id"] for s in held_out["samples"]}
    assert len(held_out["samples"]) == len(leaky["samples"]) - 2
    with pytest.raises(ValueError, match="every row is excluded"):
        prepare_task_spec(
            MINI_CONFIG["tasks"]["humaneval_plus"], tmp_path, 0, tmp_path / "x.json",
            exclude_ids=task_sample_ids([tmp_path / "leaky.json"]),
        )  # fmt: skip


def test_alpaca_prompt_set_and_the_models_own_length_filter(model_dir, tmp_path):
    prompts = MINI_CONFIG["prompts"]
    count = prepare_prompt_set(
        None, None, 8, 0, tmp_path / "prompts.jsonl",
        system_prompt=prompts["system_prompt"], source="hub", path=prompts["path"], split="train",
        prompt_fields=prompts["prompt_fields"], response_field=prompts["response_field"],
        separator=prompts["separator"],
    )  # fmt: skip
    records = read_jsonl(tmp_path / "prompts.jsonl")
    assert count == len(records) == 8
    by_user = {r["prompt"][1]["content"]: r for r in records}
    assert by_user["Add the two numbers.\n5 and 7"]["completion"][0]["content"] == "The sum is 12."
    assert all(r["prompt"][0] == {"role": "system", "content": "You are a helpful assistant."} for r in records)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = sorted(len(prompt_token_ids(tokenizer, r["prompt"])) for r in records)
    limit = lengths[len(lengths) // 2]  # keeps about half, by the model's own count
    stats = filter_prompt_set(
        tmp_path / "prompts.jsonl", model_dir, limit, tmp_path / "kept.jsonl", tmp_path / "s.json"
    )
    kept = read_jsonl(tmp_path / "kept.jsonl")
    assert stats["kept"] == len(kept) == sum(length <= limit for length in lengths) < 8
    assert all(len(prompt_token_ids(tokenizer, r["prompt"])) <= limit for r in kept)


# lm-eval by task name over the fixture rows: (task, metric, evaluated docs with limit 0.2)
LM_EVAL_CASES = [
    ("arc_challenge", "acc_norm", 1),
    ("arc_easy", "acc", 1),
    ("hellaswag", "acc_norm", 1),
    ("mmlu", "acc", 2),
]


@pytest.mark.parametrize(("name", "metric", "count"), LM_EVAL_CASES)
@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_lm_eval_tasks_by_name_over_local_rows(name, metric, count, model_dir, tmp_path):
    spec = MINI_CONFIG["tasks"][name]
    prepare_lm_eval_task(
        spec["lm_eval_task"], spec["num_fewshot"], spec["limit"], metric, spec["lm_eval_include_path"], 0,
        tmp_path / "task.json",
    )  # fmt: skip
    result = evaluate_checkpoint(
        model_dir, tmp_path / "task.json", name, tmp_path / "r.json", batch_size=4, max_new_tokens=4, seed=0,
        dtype="float32", variant=VARIANT,
    )  # fmt: skip
    assert result["n"] == count and result["lm_eval_task"] == name
    assert result["metric"] == {"acc": "accuracy", "acc_norm": "accuracy_norm"}[metric]
    assert result["grader"] == f"lm-eval {lm_eval.__version__} {name} {metric}"
    prompt = result["samples"][0]["prompt"]
    if name.startswith("arc"):
        assert prompt.count("Question:") == 6 and prompt.endswith("\nAnswer:")  # 5 shots + the question
    elif name == "mmlu":
        assert {s["subtask"] for s in result["samples"]} == {
            "mmlu_elementary_mathematics",
            "mmlu_high_school_geography",
        }
        assert prompt.count("Answer:") == 6
    else:
        assert prompt.count("\n\n") == 5  # lm-eval's process_docs query, 5 shots


def _lm_eval_reference(name: str) -> Path:
    if name.startswith("mmlu_"):
        return LM_EVAL_TASKS_DIR / "mmlu" / "default" / f"{name}.yaml"
    return {
        "arc_easy": LM_EVAL_TASKS_DIR / "arc" / "arc_easy.yaml",
        "arc_challenge": LM_EVAL_TASKS_DIR / "arc" / "arc_challenge.yaml",
        "hellaswag": LM_EVAL_TASKS_DIR / "hellaswag" / "hellaswag.yaml",
        "mmlu": LM_EVAL_TASKS_DIR / "mmlu" / "default" / "_mmlu.yaml",
    }[name]


@pytest.mark.parametrize("path", sorted((MINI / "lm_eval").glob("*.yaml")), ids=lambda p: p.stem)
def test_fixture_lm_eval_tasks_are_lm_evals_own_but_for_the_data(path):
    """Same prompts, choices, targets, splits, few-shot and metrics as the lm-eval task they override."""
    from lm_eval.tasks._yaml_loader import load_yaml

    ours = load_yaml(path, resolve_func=False)
    reference = load_yaml(_lm_eval_reference(path.stem), resolve_func=False)
    data_only = {"custom_dataset", "dataset_kwargs", "process_docs", "tag", "task_alias"}
    if path.stem == "mmlu":  # lm-eval's group nests stem/other/...; ours lists the two subjects directly
        data_only |= {"task"}
    assert {k: v for k, v in ours.items() if k not in data_only} == {
        k: v for k, v in reference.items() if k not in data_only
    }
    if "process_docs" in reference:
        assert str(ours["process_docs"]).endswith("hellaswag_process_docs")


# ------------------------------------------------------------------ the paper's probes on the fixtures


def test_paper_probes_run_on_the_fixtures(model_dir, tmp_path):
    """The three probes of the paper (GSM8K train, HumanEval+, XSum validation), prepared from the
    fixtures and generated with their tasks' chat prompting and T 0.9 / top-k 50 / top-p 1 sampling."""
    from layerprune.models.checkpoints import load_checkpoint

    names = MINI_CONFIG["scoring"]["iterative"]["probe_tasks"]
    paths, samplings = [], []
    for name in names:
        spec = {**MINI_CONFIG["tasks"][name], "max_new_tokens": 12}
        prepare_task_spec(spec, tmp_path, MINI_CONFIG["seed"], tmp_path / f"{name}.json")
        paths.append(tmp_path / f"{name}.json")
        samplings.append(Sampling(spec["temperature"], spec["top_k"], spec["top_p"]))
    probes = load_probe_tasks(paths, 2, 12, prompting="chat", sampling=samplings)
    model, tokenizer = load_checkpoint(model_dir, dtype="float32")
    try:
        result = iterative_removal(model, tokenizer, probes, max_k=1, batch_size=2)
    except ValueError as error:  # a random model may score 0 on every probe
        assert "no probe task has nonzero dense accuracy" in str(error)
        pytest.skip("the tiny random model scores 0 on every probe")
    assert set(result["dense_accuracy"]) == set(names)
    assert all(g["prompting"] == "chat" and g["sampling"]["top_k"] == 50 for g in result["probe_generation"].values())
    assert sorted(result["rounds"][0]["retention"], key=int) == ["1", "2", "3"]


# ------------------------------------------------------------------ SFT held-out split


def test_holdout_split_is_the_authors_ten_percent():
    records = [{"i": i} for i in range(25)]
    train, held = holdout_split(records, 0.1, seed=0)
    assert len(held) == 2 and len(train) == 23  # max(1, int(25 * 0.1))
    assert sorted(r["i"] for r in train + held) == list(range(25))
    assert holdout_split(records, 0.1, seed=0) == (train, held)
    assert holdout_split(records, 0.1, seed=1) != (train, held)
    assert len(holdout_split(records[:5], 0.1, seed=0)[1]) == 1  # at least one
    assert holdout_split(records, 0.0, seed=0) == (records, [])
    with pytest.raises(ValueError, match="recovery.eval_fraction must lie in"):
        holdout_split(records, 1.0, seed=0)


@pytest.mark.slow  # a dry run of the paper's grid (~20 s)
def test_documented_offline_fetch_step_plans_only_downloads(tmp_path):
    """The fetch step for clusters without internet (docs/cluster.md), as typed (plus -n): it plans the model
    downloads and data preparation, and not one scoring, generation, training or evaluation job."""
    import re
    import shlex
    import shutil

    from helpers.workflow import REPO, jobs_of, run, workflow_copy

    readme = (REPO / "docs" / "cluster.md").read_text()
    (command,) = re.findall(
        r"^\s*(snakemake --cores 2 --configfile configs/paper.yaml --omit-from .+)$", readme, flags=re.M
    )
    workdir = workflow_copy(tmp_path / "wf")
    shutil.copytree(REPO / "configs", workdir / "configs")
    argv = shlex.split(command)
    output = run([str(Path(sys.executable).parent / argv[0]), *argv[1:], "-n"], workdir)
    planned = set(jobs_of(output.stdout + output.stderr))
    assert planned == {"build_task", "materialize", "prepare_task", "prepare_lm_eval_task",
                       "prepare_prompts", "filter_prompts", "prepare_calibration"}  # fmt: skip
    # the lm-eval step's glob names the prepared tasks where prepare_task writes them
    (fetch,) = re.findall(r"^\s*layerprune fetch-lm-eval-data (\S+)$", readme, flags=re.M)
    assert re.search(r"output: " + fetch.replace("*", "[0-9a-f]+", 1).replace("*", r"\w+"), output.stdout)
