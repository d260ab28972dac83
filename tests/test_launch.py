"""The command a recover job starts with, and the SLURM resources each rule asks for."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
from workflow_helpers import snakemake, workflow_copy

from layerprune.launch import command_prefix, num_gpus, rule_command_prefix, slurm_resources


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


def test_module_entry_point_the_launchers_run():
    """`-m layerprune.cli` (what accelerate/torchrun run) is the same CLI as `layerprune`."""
    command = [sys.executable, "-m", "layerprune.cli", "recover", "--help"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0 and "--lora-r" in result.stdout


def recover_commands(workdir, target: str) -> list[str]:
    result = snakemake(workdir, "-n", "-p", "--cores", "8", "--forcerun", "recover", target)
    lines = [line.strip().removeprefix("Shell command:").strip() for line in result.stdout.splitlines()]
    return [line for line in lines if f"--out {target} " in line]


def test_recover_rule_runs_through_the_launcher_its_resources_ask_for(tmp_path):
    """A dry run prints the exact shell command Snakemake would run for a 2-GPU recover job."""
    from test_pipeline import tiny_config

    config = tiny_config(tmp_path / "no-model-needed-for-a-dry-run")
    config["resources"]["recover"] = {"gpus": 2, "threads": 4}
    workdir = workflow_copy(tmp_path / "wf", config)
    target = "results/recovered/tiny/bi/0.5/sgr"
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
