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
from helpers.workflow import (
    BIN,
    REPO,
    planned_jobs,
    run,
    settings_of,
    shared_file,
    shell_commands,
    snakemake,
    workflow_copy,
)

from layerprune.evaluation.tasks import DEFAULT_GRADER, read_rows

MINI = REPO / "tests" / "fixtures" / "paper_mini"
sys.path.insert(0, str(MINI))
import build  # noqa: E402

PAPER = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
MINI_CONFIG = yaml.safe_load((MINI / "config.yaml").read_text())  # as committed: paths relative to the repo
MODEL = "tiny-llama"
# Where the data comes from (a hub id, a local file): the one thing a task may change besides its size.
DATA_SOURCE = {"hub", "hub_config", "name", "split", "file", "lm_eval_include_path", "path"}
SIZES = {"limit", "max_new_tokens", "builtin_task"}  # builtin_task: the multi-digit diagnostic's subset
# Tasks of paper.yaml without fixture rows: each is of a kind paper-mini runs (lm-eval by name, acc / acc_norm).
WITHOUT_FIXTURES = {"winogrande", "piqa", "openbookqa"}
PAPER_SAMPLING = {"temperature": 0.9, "top_k": 50, "top_p": 1.0}


def task_kind(task: dict) -> tuple:
    """What code path a task takes: lm-eval by name (and its metric), a dataset and its grader (builtin ones too)."""
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
        if "lm_eval_task" in task or task.get("dataset", "bigbench") not in ("bigbench", "builtin"):
            assert task.get("limit") == paper_task.get("limit"), name  # 0.2 of lm-eval's split; 1000, 100 caps
    generative = [t for t in mini_tasks.values() if t.get("dataset", "bigbench") not in ("bigbench", "builtin")]
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
    builtin = {t for task in tasks.values() if "builtin_task" in task for t in task["builtin_task"]}
    builtin |= set(config["scoring"]["calibration"]["builtin_tasks"])
    assert not any("bigbench_task" in task for task in tasks.values()), "the paper's grid needs no BIG-bench"
    lm_eval_tasks = [t for t in tasks.values() if "lm_eval_task" in t]
    trained = [r for r in recoveries if r != "none"]
    evaluated = [name for name, task in tasks.items() if task.get("evaluate", True)]  # the probes are not
    # a probe-only task no probe_tasks names (xsum_probe_authors, the authors' leaky choice) is never prepared
    prepared = set(evaluated) | set(config["scoring"]["iterative"]["probe_tasks"])
    prepared |= {excluded for name in prepared for excluded in tasks[name].get("exclude_tasks", [])}
    return {
        "all": 1,
        "build_task": len(builtin),
        "prepare_task": len([name for name in prepared if "lm_eval_task" not in tasks[name]]),
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
        "evaluate_variant": len(methods) * len(trained) * len(evaluated),
        "evaluate_pruned": len(methods) * len(evaluated) * ("none" in recoveries),
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
    assert sum(jobs.values()) == 149  # 180 before the three probes became probe-only (evaluate: false)
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


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
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


# The tasks whose evaluation also runs on the recovered checkpoints in the real run: one by lm-eval's
# log-likelihood, one generated and graded (the other tasks take those same paths on the other variants).
RECOVERED_EVALUATION = ("mmlu", "gsm8k")


def run_config(config: dict) -> dict:
    """paper-mini as the real run runs it: iterative scoring alone (`bi` and `reverse` are jobs of the `score`
    rule, which the session's tiny run runs for real with the same builtin calibration), the recovered
    checkpoints evaluated on RECOVERED_EVALUATION only (`tasks.<t>.recoveries: [none]` elsewhere)."""
    config = copy.deepcopy(config)
    config["scoring"]["methods"] = ["iterative"]
    for name, task in config["tasks"].items():
        if task.get("evaluate", True) and name not in RECOVERED_EVALUATION:
            task["recoveries"] = ["none"]
    return config


@pytest.mark.slow
def test_paper_mini_runs_the_whole_dag(tmp_path, mini_model):
    """Every job of paper-mini's plan runs for real (`snakemake --cores 2`), with the outcomes the paper
    grid would have: iterative layers chosen by its generative probes, qlora merged and checked, every
    task evaluated with its metric, the report naming each task.

    Every rule but `score` and every task's code path, not every cell: the one-shot methods' `score` rule runs in
    the session's tiny run (conftest.tiny_run); the recovered checkpoints are evaluated on one lm-eval task and
    one generative task (RECOVERED_EVALUATION); every task is still evaluated on the dense and on the pruned
    model (55 jobs instead of 149: the whole grid took 28 of the suite's 68 minutes on a loaded 2-core machine).
    The plan test above checks the whole grid."""
    workdir, configfile, config = mini_study(tmp_path, mini_model)
    config = run_config(config)
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
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


def study_or_shared(results: Path, relative: str) -> Path:
    """A finished run's file: the study's own (results/<study>/<relative>), or the one shared by fingerprint
    (results/shared/<kind>/<fingerprint>/<rest>: scores, pruned checkpoints, dense and unrecovered evaluations)."""
    own = results / relative
    if own.exists():
        return own
    kind, rest = relative.split("/", 1)
    workdir = results.parent.parent
    return workdir / shared_file(workdir, kind, rest)


def assert_paper_mini_outcomes(results: Path, config: dict) -> None:
    """What a finished paper-mini run must hold (also usable on a run made by hand)."""
    methods, recoveries = config["scoring"]["methods"], config["recovery"]["methods"]
    # the probes (evaluate: false) are prepared for iterative scoring only, never evaluated
    tasks = {name: task for name, task in config["tasks"].items() if task.get("evaluate", True)}
    (ratio,) = [f"{r:g}" for r in config["pruning"]["ratios"]]

    # iterative: one layer chosen by the generative probes, generated as their tasks are evaluated
    iterative = json.loads(study_or_shared(results, f"scores/{MODEL}/iterative.json").read_text())
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
    pruning = json.loads(study_or_shared(results, f"pruned/{MODEL}/iterative/{ratio}/pruning.json").read_text())
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

    # every task evaluated on the dense model and on every variant its `recoveries` name, with its metric and n
    for name, task in tasks.items():
        evaluated = [r for r in recoveries if r in (task.get("recoveries") or recoveries)]
        variants = ["dense"] + [f"{m}/{ratio}/{r}" for m in methods for r in evaluated]
        for variant in variants:
            record = json.loads(study_or_shared(results, f"eval/{MODEL}/{variant}/{name}.json").read_text())
            if "lm_eval_task" in task:
                metric = task["lm_eval_metric"]
                assert record["metric"] == {"acc": "accuracy", "acc_norm": "accuracy_norm"}[metric], name
                assert record["grader"] == f"lm-eval {lm_eval.__version__} {name} {metric}"
                assert record["n"] == LM_EVAL_N[name], name
            elif "file" in task:
                assert record["n"] == expected_n(task), (name, variant)
                assert (record["prompting"], record["sampling"]["top_k"]) == ("chat", 50), name
            else:  # the built arithmetic: `limit` per subtask
                assert record["n"] == task["limit"] * len(task["builtin_task"]), name
            assert isinstance(record["value"], (int, float)) and 0 <= record["value"] <= 1, (name, variant)
    summary = (results / "report" / "summary.csv").read_text()
    report = (results / "report" / "report.md").read_text()
    for name in tasks:
        assert name in summary and name in report, name


# ------------------------------------------------------------------ paper.yaml = the authors' code (docs/paper.md)

# The rows of docs/paper.md's "paper.yaml against the authors' code" table that are made equal: the config
# path, the authors' value and the file of safal312/on-the-limits-of-layer-pruning that fixes it.
GENERATIVE = ("gsm8k", "math500", "humaneval_plus", "mbpp_plus", "xsum")
PROBES = ("gsm8k_probe", "humaneval_plus_probe", "xsum_probe", "xsum_probe_authors")
MADE_EQUAL = {
    "seed": (42, "train/8reverse_lora_self_dolci_llama.sh"),
    "prompts.num_prompts": (51760, "self_generate/job_inference.sh"),
    "selfgen.drop_empty": (False, "self_generate/generate_responses.py"),
    "tasks.xsum.split": ("validation", "eval/gen_eval/utils/dataset_loader.py"),
    "tasks.gsm8k.selection_seed": (1234, "eval/gen_eval/utils/dataset_loader.py"),
    "tasks.gsm8k_probe.selection_seed": (1234, "layer_pruner/utils/dataset_loader.py"),
    **{f"tasks.{t}.selection_seed": (42, "utils/dataset_loader.py") for t in GENERATIVE[1:] + PROBES[1:]},
    **{f"tasks.{t}.selection": ("train_test_split", "utils/dataset_loader.py") for t in GENERATIVE + PROBES},
    **{f"tasks.{t}.max_new_tokens": (8192, "eval/gen_eval/utils/evaluate.py") for t in GENERATIVE},
    # the default probes are capped at 1024/1024/256 new tokens (docs/paper.md "Generation length": 4096
    # costs ~99 GPU-h of iterative search per model); the authors' XSum probe keeps their 4096
    "tasks.xsum_probe_authors.max_new_tokens": (4096, "layer_pruner/script.py"),
    **{f"tasks.{t}.stop": (["Q:", "A:"], "utils/evaluate.py") for t in GENERATIVE + PROBES},
    "tasks.mbpp_plus.tests_from": ("test_list", "eval/gen_eval/utils/dataset_loader.py"),
    "tasks.xsum_probe.exclude_tasks": (["xsum"], "ours: the disjoint probe"),
}
AUTHORS_SYSTEM = {  # eval/gen_eval/utils/prompts.py (QWEN_*/LLAMA_* prompts)
    "gsm8k": "Please reason step by step, and put your final answer within \\boxed{}.",
    "humaneval": (
        "Please solve the following problem with python code. Keep it concise. Follow the prefix I provide and "
        "just finish the function inside ```python (code)```."
    ),
    "mbpp": (
        "Please solve the following programming problem with python code. Write a complete function that "
        "satisfies the requirements."
    ),
    "xsum": "Please provide a concise one-sentence summary of the following article.",
}
AUTHORS_SYSTEM["math500"] = AUTHORS_SYSTEM["gsm8k"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def config_value(config: dict, path: str):
    node = config
    for part in path.split("."):
        node = node[part]
    return node


def test_paper_yaml_has_the_authors_values_where_made_equal():
    for path, (value, source) in MADE_EQUAL.items():
        assert config_value(PAPER, path) == value, (path, source)
    for name in GENERATIVE + PROBES:
        task = PAPER["tasks"][name]
        assert task["chat_prompt"]["system"] == AUTHORS_SYSTEM[task["dataset"]], name
    # the leaky probe is the authors' one: no exclusion, the evaluated set's split and permutation
    authors, disjoint, evaluated = (PAPER["tasks"][t] for t in ("xsum_probe_authors", "xsum_probe", "xsum"))
    # ... with their length: 4096 new tokens, where xsum_probe is capped at 256 (docs/paper.md, "Generation length")
    theirs = ("exclude_tasks", "max_new_tokens")
    assert "exclude_tasks" not in authors and authors["max_new_tokens"] == 4096 and disjoint["max_new_tokens"] == 256
    assert {k: v for k, v in disjoint.items() if k not in theirs} == {
        k: v for k, v in authors.items() if k not in theirs
    }
    assert authors["split"] == evaluated["split"] and authors["selection_seed"] == evaluated["selection_seed"]
    assert PAPER["scoring"]["iterative"]["probe_tasks"] == ["gsm8k_probe", "humaneval_plus_probe", "xsum_probe"]
    # docs/paper.md's table has a row for each item of the comparison
    docs = (REPO / "docs" / "paper.md").read_text()
    table = docs[docs.index("## paper.yaml against the authors' code") :]
    for row in (
        "XSum split",
        "XSum probe",
        "Generation length",
        "Stop strings",
        "Item selection",
        "HumanEval prompt",
        "MBPP prompt",
        "Instructions",
        "SGR prompts",
        "Empty responses",
        "Seed",
        "BI calibration",
        "lm-eval backend",
    ):
        assert f"| {row} |" in table, row


PREPARE_DROPS = ("evaluate", "chance", "recoveries", "exclude_tasks")  # what prepare-task does not read


def _prepare(tmp_path: Path, name: str, **overrides) -> dict:
    from layerprune.evaluation.tasks import prepare_task_spec

    spec = {k: v for k, v in {**MINI_CONFIG["tasks"][name], **overrides}.items() if k not in PREPARE_DROPS}
    spec["file"] = str(REPO / spec["file"])
    return prepare_task_spec(spec, tmp_path, seed=MINI_CONFIG["seed"], out_path=tmp_path / f"{name}.json")


@pytest.mark.parametrize("name", ["gsm8k", "gsm8k_probe", "humaneval_plus", "mbpp_plus", "xsum_probe_authors"])
def test_selection_is_the_authors_train_test_split_on_paper_mini_rows(tmp_path, name):
    """Each size of a paper-mini dataset selects the rows datasets' own train_test_split(train_size=n,
    shuffle=True, seed=<the task's seed>)["train"] selects, in its order; the whole set in its own order at or
    above the row count (the authors' sample_dataset). The config's seed plays no part."""
    import datasets

    from layerprune.evaluation.tasks import NORMALISERS

    task = MINI_CONFIG["tasks"][name]
    rows = read_rows(REPO / task["file"])
    reference = datasets.Dataset.from_list(rows)
    for size in range(1, len(rows) + 2):
        prepared = _prepare(tmp_path, name, limit=size)
        if size < len(rows):
            expected = reference.train_test_split(train_size=size, shuffle=True, seed=task["selection_seed"])["train"]
        else:
            expected = reference
        assert [s["input"] for s in prepared["samples"]] == [
            NORMALISERS[task["dataset"]](dict(row))["input"] for row in expected
        ], (name, size)
        assert prepared["selection"] == {"method": "train_test_split", "seed": task["selection_seed"], "limit": size}
    # another config seed, the same items
    other = _prepare(tmp_path, name, limit=2)
    assert other["samples"] == _prepare(tmp_path, name, limit=2, selection_seed=task["selection_seed"])["samples"]


def test_the_authors_item_sets_at_full_size_and_their_xsum_probe_leak():
    """At the real sizes (GSM8K test 1,319 -> 1,000 with seed 1234; XSum validation 11,332 -> 1,000 and 100
    with seed 42) the permutation is datasets'; the authors' 100 XSum probe items are among their 1,000."""
    import datasets

    from layerprune.evaluation.tasks import authors_sample_indices

    for rows, size, seed in ((1319, 1000, 1234), (11332, 1000, 42), (11332, 100, 42), (164, 100, 42)):
        reference = datasets.Dataset.from_dict({"i": list(range(rows))})
        expected = reference.train_test_split(train_size=size, shuffle=True, seed=seed)
        chosen, rest = authors_sample_indices(rows, size, seed)
        assert chosen == expected["train"]["i"] and rest == expected["test"]["i"]
    assert authors_sample_indices(164, 1000, 42) == (list(range(164)), [])  # HumanEval+ in full, in order
    with pytest.raises(ValueError, match="apply to dataset tasks, not bigbench"):
        from layerprune.evaluation.tasks import prepare_task_spec

        spec = {"type": "generative", "bigbench_task": "arithmetic/1_digit_addition", "num_fewshot": 0}
        prepare_task_spec({**spec, "selection": "train_test_split"}, ".", 0, "unused.json")
    evaluated, _ = authors_sample_indices(11332, 1000, 42)
    probe, _ = authors_sample_indices(11332, 100, 42)
    assert set(probe) <= set(evaluated)


def test_xsum_probe_is_disjoint_from_the_evaluated_items_and_the_authors_probe_is_not(tmp_path):
    from layerprune.evaluation.tasks import prepare_task_spec, task_sample_ids

    validation = "tests/fixtures/paper_mini/data/xsum/validation-00000-of-00001.parquet"
    evaluated = _prepare(tmp_path, "xsum", file=validation, limit=2)
    ids = task_sample_ids([tmp_path / "xsum.json"])
    authors = _prepare(tmp_path, "xsum_probe_authors", limit=1)
    assert {s["id"] for s in authors["samples"]} <= ids  # theirs: a subset of the evaluated items
    assert MINI_CONFIG["tasks"]["xsum_probe"]["exclude_tasks"] == ["xsum"]
    spec = {k: v for k, v in MINI_CONFIG["tasks"]["xsum_probe"].items() if k not in PREPARE_DROPS}
    spec.update(file=str(REPO / validation), limit=1)
    disjoint = prepare_task_spec(spec, tmp_path, 0, tmp_path / "probe.json", exclude_ids=ids)
    assert disjoint["samples"] and not {s["id"] for s in disjoint["samples"]} & ids
    assert [s["id"] for s in evaluated["samples"]] != []


def _chatml_tokenizer():
    from helpers.models import make_tokenizer

    tokenizer = make_tokenizer()
    tokenizer.chat_template = CHATML
    return tokenizer


def test_paper_prompts_are_the_authors_turns(tmp_path):
    """Instructions in the system turn, the bare question in the user turn, MBPP's first assertion only,
    HumanEval's answer begun with the function stub ("Here is the final answer: ```python{prompt}")."""
    from layerprune.evaluation.tasks import build_prompt

    tokenizer = _chatml_tokenizer()

    def turns(system: str, user: str, prefix: str = "") -> str:
        return (
            f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            f"<|im_start|>assistant\n{prefix}"
        )

    for name in ("gsm8k", "math500", "xsum"):
        task = _prepare(tmp_path, name)
        sample = task["samples"][0]
        assert build_prompt(task, sample, tokenizer, chat=True) == turns(
            AUTHORS_SYSTEM[task["dataset"]], sample["input"]
        )
    task = _prepare(tmp_path, "humaneval_plus")
    sample = task["samples"][0]
    prefix = f"Here is the final answer:\n\n```python\n{sample['input']}"
    assert build_prompt(task, sample, tokenizer, chat=True) == turns(
        AUTHORS_SYSTEM["humaneval"], sample["input"], prefix
    )
    task = _prepare(tmp_path, "mbpp_plus")
    sample = task["samples"][0]
    assert len(sample["tests"]) > 1
    user = f"{sample['input']}\nYour code should satisfy the following assertion:\n{sample['tests'][0]}"
    prefix = "Here is a solution to this programming problem:\n```python\n"
    assert build_prompt(task, sample, tokenizer, chat=True) == turns(AUTHORS_SYSTEM["mbpp"], user, prefix)
    # graded by the listed assertions (load_mbpp's test_list), not MBPP+'s `test` program
    assert sample["code"]["test"] == "\n".join(sample["tests"])
    assert _prepare(tmp_path, "mbpp_plus", tests_from="test")["samples"][0]["code"]["test"] != sample["code"]["test"]


def test_the_prefill_is_graded_with_the_answer_and_chat_answers_stop_at_q_and_a(tmp_path, monkeypatch):
    """A chat answer that finishes the prefilled HumanEval function passes the real tests; generation gets
    the authors' stop strings with chat prompting, and an answer is cut at the first."""
    from layerprune.evaluation import generative
    from layerprune.evaluation.tasks import stop_strings

    task = _prepare(tmp_path, "humaneval_plus")
    seen = {}

    def finish_the_function(model, tokenizer, prompts, max_new_tokens, batch_size, sampling, stops, *args, **kw):
        seen["stops"] = stops
        solutions = {s["input"]: s["solution"] for s in task["samples"]}
        return [[solutions[next(p for p in solutions if prompt.endswith(p))] + "```\nQ: more"] for prompt in prompts]

    monkeypatch.setattr(generative, "generate", finish_the_function)
    result = generative.evaluate_generative(None, _chatml_tokenizer(), task, 16, 2, progress=False, prompting="chat")
    assert seen["stops"] == ["Q:", "A:"] == stop_strings(task, chat=True)
    assert [r["error_bucket"] for r in result["samples"]] == ["pass"] * len(task["samples"])
    assert all(r["answer_prefix"].endswith(s["input"]) for r, s in zip(result["samples"], task["samples"], strict=True))
    assert generative.truncate("x = 1\nA: y", stop_strings(task, chat=True)) == "x = 1\n"


def test_the_vllm_lm_eval_backend_is_a_clear_error_without_vllm(tmp_path):
    """evaluation.backend reaches the evaluate job; vllm where vLLM is not installed fails before any model
    loads, naming the setting."""
    import importlib.util

    from layerprune.config.settings import EvaluationSettings, settings_json
    from layerprune.evaluation.evaluate import evaluate_checkpoint
    from layerprune.io import write_json

    assert (
        json.loads(settings_json(EvaluationSettings, PAPER, task="mmlu"))["backend"] == PAPER["evaluation"]["backend"]
    )
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    task = tmp_path / "mmlu.json"
    write_json(task, {"source": "lm_eval:mmlu", "type": "classification", "lm_eval_task": "mmlu", "num_fewshot": 5})
    with pytest.raises(RuntimeError, match=r"evaluation.backend: vllm, but vLLM is not installed"):
        evaluate_checkpoint(
            tmp_path / "no-model", task, "mmlu", tmp_path / "out.json", batch_size=1, max_new_tokens=1, backend="vllm"
        )


def test_the_authors_bi_calibration_texts(tmp_path):
    """scoring.calibration.source gsm8k: the first rows of GSM8K's test split, in order, each question with
    its worked solution (analysis/cossim_analysis.ipynb's GSM8K.format_example)."""
    from layerprune.data.sources import prepare_calibration
    from layerprune.io import read_jsonl

    file = REPO / "tests/fixtures/paper_mini/data/gsm8k/main/test-00000-of-00001.parquet"
    rows = read_rows(file)
    out = tmp_path / "calibration.jsonl"
    assert prepare_calibration(tmp_path, [], 2, seed=5, out_path=out, source="gsm8k", path=str(file)) == 2
    texts = [record["text"] for record in read_jsonl(out)]
    reasoning, final = rows[0]["answer"].split("####")
    assert texts[0] == (
        "Given the following problem, reason and give a final answer to the problem.\n"
        f"Problem: {rows[0]['question']}\n"
        'Your response should end with "The final answer is [answer]" where [answer] is the response to the problem.\n'
        f"\n{reasoning}The final answer is {final.strip()}"
    )
    assert "<<" in texts[0] and texts[1].count(rows[1]["question"]) == 1  # annotations kept, rows in order
    with pytest.raises(ValueError, match="num_samples=9 exceeds the 4 rows"):
        prepare_calibration(tmp_path, [], 9, seed=5, out_path=out, source="gsm8k", path=str(file))


def test_prepare_task_leaves_out_the_excluded_tasks_files_from_another_folder(tmp_path):
    """As the pipeline runs it: xsum and xsum_probe have different fingerprints, so their prepared files
    sit in different folders and the probe gets xsum's file by path (it used to look beside its own)."""
    validation = str(REPO / "tests/fixtures/paper_mini/data/xsum/validation-00000-of-00001.parquet")

    def spec_of(name, limit):
        spec = {k: v for k, v in MINI_CONFIG["tasks"][name].items() if k not in PREPARE_DROPS or k == "exclude_tasks"}
        return json.dumps({**spec, "file": validation, "limit": limit})

    evaluated, probe = tmp_path / "aaa" / "xsum.json", tmp_path / "bbb" / "xsum_probe.json"
    common = ["--bigbench-dir", str(tmp_path), "--seed", "0"]
    run(
        [str(BIN / "layerprune"), "prepare-task", "--spec", spec_of("xsum", 2), *common, "--out", str(evaluated)],
        tmp_path,
    )
    run([
        BIN / "layerprune", "prepare-task", "--spec", spec_of("xsum_probe", 1), *common,
        "--exclude-task-files", str(evaluated), "--out", str(probe),
    ], tmp_path)  # fmt: skip
    evaluated_ids = {s["id"] for s in json.loads(evaluated.read_text())["samples"]}
    probe_ids = {s["id"] for s in json.loads(probe.read_text())["samples"]}
    assert evaluated_ids and probe_ids and not evaluated_ids & probe_ids
    missing = run(
        [str(BIN / "layerprune"), "prepare-task", "--spec", spec_of("xsum_probe", 1), *common, "--out", str(probe)],
        tmp_path,
        check=False,
    )
    assert missing.returncode != 0
    assert "exclude_tasks names 1 task(s) (xsum), but --exclude-task-files gives 0 file(s)" in missing.stderr
