"""The pipeline on a real single-node SLURM cluster, through `snakemake --profile slurm`.

The session fixture starts the cluster with scripts/slurm_test_cluster.sh (installing
Debian's slurm and munge packages when they are missing, which needs root). If it
cannot start, the test fails and says why: CI must not pass without having run it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from helpers.models import make_tiny_checkpoint
from helpers.workflow import BIN, REPO, env, planned_jobs, run, snakemake, tiny_config, workflow_copy

SCRIPT = REPO / "scripts" / "slurm_test_cluster.sh"
ACCOUNT = "layerprune"
PARTITION = "debug"
LOCAL_RULES = {
    "all",
    "build_task",
    "fetch_bigbench",
    "extract_bigbench",
    "prepare_task",
    "prepare_lm_eval_task",
    "prepare_prompts",
    "filter_prompts",
    "prepare_calibration",
    "prepare_heal",
    "aggregate",
}


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running cluster while this module's tests run; SLURM_CONF exported for snakemake, sbatch and sacct.

    Stopped afterwards: the stop also removes the cluster's /etc/slurm/slurm.conf link, without
    which a later `snakemake` would wait 9 s at start-up for the stopped controller (its slurm
    plugin asks `scontrol show config`)."""
    result = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(
            f"the SLURM test cluster did not start (`bash {SCRIPT.relative_to(REPO)} start` exited "
            f"{result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}",
            pytrace=False,
        )
    conf = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True, check=True).stdout
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf.strip().split("=", 1)[1]
    yield os.environ["SLURM_CONF"]
    subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


def sacct_jobs(workdir: Path, since: str) -> list[dict]:
    """Every SLURM job (allocation, not step) started since `since` from `workdir`."""
    fields = ["JobID", "Comment", "State", "Account", "Partition", "Timelimit", "ReqMem", "ReqCPUS", "WorkDir"]
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-a", "-S", since, "-o", ",".join(fields)],
        capture_output=True,
        text=True,
        check=True,
        env=env(),
    ).stdout
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line.strip()]
    return [row for row in rows if Path(row["WorkDir"]).resolve() == workdir.resolve()]


def rule_of(comment: str) -> str:
    match = re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", comment)
    assert match, comment
    return match.group(1)


def slurm_config(config: dict) -> dict:
    """The shared tiny run's config cut to one ratio, `none` and `sgr`: every stage, fewer jobs."""
    cfg = copy.deepcopy(config)
    cfg["pruning"]["ratios"] = [0.5]
    cfg["recovery"]["methods"] = ["none", "sgr"]
    cfg["resources"]["default"].update(slurm_account=ACCOUNT, slurm_partition=PARTITION)
    cfg["resources"]["evaluate"] = {"mem_mb": 1500, "runtime": 7}
    return cfg


# Files every run writes the same bytes into, given the same seed, config and threads:
# datasets, scores, self-generated responses, weights, evaluations. (pruning.json,
# mergekit.yaml and training_args.json record absolute paths, so they differ by place.)
COMPARED = (
    "shared/**/*.json*",
    "*/data/**/*.json*",
    "*/scores/**/*.json",
    "*/selfgen/*.jsonl",
    "*/eval/**/*.json",
    "shared/models/**/*.safetensors",
    "*/pruned/**/*.safetensors",
    "*/recovered/**/*.safetensors",
)
PLACE_DEPENDENT = {"pruning.json", "mergekit.yaml", "training_args.json"}  # they record absolute paths


@pytest.mark.slow
def test_pipeline_through_slurm_matches_the_local_run(slurm_cluster, tiny_run, tmp_path):
    local, config = tiny_run
    cfg = slurm_config(config)
    workdir = workflow_copy(tmp_path / "wf", cfg)
    expected = {rule: n for rule, n in planned_jobs(workdir).items() if rule not in LOCAL_RULES}
    assert expected == {
        "materialize": 1,
        "score": 1,
        "prune": 1,
        "selfgen": 1,
        "recover": 1,
        "evaluate_dense": 2,
        "evaluate_pruned": 2,  # none: shared by fingerprint (results/shared/eval/)
        "evaluate_variant": 2,  # sgr
    }

    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    result = snakemake(workdir, "--profile", "slurm", "--slurm-init-seconds-before-status-checks", "2")
    jobs = sacct_jobs(workdir, since)

    # every cluster job went through sbatch and finished; the light rules stayed local
    assert Counter(rule_of(job["Comment"]) for job in jobs) == expected, result.stderr[-3000:]
    assert {job["State"] for job in jobs} == {"COMPLETED"}
    submitted = set(re.findall(r"SLURM jobid (\d+)", result.stdout + result.stderr))
    assert not submitted or submitted == {job["JobID"] for job in jobs}
    # each rule's config resources reached sbatch
    for job in jobs:
        assert (job["Account"], job["Partition"], job["ReqCPUS"]) == (ACCOUNT, PARTITION, "1")
        evaluate = rule_of(job["Comment"]).startswith("evaluate")
        assert job["Timelimit"] == ("00:07:00" if evaluate else "00:10:00"), job
        assert job["ReqMem"].rstrip("Mn") == ("1500" if evaluate else "2000"), job

    # the same bytes as the local run, file by file
    compared = 0
    for pattern in COMPARED:
        for path in sorted((workdir / "results").glob(pattern)):
            if path.name in PLACE_DEPENDENT:  # the pruned checkpoint now lies under shared/: compared below
                continue
            relative = path.relative_to(workdir)
            assert path.read_bytes() == (local / relative).read_bytes(), f"{relative} differs from the local run"
            compared += 1
    assert compared >= 14
    shared = workdir / "results" / "shared" / "pruned"
    (pruning,) = [path.relative_to(workdir) for path in shared.glob("*/tiny/bi/0.5/pruning.json")]
    assert (
        json.loads((workdir / pruning).read_text())["removed_layers"]
        == json.loads((local / pruning).read_text())["removed_layers"]
    )
    assert planned_jobs(workdir) == {}
    assert yaml.safe_load((workdir / "config.yaml").read_text()) == cfg


@pytest.mark.slow
def test_cluster_jobs_run_the_threads_slurm_allocates(slurm_cluster, tmp_path):
    """A 1-CPU submit host (taskset): `--cores all` would run a 2-CPU job on 1 thread, so it is refused before
    anything is submitted; the documented `snakemake --profile slurm` runs it on 2, and the job's SLURM log shows
    its command (the slurm profile's printshellcmds, no longer overridden by profiles/default)."""
    cfg = slurm_config(tiny_config(make_tiny_checkpoint(tmp_path / "model", family="llama", num_layers=4)))
    cfg["resources"]["score"] = {"threads": 2}
    workdir = workflow_copy(tmp_path / "wf", cfg)
    target = "--until=score"  # the score job and what it needs (its file: results/shared/scores/<fingerprint>/)
    one_cpu = ["taskset", "-c", "0", str(BIN / "snakemake")]
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))

    refused = run([*one_cpu, "--cores", "all", "--profile", "slurm", target], workdir, check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output[-3000:]
    assert "--cores 1 caps every cluster job's threads at 1" in output and ": score 2." in output, output[-3000:]
    assert sacct_jobs(workdir, since) == []

    cluster_options = ["--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs"]
    result = run([*one_cpu, "--profile", "slurm", *cluster_options, target], workdir)
    jobs = {rule_of(job["Comment"]): job for job in sacct_jobs(workdir, since)}
    assert set(jobs) == {"materialize", "score"}, result.stderr[-3000:]
    assert (jobs["score"]["State"], jobs["score"]["ReqCPUS"]) == ("COMPLETED", "2")
    (log,) = (workdir / ".snakemake" / "slurm_logs" / "rule_score").rglob(f"{jobs['score']['JobID']}.log")
    # printed by the job's snakemake, then by its jobstep (srun) snakemake: both run 2 threads
    commands = [line for line in log.read_text().splitlines() if line.startswith("Shell command: layerprune score ")]
    assert commands and all("--threads 2 " in command for command in commands), commands
