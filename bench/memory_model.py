"""Memory model of every compute rule at 7-8B: `prune` measured here and extrapolated, the GPU rules computed.

prune: a random-weight Llama of each `--shapes` size is saved in bf16, then
`layerprune.pruning.prune.prune_checkpoint` (dtype auto: the checkpoint's bf16) removes 25 % of its
layers in a fresh process; its peak RSS (getrusage) minus the same process's RSS after the
imports, divided by the bf16 file's size, gives the ratio applied to an 8B file. Its peak is the
float32 cast of the reloaded pruned model (the teacher-forced cache check, see
`layerprune.pruning.prune.verify_cache`): 2 bytes/parameter x 0.75 of the layers x 2.

The other rules are computed (weights + the largest transient), for Llama-3.1-8B (vocab 128256,
32 layers, 8 KV heads x 128, d_model 4096) at the paper's settings:

* score (bi/angular, GPU): bf16 weights + one batch's hidden states of every layer + the fp32
  cosine chunk (no logits: the decoder stack is called without its LM head);
* score_iterative (GPU): weights + the probe generator's KV cache (batch 8 x 1.4k tokens);
* selfgen (HF backend, GPU): weights + the KV cache of the worst batch (2 bytes x 2 x layers x
  kv_heads x head_dim per token); vLLM instead takes gpu_memory_utilization of the card;
* recover (QLoRA, GPU): 4-bit weights (0.56 B/param with double quant) of the decoder's linear
  layers + embeddings and lm_head in fp32 (bitsandbytes leaves them unquantised, PEFT casts them
  to fp32: 4.2 GB at 8B) + LoRA r=64 params in
  fp32 with AdamW (16 B/param) + activations with gradient checkpointing; the merge then loads
  the bf16 base, once the 4-bit model, the optimizer and the trainer are freed;
* evaluate (lm-eval, GPU): weights + lm-eval's [batch, length, vocab] tensors at its peak: the
  bf16 logits (2 B), their fp32 copy inside log_softmax (4 B: evaluate.LM_EVAL_SOFTMAX_DTYPE
  float32, lm-eval's softmax_dtype), the fp32 log-softmax (4 B) and the previous batch's (4 B, still
  referenced while the next is computed; the 3 tensors measured on CPU by eval_logits_memory.py),
  so 14 x vocab bytes per token of the batch; `evaluation.max_batch_tokens` bounds the tokens
  (paper.yaml: 4096), plus one layer's MLP activations at that size;
* host RAM (mem_mb): a GPU job loads the checkpoint on the host first (`load_checkpoint`), so its
  RSS peaks near the bf16 file plus ~4 GB (interpreter, torch, CUDA context).

    PYTHONPATH=src python bench/memory_model.py [--shapes 1024x8 1536x8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PRUNE_CHILD = """
import json, resource, sys
import torch
from layerprune.io import write_json
from layerprune.pruning.prune import prune_checkpoint
from layerprune.scoring.score import score_layers
torch.set_num_threads(1)
def current_kb():  # VmRSS now; ru_maxrss would be the peak so far, imports' transients included
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
before = current_kb()
model_dir, out, layers = sys.argv[1], sys.argv[2], int(sys.argv[3])
write_json(out + ".scores.json", score_layers("reverse", num_layers=layers))
prune_checkpoint(model_dir, out + ".scores.json", 0.25, out)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rss_before_kb": before, "peak_kb": after}))
"""

GB = 1e9
# lm-eval's peak bytes per token x vocab: bf16 logits + their fp32 copy + fp32 log-softmax + the previous batch's
LOGIT_BYTES = 2 + 4 + 4 + 4
COSINE_CHUNK_TOKENS = 1024  # layerprune.scoring.score.COSINE_CHUNK_TOKENS (tests/test_cost_model.py checks they agree)
LLAMA_8B = dict(params=8.03e9, layers=32, kv_heads=8, head_dim=128, d_model=4096, vocab=128256)


def make_checkpoint(directory: Path, hidden: int, layers: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 7 // 2,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        vocab_size=128,  # the tests' tokenizer; the layers dominate the file
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.models import make_tokenizer  # the tests' tiny tokenizer: prune saves one beside the weights

    make_tokenizer().save_pretrained(directory)
    return sum(path.stat().st_size for path in directory.glob("*.safetensors"))


def measure_prune(shapes: list[str]) -> list[dict]:
    rows = []
    for shape in shapes:
        hidden, layers = (int(part) for part in shape.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "dense"
            size = make_checkpoint(model_dir, hidden, layers)
            done = subprocess.run(
                [sys.executable, "-c", PRUNE_CHILD, str(model_dir), str(Path(tmp) / "pruned"), str(layers)],
                capture_output=True,
                text=True,
                check=True,
            )
            peak = json.loads(done.stdout.strip().splitlines()[-1])
            extra = (peak["peak_kb"] - peak["rss_before_kb"]) * 1024
            rows.append(
                {
                    "shape": shape,
                    "bf16_file_gb": round(size / GB, 3),
                    "peak_rss_over_start_gb": round(extra / GB, 3),
                    "peak_over_file": round(extra / size, 2),
                }
            )
    return rows


def computed(prune_ratio: float) -> dict[str, dict[str, float]]:
    m = LLAMA_8B
    weights = 2 * m["params"] / GB
    # load_checkpoint reads the safetensors on the host, then moves the model: host RSS ~ the bf16 file
    # plus the interpreter, torch and the CUDA context (~4 GB)
    host = round(weights + 4, 1)
    kv_per_token = 2 * 2 * m["layers"] * m["kv_heads"] * m["head_dim"] / GB
    kv = m["kv_heads"] * m["head_dim"]
    # LoRA r=64 on every linear layer: r x (in + out) each (q, k, v, o, gate, up, down), in billions
    dims = 2 * m["d_model"] + 2 * (m["d_model"] + kv) + 3 * (m["d_model"] + 14336)
    qlora_trainable = 64 * m["layers"] * dims / 1e9
    unquantised = 2 * m["vocab"] * m["d_model"]  # embed_tokens and lm_head (untied at 8B)
    return {
        "prune (CPU)": {"gpu_gb": 0, "host_gb": round(prune_ratio * weights, 1)},
        # paper.yaml: batch 8 x 512 tokens. bf16 weights + every depth's hidden states (L+1 of them, bf16)
        # + the fp32 cosine chunk (score.COSINE_CHUNK_TOKENS: the stack and its normalised copy)
        # + one layer's MLP activations; no logits (score.base_model calls the decoder stack alone)
        "score bi/angular, batch 8 x 512 tokens (GPU)": {
            "gpu_gb": round(
                weights
                + 8 * 512 * m["d_model"] * 2 * (m["layers"] + 1) / GB
                + 2 * (m["layers"] + 1) * COSINE_CHUNK_TOKENS * m["d_model"] * 4 / GB
                + 3 * 8 * 512 * 14336 * 2 / GB,
                1,
            ),
            "host_gb": host,
        },
        "score_iterative (GPU)": {"gpu_gb": round(weights + 8 * 1424 * kv_per_token + 2, 1), "host_gb": host},
        # paper.yaml: batch 64, prompts up to 8000 tokens, 1024 new: the worst batch's KV cache
        "selfgen HF, batch 64 x 9k tokens (GPU)": {
            "gpu_gb": round(weights + 64 * 9024 * kv_per_token + 2, 1),
            "host_gb": host,
        },
        "recover QLoRA (GPU)": {
            # 4-bit base (bitsandbytes quantises the decoder's linear layers only) + embeddings and lm_head
            # left unquantised, which PEFT's prepare_model_for_kbit_training casts to fp32 (2 x vocab x
            # d_model x 4 B = 4.2 GB at 8B) + fp32 LoRA with AdamW + activations (batch 4 x 2k tokens,
            # checkpointed) + the fp32 logits of the loss (4 x 2048 x vocab x 4 B)
            "gpu_gb": round(
                0.56 * (m["params"] - unquantised) / GB
                + unquantised * 4 / GB
                + qlora_trainable * 16
                + 4 * 2048 * m["d_model"] * 2 * m["layers"] / GB
                + 4 * 2048 * m["vocab"] * 4 / GB,
                1,
            ),
            "host_gb": host,
        },
        # the 4-bit model, AdamW state and trainer are freed before the bf16 base loads (was: + 4.5 GB of
        # 4-bit weights + 2.4 GB of LoRA weights, gradients and moments = 23 GB); the LoRA factors the
        # merge check needs wait on the host (0.6 GB in fp32)
        "recover merge (GPU)": {
            "gpu_gb": round(weights, 1),
            "host_gb": host,
        },
        **{
            f"evaluate lm-eval, batch {batch} x 2.5k tokens (GPU)": {
                "gpu_gb": round(weights + batch * 2500 * m["vocab"] * LOGIT_BYTES / GB, 1),
                "host_gb": host,
            }
            for batch in (32, 4)
        },
        "evaluate lm-eval, max_batch_tokens 4096 (GPU)": {
            # + one layer's MLP activations at 4096 tokens (gate, up, act: 3 x 14336 x 2 B a token)
            "gpu_gb": round(weights + 4096 * m["vocab"] * LOGIT_BYTES / GB + 3 * 4096 * 14336 * 2 / GB, 1),
            "host_gb": host,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["1024x8", "1536x8"], help="hidden x layers")
    args = parser.parse_args()
    rows = measure_prune(args.shapes)
    ratio = rows[-1]["peak_over_file"]  # the largest shape: the ratio falls with size (fixed costs)
    print(json.dumps({"prune_measured": rows, "llama_3_1_8b": computed(ratio)}, indent=2))


if __name__ == "__main__":
    main()
