"""Sharing a finished run through a real DVC remote, and DVC experiments over it.

Alice's repository is a copy of the session's one real tiny run (conftest.tiny_run)
with git and the repository's own DVC setup around it (.dvc/config, .dvcignore,
.gitignore, studies.yaml): `layerprune dvc-stages --add variant.yaml`, `dvc remote add`,
`dvc repro` (Snakemake finds nothing to do, DVC records the outputs and links them to its
cache: one copy on disk), `dvc push`. Bob clones it and types the README's colleague steps
(`dvc pull`), and Snakemake has nothing left to do; a changed setting then plans in Bob's
clone exactly the jobs it plans in Alice's checkout.

The tiny run and the studies of one's own at the end of this module read nothing from BIG-bench
(the project's own tasks, results/shared/builtin; two studies, the README's commands as typed,
the identical-file cases).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers.workflow import BIN, REPO, TINY_STUDY, VARIANT_JOBS, copy_run, planned_jobs, run, variant_study
from helpers.workflow import env as workflow_env

pytestmark = pytest.mark.slow

RESULTS = f"results/{TINY_STUDY}"


def git(cwd: Path, *args: str) -> str:
    return run(["git", *args], cwd=cwd).stdout


def dvc(cwd: Path, *args: str) -> str:
    return run([str(BIN / "dvc"), *args], cwd=cwd).stdout


def readme_steps(comment: str) -> list[str]:
    """The command lines under `# <comment>` in the README's DVC section, as typed (comments cut)."""
    section = (REPO / "README.md").read_text().split("## Sharing results with DVC", 1)[1].split("\n## ", 1)[0]
    block = section.split(f"# {comment}", 1)[1].split("\n\n", 1)[0].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines()[1:] if line.strip()]


COLLEAGUE_STEPS = readme_steps("a colleague who wants everything and to go on from there")


def sync_after_pull(cwd: Path) -> None:
    """The README's steps after `git clone` for a colleague who goes on from there, as typed: `dvc pull`
    (unless done already); the workflow restores the pulled outputs' times itself (layerprune.mtimes)."""
    for line in COLLEAGUE_STEPS:
        if line == "dvc pull" and (cwd / "results").exists():
            continue
        run(["bash", "-c", line], cwd=cwd)


def dry_run_jobs(output: str) -> set[tuple[str, str]]:
    """The jobs a Snakemake dry run or log lists: (rule, its outputs) for each."""
    jobs = set()
    for block in re.split(r"^(?:local)?rule ", output, flags=re.M)[1:]:
        rule, _, body = block.partition(":")
        outputs = re.search(r"^\s+output: (.*)$", body, flags=re.M)
        # (the outputs sorted: the order of a config's tasks orders the report's plots)
        jobs.add((rule.strip(), ", ".join(sorted(outputs.group(1).strip().split(", "))) if outputs else ""))
    return jobs


def planned(cwd: Path, *args: str) -> set[tuple[str, str]]:
    """The jobs `snakemake -n` plans (rule, outputs): the same set, not just the same counts."""
    result = run([str(BIN / "snakemake"), "-n", "--cores", "2", *args], cwd=cwd)
    output = result.stdout + result.stderr
    return set() if "Nothing to be done" in output else dry_run_jobs(output)


def ran(cwd: Path, since: set[Path]) -> set[tuple[str, str]]:
    """The jobs the Snakemake runs whose logs are not in `since` ran."""
    logs = set((cwd / ".snakemake" / "log").glob("*.snakemake.log")) - since
    return set().union(*(dry_run_jobs(log.read_text()) for log in logs))


def snakemake_logs(cwd: Path) -> set[Path]:
    return set((cwd / ".snakemake" / "log").glob("*.snakemake.log"))


def cache_inodes(repo: Path) -> dict[int, Path]:
    return {p.stat().st_ino: p for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file()}


def outputs(repo: Path) -> list[Path]:
    """The files DVC versions in results/ (Snakemake's timestamps left out)."""
    return [p for p in (repo / "results").rglob("*") if p.is_file() and p.name != ".snakemake_timestamp"]


def disk_bytes(*trees: Path) -> int:
    """Bytes the files under `trees` take, each inode once (what `du` counts)."""
    sizes = {}
    for tree in trees:
        for p in tree.rglob("*"):
            if p.is_file() and not p.is_symlink():
                stat = p.stat()
                sizes[stat.st_dev, stat.st_ino] = stat.st_size
    return sum(sizes.values())


def assert_cache_intact(repo: Path) -> None:
    """Each file in the cache still has the content its name (the md5) says: nothing wrote into it."""
    for path in cache_inodes(repo).values():
        if path.suffix != ".dir":
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            assert digest == path.parent.name + path.name, f"the cache file {path} was changed in place"


def assert_one_copy(repo: Path) -> None:
    """Every versioned file is the cache's own file (a hardlink), and the cache is intact."""
    cached = cache_inodes(repo)
    copies = [p.relative_to(repo).as_posix() for p in outputs(repo) if p.stat().st_ino not in cached]
    assert not copies, f"{len(copies)} files are copies beside the cache, e.g. {copies[:3]}"
    assert_cache_intact(repo)


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
    for name in (".gitignore", ".dvcignore", "studies.yaml"):
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
    # a second study versioned beside the first, as the README says: one command
    (repo / "variant.yaml").write_text(yaml.safe_dump(variant_study(config)))
    run([str(BIN / "layerprune"), "dvc-stages", "--add", "variant.yaml"], cwd=repo)
    assert set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]) == {"default", "variant", "shared"}
    assert planned_jobs(repo, "--configfile", "variant.yaml") == VARIANT_JOBS
    # the outputs persist: DVC runs `snakemake` for the tiny study, which has nothing to do, then for
    # the variant, and records them (DVC leaves the files in place, linked to its cache: mtimes stay)
    summary = repo / RESULTS / "report" / "summary.csv"
    mtime = summary.stat().st_mtime_ns
    dvc(repo, "repro")
    assert summary.stat().st_mtime_ns == mtime
    assert planned_jobs(repo) == {} and planned_jobs(repo, "--configfile", "variant.yaml") == {}
    # one copy on disk: DVC linked what it versions to its cache (with `reflink,hardlink,copy`, on a file
    # system without reflinks, every file stayed a copy beside its cached twin: twice the bytes)
    assert_one_copy(repo)
    workspace = disk_bytes(repo / "results")
    together = disk_bytes(repo / "results", repo / ".dvc" / "cache")
    print(f"after dvc repro: results {workspace} bytes, with the cache {together} bytes")
    assert together < 1.05 * workspace
    assert (repo / "results" / "variant" / "report" / "summary.csv").is_file()
    dvc(repo, "push")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "tiny study")
    return repo, config, root


def test_pulled_checkpoints_are_not_stored_twice(alice):
    """cache.type (hardlink, else symlink): a pulled checkpoint is the cache's own file, not a copy."""
    repo, _, root = alice
    dave = root / "dave"
    run(["git", "clone", "-q", str(repo), str(dave)], cwd=root)
    dvc(dave, "pull", f"{RESULTS}/recovered")
    weights = next((dave / RESULTS / "recovered").rglob("*.safetensors"))
    cached = [p for p in (dave / ".dvc" / "cache").rglob("*") if p.is_file() and p.samefile(weights)]
    # on this file system (no reflinks) a hardlink: one inode, one copy on disk
    assert weights.stat().st_nlink > 1 and cached, "the checkpoint is a copy of the cache's file"


def test_provenance_and_each_study_are_versioned(alice):
    repo, _, _ = alice
    tracked = git(repo, "ls-files", ".snakemake").split()
    assert tracked and all(path.startswith(".snakemake/metadata/") for path in tracked), tracked[:5]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    outs = {stage: {out["path"] for out in lock[stage]["outs"]} for stage in lock}
    assert outs == {
        "default": {"results/default"},
        "variant": {"results/variant"},
        "shared": {"results/shared", ".snakemake/metadata"},
    }


def test_fresh_clone_pulls_everything_and_plans_what_the_origin_plans(alice):
    repo, _, root = alice
    bob = root / "bob"
    run(["git", "clone", "-q", str(repo), str(bob)], cwd=root)
    assert not (bob / "results").exists() and not (bob / "resources").exists()
    dvc(bob, "pull")
    for path in (
        f"{RESULTS}/report/summary.csv",
        f"{RESULTS}/report/report.md",
        f"{RESULTS}/report/plots/tiny__addition.png",
        f"{RESULTS}/selfgen/tiny.jsonl",
        f"{RESULTS}/eval/tiny/bi/0.5/sgr/addition.json",
        "results/shared/builtin/country_continent/task.json",  # the project's own tasks, built once
    ):
        assert (bob / path).read_bytes() == (repo / path).read_bytes(), path
    # the top-level metrics and plots of dvc.yaml, inside the pulled results/
    metrics = f"{RESULTS}/report/metrics.json"
    shown = json.loads(dvc(bob, "metrics", "show", "--json"))[""]["data"][metrics]["data"]
    assert shown.keys() == json.loads((repo / metrics).read_text()).keys()  # (NaN != NaN)
    plots = json.loads(dvc(bob, "plots", "show", "--json"))
    assert f"{RESULTS}/report/summary.csv" in plots["data"] and not plots.get("errors"), plots.get("errors")
    assert_one_copy(bob)  # pulled files are the cache's own
    sync_after_pull(bob)
    assert planned(bob) == set() and planned(bob, "--configfile", "variant.yaml") == set()
    # a changed setting plans in the clone exactly the jobs it plans in the origin (on 626b338, none
    # or a few, as the pull's mtimes had it: the clone had no record of the params of its outputs)
    for key, value, reached in [
        ("selfgen.temperature", 0.9, {"selfgen": 1, "recover": 2, "evaluate_variant": 4, "aggregate": 1, "all": 1}),
        ("recovery.learning_rate", 0.002, {"recover": 4, "evaluate_variant": 8, "aggregate": 1, "all": 1}),
        (
            "tasks.addition.limit",
            5,
            {"prepare_task": 1, "evaluate_dense": 1, "evaluate_variant": 4, "evaluate_pruned": 2},
        ),
    ]:
        origin = planned(repo, "--configfile", with_setting(repo, key, value))
        (repo / "changed.yaml").unlink()
        assert planned(bob, "--configfile", with_setting(bob, key, value)) == origin, key
        counts = {rule: sum(1 for r, _ in origin if r == rule) for rule in reached}
        assert counts == reached, (key, sorted(origin))


def test_dvc_lock_records_only_settings_the_outputs_were_made_with(alice):
    """`dvc repro` in a clone after a changed setting: Snakemake re-runs the jobs it reaches, so
    the lock's params and the pulled-then-remade outputs agree (on 626b338 the lock said limit 3
    while every evaluation still held the old n)."""
    repo, _, root = alice
    origin = planned(repo, "--configfile", with_setting(repo, "tasks.knowledge.limit", 3))
    (repo / "changed.yaml").unlink()
    carol = root / "carol-repro"
    run(["git", "clone", "-q", str(repo), str(carol)], cwd=root)
    sync_after_pull(carol)
    config = yaml.safe_load((carol / "config.yaml").read_text())
    config["tasks"]["knowledge"]["limit"] = 3
    (carol / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = snakemake_logs(carol)
    dvc(carol, "repro")
    # exactly the jobs the change plans in the origin ran (with `snakemake --touch` as the sync step, 22 jobs
    # instead of these 10: DVC replaced the files of a pulled directory that the touch had left without a
    # timestamp, and everything downstream of the dense model looked out of date)
    assert ran(carol, before) == origin, sorted(ran(carol, before) ^ origin)
    lock = yaml.safe_load((carol / "dvc.lock").read_text())["stages"]["default"]
    assert lock["params"]["config.yaml"]["tasks"]["knowledge"]["limit"] == 3
    for result in (carol / RESULTS / "eval").rglob("knowledge.json"):
        assert json.loads(result.read_text())["n"] == 3, result
    assert planned(carol) == set() and planned(carol, "--configfile", "variant.yaml") == set()
    assert_one_copy(carol)  # `dvc repro` copied every linked file before the run, and linked them again after


def test_rerun_replaces_read_only_linked_outputs_and_leaves_the_cache_intact(alice, tmp_path):
    """After `dvc repro`, outputs are read-only hardlinks into the cache. A plain `snakemake` re-run
    replaces them (Snakemake deletes a job's outputs, `layerprune` renames a temporary into place): the
    cache keeps its content, and `dvc commit` links the new files to it: one copy again."""
    repo, _, _ = alice
    origin = tmp_path / "origin"
    subprocess.run(["cp", "-a", str(repo), str(origin)], check=True)  # keeps the hardlinks between results and cache
    # a checkpoint whose only consumers are its two evaluations and the report: 4 jobs re-made (the shared
    # pruned checkpoint would re-make every recovery and evaluation of its ratio too)
    recovered = origin / RESULTS / "recovered" / "tiny" / "bi" / "0.5" / "sgr"
    summary = origin / RESULTS / "report" / "summary.csv"
    weights = next(recovered.glob("*.safetensors"))
    for path in (weights, summary):  # DVC's links are read-only (mode 0444)
        assert path.stat().st_nlink > 1 and not path.stat().st_mode & 0o222, path
    old = {path: path.stat().st_ino for path in (weights, summary)}
    # a directory output and the report's files, made again in place of their linked versions
    run(
        [
            str(BIN / "snakemake"),
            "--cores",
            "2",
            "-f",
            str(recovered.relative_to(origin)),
            str(summary.relative_to(origin)),
        ],
        cwd=origin,
    )
    for path, inode in old.items():
        assert path.stat().st_ino != inode and path.stat().st_nlink == 1, path
    assert_cache_intact(origin)
    dvc(origin, "commit", "-f")
    assert_one_copy(origin)
    assert dvc(origin, "status").strip().startswith("Data and pipelines are up to date")


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


# ------------------------------------------------------------------ studies of one's own (no BIG-bench)


def keep_mtimes_plan(cwd: Path, *args: str) -> set[tuple[str, str]]:
    """What `snakemake -n` would plan if the workflow did not restore DVC's links' times first (measured
    before the plain dry run, which restores them)."""
    result = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--cores", "2", *args],
        cwd=cwd,
        env={**workflow_env(), "LAYERPRUNE_KEEP_MTIMES": "1"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    return set() if "Nothing to be done" in output else dry_run_jobs(output)


STUDIES = {"my-study": "my-study.yaml", "other-study": "other-study.yaml"}


def plans_of_both(cwd: Path) -> tuple[dict[str, set], dict[str, set]]:
    """(without the restore, with it) for both studies: each a study -> planned jobs."""
    kept = {study: keep_mtimes_plan(cwd, "--configfile", file) for study, file in STUDIES.items()}
    restored = {study: planned(cwd, "--configfile", file) for study, file in STUDIES.items()}
    return kept, restored


def identical_files_across(repo: Path, first: str, second: str) -> list[str]:
    """Files of study `second` that are one inode with a file of study `first` (DVC linked equal contents)."""
    inodes = {p.stat().st_ino for p in (repo / "results" / first).rglob("*") if p.is_file()}
    return [
        p.relative_to(repo).as_posix()
        for p in (repo / "results" / second).rglob("*")
        if p.is_file() and p.stat().st_ino in inodes
    ]


@pytest.fixture(scope="module")
def own_origin(tmp_path_factory):
    """Two studies of one's own (no BIG-bench, differing in one selfgen setting) versioned with the README's
    commands as typed: `layerprune dvc-stages my-study.yaml`, `layerprune dvc-stages --add other-study.yaml`,
    `dvc repro`, `dvc push`."""
    from helpers.models import CHAT_TEMPLATE, make_tiny_checkpoint
    from helpers.workflow import local_config, workflow_copy, write_local_data

    root = tmp_path_factory.mktemp("own")
    model_dir = make_tiny_checkpoint(root / "tiny-model", family="llama", num_layers=4, chat_template=CHAT_TEMPLATE)
    repo = workflow_copy(root / "origin")  # config.yaml: the repository's default, which nobody runs here
    write_local_data(repo)
    mine = local_config(model_dir, "my-study")
    other = copy.deepcopy(mine)
    other["study"] = "other-study"
    other["selfgen"]["temperature"] = 0.9
    (repo / "my-study.yaml").write_text(yaml.safe_dump(mine, sort_keys=False))
    (repo / "other-study.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    for name in (".gitignore", ".dvcignore", "studies.yaml"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    shutil.copytree(
        REPO / "src" / "layerprune", repo / "src" / "layerprune", ignore=shutil.ignore_patterns("__pycache__")
    )
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "layerprune test")
    git(repo, "config", "user.email", "test@layerprune")
    dvc(repo, "remote", "add", "-d", "shared", str(root / "remote"))
    for line in readme_steps("a study of your own, versioned by DVC") + readme_steps("a second study beside it"):
        run(["bash", "-c", line], cwd=repo)
    lock = yaml.safe_load((repo / "dvc.yaml").read_text())
    assert set(lock["stages"]) == {"my-study", "other-study", "shared"}, lock["stages"].keys()
    dvc(repo, "repro")
    dvc(repo, "push")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "two studies")
    return repo, root


def test_own_studies_repro_then_plans_nothing(own_origin):
    """After `dvc repro` of two studies that share byte-identical files (one inode, the older study's time),
    `snakemake -n` plans nothing for either, with no step by hand."""
    repo, _ = own_origin
    assert not (repo / "resources").exists()  # no BIG-bench: neither study needs it, nor does DVC
    shared = identical_files_across(repo, "my-study", "other-study")
    assert shared, "the two studies share no identical file: the case is not exercised"
    kept, restored = plans_of_both(repo)
    print(f"after dvc repro, without restoring times: {kept}; identical files: {len(shared)}")
    assert any(kept.values()), "nothing re-planned even without the restore: the case is not exercised"
    assert restored == {"my-study": set(), "other-study": set()}, restored
    assert_cache_intact(repo)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {out["path"] for out in lock["shared"]["outs"]} == {"results/shared", ".snakemake/metadata"}
    assert [out["path"] for out in lock["my-study"]["outs"]] == ["results/my-study"]


def test_own_studies_clone_pull_change_checkout_plan_nothing(own_origin):
    """In a clone: the README's colleague steps (`dvc pull`), then a `lora_r` change and `dvc repro` (a re-made
    evaluation identical to an older cached one is linked to that old file), then `dvc checkout` of the
    first commit: after each, `snakemake -n` plans nothing for either study."""
    repo, root = own_origin
    bob = root / "bob"
    run(["git", "clone", "-q", str(repo), str(bob)], cwd=root)
    for line in COLLEAGUE_STEPS:
        run(["bash", "-c", line], cwd=bob)
    assert not (bob / "resources").exists()
    measured = {}
    kept, restored = plans_of_both(bob)
    measured["dvc pull"] = kept
    assert restored == {"my-study": set(), "other-study": set()}, restored
    assert_one_copy(bob)

    config = yaml.safe_load((bob / "my-study.yaml").read_text())
    config["recovery"]["lora_r"] = 8
    (bob / "my-study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = snakemake_logs(bob)
    dvc(bob, "repro")
    reran = ran(bob, before)
    assert {rule for rule, _ in reran} == {"recover", "evaluate_variant", "aggregate", "all"}, sorted(reran)
    kept, restored = plans_of_both(bob)
    measured["lora_r change, dvc repro"] = kept
    assert restored == {"my-study": set(), "other-study": set()}, restored
    git(bob, "config", "user.name", "bob")
    git(bob, "config", "user.email", "bob@layerprune")
    git(bob, "commit", "-q", "-am", "lora_r 8")

    git(bob, "checkout", "-q", "HEAD~1")
    dvc(bob, "checkout")
    kept, restored = plans_of_both(bob)
    measured["git checkout HEAD~1, dvc checkout"] = kept
    assert restored == {"my-study": set(), "other-study": set()}, restored
    print("planned without restoring times:", {step: {s: len(j) for s, j in k.items()} for step, k in measured.items()})
    # the re-made file identical to an older cached one: without the restore, its job would run again
    assert any(measured["lora_r change, dvc repro"].values()), measured
