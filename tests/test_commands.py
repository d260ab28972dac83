"""The documented `snakemake` commands, taken literally from README.md, docs/ and the configs' headers.

A config given with --configfile is the whole study: the embedded default (config.yaml)
applies only when none is given, and `--config key=value` overrides either. Each
command is dry-run in a scratch copy of the workflow and must plan exactly its study.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys

import pytest
import yaml
from helpers.plans import DEFAULT_JOBS, checkpoint_config
from helpers.workflow import REPO, jobs_of, run, shell_commands, snakemake, workflow_copy

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "configs").glob("*.yaml"))]
# The plans, counted from each study's grid. compare-methods: 9 methods (8 by `score`, iterative by its
# own rule) x 1 ratio x recovery none x 6 tasks; no prompt set, as nothing trains.
# build_task: the project's own tasks, once each (calibration 1; tasks 1 + 3 + 8 + 1 + 1).
COMPARE_METHODS_JOBS = {
    "all": 1, "build_task": 15, "prepare_task": 6, "prepare_calibration": 1,
    "materialize": 1, "score": 8, "score_iterative": 1, "prune": 9, "evaluate_dense": 6, "evaluate_pruned": 54,
    "aggregate": 1,
}  # fmt: skip
PAPER_JOBS = {
    "all": 1, "build_task": 12, "prepare_task": 10, "prepare_lm_eval_task": 7,
    "prepare_prompts": 1, "prepare_calibration": 1, "materialize": 3, "score": 6, "score_iterative": 3, "prune": 27,
    "filter_prompts": 3, "selfgen": 3, "recover": 54, "evaluate_dense": 42, "evaluate_pruned": 378,
    "evaluate_variant": 756, "aggregate": 1,
}  # fmt: skip
# my-study.yaml (README): one local model, one task, one method, one ratio, recoveries none and sgr.
MY_STUDY = {
    "seed": 0,
    "models": {"mine": {"source": {"path": "checkpoints/mine"}}},
    "scoring": {"methods": ["reverse"], "calibration": {"num_samples": 4}},
    "pruning": {"ratios": [0.5]},
    "prompts": {"builtin_tasks": ["word_unscrambling"], "num_prompts": 4},
    "selfgen": {"max_new_tokens": 4, "temperature": 0.7, "top_p": 0.95},
    "recovery": {
        "methods": ["none", "sgr"], "lora_r": 2, "lora_alpha": 4, "lora_dropout": 0.0, "learning_rate": 1e-3,
        "num_epochs": 1, "batch_size": 2, "grad_accum": 1, "max_length": 32, "warmup_steps": 0,
        "lr_scheduler": "constant", "weight_decay": 0.0,
    },
    "tasks": {
        "addition": {
            "type": "generative", "dataset": "builtin", "builtin_task": "arithmetic/1_digit_addition",
            "num_fewshot": 1,
        },
    },
    "evaluation": {},
    "resources": {"default": {"threads": 1, "mem_mb": 2000, "runtime": 10, "gpus": 0}},
}  # fmt: skip
MY_STUDY_JOBS = {
    "all": 1, "build_task": 2, "prepare_task": 1, "prepare_prompts": 1,
    "materialize": 1, "score": 1, "prune": 1, "filter_prompts": 1, "selfgen": 1, "recover": 1, "evaluate_dense": 1,
    "evaluate_pruned": 1, "evaluate_variant": 1, "aggregate": 1,
}  # fmt: skip
# configs/cpu-small.yaml: the small CPU study to copy; no BIG-bench, Magpie prompts, one task.
CPU_SMALL_JOBS = {
    "all": 1, "materialize": 1, "prepare_task": 1, "magpie_prompts": 1, "score": 1, "prune": 1, "selfgen": 1,
    "recover": 1, "evaluate_dense": 1, "evaluate_pruned": 1, "evaluate_variant": 1, "aggregate": 1,
}  # fmt: skip
EXPECTED = {
    "configs/cpu-small.yaml": CPU_SMALL_JOBS,
    "configs/paper.yaml": PAPER_JOBS,
    "configs/compare-methods.yaml": COMPARE_METHODS_JOBS,
    "my-study.yaml": MY_STUDY_JOBS,
    None: DEFAULT_JOBS,
}


def documented_commands() -> list[tuple[str, str]]:
    """(document, command) for every `snakemake ...` run command in backticks or in a config's header."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        if document.suffix == ".yaml":  # the header: the comment lines before the first key
            text = "\n".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
            commands = re.findall(r"^\s*(snakemake [^\n]*)", text, flags=re.M)
        else:
            commands = re.findall(r"`(snakemake [^`]*)`", text)
        for command in commands:
            command = command.split("#")[0].strip()
            # the commands that run a study (a cluster run has no --cores); --report/--touch/--unlock/-R act on a
            # finished one; --until runs part of one (test_paper_setup checks the offline fetch step)
            if ("--cores" in command or "--profile" in command) and not re.search(
                r"--touch|--unlock|--report| -R\b| -n\b|--until", command
            ):
                found.append((document.relative_to(REPO).as_posix(), command))
    return sorted(set(found))


COMMANDS = documented_commands()
# each command once, as typed, with the documents that give it (the same text in two documents is one test)
DOCUMENTS_OF = {command: sorted(d for d, c in COMMANDS if c == command) for _, command in COMMANDS}
COMMAND_IDS = [f"{', '.join(DOCUMENTS_OF[command])}: {command}" for command in sorted(DOCUMENTS_OF)]


def test_the_documents_have_the_commands_this_test_expects():
    commands = set(DOCUMENTS_OF)
    assert "snakemake --profile slurm --configfile configs/paper.yaml" in commands
    assert not [command for command in commands if "--profile slurm" in command and "--cores" in command]
    assert "snakemake --cores all --configfile configs/compare-methods.yaml" in commands
    assert "snakemake --cores all --configfile my-study.yaml" in commands
    assert "snakemake --cores all" in commands


@pytest.mark.parametrize("command", sorted(DOCUMENTS_OF), ids=COMMAND_IDS)
@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_documented_command_plans_its_study(tmp_path, command):
    documents = ", ".join(DOCUMENTS_OF[command])
    workdir = workflow_copy(tmp_path / "wf")
    (workdir / "configs").mkdir()
    for config in (REPO / "configs").glob("*.yaml"):
        (workdir / "configs" / config.name).write_text(config.read_text())
    (workdir / "my-study.yaml").write_text(yaml.safe_dump(MY_STUDY))
    checkpoint_config(workdir / "checkpoints" / "mine")  # the study's local model: the plan reads its config.json
    argv = shlex.split(command)
    assert argv[0] == "snakemake"
    configfile = argv[argv.index("--configfile") + 1] if "--configfile" in argv else None
    options = [a for a in argv[1:] if a not in ("--cores", "all")]
    if "--sdm" in options and options[options.index("--sdm") + 1] == "conda" and shutil.which("conda") is None:
        # No conda channel can be reached here (and snakemake -n --sdm conda calls `conda info`): the plan is
        # checked without the flag, and test_conventions checks the env files against constraints.txt.
        del options[options.index("--sdm") : options.index("--sdm") + 2]
    dry = snakemake(workdir, "-n", "-p", "--cores", "1", *options)  # one dry run: its job table and its commands
    assert jobs_of(dry.stdout + dry.stderr) == EXPECTED[configfile], f"{documents}: {command}"
    # exactly the study's models and tasks: nothing of the default leaks into a study given with --configfile
    study = yaml.safe_load((workdir / (configfile or "config.yaml")).read_text())
    evaluations = shell_commands(dry.stdout, "evaluate")
    assert {argv[argv.index("--model-name") + 1] for argv in evaluations} == set(study["models"])
    evaluated = {task for task, spec in study["tasks"].items() if spec.get("evaluate", True)}
    assert {argv[argv.index("--task-name") + 1] for argv in evaluations} == evaluated


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_config_overrides_apply_over_a_configfile_and_over_the_default(tmp_path):
    workdir = workflow_copy(tmp_path / "wf")
    (workdir / "my-study.yaml").write_text(yaml.safe_dump(MY_STUDY))
    checkpoint_config(workdir / "checkpoints" / "mine")
    for study, jobs in ((["--configfile", "my-study.yaml"], MY_STUDY_JOBS), ([], DEFAULT_JOBS)):
        overrides = ["--config", "seed=7", "dtype=float32"]
        dry = snakemake(workdir, "-n", "-p", "--cores", "1", *study, *overrides)
        assert jobs_of(dry.stdout + dry.stderr) == jobs
        for argv in shell_commands(dry.stdout, "selfgen"):
            selfgen = json.loads(argv[argv.index("--settings") + 1])
            assert (selfgen["seed"], selfgen["dtype"]) == (7, "float32")


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_tasks_of_the_default_cannot_leak_into_a_study(tmp_path):
    """A study with `tasks` of its own evaluates those only (deep-merging added the default's six)."""
    workdir = workflow_copy(tmp_path / "wf")
    (workdir / "my-study.yaml").write_text(yaml.safe_dump(MY_STUDY))
    checkpoint_config(workdir / "checkpoints" / "mine")
    output = snakemake(workdir, "-n", "-p", "--cores", "1", "--configfile", "my-study.yaml").stdout
    evaluated = {argv[argv.index("--task-name") + 1] for argv in shell_commands(output, "evaluate")}
    assert evaluated == {"addition"}


def documented_pytest_commands() -> list[str]:
    """The `pytest ...` commands in backticks in README.md (the fast tier and its friends)."""
    found = re.findall(r"`((?:\.venv/bin/python -m )?pytest [^`]*)`", (REPO / "README.md").read_text())
    return sorted(set(found))


@pytest.mark.slow  # each collects the whole suite (with -n auto, in every worker)
@pytest.mark.parametrize("command", documented_pytest_commands())
def test_documented_pytest_command_selects_tests(command):
    """Each documented test command runs as typed (its plugins, markers and paths exist) and selects tests."""
    argv = shlex.split(command)
    argv = [sys.executable, *argv[argv.index("pytest") - 1 :]] if argv[0].endswith("python") else argv
    if argv[0] == "pytest":
        argv = [sys.executable, "-m", *argv]
    done = run([*argv, "--collect-only", "-p", "no:cacheprovider"], REPO, check=False)
    # pytest exits 5 when it selects no test, 4 on a usage error (an unknown option, a missing path)
    assert done.returncode == 0, f"{command}:\n{(done.stdout + done.stderr)[-3000:]}"


def test_readme_documents_the_fast_tier():
    assert 'pytest -m "not slow" -n auto' in " ".join(documented_pytest_commands())
