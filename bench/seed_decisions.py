"""How often the report decides a contrast between recoveries that truly do not differ, and how often a
recovery's interval covers its true retention, when training seeds truly differ (issue 30, sections 1-2).

Simulated studies, each run through `layerprune.report.retention` exactly as the report runs it:

* two generative tasks of `--items` items each; item i of a task has its own probability of being
  answered right (the dense model: uniform on [0.45, 0.75]; a recovery: on [0.25, 0.55]), so items
  differ in difficulty and the paired bootstrap has something to pair;
* every training run (one per recovery and training seed) adds its own offset, drawn from
  N(0, `--seed-sd`), to every item's probability on both tasks (one checkpoint answers both), then
  answers each item right with that probability: a real seed-to-seed effect;
* `none` (no recovery) trains nothing: no offset.

decisions: sgr and data have the same true retention, so every "reproduced" or "not reproduced" of
sgr − data is a false decision; the same for sgr − none with sgr's items drawn like none's. With one
seed the report's rule (retention.MIN_SEEDS) gives no verdict; the column `items alone` counts what
the items-only interval would have decided, the old behaviour.

coverage: the share of studies whose interval for sgr's generative retention covers the true one,
E[recovery's probability] / E[dense probability] (chance 0; offsets have mean 0).

    .venv/bin/python bench/seed_decisions.py                 # both tables (about 4 min on one core)
    .venv/bin/python bench/seed_decisions.py --studies 100   # a quick look
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from layerprune.report.retention import (
    NONE,
    NOT_REPRODUCED,
    ONE_SEED,
    REPRODUCED,
    BootstrapSettings,
    findings,
    retention,
)

DENSE, RECOVERED = (0.45, 0.75), (0.25, 0.55)
TASKS = ("g1", "g2")


def run_result(task: str, recovery: str, probabilities: np.ndarray, rng: np.random.Generator, seed=None) -> dict:
    correct = rng.random(len(probabilities)) < np.clip(probabilities, 0, 1)
    method, ratio = ("dense", 0.0) if recovery == "dense" else ("bi", 0.25)
    result = {
        "model": "m", "method": method, "ratio": ratio, "recovery": "none" if recovery == "dense" else recovery,
        "task": task, "type": "generative", "metric": "accuracy", "value": float(correct.mean()),
        "samples": [{"id": i, "correct": bool(c)} for i, c in enumerate(correct)],
    }  # fmt: skip
    if seed is not None:
        result["training_seed"] = seed
    return result


def study(seeds: int, items: int, seed_sd: float, rng: np.random.Generator) -> list[dict]:
    """One simulated study: dense, none, and sgr and data with `seeds` training runs each."""
    results = []
    base = {task: {kind: rng.uniform(*bounds, items) for kind, bounds in (("dense", DENSE), ("rec", RECOVERED))}
            for task in TASKS}  # fmt: skip
    for task in TASKS:
        results.append(run_result(task, "dense", base[task]["dense"], rng))
        results.append(run_result(task, NONE, base[task]["rec"], rng))
    for recovery in ("sgr", "data"):
        for seed in range(seeds):
            offset = rng.normal(0, seed_sd)  # one checkpoint: the same offset on both tasks
            for task in TASKS:
                results.append(run_result(task, recovery, base[task]["rec"] + offset, rng, seed))
    return results


def simulate(seeds: int, studies: int, items: int, seed_sd: float, samples: int, rng) -> dict[str, float]:
    settings = BootstrapSettings(samples=samples, seed=int(rng.integers(1 << 31)))
    truth = np.mean(RECOVERED) / np.mean(DENSE)
    decided = {"sgr − data": 0, "sgr − none": 0}
    items_alone = {"sgr − data": 0, "sgr − none": 0}
    covered = 0
    for _ in range(studies):
        stats = retention(study(seeds, items, seed_sd, rng), settings)
        frame = findings(stats)
        for contrast in decided:
            row = frame[frame["statistic"] == f"{contrast} generative retention"].iloc[0]
            decided[contrast] += row["verdict"] in (REPRODUCED, NOT_REPRODUCED)
            if row["verdict"] == ONE_SEED:
                items_alone[contrast] += "items alone: reproduced" in row["detail"] or (
                    "items alone: not reproduced" in row["detail"]
                )
            else:
                items_alone[contrast] += row["verdict"] in (REPRODUCED, NOT_REPRODUCED)
        sgr = stats.per_type[stats.per_type["recovery"] == "sgr"].iloc[0]
        covered += sgr["ci_low"] <= truth <= sgr["ci_high"]
    out = {f"{c} decided": decided[c] / studies for c in decided}
    out |= {f"{c} items alone": items_alone[c] / studies for c in decided}
    out["coverage"] = covered / studies
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=400)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples per study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--seed-sd", type=float, nargs="+", default=[0.05, 0.08], help="seed-to-seed sd (0-1)")
    args = parser.parse_args()
    print(f"{args.studies} studies each; {args.items} items x {len(TASKS)} tasks; {args.samples} resamples; 95 %")
    print("| seed sd | seeds | sgr − data decided | (items alone) | sgr − none decided | (items alone) | coverage |")
    print("|---|---|---|---|---|---|---|")
    for seed_sd in args.seed_sd:
        for seeds in args.seeds:
            start = time.perf_counter()
            rng = np.random.default_rng([seeds, round(seed_sd * 1000)])
            r = simulate(seeds, args.studies, args.items, seed_sd, args.samples, rng)
            cells = [f"{seed_sd * 100:g} pts", str(seeds)]
            cells += [f"{r[key]:.1%}" for key in ("sgr − data decided", "sgr − data items alone")]
            cells += [f"{r[key]:.1%}" for key in ("sgr − none decided", "sgr − none items alone", "coverage")]
            print("| " + " | ".join(cells) + f" |  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
