"""Results with samples, as the report tests build them: N items per task, seeded hits, degenerate outputs.

They follow the contract of `layerprune evaluate`'s result files: `error_bucket` on the code task, `digits` and
`operation` on the arithmetic one, a numeric `score` on the ROUGE-graded one.
"""

from __future__ import annotations

import random
import zlib

from layerprune.report.diagnostics import ERROR_BUCKETS

N = 40
# task -> type
TASKS = {
    "mc": "classification",
    "arc": "classification",
    "humaneval_plus": "generative",
    "arith": "generative",
    "xsum": "generative",
}


def _samples(task: str, accuracy: float, seed: int, degenerate: bool) -> list[dict]:
    rng = random.Random(seed)
    samples = []
    for i in range(N):
        correct = rng.random() < accuracy
        sample = {"id": i, "prompt": f"q{i}", "target": str(i % 10), "correct": correct}
        sample["output"] = ("loop " * 8).strip() if degenerate and i % 2 else f"answer {i} is {i % 10} because {i}"
        if task == "humaneval_plus":
            sample["error_bucket"] = "pass" if correct else ERROR_BUCKETS[i % 5]
        if task == "arith":
            sample.update(operation="+*-"[i % 3], digits=1 + i % 2, output=str(i % 10 if correct else (i + 1) % 10))
        if task == "xsum":
            sample["score"] = accuracy * rng.random()
        samples.append(sample)
    return samples


def sampled_result(task: str, method: str, ratio: float, recovery: str, accuracy: float, degenerate: bool) -> dict:
    """A result JSON of model `tiny` on `task` with N samples, about `accuracy` of them correct (seeded by the
    variant), every other output a repeated word if `degenerate`."""
    samples = _samples(task, accuracy, zlib.crc32(f"{task}{method}{ratio}{recovery}".encode()), degenerate)
    scores = [s.get("score", float(s["correct"])) for s in samples]
    return {
        "model": "tiny",
        "method": method,
        "ratio": ratio,
        "recovery": recovery,
        "task": task,
        "type": TASKS[task],
        "metric": "accuracy" if TASKS[task] == "classification" else "exact_match",
        "grader": "fixture",
        "value": sum(scores) / len(scores),
        "stderr": 0.05,
        "n": N,
        "samples": samples,
    }
