"""Peak host memory of lm-eval classification against the memory model's 2 x rows x length x vocab x bytes.

A random fp32 Llama with a large vocabulary (`--vocab`, default 32000) and a tiny body (hidden 64,
2 layers), so that the logits dominate, evaluates a local multiple-choice task of `--samples`
inputs of `--length` words (the tests' word-level tokenizer: a word a token) through
`layerprune.evaluation.evaluate.evaluate_classification`, in a fresh process per setting, with
`evaluation.batch_size` `--batch-size` and each `--budget` (0: none, the batch size alone). The
child reports its peak RSS above its RSS just before the evaluation (ru_maxrss, /proc/self/status)
and the forward passes' shapes; `model_mb` is what the memory model predicts for the largest one:
its logits and their log-softmax, and the previous batch's log-softmax (lm-eval's `multi_logits`
is reassigned only once the next is computed), [rows, length, vocab] each, in the model's dtype
(fp32 here: 4 bytes).

    PYTHONPATH=src python bench/eval_logits_memory.py --budget 0 4096 2048 1024
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
from lm_eval.models.huggingface import HFLM
from layerprune.evaluation.evaluate import evaluate_classification
from layerprune.models.checkpoints import load_checkpoint

model_dir, task_file, batch_size, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
shapes = []
call = HFLM._model_call
def recording(self, inps, *args, **kwargs):
    shapes.append(list(inps.shape))
    return call(self, inps, *args, **kwargs)
HFLM._model_call = recording
model, tokenizer = load_checkpoint(model_dir, dtype="float32")
task = json.load(open(task_file))
def rss_kb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
before = rss_kb()
result = evaluate_classification(model, tokenizer, task, "long", batch_size, 0, max_batch_tokens=budget or None)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_over_start_mb": round((peak - before) / 1024), "shapes": shapes, "accuracy": result["value"]}))
"""


def make_checkpoint(directory: Path, vocab: int, length: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.models import make_tokenizer

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=2 * length + 64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)


def make_task(path: Path, samples: int, length: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.models import CORPUS

    words = " ".join(CORPUS).split()
    rows = [
        {
            "id": i,
            "input": " ".join(words[(i + k) % len(words)] for k in range(length - 4 * i)),
            "choices": ["fox", "dog", "world"],
            "label": i % 3,
        }
        for i in range(samples)
    ]
    task = {"source": "bench", "type": "classification", "num_fewshot": 0, "seed": 0, "fewshot": [], "samples": rows}
    path.write_text(json.dumps(task))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--length", type=int, default=1000, help="words (tokens) of the longest input")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--budget", type=int, nargs="+", default=[0, 2048], help="max_batch_tokens; 0 = none")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_checkpoint(Path(tmp) / "model", args.vocab, args.length)
        make_task(Path(tmp) / "task.json", args.samples, args.length)
        for budget in args.budget:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(Path(tmp) / "model"), str(Path(tmp) / "task.json")]
                + [str(args.batch_size), str(budget)],
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            rows_, length = max(measured["shapes"], key=lambda shape: shape[0] * shape[1])
            # logits + log-softmax, + the previous batch's log-softmax when there was one
            copies = 3 if len(measured["shapes"]) > 1 else 2
            measured["model_mb"] = round(copies * rows_ * length * args.vocab * 4 / 2**20)
            rows.append({"max_batch_tokens": budget or None, **measured})
    print(json.dumps({"vocab": args.vocab, "batch_size": args.batch_size, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
