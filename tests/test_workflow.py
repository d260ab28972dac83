"""The Snakemake DAG: config validation, job counts, SLURM profile and DVC, as dry runs."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import yaml
from workflow_helpers import BIN, REPO, planned_jobs, run, snakemake, workflow_copy

from layerprune.tasks import bigbench_inputs

DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())
# a code task (the default has none: SmolLM2-135M solves no HumanEval problem, so it would decide nothing)
HUMANEVAL = {
    "type": "generative",
    "dataset": "humaneval",
    "num_fewshot": 0,
    "limit": 8,
    "max_new_tokens": 64,
    "prompting": "fewshot",
}


def expected_jobs(config: dict) -> dict[str, int]:
    models = len(config["models"])
    methods = len(config["scoring"]["methods"])
    ratios = len(config["pruning"]["ratios"])
    recoveries = config["recovery"]["methods"]
    trained = len([r for r in recoveries if r != "none"])
    tasks = len(config["tasks"])
    lm_eval_tasks = len([t for t in config["tasks"].values() if t.get("lm_eval_task")])
    bigbench = {name for t in config["tasks"].values() if not t.get("lm_eval_task") for name in bigbench_inputs(t)}
    prompted = bool({"data", "sgr"} & set(recoveries))  # heal trains on plain text, not on the prompt set
    source = config["prompts"].get("source", "bigbench")
    if source == "bigbench" and prompted:
        bigbench |= set(config["prompts"]["bigbench_tasks"])
    calibrated = [
        m for m in config["scoring"]["methods"] if m in ("bi", "angular", "angular_last", "ppl", "taylor", "sleb")
    ]
    iterative = int("iterative" in config["scoring"]["methods"])
    if calibrated:
        bigbench |= set(config["scoring"]["calibration"]["bigbench_tasks"])
    heal_source = config["recovery"].get("heal", {"source": {"bigbench_tasks": ["gem/wikilingua_en"]}})["source"]
    if "heal" in recoveries:
        bigbench |= set(heal_source.get("bigbench_tasks", []))
    jobs = {
        "all": 1,
        "fetch_bigbench": 1,
        "extract_bigbench": len(bigbench),
        "prepare_task": tasks - lm_eval_tasks,
        "prepare_lm_eval_task": lm_eval_tasks,
        "prepare_prompts": 1,
        "prepare_calibration": 1 if calibrated else 0,
        "prepare_heal": int("heal" in recoveries),
        "materialize": models,
        "score": models * (methods - iterative),
        "score_iterative": models * iterative,
        "prune": models * methods * ratios,
        "filter_prompts": models if prompted and source != "magpie" else 0,
        "magpie_prompts": models if prompted and source == "magpie" else 0,
        "selfgen": models if "sgr" in recoveries else 0,
        "recover": models * methods * ratios * trained,
        "evaluate_dense": models * tasks,
        "evaluate_variant": models * methods * ratios * len(recoveries) * tasks,
        "aggregate": 1,
    }
    if not prompted or source == "magpie":
        jobs["prepare_prompts"] = 0
    return {rule: count for rule, count in jobs.items() if count}


def test_default_dry_run_lists_exactly_the_expected_jobs(tmp_path):
    workdir = workflow_copy(tmp_path / "wf")
    assert planned_jobs(workdir) == expected_jobs(DEFAULT)


def test_dry_run_scales_with_the_grid(tmp_path):
    config = copy.deepcopy(DEFAULT)
    config["models"]["other"] = {"source": {"hub": "Qwen/Qwen2.5-7B-Instruct"}}
    config["pruning"]["ratios"] = [0.25]
    config["recovery"]["methods"] = ["none", "sgr"]
    config["scoring"]["methods"] = ["reverse"]
    workdir = workflow_copy(tmp_path / "wf", config)
    jobs = planned_jobs(workdir)
    assert jobs == expected_jobs(config)
    assert "prepare_calibration" not in jobs  # reverse needs no calibration


def test_dry_run_with_iterative_and_angular_last(tmp_path):
    """iterative depends on the probe tasks' prepared files and gets its settings as flags."""
    config = copy.deepcopy(DEFAULT)
    config["scoring"]["methods"] = ["bi", "angular_last", "reverse", "iterative"]
    config["scoring"]["iterative"] = {"probe_tasks": ["general_knowledge", "plural"], "num_samples": 8}
    workdir = workflow_copy(tmp_path / "wf", config)
    assert planned_jobs(workdir) == expected_jobs(config)
    output = snakemake(workdir, "-n", "-p", "--cores", "2").stdout
    block = output[output.index("rule score_iterative:") :]
    block = block[: block.index("\n\n")]
    inputs = block.split("input:", 1)[1].splitlines()[0]
    assert [name.strip() for name in inputs.split(",")] == [
        "results/models/smollm2-135m/dense",
        "results/data/tasks/general_knowledge.json",
        "results/data/tasks/plural.json",
    ]
    assert "output: results/scores/smollm2-135m/iterative.json" in block
    assert (
        "--method iterative --probe-tasks results/data/tasks/general_knowledge.json results/data/tasks/plural.json"
        " --probe-max-new-tokens 16 8 --num-samples 8 --max-ratio 0.3 " in block
    )
    # angular_last is scored by the plain score rule, from the calibration set
    block = output[output.index("output: results/scores/smollm2-135m/angular_last.json") :][:1500]
    assert "--method angular_last --calibration results/data/calibration.jsonl" in block

    # without probe_tasks, every task probes
    del config["scoring"]["iterative"]["probe_tasks"]
    workdir = workflow_copy(tmp_path / "wf2", config)
    output = snakemake(workdir, "-n", "-p", "--cores", "2").stdout
    block = output[output.index("rule score_iterative:") :][:1500]
    for task in config["tasks"]:
        assert f"results/data/tasks/{task}.json" in block.split("output:")[0]


def test_generative_tasks_get_their_spec_sampling_and_sandbox_flags(tmp_path):
    config = copy.deepcopy(DEFAULT)
    config["tasks"]["humaneval"] = {**HUMANEVAL, "temperature": 0.9, "top_k": 50, "num_samples": 5, "pass_k": [1, 5]}
    config["tasks"]["gsm8k"] = {"type": "generative", "dataset": "gsm8k", "file": "data/gsm8k.jsonl", "num_fewshot": 2}
    config["evaluation"]["sandbox"] = {"timeout_s": 7, "nproc": 12}
    workdir = workflow_copy(tmp_path / "wf", config)
    (workdir / "data").mkdir()
    (workdir / "data" / "gsm8k.jsonl").write_text("")
    output = snakemake(workdir, "-n", "-p", "--cores", "1").stdout
    lines = output.splitlines()
    prepare = next(line for line in lines if "layerprune prepare-task" in line and "gsm8k.jsonl" in line)
    assert '"dataset": "gsm8k"' in prepare and "--out results/data/tasks/gsm8k.json" in prepare
    probe = next(line for line in lines if "layerprune prepare-task" in line and "1_digit_multiplication" in line)
    assert '"grader": "first_digit"' in probe
    evaluate = next(line for line in lines if "layerprune evaluate" in line and "--task-name humaneval" in line)
    assert "--prompting fewshot --temperature 0.9 --top-k 50 --top-p None --num-samples 5 --pass-k 1 5" in evaluate
    assert "--sandbox-timeout 7 --sandbox-cpu 10 --sandbox-memory-mb 2048 --sandbox-file-size-mb 16" in evaluate
    assert "--sandbox-nproc 12" in evaluate
    plural = next(line for line in lines if "layerprune evaluate" in line and "--task-name plural" in line)
    assert "--prompting fewshot --temperature 0 " in plural and "--num-samples 1 --pass-k 1" in plural


def test_calibration_loss_methods_get_their_settings(tmp_path):
    config = copy.deepcopy(DEFAULT)
    config["scoring"].update(methods=["ppl", "sleb", "reverse"], chunk_size=16, sleb_exclude_ends=False)
    workdir = workflow_copy(tmp_path / "wf", config)
    assert planned_jobs(workdir) == expected_jobs(config)
    output = snakemake(workdir, "-n", "-p", "--cores", "1", "--until", "score").stdout
    commands = {
        line.split("--method ")[1].split()[0]: line for line in output.splitlines() if "layerprune score" in line
    }
    assert sorted(commands) == ["ppl", "reverse", "sleb"]
    assert "--calibration results/data/calibration.jsonl" in commands["sleb"]
    assert "--chunk-size 16 --sleb-exclude-ends False" in commands["sleb"]
    assert "--chunk-size 16 --sleb-exclude-ends True" in commands["ppl"]  # sleb's setting does not reach ppl
    assert "--chunk-size None --sleb-exclude-ends True" in commands["reverse"]
    assert "--calibration" not in commands["reverse"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.update(bogus_key=1), "bogus_key"),
        (lambda c: c["pruning"].update(ratios=[0.5, 1.5]), "1.5"),
        (lambda c: c["scoring"].update(methods=["bi", "magic"]), "magic"),
        (lambda c: c["tasks"]["plural"].update(nshot=3), "nshot"),
        (lambda c: c["models"]["smollm2-135m"].update(source={"hub": "a/b", "path": "/x"}), "source"),
        (lambda c: c["scoring"].update(iterative={"probe_tasks": ["plural", "no_such_task"]}), "'no_such_task'"),
        (lambda c: c["scoring"].update(iterative={"num_samples": 0}), "num_samples"),
        (lambda c: c["prompts"].update(source="magpie"), "recovery.methods has `data`"),
        (lambda c: c["prompts"].update(source="jsonl", path="x.jsonl", response_field=None), "prompts.response_field"),
        (lambda c: c["prompts"].update(source="hub"), "prompts.path is not set"),
        (lambda c: c["prompts"].update(source="bigbench", bigbench_tasks=[]), "bigbench_tasks"),
        (lambda c: c["selfgen"].update(backend="tgi"), "tgi"),
        (lambda c: c["prompts"].update(magpie={"dedup_threshold": 0}), "dedup_threshold"),
        (lambda c: c["tasks"].update(humaneval={**HUMANEVAL, "grader": "bleu"}), "bleu"),
        (lambda c: c["tasks"]["plural"].pop("bigbench_task"), "bigbench_task"),
        (lambda c: c["tasks"].update(humaneval={**HUMANEVAL, "prompting": "socratic"}), "socratic"),
        (lambda c: c["evaluation"].update(sandbox={"nproc": 0}), "nproc"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(tmp_path, mutate, message):
    config = copy.deepcopy(DEFAULT)
    mutate(config)
    workdir = workflow_copy(tmp_path / "wf", config)
    result = snakemake(workdir, "-n", "--cores", "1", check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_slurm_profile_dry_run_as_users_type_it(tmp_path):
    config = copy.deepcopy(DEFAULT)
    config["resources"]["recover"] = {
        "threads": 4,
        "mem_mb": 32000,
        "runtime": 240,
        "gpus": 1,
        "gpu_model": "a100",
        "slurm_partition": "gpu",
    }
    workdir = workflow_copy(tmp_path / "wf", config)
    result = snakemake(workdir, "--cores", "all", "--profile", "slurm", "-n", "-p")
    output = result.stdout + result.stderr
    assert "Job stats:" in output
    # the recover jobs carry the resources from the config
    recover_block = output[output.index("rule recover:") :][:2000]
    assert "gpu=1" in recover_block and "mem_mb=32000" in recover_block and "slurm_partition=gpu" in recover_block
    assert "runtime=240" in recover_block and "gpu_model=a100" in recover_block


@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed for a DVC repo")
def test_dvc_pipeline_is_a_valid_dvc_project(tmp_path):
    workdir = workflow_copy(tmp_path / "wf")
    (workdir / "src" / "layerprune").mkdir(parents=True)
    (workdir / "src" / "layerprune" / "__init__.py").write_text("")
    dvc = str(BIN / "dvc")
    run(["git", "init", "-q"], workdir)
    run([dvc, "init", "-q"], workdir)
    status = run([dvc, "status"], workdir).stdout
    # never run: DVC sees the config as new params and every versioned artifact as missing
    assert "pipeline:" in status and "config.yaml" in status
    for artifact in ("results/selfgen", "results/pruned", "results/recovered", "results/metrics.json"):
        assert artifact in status
    dry = run([dvc, "repro", "--dry"], workdir)
    assert "Running stage 'pipeline'" in dry.stdout
    assert "snakemake --cores all" in dry.stdout


def test_paper_config_dry_run_offline(tmp_path):
    """configs/paper.yaml plans the paper's grid without touching the hub."""
    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    workdir = workflow_copy(tmp_path / "wf", paper)
    jobs = planned_jobs(workdir)
    assert jobs == expected_jobs(paper)
    # 3 models x 3 methods (bi, reverse, iterative) x 3 ratios (0.2, 0.25, 0.3) x 3 recoveries x 15 tasks:
    # 7 lm-eval + general_knowledge + 5 generative (gsm8k, math500, humaneval+, mbpp+, xsum) + 2 arithmetic.
    assert jobs["evaluate_variant"] == 3 * 3 * 3 * 3 * 15 == 1215
    assert jobs["evaluate_dense"] == 45
    assert jobs["recover"] == 54  # 2 trained recoveries (data, sgr)
    assert jobs["score_iterative"] == 3
    assert jobs["prepare_lm_eval_task"] == 7
    assert jobs["prepare_task"] == 8
    assert jobs["extract_bigbench"] == 13  # 12 task + 1 calibration BIG-bench tasks (prompts: Alpaca)
    assert jobs["filter_prompts"] == 3  # the prompt set cut to each model's own token count
    assert sum(jobs.values()) == 1392


def test_lm_eval_task_cannot_probe_iterative(tmp_path):
    config = copy.deepcopy(DEFAULT)
    config["scoring"]["methods"] = ["iterative"]
    config["tasks"]["arc"] = {"type": "classification", "lm_eval_task": "arc_easy", "num_fewshot": 0}
    config["scoring"]["iterative"] = {"probe_tasks": ["arc"]}
    workdir = workflow_copy(tmp_path / "wf", config)
    result = snakemake(workdir, "-n", "--cores", "1", check=False)
    assert result.returncode != 0
    assert "scoring.iterative.probe_tasks: 'arc'" in result.stdout + result.stderr


def test_lm_eval_task_is_classification_only(tmp_path):
    config = copy.deepcopy(DEFAULT)
    config["tasks"]["arc"] = {"type": "generative", "lm_eval_task": "arc_easy", "num_fewshot": 0}
    workdir = workflow_copy(tmp_path / "wf", config)
    result = snakemake(workdir, "-n", "--cores", "1", check=False)
    assert result.returncode != 0
    assert "classification" in result.stdout + result.stderr


def test_lm_eval_task_settings_reach_the_cli(tmp_path):
    config = copy.deepcopy(DEFAULT)
    config["tasks"]["arc"] = {"type": "classification", "lm_eval_task": "arc_easy", "num_fewshot": 5, "limit": 0.2}
    workdir = workflow_copy(tmp_path / "wf", config)
    jobs = planned_jobs(workdir)
    assert jobs == expected_jobs(config) and jobs["prepare_lm_eval_task"] == 1
    dry = snakemake(workdir, "-n", "-p", "--cores", "1", "results/data/tasks/arc.json")
    shown = dry.stdout + dry.stderr
    assert (
        "layerprune prepare-lm-eval-task --lm-eval-task arc_easy --num-fewshot 5 --limit 0.2 --metric acc"
        " --include-path= --seed 0 --out results/data/tasks/arc.json"
    ) in " ".join(shown.split())


@pytest.mark.parametrize("system_prompt", [None, 'You are a helpful assistant. It\'s "quoted" $HOME `x`'])
def test_system_prompt_reaches_the_prompt_set_verbatim(tmp_path, system_prompt):
    """Config strings are shell-quoted on their way to the CLI; null means no system message."""
    config = copy.deepcopy(DEFAULT)
    config["prompts"]["system_prompt"] = system_prompt
    workdir = workflow_copy(tmp_path / "wf", config)
    snakemake(workdir, "--cores", "1", "results/data/prompts.jsonl")
    first = json.loads((workdir / "results/data/prompts.jsonl").read_text().splitlines()[0])
    if system_prompt is None:
        assert [m["role"] for m in first["prompt"]] == ["user"]
    else:
        assert first["prompt"][0] == {"role": "system", "content": system_prompt}


def test_magpie_config_plans_magpie_prompts_with_its_settings(tmp_path):
    """Prompt-free SGR: no prompt dataset, the dense model writes the prompt set; `data` is not allowed."""
    config = copy.deepcopy(DEFAULT)
    config["prompts"].update(source="magpie", num_prompts=12, magpie={"dedup_threshold": 0.6, "max_new_tokens": 40})
    config["recovery"]["methods"] = ["none", "sgr"]
    workdir = workflow_copy(tmp_path / "wf", config)
    jobs = planned_jobs(workdir)
    assert jobs == expected_jobs(config)
    assert jobs["magpie_prompts"] == 1 and "prepare_prompts" not in jobs and "filter_prompts" not in jobs
    output = snakemake(workdir, "-n", "-p", "--cores", "2").stdout
    command = next(line for line in output.splitlines() if "layerprune magpie-prompts" in line)
    for flag in (
        "--num-prompts 12",
        "--max-new-tokens 40",
        "--dedup-threshold 0.6",
        "--temperature 1.0",
        "--max-prompt-tokens 256",
        "--backend auto",
        "--out results/data/prompts/smollm2-135m.jsonl",
    ):
        assert flag in command, flag
    selfgen = next(line for line in output.splitlines() if "layerprune selfgen" in line)
    assert "--prompts results/data/prompts/smollm2-135m.jsonl" in selfgen
    assert "--drop-empty False --drop-truncated False" in selfgen


def test_hub_prompt_source_from_a_saved_dataset_through_the_rule(tmp_path):
    """The config's field mapping reaches prepare-prompts intact (quoting, separator, null response)."""
    import datasets

    rows = {"instruction": ["Say hi.", "Add the numbers."], "input": ["", "2 and 3"], "output": ["hi", "5"]}
    config = copy.deepcopy(DEFAULT)
    workdir = workflow_copy(tmp_path / "wf", config)
    datasets.Dataset.from_dict(rows).save_to_disk(workdir / "alpaca")
    config["prompts"].update(
        source="hub", path="alpaca", num_prompts=2, prompt_fields=["instruction", "input"], separator="\n--\n"
    )
    workflow_copy(workdir, config)
    snakemake(workdir, "--cores", "1", "results/data/prompts.jsonl")
    records = [json.loads(line) for line in (workdir / "results/data/prompts.jsonl").read_text().splitlines()]
    answers = {r["prompt"][-1]["content"]: r["completion"][0]["content"] for r in records}
    assert answers == {"Say hi.": "hi", "Add the numbers.\n--\n2 and 3": "5"}


@pytest.mark.slow
def test_snakemake_report_html_on_a_finished_run(tmp_path):
    """`snakemake --report report.html` after the aggregate step: the report() outputs are in the HTML.

    The evaluation results and scores are fixtures in the evaluate/score contracts, so only the
    real aggregate rule runs (`--allowed-rules`), as it would at the end of a finished run.
    """
    from test_report import _result

    from layerprune.io import write_json

    config = copy.deepcopy(DEFAULT)
    config["scoring"]["methods"] = ["reverse"]
    config["pruning"]["ratios"] = [0.25]
    config["recovery"]["methods"] = ["none", "sgr"]
    config["report"] = {"bootstrap_samples": 100}
    workdir = workflow_copy(tmp_path / "wf", config)
    (model,) = config["models"]
    for task, settings in config["tasks"].items():
        for method, ratio, recovery in [("dense", 0.0, "none"), ("reverse", 0.25, "none"), ("reverse", 0.25, "sgr")]:
            result = _result("mc", method, ratio, recovery, 0.8 if method == "dense" else 0.5, recovery == "none")
            result.update(model=model, task=task, type=settings["type"])
            where = "dense" if method == "dense" else f"{method}/{ratio:g}/{recovery}"
            write_json(workdir / f"results/eval/{model}/{where}/{task}.json", result)
    removal = {str(k): list(range(30 - k, 30)) for k in range(1, 30)}
    scores = {"method": "reverse", "num_layers": 30, "scores": list(range(30)), "removal": removal}
    write_json(workdir / f"results/scores/{model}/reverse.json", scores)

    snakemake(workdir, "--cores", "1", "--allowed-rules", "aggregate", "all")
    assert (workdir / "results" / "report.md").read_text().startswith("# layerprune report")
    snakemake(workdir, "--report", "report.html", "--allowed-rules", "aggregate", "all")
    html = (workdir / "report.html").read_text(errors="replace")
    for name in ["report.md", "retention_by_type.png", "error_buckets.png", "degeneration.png", "retention.csv"]:
        assert name in html, name
