"""Sharing a finished run through a real DVC remote, and DVC experiments over it.

Alice's repository is a copy of the session's one real tiny run (conftest.tiny_run)
with git and DVC around it: `dvc repro` (Snakemake finds nothing to do, DVC records
the outputs), `dvc push` to a local directory remote. Bob clones it, `dvc pull`s,
runs the documented sync step, and Snakemake has nothing left to do.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml
from workflow_helpers import BIN, REPO, copy_run, planned_jobs, run

pytestmark = pytest.mark.slow


def git(cwd: Path, *args: str) -> str:
    return run(["git", *args], cwd=cwd).stdout


def dvc(cwd: Path, *args: str) -> str:
    return run([str(BIN / "dvc"), *args], cwd=cwd).stdout


def sync_after_pull(cwd: Path) -> None:
    """The README's step after `dvc pull`: DVC does not keep mtimes, so mark what was
    pulled as up to date (in DAG order) and record Snakemake's metadata for it."""
    run([str(BIN / "snakemake"), "--touch", "--cores", "1"], cwd=cwd)


@pytest.fixture(scope="module")
def alice(tiny_run, tmp_path_factory):
    """Alice's repository: the finished run, committed to git, its artifacts pushed."""
    workdir, config = tiny_run
    root = tmp_path_factory.mktemp("dvc")
    repo = copy_run(workdir, root / "alice")
    (repo / "changed.yaml").unlink(missing_ok=True)
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    shutil.copytree(
        REPO / "src" / "layerprune", repo / "src" / "layerprune", ignore=shutil.ignore_patterns("__pycache__")
    )  # a dependency in dvc.yaml
    git(repo, "init", "-q", "-b", "main")
    # DVC commits experiments too: a repository-local identity, whatever the machine has
    git(repo, "config", "user.name", "layerprune test")
    git(repo, "config", "user.email", "test@layerprune")
    dvc(repo, "init", "-q")
    dvc(repo, "remote", "add", "-d", "shared", str(root / "remote"))
    # the outputs persist: DVC runs `snakemake`, which has nothing to do, and records them
    # (every out is a folder, whose files DVC leaves in place: their mtimes stay)
    summary = repo / "results" / "report" / "summary.csv"
    mtime = summary.stat().st_mtime_ns
    dvc(repo, "repro")
    assert summary.stat().st_mtime_ns == mtime
    log = max((repo / ".snakemake" / "log").iterdir(), key=lambda p: p.stat().st_mtime).read_text()
    assert "Nothing to be done" in log, log[-2000:]
    assert planned_jobs(repo) == {}
    dvc(repo, "push")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "tiny study")
    return repo, config, root


def test_fresh_clone_pulls_everything_and_has_nothing_to_do(alice):
    repo, _, root = alice
    bob = root / "bob"
    run(["git", "clone", "-q", str(repo), str(bob)], cwd=root)
    assert not (bob / "results").exists()
    dvc(bob, "pull")
    for path in (
        "results/report/summary.csv",
        "results/report/report.md",
        "results/report/plots/tiny__addition.png",
        "results/selfgen/tiny.jsonl",
        "results/eval/tiny/bi/0.5/sgr/addition.json",
    ):
        assert (bob / path).read_bytes() == (repo / path).read_bytes(), path
    # the top-level metrics and plots of dvc.yaml, inside the pulled results/report
    shown = json.loads(dvc(bob, "metrics", "show", "--json"))[""]["data"]["results/report/metrics.json"]["data"]
    assert shown.keys() == json.loads((repo / "results/report/metrics.json").read_text()).keys()  # (NaN != NaN)
    plots = json.loads(dvc(bob, "plots", "show", "--json"))
    assert list(plots["data"]) == ["results/report/summary.csv"] and not plots.get("errors"), plots.get("errors")
    sync_after_pull(bob)
    assert planned_jobs(bob) == {}
    # ...and Snakemake's own bookkeeping works from there on: a changed setting re-runs its jobs
    config = yaml.safe_load((bob / "config.yaml").read_text())
    config["selfgen"]["temperature"] = 0.9
    (bob / "changed.yaml").write_text(yaml.safe_dump(config))
    assert planned_jobs(bob, "--configfile", "changed.yaml") == {
        "selfgen": 1,
        "recover": 2,
        "evaluate_variant": 4,
        "aggregate": 1,
        "all": 1,
    }


def test_colleague_gets_the_selfgen_dataset_and_a_checkpoint_without_running_anything(alice, tmp_path):
    """What the README tells a colleague: pull just the self-generated dataset and one
    checkpoint into a clone, or `dvc get` a file without cloning at all."""
    repo, _, root = alice
    carol = root / "carol"
    run(["git", "clone", "-q", str(repo), str(carol)], cwd=root)
    dvc(carol, "pull", "results/selfgen", "results/recovered/tiny/bi/0.5/sgr")
    assert (carol / "results/selfgen/tiny.jsonl").read_bytes() == (repo / "results/selfgen/tiny.jsonl").read_bytes()
    checkpoint = carol / "results/recovered/tiny/bi/0.5/sgr"
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(
        p.name for p in (repo / "results/recovered/tiny/bi/0.5/sgr").iterdir()
    )
    assert not (carol / "results/recovered/tiny/bi/0.5/data").exists()
    assert not (carol / "results/eval").exists()

    dvc(tmp_path, "get", str(repo), "results/selfgen/tiny.jsonl", "-o", "sgr.jsonl")
    assert (tmp_path / "sgr.jsonl").read_bytes() == (repo / "results/selfgen/tiny.jsonl").read_bytes()


def test_dvc_experiment_changes_a_setting_and_compares_metrics(alice, tmp_path):
    repo, config, _ = alice
    exp = tmp_path / "exp"
    shutil.copytree(repo, exp, symlinks=True, copy_function=shutil.copy2)  # leave Alice's repo as it is
    dvc(exp, "exp", "run", "-n", "fewer-knowledge", "-S", "config.yaml:tasks.knowledge.limit=3")
    # `dvc exp show` tables the experiment beside the baseline: its setting and its metrics
    table = dvc(exp, "exp", "show", "--csv", "--no-pager")
    header, *rows = [r for r in csv.reader(io.StringIO(table)) if r]
    row = next((r for r in rows if "fewer-knowledge" in r), None)
    assert row is not None, table[:3000]
    limit = next(i for i, name in enumerate(header) if name.endswith("tasks.knowledge.limit"))
    assert row[limit] == "3"
    assert any(name.endswith("knowledge.value") for name in header), header
    diff = json.loads(dvc(exp, "metrics", "diff", "HEAD", "fewer-knowledge", "--json"))
    # (NaN, e.g. retention against a dense value of 0, never equals itself: not a change)
    changed = {key: d for key, d in diff["results/report/metrics.json"].items() if d.get("diff") == d.get("diff")}
    assert changed, diff
    assert any("knowledge" in key for key in changed), sorted(changed)
    assert not any("addition" in key for key in changed), sorted(changed)
    assert config["tasks"]["knowledge"]["limit"] == 6
