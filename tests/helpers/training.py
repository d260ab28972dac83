"""What the recovery tests train with (a few real LoRA steps on a tiny model) and how they call the CLI."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# A few real LoRA steps on a tiny model: what the recovery tests train with.
RECOVER_SETTINGS = dict(
    lora_r=4,
    lora_alpha=8,
    lora_dropout=0.0,
    learning_rate=1e-2,
    num_epochs=1,
    batch_size=2,
    grad_accum=1,
    max_length=64,
    warmup_steps=0,
    lr_scheduler="constant",
    weight_decay=0.0,
    seed=0,
    max_steps=3,
    dtype="float32",
)

# The venv's bin: its `layerprune` console script is what the CLI tests run.
VENV_BIN = Path(sys.executable).parent


def cli_settings(settings: dict) -> list[str]:
    """`settings` as CLI flags: --lora-r 4 --lora-alpha 8 ..."""
    flags = []
    for key, value in settings.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def cli_env() -> dict:
    """os.environ with src/ on PYTHONPATH and one OpenMP thread: what a CLI subprocess of the tests runs with."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")  # tests/helpers/training.py -> src/
    env["OMP_NUM_THREADS"] = "1"
    return env


def weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files in `directory`, by name."""
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors
