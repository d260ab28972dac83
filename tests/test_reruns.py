"""What a re-run redoes: exactly the new or changed jobs, nothing already finished.

Counted with dry runs against the session's one real tiny run (conftest.tiny_run,
config from helpers.workflow.tiny_config: 1 model, method bi, ratios 0.25 and 0.5,
recoveries none/data/sgr, tasks knowledge and addition). Tests that change files work
on a copy. The interrupted-run test runs real jobs: it kills snakemake part-way
through re-making one ratio's branch and starts it again.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers.workflow import BIN, REPO, TINY_STUDY, copy_run, env, planned_jobs, planned_with, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    workdir, config = tiny_run
    return copy_run(workdir, tmp_path / "wf"), copy.deepcopy(config)


def test_adding_a_model_reruns_only_its_jobs(tiny_run):
    workdir, config = tiny_run
    changed = copy.deepcopy(config)
    changed["models"]["tiny2"] = copy.deepcopy(config["models"]["tiny"])
    # its own token-filtered prompt set; 1 method x 2 ratios: 2 prunes, 2 x 2 trained recoveries,
    # 2 x 3 x 2 variant evaluations
    assert planned_with(workdir, changed) == {
        "materialize": 1,
        "filter_prompts": 1,
        "score": 1,
        "prune": 2,
        "selfgen": 1,
        "recover": 4,
        "evaluate_dense": 2,
        "evaluate_variant": 8,
        "evaluate_pruned": 4,
        "aggregate": 1,
        "all": 1,
    }


def test_adding_a_method_reruns_only_its_jobs(tiny_run):
    workdir, config = tiny_run
    changed = copy.deepcopy(config)
    changed["scoring"]["methods"].append("reverse")
    assert planned_with(workdir, changed) == {
        "score": 1,
        "prune": 2,
        "recover": 4,
        "evaluate_variant": 8,
        "evaluate_pruned": 4,
        "aggregate": 1,
        "all": 1,
    }


def test_adding_a_task_reruns_only_its_evaluations(tiny_run):
    workdir, config = tiny_run
    changed = copy.deepcopy(config)
    changed["tasks"]["subtraction"] = {
        "type": "generative",
        "dataset": "builtin",
        "builtin_task": "arithmetic/2_digit_subtraction",
        "num_fewshot": 1,
        "limit": 6,
        "max_new_tokens": 3,
    }
    assert planned_with(workdir, changed) == {
        "build_task": 1,
        "prepare_task": 1,
        "evaluate_dense": 1,
        "evaluate_variant": 4,
        "evaluate_pruned": 2,
        "aggregate": 1,
        "all": 1,
    }


def test_evaluating_a_task_without_recovery_reruns_only_the_report(tiny_run):
    """tasks.<t>.recoveries: [none] drops its evaluations of recovered variants; nothing re-runs but aggregate."""
    workdir, config = tiny_run
    changed = copy.deepcopy(config)
    changed["tasks"]["knowledge"]["recoveries"] = ["none"]
    assert planned_with(workdir, changed) == {"aggregate": 1, "all": 1}


def test_adding_a_recovery_reruns_only_its_jobs(run_copy):
    """A run made without `sgr`, then `sgr` in the config. (Snakemake does not re-make a
    deleted intermediate whose consumers are up to date, so the run without `sgr` is
    made for real: its outputs removed and the summary re-aggregated without them.)"""
    workdir, config = run_copy
    without = copy.deepcopy(config)
    without["recovery"]["methods"] = ["none", "data"]
    results = workdir / "results" / TINY_STUDY
    shutil.rmtree(results / "selfgen")
    for ratio in ("0.25", "0.5"):
        shutil.rmtree(results / f"recovered/tiny/bi/{ratio}/sgr")
        shutil.rmtree(results / f"eval/tiny/bi/{ratio}/sgr")
    assert planned_with(workdir, without) == {"aggregate": 1, "all": 1}
    (workdir / "changed.yaml").write_text(yaml.safe_dump(without))  # a copy of the run: its own to change
    snakemake(workdir, "--configfile", "changed.yaml", "--cores", "1")
    assert planned_with(workdir, config) == {
        "selfgen": 1,
        "recover": 2,
        "evaluate_variant": 4,
        "aggregate": 1,
        "all": 1,
    }


@pytest.mark.parametrize(("key", "value"), [("top_p", 0.8), ("max_new_tokens", 5)])
def test_selfgen_sampling_setting_reruns_selfgen_and_its_descendants_only(tiny_run, key, value):
    workdir, config = tiny_run
    changed = copy.deepcopy(config)
    changed["selfgen"][key] = value
    # the sgr branch only: 2 ratios x (1 recovery + 2 task evaluations)
    assert planned_with(workdir, changed) == {
        "selfgen": 1,
        "recover": 2,
        "evaluate_variant": 4,
        "aggregate": 1,
        "all": 1,
    }


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        # the setting added as the proof of "one place": every trained variant, nothing upstream
        ("recovery", "lora_target_modules", ["q_proj", "v_proj"], {"recover": 4, "evaluate_variant": 8}),
        # an evaluation setting of one task: that task's evaluations (and its prepared file, which records
        # the task's whole entry), no other task's
        (
            "tasks.addition",
            "max_new_tokens",
            4,
            {"prepare_task": 1, "evaluate_dense": 1, "evaluate_variant": 4, "evaluate_pruned": 2},
        ),
        # a calibration setting: the calibrated method and all below it, not the prompt set or selfgen
        (
            "scoring.calibration",
            "max_length",
            16,
            {"score": 1, "prune": 2, "recover": 4, "evaluate_variant": 8, "evaluate_pruned": 4},
        ),
    ],
)
def test_a_changed_setting_reruns_exactly_the_jobs_that_use_it(tiny_run, section, key, value, expected):
    workdir, config = tiny_run
    changed = copy.deepcopy(config)
    node = changed
    for part in section.split("."):
        node = node[part]
    node[key] = value
    assert planned_with(workdir, changed) == {**expected, "aggregate": 1, "all": 1}


def test_editing_a_stage_module_reruns_nothing_until_asked(run_copy):
    """The documented policy (docs/pipeline.md, "Reproducibility and re-runs"): code edits
    never re-run finished jobs by themselves, since a docstring edit must not cost hours
    of GPU; after a change that alters results, `-R <rule>` re-runs that stage and its
    descendants, nothing else."""
    workdir, config = run_copy
    shutil.copytree(REPO / "src", workdir / "src", ignore=shutil.ignore_patterns("__pycache__"))
    module = workdir / "src" / "layerprune" / "data" / "selfgen.py"
    module.write_text(module.read_text() + "\n# edited\n")
    assert planned_jobs(workdir) == {}
    assert planned_jobs(workdir, "-R", "selfgen") == {
        "selfgen": 1,
        "recover": 2,
        "evaluate_variant": 4,
        "aggregate": 1,
        "all": 1,
    }


def output_mtimes(results: Path) -> dict[str, float]:
    return {str(p.relative_to(results)): p.stat().st_mtime for p in results.rglob("*") if p.is_file()}


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored and children inherit that
    # (pytest under `cmd &` or nohup); a terminal's foreground job gets Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_snakemake(workdir: Path) -> subprocess.Popen:
    """snakemake in a process group of its own, as a terminal's foreground job is."""
    log = open(workdir / "snakemake.log", "a")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "2"],
        cwd=workdir,
        env=env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_default_sigint,
    )


def wait_until(condition, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "snakemake ended before the kill"
        assert time.monotonic() < deadline, "timed out waiting for the run to make progress"
        time.sleep(0.5)


def test_killed_run_restarts_without_redoing_finished_jobs(run_copy):
    """A new selfgen temperature re-makes the sgr branch (selfgen, 2 recoveries, 4
    evaluations, the summary); the run is killed twice on the way and restarted."""
    workdir, config = run_copy
    changed = copy.deepcopy(config)
    changed["selfgen"]["temperature"] = 0.9
    (workdir / "config.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    assert planned_jobs(workdir) == {"selfgen": 1, "recover": 2, "evaluate_variant": 4, "aggregate": 1, "all": 1}
    results = workdir / "results" / TINY_STUDY
    before = output_mtimes(results)

    def remade() -> dict[str, float]:
        now = output_mtimes(results)
        return {p: m for p, m in now.items() if before.get(p) != m and not Path(p).name.startswith(".")}

    def logged_finished(rule: str) -> int:
        return len(re.findall(rf"Finished jobid: \d+ \(Rule: {rule}\)", (workdir / "snakemake.log").read_text()))

    def finished_jobs_outputs() -> dict[str, float]:
        """What was remade, less the outputs of jobs Snakemake had not registered as
        finished (still running at the kill, or done but not yet recorded): those it
        runs again, as it cannot know they are complete."""
        unfinished = [base64.b64decode(p.name).decode() for p in (workdir / ".snakemake/incomplete").iterdir()]
        outputs = remade().items()
        return {p: m for p, m in outputs if not any(f"results/{TINY_STUDY}/{p}".startswith(u) for u in unfinished)}

    # SIGKILL to the whole group once a recovery has finished: no cleanup at all
    process = start_snakemake(workdir)
    wait_until(lambda: logged_finished("recover") >= 1, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = finished_jobs_outputs()
    assert any(p.startswith("recovered/") for p in finished)
    # a hard kill leaves snakemake's lock: `--unlock` (documented) clears it
    snakemake(workdir, "--unlock", "--cores", "1")
    after_kill = planned_jobs(workdir)
    assert "selfgen" not in after_kill and after_kill.get("recover", 0) <= 1, after_kill

    # Ctrl-C (SIGINT to the foreground group) once an evaluation has finished
    evaluated = logged_finished("evaluate_variant")
    process = start_snakemake(workdir)
    wait_until(lambda: logged_finished("evaluate_variant") > evaluated, process)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=120) != 0
    finished.update(finished_jobs_outputs())
    counts = {"after the SIGKILL": after_kill, "after the SIGINT": planned_jobs(workdir)}
    print(f"jobs left: {counts}")

    snakemake(workdir, "--cores", "2")
    assert planned_jobs(workdir) == {}
    final = output_mtimes(results)

    # nothing finished before a kill was made again; nothing outside the sgr branch either
    def aggregated(path: str) -> bool:  # the report, its tables and plots: remade by every aggregate
        return path.startswith("report/")

    for path, mtime in finished.items():
        if not aggregated(path):
            assert final[path] == mtime, f"{path} was made again after the kill"
    for path, mtime in before.items():
        if "sgr" not in path and not path.startswith("selfgen/") and not aggregated(path):
            assert final[path] == mtime, f"{path} is outside the changed branch but was made again"
    # no temporary or half-written output left behind
    assert not list(results.rglob(".*.tmp")), "a temporary path was left behind"
    assert sum(1 for p in final if p.startswith("eval/") and "/sgr/" in p and final[p] != before[p]) == 4
