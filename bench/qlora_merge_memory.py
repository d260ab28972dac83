"""Peak host memory of a QLoRA `recover` on CPU, and what is held when the merge's base loads.

A random-weight Llama (`--shape` hidden x layers, Llama-3 proportions: MLP 3.5 x hidden, a
quarter of the heads for K/V; the tests' 128-token tokenizer, so the layers dominate as at 8B)
is saved in bf16, then `layerprune.recovery.recover.recover_checkpoint(trainer="qlora")` runs in a fresh
process for `--steps` steps with LoRA r=64 on all linear layers (paper.yaml's) on short
prompt-completion rows. The child reports, from getrusage and /proc/self/status:

* rss_at_merge_load_mb, peak_before_merge_mb: RSS when the full-precision base for the merge
  starts loading (`layerprune.recovery.recover.load_checkpoint` is wrapped), and the peak up to then;
* peak_through_merge_mb: the peak up to the end of the merge checks (`check_adapter_folded`);
* peak_mb: the peak of the whole step (the save included).

`--src DIR` imports layerprune from DIR instead (e.g. an older commit's `src`, extracted with
`git archive <commit> src | tar -x -C /tmp/old`), to compare the two side by side:

    PYTHONPATH=src python bench/qlora_merge_memory.py --src /tmp/old/src --src src

On a GPU the same bytes (4-bit weights, LoRA weights, gradients and AdamW moments) sit in GPU
memory instead; this measures the host analogue of what the merge's device holds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys
import torch
torch.set_num_threads(1)
import layerprune.recovery.recover as recover

def rss_mb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")) / 1024

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

seen = {"rss_after_imports_mb": rss_mb()}
load, folded = recover.load_checkpoint, recover.check_adapter_folded
def watching(*args, **kwargs):
    seen.setdefault("rss_at_merge_load_mb", rss_mb())
    seen.setdefault("peak_before_merge_mb", peak_mb())
    return load(*args, **kwargs)
def merged(*args, **kwargs):
    result = folded(*args, **kwargs)
    seen["peak_through_merge_mb"] = peak_mb()
    return result
recover.load_checkpoint, recover.check_adapter_folded = watching, merged
model_dir, data, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
record = recover.recover_checkpoint(
    model_dir, data, out, "sgr", trainer="qlora", lora_r=64, lora_alpha=16, lora_dropout=0.0,
    learning_rate=1e-3, batch_size=2, grad_accum=1, max_length=64, warmup_steps=0,
    lr_scheduler="constant", max_steps=steps, seed=0, precision="fp32", gradient_checkpointing=False,
)
seen["peak_mb"] = peak_mb()
seen["layerprune"] = recover.__file__
seen["merge_check_layers"] = record["merge_check"]["layers_checked"]
print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in seen.items()}))
"""


def make_checkpoint(directory: Path, hidden: int, layers: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.models import CHAT_TEMPLATE, CORPUS, make_tokenizer

    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 7 // 2,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        vocab_size=128,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(directory)
    tokenizer = make_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    words = " ".join(CORPUS).split()

    def text(start: int, count: int) -> str:
        return " ".join(words[(start + k) % len(words)] for k in range(count))

    rows = [
        {
            "prompt": [{"role": "user", "content": text(3 * i, 12)}],
            "completion": [{"role": "assistant", "content": text(5 * i, 8)}],
        }
        for i in range(16)
    ]
    (directory.parent / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return sum(path.stat().st_size for path in directory.glob("*.safetensors"))


def measure(src: str, model_dir: Path, steps: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(model_dir), str(model_dir.parent / "data.jsonl"), str(out), str(steps)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return {"src": src, **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1024x8", help="hidden x layers")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--src", action="append", help="layerprune source directory to import (repeatable)")
    args = parser.parse_args()
    hidden, layers = (int(part) for part in args.shape.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        size = make_checkpoint(model_dir, hidden, layers)
        rows = [measure(src, model_dir, args.steps, Path(tmp) / f"out{i}") for i, src in enumerate(args.src or ["src"])]
    print(json.dumps({"shape": args.shape, "bf16_file_mb": round(size / 2**20, 1), "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
