"""vLLM gets thousands of prompts per call (issue 26 §2), with the same samples and the same resume as batch
by batch. vLLM itself cannot run here: a generator with the VLLMGenerator interface stands in, whose
answer is a function of the prompt and the request's seed alone, as vLLM's per-request seeding is."""

from __future__ import annotations

import hashlib

import pytest

from layerprune.data.selfgen import Generation, batch_request_seed, generate_responses


class PerBatch:
    """The interface of TransformersGenerator: one call per batch, one seed per batch."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, texts: list[str], seed: int) -> list[Generation]:
        self.calls.append(len(texts))
        return [answer(text, batch_request_seed(seed, j)) for j, text in enumerate(texts)]


class PerRequest(PerBatch):
    """The interface of VLLMGenerator: many batches per call, one seed per request."""

    prompts_per_call = 10

    def generate_seeded(self, texts: list[str], seeds: list[int]) -> list[Generation]:
        self.calls.append(len(texts))
        return [answer(text, seed) for text, seed in zip(texts, seeds, strict=True)]


def answer(text: str, seed: int) -> Generation:
    return Generation(hashlib.sha256(f"{text}|{seed}".encode()).hexdigest()[:12], truncated=False)


class Killed(Exception):
    pass


def test_calls_of_many_batches_give_the_batches_own_samples_and_resume():
    texts = [f"prompt {i} " + "x" * (i % 7) for i in range(23)]
    lengths = [len(t) for t in texts]
    reference = generate_responses(PerBatch(), texts, lengths, 3, seed=5)
    grouped = PerRequest()
    saved: dict[int, Generation] = {}
    batches_seen = []

    def save(number, indices, generations):
        batches_seen.append(len(indices))
        saved.update(zip(indices, generations, strict=True))

    assert generate_responses(grouped, texts, lengths, 3, seed=5, on_batch=save) == reference
    assert grouped.calls == [9, 9, 5], "batches of 3 packed into calls of at most 10 prompts"
    assert batches_seen == [3] * 7 + [2], "each batch still saved on its own"

    # killed after the first call: its 3 batches are saved, the rest is generated on resume
    partial: dict[int, Generation] = {}

    def die_after_first_call(number, indices, generations):
        partial.update(zip(indices, generations, strict=True))
        if len(partial) == 9:
            raise Killed

    with pytest.raises(Killed):
        generate_responses(PerRequest(), texts, lengths, 3, seed=5, on_batch=die_after_first_call)
    resumed = PerRequest()
    assert generate_responses(resumed, texts, lengths, 3, seed=5, done=partial) == reference
    assert sum(resumed.calls) == 23 - 9, "the saved answers are not generated again"
