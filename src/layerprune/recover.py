"""Recovery: finetuning of a pruned checkpoint with TRL's SFTTrainer.

Variants (the `recovery` wildcard): `sgr` (the dense model's self-generated
responses) and `data` (the prompt set's own reference answers, the paper's
control) train with completion-only loss on a conversational prompt–completion
JSONL; `heal` trains with plain language-modelling loss on a `{"text": ...}`
JSONL, the post-pruning "healing" of Gromov et al. and Shortened LLaMA.

Trainers (`recovery.trainer`): `lora` (PEFT LoRA on all linear layers), `qlora`
(the same on a 4-bit NF4 base, needs CUDA and bitsandbytes) and `full` (every
parameter). Each one ends in the same plain merged checkpoint, so evaluation
never needs to know how a checkpoint was recovered.

Training checkpoints go to a work directory beside the output
(`<out>.work`), tagged with a fingerprint of the settings and inputs: a re-run
after a kill resumes from the latest complete checkpoint there, and a work
directory left by different settings is discarded rather than resumed. The
output directory appears, complete, only at the very end (atomic rename).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

from layerprune.io import atomic_path, read_json, read_jsonl, seed_everything, sha256_file, write_json
from layerprune.models import load_checkpoint
from layerprune.registry import TRAINERS
from layerprune.settings import RecoverySettings

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
FINGERPRINT_FILE = "fingerprint.json"


def resolve_precision(precision: str, cuda: bool | None = None, bf16_supported: bool | None = None) -> str:
    """Mixed-precision mode for training: `auto` is bf16 on a GPU that supports it, else fp16/fp32.

    `auto` never picks fp16 on CPU (torch's CPU autocast is bf16 only, and slow);
    an explicit `fp16` without CUDA is an error naming the config key. `cuda` and
    `bf16_supported` default to what torch reports, and are arguments so the
    choice can be tested for every machine.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"recovery.precision: unknown value '{precision}' (use one of {', '.join(PRECISIONS)})")
    if cuda is None or bf16_supported is None:
        import torch

        cuda = torch.cuda.is_available() if cuda is None else cuda
        bf16_supported = (cuda and torch.cuda.is_bf16_supported()) if bf16_supported is None else bf16_supported
    if precision == "auto":
        return "bf16" if cuda and bf16_supported else "fp32"
    if precision == "fp16" and not cuda:
        raise ValueError("recovery.precision: fp16 mixed precision needs a CUDA GPU; use auto, bf16 or fp32 on CPU")
    if precision == "bf16" and cuda and not bf16_supported:
        raise ValueError("recovery.precision: this GPU does not support bf16; use auto, fp16 or fp32")
    return precision


def check_trainer(trainer: str) -> None:
    """Fail at once, before anything heavy is loaded, if `trainer` cannot run here."""
    if trainer not in TRAINERS:
        raise ValueError(f"recovery.trainer: unknown value '{trainer}' (use one of {', '.join(TRAINERS)})")
    if trainer == "qlora":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(
                "recovery.trainer: qlora quantises the base model to 4-bit NF4 with bitsandbytes, which needs a "
                "CUDA GPU; none is available here. Use recovery.trainer: lora (or full) on this machine."
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise RuntimeError(
                "recovery.trainer: qlora needs the bitsandbytes package, which is not installed "
                "(pip install 'layerprune[gpu]'), or use recovery.trainer: lora."
            )


def _dataset_records(dataset_path: str | Path, recovery: str) -> list[dict[str, Any]]:
    """`heal` reads `{"text"}` records (LM loss); the others prompt–completion records."""
    rows = read_jsonl(dataset_path)
    if recovery == "heal":
        if rows and "text" not in rows[0]:
            raise ValueError(f"{dataset_path}: recovery 'heal' needs {{'text': ...}} records (see prepare-heal)")
        records = [{"text": r["text"]} for r in rows if r["text"].strip()]
        kind = "texts"
    else:
        if rows and "prompt" not in rows[0]:
            raise ValueError(f"{dataset_path}: recovery '{recovery}' needs prompt–completion records")
        records = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
        records = [r for r in records if r["completion"][0]["content"].strip()]
        kind = "non-empty completions"
    if not records:
        raise ValueError(f"{dataset_path} has no {kind} to train on")
    return records


def _fingerprint(model_dir: Path, dataset_path: Path, settings: dict[str, Any]) -> str:
    """Hash of everything a training run depends on, so a stale work dir is never resumed.

    The model enters through its JSON files (config, pruning.json: which layers
    were removed, source.json) and its weight files' names and sizes; hashing
    many GB of weights on every job start would cost minutes at 8B.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(sha256_file(dataset_path).encode())
    for path in sorted(p for p in model_dir.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        if path.suffix == ".safetensors":
            digest.update(str(path.stat().st_size).encode())
        else:
            digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def _complete_checkpoints(work_dir: Path) -> list[tuple[int, Path]]:
    """Checkpoints whose trainer_state.json (written last by the Trainer) parses, oldest first."""
    found = []
    for path in work_dir.glob("checkpoint-*"):
        try:
            step = int(path.name.split("-", 1)[1])
            read_json(path / "trainer_state.json")
        except (ValueError, OSError):
            continue
        found.append((step, path))
    return sorted(found)


def prepare_work_dir(work_dir: Path, fingerprint: str) -> Path | None:
    """Make `work_dir` hold only checkpoints of this very run; return the one to resume from.

    A work dir with another fingerprint (other settings, data or model) is wiped;
    a checkpoint cut short by a kill (no readable trainer_state.json) is removed.
    """
    marker = work_dir / FINGERPRINT_FILE
    if work_dir.exists():
        old = read_json(marker).get("fingerprint") if marker.is_file() else None
        if old != fingerprint:
            print(f"{work_dir}: left by other settings or inputs; starting over", flush=True)
            shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"fingerprint": fingerprint})
    complete = {path for _, path in _complete_checkpoints(work_dir)}
    for path in work_dir.glob("checkpoint-*"):
        if path not in complete:
            shutil.rmtree(path)
    checkpoints = _complete_checkpoints(work_dir)
    return checkpoints[-1][1] if checkpoints else None


def write_loss_curve(log_history: list[dict[str, Any]], out_dir: Path, title: str) -> list[dict[str, Any]]:
    """Write loss_curve.csv and loss_curve.png from the Trainer's log history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        {"step": e["step"], "loss": e["loss"], "learning_rate": e.get("learning_rate"), "grad_norm": e.get("grad_norm")}
        for e in log_history
        if "loss" in e
    ]
    with open(out_dir / "loss_curve.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "loss", "learning_rate", "grad_norm"])
        writer.writeheader()
        writer.writerows(rows)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker="." if len(rows) < 50 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "loss_curve.png", dpi=120)
    plt.close(fig)
    return [{"step": r["step"], "loss": r["loss"]} for r in rows]


def _truncate_tokenized(dataset, max_length: int):
    """Padding-free batches need max_length=None in TRL, so truncate the tokenized rows here instead."""

    def truncate(example):
        return {"input_ids": example["input_ids"][:max_length], "labels": example["labels"][:max_length]}

    dataset = dataset.map(truncate)
    return dataset.filter(lambda example: any(label != -100 for label in example["labels"]))


def _load_model(model_dir: Path, trainer: str, dtype: str, precision: str):
    """The base model: as stored for lora/full, 4-bit NF4 (double quantised) for qlora."""
    if trainer != "qlora":
        return load_checkpoint(model_dir, dtype=dtype)
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quantization, dtype=compute, device_map={"": 0}
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, AutoTokenizer.from_pretrained(model_dir)


def _merged_model(trainer_obj, trainer: str, model_dir: Path, work_dir: Path, precision: str):
    """A plain model with the training folded in, whatever the trainer."""
    if trainer == "full":
        return trainer_obj.model
    if trainer == "lora":
        return trainer_obj.model.merge_and_unload()
    # qlora: merging into 4-bit weights would quantise the update away; fold the
    # adapter into the unquantised base at the compute dtype instead.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = work_dir / "adapter"
    trainer_obj.model.save_pretrained(adapter_dir)
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=compute)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


def recover_checkpoint(
    model_dir: str | Path,
    dataset_path: str | Path,
    out_dir: str | Path,
    recovery: str,
    settings: RecoverySettings | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Finetune the checkpoint in `model_dir` on `dataset_path` and save the merged model to `out_dir`.

    `completion_only_loss` applies to prompt–completion data (sgr, data); `heal`
    always trains on every token. `padding_free` flattens each batch into one
    row with per-sequence position ids (transformers then masks attention per
    sequence, also with SDPA on CPU): the same loss as padded batches, but on CPU
    no faster (bench/sft_padding_free.py), so it is off by default.
    `gradient_checkpointing` (TRL's default is on) trades compute for memory:
    worth it for 7-8B models on a GPU, a ~30% slowdown for nothing on a small CPU run.
    `settings` (layerprune.settings.RecoverySettings) with `overrides` applied, e.g.
    `recover_checkpoint(m, d, out, "sgr", lora_r=4, ...)`.
    """
    options = RecoverySettings.build(settings, **overrides)
    check_trainer(options.trainer)
    mixed = resolve_precision(options.precision)
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model_dir, dataset_path, out_dir = Path(model_dir), Path(dataset_path), Path(out_dir)
    settings = {
        "trainer": options.trainer,
        "lora_r": options.lora_r,
        "lora_alpha": options.lora_alpha,
        "lora_dropout": options.lora_dropout,
        "lora_target_modules": options.lora_target_modules,
        "learning_rate": options.learning_rate,
        "num_epochs": options.num_epochs,
        "batch_size": options.batch_size,
        "grad_accum": options.grad_accum,
        "max_length": options.max_length,
        "warmup_steps": options.warmup_steps,
        "lr_scheduler": options.lr_scheduler,
        "weight_decay": options.weight_decay,
        "adam_beta1": options.adam_beta1,
        "adam_beta2": options.adam_beta2,
        "completion_only_loss": options.completion_only_loss and recovery != "heal",
        "padding_free": options.padding_free,
        "gradient_checkpointing": options.gradient_checkpointing,
        "precision": mixed,
        "seed": options.seed,
        "max_steps": options.max_steps,
    }
    seed_everything(options.seed)
    records = _dataset_records(dataset_path, recovery)
    work_dir = out_dir.parent / f"{out_dir.name}.work"
    fingerprint = _fingerprint(model_dir, dataset_path, {**settings, "recovery": recovery, "dtype": options.dtype})
    resume_from = prepare_work_dir(work_dir, fingerprint)
    resumed_step = int(resume_from.name.split("-", 1)[1]) if resume_from else 0
    if resume_from:
        print(f"resuming from {resume_from} (step {resumed_step})", flush=True)

    model, tokenizer = _load_model(model_dir, options.trainer, options.dtype, mixed)
    peft_config = None
    if options.trainer != "full":
        peft_config = LoraConfig(
            r=options.lora_r,
            lora_alpha=options.lora_alpha,
            lora_dropout=options.lora_dropout,
            # PEFT's "all-linear" shorthand is a string, never a list entry
            target_modules="all-linear"
            if options.lora_target_modules == ["all-linear"]
            else options.lora_target_modules,
            task_type="CAUSAL_LM",
        )
    on_gpu = next(model.parameters()).is_cuda
    args = SFTConfig(
        output_dir=str(work_dir),
        learning_rate=options.learning_rate,
        num_train_epochs=options.num_epochs,
        max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        # TRL refuses max_length with padding_free (it cannot truncate a flattened
        # batch); _truncate_tokenized applies it to the tokenized rows instead.
        max_length=None if options.padding_free else options.max_length,
        padding_free=options.padding_free,
        gradient_checkpointing=options.gradient_checkpointing,
        warmup_steps=options.warmup_steps,
        lr_scheduler_type=options.lr_scheduler,
        weight_decay=options.weight_decay,
        adam_beta1=options.adam_beta1,
        adam_beta2=options.adam_beta2,
        optim="adamw_torch",
        completion_only_loss=settings["completion_only_loss"],
        dataset_text_field="text",
        seed=options.seed,
        data_seed=options.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=options.save_total_limit,
        report_to=[name.strip() for name in options.report_to.split(",") if name.strip() and name.strip() != "none"]
        or "none",
        use_cpu=not on_gpu,
        bf16=mixed == "bf16",
        fp16=mixed == "fp16",
        dataloader_num_workers=0,
    )
    sft = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if options.padding_free:
        sft.train_dataset = _truncate_tokenized(sft.train_dataset, options.max_length)
    train_output = sft.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    record = {
        "recovery": recovery,
        "trainer": options.trainer,
        "dataset": str(dataset_path),
        "num_examples": len(records),
        "train_loss": train_output.training_loss,
        "global_steps": train_output.global_step,
        "resumed_from_step": resumed_step,
        "loss_curve": None,
        "settings": settings,
    }
    if not sft.is_world_process_zero():
        # Under accelerate / torchrun (resources.recover.gpus > 1) every rank trains the
        # same model; only the first merges and writes the checkpoint.
        return record
    merged = _merged_model(sft, options.trainer, model_dir, work_dir, mixed)
    pruning_file = model_dir / "pruning.json"
    with atomic_path(out_dir, directory=True) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if pruning_file.is_file():
            write_json(tmp / "pruning.json", read_json(pruning_file))
        record["loss_curve"] = write_loss_curve(
            sft.state.log_history, tmp, f"{recovery} ({options.trainer}) on {model_dir.name}"
        )
        write_json(tmp / "recovery.json", record)
        (tmp / "training_args.json").write_text(json.dumps(args.to_dict(), indent=2, default=str))
        if (work_dir / "runs").is_dir():  # tensorboard event files
            shutil.copytree(work_dir / "runs", tmp / "runs")
    shutil.rmtree(work_dir, ignore_errors=True)
    return record
