"""SFT tokens/s with padding-free batches vs padded batches (TRL SFTTrainer, LoRA, CPU).

Both runs train the same LoRA recovery (as `layerprune recover` does: completion-only
loss, all-linear LoRA) on the same variable-length conversational data, with the same
seed, so they see the same examples in the same order and hence the same number of
real (non-padding) tokens. The only difference is TRL's `padding_free`:

* padded: each batch is right-padded to its longest sequence, with an attention mask;
* padding-free: each batch is one row, the sequences concatenated, with position ids
  restarting at 0 per sequence (transformers turns those into a block-diagonal causal
  mask for SDPA/eager, so no flash-attention is needed on CPU).

The data: BIG-bench `gem/xsum` articles as "Summarise ..." user turns cut to a seeded
log-uniform number of words (8 to --max-words), answered by the reference summary: a
heavy-tailed length mix like real chat data. The first --warmup steps of each run are
not timed; --repeats alternates the order and keeps the fastest. Prints tokens/s (by
wall-clock and by process CPU time, which contention on a shared machine disturbs
less) for both, the ratio, and the loss of the first step (equal up to
float round-off on the first step, before any update: the two batchings
compute the same loss).

    PYTHONPATH=src python bench/sft_padding_free.py --model results/shared/models/*/smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch


def conversations(xsum: Path, count: int, max_words: int, seed: int) -> list[dict]:
    examples = json.loads(xsum.read_text())["examples"]
    rng = random.Random(seed)
    records = []
    for example in rng.sample(examples, count):
        words = example["input"].split()
        keep = int(math.exp(rng.uniform(math.log(8), math.log(max_words))))
        target = example["target"][0] if isinstance(example["target"], list) else example["target"]
        records.append(
            {
                "prompt": [{"role": "user", "content": "Summarise this article:\n" + " ".join(words[:keep])}],
                "completion": [{"role": "assistant", "content": target}],
            }
        )
    return records


def run(model_dir: str, records: list[dict], padding_free: bool, args: argparse.Namespace) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from layerprune.recovery.recover import _truncate_tokenized

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stats = {"tokens": 0, "rows_x_width": 0, "time": 0.0, "cpu": 0.0, "losses": []}

    class Timer(TrainerCallback):
        def on_step_begin(self, _args, state, control, **kwargs):
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step > args.warmup:
                stats["time"] += time.perf_counter() - self.start
                stats["cpu"] += time.process_time() - self.cpu

    class Counting(SFTTrainer):
        def compute_loss(self, model, inputs, *a, **k):
            loss = super().compute_loss(model, inputs, *a, **k)
            stats["losses"].append(loss.item())
            if self.state.global_step >= args.warmup:  # global_step counts finished steps
                real = inputs["input_ids"].numel() if padding_free else int(inputs["attention_mask"].sum())
                stats["tokens"] += real
                stats["rows_x_width"] += inputs["input_ids"].numel()
            return loss

    with tempfile.TemporaryDirectory() as work:
        config = SFTConfig(
            output_dir=work,
            max_steps=args.warmup + args.steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=2e-4,
            lr_scheduler_type="constant",
            padding_free=padding_free,
            max_length=None if padding_free else args.max_length,
            completion_only_loss=True,
            gradient_checkpointing=False,  # as recovery.gradient_checkpointing in config.yaml
            seed=args.seed,
            data_seed=args.seed,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = Counting(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(records),
            processing_class=tokenizer,
            peft_config=LoraConfig(
                r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
            ),
            callbacks=[Timer()],
        )
        if padding_free:
            trainer.train_dataset = _truncate_tokenized(trainer.train_dataset, args.max_length)
        trainer.train()
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # the default study's materialized model (its folder is a fingerprint of the model's source)
    default_model = next((str(p) for p in sorted(Path("results/shared/models").glob("*/smollm2-135m"))), None)
    parser.add_argument("--model", default=default_model, required=default_model is None)
    parser.add_argument("--xsum", default="resources/bigbench/gem/xsum/task.json")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-words", type=int, default=300)
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode, alternating order; fastest kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = conversations(Path(args.xsum), args.batch_size * (args.steps + args.warmup), args.max_words, args.seed)
    print(
        f"model {args.model}, {len(records)} conversations, batch {args.batch_size}, max_length {args.max_length}, "
        f"{args.steps} timed steps, {args.threads} thread(s), torch {torch.__version__}",
        flush=True,
    )
    results = {}
    for repeat in range(args.repeats):
        order = (False, True) if repeat % 2 == 0 else (True, False)
        for padding_free in order:
            stats = run(args.model, records, padding_free, args)
            name = "padding-free" if padding_free else "padded"
            print(
                f"{name:>12} (run {repeat + 1}): {stats['tokens']} real tokens in {stats['rows_x_width']} "
                f"computed positions, {stats['time']:.1f} s wall, {stats['cpu']:.1f} s cpu, "
                f"{stats['tokens'] / stats['time']:.1f} tokens/s wall, "
                f"{stats['tokens'] / stats['cpu']:.1f} tokens/s cpu",
                flush=True,
            )
            best = results.get(name)
            if best is None or stats["time"] < best["time"]:
                results[name] = {**stats, "cpu": min(stats["cpu"], best["cpu"]) if best else stats["cpu"]}
            else:
                best["cpu"] = min(best["cpu"], stats["cpu"])
    padded, free = results["padded"], results["padding-free"]
    assert padded["tokens"] == free["tokens"], "both runs must train on the same real tokens"
    ratio = padded["time"] / free["time"]
    cpu_ratio = padded["cpu"] / free["cpu"]
    first = abs(padded["losses"][0] - free["losses"][0])
    print(f"padding overhead: {padded['rows_x_width'] / padded['tokens']:.2f}x positions per real token")
    # Only the first step's loss is comparable exactly: after one AdamW step, round-off
    # in near-zero gradients flips the sign of their normalised updates, so later
    # losses drift by ~1e-3 between any two batchings.
    print(
        f"first-step loss: padded {padded['losses'][0]:.6f}, padding-free {free['losses'][0]:.6f} (|diff| {first:.1e})"
    )
    for name, stats in (("padded", padded), ("padding-free", free)):
        print(
            f"{name + ':':<13} {stats['tokens'] / stats['time']:.1f} tokens/s wall, "
            f"{stats['tokens'] / stats['cpu']:.1f} tokens/s cpu"
        )
    print(
        f"speed-up padding-free / padded: {ratio:.2f}x tokens/s wall, {cpu_ratio:.2f}x tokens/s cpu "
        f"(best of {args.repeats})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
