"""A task's chance level: the score a random guesser expects, and where that number came from.

Written into every evaluation's JSON (layerprune.evaluation.evaluate) and read back by the report
(layerprune.report.retention), which normalises each score against it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def choice_count(sample: dict[str, Any]) -> int | None:
    """How many choices a multiple-choice sample had: `n_choices`, or the length of `choices` / `loglikelihoods`."""
    if isinstance(sample.get("n_choices"), int):
        return sample["n_choices"]
    for key in ("choices", "loglikelihoods"):
        if isinstance(sample.get(key), list) and sample[key]:
            return len(sample[key])
    return None


def task_chance(result: dict[str, Any], where: str = "") -> tuple[float, str]:
    """(chance level, where it came from) for a result: the score a random guesser expects.

    A top-level `chance` (the task's own say) wins; else a multiple-choice task's chance is the
    mean over its samples of 1/choices (lm-eval records one log-likelihood per choice); free
    generation is 0.
    """
    if "chance" in result and result["chance"] is not None:
        chance = result["chance"]
        if not isinstance(chance, (int, float)) or not 0 <= chance < 1:
            raise ValueError(f"{where or result.get('task')}: `chance` must be a number in [0, 1), got {chance!r}")
        return float(chance), result.get("chance_source") or "given by the task"
    counts = [choice_count(s) for s in result.get("samples") or []]
    known = [c for c in counts if c]
    if known:
        if min(known) < 2:
            raise ValueError(f"{where or result.get('task')}: a multiple-choice sample with fewer than 2 choices")
        choices = sorted(set(known))
        label = f"{choices[0]}" if len(choices) == 1 else f"{choices[0]}-{choices[-1]}"
        return float(np.mean([1 / c for c in known])), f"1/choices ({label} choices)"
    if result.get("type") == "classification":
        return 0.0, "choices not recorded: taken as 0"
    return 0.0, "free generation"
