"""Prompt records and task JSONs made of CORPUS words, so every token is a real one of the tiny tokenizer."""

from __future__ import annotations

from helpers.models import CORPUS

WORDS = " ".join(CORPUS).split()


def phrase(start: int, length: int) -> str:
    """`length` CORPUS words from word `start` on, wrapping around."""
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(length))


def prompt_records(count: int) -> list[dict]:
    """Prompt–completion records (chat messages) whose prompts have varied lengths: what recover trains on."""
    return [
        {
            "prompt": [{"role": "user", "content": phrase(3 * i, 2 + (5 * i) % 7)}],
            "completion": [{"role": "assistant", "content": phrase(5 * i + 1, 2 + i % 3)}],
        }
        for i in range(count)
    ]


def sourced_prompt_records(count: int, offset: int = 0) -> list[dict]:
    """Prompt–completion records whose prompts have varied lengths (not sorted), each with a `source` as
    selfgen writes; at offset 0 the messages are those of `prompt_records`."""
    records = []
    for i in range(count):
        length = 2 + (5 * i + offset) % 7
        records.append(
            {
                "prompt": [{"role": "user", "content": phrase(3 * i + offset, length)}],
                "completion": [{"role": "assistant", "content": phrase(5 * i + offset + 1, 2 + i % 3)}],
                "source": f"test:{offset}#{i}",
            }
        )
    return records


def generative_task(samples_targets: list[list[str]] | None = None) -> dict:
    """A prepared 8-sample generative task (one shot) with CORPUS targets, or `samples_targets` if given."""
    samples = []
    for i in range(8):
        targets = samples_targets[i] if samples_targets else [phrase(i + 20, 2)]
        samples.append({"id": i, "input": phrase(4 * i, 3 + i % 3), "targets": targets})
    return {
        "source": "bigbench:test/gen",
        "type": "generative",
        "num_fewshot": 1,
        "seed": 0,
        "fewshot": [{"id": 100, "input": "the quick brown", "targets": ["fox"]}],
        "samples": samples,
    }
