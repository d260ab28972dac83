"""The command a recover job starts with, and the SLURM resources each rule asks for."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers.training import RECOVER_SETTINGS
from helpers.workflow import TINY_STUDY, snakemake, workflow_copy

from layerprune.config.launch import command_prefix, num_gpus, rule_command_prefix, slurm_resources


def test_one_gpu_or_none_runs_one_plain_process():
    assert command_prefix(0) == "layerprune"
    assert command_prefix(1) == "layerprune"
    assert command_prefix(1, "torchrun") == "layerprune"


def test_several_gpus_start_one_process_each():
    assert shlex.split(command_prefix(4)) == [
        "accelerate",
        "launch",
        "--multi_gpu",
        "--num_machines",
        "1",
        "--num_processes",
        "4",
        "-m",
        "layerprune.cli",
    ]
    assert shlex.split(command_prefix(2, "torchrun")) == [
        "torchrun",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "-m",
        "layerprune.cli",
    ]
    assert "--main_process_port 29611" in command_prefix(2, main_process_port=29611)


def test_bad_gpu_count_or_launcher_is_named():
    with pytest.raises(ValueError, match="gpus"):
        command_prefix(-1)
    with pytest.raises(ValueError, match="launcher.*deepspeed"):
        command_prefix(2, "deepspeed")


def test_gpu_count_from_gpus_or_gres():
    assert num_gpus({"gpus": 3}) == 3
    assert num_gpus({"gres": "gpu:a100:2"}) == 2
    assert num_gpus({"gres": "gpu:4"}) == 4
    assert num_gpus({"gres": "gpu"}) == 1
    assert num_gpus({"gres": "tmpdisk:100G"}) == 0
    assert num_gpus({"gpus": 0}) == 0


RESOURCES = {
    "default": {
        "threads": 1,
        "mem_mb": 4000,
        "runtime": 30,
        "gpus": 0,
        "slurm_account": "lab",
        "slurm_partition": "cpu",
    },
    "recover": {
        "threads": 8,
        "mem_mb": 64000,
        "runtime": 240,
        "gpus": 2,
        "gpu_model": "a100",
        "slurm_partition": "gpu",
    },
    "evaluate": {"gres": "gpu:1"},
}


def test_slurm_resources_per_rule_override_the_default():
    assert slurm_resources(RESOURCES, "prune") == {
        "mem_mb": 4000,
        "runtime": 30,
        "cpus_per_task": 1,
        "slurm_partition": "cpu",
        "slurm_account": "lab",
    }
    assert slurm_resources(RESOURCES, "recover") == {
        "mem_mb": 64000,
        "runtime": 240,
        "cpus_per_task": 8,
        "gpu": 2,
        "gpu_model": "a100",
        "slurm_partition": "gpu",
        "slurm_account": "lab",
    }
    assert slurm_resources(RESOURCES, "evaluate")["gres"] == "gpu:1"
    assert rule_command_prefix(RESOURCES, "recover").startswith("accelerate launch")
    assert rule_command_prefix(RESOURCES, "evaluate") == "layerprune"
    with pytest.raises(ValueError, match="resources.x.*gpu_model"):
        slurm_resources({"default": {"threads": 1, "mem_mb": 1, "runtime": 1, "gpu_model": "a100"}}, "x")


def test_cpu_rules_request_no_gpu_whatever_the_default_says():
    """prune runs on the CPU: on a cluster whose default asks for a GPU it must not hold one idle."""
    resources = {"default": {"threads": 8, "mem_mb": 64000, "runtime": 120, "gpus": 1, "gpu_model": "a100"}}
    for rule in ("prune", "materialize"):
        assert "gpu" not in slurm_resources(resources, rule) and "gpu_model" not in slurm_resources(resources, rule)
        assert "gres" not in slurm_resources({"default": {**resources["default"], "gres": "gpu:1"}}, rule)
    assert slurm_resources(resources, "evaluate")["gpu"] == 1
    paper = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "paper.yaml").read_text())
    assert "gpu" not in slurm_resources(paper["resources"], "prune")


def test_score_iterative_takes_score_resources_and_its_own_runtime():
    resources = {"default": {"threads": 1, "mem_mb": 4000, "runtime": 30, "gpus": 0}, "score": {"gpus": 1}}
    assert slurm_resources(resources, "score_iterative") == slurm_resources(resources, "score")
    resources["score_iterative"] = {"runtime": 1440}
    assert slurm_resources(resources, "score_iterative") == {**slurm_resources(resources, "score"), "runtime": 1440}


def test_module_entry_point_the_launchers_run():
    """`-m layerprune.cli` (what accelerate/torchrun run) is the same CLI as `layerprune`."""
    command = [sys.executable, "-m", "layerprune.cli", "recover", "--help"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0 and "--lora-r" in result.stdout


def recover_commands(workdir, target: str) -> list[str]:
    result = snakemake(workdir, "-n", "-p", "--cores", "8", "--forcerun", "recover", target)
    lines = [line.strip().removeprefix("Shell command:").strip() for line in result.stdout.splitlines()]
    return [line for line in lines if f"--out {target} " in line]


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_recover_rule_runs_through_the_launcher_its_resources_ask_for(tmp_path):
    """A dry run prints the exact shell command Snakemake would run for a 2-GPU recover job."""
    from helpers.plans import checkpoint_config
    from helpers.workflow import tiny_config

    # a dry run reads the model's config.json only (plan-time checks: architecture, depth)
    config = tiny_config(checkpoint_config(tmp_path / "tiny-model", "llama", num_layers=4))
    config["resources"]["recover"] = {"gpus": 2, "threads": 4}
    workdir = workflow_copy(tmp_path / "wf", config)
    target = f"results/{TINY_STUDY}/recovered/tiny/bi/0.5/sgr"
    commands = recover_commands(workdir, target)
    assert len(commands) == 1
    assert commands[0].startswith(
        "accelerate launch --multi_gpu --num_machines 1 --num_processes 2 -m layerprune.cli recover"
    ), commands[0]
    assert "--threads 4" in commands[0]

    config["resources"].pop("recover")
    workflow_copy(workdir, config)
    commands = recover_commands(workdir, target)
    assert commands[0].startswith("layerprune recover --model"), commands[0]


# --------------------------------------------------------------------------- 2 processes for real (DDP on CPU)

# the recovery tests' LoRA steps, with the batch size given per run (2 processes x 2 = 1 process x 4)
DDP_SETTINGS = {**{key: value for key, value in RECOVER_SETTINGS.items() if key != "batch_size"}, "precision": "fp32"}


def _recover_args(model, data, out, batch_size: int) -> list[str]:
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in DDP_SETTINGS.items()]
    return [
        "recover",
        "--model",
        str(model),
        "--dataset",
        str(data),
        "--out",
        str(out),
        "--recovery",
        "sgr",
        "--trainer",
        "lora",
        "--threads",
        "1",
        "--batch-size",
        str(batch_size),
        *flags,
    ]


def _run(command: str, cwd) -> subprocess.CompletedProcess:
    import os
    from pathlib import Path

    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
    }
    result = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # two real training processes over gloo: ~30 s each
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_train_like_one_with_the_same_global_batch(launcher, tmp_path):
    """The real recover command, started by command_prefix(2) over gloo, against one process with batch 2 x 2.

    Each of the 2 processes takes 2 rows of a global batch of 4 (accelerate shards the
    seeded sampler's batches), DDP averages the gradients, and the Trainer averages the
    loss over the tokens of all processes: the same update as one process with batch 4.
    Only the order of float32 sums differs, so weights and losses agree to 1e-5 after
    3 Adam steps, while one step changes the LoRA weights by ~1e-2 (lr).
    """
    from helpers.models import CHAT_TEMPLATE, make_tiny_checkpoint
    from helpers.records import prompt_records
    from safetensors.torch import load_file

    from layerprune.io import read_json, write_jsonl

    base = make_tiny_checkpoint(tmp_path / "base", family="llama", num_layers=2, chat_template=CHAT_TEMPLATE)
    data = tmp_path / "train.jsonl"
    write_jsonl(data, prompt_records(16))

    single = tmp_path / "one" / "sgr"
    _run(shlex.join([command_prefix(1), *_recover_args(base, data, single, batch_size=4)]), tmp_path)
    double = tmp_path / "two" / "sgr"
    prefix = command_prefix(2, launcher, main_process_port=_free_port() if launcher == "accelerate" else None)
    assert prefix != "layerprune"
    result = _run(f"{prefix} {shlex.join(_recover_args(base, data, double, batch_size=2))}", tmp_path)
    log = result.stdout + result.stderr

    assert log.count(f"recover: wrote {double}") == 1, "only rank 0 writes the checkpoint"
    assert read_json(double / "training_args.json")["per_device_train_batch_size"] == 2
    files = sorted(path.name for path in double.iterdir())
    assert files == sorted(path.name for path in single.iterdir()), files
    assert sorted(path.name for path in double.parent.iterdir()) == ["sgr"], "no temporaries or work dir left"

    one, two = read_json(single / "recovery.json"), read_json(double / "recovery.json")
    assert one["global_steps"] == two["global_steps"] == DDP_SETTINGS["max_steps"]
    assert (one["processes"], two["processes"]) == (1, 2)
    for a, b in zip(one["loss_curve"], two["loss_curve"], strict=True):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    a_weights, b_weights = load_file(single / "model.safetensors"), load_file(double / "model.safetensors")
    original = load_file(base / "model.safetensors")
    assert set(a_weights) == set(b_weights)
    moved = max(float((a_weights[k] - original[k]).abs().max()) for k in a_weights)
    assert moved > 1e-3, "training changed the weights"
    for key in a_weights:
        torch.testing.assert_close(a_weights[key], b_weights[key], rtol=0, atol=1e-5, msg=key)


def test_cpu_processes_without_gpus():
    """`processes` starts N CPU training processes (DDP over gloo) where a job has no GPU; GPUs win."""
    from layerprune.config.launch import num_processes

    assert num_processes({"gpus": 0}) == 1
    assert num_processes({"gpus": 0, "processes": 2}) == 2
    assert num_processes({"gpus": 4, "processes": 2}) == 4
    with pytest.raises(ValueError, match="processes"):
        num_processes({"processes": 0})
    resources = {"default": {"threads": 1, "mem_mb": 1, "runtime": 1}, "recover": {"processes": 2}}
    assert rule_command_prefix({**resources}, "recover").startswith("accelerate launch --multi_gpu")
    assert rule_command_prefix({**resources}, "prune") == "layerprune"


def test_cluster_cores_problem_names_the_rules_whose_threads_would_shrink():
    from layerprune.config.launch import cluster_cores_problem

    assert cluster_cores_problem(None, {"score": 8}) is None  # no --cores: no cap
    assert cluster_cores_problem(8, {"score": 8, "recover": 4}) is None
    problem = cluster_cores_problem(2, {"score": 8, "recover": 4, "prune": 1})
    assert problem.startswith("--cores 2 caps every cluster job's threads at 2")
    assert ": recover 4, score 8." in problem and "give --cores 8 or more" in problem
