"""Iterative layer pruning (arXiv 2602.01997): greedy removal by probe-task accuracy.

In round k (k = 1..max_k) every remaining layer except layer 0 is removed in turn,
on top of the k-1 layers already chosen, and the model is evaluated on the probe
tasks. The candidate kept is the one with the highest retention

    R(S) = mean over probe tasks t of acc_t(model without S) / acc_t(dense model),

ties going to the later layer. The order is greedy, so the removal set for k is the
first k entries of `removal_order`, and every set for a smaller k is a subset of it.
These three choices are the authors' (safal312/on-the-limits-of-layer-pruning,
layer_pruner/script.py: `avg_normalized`, sorted by (score, index) descending, `i == 0`
skipped); `criterion`, `tie_break` and `keep_first_layer` of `iterative_removal` name
them, with `mean_score` (the plain mean of the raw scores), `earlier` and False as the
alternatives.

Probe tasks are prepared task files (`layerprune.data.sources.prepare_task`), cut to their
first `num_samples` samples:

* classification: the choice with the highest log-likelihood of " " + choice after
  the `Q: {input}\\nA:` prompt with the task's few-shot prefix (the prompt and the
  token split of the evaluation through lm-eval, computed here directly and batched;
  the few-shot examples are taken in the task file's order, where lm-eval draws
  them with its seed);
* generative: decoding with the task's own evaluation settings, i.e. its `prompting`
  (chat template or few-shot) and its sampling (temperature, top-k, top-p), seeded with
  the prepared task's seed, graded by the task's own grader (exact match, math-verify,
  ROUGE-L F1, code, ...), through `evaluate_generative`. A probe thus measures what the
  evaluation measures; the authors' probes sample at their evaluation's T 0.9, top-k 50,
  top-p 1. Every candidate is generated with the same seed, so candidates are compared
  on common random numbers rather than on independent draws.

A long search survives a kill: with a `state_path`, the dense accuracies and every finished
candidate are written there (atomically: temp + rename) as soon as they are known, tagged with
a fingerprint of the inputs (the model's content, the probe task files, every setting). A
re-run with the same fingerprint skips what is recorded and continues with the next candidate;
since every candidate is generated with the same seed, the order equals an uninterrupted
run's. A state file with another fingerprint is ignored and replaced.

A removal is temporary: `layerprune.pruning.surgery.layers_removed` applies the very surgery
`prune` does (layer list, `layer_idx` renumbering, per-layer config lists) and restores
the model exactly afterwards, config included, even on an error.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from layerprune.evaluation.evaluate import evaluate_generative, fewshot_prompt
from layerprune.evaluation.generative import Sampling
from layerprune.io import read_json, write_json
from layerprune.models.checkpoints import decoder_layers
from layerprune.pruning.surgery import layers_removed

# Retentions closer than this count as tied (sums of the same ratios in another
# order may differ in the last bits).
TIE_TOLERANCE = 1e-9
CRITERIA = ("mean_ratio", "mean_score")
TIE_BREAKS = ("later", "earlier")
PROMPTINGS = ("auto", "chat", "fewshot")
STATE_FORMAT = 1  # bump when the state file's layout changes: older files are then started over


def state_path_for(out_path: str | Path) -> Path:
    """Where `layerprune score --method iterative` keeps its progress: a hidden file beside the output."""
    out_path = Path(out_path)
    return out_path.parent / f".{out_path.name}.state.json"


def load_state(path: str | Path | None, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The progress a killed run left in `path` if its fingerprint matches, else an empty state."""
    empty: dict[str, Any] = {"dense": None, "candidates": {}}
    if path is None or not Path(path).is_file():
        return empty
    try:
        state = read_json(path)
    except (OSError, ValueError):
        state = None
    if not isinstance(state, dict) or state.get("fingerprint") != {"format": STATE_FORMAT, **fingerprint}:
        print(f"{path}: written for other inputs or settings; starting over", flush=True)
        return empty
    return {"dense": state["dense"], "candidates": state["candidates"]}


def _save_state(path: Path, fingerprint: dict[str, Any], dense: dict[str, float], candidates: dict) -> None:
    write_json(path, {"fingerprint": {"format": STATE_FORMAT, **fingerprint}, "dense": dense, "candidates": candidates})


def _per_task(value: Any, count: int, what: str) -> list[Any]:
    """One value for every probe task: a list of `count` values, or one value for all."""
    if not isinstance(value, list):
        return [value] * count
    if len(value) != count:
        raise ValueError(f"{count} probe tasks but {len(value)} {what} values")
    return value


def load_probe_tasks(
    paths: list[str | Path],
    num_samples: int,
    max_new_tokens: list[int] | int = 16,
    prompting: list[str] | str = "auto",
    sampling: list[Sampling | None] | Sampling | None = None,
) -> list[dict[str, Any]]:
    """Read prepared task files as probe tasks: the first `num_samples` samples of each.

    A task is named after its file (`results/shared/tasks/<fingerprint>/{task}.json`). Each of
    `max_new_tokens`, `prompting` (auto/chat/fewshot) and `sampling` is one value per
    task or one for all; pass the task's evaluation settings (`tasks.<name>`), so that
    a generative probe is generated exactly as the task is evaluated. The defaults are
    the evaluation's defaults (prompting auto, greedy).
    """
    max_new_tokens = _per_task(max_new_tokens, len(paths), "max_new_tokens")
    promptings = _per_task(prompting, len(paths), "prompting")
    samplings = _per_task(sampling, len(paths), "sampling")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    tasks = []
    for path, tokens, task_prompting, task_sampling in zip(paths, max_new_tokens, promptings, samplings, strict=True):
        if task_prompting not in PROMPTINGS:
            raise ValueError(
                f"probe task {path}: prompting must be one of {', '.join(PROMPTINGS)}, got {task_prompting!r}"
            )
        if task_sampling is not None and not isinstance(task_sampling, Sampling):
            raise TypeError(f"probe task {path}: sampling must be a layerprune.evaluation.generative.Sampling or None")
        task = read_json(path)
        # the whole prepared task (its grader, stop strings, seed, ...) with the samples cut
        tasks.append(
            {
                **task,
                "name": Path(path).stem,
                "samples": task["samples"][:num_samples],
                "max_new_tokens": tokens,
                "prompting": task_prompting,
                "sampling": task_sampling or Sampling(),
            }
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

    def __init__(
        self,
        model,
        tokenizer,
        probe_tasks: list[dict[str, Any]],
        batch_size: int,
        generate_batch_size: int | None = None,
    ):
        names = [task["name"] for task in probe_tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"probe task names must be unique, got {names}")
        for task in probe_tasks:
            if task["type"] not in ("classification", "generative"):
                raise ValueError(f"probe task '{task['name']}' has unknown type '{task['type']}'")
            if not task["samples"]:
                raise ValueError(f"probe task '{task['name']}' has no samples")
        self.model, self.tokenizer, self.tasks, self.batch_size = model, tokenizer, probe_tasks, batch_size
        self.generate_batch_size = generate_batch_size or batch_size
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
                # the task's own evaluation settings; tasks built without load_probe_tasks get
                # the evaluation's defaults (prompting auto, greedy)
                value = evaluate_generative(
                    self.model,
                    self.tokenizer,
                    task,
                    task["max_new_tokens"],
                    self.generate_batch_size,
                    progress=False,
                    prompting=task.get("prompting", "auto"),
                    sampling=task.get("sampling") or Sampling(),
                    seed=task.get("seed", 0),
                )["value"]
            accuracies[task["name"]] = value
        return accuracies


def retention(accuracies: dict[str, float], dense: dict[str, float]) -> float:
    """Mean over the probe tasks with nonzero dense accuracy of accuracy ÷ dense accuracy."""
    ratios = [accuracies[name] / dense[name] for name in dense if dense[name] > 0]
    return sum(ratios) / len(ratios)


def probe_score(accuracies: dict[str, float], dense: dict[str, float], criterion: str = "mean_ratio") -> float:
    """A candidate's score: `mean_ratio` (the paper's: `retention`) or `mean_score` (plain mean).

    Both use the probe tasks with nonzero dense score. The authors count a dense-zero task
    as ratio 0 for every candidate, which adds the same constant to each and so picks the
    same layer as leaving it out.
    """
    if criterion == "mean_ratio":
        return retention(accuracies, dense)
    if criterion == "mean_score":
        values = [accuracies[name] for name in dense if dense[name] > 0]
        return sum(values) / len(values)
    raise ValueError(f"scoring.iterative.criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")


def choose_layer(scores: dict[int, float], tie_break: str = "later") -> int:
    """The candidate with the highest score; among tied ones the later (or earlier) layer."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"scoring.iterative.tie_break must be one of {', '.join(TIE_BREAKS)}, got {tie_break!r}")
    best = max(scores.values())
    tied = [layer for layer, value in scores.items() if value >= best - TIE_TOLERANCE]
    return max(tied) if tie_break == "later" else min(tied)


@torch.no_grad()
def iterative_removal(
    model,
    tokenizer,
    probe_tasks: list[dict[str, Any]],
    max_k: int,
    batch_size: int = 8,
    criterion: str = "mean_ratio",
    tie_break: str = "later",
    keep_first_layer: bool = True,
    state_path: str | Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    probe_batch_size: int | None = None,
) -> dict[str, Any]:
    """Greedy removal order for k = 1..max_k; see the module docstring.

    `probe_batch_size`: rows per generation batch of the generative probes (None: `batch_size`).

    With `state_path`, progress is persisted there after the dense probe and after every
    candidate, under `fingerprint` (what the caller knows identifies the inputs: model
    content, probe files, settings; `max_k`, batch size and the selection rule are added
    here), and a matching earlier state is resumed from. The file is removed on success.

    `criterion` (`mean_ratio`: mean over tasks of pruned ÷ dense; `mean_score`: mean of
    the raw scores), `tie_break` (`later` or `earlier` layer among tied candidates) and
    `keep_first_layer` (layer 0 is never a candidate) default to the paper's choices.

    Returns `removal_order`, `removal` (k -> sorted layers, k = 0..max_k), `max_k`,
    the dense accuracies, the probe tasks used and how they were generated, the
    selection rule and, per round, every candidate's accuracies and retention (the
    criterion's score).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"scoring.iterative.criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"scoring.iterative.tie_break must be one of {', '.join(TIE_BREAKS)}, got {tie_break!r}")
    num_layers = len(decoder_layers(model))
    first_candidate = 1 if keep_first_layer else 0
    most = num_layers - 1  # one layer always stays, so the model keeps a decoder
    if not 0 <= max_k <= most:
        kept = " (layer 0 stays)" if keep_first_layer else ""
        raise ValueError(f"max_k must lie in [0, {most}] for {num_layers} layers{kept}: {max_k}")
    padding_side = tokenizer.padding_side  # evaluate_generative switches it to left
    fingerprint = {
        **(fingerprint or {}),
        "max_k": max_k,
        "batch_size": batch_size,
        **({"probe_batch_size": probe_batch_size} if probe_batch_size is not None else {}),
        "selection": [criterion, tie_break, keep_first_layer],
        "probe_tasks": [[task["name"], task["type"], len(task["samples"])] for task in probe_tasks],
    }
    state = load_state(state_path, fingerprint)
    # candidate accuracies already known, keyed "<sorted removal set>" (JSON keys are strings)
    known: dict[str, dict[str, float]] = state["candidates"]

    def save(dense: dict[str, float]) -> None:
        if state_path is not None:
            _save_state(Path(state_path), fingerprint, dense, known)

    try:
        probe = _Prober(model, tokenizer, probe_tasks, batch_size, probe_batch_size)
        dense = state["dense"]
        if dense is None:
            dense = probe()
            save(dense)
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
        total = sum(num_layers - first_candidate - done for done in range(max_k))
        with tqdm(total=total, desc="iterative pruning", unit="candidate") as bar:
            for k in range(1, max_k + 1):
                bar.set_postfix(round=f"{k}/{max_k}", removed=str(sorted(order)))
                candidates = [layer for layer in range(first_candidate, num_layers) if layer not in order]
                accuracies, retained = {}, {}
                for layer in candidates:
                    key = json.dumps(sorted(order + [layer]))
                    if key not in known:
                        with layers_removed(model, order + [layer]):
                            known[key] = probe()
                        save(dense)
                    accuracies[layer] = known[key]
                    retained[layer] = probe_score(accuracies[layer], dense, criterion)
                    bar.update(1)
                chosen = choose_layer(retained, tie_break)
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
    result = {
        "scores": None,
        "max_k": max_k,
        "removal_order": order,
        "removal": {k: sorted(order[:k]) for k in range(max_k + 1)},
        "probe_tasks": {
            task["name"]: {"type": task["type"], "num_samples": len(task["samples"])} for task in probe_tasks
        },
        "probe_generation": {
            task["name"]: {
                "prompting": task.get("prompting", "auto"),
                "sampling": {**(task.get("sampling") or Sampling()).__dict__},
                "seed": task.get("seed", 0),
                "max_new_tokens": task.get("max_new_tokens"),
            }
            for task in probe_tasks
            if task["type"] == "generative"
        },
        "selection": {"criterion": criterion, "tie_break": tie_break, "keep_first_layer": keep_first_layer},
        "dense_accuracy": dense,
        "excluded_probe_tasks": excluded,
        "rounds": rounds,
    }
    if state_path is not None:
        Path(state_path).unlink(missing_ok=True)
    return result
