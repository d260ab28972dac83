"""Per-item cost of grading a program with the judge (this tree) against the single-process harness before it.

    PYTHONPATH=src python bench/sandbox_judge_cost.py [--limit N] [--repeats R]

Runs, side by side in one run and alternating item by item, every HumanEval canonical solution (164) and the
offline MBPP / MBPP+ reference solutions (tests/fixtures/tasks) two ways:

* `harness` (before, main 8179f34): the program, its tests and `check` in one interpreter, the verdict proven by
  the completion marker (`run_program(..., completion_marker=True)`; the harness's text is copied below);
* `judge` (now): `graders.grade_code`, the tests in a judge process, the program in a nested PID/mount namespace,
  each call as plain data.

Both run in this tree's sandbox (same launcher, limits and machine). Prints the wall time per item (mean and
median) of each, their ratio, and checks that both grade every reference solution `pass`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from layerprune.evaluation.graders import candidate_code, grade_code
from layerprune.evaluation.sandbox import MARKER_FD, NONCE_FD, SandboxLimits, run_program, site_packages
from layerprune.evaluation.tasks import prepare_task_spec

FIXTURES = Path(__file__).parents[1] / "tests" / "fixtures" / "tasks"
LIMITS = SandboxLimits(timeout_s=20, cpu_s=10, memory_mb=1024)

# graders.HARNESS at 8179f34, the single-process design this replaces.
HARNESS = """\
import os as _os


def _layerprune_harness(candidate, tests, entry_point):
    nonce = _os.read({nonce_fd}, 64)
    _os.close({nonce_fd})
    namespace = {{"__name__": "__candidate__", "__builtins__": __builtins__}}
    exec(compile(candidate, "candidate.py", "exec"), namespace)
    exec(compile(tests, "tests.py", "exec"), namespace)
    if entry_point is not None:
        namespace["check"](namespace[entry_point])
    _os.write({marker_fd}, nonce)


_layerprune_harness({candidate!r}, {tests!r}, {entry_point!r})
"""


def harness(sample: dict) -> bool:
    code = sample["code"]
    tests = code.get("setup", "") + "\n" + code["test"] + "\n"
    entry_point = code["entry_point"] if code.get("entry_point") and "def check(" in code["test"] else None
    candidate = candidate_code(sample, sample["solution"], chat=False)
    program = HARNESS.format(
        nonce_fd=NONCE_FD, marker_fd=MARKER_FD, candidate=candidate, tests=tests, entry_point=entry_point
    )
    return run_program(program, LIMITS, site_packages(), completion_marker=True).passed


def judge(sample: dict) -> bool:
    return grade_code(sample, sample["solution"], chat=False, limits=LIMITS)["error_bucket"] == "pass"


def samples(tmp: Path, limit: int | None) -> dict[str, list[dict]]:
    found = {}
    specs = {
        "humaneval": {"dataset": "humaneval"},
        "mbpp (fixture)": {"dataset": "mbpp", "file": str(FIXTURES / "mbpp_test.jsonl")},
        "mbpp+ (fixture)": {"dataset": "mbpp", "file": str(FIXTURES / "mbppplus_test.jsonl")},
    }
    for name, spec in specs.items():
        spec = {"type": "generative", "num_fewshot": 0, **spec, **({"limit": limit} if limit else {})}
        found[name] = prepare_task_spec(spec, tmp, 0, tmp / f"{len(found)}.json")["samples"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="items per task (default: all)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        tasks = samples(Path(tmp), args.limit)
    print(f"{'task':<18}{'items':>6}{'harness ms':>12}{'judge ms':>10}{'ratio':>7}{'+ms':>7}  (mean; median)")
    for name, items in tasks.items():
        times: dict[str, list[float]] = {"harness": [], "judge": []}
        for _ in range(args.repeats):
            for sample in items:
                for way, grade in (("harness", harness), ("judge", judge)):
                    start = time.perf_counter()
                    if not grade(sample):
                        failures.append((way, sample["id"]))
                    times[way].append(1000 * (time.perf_counter() - start))
        old, new = statistics.mean(times["harness"]), statistics.mean(times["judge"])
        old_median, new_median = statistics.median(times["harness"]), statistics.median(times["judge"])
        print(
            f"{name:<18}{len(items):>6}{old:>12.0f}{new:>10.0f}{new / old:>7.2f}{new - old:>7.0f}"
            f"  (medians {old_median:.0f} / {new_median:.0f})"
        )
    if failures:
        print(f"reference solutions not graded pass: {failures}")
        sys.exit(1)


if __name__ == "__main__":
    main()
