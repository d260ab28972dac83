"""Iterative layer pruning (arXiv 2602.01997): greedy removal by probe-task accuracy.

In round k (k = 1..max_k) every remaining layer except layer 0 is removed in turn,
on top of the k-1 layers already chosen, and the model is evaluated on the probe
tasks. The candidate kept is the one with the highest retention

    R(S) = mean over probe tasks t of acc_t(model without S) / acc_t(dense model),

ties going to the later layer. The order is greedy, so the removal set for k is the
first k entries of `removal_order`, and every set for a smaller k is a subset of it.

Probe tasks are prepared task files (`layerprune.data.prepare_task`), cut to their
first `num_samples` samples:

* classification: the choice with the highest log-likelihood of " " + choice after
  the `Q: {input}\\nA:` prompt with the task's few-shot prefix (the prompt and the
  token split of the evaluation through lm-eval, computed here directly and batched;
  the few-shot examples are taken in the task file's order, where lm-eval draws
  them with its seed);
* generative: greedy few-shot decoding graded by the task's own grader (exact match,
  first digit, ...), through `evaluate_generative`.

A removal is temporary: `layerprune.surgery.layers_removed` applies the very surgery
`prune` does (layer list, `layer_idx` renumbering, per-layer config lists) and restores
the model exactly afterwards, config included, even on an error.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from layerprune.evaluate import evaluate_generative, fewshot_prompt
from layerprune.io import read_json
from layerprune.models import decoder_layers
from layerprune.surgery import layers_removed

# Retentions closer than this count as tied (sums of the same ratios in another
# order may differ in the last bits).
TIE_TOLERANCE = 1e-9


def load_probe_tasks(
    paths: list[str | Path], num_samples: int, max_new_tokens: list[int] | int = 16
) -> list[dict[str, Any]]:
    """Read prepared task files as probe tasks: the first `num_samples` samples of each.

    A task is named after its file (`results/data/tasks/{task}.json`);
    `max_new_tokens` (one per task, or one for all) bounds generative answers.
    """
    if isinstance(max_new_tokens, int):
        max_new_tokens = [max_new_tokens] * len(paths)
    if len(max_new_tokens) != len(paths):
        raise ValueError(f"{len(paths)} probe tasks but {len(max_new_tokens)} max_new_tokens values")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    tasks = []
    for path, tokens in zip(paths, max_new_tokens, strict=True):
        task = read_json(path)
        # the whole prepared task (its grader, stop strings, ...) with the samples cut
        tasks.append(
            {**task, "name": Path(path).stem, "samples": task["samples"][:num_samples], "max_new_tokens": tokens}
        )
    return tasks


def classification_prompt(fewshot: list[dict[str, Any]], question: str) -> str:
    """The evaluation's prompt: each few-shot example answered with its correct choice."""
    shots = [{"input": shot["input"], "targets": [shot["choices"][shot["label"]]]} for shot in fewshot]
    return fewshot_prompt(shots, question)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Split tokens the way lm-eval does for causal LMs: encode the whole, cut at the context's length."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation).input_ids
    context_ids = tokenizer(context).input_ids
    return whole[: len(context_ids)], whole[len(context_ids) :]


@torch.no_grad()
def continuation_loglikelihoods(
    model, pairs: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int = 0
) -> list[float]:
    """Sum of log p(continuation | context) for (context_ids, continuation_ids) pairs, batched.

    Sequences are left-padded, longest first, with explicit position ids (each row
    counts from 0 at its first real token, as if unpadded), so every continuation
    ends at the last position and the logits are computed for the last
    max(continuation) + 1 positions only (`logits_to_keep`).
    """
    if any(not context or not continuation for context, continuation in pairs):
        raise ValueError("every probe request needs a non-empty context and continuation")
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    results = [0.0] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        sequences = [pairs[i][0] + pairs[i][1] for i in chunk]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, width - len(sequence) :] = torch.tensor(sequence)
            attention_mask[row, width - len(sequence) :] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        keep = max(len(pairs[i][1]) for i in chunk) + 1
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
            use_cache=False,
            logits_to_keep=keep,
        ).logits
        for row, index in enumerate(chunk):
            continuation = pairs[index][1]
            # the logits at position p predict token p + 1; the continuation fills the last positions
            predicting = logits[row, keep - len(continuation) - 1 : keep - 1].float()
            targets = torch.tensor(continuation, device=predicting.device)
            results[index] = float(predicting.log_softmax(-1).gather(-1, targets[:, None]).sum())
    return results


def _encode_classification(tokenizer, task: dict[str, Any]) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for sample in task["samples"]:
        prompt = classification_prompt(task["fewshot"], sample["input"])
        pairs += [encode_pair(tokenizer, prompt, " " + choice) for choice in sample["choices"]]
    return pairs


def classification_accuracy(model, task: dict[str, Any], pairs, batch_size: int, pad_id: int) -> float:
    """Share of samples whose highest-likelihood choice is the label (first choice on ties, as lm-eval)."""
    loglikelihoods = continuation_loglikelihoods(model, pairs, batch_size, pad_id)
    correct, offset = 0, 0
    for sample in task["samples"]:
        scores = loglikelihoods[offset : offset + len(sample["choices"])]
        offset += len(sample["choices"])
        correct += max(range(len(scores)), key=scores.__getitem__) == sample["label"]
    return correct / len(task["samples"])


class _Prober:
    """Evaluates the model as it currently is on every probe task (inputs encoded once)."""

    def __init__(self, model, tokenizer, probe_tasks: list[dict[str, Any]], batch_size: int):
        names = [task["name"] for task in probe_tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"probe task names must be unique, got {names}")
        for task in probe_tasks:
            if task["type"] not in ("classification", "generative"):
                raise ValueError(f"probe task '{task['name']}' has unknown type '{task['type']}'")
            if not task["samples"]:
                raise ValueError(f"probe task '{task['name']}' has no samples")
        self.model, self.tokenizer, self.tasks, self.batch_size = model, tokenizer, probe_tasks, batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.pairs = {
            task["name"]: _encode_classification(tokenizer, task)
            for task in probe_tasks
            if task["type"] == "classification"
        }

    def __call__(self) -> dict[str, float]:
        accuracies = {}
        for task in self.tasks:
            if task["type"] == "classification":
                pairs = self.pairs[task["name"]]
                value = classification_accuracy(self.model, task, pairs, self.batch_size, self.pad_id)
            else:
                value = evaluate_generative(
                    self.model, self.tokenizer, task, task["max_new_tokens"], self.batch_size, progress=False
                )["value"]
            accuracies[task["name"]] = value
        return accuracies


def retention(accuracies: dict[str, float], dense: dict[str, float]) -> float:
    """Mean over the probe tasks with nonzero dense accuracy of accuracy ÷ dense accuracy."""
    ratios = [accuracies[name] / dense[name] for name in dense if dense[name] > 0]
    return sum(ratios) / len(ratios)


@torch.no_grad()
def iterative_removal(
    model, tokenizer, probe_tasks: list[dict[str, Any]], max_k: int, batch_size: int = 8
) -> dict[str, Any]:
    """Greedy removal order for k = 1..max_k; see the module docstring.

    Returns `removal_order`, `removal` (k -> sorted layers, k = 0..max_k), `max_k`,
    the dense accuracies, the probe tasks used and, per round, every candidate's
    accuracies and retention.
    """
    num_layers = len(decoder_layers(model))
    if not 0 <= max_k <= num_layers - 1:
        raise ValueError(f"max_k must lie in [0, {num_layers - 1}] for {num_layers} layers (layer 0 stays): {max_k}")
    padding_side = tokenizer.padding_side  # evaluate_generative switches it to left
    try:
        probe = _Prober(model, tokenizer, probe_tasks, batch_size)
        dense = probe()
        excluded = [name for name, value in dense.items() if value <= 0]
        for name in excluded:
            warnings.warn(
                f"probe task '{name}' has dense accuracy 0: accuracy ratios are undefined, so it is left out "
                "of the iterative pruning criterion",
                stacklevel=2,
            )
        if len(excluded) == len(dense):
            raise ValueError(
                f"no probe task has nonzero dense accuracy ({', '.join(dense)}): iterative pruning has no criterion"
            )
        order: list[int] = []
        rounds = []
        total = sum(num_layers - 1 - done for done in range(max_k))
        with tqdm(total=total, desc="iterative pruning", unit="candidate") as bar:
            for k in range(1, max_k + 1):
                bar.set_postfix(round=f"{k}/{max_k}", removed=str(sorted(order)))
                candidates = [layer for layer in range(1, num_layers) if layer not in order]
                accuracies, retained = {}, {}
                for layer in candidates:
                    with layers_removed(model, order + [layer]):
                        accuracies[layer] = probe()
                    retained[layer] = retention(accuracies[layer], dense)
                    bar.update(1)
                best = max(retained.values())
                chosen = max(layer for layer in candidates if retained[layer] >= best - TIE_TOLERANCE)
                rounds.append(
                    {
                        "k": k,
                        "removed_before": sorted(order),
                        "chosen": chosen,
                        "retention": {str(layer): retained[layer] for layer in candidates},
                        "accuracy": {str(layer): accuracies[layer] for layer in candidates},
                    }
                )
                order.append(chosen)
    finally:
        tokenizer.padding_side = padding_side
    return {
        "scores": None,
        "max_k": max_k,
        "removal_order": order,
        "removal": {k: sorted(order[:k]) for k in range(max_k + 1)},
        "probe_tasks": {
            task["name"]: {"type": task["type"], "num_samples": len(task["samples"])} for task in probe_tasks
        },
        "dense_accuracy": dense,
        "excluded_probe_tasks": excluded,
        "rounds": rounds,
    }
