"""The Snakemake DAG: config validation, job counts, SLURM profile and DVC, as dry runs."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
from helpers.plans import DEFAULT_JOBS, GRID, GRID_JOBS
from helpers.workflow import (
    BIN,
    REPO,
    flag,
    is_shared,
    planned_jobs,
    planned_paths,
    run,
    settings_of,
    shared_file,
    shared_pattern,
    shell_commands,
    snakemake,
    workflow_copy,
)


def test_default_dry_run_lists_exactly_the_expected_jobs(tmp_path):
    workdir = workflow_copy(tmp_path / "wf")
    assert planned_jobs(workdir) == DEFAULT_JOBS


def test_dry_run_scales_with_the_grid(tmp_path):
    config = copy.deepcopy(GRID)
    config["models"]["other"] = {"source": {"hub": "Qwen/Qwen2.5-7B-Instruct"}}
    config["pruning"]["ratios"] = [0.25]
    config["recovery"]["methods"] = ["none", "sgr"]
    config["scoring"]["methods"] = ["reverse"]
    workdir = workflow_copy(tmp_path / "wf", config)
    jobs = planned_jobs(workdir)
    # 2 models x 1 method x 1 ratio; reverse needs no calibration (no python_docs, no prepare_calibration);
    # x 6 tasks: 12 unrecovered evaluations (evaluate_pruned, shared) and 12 of sgr
    assert jobs == {
        "all": 1, "build_task": 18, "prepare_task": 6, "prepare_prompts": 1,
        "materialize": 2, "score": 2, "prune": 2, "filter_prompts": 2, "selfgen": 2, "recover": 2,
        "evaluate_dense": 12, "evaluate_pruned": 12, "evaluate_variant": 12, "aggregate": 1,
    }  # fmt: skip


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_dry_run_with_iterative_and_angular_last(tmp_path):
    """iterative depends on the probe tasks' prepared files and gets its settings in --settings."""
    config = copy.deepcopy(GRID)
    config["scoring"]["methods"] = ["bi", "angular_last", "reverse", "iterative"]
    config["scoring"]["iterative"] = {"probe_tasks": ["general_knowledge", "plural"], "num_samples": 8}
    workdir = workflow_copy(tmp_path / "wf", config)
    assert planned_jobs(workdir) == {
        **GRID_JOBS, "score": 3, "score_iterative": 1, "prune": 12, "recover": 24,
        "evaluate_pruned": 72, "evaluate_variant": 144,
    }  # fmt: skip
    output = snakemake(workdir, "-n", "-p", "--cores", "2").stdout
    block = output[output.index("rule score_iterative:") :]
    block = block[: block.index("\n\n")]
    inputs = block.split("input:", 1)[1].splitlines()[0]
    model, *tasks = [name.strip() for name in inputs.split(",")]
    assert is_shared(model, "models", "smollm2-135m")
    assert is_shared(tasks[0], "tasks", "general_knowledge.json") and is_shared(tasks[1], "tasks", "plural.json")
    output_line = block.split("output:", 1)[1].splitlines()[0].strip()
    assert is_shared(output_line, "scores", "smollm2-135m/iterative.json"), output_line  # shared by fingerprint
    commands = {flag(argv, "--method"): argv for argv in shell_commands(output, "score")}
    iterative = commands["iterative"]
    probes = iterative[iterative.index("--probe-tasks") + 1 : iterative.index("--settings")]
    assert probes == tasks
    greedy = {"temperature": 0.0, "top_k": None, "top_p": None}
    assert settings_of(iterative) == {
        "batch_size": 8, "dtype": "auto", "max_ratio": 0.3, "num_samples": 8, "probe_max_new_tokens": [16, 8],
        "seed": 0, "criterion": "mean_ratio", "tie_break": "later", "keep_first_layer": True,
        "probe_batch_size": None,
        # each probe generated as its task is evaluated (tasks.<task>: prompting, sampling)
        "probe_prompting": ["auto", "auto"], "probe_sampling": [greedy, greedy],
    }  # fmt: skip
    # angular_last is scored by the plain score rule, from the calibration set
    assert is_shared(flag(commands["angular_last"], "--calibration"), "calibration:.jsonl")

    # without probe_tasks, every task probes
    del config["scoring"]["iterative"]["probe_tasks"]
    workdir = workflow_copy(tmp_path / "wf2", config)
    output = snakemake(workdir, "-n", "-p", "--cores", "2").stdout
    block = output[output.index("rule score_iterative:") :][:1500]
    for task in config["tasks"]:
        assert re.search(shared_pattern("tasks", f"{task}.json"), block.split("output:")[0]), task


def test_generative_tasks_get_their_spec_sampling_and_sandbox_flags(tmp_path):
    config = copy.deepcopy(GRID)
    config["tasks"]["humaneval"].update(temperature=0.9, top_k=50, num_samples=5, pass_k=[1, 5])
    config["tasks"]["gsm8k"] = {"type": "generative", "dataset": "gsm8k", "file": "data/gsm8k.jsonl", "num_fewshot": 2}
    config["evaluation"]["sandbox"] = {"timeout_s": 7, "nproc": 12}
    workdir = workflow_copy(tmp_path / "wf", config)
    (workdir / "data").mkdir()
    (workdir / "data" / "gsm8k.jsonl").write_text("")
    output = snakemake(workdir, "-n", "-p", "--cores", "1").stdout
    prepare = shell_commands(output, "prepare-task")
    prepared = {Path(flag(argv, "--out")).name: json.loads(flag(argv, "--spec")) for argv in prepare}
    assert prepared["gsm8k.json"]["dataset"] == "gsm8k"
    assert prepared["arithmetic_probe.json"]["grader"] == "first_digit"
    evaluated = {flag(argv, "--task-name"): settings_of(argv) for argv in shell_commands(output, "evaluate")}
    humaneval = evaluated["humaneval"]
    assert {k: humaneval[k] for k in ("prompting", "temperature", "top_k", "top_p", "num_samples", "pass_k")} == {
        "prompting": "fewshot", "temperature": 0.9, "top_k": 50, "top_p": None, "num_samples": 5, "pass_k": [1, 5],
    }  # fmt: skip
    sandbox = {k: v for k, v in humaneval.items() if k.startswith("sandbox_")}
    assert sandbox == {
        "sandbox_timeout": 7.0, "sandbox_cpu": 10, "sandbox_memory_mb": 2048, "sandbox_file_size_mb": 16,
        "sandbox_nproc": 12, "sandbox_isolation": "strict",
    }  # fmt: skip
    plural = evaluated["plural"]
    assert (plural["prompting"], plural["temperature"], plural["num_samples"], plural["pass_k"]) == ("auto", 0, 1, [1])


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_calibration_loss_methods_get_their_settings(tmp_path):
    config = copy.deepcopy(GRID)
    config["scoring"].update(methods=["ppl", "sleb", "reverse"], chunk_size=16, sleb_exclude_ends=False)
    workdir = workflow_copy(tmp_path / "wf", config)
    assert planned_jobs(workdir) == {
        **GRID_JOBS, "score": 3, "prune": 9, "recover": 18, "evaluate_pruned": 54, "evaluate_variant": 108,
    }  # fmt: skip
    output = snakemake(workdir, "-n", "-p", "--cores", "1", "--until", "score").stdout
    commands = {flag(argv, "--method"): argv for argv in shell_commands(output, "score")}
    assert sorted(commands) == ["ppl", "reverse", "sleb"]
    assert is_shared(flag(commands["sleb"], "--calibration"), "calibration:.jsonl")
    assert settings_of(commands["sleb"]) == {
        "batch_size": 8, "chunk_size": 16, "dtype": "auto", "max_length": 256, "max_ratio": 0.3, "seed": 0,
        "sleb_exclude_ends": False,
    }  # fmt: skip
    # sleb's settings do not reach ppl, nor the calibration settings the calibration-free reverse
    assert settings_of(commands["ppl"]) == {
        "batch_size": 8, "chunk_size": 16, "dtype": "auto", "max_length": 256, "seed": 0,
    }  # fmt: skip
    assert settings_of(commands["reverse"]) == {"batch_size": 8, "dtype": "auto", "seed": 0}
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
        (lambda c: c["prompts"].update(source="magpie"), "remove `data` from recovery.methods"),
        (lambda c: c["prompts"].update(source="jsonl", path="x.jsonl", response_field=None), "prompts.response_field"),
        (lambda c: c["prompts"].update(source="hub"), "prompts.path: missing; prompts.source is hub"),
        (lambda c: c["prompts"].update(source="bigbench", bigbench_tasks=[]), "bigbench_tasks"),
        (lambda c: c["selfgen"].update(backend="tgi"), "tgi"),
        (lambda c: c["prompts"].update(magpie={"dedup_threshold": 0}), "dedup_threshold"),
        (lambda c: c["tasks"]["humaneval"].update(grader="bleu"), "bleu"),
        (lambda c: c["tasks"]["plural"].pop("builtin_task"), "builtin_task"),
        (lambda c: c["tasks"]["humaneval"].update(prompting="socratic"), "socratic"),
        (lambda c: c["evaluation"].update(sandbox={"nproc": 0}), "nproc"),
        # a study given with --configfile is not completed from config.yaml: a missing resource is named
        (lambda c: c["resources"]["default"].pop("mem_mb"), "mem_mb"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(tmp_path, mutate, message):
    config = copy.deepcopy(GRID)
    mutate(config)
    workdir = workflow_copy(tmp_path / "wf", config)
    result = snakemake(workdir, "-n", "--cores", "1", check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_slurm_profile_dry_run_as_users_type_it(tmp_path):
    config = copy.deepcopy(GRID)
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
    # the repository's own DVC setup: a clone needs no `dvc init`
    shutil.copytree(REPO / ".dvc", workdir / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    shutil.copy(REPO / ".dvcignore", workdir / ".dvcignore")
    assert "hardlink" in run([dvc, "config", "cache.type"], workdir).stdout
    status = run([dvc, "status"], workdir).stdout
    # never run: DVC sees the config as new params and every versioned artifact as missing (the default
    # study's stage and the one for what studies share: layerprune dvc-stages, from studies.yaml)
    assert "default:" in status and "shared:" in status and "config.yaml" in status
    for artifact in ("results/default", "results/shared", ".snakemake/metadata"):
        assert f"deleted:            {artifact}\n" in status, status
    # `shared` runs after every study's stage (it depends on their folders, which a dry run does not make)
    dag = run([dvc, "dag", "--dot"], workdir).stdout
    assert '"default" -> "shared";' in dag, dag
    dry = run([dvc, "repro", "--dry", "default"], workdir)
    assert "Running stage 'default'" in dry.stdout
    assert "snakemake --cores all --configfile config.yaml" in dry.stdout


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_paper_config_dry_run_offline(tmp_path):
    """configs/paper.yaml plans the paper's grid without touching the hub."""
    workdir = workflow_copy(tmp_path / "wf")  # the embedded default beside it, as in a checkout
    shutil.copy(REPO / "configs" / "paper.yaml", workdir / "paper.yaml")
    jobs = planned_jobs(workdir, "--configfile", "paper.yaml")
    assert jobs == {
        "all": 1, "build_task": 12, "prepare_task": 10, "prepare_lm_eval_task": 7,
        "prepare_prompts": 1, "prepare_calibration": 1, "materialize": 3, "score": 6, "score_iterative": 3,
        "prune": 27, "filter_prompts": 3, "selfgen": 3, "recover": 54, "evaluate_dense": 42, "evaluate_pruned": 378,
        "evaluate_variant": 756, "aggregate": 1,
    }  # fmt: skip
    # 3 models x 3 methods (bi, reverse, iterative) x 3 ratios (0.2, 0.25, 0.3) x 3 recoveries x 14 tasks:
    # 7 lm-eval + 5 generative (gsm8k, math500, humaneval+, mbpp+, xsum) + 2 arithmetic; the 3 iterative
    # probes (evaluate: false) are prepared, never evaluated. Recovery none's are evaluate_pruned (shared).
    assert jobs["evaluate_variant"] + jobs["evaluate_pruned"] == 3 * 3 * 3 * 3 * 14 == 1134
    assert jobs["evaluate_pruned"] == 3 * 3 * 3 * 14
    assert jobs["evaluate_dense"] == 42
    assert jobs["recover"] == 54  # 2 trained recoveries (data, sgr)
    assert jobs["score_iterative"] == 3
    assert jobs["prepare_lm_eval_task"] == 7
    assert jobs["prepare_task"] == 10
    assert jobs["build_task"] == 12  # 11 task + 1 calibration tasks the project builds (prompts: Alpaca)
    assert "fetch_bigbench" not in jobs  # the paper's grid needs no BIG-bench
    assert jobs["filter_prompts"] == 3  # the prompt set cut to each model's own token count
    assert sum(jobs.values()) == 1308


def test_lm_eval_task_cannot_probe_iterative(tmp_path):
    config = copy.deepcopy(GRID)
    config["scoring"]["methods"] = ["iterative"]
    config["tasks"]["arc"] = {"type": "classification", "lm_eval_task": "arc_easy", "num_fewshot": 0}
    config["scoring"]["iterative"] = {"probe_tasks": ["arc"]}
    workdir = workflow_copy(tmp_path / "wf", config)
    result = snakemake(workdir, "-n", "--cores", "1", check=False)
    assert result.returncode != 0
    assert "scoring.iterative.probe_tasks: 'arc'" in result.stdout + result.stderr


def test_lm_eval_task_is_classification_only(tmp_path):
    config = copy.deepcopy(GRID)
    config["tasks"]["arc"] = {"type": "generative", "lm_eval_task": "arc_easy", "num_fewshot": 0}
    workdir = workflow_copy(tmp_path / "wf", config)
    result = snakemake(workdir, "-n", "--cores", "1", check=False)
    assert result.returncode != 0
    assert "classification" in result.stdout + result.stderr


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_lm_eval_task_settings_reach_the_cli(tmp_path):
    config = copy.deepcopy(GRID)
    config["tasks"]["arc"] = {"type": "classification", "lm_eval_task": "arc_easy", "num_fewshot": 5, "limit": 0.2}
    workdir = workflow_copy(tmp_path / "wf", config)
    jobs = planned_jobs(workdir)
    assert jobs == {
        **GRID_JOBS, "prepare_lm_eval_task": 1, "evaluate_dense": 7, "evaluate_pruned": 42, "evaluate_variant": 84,
    }  # fmt: skip
    dry = snakemake(workdir, "-n", "-p", "--cores", "1", "--until", "prepare_lm_eval_task")
    (argv,) = shell_commands(dry.stdout + dry.stderr, "prepare-lm-eval-task")
    assert argv[2:-1] == [
        "--lm-eval-task", "arc_easy", "--num-fewshot", "5", "--limit", "0.2", "--metric", "acc", "--include-path=",
        "--seed", "0", "--out",
    ]  # fmt: skip
    assert is_shared(argv[-1], "tasks", "arc.json")


@pytest.mark.parametrize("system_prompt", [None, 'You are a helpful assistant. It\'s "quoted" $HOME `x`'])
@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_system_prompt_reaches_the_prompt_set_verbatim(tmp_path, system_prompt):
    """Config strings are shell-quoted on their way to the CLI; null means no system message."""
    config = copy.deepcopy(GRID)
    config["prompts"]["system_prompt"] = system_prompt
    workdir = workflow_copy(tmp_path / "wf", config)
    snakemake(workdir, "--cores", "1", "--until", "prepare_prompts")
    first = json.loads((workdir / shared_file(workdir, "prompts:.jsonl")).read_text().splitlines()[0])
    if system_prompt is None:
        assert [m["role"] for m in first["prompt"]] == ["user"]
    else:
        assert first["prompt"][0] == {"role": "system", "content": system_prompt}


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_magpie_config_plans_magpie_prompts_with_its_settings(tmp_path):
    """Prompt-free SGR: no prompt dataset, the dense model writes the prompt set; `data` is not allowed."""
    config = copy.deepcopy(GRID)
    config["prompts"].update(source="magpie", num_prompts=12, magpie={"dedup_threshold": 0.6, "max_new_tokens": 40})
    config["recovery"]["methods"] = ["none", "sgr"]
    workdir = workflow_copy(tmp_path / "wf", config)
    jobs = planned_jobs(workdir)
    assert jobs == {
        "all": 1, "build_task": 15, "prepare_task": 6, "prepare_calibration": 1,
        "materialize": 1, "score": 2, "prune": 6, "magpie_prompts": 1, "selfgen": 1, "recover": 6,
        "evaluate_dense": 6, "evaluate_pruned": 36, "evaluate_variant": 36, "aggregate": 1,
    }  # fmt: skip
    output = snakemake(workdir, "-n", "-p", "--cores", "2").stdout
    (magpie,) = shell_commands(output, "magpie-prompts")
    assert flag(magpie, "--out") == "results/default/data/prompts/smollm2-135m.jsonl"
    assert settings_of(magpie) == {
        "num_prompts": 12, "max_new_tokens": 40, "dedup_threshold": 0.6, "temperature": 1.0, "top_p": 1.0,
        "batch_size": 16, "ngram": 3, "max_candidates": None, "max_prompt_tokens": 256, "system_prompt": None,
        "backend": "auto", "seed": 0, "dtype": "auto",
        "max_model_len": None, "gpu_memory_utilization": 0.9, "tensor_parallel_size": 1, "batch_invariant": True,
    }  # fmt: skip
    (selfgen,) = shell_commands(output, "selfgen")
    assert flag(selfgen, "--prompts") == "results/default/data/prompts/smollm2-135m.jsonl"
    assert (settings_of(selfgen)["drop_empty"], settings_of(selfgen)["drop_truncated"]) == (False, False)


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_hub_prompt_source_from_a_saved_dataset_through_the_rule(tmp_path):
    """The config's field mapping reaches prepare-prompts intact (quoting, separator, null response)."""
    import datasets

    rows = {"instruction": ["Say hi.", "Add the numbers."], "input": ["", "2 and 3"], "output": ["hi", "5"]}
    config = copy.deepcopy(GRID)
    workdir = workflow_copy(tmp_path / "wf", config)
    datasets.Dataset.from_dict(rows).save_to_disk(workdir / "alpaca")
    config["prompts"].update(
        source="hub", path="alpaca", num_prompts=2, prompt_fields=["instruction", "input"], separator="\n--\n"
    )
    workflow_copy(workdir, config)
    snakemake(workdir, "--cores", "1", "--until", "prepare_prompts")
    records = [json.loads(line) for line in (workdir / shared_file(workdir, "prompts:.jsonl")).read_text().splitlines()]
    answers = {r["prompt"][-1]["content"]: r["completion"][0]["content"] for r in records}
    assert answers == {"Say hi.": "hi", "Add the numbers.\n--\n2 and 3": "5"}


@pytest.mark.slow
def test_snakemake_report_html_on_a_finished_run(tmp_path):
    """`snakemake --report report.html` after the aggregate step: the report() outputs are in the HTML.

    The evaluation results and scores are fixtures in the evaluate/score contracts, so only the
    real aggregate rule runs (`--allowed-rules`), as it would at the end of a finished run.
    """
    import pandas as pd
    from helpers.report_grid import sampled_result

    from layerprune.io import write_json

    config = copy.deepcopy(GRID)
    config["scoring"]["methods"] = ["reverse"]
    config["pruning"]["ratios"] = [0.25]
    config["recovery"]["methods"] = ["none", "sgr"]
    config["report"] = {"bootstrap_samples": 100}
    del config["tasks"]["humaneval"]  # no code task: no error-bucket figure at all
    workdir = workflow_copy(tmp_path / "wf", config)
    (model,) = config["models"]
    planned = planned_paths(workdir)  # the study's own files and the shared ones, where the plan wants them
    for task, settings in config["tasks"].items():
        for method, ratio, recovery in [("dense", 0.0, "none"), ("reverse", 0.25, "none"), ("reverse", 0.25, "sgr")]:
            result = sampled_result(
                "mc", method, ratio, recovery, 0.8 if method == "dense" else 0.5, recovery == "none"
            )
            result.update(model=model, task=task, type=settings["type"])
            where = "dense" if method == "dense" else f"{method}/{ratio:g}/{recovery}"
            write_json(workdir / planned[f"eval/{model}/{where}/{task}.json"], result)
    removal = {str(k): list(range(30 - k, 30)) for k in range(1, 30)}
    scores = {"method": "reverse", "num_layers": 30, "scores": list(range(30)), "removal": removal}
    write_json(workdir / planned[f"scores/{model}/reverse.json"], scores)
    losses = {"loss_curve": [{"step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 9)], "eval_loss_curve": []}
    write_json(workdir / f"results/default/recovered/{model}/reverse/0.25/sgr/recovery.json", losses)

    snakemake(workdir, "--cores", "1", "--allowed-rules", "aggregate", "all")
    assert (workdir / "results" / "default" / "report" / "report.md").read_text().startswith("# layerprune report")
    snakemake(workdir, "--report", "report.html", "--allowed-rules", "aggregate", "all")
    html = (workdir / "report.html").read_text(errors="replace")
    for name in [
        "report.md", "retention_by_type.png", "degeneration.png", "retention.csv", "summary.csv", "time.csv",
        f"{model}__layer_scores.png", f"{model}__removal_map.png", "recovery_loss.png",
    ]:  # fmt: skip
        assert name in html, name
    # the landing page carries the findings and the headline table (old: the DAG and "see report.md")
    findings = pd.read_csv(workdir / "results/default/report/findings.csv")
    landing = json.loads(html.split("workflow_desc = ", 1)[1].split(";\n", 1)[0])
    for claim in findings["claim"]:
        assert claim in landing, claim
    assert "Retention at each model's headline ratio" in landing and "reverse" in landing
    # each figure has its caption; no code task, so no error-bucket figure at all
    assert "standard error of the mean over the" in html and "rep-2/3/4" in html and "held-out eval loss" in html
    assert "error_buckets.png" not in html
    assert not (workdir / "results/default/report/plots/error_buckets.png").exists()
