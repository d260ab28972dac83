"""Sharing a finished run through a real DVC remote, and DVC experiments over it.

Alice's repository is a copy of the session's one real tiny run (conftest.tiny_run)
with git and the repository's own DVC setup around it (.dvc/config, .dvcignore,
.gitignore): the README's steps as typed, `dvc remote add`, `dvc repro` (Snakemake
finds nothing to do, DVC records the outputs), `dvc push`. Bob clones it, `dvc pull`s,
runs the documented sync step, and Snakemake has nothing left to do; a changed setting
then plans in Bob's clone exactly what it plans in Alice's checkout.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml
from workflow_helpers import BIN, REPO, TINY_STUDY, VARIANT_JOBS, copy_run, planned_jobs, run, variant_study

pytestmark = pytest.mark.slow

RESULTS = f"results/{TINY_STUDY}"


def git(cwd: Path, *args: str) -> str:
    return run(["git", *args], cwd=cwd).stdout


def dvc(cwd: Path, *args: str) -> str:
    return run([str(BIN / "dvc"), *args], cwd=cwd).stdout


def sync_after_pull(cwd: Path) -> None:
    """The README's step after `dvc pull`, once per study: DVC does not keep mtimes, so mark
    what was pulled as up to date (in DAG order); the params each output was made with come
    with the clone (.snakemake/metadata, versioned by git). The BIG-bench sdist is fetched
    again first (a link into the user cache, not versioned)."""
    run([str(BIN / "snakemake"), "--cores", "1", "resources/bigbench-1.0.0.tar.gz"], cwd=cwd)
    run([str(BIN / "snakemake"), "--touch", "--cores", "1"], cwd=cwd)
    if (cwd / "variant.yaml").exists():
        run([str(BIN / "snakemake"), "--touch", "--cores", "1", "--configfile", "variant.yaml"], cwd=cwd)


def with_setting(repo: Path, key: str, value) -> str:
    """Write changed.yaml: the repo's config.yaml with one dotted key changed (the same study)."""
    config = yaml.safe_load((repo / "config.yaml").read_text())
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = value
    (repo / "changed.yaml").write_text(yaml.safe_dump(config))
    return "changed.yaml"


@pytest.fixture(scope="module")
def alice(tiny_run, tmp_path_factory):
    """Alice's repository: the finished run, committed to git, its artifacts pushed."""
    workdir, config = tiny_run
    root = tmp_path_factory.mktemp("dvc")
    repo = copy_run(workdir, root / "alice")
    (repo / "changed.yaml").unlink(missing_ok=True)
    for name in (".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    shutil.copytree(
        REPO / "src" / "layerprune", repo / "src" / "layerprune", ignore=shutil.ignore_patterns("__pycache__")
    )  # a dependency in dvc.yaml
    git(repo, "init", "-q", "-b", "main")
    # DVC commits experiments too: a repository-local identity, whatever the machine has
    git(repo, "config", "user.name", "layerprune test")
    git(repo, "config", "user.email", "test@layerprune")
    # the README's step, as typed: the repository ships its DVC setup (no `dvc init`)
    dvc(repo, "remote", "add", "-d", "shared", str(root / "remote"))
    # a second study versioned beside the first, as the README says: its command and its config file
    (repo / "variant.yaml").write_text(yaml.safe_dump(variant_study(config)))
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())
    stages["stages"]["pipeline"]["cmd"].append("snakemake --cores all --configfile variant.yaml")
    stages["stages"]["pipeline"]["params"].append({"variant.yaml": None})
    (repo / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    assert planned_jobs(repo, "--configfile", "variant.yaml") == VARIANT_JOBS
    # the outputs persist: DVC runs `snakemake` for the tiny study, which has nothing to do, then for
    # the variant, and records them (DVC leaves the files in place, linked to its cache: mtimes stay)
    summary = repo / RESULTS / "report" / "summary.csv"
    mtime = summary.stat().st_mtime_ns
    dvc(repo, "repro")
    assert summary.stat().st_mtime_ns == mtime
    assert planned_jobs(repo) == {} and planned_jobs(repo, "--configfile", "variant.yaml") == {}
    assert (repo / "results" / "variant" / "report" / "summary.csv").is_file()
    dvc(repo, "push")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "tiny study")
    return repo, config, root


def test_pulled_checkpoints_are_not_stored_twice(alice):
    """cache.type (reflink, else hardlink): a pulled checkpoint is the cache's own file, not a copy."""
    repo, _, root = alice
    dave = root / "dave"
    run(["git", "clone", "-q", str(repo), str(dave)], cwd=root)
    dvc(dave, "pull", f"{RESULTS}/recovered")
    weights = next((dave / RESULTS / "recovered").rglob("*.safetensors"))
    cached = [p for p in (dave / ".dvc" / "cache").rglob("*") if p.is_file() and p.samefile(weights)]
    # on this file system (no reflinks) a hardlink: one inode, one copy on disk
    assert weights.stat().st_nlink > 1 and cached, "the checkpoint is a copy of the cache's file"


def test_provenance_and_resources_are_versioned(alice):
    repo, _, _ = alice
    tracked = git(repo, "ls-files", ".snakemake").split()
    assert tracked and all(path.startswith(".snakemake/metadata/") for path in tracked), tracked[:5]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["pipeline"]
    assert {out["path"] for out in lock["outs"]} == {"results", "resources/bigbench", ".snakemake/metadata"}


def test_fresh_clone_pulls_everything_and_plans_what_the_origin_plans(alice):
    repo, _, root = alice
    bob = root / "bob"
    run(["git", "clone", "-q", str(repo), str(bob)], cwd=root)
    assert not (bob / "results").exists() and not (bob / "resources").exists()
    sdist = bob / "resources" / "bigbench-1.0.0.tar.gz"
    dvc(bob, "pull")
    for path in (
        f"{RESULTS}/report/summary.csv",
        f"{RESULTS}/report/report.md",
        f"{RESULTS}/report/plots/tiny__addition.png",
        f"{RESULTS}/selfgen/tiny.jsonl",
        f"{RESULTS}/eval/tiny/bi/0.5/sgr/addition.json",
        "resources/bigbench/general_knowledge/task.json",
    ):
        assert (bob / path).read_bytes() == (repo / path).read_bytes(), path
    # the top-level metrics and plots of dvc.yaml, inside the pulled results/
    metrics = f"{RESULTS}/report/metrics.json"
    shown = json.loads(dvc(bob, "metrics", "show", "--json"))[""]["data"][metrics]["data"]
    assert shown.keys() == json.loads((repo / metrics).read_text()).keys()  # (NaN != NaN)
    plots = json.loads(dvc(bob, "plots", "show", "--json"))
    assert list(plots["data"]) == [f"{RESULTS}/report/summary.csv"] and not plots.get("errors"), plots.get("errors")
    assert not sdist.exists()
    sync_after_pull(bob)
    assert sdist.is_symlink()  # fetched again, into its place in the DAG: nothing re-extracted
    assert planned_jobs(bob) == {} and planned_jobs(bob, "--configfile", "variant.yaml") == {}
    # a changed setting plans in the clone exactly the jobs it plans in the origin (on 626b338, none
    # or a few, as the pull's mtimes had it: the clone had no record of the params of its outputs)
    for key, value, reached in [
        ("selfgen.temperature", 0.9, {"selfgen": 1, "recover": 2, "evaluate_variant": 4, "aggregate": 1, "all": 1}),
        ("recovery.learning_rate", 0.002, {"recover": 4, "evaluate_variant": 8, "aggregate": 1, "all": 1}),
        ("tasks.addition.limit", 5, {"prepare_task": 1, "evaluate_dense": 1, "evaluate_variant": 6}),
    ]:
        origin = planned_jobs(repo, "--configfile", with_setting(repo, key, value))
        (repo / "changed.yaml").unlink()
        assert planned_jobs(bob, "--configfile", with_setting(bob, key, value)) == origin, key
        assert reached.items() <= origin.items(), (key, origin)


def test_dvc_lock_records_only_settings_the_outputs_were_made_with(alice):
    """`dvc repro` in a clone after a changed setting: Snakemake re-runs the jobs it reaches, so
    the lock's params and the pulled-then-remade outputs agree (on 626b338 the lock said limit 3
    while every evaluation still held the old n)."""
    repo, _, root = alice
    carol = root / "carol-repro"
    run(["git", "clone", "-q", str(repo), str(carol)], cwd=root)
    dvc(carol, "pull")
    sync_after_pull(carol)
    config = yaml.safe_load((carol / "config.yaml").read_text())
    config["tasks"]["knowledge"]["limit"] = 3
    (carol / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    dvc(carol, "repro")
    lock = yaml.safe_load((carol / "dvc.lock").read_text())["stages"]["pipeline"]
    assert lock["params"]["config.yaml"]["tasks"]["knowledge"]["limit"] == 3
    for result in (carol / RESULTS / "eval").rglob("knowledge.json"):
        assert json.loads(result.read_text())["n"] == 3, result
    assert planned_jobs(carol) == {}


def test_colleague_gets_the_selfgen_dataset_and_a_checkpoint_without_running_anything(alice, tmp_path):
    """What the README tells a colleague: pull just the self-generated dataset and one
    checkpoint into a clone, or `dvc get` a file without cloning at all."""
    repo, _, root = alice
    carol = root / "carol"
    run(["git", "clone", "-q", str(repo), str(carol)], cwd=root)
    dvc(carol, "pull", f"{RESULTS}/selfgen", f"{RESULTS}/recovered/tiny/bi/0.5/sgr")
    selfgen = f"{RESULTS}/selfgen/tiny.jsonl"
    assert (carol / selfgen).read_bytes() == (repo / selfgen).read_bytes()
    checkpoint = f"{RESULTS}/recovered/tiny/bi/0.5/sgr"
    assert sorted(p.name for p in (carol / checkpoint).iterdir()) == sorted(
        p.name for p in (repo / checkpoint).iterdir() if p.name != ".snakemake_timestamp"
    )
    assert not (carol / f"{RESULTS}/recovered/tiny/bi/0.5/data").exists()
    assert not (carol / f"{RESULTS}/eval").exists()

    dvc(tmp_path, "get", str(repo), selfgen, "-o", "sgr.jsonl")
    assert (tmp_path / "sgr.jsonl").read_bytes() == (repo / selfgen).read_bytes()


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
    metrics = diff[f"{RESULTS}/report/metrics.json"]
    changed = {key: d for key, d in metrics.items() if d.get("diff") == d.get("diff")}
    assert changed, diff
    assert any("knowledge" in key for key in changed), sorted(changed)
    assert not any("addition" in key for key in changed), sorted(changed)
    assert config["tasks"]["knowledge"]["limit"] == 6
