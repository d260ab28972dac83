"""How pytest-xdist shares the suite (helpers/scheduling.py): whole modules per worker, the longest first, and
the session's tiny run built once for both workers. Checked with a real `pytest -n 2` run under the
repository's own addopts, because a grouping that pytest silently ignores (xdist's `loadgroup` under
pytest 9) costs the suite minutes and fails no test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest
from helpers.scheduling import MODULE_SECONDS, TESTS, module_of, module_seconds

REPO = TESTS.parent


def test_every_test_module_has_a_measured_time():
    modules = {path.stem for path in TESTS.glob("test_*.py")}
    assert modules - set(MODULE_SECONDS) == set(), "measure it: python tests/helpers/scheduling.py LOG"
    assert set(MODULE_SECONDS) - modules == set(), "a module that is gone"
    assert all(seconds > 0 for seconds in MODULE_SECONDS.values())


def test_a_node_id_names_its_module():
    assert module_of("tests/test_graders.py::test_x[a::b]") == "test_graders"
    assert module_of("tests/test_dvc.py") == "test_dvc"


# The heaviest measured module, the lightest of those whose names sort before it (so that heaviest-first is not
# the order of the names), and one not measured (collected last).
HEAVY = max(MODULE_SECONDS, key=MODULE_SECONDS.get)
LIGHT = min((module for module in MODULE_SECONDS if module < HEAVY), key=MODULE_SECONDS.get)
MODULES = sorted({LIGHT, HEAVY, "test_zz_unmeasured"})


def write_suite(root: Path) -> None:
    """Three modules of three tests each, under the repository's pytest addopts and collection hook. Every test
    takes a session fixture made with `build_once` (as conftest.tiny_run is), which counts its builds, and
    appends `<worker> <module> <root it got>` to a file."""
    (addopts,) = re.findall(r'^addopts = "(.*)"$', (REPO / "pyproject.toml").read_text(), flags=re.M)
    (root / "pytest.ini").write_text(f"[pytest]\naddopts = {addopts}\n")
    (root / "conftest.py").write_text(
        textwrap.dedent(f"""
        import sys, time
        import pytest
        sys.path.insert(0, {str(TESTS)!r})
        from helpers.scheduling import build_once, pytest_collection_modifyitems  # noqa: F401

        @pytest.fixture(scope="session")
        def shared_run(tmp_path_factory):
            def build(root):
                time.sleep(1)  # the other worker asks meanwhile, and must wait
                with open({str(root / "builds.txt")!r}, "a") as out:
                    out.write("built\\n")
            return build_once(tmp_path_factory, "shared", build)
        """)
    )
    test = textwrap.dedent(f"""
        import os, time
        from pathlib import Path

        def record(shared_run):
            time.sleep(0.2)  # long enough that the other worker is up and could take a test of this module
            with open({str(root / "ran.txt")!r}, "a") as out:
                out.write(f"{{os.environ['PYTEST_XDIST_WORKER']}} {{Path(__file__).stem}} {{shared_run}}\\n")
        """) + "".join(f"\ndef test_{i}(shared_run):\n    record(shared_run)\n" for i in range(3))
    for module in MODULES:
        (root / f"{module}.py").write_text(test)


def test_a_real_xdist_run_keeps_each_module_on_one_worker_and_builds_the_shared_run_once(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    write_suite(suite)
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--basetemp", str(tmp_path / "base")]
    # this run's own options and xdist worker name are not the inner run's (PYTEST_ADDOPTS="-vv" prints a tree)
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")}
    collected = subprocess.run(
        [*base, "--collect-only"], cwd=suite, env=env, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    order = [line.split("::")[0].removesuffix(".py") for line in collected.splitlines() if "::" in line]
    # the heavier measured module first, then the lighter, then the unmeasured one: not the order of their names
    assert LIGHT < HEAVY < "test_zz_unmeasured"
    assert order == [HEAVY] * 3 + [LIGHT] * 3 + ["test_zz_unmeasured"] * 3

    result = subprocess.run([*base, "-n", "2"], cwd=suite, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    workers, roots = defaultdict(set), set()
    for line in (suite / "ran.txt").read_text().splitlines():
        worker, module, root = line.split()
        workers[module].add(worker)
        roots.add(root)
    assert sorted(workers) == MODULES
    assert all(len(used) == 1 for used in workers.values()), dict(workers)
    assert len(set().union(*workers.values())) == 2, "one worker did everything: the check shows nothing"
    (root,) = roots  # both workers got the one shared folder...
    assert (suite / "builds.txt").read_text() == "built\n"  # ...built once
    assert Path(root).parent == tmp_path / "base"


def test_module_seconds_sums_a_durations_table():
    log = """============================= slowest durations ==============================
296.44s setup    tests/test_dvc.py::test_pulled_checkpoints_are_not_stored_twice
104.31s call     tests/test_dvc.py::test_dvc_lock_records_only_settings_the_outputs_were_made_with[a::b]
1.38s teardown tests/test_slurm.py::test_cluster_jobs_run_the_threads_slurm_allocates
(2416 durations < 0.005s hidden.  Use -vv to show these durations.)
"""
    seconds = module_seconds(log)
    assert seconds.keys() == {"test_dvc", "test_slurm"}
    assert seconds["test_dvc"] == pytest.approx(400.75) and seconds["test_slurm"] == pytest.approx(1.38)


def test_the_documented_command_prints_the_table_from_a_log(tmp_path):
    """`python tests/helpers/scheduling.py LOG` as docs/index.md gives it: every module, measured or not, the
    longest first, ready to paste over MODULE_SECONDS."""
    log = tmp_path / "LOG"
    log.write_text("12.60s setup    tests/test_dvc.py::test_a\n30.40s call     tests/test_graders.py::test_b\n")
    printed = subprocess.run(
        [sys.executable, "tests/helpers/scheduling.py", str(log)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    namespace: dict = {}
    exec(printed, namespace)  # the printed text is the assignment itself
    table = namespace["MODULE_SECONDS"]
    assert table.keys() == {path.stem for path in TESTS.glob("test_*.py")}
    assert list(table)[:2] == ["test_graders", "test_dvc"] and (table["test_graders"], table["test_dvc"]) == (30, 13)
    assert set(list(table.values())[2:]) == {1}
