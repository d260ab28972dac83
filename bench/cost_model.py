"""One cost model for the GPU rules of a study: each rule's SLURM `runtime` from the config's own values.

    PYTHONPATH=src python bench/cost_model.py [--config configs/paper.yaml] [--retries 1]

Reads the config (probe tasks and their max_new_tokens, scoring.iterative.num_samples and
probe_batch_size, pruning.ratios, prompts.num_prompts, selfgen.max_new_tokens, the generative tasks'
items, max_new_tokens and evaluation.max_generate_tokens, recovery's batch and length) and prices each
GPU rule for the most expensive of the paper's models (Llama-3.1-8B and Mistral-7B: 32 layers) on one
A100-80GB. The arithmetic, so it can be redone for another model or card (docs/pipeline.md walks
through it):

* a decode step of `rows` sequences at mean context c reads the weights and the rows' KV cache once and
  computes 2 x params FLOPs per row: step = max(rows x 2 x params / (peak x MFU),
  (weight bytes + rows x c x KV bytes per token) / (HBM bandwidth x MBU)) x overhead, where
  overhead = 2 for transformers' `generate` (per-step Python and kernel launches at batch <= 32)
  and 1 for vLLM; a prefill costs tokens x 2 x params / (peak x MFU);
* worst case, every generation batch runs to its max_new_tokens (a degenerate pruned model never
  stops; mean context = prompt + max_new_tokens / 2);
* vLLM (selfgen) keeps the GPU busy with hundreds of sequences: compute-bound, generated tokens x
  2 x params / (peak x MFU), x `BATCH_INVARIANT_SLOWDOWN` in batch-invariant mode (its Triton matmuls
  are slower than cuBLAS on an A100; assumed 2x, not measured here);
* training (recover, QLoRA): 5 x params FLOPs per token (forward, backward through the frozen 4-bit
  weights for the activations, the recomputed forward of gradient checkpointing) at `TRAIN_MFU`;
* every job: + `JOB_START_MIN` (loading 16 GB of weights, CUDA context); runtime = (cost + start)
  x `MARGIN`, rounded up to 30 min, at most `MAX_RUNTIME_MIN` (48 h, a common partition limit).
  Only a job that resumes after a kill (score_iterative, selfgen, recover, evaluate) may need more
  than one attempt, at most `1 + retries` (profiles/slurm: retries 1); beyond that the config must
  cap the work (`runtime_min` raises).

Model constants are the published configs; hardware constants are an A100-80GB SXM's datasheet
figures with the usual utilisations. tests/test_cost_model.py checks that paper.yaml's runtimes are
what this model gives.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

# an A100-80GB SXM: bf16 dense peak, HBM bandwidth, and the utilisations reached in practice
PEAK_FLOPS, MFU = 312e12, 0.35
HBM_BYTES_PER_S, MBU = 2.0e12, 0.6
HF_OVERHEAD = 2.0  # transformers' generate: Python + launches per step roughly double a step at 7-8B
BATCH_INVARIANT_SLOWDOWN = 2.0  # vLLM's batch-invariant Triton matmuls vs cuBLAS on an A100 (assumed)
TRAIN_MFU = 0.25  # QLoRA: dequantising the 4-bit weights on every use
JOB_START_MIN = 10.0
MARGIN = 1.25
MAX_RUNTIME_MIN = 2880
# mean prompt tokens: the probes and generative tasks' chat prompts (GSM8K ~150, HumanEval ~200,
# XSum articles ~500: 400 covers the mix); Alpaca-cleaned's rendered prompts (~100); SFT examples
# (prompt + answer, cut at recovery.max_length)
PROBE_PROMPT_TOKENS = 400
EVAL_PROMPT_TOKENS = 400
SELFGEN_PROMPT_TOKENS = 100
SFT_TOKENS_PER_EXAMPLE = 400
# items of the hub benchmarks that run in full (the config's `limit` caps the others)
FULL_SIZES = {"gsm8k": 1319, "math500": 500, "humaneval": 164, "mbpp": 378, "xsum": 11332}

MODEL = {  # Llama-3.1-8B: the largest of the paper's three (Mistral-7B-v0.3 has the same 32 layers)
    "name": "Llama-3.1-8B",
    "params": 8.03e9,
    "layers": 32,
    "weight_bytes": 16.06e9,
    "kv_bytes_per_token": 2 * 2 * 32 * 8 * 128,  # K and V, bf16, 32 layers x 8 KV heads x 128
}


def decode_step_s(rows: int, context: float, overhead: float, model: dict[str, Any] = MODEL) -> float:
    compute = rows * 2 * model["params"] / (PEAK_FLOPS * MFU)
    memory = (model["weight_bytes"] + rows * context * model["kv_bytes_per_token"]) / (HBM_BYTES_PER_S * MBU)
    return max(compute, memory) * overhead


def prefill_s(tokens: float, model: dict[str, Any] = MODEL) -> float:
    return tokens * 2 * model["params"] / (PEAK_FLOPS * MFU)


def generation_s(items: int, rows: int, prompt: int, max_new: int, overhead: float) -> float:
    """Every batch of `rows` runs `max_new` steps (the worst case) after its prefill."""
    batches = math.ceil(items / rows)
    return batches * max_new * decode_step_s(rows, prompt + max_new / 2, overhead) + prefill_s(items * prompt)


def candidates(num_layers: int, max_ratio: float, keep_first_layer: bool = True) -> int:
    """Probe runs of an iterative search: the dense model, then round r tries every layer left (layer 0 kept)."""
    rounds = math.floor(max_ratio * num_layers + 0.5)
    first = 1 if keep_first_layer else 0
    return 1 + sum(num_layers - first - done for done in range(rounds))


def runtime_min(cost_s: float, resumable: bool = False, retries: int = 1) -> tuple[int, int]:
    """(SLURM runtime in minutes, attempts) for a job costing `cost_s` of GPU time.

    One attempt when (cost + start) x MARGIN fits MAX_RUNTIME_MIN; a job that resumes after a kill
    may instead run MAX_RUNTIME_MIN per attempt over up to `1 + retries` attempts (the profile's
    retries). More than that is an error: the config must cap the work (docs/pipeline.md).
    """
    minutes = (cost_s / 60 + JOB_START_MIN) * MARGIN
    if minutes <= MAX_RUNTIME_MIN:
        return int(math.ceil(minutes / 30) * 30), 1
    attempts = math.ceil(cost_s / 60 * MARGIN / (MAX_RUNTIME_MIN - JOB_START_MIN * MARGIN))
    if not resumable or attempts > 1 + retries:
        raise ValueError(
            f"{cost_s / 3600:.1f} GPU-h do not fit {1 + retries if resumable else 1} attempt(s) of "
            f"{MAX_RUNTIME_MIN} min: cap the work in the config"
        )
    return MAX_RUNTIME_MIN, attempts


def task_items(task: dict[str, Any]) -> int:
    full = FULL_SIZES.get(task.get("dataset", ""), 1000)
    limit = task.get("limit")
    return min(full, int(limit)) if limit is not None else full


def rows_for(batch_size: int, max_tokens: int | None, prompt: int, max_new: int) -> int:
    """generative.plan_batches' rows: batch_size, cut by the token budget rows x (prompt + max_new)."""
    if max_tokens is None:
        return batch_size
    return max(1, min(batch_size, max_tokens // (prompt + max_new)))


def costs(config: dict[str, Any], retries: int = 1) -> dict[str, dict[str, Any]]:
    tasks = config["tasks"]
    out: dict[str, dict[str, Any]] = {}

    # score_iterative: every candidate generates every probe
    scoring = config["scoring"]
    iterative = scoring.get("iterative", {})
    probe_rows = iterative.get("probe_batch_size") or scoring.get("batch_size", 8)
    samples = iterative.get("num_samples", 16)
    per_candidate = sum(
        generation_s(
            min(samples, task_items(tasks[name])),
            probe_rows,
            PROBE_PROMPT_TOKENS,
            tasks[name]["max_new_tokens"],
            HF_OVERHEAD,
        )
        for name in iterative.get("probe_tasks", [])
    )
    count = candidates(MODEL["layers"], max(config["pruning"]["ratios"]), iterative.get("keep_first_layer", True))
    cost = count * per_candidate
    out["score_iterative"] = {
        "cost_h": round(cost / 3600, 1),
        "candidates": count,
        "probe_rows": probe_rows,
        "probe_max_new_tokens": {name: tasks[name]["max_new_tokens"] for name in iterative.get("probe_tasks", [])},
        "minutes_per_candidate": round(per_candidate / 60, 2),
        **dict(zip(("runtime", "attempts"), runtime_min(cost, resumable=True, retries=retries), strict=True)),
    }

    # score (bi): one forward of the calibration texts
    calibration = scoring.get("calibration", {})
    cost = prefill_s(calibration.get("num_samples", 256) * calibration.get("max_length", 512))
    out["score"] = {
        "cost_h": round(cost / 3600, 2),
        **dict(zip(("runtime", "attempts"), runtime_min(cost), strict=True)),
    }

    # selfgen: vLLM over every prompt, worst case every answer max_new_tokens long
    selfgen = config["selfgen"]
    prompts = config["prompts"]["num_prompts"]
    tokens = prompts * selfgen["max_new_tokens"]
    slowdown = BATCH_INVARIANT_SLOWDOWN if selfgen.get("batch_invariant", True) else 1.0
    cost = tokens * 2 * MODEL["params"] / (PEAK_FLOPS * MFU) * slowdown + prefill_s(prompts * SELFGEN_PROMPT_TOKENS)
    out["selfgen"] = {
        "cost_h": round(cost / 3600, 1),
        "prompts": prompts,
        "generated_tokens_worst": tokens,
        **dict(zip(("runtime", "attempts"), runtime_min(cost, resumable=True, retries=retries), strict=True)),
    }

    # recover (QLoRA SFT): 5 x params FLOPs per token, one epoch of the kept prompts
    recovery = config["recovery"]
    examples = prompts * (1 - recovery.get("eval_fraction", 0.0)) * recovery.get("num_epochs", 1)
    sft_tokens = examples * min(SFT_TOKENS_PER_EXAMPLE, recovery.get("max_length", 1024))
    cost = 5 * MODEL["params"] * sft_tokens / (PEAK_FLOPS * TRAIN_MFU)
    out["recover"] = {
        "cost_h": round(cost / 3600, 1),
        **dict(zip(("runtime", "attempts"), runtime_min(cost, resumable=True, retries=retries), strict=True)),
    }

    # evaluate: the worst task; generative, every batch to max_new_tokens (a degenerate variant)
    evaluation = config.get("evaluation", {})
    per_task = {}
    for name, task in tasks.items():
        if task.get("evaluate") is False or task.get("type") != "generative":
            continue
        rows = rows_for(
            evaluation.get("batch_size", 16),
            evaluation.get("max_generate_tokens"),
            EVAL_PROMPT_TOKENS,
            task["max_new_tokens"],
        )
        items = task_items(task) * task.get("num_samples", 1)
        per_task[name] = {
            "items": items,
            "rows": rows,
            "cost_h": round(
                generation_s(items, rows, EVAL_PROMPT_TOKENS, task["max_new_tokens"], HF_OVERHEAD) / 3600, 2
            ),
        }
    worst = max(per_task.values(), key=lambda row: row["cost_h"]) if per_task else {"cost_h": 0}
    runtime, attempts = runtime_min(worst["cost_h"] * 3600, resumable=True, retries=retries)
    # resources.evaluate: both evaluate_dense and evaluate_variant
    out["evaluate"] = {"cost_h": worst["cost_h"], "tasks": per_task, "attempts": attempts, "runtime": runtime}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "paper.yaml"))
    parser.add_argument("--retries", type=int, default=1, help="the profile's retries (profiles/slurm: 1)")
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    print(json.dumps({"model": MODEL["name"], "rules": costs(config, args.retries)}, indent=2))


if __name__ == "__main__":
    main()
