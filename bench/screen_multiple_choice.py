"""Cheap dense screen of BIG-bench multiple-choice tasks, to pick candidates for the default.

lm-eval's 0-shot format (`Q: <input>\\nA:` + ` <choice>`, argmax of the summed choice
log-likelihood) on the first `--items` of each task in seed-0 order, one forward per item
(all choices in one batch). Prints accuracy, chance (mean 1/choices) and the normal lower
95 % bound minus chance. Candidates are then run through `layerprune evaluate` for real.

    PYTHONPATH=src python bench/screen_multiple_choice.py --model results/shared/models/*/smollm2-135m \\
        --bigbench-dir resources/bigbench --items 50 general_knowledge multiemo/all_sentence_en
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from layerprune.models.checkpoints import load_checkpoint


@torch.no_grad()
def choice_loglikelihoods(model, tokenizer, context: str, choices: list[str]) -> list[float]:
    context_ids = tokenizer(context)["input_ids"]
    sequences = [tokenizer(f"{context} {choice}")["input_ids"] for choice in choices]
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), tokenizer.pad_token_id or 0)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
    logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    return [
        sum(logprobs[row, t - 1, seq[t]].item() for t in range(len(context_ids), len(seq)))
        for row, seq in enumerate(sequences)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--bigbench-dir", default="resources/bigbench")
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("tasks", nargs="+", help="BIG-bench task names, e.g. goal_step_wikihow/step_inference")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load_checkpoint(args.model)
    for name in args.tasks:
        examples = json.loads((Path(args.bigbench_dir) / name / "task.json").read_text())["examples"]
        examples = [e for e in examples if e.get("target_scores")]
        order = list(range(len(examples)))
        random.Random(0).shuffle(order)
        start, correct, chance = time.time(), 0, 0.0
        for index in order[: args.items]:
            scores = examples[index]["target_scores"]
            choices = list(scores)
            label = max(range(len(choices)), key=lambda i: scores[choices[i]])
            context = f"Q: {examples[index]['input'].strip()}\nA:"
            loglikelihoods = choice_loglikelihoods(model, tokenizer, context, choices)
            correct += int(max(range(len(choices)), key=loglikelihoods.__getitem__) == label)
            chance += 1 / len(choices)
        n = min(args.items, len(order))
        accuracy, chance = correct / n, chance / n
        lower = accuracy - 1.96 * math.sqrt(accuracy * (1 - accuracy) / n)
        print(
            f"{name}\tn={n}\tacc={accuracy:.3f}\tchance={chance:.3f}\tlower-chance={lower - chance:+.3f}"
            f"\t{time.time() - start:.0f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
