"""Cost model of iterative scoring at 7-8B (score_iterative's `runtime`), from a probe measured here.

Measures, on this CPU, the throughput of the probe generator (`layerprune.evaluation.generative.generate`:
left-padded batches, KV cache, the batched path generative evaluation and the probes use) on a
small model, and scales it to a target model in two ways:

* compute: CPU seconds per generated token x (FLOPs per token of the target / of the measured
  model) x (CPU FLOP/s / GPU FLOP/s at batch `--batch-size`);
* memory bandwidth: at batch 8 decoding reads every weight once per step, so a step takes at
  least weight bytes / (HBM bandwidth x MBU).

The slower of the two is a step's time. Assumptions (all arguments, defaults in brackets): the
probes of `--config` [configs/paper.yaml: its probe tasks' max_new_tokens and
scoring.iterative.num_samples], batch [8]; each batch of 8 sampled answers (T 0.9) runs to its longest, taken as
`--fill` [1.0] of max_new_tokens; prompt [400 tokens, prefill counted as compute]; an A100-80GB:
312 TFLOP/s bf16 dense at [35 %] MFU, 2.0 TB/s at [60 %] MBU; HF generate's per-step Python and
launch overhead is not in the model (it roughly doubles a step at 8B: the reason for the 2x
margin in paper.yaml). Targets: Llama-3.1-8B, Qwen2.5-7B, Mistral-7B (parameters, layers,
d_model, bf16 bytes below); candidates per job: the dense probe plus, for k = round(max_ratio x L)
rounds [max_ratio 0.3], the L - 1 - done layers left to try (layer 0 kept).

    PYTHONPATH=src python bench/iterative_cost.py --model results/models/smollm2-135m/dense
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from layerprune.evaluation.generative import Sampling, generate
from layerprune.models.checkpoints import load_checkpoint

PROMPT = (
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May? Think step by step.\nAnswer:"
)


def flops_per_token(params: float, layers: int, d_model: int, context: int) -> float:
    """Forward FLOPs of one decoded token: 2 per weight, plus attention over `context` keys (QK and AV)."""
    return 2 * params + 4 * layers * d_model * context


def candidates(num_layers: int, ratio: float) -> int:
    rounds = math.floor(ratio * num_layers + 0.5)
    return 1 + sum(num_layers - 1 - done for done in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="results/models/smollm2-135m/dense")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated in the measurement")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--probes",
        nargs="+",
        default=None,
        help="samples:max_new per probe; default: --config's probes (num_samples, their max_new_tokens)",
    )
    parser.add_argument("--config", default="configs/paper.yaml", help="the study whose probes are priced")
    parser.add_argument("--fill", type=float, default=1.0, help="share of max_new_tokens a batch runs")
    parser.add_argument("--max-ratio", type=float, default=0.3)
    parser.add_argument("--prompt-tokens", type=int, default=400)
    parser.add_argument("--gpu-tflops", type=float, default=312.0)
    parser.add_argument("--mfu", type=float, default=0.35)
    parser.add_argument("--gpu-tbps", type=float, default=2.0)
    parser.add_argument("--mbu", type=float, default=0.6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = load_checkpoint(args.model, dtype="float32", device="cpu")
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    prompts = [PROMPT] * args.batch_size
    generate(model, tokenizer, prompts[:2], 4, 2, Sampling(), [], chat=False, progress=False)  # warm-up
    start = time.perf_counter()
    generate(model, tokenizer, prompts, args.new_tokens, args.batch_size, Sampling(), [], chat=False, progress=False)
    seconds = time.perf_counter() - start
    prompt_tokens = len(tokenizer(PROMPT).input_ids)
    measured_flops = args.batch_size * (
        args.new_tokens * flops_per_token(params, config.num_hidden_layers, config.hidden_size, prompt_tokens)
        + prompt_tokens * 2 * params
    )
    cpu_flops = measured_flops / seconds  # effective FLOP/s of this CPU on the probe

    targets = {
        "Llama-3.1-8B": dict(params=8.03e9, layers=32, d_model=4096, weight_bytes=16.06e9),
        "Qwen2.5-7B": dict(params=7.62e9, layers=28, d_model=3584, weight_bytes=15.23e9),
        "Mistral-7B-v0.3": dict(params=7.25e9, layers=32, d_model=4096, weight_bytes=14.5e9),
    }
    report = {
        "measured": {
            "model": args.model,
            "parameters": params,
            "threads": args.threads,
            "batch_size": args.batch_size,
            "prompt_tokens": prompt_tokens,
            "new_tokens": args.new_tokens,
            "seconds": round(seconds, 2),
            "generated_tokens_per_s": round(args.batch_size * args.new_tokens / seconds, 1),
            "effective_gflops": round(cpu_flops / 1e9, 2),
        },
        "targets": {},
    }
    if args.probes is None:  # the config's own probe lengths (bench/cost_model.py prices every rule the same way)
        import yaml

        study = yaml.safe_load(open(args.config))
        iterative = study["scoring"]["iterative"]
        args.probes = [
            f"{iterative.get('num_samples', 16)}:{study['tasks'][name]['max_new_tokens']}"
            for name in iterative["probe_tasks"]
        ]
    probes = [tuple(int(part) for part in probe.split(":")) for probe in args.probes]
    report["probes"] = args.probes
    for name, target in targets.items():
        gpu_flops = args.gpu_tflops * 1e12 * args.mfu
        probe_seconds = cpu_probe_seconds = 0.0
        for samples, max_new in probes:
            steps = math.ceil(samples / args.batch_size) * args.fill * max_new
            context = args.prompt_tokens + max_new // 2
            shape = (target["params"], target["layers"], target["d_model"], context)
            step_flops = args.batch_size * flops_per_token(*shape)
            step = max(step_flops / gpu_flops, target["weight_bytes"] / (args.gpu_tbps * 1e12 * args.mbu))
            prefill = samples * args.prompt_tokens * 2 * target["params"] / gpu_flops
            probe_seconds += steps * step + prefill
            cpu_probe_seconds += steps * step_flops / cpu_flops  # the FLOP ratio applied to this CPU
        count = candidates(target["layers"], args.max_ratio)
        report["targets"][name] = {
            "cpu_hours_per_probe_by_flop_ratio": round(cpu_probe_seconds / 3600, 1),
            "gpu_step_ms_compute": round(step_flops / gpu_flops * 1e3, 2),
            "gpu_step_ms_bandwidth": round(target["weight_bytes"] / (args.gpu_tbps * 1e12 * args.mbu) * 1e3, 2),
            "gpu_minutes_per_probe": round(probe_seconds / 60, 1),
            "candidates_with_dense": count,
            "job_gpu_hours": round(count * probe_seconds / 3600, 1),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
