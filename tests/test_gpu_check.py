"""scripts/gpu_check.sh on a machine without a GPU: --dry-run plans every variant for real, and a plain run
skips every CUDA path with its reason (and runs nothing). The GPU run itself needs a lent GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
PATHS = ["selfgen-vllm", "selfgen-hf", "prune-bf16", "recover-lora-bf16", "recover-qlora-bf16",
         "lm-eval-classification", "generative"]  # fmt: skip
MODELS = ["smollm2-135m", "gemma3-270m"]


def gpu_check(*args: str, out: Path) -> subprocess.CompletedProcess:
    environment = {"PATH": "/usr/bin:/bin", "LAYERPRUNE_PYTHON": sys.executable, "VLLM_PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args, "--out", str(out)], capture_output=True, text=True,
                          env=environment, timeout=900)  # fmt: skip


def lines_by_path(stdout: str) -> dict[str, str]:
    return {line.split(maxsplit=1)[0]: line.split(maxsplit=1)[1] for line in stdout.splitlines() if line.strip()}


@pytest.mark.slow  # three `snakemake -n` plans (~40 s on 2 busy cores)
def test_dry_run_plans_every_path(tmp_path):
    result = gpu_check("--dry-run", out=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = lines_by_path(result.stdout)
    assert all(
        lines[f"plan/{v}"].startswith("planned: ") for v in ("vllm-lora", "transformers-lora", "transformers-qlora")
    )
    for model in MODELS:
        for path in PATHS:
            assert lines[f"{path}/{model}"].startswith("would run: "), (path, model)
    assert "trainer: qlora" in (tmp_path / "transformers-qlora" / "config.yaml").read_text()
    assert not list(tmp_path.rglob("*.safetensors"))  # nothing ran


@pytest.mark.slow  # two torch imports (~30 s on 2 busy cores)
def test_without_a_gpu_every_cuda_path_is_skipped_with_its_reason(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: run scripts/gpu_check.sh itself")
    result = gpu_check(out=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = lines_by_path(result.stdout)
    assert len(lines) == len(PATHS) * len(MODELS)
    for model in MODELS:
        assert lines[f"selfgen-vllm/{model}"].startswith("skipped (vLLM not installed in ")
        for path in PATHS[1:]:
            assert lines[f"{path}/{model}"].startswith("skipped (no CUDA GPU (torch "), lines[f"{path}/{model}"]
    assert not (tmp_path / "logs").exists()
