"""What the recovery tests train with: a few real LoRA steps on a tiny model."""

from __future__ import annotations

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
