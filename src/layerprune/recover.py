"""Recovery: supervised finetuning of a pruned checkpoint with TRL's SFTTrainer.

A LoRA adapter (PEFT) is trained with completion-only loss on a conversational
prompt–completion dataset — the dense model's self-generated responses (`sgr`)
or the prompt set's own reference answers (`data`, the paper's control) — and
merged back, so the output is again a plain checkpoint.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from layerprune.io import atomic_path, read_json, read_jsonl, seed_everything, write_json
from layerprune.models import load_checkpoint


def recover_checkpoint(
    model_dir: str | Path,
    dataset_path: str | Path,
    out_dir: str | Path,
    recovery: str,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    learning_rate: float,
    num_epochs: float,
    batch_size: int,
    grad_accum: int,
    max_length: int,
    warmup_steps: int,
    lr_scheduler: str,
    weight_decay: float,
    seed: int,
    max_steps: int = -1,
    dtype: str = "auto",
) -> dict[str, Any]:
    """Finetune the checkpoint in `model_dir` on `dataset_path` and save the merged model."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    seed_everything(seed)
    records = [{"prompt": r["prompt"], "completion": r["completion"]} for r in read_jsonl(dataset_path)]
    records = [r for r in records if r["completion"][0]["content"].strip()]
    if not records:
        raise ValueError(f"{dataset_path} has no non-empty completions to train on")
    model, tokenizer = load_checkpoint(model_dir, dtype=dtype)
    peft_config = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    with tempfile.TemporaryDirectory(prefix="layerprune-sft-") as work_dir:
        args = SFTConfig(
            output_dir=work_dir,
            learning_rate=learning_rate,
            num_train_epochs=num_epochs,
            max_steps=max_steps,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=grad_accum,
            max_length=max_length,
            warmup_steps=warmup_steps,
            lr_scheduler_type=lr_scheduler,
            weight_decay=weight_decay,
            adam_beta1=0.9,
            adam_beta2=0.99,
            completion_only_loss=True,
            seed=seed,
            data_seed=seed,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=not next(model.parameters()).is_cuda,
            bf16=str(next(model.parameters()).dtype) == "torch.bfloat16",
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(records),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        train_output = trainer.train()
        log_history = trainer.state.log_history
        merged = trainer.model.merge_and_unload()
    losses = [{"step": e["step"], "loss": e["loss"]} for e in log_history if "loss" in e]
    record = {
        "recovery": recovery,
        "dataset": str(dataset_path),
        "num_examples": len(records),
        "train_loss": train_output.training_loss,
        "global_steps": train_output.global_step,
        "loss_curve": losses,
        "settings": {
            "lora_r": lora_r,
            "lora_alpha": lora_alpha,
            "lora_dropout": lora_dropout,
            "learning_rate": learning_rate,
            "num_epochs": num_epochs,
            "batch_size": batch_size,
            "grad_accum": grad_accum,
            "max_length": max_length,
            "warmup_steps": warmup_steps,
            "lr_scheduler": lr_scheduler,
            "weight_decay": weight_decay,
            "seed": seed,
            "max_steps": max_steps,
        },
    }
    pruning_file = Path(model_dir) / "pruning.json"
    with atomic_path(out_dir, directory=True) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if pruning_file.is_file():
            write_json(tmp / "pruning.json", read_json(pruning_file))
        write_json(tmp / "recovery.json", record)
        (tmp / "training_args.json").write_text(json.dumps(args.to_dict(), indent=2, default=str))
    return record
