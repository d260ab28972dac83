"""The paper's diagnostics, computed in aggregate from the samples kept in each result JSON.

* degeneration of generated text: Rep-n (the repeated fraction of n-grams, n = 2, 3, 4) and
  self-BLEU (sacrebleu, already a dependency of lm-eval);
* code error buckets: counts of the per-sample `error_bucket` of code tasks;
* arithmetic: accuracy at the first answer digit and exact accuracy, by operation and by
  digit count, from the per-sample `digits` and `operation` of arithmetic tasks.

Every function takes the plain list of sample dicts and skips samples that lack the field it
needs, so a result written before a field existed still aggregates (to an empty table).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

import pandas as pd

from layerprune.evaluation.graders import ERROR_BUCKETS  # one list of the code-error buckets

REP_N = (2, 3, 4)
DIGIT = re.compile(r"-?\d")


def _tokens(text: str) -> list[str]:
    """Whitespace tokens: model-agnostic, so that Rep-n compares across tokenizers."""
    return str(text).split()


def rep_n(texts: list[str], n: int) -> float:
    """Rep-n: the repeated fraction of n-grams, seq-rep-n of Welleck et al. (2020).

    Per text 1 - unique n-grams / n-grams (0: no n-gram repeats, near 1: a loop), averaged
    over the texts that have at least n tokens; NaN when none has.
    """
    values = []
    for text in texts:
        tokens = _tokens(text)
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        if grams:
            values.append(1.0 - len(set(grams)) / len(grams))
    return sum(values) / len(values) if values else float("nan")


def self_bleu(texts: list[str], max_texts: int = 1000, seed: int = 0) -> float:
    """Self-BLEU (Zhu et al., 2018): mean sentence BLEU of each text against all the others.

    High = the outputs resemble each other (mode collapse). Each score is sacrebleu's
    sentence BLEU (13a tokens, exp smoothing, effective order; 0-100 divided by 100), the
    same number as `BLEU(effective_order=True).sentence_score(text, others)`, but computed
    from n-gram counts extracted once: a text's clipped matches against "all the others" only
    need, per n-gram, the largest count in any other text (the top two counts suffice), so the
    cost is linear in the n-grams instead of quadratic. At most `max_texts` texts (a seeded
    sample). NaN with fewer than two non-empty texts.
    """
    from sacrebleu.metrics import BLEU
    from sacrebleu.metrics.helpers import extract_all_word_ngrams

    texts = [str(t) for t in texts if str(t).strip()]
    if len(texts) < 2:
        return float("nan")
    if len(texts) > max_texts:
        texts = random.Random(seed).sample(texts, max_texts)
    bleu = BLEU(effective_order=True)
    order = bleu.max_ngram_order
    extracted = [extract_all_word_ngrams(bleu._preprocess_segment(t), 1, order) for t in texts]
    top: dict[tuple, list] = {}  # n-gram -> [largest count, its text, second largest count]
    for index, (counts, _) in enumerate(extracted):
        for gram, count in counts.items():
            best = top.setdefault(gram, [0, -1, 0])
            if count > best[0]:
                best[0], best[1], best[2] = count, index, best[0]
            elif count > best[2]:
                best[2] = count
    lengths = [length for _, length in extracted]
    scores = []
    for index, (counts, length) in enumerate(extracted):
        correct, total = [0] * order, [0] * order
        for gram, count in counts.items():
            best = top[gram]
            others = best[2] if best[1] == index else best[0]
            total[len(gram) - 1] += count
            correct[len(gram) - 1] += min(count, others)
        ref_len = bleu._get_closest_ref_len(length, lengths[:index] + lengths[index + 1 :])
        scores.append(bleu._compute_score_from_stats([length, ref_len, *correct, *total]).score / 100.0)
    return sum(scores) / len(scores)


def degeneration(samples: list[dict[str, Any]], max_texts: int = 1000, seed: int = 0) -> dict[str, float]:
    """Rep-2/3/4 and self-BLEU of the samples' `output`s."""
    texts = [s["output"] for s in samples if isinstance(s.get("output"), str)]
    row = {f"rep_{n}": rep_n(texts, n) for n in REP_N}
    row["self_bleu"] = self_bleu(texts, max_texts=max_texts, seed=seed)
    row["n_texts"] = len(texts)
    return row


def error_bucket_counts(samples: list[dict[str, Any]]) -> dict[str, int]:
    """Counts of each code error bucket (fixed order; an unknown bucket is kept under its name).

    Every generation counts: a sample's `error_buckets` list (one per generation, when several
    are sampled for pass@k), else its single `error_bucket`.
    """
    counts: Counter = Counter()
    for sample in samples:
        buckets = sample.get("error_buckets") or ([sample["error_bucket"]] if sample.get("error_bucket") else [])
        counts.update(buckets)
    return {**{bucket: counts.pop(bucket, 0) for bucket in ERROR_BUCKETS}, **dict(sorted(counts.items()))}


def first_digit(text: Any) -> str | None:
    """The first digit of an answer (a leading minus sign kept), or None when there is none."""
    if isinstance(text, list):
        text = text[0] if text else ""
    match = DIGIT.search(str(text))
    return match.group(0) if match else None


def first_digit_correct(sample: dict[str, Any]) -> bool:
    """The grader's own verdict (`first_digit` or `first_digit_correct`) when the sample has one,
    else the first digit of the output against the target's."""
    for key in ("first_digit", "first_digit_correct"):
        if isinstance(sample.get(key), bool):
            return sample[key]
    predicted = first_digit(sample.get("output"))
    return predicted is not None and predicted == first_digit(sample.get("target"))


def arithmetic_breakdown(samples: list[dict[str, Any]]) -> pd.DataFrame:
    """Per (operation, digits): n, exact accuracy and first-digit accuracy.

    Only samples with both `operation` and `digits` count; the frame is empty without any.
    """
    rows = [
        {
            "operation": str(s["operation"]),
            "digits": int(s["digits"]),
            "correct": float(bool(s.get("correct"))),
            "first_digit": float(first_digit_correct(s)),
        }
        for s in samples
        if s.get("operation") is not None and s.get("digits") is not None
    ]
    columns = ["operation", "digits", "n", "accuracy", "first_digit_accuracy"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    table = (
        frame.groupby(["operation", "digits"])
        .agg(n=("correct", "size"), accuracy=("correct", "mean"), first_digit_accuracy=("first_digit", "mean"))
        .reset_index()
    )
    return table[columns]
