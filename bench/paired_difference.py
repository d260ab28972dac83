"""Paired bootstrap of (recovered - none) on generative tasks, per task and for the mean of the task means.

    python bench/paired_difference.py results/default/eval/smollm2-135m/bi/0.1/none/ \\
        results/default/eval/smollm2-135m/bi/0.1/sgr/ arithmetic_probe plural

Each directory holds `<task>.json` result files (the evaluate contract); samples pair by id.
"""

from __future__ import annotations

import json
import random
import sys


def sample_scores(path: str) -> dict[str, float]:
    return {str(s["id"]): s["score"] for s in json.load(open(path))["samples"]}


def mean_difference(pairs_by_task: dict[str, list[tuple[float, float]]]) -> float:
    return sum(sum(a - b for a, b in pairs) / len(pairs) for pairs in pairs_by_task.values()) / len(pairs_by_task)


def interval(pairs_by_task: dict[str, list[tuple[float, float]]], resamples: int = 2000) -> tuple[float, float, float]:
    rng = random.Random(0)
    draws = sorted(
        mean_difference({t: [p[rng.randrange(len(p))] for _ in p] for t, p in pairs_by_task.items()})
        for _ in range(resamples)
    )
    return mean_difference(pairs_by_task), draws[int(0.025 * resamples)], draws[int(0.975 * resamples) - 1]


def main() -> None:
    none_dir, recovered_dir, tasks = sys.argv[1], sys.argv[2], sys.argv[3:]
    pairs = {}
    for task in tasks:
        recovered, baseline = sample_scores(f"{recovered_dir}/{task}.json"), sample_scores(f"{none_dir}/{task}.json")
        pairs[task] = [(recovered[key], baseline[key]) for key in baseline]
        point, low, high = interval({task: pairs[task]})
        means = [sum(side) / len(pairs[task]) for side in zip(*pairs[task], strict=True)]
        difference = f"diff {point:+.3f} [{low:+.3f}, {high:+.3f}]"
        print(f"  {task}: {means[0]:.3f} vs {means[1]:.3f}  {difference} n={len(pairs[task])}")
    point, low, high = interval(pairs)
    print(f"  generative (mean of task means): diff {point:+.3f} [{low:+.3f}, {high:+.3f}]")


if __name__ == "__main__":
    main()
