"""How pytest-xdist shares the suite between its workers: whole modules, the longest first; one tiny run.

pyproject's `--dist loadscope --no-loadscope-reorder` runs a module's tests on one worker, so its module-scoped
fixtures (a real DVC origin, a built venv, a 270M model) are built once, not once per worker, and hands the
modules out in the order they are collected. The hook below (imported by conftest.py) collects the longest
first (MODULE_SECONDS), so the short ones fill the gaps at the end instead of a long one starting last while
the other worker idles. A session fixture that both workers need (conftest.tiny_run, a real pipeline run) is
built once for both with `build_once`.

Why not xdist's `--dist loadgroup`: it marks a group by rewriting `item._nodeid`, which pytest 9 no longer
reads (a node's id is `item._id`), so with pytest 9.2 and xdist 3.8 the groups were silently ignored and
module fixtures were built on both workers. `loadscope` reads the module from the node id itself
(test_scheduling.py runs a real `pytest -n 2` to check that each module stays on one worker).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

# Seconds each module took (setup, calls and teardown together) in a full run on 2 cores, written by
# `pytest -q -n 2 --durations=0 > LOG; python tests/helpers/scheduling.py LOG` (2026-12-07). Only their order
# matters; test_scheduling checks that every module is here.
MODULE_SECONDS = {
    "test_dvc": 772,
    "test_paper_mini": 500,
    "test_slurm": 260,
    "test_surgery": 173,
    "test_studies": 164,
    "test_reruns": 148,
    "test_workflow": 147,
    "test_gpu_check": 143,
    "test_prune": 134,
    "test_classification": 133,
    "test_distill": 126,
    "test_gemma3_270m": 108,
    "test_commands": 103,
    "test_plan_checks": 96,
    "test_recover_workflow": 83,
    "test_sandbox": 82,
    "test_seeds": 75,
    "test_launch": 74,
    "test_recover": 73,
    "test_paper_setup": 69,
    "test_conventions": 62,
    "test_gpu_env": 54,
    "test_bigbench_option": 51,
    "test_study_config": 41,
    "test_iterative": 40,
    "test_retention": 39,
    "test_graders": 34,
    "test_sandbox_users": 33,
    "test_models": 28,
    "test_report": 28,
    "test_pipeline": 12,
    "test_plan_refusals": 12,
    "test_selfgen": 11,
    "test_stages": 10,
    "test_ablation": 9,
    "test_generative": 9,
    "test_aggregate": 6,
    "test_gpu_failfast": 6,
    "test_sandbox_cheats": 6,
    "test_settings": 5,
    "test_install": 4,
    "test_builtin": 3,
    "test_compare": 3,
    "test_data": 3,
    "test_documented_paths": 3,
    "test_iterative_probes": 3,
    "test_cost_model": 1,
    "test_generation_budget": 1,
    "test_mtimes": 1,
    "test_recoveries": 1,
    "test_scheduling": 1,
    "test_score": 1,
    "test_score_memory": 1,
    "test_selfgen_calls": 1,
    "test_tasks": 1,
}


def module_of(nodeid: str) -> str:
    """The module name of a node id: `tests/test_dvc.py::test_x[a::b]` -> `test_dvc`."""
    return Path(nodeid.split("::", 1)[0]).stem


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """`build(root)` once per test session, in a folder both xdist workers see: the first worker to ask builds
    while the other waits on a lock, then both get the same `root` (pytest-xdist's documented recipe). A build
    that failed half-way is removed and made again by the next asker. Without xdist, an ordinary temporary
    folder. What is built is shared: treat it as read-only, and write nothing into it."""
    from filelock import FileLock

    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        root = tmp_path_factory.mktemp(name)
        build(root)
        return root
    shared = tmp_path_factory.getbasetemp().parent  # <basetemp>/popen-gw<N> -> <basetemp>, one per session
    root, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            build(root)
            done.touch()
    return root


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Collect the longest modules first (a stable sort: each module keeps its own order). Every worker
    collects alike, and the scheduler hands out modules in the order they first appear."""
    items.sort(key=lambda item: -MODULE_SECONDS.get(module_of(item.nodeid), 0.0))


def module_seconds(durations_log: str) -> dict[str, float]:
    """Seconds per module from the `--durations=0` table of a pytest run (setup, call and teardown summed)."""
    seconds: dict[str, float] = {}
    for match in re.finditer(r"^([\d.]+)s (?:setup|call|teardown) +(\S+?\.py)::", durations_log, flags=re.M):
        module = Path(match.group(2)).stem
        seconds[module] = seconds.get(module, 0.0) + float(match.group(1))
    return seconds


if __name__ == "__main__":  # python tests/helpers/scheduling.py LOG: MODULE_SECONDS from a run's --durations=0
    import sys

    measured = module_seconds(Path(sys.argv[1]).read_text())
    modules = sorted(path.stem for path in TESTS.glob("test_*.py"))
    # a module all of whose tests took under 5 ms is not in the table: 1 s keeps it measured, and last
    table = {module: max(1, round(measured.get(module, 0.0))) for module in modules}
    print("MODULE_SECONDS = {")
    for module in sorted(table, key=lambda name: (-table[name], name)):
        print(f'    "{module}": {table[module]},')
    print("}")
