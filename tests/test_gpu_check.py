"""scripts/gpu_check.py without a GPU: --dry-run lists every step, it exits non-zero when a step fails or none
ran, and its tiny steps run on the CPU as it will travel to the lent GPU machine: from a folder that holds only
the source tree and the wheel bundle (scripts/gpu_bundle.sh), in a fresh venv with only what that machine has
(torch, transformers, huggingface_hub, peft, accelerate, pandas, numpy, safetensors, tokenizers).
The CUDA steps themselves (bf16 on the GPU, the 8B-shape memory figures) need a lent GPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
TINY = ["build", "selfgen-hf", "prune", "recover-lora", "recover-qlora", "lm-eval", "generative"]
TINY_STEPS = [f"{step}/{family}" for family in ("llama", "gemma3") for step in TINY]
BIG_STEPS = ["build/llama-8b", "memory/lm-eval-4096", "memory/bi-8x512", "memory/decode-32x256", "memory/qlora-8b"]
ALL_STEPS = ["environment", *TINY_STEPS, *BIG_STEPS]
# what the lent GPU machine has installed (docs/pipeline.md, "The GPU check"); pinned by constraints.txt here
MACHINE_PACKAGES = ["torch==2.13.0", "transformers", "huggingface_hub", "peft", "accelerate", "pandas", "numpy",
                    "safetensors", "tokenizers"]  # fmt: skip


def gpu_check(*args: str, python: str = sys.executable, cwd: Path = REPO, timeout: int = 900):
    script = cwd / "scripts" / "gpu_check.py"
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}  # nothing of this venv's: only `python`'s own
    return subprocess.run([python, str(script), *args], capture_output=True, text=True, cwd=cwd, env=environment,
                          timeout=timeout)  # fmt: skip


def lines_by_step(stdout: str) -> dict[str, str]:
    """`<step> <result>` lines, by step (the closing `gpu_check:` lines left out)."""
    lines = [line.split(maxsplit=1) for line in stdout.splitlines() if line.strip()]
    return {parts[0]: parts[1] for parts in lines if len(parts) == 2 and not parts[0].startswith("gpu_check:")}


def test_dry_run_lists_every_step_with_its_prediction_and_runs_nothing(tmp_path):
    result = gpu_check("--dry-run", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = lines_by_step(result.stdout)
    assert list(lines) == ALL_STEPS
    assert all(line.startswith("would run: ") for line in lines.values()), lines
    # each memory figure has the memory model's prediction beside it (bench/memory_model.py, called)
    sys.path.insert(0, str(REPO / "bench"))
    import memory_model

    computed = memory_model.computed(prune_ratio=2.6)
    evaluate_row = next(name for name in computed if name.startswith("evaluate lm-eval, max_batch_tokens"))
    assert f"[predicted: {computed[evaluate_row]['gpu_gb']} GB, {evaluate_row}]" in lines["memory/lm-eval-4096"]
    assert "recover QLoRA (GPU)" in lines["memory/qlora-8b"] and "recover merge" in lines["memory/qlora-8b"]
    assert "[predicted: " in lines["memory/decode-32x256"] and "score bi" in lines["memory/bi-8x512"]
    assert not (tmp_path / "out").exists()  # nothing ran


def test_dry_run_on_cpu_skips_the_8b_steps_with_the_reason(tmp_path):
    result = gpu_check("--dry-run", "--device", "cpu", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = lines_by_step(result.stdout)
    assert all(lines[step].startswith("would run: ") for step in ["environment", *TINY_STEPS])
    assert all(
        lines[step].startswith("skipped (needs CUDA (--device cpu runs the tiny steps only))") for step in BIG_STEPS
    )
    skipped = lines_by_step(gpu_check("--dry-run", "--skip-8b", "--out", str(tmp_path / "out")).stdout)
    assert all(skipped[step].startswith("skipped (--skip-8b)") for step in BIG_STEPS)


def test_the_shell_wrapper_runs_the_same_check(tmp_path):
    environment = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                            capture_output=True, text=True, env=environment, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(lines_by_step(result.stdout)) == ALL_STEPS


def test_exits_non_zero_when_nothing_ran(tmp_path):
    result = gpu_check("--device", "cpu", "--steps", "memory/*", "--out", str(tmp_path / "out"))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = lines_by_step(result.stdout)
    assert all(line.startswith("skipped (") for line in lines.values()) and len(lines) == len(ALL_STEPS)
    assert "gpu_check: nothing ran" in result.stdout
    record = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert {step["status"] for step in record["steps"]} == {"skipped"}


@pytest.mark.slow  # imports torch, transformers, trl, lm_eval (~1 min on 2 busy cores)
def test_exits_non_zero_when_a_step_fails_and_its_dependants_are_not_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the environment step would pass")
    result = gpu_check("--steps", "environment", "build/llama", "--out", str(tmp_path / "out"))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = lines_by_step(result.stdout)
    assert lines["environment"].startswith("failed (RuntimeError: no CUDA GPU (torch "), lines["environment"]
    assert lines["build/llama"] == "failed (not run: environment failed)"
    record = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    statuses = {step["name"]: step["status"] for step in record["steps"]}
    assert statuses["environment"] == "failed" and statuses["build/llama"] == "failed"
    assert "torch.cuda.is_available() is False" in (tmp_path / "out" / "logs" / "environment.log").read_text()


# ------------------------------------------------------------------ as it travels: source tree + bundle only


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """The bundle for this interpreter's Python (the lent machine's is 3.12; this machine's torch wheel is 3.11),
    built once per session by the script the docs name (xz -1: faster, bigger than the travelling -9)."""
    out = tmp_path_factory.mktemp("bundle") / "gpu_bundle.tar.xz"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_bundle.sh"), "--python-version", version, "--out",
                           str(out), "--level", "1"], capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory) -> str:
    """A fresh venv with only the lent machine's packages (no trl, datasets, lm_eval, bitsandbytes, matplotlib)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(REPO / "constraints.txt"),
                              *MACHINE_PACKAGES], capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    return str(venv / "bin" / "python")


def source_tree(target: Path) -> Path:
    """The project's files as git sees them (tracked and new, not ignored): what travels to the GPU machine."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


@pytest.mark.slow  # a fresh venv, the bundle, then every tiny step on the CPU (~10 min on 2 busy cores)
def test_tiny_steps_run_on_cpu_from_the_source_tree_and_the_bundle_alone(tmp_path, bundle, bare_python):
    folder = source_tree(tmp_path / "tree")
    assert not (folder / ".venv").exists() and not (folder / "build").exists()
    missing = subprocess.run([bare_python, "-c", "import trl"], capture_output=True, text=True)
    assert missing.returncode != 0, "the bare venv must not have trl"
    # without the bundle: the environment step fails, naming what is missing and how to make the bundle
    without = gpu_check("--device", "cpu", "--steps", "environment", "build/llama", python=bare_python, cwd=folder)
    assert without.returncode == 1
    lines = lines_by_step(without.stdout)
    assert lines["environment"].startswith("failed (RuntimeError: cannot import trl"), lines["environment"]
    assert "bash scripts/gpu_bundle.sh" in lines["environment"]
    (folder / "build").mkdir()
    shutil.copy(bundle, folder / "build" / "gpu_bundle.tar.xz")
    result = gpu_check("--device", "cpu", python=bare_python, cwd=folder, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = lines_by_step(result.stdout)
    for step in ["environment", *TINY_STEPS]:
        assert lines[step].startswith("ran ("), (step, lines[step])
    for step in BIG_STEPS:
        assert lines[step].startswith("skipped (needs CUDA"), (step, lines[step])
    record = json.loads((folder / "results" / "gpu_check" / "gpu_check.json").read_text())
    modules = record["environment"]["modules"]
    assert {name: modules[name]["from"] for name in ("trl", "datasets", "lm_eval", "bitsandbytes")} == dict.fromkeys(
        ("trl", "datasets", "lm_eval", "bitsandbytes"), "bundle"
    )
    assert modules["torch"]["from"] == "machine" and modules["layerprune"]["from"] == "source"
    steps = {step["name"]: step for step in record["steps"]}
    for family in ("llama", "gemma3"):
        check = steps[f"recover-qlora/{family}"]["figures"]["merge_check"]
        assert check["merge_gap"] <= 2 * check["quantisation_error"] + 1e-4 and check["layers_checked"] > 0
        assert steps[f"recover-lora/{family}"]["figures"]["precision"] == "bf16"
        assert steps[f"lm-eval/{family}"]["figures"]["n"] == 12 and steps[f"generative/{family}"]["figures"]["n"] == 8
        assert steps[f"lm-eval/{family}"]["figures"]["dtype"] == "bfloat16"
    assert os.path.getsize(folder / "build" / "gpu_bundle.tar.xz") < 64 * 2**20
