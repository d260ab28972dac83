"""The Snakemake DAG: config validation, job counts, SLURM profile and DVC, as dry runs."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import yaml
from workflow_helpers import BIN, REPO, planned_jobs, run, snakemake, workflow_copy

DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())


def expected_jobs(config: dict) -> dict[str, int]:
    models = len(config["models"])
    methods = len(config["scoring"]["methods"])
    ratios = len(config["pruning"]["ratios"])
    recoveries = config["recovery"]["methods"]
    trained = len([r for r in recoveries if r != "none"])
    tasks = len(config["tasks"])
    bigbench = {t["bigbench_task"] for t in config["tasks"].values()}
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
        "prepare_task": tasks,
        "prepare_prompts": 1,
        "prepare_calibration": 1 if calibrated else 0,
        "prepare_heal": int("heal" in recoveries),
        "materialize": models,
        "score": models * (methods - iterative),
        "score_iterative": models * iterative,
        "prune": models * methods * ratios,
        "selfgen": models if "sgr" in recoveries else 0,
        "recover": models * methods * ratios * trained,
        "evaluate_dense": models * tasks,
        "evaluate_variant": models * methods * ratios * len(recoveries) * tasks,
        "aggregate": 1,
    }
    if not {"data", "sgr"} & set(recoveries):
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
    # 3 models x 3 methods (bi, reverse, iterative) x 3 ratios x 3 trained recoveries (data, sgr, heal)
    assert jobs["recover"] == 81
    assert jobs["prepare_heal"] == 1
    assert jobs["evaluate_variant"] == 3 * 3 * 3 * 4 * 4
    assert jobs["score_iterative"] == 3


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
