"""Finding (i) from result files: generative minus classification retention at one ratio, paired bootstrap.

A type's retention is the ratio of its tasks' mean chance-normalised scores, pruned / dense
(issue 12's statistic); chance is 1/choices for lm-eval samples and 0 for generative ones.

    python bench/type_retention_difference.py results/default/eval/smollm2-135m bi/0.1/none \\
        --classification general_knowledge multiemo_en --generative arithmetic_probe plural
"""

from __future__ import annotations

import argparse
import json
import random

Pairs = dict[str, list[tuple[float, float]]]  # task -> per-sample (dense, pruned) chance-normalised scores


def normalised_scores(path: str) -> dict[str, float]:
    scores = {}
    for sample in json.load(open(path))["samples"]:
        if "loglikelihoods" in sample:  # multiple choice through lm-eval
            chance, score = 1 / len(sample["loglikelihoods"]), float(sample["correct"])
        else:
            chance, score = 0.0, sample["score"]
        scores[str(sample["id"])] = (score - chance) / (1 - chance)
    return scores


def retention(pairs: Pairs, tasks: list[str]) -> float:
    dense = sum(sum(d for d, _ in pairs[t]) / len(pairs[t]) for t in tasks)
    pruned = sum(sum(p for _, p in pairs[t]) / len(pairs[t]) for t in tasks)
    return pruned / dense


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="results/default/eval/<model>")
    parser.add_argument("variant", help="<method>/<ratio>/<recovery>")
    parser.add_argument("--classification", nargs="+", required=True)
    parser.add_argument("--generative", nargs="+", required=True)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    pairs: Pairs = {}
    for task in args.classification + args.generative:
        dense = normalised_scores(f"{args.model_dir}/dense/{task}.json")
        pruned = normalised_scores(f"{args.model_dir}/{args.variant}/{task}.json")
        pairs[task] = [(dense[key], pruned[key]) for key in dense]

    def difference(sample: Pairs) -> float:
        return retention(sample, args.generative) - retention(sample, args.classification)

    rng = random.Random(0)
    draws = sorted(
        difference({t: [p[rng.randrange(len(p))] for _ in p] for t, p in pairs.items()}) for _ in range(args.resamples)
    )
    low, high = draws[int(0.025 * args.resamples)], draws[int(0.975 * args.resamples) - 1]
    print(
        f"{args.variant}: generative {retention(pairs, args.generative):.2f}, "
        f"classification {retention(pairs, args.classification):.2f}: gen - cls {difference(pairs):+.2f} "
        f"[{low:+.2f}, {high:+.2f}]"
    )


if __name__ == "__main__":
    main()
