"""Recovery: finetuning of a pruned checkpoint with TRL's SFTTrainer.

Variants (the `recovery` wildcard): `sgr` (the dense model's self-generated
responses) and `data` (the prompt set's own reference answers, the paper's
control) train with completion-only loss on a conversational prompt–completion
JSONL; `heal` trains with plain language-modelling loss on a `{"text": ...}`
JSONL, the post-pruning "healing" of Gromov et al. and Shortened LLaMA;
`kd` and `kd_onpolicy` distil the dense checkpoint (`teacher_dir`) into the pruned
one on the SGR pairs with TRL's GKDTrainer (see layerprune.recovery.distill).

Trainers (`recovery.trainer`): `lora` (PEFT LoRA on all linear layers), `qlora`
(the same on a 4-bit NF4 base, bitsandbytes; CPU or GPU) and `full` (every
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
import dataclasses
import gc
import hashlib
import importlib
import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layerprune.config.settings import PRECISIONS, RECOVERY_FIELDS, RecoverySettings
from layerprune.io import (
    atomic_path,
    check_checkpoint_files,
    content_fingerprint,
    read_json,
    read_jsonl_checked,
    seed_everything,
    sha256_file,
    write_json,
)
from layerprune.models.checkpoints import load_checkpoint
from layerprune.registry import DISTILLATIONS, RECOVERIES, TRAINED, TRAINERS, check_name

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
        # native bf16 only (compute capability >= 8.0): on V100/T4 it is emulated and slower than fp16
        bf16_supported = (
            (cuda and torch.cuda.is_bf16_supported(including_emulation=False))
            if bf16_supported is None
            else bf16_supported
        )
    if precision == "auto":
        return "bf16" if cuda and bf16_supported else "fp32"
    if precision == "fp16" and not cuda:
        raise ValueError("recovery.precision: fp16 mixed precision needs a CUDA GPU; use auto, bf16 or fp32 on CPU")
    if precision == "bf16" and cuda and not bf16_supported:
        raise ValueError("recovery.precision: this GPU does not support bf16; use auto, fp16 or fp32")
    return precision


def check_trainer(trainer: str) -> None:
    """Fail at once, before anything heavy is loaded, if `trainer` cannot run here.

    `qlora` runs on CPU and GPU alike: bitsandbytes (>= 0.48) has CPU kernels for
    4-bit NF4 with double quantisation, and PEFT trains LoRA on top of them.
    """
    if trainer not in TRAINERS:
        raise ValueError(f"recovery.trainer: unknown value '{trainer}' (use one of {', '.join(TRAINERS)})")
    if trainer == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(
            "recovery.trainer: qlora needs the bitsandbytes package, which is not installed "
            "(pip install -c constraints.txt bitsandbytes), or use recovery.trainer: lora."
        )


def _dataset_records(dataset_path: str | Path, recovery: str) -> list[dict[str, Any]]:
    """A recovery on plain text (`heal`) reads `{"text"}` records; the others prompt–completion records.

    The count is checked against the one selfgen / filter-prompts recorded beside the file.
    """
    rows = read_jsonl_checked(dataset_path)
    if RECOVERIES[recovery].data == "text":
        if rows and "text" not in rows[0]:
            raise ValueError(f"{dataset_path}: recovery '{recovery}' needs {{'text': ...}} records (see prepare-heal)")
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


def _fingerprint(model_dir: Path, dataset_path: Path, settings: dict[str, Any], teacher_dir: Path | None = None) -> str:
    """Hash of everything a training run depends on, so a stale work dir is never resumed.

    The model enters through its content (`content_fingerprint`: every file's sha256,
    the weights' remembered after the first time), never its path: a model replaced at
    the same path starts the training over.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(sha256_file(dataset_path).encode())
    digest.update(json.dumps(content_fingerprint(model_dir), sort_keys=True).encode())
    if teacher_dir is not None:
        digest.update(json.dumps(content_fingerprint(teacher_dir), sort_keys=True).encode())
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


def prepare_work_dir_once(work_dir: Path, fingerprint: str) -> Path | None:
    """`prepare_work_dir` by one process of a multi-process run; every process gets the checkpoint to resume from.

    Under accelerate / torchrun each process runs this same job: if all of them wiped
    stale checkpoints and wrote the marker at once, one could delete what another just
    wrote. The first process prepares the work dir while the others wait at a barrier.
    """
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return prepare_work_dir(work_dir, fingerprint)
    import torch
    from accelerate import PartialState

    # cpu=True picks the gloo backend on a machine without GPUs (the Trainer asks for the same).
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.is_main_process:
        prepare_work_dir(work_dir, fingerprint)
    state.wait_for_everyone()
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


def _compute_dtype(precision: str):
    """The dtype 4-bit layers dequantise to and compute in: the mixed-precision mode's, fp32 without one.

    On a GPU `auto` precision is bf16 (the paper's QLoRA compute dtype). On CPU `auto` is
    fp32 for every trainer: exact to the 4-bit weights, no autocast rounding, and the same
    arithmetic as lora/full there. bf16 buys little on CPU: 0.88x the CPU time per step of
    fp32 on SmolLM2-135M on an AVX512-BF16 EPYC (bench/qlora_vs_lora.py); `precision: bf16`
    selects it on CPU too.
    """
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def training_device() -> str:
    """Where this process trains: its own GPU under a launcher (LOCAL_RANK), else GPU 0, else the CPU."""
    import os

    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def load_quantised(model_dir: Path, precision: str):
    """`model_dir` with its linear layers as 4-bit NF4 (double quantised), ready for k-bit training."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = _compute_dtype(precision)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quantization, dtype=compute, device_map={"": training_device()}
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _load_model(model_dir: Path, trainer: str, dtype: str, precision: str):
    """The base model: as stored for lora/full, 4-bit NF4 (double quantised) for qlora."""
    if trainer != "qlora":
        return load_checkpoint(model_dir, dtype=dtype)
    from transformers import AutoTokenizer

    check_checkpoint_files(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return load_quantised(model_dir, precision), tokenizer


def _unpacked_4bit_kernels(model) -> None:
    """Keep 4-bit layers on the kernel they trained with when evaluated.

    In eval mode bitsandbytes repacks a 4-bit weight for its CPU inference kernel,
    rounding the block scales to bf16 (and failing for layers narrower than one
    64-value block): the logits would then no longer be those of the trained model.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def probe_inputs(train_dataset, count: int = 4, max_tokens: int = 64) -> list[list[int]]:
    """Token ids of the first `count` training rows (cut to `max_tokens`): real inputs for the merge check."""
    rows = train_dataset.select(range(min(count, len(train_dataset))))
    return [list(ids[:max_tokens]) for ids in rows["input_ids"]]


def _logits(model, probes: list[list[int]]):
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids], device=device)).logits.float().cpu() for ids in probes]


def _max_gap(left, right) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(left, right, strict=True))


def _stored_tensors(model_dir: Path):
    """name -> a loader of that tensor as stored in `model_dir`'s safetensors (one tensor in memory at a time)."""
    from safetensors import safe_open

    loaders = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            names = list(handle.keys())
        for name in names:
            loaders[name] = lambda path=path, name=name: safe_open(path, framework="pt").get_tensor(name)
    return loaders


@dataclasses.dataclass
class TrainedQLoRA:
    """What the qlora merge and its checks need of the trained 4-bit model, held on the host, so that
    the 4-bit model, its optimizer state and the trainer can be freed before the full-precision base
    loads: the saved adapter, the trained model's logits on the probes with the adapter on and off,
    and each LoRA layer's (scaling, A, B) (r x (in + out) values a layer, not a full weight)."""

    adapter_dir: Path
    trained_logits: list
    quantised_base_logits: list
    lora: dict[str, tuple[float, Any, Any]]


def snapshot_qlora(quantised_peft, adapter_dir: Path, probes: list[list[int]]) -> TrainedQLoRA:
    """Save the adapter of the trained 4-bit PEFT model and keep what the merge checks need (`TrainedQLoRA`)."""
    quantised_peft.save_pretrained(adapter_dir)
    _unpacked_4bit_kernels(quantised_peft)
    quantised_peft.eval()
    trained = _logits(quantised_peft, probes)
    with quantised_peft.disable_adapter():
        quantised_base = _logits(quantised_peft, probes)
    lora = {}
    for name, module in quantised_peft.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            lora[name.removeprefix("base_model.model.") + ".weight"] = (
                float(module.scaling["default"]),
                module.lora_A["default"].weight.detach().float().cpu().clone(),
                module.lora_B["default"].weight.detach().float().cpu().clone(),
            )
    return TrainedQLoRA(adapter_dir, trained, quantised_base, lora)


def release_memory() -> None:
    """Collect what was just dropped (a Trainer holds reference cycles), give glibc's freed heap back to
    the OS and CUDA's cached blocks back to the driver.

    Without malloc_trim the freed training memory stays in glibc's arenas while the base's tensors are
    allocated elsewhere: a QLoRA recover of a 109M-parameter Llama on CPU peaked at the same RSS with
    or without the frees, and 175 MB lower with them and the trim (bench/qlora_merge_memory.py).
    """
    import ctypes
    import ctypes.util

    import torch

    gc.collect()
    libc = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(libc).malloc_trim(0)  # glibc only
    except (OSError, AttributeError, TypeError):
        pass
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_adapter_folded(model_dir: Path, merged, trained: TrainedQLoRA) -> int:
    """Check that every LoRA layer of `merged` is the stored full-precision weight plus the adapter's update.

    W_merged = W_stored + scaling * B @ A, to the rounding of the merged dtype. This is what
    "merged into the unquantised base" means; merging into the dequantised 4-bit weight
    instead would be off by the quantisation error (about 10% of each weight). Returns the
    number of layers checked; raises ValueError naming the first that differs.
    """
    import torch

    stored = _stored_tensors(model_dir)
    merged_weights = dict(merged.named_parameters())
    checked = 0
    for key, (scaling, lora_a, lora_b) in trained.lora.items():
        if key not in stored or key not in merged_weights:
            raise ValueError(f"qlora merge check: the adapter's layer {key} is not in {model_dir} or the merged model")
        weight = merged_weights[key].detach().float().cpu()
        expected = stored[key]().float() + scaling * (lora_b @ lora_a)
        eps = torch.finfo(merged_weights[key].dtype).eps
        worst = float(((weight - expected).abs() - 4 * eps * expected.abs()).max())
        if worst > 4 * eps * float(expected.abs().max()):
            raise ValueError(
                f"qlora merge check: {key} of the merged model is not {model_dir}'s weight plus the adapter's "
                f"update (off by {worst:.3g} beyond {merged_weights[key].dtype} rounding)"
            )
        checked += 1
    if not checked:
        raise ValueError("qlora merge check: the trained model has no LoRA layer")
    return checked


# The merged model and the trained one (4-bit + adapter) differ only by W - Q(W): the
# adapter is the same on both. The fp and the 4-bit base differ by exactly that too, so the
# first gap is of the size of the second; the slack allows for the adapter changing the
# activations the quantisation error passes through (measured ratios 0.94-1.26 on tiny random
# Llamas, whose 4-bit error is several logits: the worst case). Wrong configs, a merge into
# the dequantised weights or a base of another dtype show up as a gap beyond it.
MERGE_SLACK = 2.0


def check_qlora_merge(fp_base_logits: list, merged, trained_qlora: TrainedQLoRA, probes: list[list[int]]) -> dict:
    """Check the merged full-precision model's logits against the quantised model it was trained as.

    `fp_base_logits` are the unquantised base's logits on `probes` (taken before the merge, which
    changes the base in place); `trained_qlora` holds the 4-bit model's, with and without the
    adapter (`snapshot_qlora`). Returns the gaps (max absolute logit differences); raises
    ValueError when the merged model is further from the trained model than MERGE_SLACK times
    the quantisation error (the fp base's distance from the 4-bit base).
    """
    trained, quantised_base = trained_qlora.trained_logits, trained_qlora.quantised_base_logits
    merged_logits = _logits(merged, probes)
    report = {
        "probe_tokens": sum(len(ids) for ids in probes),
        "quantisation_error": _max_gap(fp_base_logits, quantised_base),
        "merge_gap": _max_gap(merged_logits, trained),
        "adapter_effect": _max_gap(trained, quantised_base),
    }
    report["merge_gap_ratio"] = report["merge_gap"] / max(report["quantisation_error"], 1e-12)
    if report["merge_gap"] > MERGE_SLACK * report["quantisation_error"] + 1e-4:
        raise ValueError(
            f"qlora merge check: the merged model's logits are {report['merge_gap']:.4g} from the trained "
            f"(4-bit + adapter) model's, more than {MERGE_SLACK} x the 4-bit quantisation error "
            f"{report['quantisation_error']:.4g}: {report}"
        )
    return report


def merge_qlora(model_dir: Path, dtype: str, trained: TrainedQLoRA, probes: list[list[int]]):
    """The merged model and its checks, for qlora.

    Merging into 4-bit weights would quantise the update away; the adapter is folded into the
    unquantised base (the pruned checkpoint reloaded at the dtype lora and full save) instead,
    and that is checked against the model as trained. The base loads on the training device: the
    caller frees the 4-bit model, its optimizer state and the trainer first (at 8B: 4.5 GB of
    4-bit weights and 2.4 GB of LoRA r=64 weights, gradients and AdamW moments beside 16 GB of
    bf16). Merging on the CPU instead would need no GPU memory, but would put the bf16 base in
    host RAM and compare CPU logits with the GPU's trained ones, whose rounding differs.
    """
    from peft import PeftModel

    base, _ = load_checkpoint(model_dir, dtype=dtype, device=training_device())
    fp_logits = _logits(base, probes)
    merged = PeftModel.from_pretrained(base, trained.adapter_dir).merge_and_unload()
    report = check_qlora_merge(fp_logits, merged, trained, probes)
    report["layers_checked"] = check_adapter_folded(model_dir, merged, trained)
    return merged, report


# A recovery's settings as recovery.json records them and the work dir's fingerprint hashes them: all of
# its settings but those that only say how the run is kept and logged (dtype is hashed beside them).
UNRECORDED = frozenset({"save_steps", "save_total_limit", "report_to", "dtype"})


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one kind of recovery trains, as TRL declares a trainer by its config class.

    A recovery names its recipe in layerprune.registry.RECOVERIES (`recipe`). `settings`: its
    settings class; `recorded`: the settings it changes or adds to the recovery ones (recovery.json
    and the fingerprint); `config`: its TRL config class and that class's own arguments; `trainer`:
    the trainer of a `Run`, given the model, tokenizer, config and LoRA config; `probes`: token ids of
    real training rows for the qlora merge check, from the built trainer.
    """

    settings: type[RecoverySettings]
    recorded: Callable[[Any, str], dict[str, Any]]
    config: Callable[[Any, str], tuple[type, dict[str, Any]]]
    trainer: Callable[..., Any]
    probes: Callable[[Any, Run], list[list[int]]]


@dataclasses.dataclass
class Run:
    """One training run: its recovery, settings, inputs and where it keeps its checkpoints."""

    recovery: str
    options: RecoverySettings
    settings: dict[str, Any]  # as recorded: the resolved precision, the recipe's own values
    model_dir: Path
    dataset_path: Path
    out_dir: Path
    teacher_dir: Path | None
    records: list[dict[str, Any]]
    eval_records: list[dict[str, Any]]

    @property
    def work_dir(self) -> Path:
        return self.out_dir.parent / f"{self.out_dir.name}.work"


def _sft_config(options: RecoverySettings, recovery: str) -> tuple[type, dict[str, Any]]:
    from trl import SFTConfig

    return SFTConfig, {}


def _sft_trainer(run: Run, model, tokenizer, args, peft_config):
    from datasets import Dataset
    from trl import SFTTrainer

    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(run.records),
        eval_dataset=Dataset.from_list(run.eval_records) if run.eval_records else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


# data, sgr, heal: TRL's SFTTrainer (completion-only loss on prompt–completion records, LM loss on text)
SFT_RECIPE = Recipe(
    settings=RecoverySettings,
    recorded=lambda options, recovery: {},
    config=_sft_config,
    trainer=_sft_trainer,
    probes=lambda trainer, run: probe_inputs(trainer.train_dataset),
)


def load_recipe(recovery: str) -> Recipe:
    """The recipe a trained recovery declares (`module:attribute`), imported now that it trains."""
    module, _, name = RECOVERIES[check_name("recovery", recovery, TRAINED)].recipe.partition(":")
    return getattr(importlib.import_module(module), name)


def _recorded_settings(recipe: Recipe, options: RecoverySettings, recovery: str, precision: str) -> dict[str, Any]:
    """The settings recovery.json records: the recovery ones, then what the recipe changes or adds."""
    values = {k: v for k, v in options.to_dict().items() if k in RECOVERY_FIELDS and k not in UNRECORDED}
    values["precision"] = precision
    # heal (language modelling) always trains on every token
    values["completion_only_loss"] = options.completion_only_loss and RECOVERIES[recovery].loss != "lm"
    return {**values, **recipe.recorded(options, recovery)}


def _lora_config(options: RecoverySettings):
    """PEFT's LoRA config, or None for `full` (every parameter trains)."""
    if options.trainer == "full":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        # PEFT's "all-linear" shorthand is a string, never a list entry
        target_modules="all-linear" if options.lora_target_modules == ["all-linear"] else options.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def _training_arguments(run: Run, recipe: Recipe, on_gpu: bool):
    """The recipe's TRL config: the recovery settings every recipe shares, then the recipe's own."""
    options, settings = run.options, run.settings
    config_class, own = recipe.config(options, run.recovery)
    return config_class(
        output_dir=str(run.work_dir),
        learning_rate=options.learning_rate,
        num_train_epochs=options.num_epochs,
        max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        # TRL refuses max_length with padding_free (it cannot truncate a flattened
        # batch); _truncate_tokenized applies it to the tokenized rows instead.
        max_length=None if settings["padding_free"] else options.max_length,
        padding_free=settings["padding_free"],
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
        bf16=settings["precision"] == "bf16",
        fp16=settings["precision"] == "fp16",
        dataloader_num_workers=0,
        eval_strategy="epoch" if run.eval_records else "no",
        per_device_eval_batch_size=options.batch_size,
        **own,
    )


def _prepare_run(
    recovery: str,
    recipe: Recipe,
    options: RecoverySettings,
    paths: tuple[Path, Path, Path],
    teacher_dir: Path | None,
) -> tuple[Run, Path | None]:
    """The run's settings and data split, and the training checkpoint to resume from (None: start)."""
    from layerprune.data.sources import holdout_split

    model_dir, dataset_path, out_dir = paths
    settings = _recorded_settings(recipe, options, recovery, resolve_precision(options.precision))
    # the training stack is imported before the seeds are set, so that nothing it draws at import
    # time shifts the seeded streams (the LoRA initialisation, the data order)
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import trl  # noqa: F401

    seed_everything(options.seed)
    # the paper holds out 10% of the SFT data and logs its loss (recovery.eval_fraction)
    records, eval_records = holdout_split(_dataset_records(dataset_path, recovery), options.eval_fraction, options.seed)
    run = Run(recovery, options, settings, model_dir, dataset_path, out_dir, teacher_dir, records, eval_records)
    fingerprint = _fingerprint(
        model_dir, dataset_path, {**settings, "recovery": recovery, "dtype": options.dtype}, teacher_dir
    )
    return run, prepare_work_dir_once(run.work_dir, fingerprint)


def _build_trainer(run: Run, recipe: Recipe):
    """The model, loaded as the trainer needs it, inside the recipe's trainer; its tokenizer; the merge-check probes."""
    options = run.options
    model, tokenizer = _load_model(run.model_dir, options.trainer, options.dtype, run.settings["precision"])
    args = _training_arguments(run, recipe, on_gpu=next(model.parameters()).is_cuda)
    trainer = recipe.trainer(run, model, tokenizer, args, _lora_config(options))
    if run.settings["padding_free"]:
        trainer.train_dataset = _truncate_tokenized(trainer.train_dataset, options.max_length)
    return trainer, tokenizer, recipe.probes(trainer, run)


def _record(run: Run, trainer, train_output, resumed_step: int) -> dict[str, Any]:
    """recovery.json's content (its loss curve is filled in when the checkpoint is written)."""
    record = {
        "recovery": run.recovery,
        "trainer": run.options.trainer,
        "dataset": str(run.dataset_path),
        "num_examples": len(run.records),
        "num_eval_examples": len(run.eval_records),
        "train_loss": train_output.training_loss,
        "global_steps": train_output.global_step,
        "resumed_from_step": resumed_step,
        "processes": trainer.args.world_size,  # DDP: the global batch is batch_size x grad_accum x processes
        "loss_curve": None,
        "settings": run.settings,
        # the held-out split's loss, logged after each epoch (empty without recovery.eval_fraction)
        "eval_loss_curve": [
            {"step": entry["step"], "eval_loss": entry["eval_loss"]}
            for entry in trainer.state.log_history
            if "eval_loss" in entry
        ],
    }
    if run.teacher_dir is not None:
        record["teacher"] = str(run.teacher_dir)
    return record


def _save(run: Run, merged, tokenizer, args, log_history: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """Write the merged checkpoint with its record, loss curve and training arguments (atomically), then
    drop the work dir."""
    pruning_file = run.model_dir / "pruning.json"
    with atomic_path(run.out_dir, directory=True) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if pruning_file.is_file():
            write_json(tmp / "pruning.json", read_json(pruning_file))
        title = f"{run.recovery} ({run.options.trainer}) on {run.model_dir.name}"
        record["loss_curve"] = write_loss_curve(log_history, tmp, title)
        write_json(tmp / "recovery.json", record)
        (tmp / "training_args.json").write_text(json.dumps(args.to_dict(), indent=2, default=str))
        if (run.work_dir / "runs").is_dir():  # tensorboard event files
            shutil.copytree(run.work_dir / "runs", tmp / "runs")
    shutil.rmtree(run.work_dir, ignore_errors=True)


def _check_teacher(recovery: str, teacher_dir: str | Path | None) -> Path | None:
    """The teacher a recovery declares it learns from is given, and no other recovery gets one."""
    needs = RECOVERIES[check_name("recovery", recovery, TRAINED)].teacher
    if needs != (teacher_dir is not None):
        raise ValueError(
            f"recover: recovery '{recovery}' "
            + (
                "needs --teacher (the dense checkpoint)"
                if needs
                else f"takes no --teacher (only {', '.join(DISTILLATIONS)} do)"
            )
        )
    return Path(teacher_dir) if needs else None


def recover_checkpoint(
    model_dir: str | Path,
    dataset_path: str | Path,
    out_dir: str | Path,
    recovery: str,
    settings: RecoverySettings | None = None,
    teacher_dir: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Finetune the checkpoint in `model_dir` on `dataset_path` and save the merged model to `out_dir`.

    `recovery` runs the recipe it declares (layerprune.registry.RECOVERIES): SFT for data, sgr
    (completion-only loss, `completion_only_loss`) and heal (every token); distillation for kd,
    kd_onpolicy, which need `teacher_dir` (the dense checkpoint) and read the distillation settings
    too (layerprune.config.settings.DistillSettings). `padding_free` flattens each batch into one row with
    per-sequence position ids (transformers then masks attention per sequence, also with SDPA on
    CPU): the same loss as padded batches, but on CPU no faster (bench/sft_padding_free.py), so it is
    off by default. `gradient_checkpointing` (TRL's default is on) trades compute for memory: worth it
    for 7-8B models on a GPU, a ~30% slowdown for nothing on a small CPU run. `settings` (the recipe's
    settings class) with `overrides` applied, e.g. `recover_checkpoint(m, d, out, "sgr", lora_r=4, ...)`.
    """
    teacher = _check_teacher(recovery, teacher_dir)
    recipe = load_recipe(recovery)
    options = recipe.settings.build(settings, **overrides)
    check_trainer(options.trainer)
    paths = (Path(model_dir), Path(dataset_path), Path(out_dir))
    run, resume_from = _prepare_run(recovery, recipe, options, paths, teacher)
    resumed_step = int(resume_from.name.split("-", 1)[1]) if resume_from else 0
    if resume_from:
        print(f"resuming from {resume_from} (step {resumed_step})", flush=True)
    trainer, tokenizer, probes = _build_trainer(run, recipe)
    train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    record = _record(run, trainer, train_output, resumed_step)
    if not trainer.is_world_process_zero():
        # Under accelerate / torchrun (resources.recover.gpus > 1) every rank trains the
        # same model; only the first merges and writes the checkpoint.
        return record
    log_history, args = trainer.state.log_history, trainer.args
    if options.trainer == "qlora":
        trained = snapshot_qlora(trainer.model, run.work_dir / "adapter", probes)
        # Nothing of training may outlive this line: the full-precision base loads next, on the same device.
        trainer = None
        release_memory()
        merged, record["merge_check"] = merge_qlora(run.model_dir, options.dtype, trained, probes)
    else:
        # full: the trained model itself; lora: the adapter folded in place
        merged = trainer.model.merge_and_unload() if options.trainer == "lora" else trainer.model
    _save(run, merged, tokenizer, args, log_history, record)
    return record
