"""How close each recovered checkpoint is to the dense model: per-token KL(dense || variant).

Teacher-forced on the dense model's own answers: for each task, the dense evaluation's prompts
and outputs (results/eval/<model>/dense/<task>.json, held out from every recovery's training
data), and, in-sample, the SGR pairs the recoveries trained on. Lower is closer to the dense
model; `kd` minimises exactly this on the SGR pairs, `sgr` only the sampled token's loss.

    PYTHONPATH=src python bench/kd_teacher_kl.py --results results --model smollm2-135m --method bi \
        --recoveries none sgr kd --tasks arithmetic_probe plural --limit 25
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from layerprune.io import read_json, read_jsonl
from layerprune.models.checkpoints import load_checkpoint


def sequences(
    results: Path, model: str, tasks: list[str], tokenizer, limit: int | None
) -> dict[str, list[tuple[list[int], int]]]:
    """name -> [(token ids, index of the first answer token)]."""
    out = {}
    for task in tasks:
        rows = []
        for sample in read_json(results / "eval" / model / "dense" / f"{task}.json")["samples"][:limit]:
            prompt = tokenizer(sample["prompt"], add_special_tokens=False)["input_ids"]
            full = tokenizer(sample["prompt"] + sample["output"], add_special_tokens=False)["input_ids"]
            if len(full) > len(prompt) and full[: len(prompt)] == prompt:
                rows.append((full, len(prompt)))
        out[f"{task} (held out)"] = rows
    rows = []
    for record in read_jsonl(results / "selfgen" / f"{model}.jsonl"):
        if not record["completion"][0]["content"].strip():
            continue
        text = tokenizer.apply_chat_template([*record["prompt"], *record["completion"]], tokenize=False)
        prompt = tokenizer.apply_chat_template(record["prompt"], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append((ids, len(tokenizer(prompt, add_special_tokens=False)["input_ids"])))
    out["SGR pairs (trained on)"] = rows
    return out


def log_probs(model, rows: list[tuple[list[int], int]]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [
            F.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, start - 1 : -1].double(), -1)
            for ids, start in rows
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--model", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--recoveries", nargs="+", default=["none", "sgr", "kd"])
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--limit", type=int, default=None, help="the first N samples of each task")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dense, tokenizer = load_checkpoint(args.results / "models" / args.model / "dense", dtype="float32")
    sets = sequences(args.results, args.model, args.tasks, tokenizer, args.limit)
    teacher = {name: log_probs(dense, rows) for name, rows in sets.items()}
    del dense
    table = []
    for ratio_dir in sorted((args.results / "pruned" / args.model / args.method).iterdir()):
        for recovery in args.recoveries:
            path = ratio_dir if recovery == "none" else args.results / "recovered" / args.model / args.method
            path = path if recovery == "none" else path / ratio_dir.name / recovery
            if not path.is_dir():
                continue
            student, _ = load_checkpoint(path, dtype="float32")
            row = {"ratio": ratio_dir.name, "recovery": recovery}
            for name, rows in sets.items():
                total = tokens = 0
                for t, s in zip(teacher[name], log_probs(student, rows), strict=True):
                    total += float((t.exp() * (t - s)).sum())
                    tokens += t.shape[0]
                row[name] = round(total / tokens, 4)
            table.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
