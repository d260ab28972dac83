"""Generative evaluation at the paper's lengths (issue 26 §2): token-budgeted batches, an incremental
stop check, and an evaluation that resumes from its finished items after a kill."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.models import CORPUS, make_tiny_checkpoint
from transformers import AutoTokenizer

import layerprune.evaluation.generative as generative
from layerprune.evaluation.evaluate import evaluate_checkpoint
from layerprune.evaluation.generative import GenerationPartial, StopOnStrings, plan_batches

WORDS = " ".join(CORPUS).split()


def test_batches_hold_at_most_the_token_budget():
    lengths = [10, 30, 20, 5, 100, 8, 8, 8]
    batches = plan_batches([list(range(8))], lengths, batch_size=3, max_batch_tokens=120, new_tokens=20)
    assert sorted(i for batch in batches for i in batch) == list(range(8)), "every prompt once, in order"
    for batch in batches:
        assert len(batch) <= 3
        if len(batch) > 1:
            assert len(batch) * (max(lengths[i] for i in batch) + 20) <= 120
    assert [4] in batches, "a prompt over the budget alone gets a batch of its own"
    # without a budget only batch_size cuts; groups never share a batch
    assert plan_batches([[0, 1, 2], [3, 4]], lengths, 2) == [[0, 1], [2], [3, 4]]


def test_incremental_stop_check_fires_at_the_same_step_as_decoding_everything(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(make_tiny_checkpoint(tmp_path / "m", num_layers=1))
    stops = [f"{WORDS[5]} {WORDS[6]}", WORDS[20]]
    generator = torch.Generator().manual_seed(0)
    prompt_length = 7
    rows = torch.randint(4, len(tokenizer), (6, 200), generator=generator)
    # plant the stops at known places in some rows
    first, second = tokenizer(stops[0], add_special_tokens=False).input_ids, tokenizer(stops[1]).input_ids[-1:]
    rows[0, 150 : 150 + len(first)] = torch.tensor(first)
    rows[1, 40] = second[0]
    check = StopOnStrings(tokenizer, stops, prompt_length)

    def full(ids: torch.Tensor) -> list[bool]:  # the former check: the whole continuation, every step
        texts = tokenizer.batch_decode(ids[:, prompt_length:], skip_special_tokens=True)
        return [any(stop in text for stop in stops) for text in texts]

    first_windowed, first_full = [None] * 6, [None] * 6
    for end in range(prompt_length + 1, rows.shape[1] + 1):
        windowed = check(rows[:, :end], None).tolist()
        for row, (w, f) in enumerate(zip(windowed, full(rows[:, :end]), strict=True)):
            if w and first_windowed[row] is None:
                first_windowed[row] = end
            if f and first_full[row] is None:
                first_full[row] = end
    assert first_windowed == first_full
    assert first_full[0] is not None and first_full[0] <= 150 + len(first)
    assert first_full[1] is not None and first_full[1] <= 41


def _task(n: int) -> dict:
    """A local BIG-bench-format generative task (the prepared-task JSON the evaluate stage reads)."""
    samples = [{"id": i, "input": " ".join(WORDS[i : i + 4]), "targets": [WORDS[i + 4]]} for i in range(n)]
    return {
        "source": "bigbench:local",
        "type": "generative",
        "dataset": "bigbench",
        "grader": "exact_match",
        "num_fewshot": 0,
        "fewshot": [],
        "samples": samples,
    }


class Killed(Exception):
    """Stands for the kill: raised right after a batch was saved, as a SIGKILL would leave the file."""


def test_a_killed_generative_evaluation_resumes_without_regenerating(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    model_dir = make_tiny_checkpoint(tmp_path / "m", num_layers=2)
    task_path = tmp_path / "task.json"
    task_path.write_text(json.dumps(_task(7)))
    # sampled: a resumed run must reproduce the seeds too (evaluate_checkpoint takes settings, not a Sampling)
    common = dict(
        batch_size=2, max_new_tokens=12, seed=3, dtype="float32", prompting="fewshot", temperature=0.9, top_k=20
    )
    whole = evaluate_checkpoint(model_dir, task_path, "local", tmp_path / "whole.json", **common)

    generated: list[int] = []
    real = generative._generate_batch

    def counting(model, tokenizer, batch, *args, **kwargs):
        generated.append(batch["input_ids"].shape[0])
        return real(model, tokenizer, batch, *args, **kwargs)

    monkeypatch.setattr(generative, "_generate_batch", counting)
    saved = GenerationPartial.__call__
    calls = []

    def save_then_die(self, indices, outputs):
        saved(self, indices, outputs)
        calls.append(indices)
        if len(calls) == 2:
            self.handle.write('{"index": 6, "outp')  # a torn line, as a kill mid-write leaves
            self.handle.flush()
            raise Killed

    out = tmp_path / "eval.json"
    monkeypatch.setattr(GenerationPartial, "__call__", save_then_die)
    with pytest.raises(Killed):
        evaluate_checkpoint(model_dir, task_path, "local", out, **common)
    assert not out.exists() and (tmp_path / ".eval.json.partial").is_file()
    assert sum(generated) == 4

    monkeypatch.setattr(GenerationPartial, "__call__", saved)
    generated.clear()
    resumed = evaluate_checkpoint(model_dir, task_path, "local", out, **common)
    assert sum(generated) == 3, "only the 3 samples not saved are generated again"
    assert resumed["resumed_samples"] == 4
    assert [r["output"] for r in resumed["samples"]] == [r["output"] for r in whole["samples"]]
    assert not (tmp_path / ".eval.json.partial").exists(), "the partial file goes once the result is written"

    # another setting: the partial file is not reused
    stale = {"partial": {"format": 0}}
    (tmp_path / ".other.json.partial").write_text(json.dumps(stale) + '\n{"index": 0, "outputs": ["x"]}\n')
    generated.clear()
    evaluate_checkpoint(model_dir, task_path, "local", tmp_path / "other.json", **common)
    assert sum(generated) == 7


def test_token_budget_bounds_the_generation_batches(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    model_dir = make_tiny_checkpoint(tmp_path / "m", num_layers=1)
    task_path = tmp_path / "task.json"
    task_path.write_text(json.dumps(_task(6)))
    shapes: list[tuple[int, int]] = []
    real = generative._generate_batch

    def recording(model, tokenizer, batch, prompt_length, max_new_tokens, *args, **kwargs):
        shapes.append((batch["input_ids"].shape[0], prompt_length + max_new_tokens))
        return real(model, tokenizer, batch, prompt_length, max_new_tokens, *args, **kwargs)

    monkeypatch.setattr(generative, "_generate_batch", recording)
    common = dict(batch_size=6, max_new_tokens=10, seed=0, dtype="float32", prompting="fewshot")
    evaluate_checkpoint(model_dir, task_path, "local", tmp_path / "a.json", **common)
    assert [rows for rows, _ in shapes] == [6]
    shapes.clear()
    evaluate_checkpoint(model_dir, task_path, "local", tmp_path / "b.json", max_generate_tokens=40, **common)
    assert len(shapes) > 1 and all(rows * tokens <= 40 for rows, tokens in shapes), shapes
