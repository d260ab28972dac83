"""The aggregate tests' grid of results: two tasks, method bi at ratios 0.25 and 0.5, recoveries none and sgr.

Every value is a power of two, so every retention is an exact binary fraction.
"""

from __future__ import annotations

from pathlib import Path

from layerprune.io import write_json

MODEL = "tiny"
# task -> (type, metric)
TASKS = {"arith": ("generative", "exact_match"), "colours": ("classification", "accuracy")}
# Powers of two, so every retention is an exact binary fraction.
DENSE = {"arith": 0.5, "colours": 0.75}
VALUES = {
    # (ratio, recovery) -> value per task
    (0.25, "none"): {"arith": 0.25, "colours": 0.375},
    (0.25, "sgr"): {"arith": 0.5, "colours": 0.75},
    (0.5, "none"): {"arith": 0.125, "colours": 0.1875},
    (0.5, "sgr"): {"arith": 0.375, "colours": 0.5625},
}


def grid_result(task: str, method: str, ratio: float, recovery: str, value: float, stderr: float, n: int = 16):
    """A result JSON of the grid's MODEL on `task` (type and metric from TASKS), with extra keys the table ignores."""
    task_type, metric = TASKS[task]
    return {
        "model": MODEL,
        "method": method,
        "ratio": ratio,
        "recovery": recovery,
        "task": task,
        "type": task_type,
        "metric": metric,
        "value": value,
        "stderr": stderr,
        "n": n,
        # Extra keys written by `evaluate` that the table ignores.
        "checkpoint": f"/ckpt/{method}/{ratio}/{recovery}",
        "samples": [{"id": 0, "correct": True}],
    }


def write_results(directory: Path) -> list[Path]:
    """The whole grid (VALUES and DENSE) as result JSONs in `directory`, written in a scrambled order."""
    paths = []
    # Written in a scrambled order: the table must sort them itself.
    for (ratio, recovery), values in reversed(list(VALUES.items())):
        for task, value in values.items():
            path = directory / f"{task}__bi__{ratio}__{recovery}.json"
            write_json(path, grid_result(task, "bi", ratio, recovery, value, stderr=0.0625))
            paths.append(path)
    for task, value in DENSE.items():
        path = directory / f"{task}__dense.json"
        write_json(path, grid_result(task, "dense", 0.0, "none", value, stderr=0.125))
        paths.append(path)
    return paths
