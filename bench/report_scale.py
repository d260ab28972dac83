"""Aggregate a paper-sized synthetic grid and report the time and peak memory.

3 models x (dense + 3 methods x 3 ratios x 3 recoveries) x 15 tasks = 1260 result files in the
evaluate contract, with the sample counts of configs/paper.yaml (MMLU at limit 0.2: 2808 samples,
...; generative outputs of 5-80 random words, code error buckets, arithmetic digits/operations).
Usage: PYTHONPATH=src python bench/report_scale.py /tmp/report-scale [--bootstrap-samples 1000]
"""

from __future__ import annotations

import argparse
import random
import resource
import time
from pathlib import Path

from layerprune.io import write_json
from layerprune.report.aggregate import aggregate

SIZES = {
    "mmlu": 2808, "arc_challenge": 235, "arc_easy": 476, "hellaswag": 2009, "winogrande": 254, "piqa": 368,
    "openbookqa": 100, "general_knowledge": 100, "gsm8k": 1319, "math500": 500, "humaneval_plus": 164,
    "mbpp_plus": 378, "xsum": 1000, "arithmetic_probe": 600, "arithmetic_multidigit": 800,
}  # fmt: skip
GENERATIVE = {"gsm8k", "math500", "humaneval_plus", "mbpp_plus", "xsum", "arithmetic_probe", "arithmetic_multidigit"}
BUCKETS = ["pass", "syntax_error", "wrong_answer", "runtime_error", "never_closed_bracket"]


def write_grid(root: Path, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(2000)]
    variants = [("dense", 0.0, "none")] + [
        (m, r, c) for m in ("bi", "reverse", "iterative") for r in (0.2, 0.25, 0.3) for c in ("none", "data", "sgr")
    ]
    paths = []
    for model in ("qwen", "llama", "mistral"):
        for method, ratio, recovery in variants:
            for task, n in SIZES.items():
                samples = []
                for i in range(n):
                    sample = {"id": i, "prompt": "Q " * 100, "correct": rng.random() < 0.6, "target": "7"}
                    if task not in GENERATIVE:  # lm-eval records one log-likelihood per choice
                        sample["loglikelihoods"] = [-1.0] * (2 if task in ("winogrande", "piqa") else 4)
                    if task in GENERATIVE:
                        sample["output"] = " ".join(rng.choice(words) for _ in range(rng.randint(5, 80)))
                    if task.endswith("_plus"):
                        sample["error_bucket"] = rng.choice(BUCKETS)
                    if task.startswith("arithmetic"):
                        sample.update(digits=rng.randint(1, 5), operation=rng.choice(["addition", "multiplication"]))
                    samples.append(sample)
                result = {
                    "model": model, "method": method, "ratio": ratio, "recovery": recovery, "task": task,
                    "type": "generative" if task in GENERATIVE else "classification", "metric": "accuracy",
                    "value": sum(s["correct"] for s in samples) / n, "stderr": 0.01, "n": n, "samples": samples,
                }  # fmt: skip
                path = root / model / method / str(ratio) / recovery / f"{task}.json"
                write_json(path, result)
                paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--bootstrap-samples", type=int, default=1000)
    args = parser.parse_args()
    start = time.time()
    paths = write_grid(args.root)
    print(f"wrote {len(paths)} results in {time.time() - start:.0f} s", flush=True)
    start, cpu = time.time(), time.process_time()
    aggregate(paths, args.root / "out", bootstrap_samples=args.bootstrap_samples, seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"aggregate: {time.time() - start:.0f} s wall, {time.process_time() - cpu:.0f} s CPU, peak RSS {peak:.0f} MiB"
    )
    # The statistics alone (chance-normalised ratio of means, paired resamples, findings), for comparison.
    from layerprune.report.aggregate import load_results
    from layerprune.report.tables import BootstrapSettings, findings, retention

    results = load_results(paths)
    start = time.time()
    findings(retention(results, BootstrapSettings(samples=args.bootstrap_samples)))
    print(f"retention + findings alone: {time.time() - start:.1f} s wall")


if __name__ == "__main__":
    main()
