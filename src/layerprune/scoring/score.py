"""Layer scoring: which decoder layers to remove, for every number k of layers.

Every method returns per-layer scores (higher = more important, where a method has
scores) and `removal[k]`, the set of k layer indices to remove, for k = 0..L-1
(`iterative`, which costs a round of probe evaluations per k, stops at its `max_k`;
`sleb` with its ends excluded stops at k = L-2).

`bi`, `angular` and `angular_last` compare hidden states; the calibration-loss
methods `ppl`, `taylor` and `sleb` live in `layerprune.scoring.ablation`, the task-driven
`iterative` in `layerprune.scoring.iterative`.

Hidden states come from forward hooks on the decoder layers, not from
`output_hidden_states` (whose last entry is the *normed* final state), and
padding positions are masked out of every average.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from layerprune.io import sha256_file
from layerprune.models.checkpoints import decoder_layers
from layerprune.pruning.surgery import check_finite_scores, layers_for_ratio, layers_to_remove
from layerprune.registry import SCORING_METHODS
from layerprune.scoring import ablation
from layerprune.scoring.iterative import iterative_removal

# The ratio -> k arithmetic lives in layerprune.pruning.surgery; re-exported here for the CLI and older callers.
__all__ = ["METHODS", "layers_for_ratio", "layers_to_remove", "score_file_record", "score_layers"]

# Methods that need calibration texts: hidden-state similarity, then calibration loss.
SIMILARITY_METHODS = ("bi", "angular", "angular_last")
ABLATION_METHODS = ("ppl", "taylor", "sleb")
# TODO(lead): dispatch through layerprune.registry too, once the surgery refactor of this module has landed.
METHODS = tuple(SCORING_METHODS)  # the names, their order and what each needs: layerprune.registry


# Tokens per fp32 chunk of the cosine sums (collect_layer_cosines); bench/memory_model.py counts with it.
COSINE_CHUNK_TOKENS = 1024


def base_model(model):
    """The decoder stack without the LM head (transformers' `base_model`: `model.model` of a causal LM),
    or `model` itself when it has none.

    Scoring needs hidden states only: calling the stack skips the [batch, length, vocab] logits.
    """
    inner = getattr(model, "base_model", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def _tensor_of(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def last_token_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """A mask selecting each row's last non-padding position (left or right padding alike).

    Rows without any real token select nothing.
    """
    mask = attention_mask.bool()
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, -1).amax(dim=1)
    rows = torch.nonzero(last >= 0).flatten()
    selected = torch.zeros_like(mask)
    selected[rows, last[rows]] = True
    return selected


@torch.no_grad()
def collect_layer_cosines(
    model,
    tokenizer,
    texts: list[str],
    max_length: int,
    batch_size: int,
    last_token_only: bool = False,
    average: str = "token",
) -> torch.Tensor:
    """Mean cosine similarity between the residual stream at depths i and j.

    Returns an (L+1) x (L+1) matrix C, where depth 0 is the input of layer 0 and
    depth l+1 the output of layer l (one forward pass per batch):

    * `last_token_only=False`: C[i, j] = mean over every non-padding token t of the
      calibration set of cos(h_i[t], h_j[t]);
    * `last_token_only=True`: C[i, j] = mean over sequences s of cos(h_i[T_s], h_j[T_s]),
      where T_s is the last non-padding token of s (after truncation to `max_length`),
      found from the attention mask, so left and right padding give the same result.
      This is the position Gromov et al. (2024, "The Unreasonable Ineffectiveness of
      the Deeper Layers", arXiv 2403.17887) measure their angular distance at.

    `average="text"` weighs every text alike instead of every token: C[i, j] = mean over
    texts s of (mean over the tokens t of s of cos(h_i[t], h_j[t])), the paper authors'
    BI (analysis/cossim_analysis.ipynb averages each prompt's tokens, then the prompts).
    """
    if average not in ("token", "text"):
        raise ValueError(f"scoring.calibration.average must be token or text, got {average!r}")
    layers = decoder_layers(model)
    num_layers = len(layers)
    states: list[torch.Tensor | None] = [None] * (num_layers + 1)

    def input_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        states[0] = hidden.detach()

    def output_hook(index: int) -> Callable:
        def hook(module, args, output):
            states[index + 1] = _tensor_of(output).detach()

        return hook

    handles = [layers[0].register_forward_pre_hook(input_hook, with_kwargs=True)]
    handles += [layer.register_forward_hook(output_hook(i)) for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    cosine_sum = torch.zeros(num_layers + 1, num_layers + 1, dtype=torch.float64)
    token_count = 0
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc="scoring batches", unit="batch"):
            batch = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            ).to(device)
            # the decoder stack alone: the hooks see every layer, and no [batch, length, vocab] logits are made
            # (1 GB in bf16 at 8 x 512 tokens with Llama-3.1's 128256-token vocabulary, never used here)
            base_model(model)(**batch, use_cache=False)
            mask = batch["attention_mask"].bool()
            if last_token_only:
                mask = last_token_mask(mask)
            if average == "text":
                # one text at a time: its token sum over its own token count
                for row in range(mask.shape[0]):
                    if not mask[row].any():
                        continue
                    stacked = torch.stack([s[row][mask[row]].float() for s in states])
                    stacked = torch.nn.functional.normalize(stacked, dim=-1).flatten(1)
                    cosine_sum += (stacked @ stacked.T).double().cpu() / int(mask[row].sum())
                    token_count += 1
                continue
            # (depths, tokens, hidden) over real tokens only, unit-normalised, in fp32, COSINE_CHUNK_TOKENS
            # tokens at a time: the sum over tokens is additive, so chunks bound the fp32 copies at
            # depths x chunk x hidden x 4 bytes (0.55 GB at 8B) instead of the whole batch's (2.2 GB each).
            positions = mask.flatten().nonzero().squeeze(1)
            for chunk in positions.split(COSINE_CHUNK_TOKENS):
                stacked = torch.stack([s.flatten(0, 1).index_select(0, chunk).float() for s in states])
                stacked = torch.nn.functional.normalize(stacked, dim=-1).flatten(1)
                # Summing cos(h_i[t], h_j[t]) over tokens t is one matrix product of
                # the flattened unit vectors: (depths, tokens*hidden) @ its transpose.
                cosine_sum += (stacked @ stacked.T).double().cpu()
                del stacked
            token_count += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
    if token_count == 0:
        raise ValueError("the calibration texts produced no tokens")
    return cosine_sum / token_count  # token_count counts texts with average="text"


def block_influence(cosines: torch.Tensor) -> list[float]:
    """ShortGPT (Men et al., 2024): BI_l = 1 - E_t[cos(x_l, x_{l+1})]."""
    num_layers = cosines.shape[0] - 1
    return [float(1.0 - cosines[layer, layer + 1]) for layer in range(num_layers)]


def angular_distances(cosines: torch.Tensor) -> dict[int, list[float]]:
    """Gromov et al. (2024): d(l, n) = arccos(cos(h_l, h_{l+n})) / pi, for every block size n.

    `cosines` is a matrix from `collect_layer_cosines`: the mean over all tokens
    (`angular`) or over each sequence's last token (`angular_last`, the paper's own
    choice). Either way the arccos is taken of the mean cosine; averaging the
    distance itself over sequences instead can rank blocks differently when their
    cosines vary a lot between sequences (arccos is not linear).
    """
    num_layers = cosines.shape[0] - 1
    return {
        n: [
            math.acos(max(-1.0, min(1.0, float(cosines[start, start + n])))) / math.pi
            for start in range(num_layers - n + 1)
        ]
        for n in range(1, num_layers)
    }


def removal_from_importance(importance: list[float]) -> dict[int, list[int]]:
    """Remove the k least important layers; ties go to the later layer."""
    order = sorted(range(len(importance)), key=lambda layer: (importance[layer], -layer))
    return {k: sorted(order[:k]) for k in range(len(importance))}


def score_layers(
    method: str,
    model=None,
    tokenizer=None,
    texts: list[str] | None = None,
    max_length: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    num_layers: int | None = None,
    probe_tasks: list[dict[str, Any]] | None = None,
    max_k: int | None = None,
    chunk_size: int | None = None,
    average: str = "token",
    sleb_exclude_ends: bool = True,
    selection: dict[str, Any] | None = None,
    state_path: str | Path | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the layers of `model` with `method`; see the module docstring for the output.

    `average` (bi, angular, angular_last): how the cosines are averaged over the calibration
    texts, per token or per text (`collect_layer_cosines`).

    `selection`: iterative's candidate rule (`criterion`, `tie_break`, `keep_first_layer`;
    see `layerprune.scoring.iterative.iterative_removal`), the paper's rule when omitted.

    `iterative` needs `probe_tasks` (see `layerprune.scoring.iterative.load_probe_tasks`) and
    `max_k`, and its `removal` stops at k = max_k; `sleb` stops there too when `max_k`
    is given (its rounds are greedy, so stopping early changes no chosen layer). `state_path` and
    `fingerprint`: where iterative persists its progress, and what identifies its inputs.
    `chunk_size` (ppl, sleb) is how many calibration texts have their layer inputs cached at once (None: all);
    `sleb_exclude_ends` keeps sleb off the first and last layer.
    """
    if method not in METHODS:
        raise ValueError(f"unknown scoring method '{method}' (choose from {', '.join(METHODS)})")
    if num_layers is None:
        num_layers = len(decoder_layers(model))
    if model is not None:
        check_finite_activations(model)
    result: dict[str, Any] = {"method": method, "num_layers": num_layers}
    if method == "reverse":
        result["scores"] = None
        result["removal"] = {k: list(range(num_layers - k, num_layers)) for k in range(num_layers)}
    elif method == "random":
        order = list(range(num_layers))
        random.Random(seed).shuffle(order)
        result.update(seed=seed, scores=None, removal_order=order)
        result["removal"] = {k: sorted(order[:k]) for k in range(num_layers)}
    elif method == "iterative":
        if not probe_tasks or max_k is None:
            raise ValueError("scoring method 'iterative' needs probe tasks and max_k")
        result.update(
            iterative_removal(
                model,
                tokenizer,
                probe_tasks,
                max_k,
                batch_size=batch_size,
                state_path=state_path,
                fingerprint=fingerprint,
                **(selection or {}),
            )
        )
    elif not texts:
        raise ValueError(f"scoring method '{method}' needs calibration texts")
    elif method == "ppl":
        scores = ablation.ppl_scores(model, tokenizer, texts, max_length, batch_size, chunk_size)
        result.update(scores=scores, removal=removal_from_importance(scores))
    elif method == "taylor":
        scores = ablation.taylor_scores(model, tokenizer, texts, max_length, batch_size)
        result.update(scores=scores, removal=removal_from_importance(scores))
    elif method == "sleb":
        order, rounds = ablation.sleb_order(
            model, tokenizer, texts, max_length, batch_size, chunk_size, sleb_exclude_ends, max_rounds=max_k
        )
        result.update(scores=None, exclude_ends=sleb_exclude_ends, removal_order=order, rounds=rounds)
        result["removal"] = {k: sorted(order[:k]) for k in range(len(order) + 1)}
    else:
        last_token_only = method == "angular_last"
        cosines = collect_layer_cosines(model, tokenizer, texts, max_length, batch_size, last_token_only, average)
        check_finite_cosines(cosines, method)
        result["average"] = average
        if method == "bi":
            scores = block_influence(cosines)
            result.update(scores=scores, removal=removal_from_importance(scores))
        else:
            distances = angular_distances(cosines)
            result["tokens"] = "last" if last_token_only else "all"
            result["scores"] = distances[1]
            result["block_distances"] = {str(n): d for n, d in distances.items()}
            removal = {0: []}
            for n, per_start in distances.items():
                start = min(range(len(per_start)), key=lambda start: (per_start[start], -start))
                removal[n] = list(range(start, start + n))
            result["removal"] = removal
    result["removal"] = {str(k): v for k, v in result["removal"].items()}
    check_finite_scores(result, source=f"scoring {type(model).__name__}" if model is not None else "scoring")
    return result


ACTIVATION_PROBE_LENGTH = 16  # tokens of the fixed probe that checks every layer's output before scoring


@torch.no_grad()
def check_finite_activations(model) -> None:
    """ValueError naming the layers whose output is NaN or infinite on a fixed probe input.

    A checkpoint with NaN or inf weights gives NaN scores (or, worse, finite ones after a
    clamp or an argmax); one forward pass tells which layers are at fault before any
    method runs. Token ids, not text: the iterative method has no calibration texts.
    """
    layers = decoder_layers(model)
    vocab_size = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (1, ACTIVATION_PROBE_LENGTH), generator=generator)
    bad: list[int] = []

    def hook(index: int) -> Callable:
        def check(module, args, output):
            if not bool(torch.isfinite(_tensor_of(output)).all()):
                bad.append(index)

        return check

    handles = [layer.register_forward_hook(hook(index)) for index, layer in enumerate(layers)]
    try:
        model(input_ids=ids.to(next(model.parameters()).device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    if bad:
        raise ValueError(
            f"{type(model).__name__}: decoder layers {sorted(bad)} output NaN or infinite hidden states (the first "
            f"is layer {min(bad)}: NaN or inf weights there?), so no layer can be scored"
        )


def check_finite_cosines(cosines: torch.Tensor, method: str) -> None:
    """ValueError naming the layers whose output has a NaN or infinite cosine.

    Needed before any score is derived: `angular` clamps the cosine into [-1, 1], which
    would turn a NaN into a finite, perfectly plausible distance.
    """
    # A depth with a non-finite hidden state makes its whole row and column NaN; the diagonal
    # (cos(h_d, h_d), 1 when finite) tells which depths are themselves at fault.
    diagonal = cosines.diagonal()
    bad_depths = [depth for depth in range(cosines.shape[0]) if not math.isfinite(float(diagonal[depth]))]
    if bad_depths or not bool(torch.isfinite(cosines).all()):
        # depth 0 is the input of layer 0 (the embeddings), depth d the output of layer d - 1
        layers = [depth - 1 for depth in bad_depths if depth > 0]
        where = "the embeddings and " if 0 in bad_depths else ""
        raise ValueError(
            f"scoring ({method}) found NaN or infinite hidden states at {where}the output of layers {layers}: "
            "the model's activations are not finite (NaN or inf weights?), so its layers cannot be scored"
        )


def score_file_record(
    result: dict[str, Any],
    model: str | os.PathLike,
    calibration: str | os.PathLike | None,
    texts: list[str] | None,
    max_length: int,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """The scores file: `result` plus the scored model, the calibration file and its sha256,
    and the settings it was scored with (which `prune_checkpoint` copies into pruning.json)."""
    return {
        **result,
        "model": str(model),
        "calibration": str(calibration) if calibration else None,
        "calibration_sha256": sha256_file(calibration) if calibration else None,
        "settings": {
            "max_length": max_length,
            "batch_size": batch_size,
            "seed": seed,
            "num_samples": len(texts) if texts is not None else None,
        },
    }
