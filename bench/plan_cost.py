"""Planning cost: the paper grid's dry run, with each settings class's field types resolved once vs per build.

`snakemake -n` of configs/paper.yaml builds a stage's settings for every job's params (~6,000 builds for its
1,308 jobs). Both arms run in this one process on the same builds, alternating: `_type_hints` as shipped
(functools.cache) and its uncached original (`__wrapped__`), then one timed `snakemake -n` of the grid.

    PYTHONPATH=src python bench/plan_cost.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

from layerprune.config.settings import fields
from layerprune.config.settings.adapters import settings_from_config
from layerprune.config.settings.stages import EvaluationSettings, RecoverySettings, SelfgenSettings

REPO = Path(__file__).resolve().parents[1]


def builds(config: dict) -> list[tuple[type, str | None]]:
    """One build per job kind of the grid, roughly as the rules ask for them: evaluation per task."""
    tasks = list(config["tasks"])
    return [(EvaluationSettings, task) for task in tasks] + [(RecoverySettings, None), (SelfgenSettings, None)]


def time_builds(config: dict, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        for cls, task in builds(config):
            settings_from_config(cls, config, task=task)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    rounds = max(1, 6000 // len(builds(config)))  # ~6,000 builds, as a dry run of the grid makes
    cached, uncached = [], []
    shipped = fields._type_hints
    for _ in range(args.repeats):
        fields._type_hints = shipped
        cached.append(time_builds(config, rounds))
        fields._type_hints = shipped.__wrapped__
        uncached.append(time_builds(config, rounds))
    fields._type_hints = shipped
    print(f"{rounds * len(builds(config))} settings builds, best of {args.repeats}:")
    print(f"  field types resolved per build: {min(uncached):6.2f} s")
    print(f"  resolved once per class:        {min(cached):6.2f} s   ({min(uncached) / min(cached):.1f}x)")
    start = time.perf_counter()
    command = [sys.executable, "-m", "snakemake", "-n", "--configfile", "configs/paper.yaml", "--quiet", "all"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    print(f"snakemake -n of configs/paper.yaml with this tree: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
