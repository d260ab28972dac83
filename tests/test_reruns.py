"""What a re-run redoes: exactly the new or changed jobs, nothing already finished.

Counted with dry runs against the session's one real tiny run (conftest.tiny_run,
config from test_pipeline.tiny_config: 1 model, method bi, ratios 0.25 and 0.5,
recoveries none/data/sgr, tasks knowledge and addition). Tests that change files work
on a copy. The interrupted-run test runs real jobs: it kills snakemake part-way
through re-making one ratio's branch and starts it again.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from workflow_helpers import BIN, REPO, copy_run, env, planned_jobs, snakemake

pytestmark = pytest.mark.slow


def planned_with(workdir: Path, config: dict, *args: str) -> dict[str, int]:
    (workdir / "changed.yaml").write_text(yaml.safe_dump(config))
    return planned_jobs(workdir, "--configfile", "changed.yaml", *args)


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    workdir, config = tiny_run
    return copy_run(workdir, tmp_path / "wf"), copy.deepcopy(config)


def test_adding_a_model_reruns_only_its_jobs(tiny_run):
    workdir, config = tiny_run
    changed = copy.deepcopy(config)
    changed["models"]["tiny2"] = copy.deepcopy(config["models"]["tiny"])
    # 1 method x 2 ratios: 2 prunes, 2 x 2 trained recoveries, 2 x 3 x 2 variant evaluations
    assert planned_with(workdir, changed) == {
        "materialize": 1, "score": 1, "prune": 2, "selfgen": 1, "recover": 4,
        "evaluate_dense": 2, "evaluate_variant": 12, "aggregate": 1, "all": 1,
    }


def test_adding_a_method_reruns_only_its_jobs(tiny_run):
    workdir, config = tiny_run
    changed = copy.deepcopy(config)
    changed["scoring"]["methods"].append("reverse")
    assert planned_with(workdir, changed) == {
        "score": 1, "prune": 2, "recover": 4, "evaluate_variant": 12, "aggregate": 1, "all": 1,
    }


def test_adding_a_task_reruns_only_its_evaluations(tiny_run):
    workdir, config = tiny_run
    changed = copy.deepcopy(config)
    changed["tasks"]["subtraction"] = {
        "type": "generative", "bigbench_task": "arithmetic/2_digit_subtraction",
        "num_fewshot": 1, "limit": 6, "max_new_tokens": 3,
    }
    assert planned_with(workdir, changed) == {
        "extract_bigbench": 1, "prepare_task": 1, "evaluate_dense": 1, "evaluate_variant": 6,
        "aggregate": 1, "all": 1,
    }


def test_adding_a_recovery_reruns_only_its_jobs(run_copy):
    """A run made without `sgr` (its outputs removed), then `sgr` in the config."""
    workdir, config = run_copy
    without = copy.deepcopy(config)
    without["recovery"]["methods"] = ["none", "data"]
    results = workdir / "results"
    shutil.rmtree(results / "selfgen")
    for ratio in ("0.25", "0.5"):
        shutil.rmtree(results / f"recovered/tiny/bi/{ratio}/sgr")
        shutil.rmtree(results / f"eval/tiny/bi/{ratio}/sgr")
    assert planned_with(workdir, without) == {"aggregate": 1, "all": 1}  # the smaller summary only
    assert planned_with(workdir, config) == {
        "selfgen": 1, "recover": 2, "evaluate_variant": 4, "aggregate": 1, "all": 1,
    }


@pytest.mark.parametrize(("key", "value"), [("top_p", 0.8), ("max_new_tokens", 5)])
def test_selfgen_sampling_setting_reruns_selfgen_and_its_descendants_only(tiny_run, key, value):
    workdir, config = tiny_run
    changed = copy.deepcopy(config)
    changed["selfgen"][key] = value
    # the sgr branch only: 2 ratios x (1 recovery + 2 task evaluations)
    assert planned_with(workdir, changed) == {
        "selfgen": 1, "recover": 2, "evaluate_variant": 4, "aggregate": 1, "all": 1,
    }


def test_editing_a_stage_module_reruns_nothing_until_asked(run_copy):
    """The documented policy (docs/pipeline.md, "Reproducibility and re-runs"): code edits
    never re-run finished jobs by themselves, since a docstring edit must not cost hours
    of GPU; after a change that alters results, `-R <rule>` re-runs that stage and its
    descendants, nothing else."""
    workdir, config = run_copy
    shutil.copytree(REPO / "src", workdir / "src", ignore=shutil.ignore_patterns("__pycache__"))
    module = workdir / "src" / "layerprune" / "selfgen.py"
    module.write_text(module.read_text() + "\n# edited\n")
    assert planned_jobs(workdir) == {}
    assert planned_jobs(workdir, "-R", "selfgen") == {
        "selfgen": 1, "recover": 2, "evaluate_variant": 4, "aggregate": 1, "all": 1,
    }


def output_mtimes(results: Path) -> dict[str, float]:
    return {str(p.relative_to(results)): p.stat().st_mtime for p in results.rglob("*") if p.is_file()}


def start_snakemake(workdir: Path) -> subprocess.Popen:
    """snakemake in a process group of its own, as a terminal's foreground job is."""
    log = open(workdir / "snakemake.log", "a")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "2"], cwd=workdir, env=env(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_until(condition, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "snakemake ended before the kill"
        assert time.monotonic() < deadline, "timed out waiting for the run to make progress"
        time.sleep(0.5)


def test_killed_run_restarts_without_redoing_finished_jobs(run_copy):
    workdir, _ = run_copy
    results = workdir / "results"
    # re-make ratio 0.5's branch: 2 recoveries, 6 evaluations, the summary
    for path in ("recovered/tiny/bi/0.5", "eval/tiny/bi/0.5"):
        shutil.rmtree(results / path)
    assert planned_jobs(workdir) == {"recover": 2, "evaluate_variant": 6, "aggregate": 1, "all": 1}
    before = output_mtimes(results)
    evals = results / "eval/tiny/bi/0.5"

    # SIGKILL to the whole group once the first evaluation has finished: no cleanup at all
    process = start_snakemake(workdir)
    wait_until(lambda: evals.exists() and any(evals.rglob("*.json")), process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p: m for p, m in output_mtimes(results).items() if p not in before and not Path(p).name.startswith(".")}
    assert finished, "nothing finished before the kill"
    # a hard kill leaves snakemake's lock: `--unlock` (documented) clears it
    snakemake(workdir, "--unlock", "--cores", "1")
    after_kill = planned_jobs(workdir)
    assert sum(after_kill.values()) < 2 + 6 + 2

    # Ctrl-C (SIGINT to the foreground group) part-way through the rest
    process = start_snakemake(workdir)
    done = len(list(evals.rglob("*.json")))
    wait_until(lambda: len(list(evals.rglob("*.json"))) > done, process)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=120) != 0

    result = snakemake(workdir, "--cores", "2")
    assert planned_jobs(workdir) == {}
    final = output_mtimes(results)
    # nothing finished before a kill was made again, nothing of the rest of the DAG either
    for path, mtime in {**before, **finished}.items():
        if path.startswith(("summary.csv", "report.md", "metrics.json", "removal_overlap.csv", "plots/")):
            continue  # aggregate's outputs: remade once at the end
        assert final[path] == mtime, f"{path} was redone"
    # no temporary or half-written output left behind, every output complete
    assert not [p for p in results.rglob(".*.tmp")], "a temporary path was left behind"
    for ratio_dir in (results / "recovered/tiny/bi/0.5").iterdir():
        assert (ratio_dir / "config.json").exists() and list(ratio_dir.glob("*.safetensors")), ratio_dir
    assert len(list(evals.rglob("*.json"))) == 6
    assert "Nothing to be done" not in result.stdout + result.stderr
