"""paper-mini: configs/paper.yaml's study, structure for structure, on a tiny model and local rows.

tests/fixtures/paper_mini/config.yaml has paper.yaml's task kinds and options (lm-eval by task name,
the generative datasets with their graders, chat prompting, T 0.9 / top-k 50 / top-p 1.0), iterative
scoring with generative probes, the qlora trainer, a hub-format prompt set with Alpaca's fields and
the slurm profile's resource keys; only sizes and data sources differ. The fast tests keep the two
configs from drifting apart and check what the DAG plans (locally and with `--profile slurm`); the
slow test runs the whole DAG for real, through the same rules and CLI commands as the paper grid.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import lm_eval
import pytest
import yaml
from workflow_helpers import BIN, REPO, planned_jobs, run, settings_of, shell_commands, snakemake, workflow_copy

from layerprune.tasks import DEFAULT_GRADER, read_rows

MINI = REPO / "tests" / "fixtures" / "paper_mini"
sys.path.insert(0, str(MINI))
import build  # noqa: E402

PAPER = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
MINI_CONFIG = yaml.safe_load((MINI / "config.yaml").read_text())  # as committed: paths relative to the repo
MODEL = "tiny-llama"
# Where the data comes from (a hub id, a local file): the one thing a task may change besides its size.
DATA_SOURCE = {"hub", "hub_config", "name", "split", "file", "lm_eval_include_path", "path"}
SIZES = {"limit", "max_new_tokens", "bigbench_task"}  # bigbench_task: the multi-digit diagnostic's subset
# Tasks of paper.yaml without fixture rows: each is of a kind paper-mini runs (lm-eval by name, acc / acc_norm).
WITHOUT_FIXTURES = {"winogrande", "piqa", "openbookqa"}
PAPER_SAMPLING = {"temperature": 0.9, "top_k": 50, "top_p": 1.0}


def task_kind(task: dict) -> tuple:
    """What code path a task takes: lm-eval by name (and its metric), a dataset and its grader, or BIG-bench."""
    if task.get("lm_eval_task"):
        return ("lm-eval", task["type"], task["lm_eval_metric"])
    dataset = task.get("dataset", "bigbench")
    grader = "loglikelihood" if task["type"] == "classification" else task.get("grader") or DEFAULT_GRADER[dataset]
    return (dataset, task["type"], grader, task.get("prompting", "auto"))


def key_paths(node, prefix: str = "") -> set[str]:
    """Every dotted key path of a nested mapping (lists are leaves)."""
    if not isinstance(node, dict):
        return set()
    paths = set()
    for key, value in node.items():
        path = f"{prefix}{key}"
        paths |= {path} | key_paths(value, path + ".")
    return paths


def mini_study(tmp_path: Path, model_dir: Path) -> tuple[Path, Path, dict]:
    """A scratch copy of the workflow (the default config.yaml beside it, as in a checkout) and the
    paper-mini config with absolute paths, written as the study file given with --configfile."""
    config = build.load_config(model_dir)
    workdir = workflow_copy(tmp_path / "wf")
    configfile = workdir / "paper-mini.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    return workdir, configfile, config


# ------------------------------------------------------------------ the config: paper.yaml's structure


def test_paper_mini_config_is_valid():
    from snakemake.utils import validate

    validate(copy.deepcopy(MINI_CONFIG), str(REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=False)


def test_paper_mini_has_paper_yamls_structure():
    """The same keys everywhere (outside the tasks' data sources and the models), the same choices."""
    mini, paper = MINI_CONFIG, PAPER
    outside_tasks = {p for p in key_paths(paper) if not p.startswith(("tasks.", "models."))}
    mini_outside = {p for p in key_paths(mini) if not p.startswith(("tasks.", "models."))}
    heal_source = {p for p in outside_tasks | mini_outside if p.startswith("recovery.heal.source.")}
    assert mini_outside - heal_source == outside_tasks - heal_source
    # the choices that pick code paths are paper.yaml's own
    for path in (
        "dtype",
        "scoring.methods",
        "scoring.iterative.probe_tasks",
        "recovery.methods",
        "recovery.trainer",
        "recovery.precision",
        "recovery.lr_scheduler",
        "recovery.completion_only_loss",
        "recovery.padding_free",
        "recovery.gradient_checkpointing",
        "recovery.report_to",
        "prompts.source",
        "prompts.prompt_fields",
        "prompts.separator",
        "prompts.response_field",
        "prompts.system_prompt",
        "prompts.split",
        "selfgen.temperature",
        "selfgen.top_p",
        "selfgen.backend",
        "selfgen.drop_empty",
        "selfgen.drop_truncated",
        "evaluation.sandbox",
        "report.confidence",
        "report.headline_ratio",
    ):
        mini_value, paper_value = mini, paper
        for part in path.split("."):
            mini_value, paper_value = mini_value[part], paper_value[part]
        assert mini_value == paper_value, path
    # the prompt set is a hub dataset in both (a local save_to_disk copy of Alpaca-cleaned here)
    assert paper["prompts"]["path"] == "yahma/alpaca-cleaned"
    assert Path(REPO / mini["prompts"]["path"], "dataset_dict.json").is_file()
    # the slurm profile's resources: the same rules with the same keys
    assert {rule: set(keys) for rule, keys in mini["resources"].items()} == {
        rule: set(keys) for rule, keys in paper["resources"].items()
    }


def test_paper_mini_tasks_are_paper_yamls_task_kinds_and_options():
    mini_tasks, paper_tasks = MINI_CONFIG["tasks"], PAPER["tasks"]
    assert set(paper_tasks) - set(mini_tasks) == WITHOUT_FIXTURES and set(mini_tasks) <= set(paper_tasks)
    assert {task_kind(t) for t in mini_tasks.values()} == {task_kind(t) for t in paper_tasks.values()}
    for name, task in mini_tasks.items():
        paper_task = paper_tasks[name]
        assert task_kind(task) == task_kind(paper_task), name
        # every option but the data source and the sizes: prompting, sampling, shots, metric, grader, ...
        options = (set(task) | set(paper_task)) - DATA_SOURCE - SIZES
        assert {k: task.get(k) for k in options} == {k: paper_task.get(k) for k in options}, name
        if "lm_eval_task" in task or task.get("dataset", "bigbench") != "bigbench":
            assert task.get("limit") == paper_task.get("limit"), name  # 0.2 of lm-eval's split; 1000, 100 caps
    generative = [t for t in mini_tasks.values() if t.get("dataset", "bigbench") != "bigbench"]
    assert {t["dataset"] for t in generative} == {"gsm8k", "math500", "humaneval", "mbpp", "xsum"}
    assert all({k: t[k] for k in PAPER_SAMPLING} == PAPER_SAMPLING and t["prompting"] == "chat" for t in generative)
    assert {t["lm_eval_task"] for t in mini_tasks.values() if "lm_eval_task" in t} == {
        "mmlu",
        "arc_challenge",
        "arc_easy",
        "hellaswag",
    }
    for path in [t["file"] for t in mini_tasks.values() if "file" in t] + [
        t["lm_eval_include_path"] for t in mini_tasks.values() if "lm_eval_include_path" in t
    ]:
        assert (REPO / path).exists(), path


# ------------------------------------------------------------------ what the DAG plans


def expected_jobs(config: dict) -> dict[str, int]:
    """paper-mini's job table, counted from its grid (1 model, 1 ratio)."""
    tasks = config["tasks"]
    methods = config["scoring"]["methods"]
    recoveries = config["recovery"]["methods"]
    bigbench = {t for task in tasks.values() if "bigbench_task" in task for t in task["bigbench_task"]}
    bigbench |= set(config["scoring"]["calibration"]["bigbench_tasks"])
    lm_eval_tasks = [t for t in tasks.values() if "lm_eval_task" in t]
    trained = [r for r in recoveries if r != "none"]
    evaluated = [name for name, task in tasks.items() if task.get("evaluate", True)]  # the probes are not
    return {
        "all": 1,
        "fetch_bigbench": 1,
        "extract_bigbench": len(bigbench),
        "prepare_task": len(tasks) - len(lm_eval_tasks),
        "prepare_lm_eval_task": len(lm_eval_tasks),
        "prepare_prompts": 1,
        "prepare_calibration": 1,
        "materialize": 1,
        "score": len([m for m in methods if m != "iterative"]),
        "score_iterative": 1,
        "prune": len(methods),
        "filter_prompts": 1,
        "selfgen": 1,
        "recover": len(methods) * len(trained),
        "evaluate_dense": len(evaluated),
        "evaluate_variant": len(methods) * len(recoveries) * len(evaluated),
        "aggregate": 1,
    }


@pytest.fixture(scope="module")
def mini_model(tmp_path_factory) -> Path:
    return build.build_model(tmp_path_factory.mktemp("paper-mini") / "model")


@pytest.mark.slow  # builds the paper-mini model first (~15 s)
def test_paper_mini_plans_every_rule_of_the_paper_grid(tmp_path, mini_model):
    """paper-mini runs each rule paper.yaml's grid runs, with the slurm profile too (same plan)."""
    workdir, configfile, config = mini_study(tmp_path, mini_model)
    jobs = planned_jobs(workdir, "--configfile", configfile.name)
    assert jobs == expected_jobs(config)
    assert sum(jobs.values()) == 150  # 180 before the three probes became probe-only (evaluate: false)
    (workdir / "paper.yaml").write_text((REPO / "configs" / "paper.yaml").read_text())
    assert set(planned_jobs(workdir, "--configfile", "paper.yaml")) == set(jobs)
    # as on a cluster: the profile's executor and the config's resources, the same jobs
    assert planned_jobs(workdir, "--configfile", configfile.name, "--profile", "slurm") == jobs
    dry = snakemake(workdir, "-n", "-p", "--cores", "2", "--profile", "slurm", "--configfile", configfile.name)
    output = dry.stdout + dry.stderr
    recover_block = output[output.index("rule recover:") :][:2000]
    for resource, value in config["resources"]["recover"].items():
        name = {"threads": "cpus_per_task", "gpus": "gpu"}.get(resource, resource)
        if value:  # gpus: 0 asks for none
            assert f"{name}={value}" in recover_block, (resource, recover_block)


def test_iterative_probes_are_generated_as_their_tasks_are_evaluated(tmp_path, mini_model):
    """The score_iterative job gets each probe task's own prompting and sampling (chat, T 0.9, top-k 50,
    top-p 1.0), not the library's auto/greedy defaults."""
    workdir, configfile, config = mini_study(tmp_path, mini_model)
    dry = snakemake(workdir, "-n", "-p", "--cores", "2", "--configfile", configfile.name)
    (command,) = [argv for argv in shell_commands(dry.stdout, "score") if "iterative" in argv]
    probes = config["scoring"]["iterative"]["probe_tasks"]
    settings = settings_of(command)
    assert settings["probe_prompting"] == ["chat"] * len(probes)
    assert settings["probe_sampling"] == [PAPER_SAMPLING] * len(probes)
    assert settings["num_samples"] == config["scoring"]["iterative"]["num_samples"]


# ------------------------------------------------------------------ the whole DAG, for real


def expected_n(task: dict) -> int:
    """Evaluated items of a prepared dataset task: the rows after its few-shot examples, up to `limit`."""
    path = REPO / task["file"] if not Path(task["file"]).is_absolute() else Path(task["file"])
    count = len(read_rows(path)) - task["num_fewshot"]
    return min(count, task["limit"]) if task.get("limit") is not None else count


# lm-eval by name over the fixture rows, limit 0.2: (metric, evaluated docs)
LM_EVAL_N = {"mmlu": 2, "arc_challenge": 1, "arc_easy": 1, "hellaswag": 1}


@pytest.mark.slow
def test_paper_mini_runs_the_whole_dag(tmp_path, mini_model):
    """Every job of paper-mini's plan runs for real (`snakemake --cores 2`), with the outcomes the paper
    grid would have: iterative layers chosen by its generative probes, qlora merged and checked, every
    task evaluated with its metric, the report naming each task."""
    workdir, configfile, config = mini_study(tmp_path, mini_model)
    planned = planned_jobs(workdir, "--configfile", configfile.name)
    started = time.monotonic()
    # a loaded 2-core machine takes well over the helpers' 20 minutes
    command = [str(BIN / "snakemake"), "--cores", "2", "--configfile", configfile.name]
    result = run(command, workdir, timeout=3 * 3600)
    wall = time.monotonic() - started
    print(f"\npaper-mini whole DAG: {sum(planned.values())} jobs in {wall:.0f} s (snakemake --cores 2)")
    print("\n".join(f"  {rule:<22}{count:>4}" for rule, count in planned.items()))
    finished = Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", result.stdout + result.stderr))
    assert finished == planned  # every planned job ran, once
    assert planned_jobs(workdir, "--configfile", configfile.name) == {}
    assert_paper_mini_outcomes(workdir / "results" / config["study"], config)


def assert_paper_mini_outcomes(results: Path, config: dict) -> None:
    """What a finished paper-mini run must hold (also usable on a run made by hand)."""
    methods, recoveries = config["scoring"]["methods"], config["recovery"]["methods"]
    # the probes (evaluate: false) are prepared for iterative scoring only, never evaluated
    tasks = {name: task for name, task in config["tasks"].items() if task.get("evaluate", True)}
    (ratio,) = [f"{r:g}" for r in config["pruning"]["ratios"]]

    # iterative: one layer chosen by the generative probes, generated as their tasks are evaluated
    iterative = json.loads((results / "scores" / MODEL / "iterative.json").read_text())
    probes = config["scoring"]["iterative"]["probe_tasks"]
    assert list(iterative["probe_generation"]) == probes
    for generation in iterative["probe_generation"].values():
        assert generation["prompting"] == "chat"
        assert {k: generation["sampling"][k] for k in PAPER_SAMPLING} == PAPER_SAMPLING
    assert iterative["probe_tasks"] == {
        name: {"type": "generative", "num_samples": config["scoring"]["iterative"]["num_samples"]} for name in probes
    }
    assert iterative["dense_accuracy"]["xsum_probe"] > 0  # the fixture model answers XSum: a criterion exists
    (round_one,) = iterative["rounds"]
    retention = {int(layer): value for layer, value in round_one["retention"].items()}
    assert sorted(retention) == [1, 2, 3]  # layer 0 is never a candidate
    best = max(retention, key=lambda layer: (retention[layer], layer))  # ties to the later layer
    assert iterative["removal_order"] == [round_one["chosen"]] == [best]
    pruning = json.loads((results / "pruned" / MODEL / "iterative" / ratio / "pruning.json").read_text())
    assert pruning["removed_layers"] == [best]

    # qlora recoveries: every optimiser step of one epoch, merged into the unquantised base and
    # checked against the 4-bit model
    per_step = config["recovery"]["batch_size"] * config["recovery"]["grad_accum"]
    for method in methods:
        for recovery in ("data", "sgr"):
            out = results / "recovered" / MODEL / method / ratio / recovery
            record = json.loads((out / "recovery.json").read_text())
            assert record["trainer"] == "qlora", (method, recovery)
            assert record["num_examples"] >= 1 and record["global_steps"] == -(-record["num_examples"] // per_step)
            assert record["merge_check"]["layers_checked"] == 3 * 7  # 3 kept layers x 7 projections
            assert "quantization_config" not in json.loads((out / "config.json").read_text())

    # every task evaluated on the dense model and on every variant, with its metric and n
    variants = ["dense"] + [f"{m}/{ratio}/{r}" for m in methods for r in recoveries]
    for name, task in tasks.items():
        for variant in variants:
            record = json.loads((results / "eval" / MODEL / variant / f"{name}.json").read_text())
            if "lm_eval_task" in task:
                metric = task["lm_eval_metric"]
                assert record["metric"] == {"acc": "accuracy", "acc_norm": "accuracy_norm"}[metric], name
                assert record["grader"] == f"lm-eval {lm_eval.__version__} {name} {metric}"
                assert record["n"] == LM_EVAL_N[name], name
            elif "file" in task:
                assert record["n"] == expected_n(task), (name, variant)
                assert (record["prompting"], record["sampling"]["top_k"]) == ("chat", 50), name
            else:  # BIG-bench arithmetic: `limit` per subtask
                assert record["n"] == task["limit"] * len(task["bigbench_task"]), name
            assert isinstance(record["value"], (int, float)) and 0 <= record["value"] <= 1, (name, variant)
    summary = (results / "report" / "summary.csv").read_text()
    report = (results / "report" / "report.md").read_text()
    for name in tasks:
        assert name in summary and name in report, name
