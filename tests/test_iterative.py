"""Iterative pruning (`layerprune.scoring.iterative`) on tiny models with probe tasks whose answer is known.

Probe tasks are built from the dense model's own answers, so the dense accuracy is
1 and no removal can beat it; a layer made an exact identity (zero o_proj and
down_proj: both residual branches add 0) keeps every answer, so it must go first.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import warnings

import pytest
import torch
from helpers.models import make_tiny_checkpoint, make_tiny_model, make_tokenizer
from helpers.probes import (
    NUM_LAYERS,
    answered_by,
    probe_setup,
    raw_classification_task,
    raw_generative_task,
)

from layerprune.evaluation.evaluate import evaluate_generative, normalise_answer
from layerprune.io import read_json, write_json
from layerprune.models.checkpoints import load_checkpoint
from layerprune.pruning.prune import remove_layers
from layerprune.scoring.iterative import (
    STATE_FORMAT,
    _Prober,
    classification_accuracy,
    classification_prompt,
    continuation_loglikelihoods,
    encode_pair,
    iterative_removal,
    layers_removed,
    load_probe_tasks,
    state_path_for,
)
from layerprune.scoring.score import layers_to_remove, score_layers

pytestmark = pytest.mark.usefixtures("single_thread")


def state_of(model) -> tuple:
    layers = list(model.model.layers)
    indices = [module.layer_idx for module in model.modules() if hasattr(module, "layer_idx")]
    return layers, indices, model.config.num_hidden_layers, copy.deepcopy(getattr(model.config, "layer_types", None))


# ----------------------------------------------------------- log-likelihoods


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])  # qwen2, gemma3: sliding windows of 4
def test_continuation_loglikelihoods_batched_equal_one_by_one(family):
    model, tokenizer = make_tiny_model(family, 4), make_tokenizer()
    task = raw_classification_task(5)
    pairs = [
        encode_pair(tokenizer, classification_prompt(task["fewshot"], s["input"]), " " + c)
        for s in task["samples"]
        for c in s["choices"]
    ]
    batched = continuation_loglikelihoods(model, pairs, batch_size=7)
    for (context, continuation), value in zip(pairs, batched, strict=True):
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            logprobs = model(ids).logits[0, :-1].double().log_softmax(-1)
        expected = logprobs[len(context) - 1 :].gather(-1, ids[0, len(context) :, None]).sum()
        assert value == pytest.approx(float(expected), abs=1e-4)


def test_encode_pair_splits_like_lm_eval():
    tokenizer = make_tokenizer()
    prompt = classification_prompt([{"input": "the lazy", "choices": ["dog", "fox"], "label": 1}], "hello")
    assert prompt == "Q: the lazy\nA: fox\n\nQ: hello\nA:"
    context, continuation = encode_pair(tokenizer, prompt, " world")
    assert context == tokenizer(prompt).input_ids
    assert continuation == [tokenizer.convert_tokens_to_ids("world")]
    # trailing spaces move from the context to the continuation
    assert encode_pair(tokenizer, "hello ", "world") == encode_pair(tokenizer, "hello", " world")


def test_classification_accuracy_matches_lm_eval(tmp_path):
    """The probe's accuracy is the evaluation's (lm-eval's) accuracy on the same samples."""
    from layerprune.evaluation.evaluate import evaluate_classification

    model, tokenizer = make_tiny_model("llama", 4, seed=3), make_tokenizer()
    task = raw_classification_task(8)
    for i, sample in enumerate(task["samples"]):
        sample["label"] = i % 3
    prepared = {"type": "classification", "num_fewshot": 1, "fewshot": task["fewshot"], "samples": task["samples"]}
    reference = evaluate_classification(model, tokenizer, prepared, "probe_check", batch_size=4, seed=0)
    pairs = [
        encode_pair(tokenizer, classification_prompt(task["fewshot"], s["input"]), " " + c)
        for s in task["samples"]
        for c in s["choices"]
    ]
    loglikelihoods = continuation_loglikelihoods(model, pairs, batch_size=5)
    expected = [ll for record in reference["samples"] for ll in record["loglikelihoods"]]
    assert loglikelihoods == pytest.approx(expected, abs=1e-4)
    assert classification_accuracy(model, task, pairs, 5, 0) == pytest.approx(reference["value"])
    assert [r["prompt"] for r in reference["samples"]] == [
        classification_prompt(task["fewshot"], s["input"]) for s in task["samples"]
    ]


# -------------------------------------------------------- temporary removal


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_layers_removed_equals_pruning_and_restores(family):
    model, tokenizer = make_tiny_model(family, NUM_LAYERS, seed=1), make_tokenizer()
    pruned = copy.deepcopy(model)
    remove_layers(pruned, [1, 3])
    inputs = tokenizer(["the quick brown fox jumps", "hello world"], return_tensors="pt", padding=True)
    generate = dict(max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    before = state_of(model)
    with torch.no_grad():
        dense_logits = model(**inputs).logits
        expected_logits = pruned(**inputs).logits
        expected_ids = pruned.generate(**inputs, **generate)  # with the KV cache
        with layers_removed(model, [1, 3]):
            assert len(model.model.layers) == NUM_LAYERS - 2
            torch.testing.assert_close(model(**inputs).logits, expected_logits, rtol=0, atol=1e-5)
            assert torch.equal(model.generate(**inputs, **generate), expected_ids)
        torch.testing.assert_close(model(**inputs).logits, dense_logits, rtol=0, atol=0)
    assert state_of(model) == before


def test_layers_removed_restores_after_an_error():
    model = make_tiny_model("qwen2", NUM_LAYERS)
    before = state_of(model)
    with pytest.raises(RuntimeError, match="boom"), layers_removed(model, [2]):
        assert model.config.num_hidden_layers == NUM_LAYERS - 1
        raise RuntimeError("boom")
    assert state_of(model) == before
    with pytest.raises(ValueError, match="invalid layer indices"), layers_removed(model, [NUM_LAYERS]):
        pass
    assert state_of(model) == before


# ---------------------------------------------------------- the greedy order


def test_identity_layer_is_removed_first():
    model, tokenizer, tasks = probe_setup(2)
    before = state_of(model)
    tokenizer.padding_side = "right"
    result = iterative_removal(model, tokenizer, tasks, max_k=2, batch_size=8)
    assert result["dense_accuracy"] == {"mc": 1.0, "gen": 1.0}
    first = result["rounds"][0]
    assert sorted(first["retention"], key=int) == ["1", "2", "3", "4", "5"]  # never layer 0
    assert first["retention"]["2"] == 1.0
    assert first["accuracy"]["2"] == {"mc": 1.0, "gen": 1.0}
    assert max(v for layer, v in first["retention"].items() if layer != "2") < 1.0, "the test needs a clear winner"
    assert first["chosen"] == 2 and result["removal_order"][0] == 2
    second = result["rounds"][1]
    assert second["removed_before"] == [2] and "2" not in second["retention"]
    retained = second["retention"]
    assert second["chosen"] == int(max(retained, key=lambda layer: (retained[layer], int(layer))))
    for layer, value in first["retention"].items():
        accuracies = first["accuracy"][layer]
        assert value == pytest.approx((accuracies["mc"] + accuracies["gen"]) / 2)
    # the model and the tokenizer are as they were
    assert state_of(model) == before
    assert tokenizer.padding_side == "right"


def test_ties_go_to_the_later_layer_and_layer_zero_stays():
    model, tokenizer, tasks = probe_setup(0, 2, 4)
    result = iterative_removal(model, tokenizer, tasks, max_k=NUM_LAYERS - 1, batch_size=8)
    first = result["rounds"][0]
    assert first["retention"]["2"] == first["retention"]["4"] == 1.0
    assert result["removal_order"][:2] == [4, 2]  # two identities: the later one first
    assert sorted(result["removal_order"]) == [1, 2, 3, 4, 5]  # layer 0, an identity too, is never a candidate
    assert [len(r["retention"]) for r in result["rounds"]] == [5, 4, 3, 2, 1]
    assert result["removal"] == {k: sorted(result["removal_order"][:k]) for k in range(NUM_LAYERS)}


def test_removal_sets_are_nested_prefixes_up_to_max_k():
    model, tokenizer, tasks = probe_setup(3)
    result = json.loads(json.dumps(score_layers("iterative", model, tokenizer, probe_tasks=tasks, max_k=3)))
    assert result["method"] == "iterative" and result["num_layers"] == NUM_LAYERS
    assert result["max_k"] == 3 and result["scores"] is None
    assert list(result["removal"]) == ["0", "1", "2", "3"]
    order = result["removal_order"]
    assert len(set(order)) == 3 and 0 not in order
    previous: set[int] = set()
    for k in range(4):
        assert result["removal"][str(k)] == sorted(order[:k])
        assert previous <= set(result["removal"][str(k)])
        previous = set(result["removal"][str(k)])
    assert [r["chosen"] for r in result["rounds"]] == order
    assert result["probe_tasks"] == {
        "mc": {"type": "classification", "num_samples": 12},
        "gen": {"type": "generative", "num_samples": 8},
    }
    # a ratio within max_k prunes; one beyond it fails, naming the limit
    assert layers_to_remove(result, 0.5) == sorted(order[:3])
    with pytest.raises(ValueError, match="only go up to k = 3"):
        layers_to_remove(result, 0.7)


def test_dense_zero_probe_task_is_left_out_with_a_warning():
    model, tokenizer, tasks = probe_setup(2)
    impossible = copy.deepcopy(tasks[1])
    impossible["name"] = "impossible"
    for sample in impossible["samples"]:
        sample["targets"] = ["no such answer"]
    with pytest.warns(UserWarning, match="'impossible' has dense accuracy 0"):
        result = iterative_removal(model, tokenizer, [*tasks, impossible], max_k=1)
    assert result["excluded_probe_tasks"] == ["impossible"]
    assert result["dense_accuracy"]["impossible"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        without = iterative_removal(model, tokenizer, tasks, max_k=1)
    assert result["rounds"][0]["retention"] == without["rounds"][0]["retention"]
    assert result["removal"] == without["removal"]
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no probe task has nonzero dense accuracy"):
        iterative_removal(model, tokenizer, [impossible], max_k=1)


def test_max_k_bounds_and_zero():
    model, tokenizer, tasks = probe_setup()
    for bad in (-1, NUM_LAYERS):
        with pytest.raises(ValueError, match=r"max_k must lie in \[0, 5\]"):
            iterative_removal(model, tokenizer, tasks, max_k=bad)
    result = iterative_removal(model, tokenizer, tasks, max_k=0)
    assert result["removal"] == {0: []} and result["rounds"] == [] and result["removal_order"] == []
    with pytest.raises(ValueError, match="needs probe tasks and max_k"):
        score_layers("iterative", model, tokenizer, probe_tasks=tasks)
    with pytest.raises(ValueError, match="needs probe tasks and max_k"):
        score_layers("iterative", model, tokenizer, max_k=1)


# ------------------------------------------------------------ task files, CLI


def prepared(task: dict) -> dict:
    return {"source": "test", "type": task["type"], "num_fewshot": 1, "seed": 0, **task}


def test_load_probe_tasks(tmp_path):
    write_json(tmp_path / "knowledge.json", prepared(raw_classification_task(12)))
    write_json(tmp_path / "addition.json", prepared(raw_generative_task(8)))
    paths = [tmp_path / "knowledge.json", tmp_path / "addition.json"]
    tasks = load_probe_tasks(paths, num_samples=5, max_new_tokens=[16, 4])
    assert [(t["name"], t["type"], t["max_new_tokens"]) for t in tasks] == [
        ("knowledge", "classification", 16),
        ("addition", "generative", 4),
    ]
    assert [s["id"] for s in tasks[0]["samples"]] == [0, 1, 2, 3, 4]  # the first num_samples
    assert tasks[1]["fewshot"] == raw_generative_task()["fewshot"]
    assert len(load_probe_tasks(paths, num_samples=100, max_new_tokens=3)[1]["samples"]) == 8
    with pytest.raises(ValueError, match="2 probe tasks but 1 max_new_tokens"):
        load_probe_tasks(paths, num_samples=5, max_new_tokens=[4])


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_cli_score_iterative(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "model", num_layers=4)
    model, tokenizer = load_checkpoint(checkpoint, dtype="float32", device="cpu")
    tasks = answered_by(model, tokenizer, raw_classification_task(6), raw_generative_task(4))
    write_json(tmp_path / "tasks" / "mc.json", prepared(tasks[0]))
    write_json(tmp_path / "tasks" / "gen.json", prepared(tasks[1]))
    out = tmp_path / "iterative.json"
    command = [
        sys.executable, "-m", "layerprune", "score", "--model", str(checkpoint), "--method", "iterative",
        "--probe-tasks", str(tmp_path / "tasks" / "mc.json"), str(tmp_path / "tasks" / "gen.json"),
        "--probe-max-new-tokens", "16", "3", "--num-samples", "4", "--max-ratio", "0.5",
        "--batch-size", "4", "--dtype", "float32", "--threads", "1", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = read_json(out)
    assert result["method"] == "iterative" and result["max_k"] == 2  # round(0.5 * 4)
    assert result["max_ratio"] == 0.5 and len(result["rounds"]) == 2
    assert result["dense_accuracy"] == {"mc": 1.0, "gen": 1.0}
    assert result["probe_tasks"] == {
        "mc": {"type": "classification", "num_samples": 4},
        "gen": {"type": "generative", "num_samples": 4},
    }
    assert layers_to_remove(result, 0.5) == result["removal"]["2"]
    missing = subprocess.run(command[:8] + ["--out", str(tmp_path / "x.json")], capture_output=True, text=True)
    assert missing.returncode != 0 and "needs --probe-tasks and --max-ratio" in missing.stderr


def test_generative_probe_targets_are_the_dense_answers():
    """Guards the construction the other tests rely on: dense accuracy 1 on both probe tasks."""
    model, tokenizer, tasks = probe_setup()
    outputs = evaluate_generative(model, tokenizer, tasks[1], 3, 4, progress=False)
    assert outputs["value"] == 1.0
    assert all(normalise_answer(r["output"]) == normalise_answer(r["target"][0]) for r in outputs["samples"])


# ------------------------------------------------------------ resume after a kill

# Runs `layerprune score` in this process, counting probes, and SIGKILLs itself right after
# the state file has been written for the KILL_AFTER-th time (when that is set).
KILLABLE = """
import atexit, os, signal, sys
import layerprune.scoring.iterative as iterative
from layerprune.cli import main

calls = {"probes": 0, "saves": 0}
kill_after = int(os.environ.get("KILL_AFTER", "0"))
probe, save = iterative._Prober.__call__, iterative._save_state

def counting_probe(self):
    calls["probes"] += 1
    return probe(self)

def save_then_maybe_die(*args, **kwargs):
    save(*args, **kwargs)
    calls["saves"] += 1
    if calls["saves"] == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

iterative._Prober.__call__, iterative._save_state = counting_probe, save_then_maybe_die
atexit.register(lambda: print("PROBES", calls["probes"], flush=True))
main(sys.argv[1:])
"""


def _score_command(checkpoint, tasks_dir, out) -> list[str]:
    return [
        sys.executable, "-c", KILLABLE, "score", "--model", str(checkpoint), "--method", "iterative",
        "--probe-tasks", str(tasks_dir / "mc.json"), str(tasks_dir / "gen.json"),
        "--probe-max-new-tokens", "16", "3", "--num-samples", "4", "--max-ratio", "0.5",
        "--batch-size", "4", "--dtype", "float32", "--threads", "1", "--out", str(out),
    ]  # fmt: skip


def _probes(stdout: str) -> int:
    return int(next(line for line in stdout.splitlines() if line.startswith("PROBES")).split()[1])


@pytest.mark.slow  # three subprocesses: ~40 s on a free core
def test_iterative_killed_mid_round_resumes_to_the_uninterrupted_order(tmp_path):
    """A real SIGKILL in round 2 (of 3): the re-run probes only what is missing and ends in the same order."""
    checkpoint = make_tiny_checkpoint(tmp_path / "model", num_layers=NUM_LAYERS)
    model, tokenizer = load_checkpoint(checkpoint, dtype="float32", device="cpu")
    tasks = answered_by(model, tokenizer, raw_classification_task(6), raw_generative_task(4))
    write_json(tmp_path / "tasks" / "mc.json", prepared(tasks[0]))
    write_json(tmp_path / "tasks" / "gen.json", prepared(tasks[1]))
    whole, resumed = tmp_path / "whole" / "iterative.json", tmp_path / "resumed" / "iterative.json"

    done = subprocess.run(_score_command(checkpoint, tmp_path / "tasks", whole), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _probes(done.stdout) == 1 + 5 + 4 + 3  # dense, then rounds of 5, 4, 3 candidates (layer 0 stays)
    assert not state_path_for(whole).exists()  # removed on success

    # saves: the dense probe, 5 candidates of round 1, then 2 of round 2's 4: killed mid-round
    env = {**os.environ, "KILL_AFTER": "8"}
    killed = subprocess.run(_score_command(checkpoint, tmp_path / "tasks", resumed), env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert not resumed.exists() and len(read_json(state_path_for(resumed))["candidates"]) == 7

    again = subprocess.run(_score_command(checkpoint, tmp_path / "tasks", resumed), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _probes(again.stdout) == 2 + 3  # the rest of round 2, then round 3
    first, second = read_json(whole), read_json(resumed)
    assert second["removal_order"] == first["removal_order"]
    assert second["rounds"] == first["rounds"] and second["dense_accuracy"] == first["dense_accuracy"]
    assert not state_path_for(resumed).exists()


def test_iterative_state_of_other_inputs_is_not_reused(tmp_path, monkeypatch):
    """A state file written under another fingerprint (model content, settings) is started over."""
    model, tokenizer, tasks = probe_setup(3)
    state = tmp_path / ".iterative.json.state.json"
    first = iterative_removal(model, tokenizer, tasks, 2, batch_size=4, state_path=state, fingerprint={"model": "a"})
    probes = []
    original = _Prober.__call__
    monkeypatch.setattr(_Prober, "__call__", lambda self: probes.append(1) or original(self))

    class Stop(Exception):
        pass

    def stop_after_three(path, fingerprint, dense, candidates):
        write_json(
            path, {"fingerprint": {"format": STATE_FORMAT, **fingerprint}, "dense": dense, "candidates": candidates}
        )
        if len(candidates) == 3:
            raise Stop

    monkeypatch.setattr("layerprune.scoring.iterative._save_state", stop_after_three)
    with pytest.raises(Stop):
        iterative_removal(model, tokenizer, tasks, 2, batch_size=4, state_path=state, fingerprint={"model": "a"})
    assert len(probes) == 4
    monkeypatch.undo()
    monkeypatch.setattr(_Prober, "__call__", lambda self: probes.append(1) or original(self))
    probes.clear()
    other = iterative_removal(model, tokenizer, tasks, 2, batch_size=4, state_path=state, fingerprint={"model": "b"})
    assert len(probes) == 1 + 5 + 4  # nothing of model "a" reused
    assert other["removal_order"] == first["removal_order"]
