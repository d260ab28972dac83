"""A job given a GPU that torch cannot use stops at once with the cause and the fix (issue 26 §3).

On this CPU machine torch is the CPU build and there is no NVIDIA driver: exactly the state of a
job whose torch cannot reach the GPU SLURM gave it. The SLURM variables are faked.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
import torch

from layerprune.models.checkpoints import (
    ALLOW_CPU_VARIABLE,
    check_gpu_usable,
    cuda_unusable_reason,
    device_summary,
    gpu_given,
    resolve_dtype,
)

CLEAN = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_VISIBLE", "LAYERPRUNE_"))}


@pytest.mark.parametrize(
    ("environ", "given"),
    [
        ({}, None),
        ({"CUDA_VISIBLE_DEVICES": ""}, None),  # hides every GPU: a CPU job
        ({"CUDA_VISIBLE_DEVICES": "-1"}, None),
        ({"SLURM_GPUS_ON_NODE": "0"}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "4"}, None),  # a SLURM job without GPUs
        ({"CUDA_VISIBLE_DEVICES": "0"}, "CUDA_VISIBLE_DEVICES=0"),
        ({"SLURM_JOB_GPUS": "0"}, "SLURM_JOB_GPUS=0"),  # an index list: GPU number 0 is a GPU
        ({"SLURM_GPUS_ON_NODE": "2"}, "SLURM_GPUS_ON_NODE=2"),
        ({"SLURM_GPUS": "a100:1"}, "SLURM_GPUS=a100:1"),
        ({"LAYERPRUNE_REQUIRE_GPU": "1"}, "LAYERPRUNE_REQUIRE_GPU=1"),
    ],
)
def test_what_counts_as_given_a_gpu(environ, given):
    assert gpu_given(environ) == given


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA is not usable")
def test_check_raises_with_cause_and_fix_and_allows_cpu_on_purpose():
    check_gpu_usable({})  # given nothing: runs on the CPU quietly
    with pytest.raises(RuntimeError) as raised:
        check_gpu_usable({"SLURM_JOB_GPUS": "0"})
    message = str(raised.value)
    assert "SLURM_JOB_GPUS=0" in message and "CUDA is not usable" in message
    assert "Fix:" in message and ALLOW_CPU_VARIABLE in message
    check_gpu_usable({"SLURM_JOB_GPUS": "0", ALLOW_CPU_VARIABLE: "1"})


def test_reason_names_the_driver_against_the_one_torch_needs():
    old = cuda_unusable_reason("13.0", "535.104.05", torch_version="2.13.0")
    assert "driver >= 580" in old and "535.104.05" in old and "Fix:" in old
    assert "no NVIDIA driver" in cuda_unusable_reason("13.0", None)
    assert "CPU-only build" in cuda_unusable_reason(None, None)
    # a new enough driver: the cause is elsewhere, and torch's own warning is passed on
    fine = cuda_unusable_reason("12.8", "570.86.15", init_warning="CUDA unknown error")
    assert "CUDA unknown error" in fine and "CUDA_VISIBLE_DEVICES" in fine


def test_auto_dtype_on_cpu_and_the_header_line():
    if not torch.cuda.is_available():
        assert resolve_dtype("auto") == torch.float32
        assert device_summary("auto").startswith("cpu (") and "auto -> float32" in device_summary("auto")
    assert "bfloat16 -> bfloat16" in device_summary("bfloat16")


def _score(tmp_path, extra_env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run `layerprune score` and return its result and its CPU seconds (user + system).

    CPU time, not wall time: on a shared machine the wall clock measures the neighbours; the job's own
    CPU time is what it spends before it stops (its imports, mostly torch's: 2-6 s here).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-m", "layerprune.cli", "score", "--model", str(tmp_path / "absent"), "--method", "reverse"]
        + ["--out", str(tmp_path / "scores.json")],
        env={**CLEAN, **extra_env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA is not usable")
@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_a_job_given_a_gpu_it_cannot_use_stops_within_10_seconds(tmp_path):
    done, cpu_seconds = _score(tmp_path, {"SLURM_JOB_ID": "42", "SLURM_JOB_GPUS": "0", "SLURM_GPUS_ON_NODE": "1"})
    assert done.returncode == 3, done.stderr[-2000:]
    assert cpu_seconds < 10, cpu_seconds
    assert "# device: cpu (" in done.stderr  # the header says what the job would have run on
    assert "SLURM_JOB_GPUS=0" in done.stderr and "CUDA is not usable" in done.stderr and "Fix:" in done.stderr
    assert not (tmp_path / "scores.json").exists()
    # the same job without the GPU variables gets past the check (and fails on its missing model instead)
    done, _ = _score(tmp_path, {})
    assert done.returncode not in (0, 3) and "CUDA is not usable" not in done.stderr
    assert "absent" in done.stderr


def test_lm_eval_log_softmax_runs_in_fp32_for_a_bf16_model():
    from helpers.models import make_tiny_model, make_tokenizer

    from layerprune.evaluation.evaluate import token_budget_hflm

    model = make_tiny_model("llama", num_layers=1).to(torch.bfloat16)
    lm = token_budget_hflm(model, make_tokenizer(), batch_size=2, max_batch_tokens=None)
    assert lm.softmax_dtype == torch.float32
