"""Generative evaluation end to end on a tiny random Llama: sampling, pass@k, buckets, breakdowns, chat."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
import torch
from helpers.models import CHAT_TEMPLATE, make_tiny_checkpoint
from helpers.records import WORDS
from transformers import AutoModelForCausalLM, AutoTokenizer

from layerprune.evaluation.generative import Sampling, evaluate_generative, shared_prefix_length
from layerprune.evaluation.graders import ERROR_BUCKETS
from layerprune.evaluation.sandbox import SandboxLimits
from layerprune.evaluation.tasks import prepare_task_spec

LIMITS = SandboxLimits(timeout_s=5, cpu_s=5, memory_mb=1024, nproc=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("gen") / "m", family="llama", num_layers=2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def humaneval(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("he")
    return prepare_task_spec(
        {"type": "generative", "dataset": "humaneval", "num_fewshot": 0, "limit": 2}, tmp, 0, tmp / "t.json"
    )


def test_code_task_with_sampling_pass_at_k_and_buckets(tiny, humaneval):
    model, tokenizer = tiny
    sampling = Sampling(temperature=0.9, top_k=50, num_samples=3)
    kwargs = dict(prompting="fewshot", sampling=sampling, pass_k=[1, 2, 5], sandbox=LIMITS, progress=False)
    result = evaluate_generative(model, tokenizer, humaneval, 6, 2, seed=1, **kwargs)
    assert result["metric"] == "pass@1" and result["grader"] == "code" and result["prompting"] == "fewshot"
    assert set(result["pass_at_k"]) == {"1", "2"}, "k above the number of samples is left out"
    assert result["value"] == pytest.approx(result["pass_at_k"]["1"])
    assert sum(result["error_buckets"].values()) == 6 and set(result["error_buckets"]) == set(ERROR_BUCKETS)
    assert result["sandbox"]["isolation"]["namespaces"] in (True, False)
    assert result["sandbox"]["isolation_level"] == "strict" and result["sandbox"]["isolation"]["level"] == "strict"
    for record, sample in zip(result["samples"], humaneval["samples"], strict=True):
        assert record["id"] == sample["id"] and len(record["outputs"]) == 3 and record["num_samples"] == 3
        assert record["output"] == record["outputs"][0] and record["error_bucket"] == record["error_buckets"][0]
        assert record["passed"] == record["error_buckets"].count("pass")
        assert record["program"].startswith(sample["code"]["prompt"])
        assert record["correct"] is (record["error_bucket"] == "pass")
    again = evaluate_generative(model, tokenizer, humaneval, 6, 2, seed=1, **kwargs)
    assert [r["outputs"] for r in again["samples"]] == [r["outputs"] for r in result["samples"]], "seeded sampling"
    other = evaluate_generative(model, tokenizer, humaneval, 6, 2, seed=2, **kwargs)
    assert [r["outputs"] for r in other["samples"]] != [r["outputs"] for r in result["samples"]]
    with pytest.raises(ValueError, match="temperature > 0"):
        evaluate_generative(model, tokenizer, humaneval, 6, 2, sampling=Sampling(num_samples=2), progress=False)


def arithmetic_task() -> dict:
    samples = []
    for i, (op, digits) in enumerate([("addition", 2), ("addition", 3), ("multiplication", 2), ("multiplication", 2)]):
        samples.append(
            {"id": i, "input": " ".join(WORDS[i : i + 3]), "targets": [str(10 + i)], "digits": digits, "operation": op}
        )
    return {
        "source": "bigbench:test",
        "type": "generative",
        "dataset": "bigbench",
        "grader": "exact_match",
        "num_fewshot": 1,
        "fewshot": [{"id": 9, "input": "the quick brown", "targets": ["fox"]}],
        "samples": samples,
    }


def test_arithmetic_breakdown_by_operation_and_digits(tiny):
    model, tokenizer = tiny
    task = arithmetic_task()
    first = evaluate_generative(model, tokenizer, task, 3, 4, progress=False)
    # make the model's own (first-line) answers the targets of samples 0 and 2
    for i in (0, 2):
        task["samples"][i]["targets"] = [first["samples"][i]["output"]]
    result = evaluate_generative(model, tokenizer, task, 3, 4, progress=False)
    assert [r["correct"] for r in result["samples"]] == [True, False, True, False]
    breakdown = result["breakdown"]
    assert breakdown["operation"]["addition"] == {
        "n": 2,
        "value": 0.5,
        "first_digit_accuracy": pytest.approx(sum(r["first_digit"] for r in result["samples"][:2]) / 2),
    }
    assert breakdown["digits"]["2"]["n"] == 3 and breakdown["digits"]["2"]["value"] == pytest.approx(2 / 3)
    assert breakdown["operation_digits"]["addition/3"]["value"] == 0.0
    assert all({"digits", "operation", "first_digit"} <= set(r) for r in result["samples"])


def test_auto_prompting_uses_the_chat_template_when_there_is_one(tiny):
    model, tokenizer = tiny
    task = arithmetic_task()
    plain = evaluate_generative(model, tokenizer, task, 3, 4, prompting="auto", progress=False)
    assert plain["prompting"] == "fewshot" and plain["samples"][0]["prompt"].startswith("Q: the quick brown\nA: fox")
    tokenizer.chat_template = CHAT_TEMPLATE
    try:
        chat = evaluate_generative(model, tokenizer, task, 3, 4, prompting="auto", progress=False)
    finally:
        tokenizer.chat_template = None
    assert chat["prompting"] == "chat"
    assert chat["samples"][0]["prompt"] == (
        f"<bos> the quick brown <eos> <bos> fox <eos> <bos> {task['samples'][0]['input']} <eos> <bos>"
    )


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_cli_prepare_and_evaluate_a_code_task(tiny, tmp_path):
    """The workflow's commands: `layerprune prepare-task --spec` then `evaluate` with sampling and sandbox flags."""
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    cli = [sys.executable, "-m", "layerprune"]
    spec = {"type": "generative", "dataset": "humaneval", "num_fewshot": 0, "limit": 2}
    subprocess.run(
        [*cli, "prepare-task", "--spec", json.dumps(spec), "--seed", "0", "--out", str(tmp_path / "t.json")], check=True
    )
    subprocess.run(
        [*cli, "evaluate", "--model", str(tmp_path / "m"), "--task-file", str(tmp_path / "t.json"), "--task-name", "he",
         "--model-name", "tiny", "--batch-size", "2", "--max-new-tokens", "4", "--dtype", "float32",
         "--temperature", "0.9", "--top-k", "50", "--num-samples", "2", "--pass-k", "1", "2",
         "--sandbox-timeout", "5", "--sandbox-nproc", "8", "--threads", "1", "--out", str(tmp_path / "r.json")],
        check=True,
    )  # fmt: skip
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["task"] == "he" and result["n"] == 2 and set(result["pass_at_k"]) == {"1", "2"}
    assert result["sampling"] == {"temperature": 0.9, "top_k": 50, "top_p": None, "num_samples": 2}
    assert result["sandbox"]["timeout_s"] == 5 and result["sandbox"]["nproc"] == 8
    assert all(len(r["outputs"]) == 2 and r["error_bucket"] in ERROR_BUCKETS for r in result["samples"])


def prefix_task(per_sample_fewshot: bool) -> dict:
    """Three few-shot examples shared by prompts of different lengths (padding between prefix and rest)."""
    shots = [{"id": 90 + i, "input": " ".join(WORDS[i : i + 4]), "targets": [WORDS[i + 5]]} for i in range(3)]
    other_shots = [{"id": 95 + i, "input": " ".join(WORDS[i + 7 : i + 12]), "targets": [WORDS[i]]} for i in range(3)]
    samples = [{"id": i, "input": " ".join(WORDS[i : i + 1 + i % 5]), "targets": [WORDS[i + 2]]} for i in range(7)]
    if per_sample_fewshot:  # a multi-sub-task task: every sub-task brings its own few-shot block
        for sample in samples:
            sample["fewshot"] = shots if sample["id"] < 4 else other_shots
    return {
        "source": "bigbench:test",
        "type": "generative",
        "dataset": "bigbench",
        "grader": "exact_match",
        "num_fewshot": 3,
        "fewshot": shots,
        "samples": samples,
    }


def count_prefilled_tokens(model) -> list[int]:
    """Patch `model.forward` to record how many input tokens each call feeds (restore with `del model.forward`)."""
    fed: list[int] = []
    forward = model.forward

    @functools.wraps(forward)  # generate() reads forward's signature (it passes position_ids only if accepted)
    def counting_forward(*args, **kwargs):
        fed.append(kwargs["input_ids"].numel())
        return forward(*args, **kwargs)

    model.forward = counting_forward
    return fed


@pytest.mark.parametrize("per_sample_fewshot", [False, True], ids=["one-fewshot-block", "per-sub-task-blocks"])
@pytest.mark.parametrize("prompting", ["fewshot", "chat"])
def test_shared_prefix_cache_generates_the_same_tokens_as_whole_prompts(tiny, per_sample_fewshot, prompting):
    model, tokenizer = tiny
    task = prefix_task(per_sample_fewshot)
    tokenizer.chat_template = CHAT_TEMPLATE if prompting == "chat" else None
    fed = count_prefilled_tokens(model)
    try:
        whole = evaluate_generative(
            model, tokenizer, task, 5, 3, prompting=prompting, reuse_prefix=False, progress=False
        )
        whole_tokens, fed[:] = sum(fed), []
        cached = evaluate_generative(model, tokenizer, task, 5, 3, prompting=prompting, progress=False)
        cached_tokens = sum(fed)
    finally:
        tokenizer.chat_template = None
        del model.forward
    assert [r["prompt"] for r in cached["samples"]] == [r["prompt"] for r in whole["samples"]]
    assert [r["output"] for r in cached["samples"]] == [r["output"] for r in whole["samples"]]
    assert any(r["output"].strip() for r in whole["samples"]), "the comparison needs some generated text"
    assert [r["correct"] for r in cached["samples"]] == [r["correct"] for r in whole["samples"]]
    # the few-shot block went through the model once per block, not once per prompt (plus padding)
    assert cached_tokens < 0.6 * whole_tokens, (cached_tokens, whole_tokens)


def test_shared_prefix_length_leaves_every_prompt_a_token_to_start_from():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4, 6]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2, "a prompt that is the prefix keeps its last token"
    assert shared_prefix_length([[7, 1], [8, 1]]) == 0
    assert shared_prefix_length([]) == 0
