"""Values that used to pass the plan and fail late (issue 27 §4): each is refused by `snakemake -n`, naming its
key, on one line.

Two dry runs on a scratch copy of the workflow: one with every bad value the schema and the config checks see,
one (schema-clean, so that the models and this machine are looked at) with what only the machine can tell.
"""

from __future__ import annotations

import copy
import os
import subprocess

import pytest
from helpers.plans import DEFAULT, checkpoint_config, dry_run, local_study
from helpers.workflow import snakemake, workflow_copy


def test_every_late_failure_is_refused_at_plan_time_naming_its_key(tmp_path):
    config = copy.deepcopy(DEFAULT)
    config["study"] = "mine/other"
    config["report"]["bootstrap_samples"] = 10**15
    task, spec = next(iter(config["tasks"].items()))
    config["tasks"]["late_samples"] = {**spec, "num_samples": 10**9, "temperature": 0.9}
    config["tasks"]["late_shots"] = {**spec, "num_fewshot": 10**5}
    config["prompts"]["num_prompts"] = 10**6
    config["tasks"]["outside"] = {
        "type": "generative",
        "dataset": "gsm8k",
        "file": "../../etc/passwd",
        "num_fewshot": 0,
    }
    config["tasks"]["outside_lm_eval"] = {
        "type": "classification", "lm_eval_task": "arc_easy", "num_fewshot": 0, "lm_eval_include_path": "a/../../..",
    }  # fmt: skip
    config["models"]["passwd"] = {"source": {"package": "layerprune", "gguf": "/etc/passwd"}}
    config["models"]["climbs"] = {"source": {"package": "layerprune", "gguf": "../../../../etc/passwd"}}
    config["models"]["shell"] = {"source": {"hub": "owner/name;touch pwned"}}
    config["models"]["dots"] = {"source": {"hub": "owner/../name"}}
    code, output = dry_run(tmp_path, config)
    print(output[-3000:])
    assert code != 0
    expected = {
        "study": "has characters a name cannot hold (allowed: letters, digits, _ - .; not 'shared')",
        "report.bootstrap_samples": "is out of range (allowed: >= 1 and <= 1000000)",
        "tasks.late_samples.num_samples": "is out of range",
        "tasks.late_shots.num_fewshot": "is out of range",
        "prompts.num_prompts": "is out of range",
        "tasks.outside.file": "'../../etc/passwd' leaves the study's folders",
        "tasks.outside_lm_eval.lm_eval_include_path": "'a/../../..' leaves the study's folders",
        "models.passwd.source.gguf": "'/etc/passwd' is not a file inside package 'layerprune'",
        "models.climbs.source.gguf": "is not a file inside package 'layerprune'",
        "models.shell.source.hub": "'owner/name;touch pwned' is not a Hugging Face hub id",
        "models.dots.source.hub": "'owner/../name' is not a Hugging Face hub id",
    }
    lines = output.splitlines()
    for key, message in expected.items():
        named = [line for line in lines if f": {key}: " in line]
        assert named and message in named[0], (key, named)
    assert "Traceback" not in output


@pytest.fixture
def read_only_results(tmp_path):
    workdir = workflow_copy(tmp_path / "wf")
    (workdir / "results").mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(workdir / "results")])
    if done.returncode != 0 or os.access(workdir / "results", os.W_OK):
        pytest.skip("cannot make a read-only results folder here (needs root to mount one)")
    yield workdir
    subprocess.run(["umount", "-l", str(workdir / "results")], check=True)


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_what_only_this_machine_can_tell_is_refused_at_plan_time(tmp_path, read_only_results):
    model = checkpoint_config(tmp_path / "llama", "llama", num_layers=4)
    (model / "tokenizer.json").unlink()
    config = local_study(model, [0.25])
    config["prompts"] = {**config["prompts"], "source": "jsonl", "path": "prompts/missing.jsonl"}
    workdir = workflow_copy(read_only_results, config)
    result = snakemake(workdir, "-n", "--cores", "1", check=False)
    output = result.stdout + result.stderr
    print(output[-2000:])
    assert result.returncode != 0 and "Traceback" not in output
    expected = {
        "models.mine.source.path": "has no tokenizer (tokenizer.json is missing",
        "results": "is not writable (Read-only file system)",
        "prompts.path": "no such file 'prompts/missing.jsonl'",
    }
    for key, message in expected.items():
        named = [line for line in output.splitlines() if f": {key}: " in line]
        assert named and message in named[0], (key, named)
