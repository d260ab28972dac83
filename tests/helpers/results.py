"""Result JSONs in the evaluate contract, scored by a rule so the report's statistics are known in closed form.

Items are scored by a rule (items shift..shift+hits-1 correct), so a variant's hits are a subset of the dense
model's and every ratio, drop and pairing is known.
"""

from __future__ import annotations

from pathlib import Path

from layerprune.io import write_json
from layerprune.report.retention import BootstrapSettings

# What every PNG file starts with: a plot the report wrote is a real image.
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The bootstrap the statistics tests run: enough samples for stable intervals, seeded.
BOOTSTRAP_SETTINGS = BootstrapSettings(samples=2000, seed=0)


def result(task: str, task_type: str, method: str, ratio: float, recovery: str, hits: int, n: int, **extra) -> dict:
    """A result JSON in the evaluate contract: items shift..shift+hits-1 correct, `choices` log-likelihoods if given."""
    choices, shift = extra.pop("choices", None), extra.pop("shift", 0)
    samples = [{"id": i, "correct": shift <= i < shift + hits, "output": "x"} for i in range(n)]
    if choices:
        for sample in samples:
            sample["loglikelihoods"] = [-1.0] * choices
    return {
        "model": extra.pop("model", "m"), "method": method, "ratio": ratio, "recovery": recovery, "task": task,
        "type": task_type, "metric": "accuracy", "value": hits / n, "n": n, "samples": samples, **extra,
    }  # fmt: skip


def dense(task: str, task_type: str, hits: int, n: int, **extra) -> dict:
    """The dense model's `result` of `task`: `hits` of `n` items correct."""
    return result(task, task_type, "dense", 0.0, "none", hits, n, **extra)


def written(directory: Path, entries: list[dict]) -> list[Path]:
    """The result JSONs written to `directory` as 0.json, 1.json, ... (what aggregate reads)."""
    paths = []
    for i, entry in enumerate(entries):
        write_json(directory / f"{i}.json", entry)
        paths.append(directory / f"{i}.json")
    return paths
