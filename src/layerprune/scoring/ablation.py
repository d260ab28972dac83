"""Calibration-loss layer scoring: what removing a decoder block costs the language model.

Three methods (dispatched from `layerprune.scoring.score.score_layers`), all on the
calibration NLL L = -(1/N) Σ_t log p(x_{t+1} | x_{≤t}) over the N predicted tokens of
the calibration set (both the predicting and the predicted position are real
tokens, so padding never counts):

* ``ppl`` -- `ppl_scores`, Shortened LLaMA's one-shot PPL criterion (Kim et al., 2024);
* ``taylor`` -- `taylor_scores`, Shortened LLaMA's first-order Taylor criterion;
* ``sleb`` -- `sleb_order`, SLEB's greedy iterative removal (Song et al., 2024).

Prefix reuse
------------
Removing block l leaves blocks 0..l-1 untouched, so every candidate shares the
computation below it. One forward of the kept blocks records, with
``register_forward_pre_hook(..., with_kwargs=True)``, each block's input hidden state
and the keyword arguments the model passed to it (rotary embeddings, attention mask,
position ids, ...; kept per layer index, since hybrid models give sliding and full
layers different masks). Candidate l then runs only the kept blocks above l from the
recorded input of l, followed by the final norm and the LM head. A scan over L
candidates costs L - 1 + L(L-1)/2 block forwards instead of L(L-1).

`without_layers` is the naive reference -- the full model with layers temporarily
removed by `layerprune.pruning.surgery.layers_removed` (the very surgery `prune` does); both
paths agree to float rounding (tested).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from layerprune.models.checkpoints import decoder_layers
from layerprune.pruning.surgery import layers_removed

# ------------------------------------------------------------ calibration batches


@dataclass
class CalibrationBatch:
    """One tokenized batch and the targets of its next-token NLL."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor  # counted over real tokens, so left and right padding agree
    valid: torch.Tensor  # (B, T-1) bool: position t predicts token t+1 and both are real tokens
    labels: torch.Tensor  # the predicted tokens at the valid positions, flattened

    def model_inputs(self) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
            "use_cache": False,
        }


def encode_batch(tokenizer, texts: list[str], max_length: int, device) -> CalibrationBatch:
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    input_ids = enc["input_ids"].to(device)
    attention_mask = enc["attention_mask"].to(device)
    real = attention_mask.bool()
    valid = real[:, :-1] & real[:, 1:]
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return CalibrationBatch(input_ids, attention_mask, position_ids, valid, input_ids[:, 1:][valid])


def encode_calibration(
    tokenizer, texts: list[str], max_length: int, batch_size: int, chunk_size: int | None, device
) -> tuple[list[list[CalibrationBatch]], int]:
    """Split `texts` into chunks of `chunk_size` texts (None: one chunk), each into batches.

    Returns the chunks and N, the number of predicted tokens.
    """
    if not texts:
        raise ValueError("no calibration texts")
    if chunk_size is None or chunk_size >= len(texts):
        chunk_size = len(texts)
    if chunk_size < 1 or batch_size < 1:
        raise ValueError(f"chunk_size and batch_size must be positive, got {chunk_size} and {batch_size}")
    batch_size = min(batch_size, chunk_size)
    chunks = []
    for start in range(0, len(texts), chunk_size):
        chunk = texts[start : start + chunk_size]
        chunks.append(
            [
                encode_batch(tokenizer, chunk[b : b + batch_size], max_length, device)
                for b in range(0, len(chunk), batch_size)
            ]
        )
    tokens = sum(batch.labels.numel() for chunk in chunks for batch in chunk)
    if tokens == 0:
        raise ValueError("the calibration texts give no token to predict (each needs at least two tokens)")
    return chunks, tokens


def _device(model) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------------ the loss


def _tensor_of(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The model's logits from the raw output of its last decoder layer: final norm, LM head, softcap."""
    logits = model.get_output_embeddings()(model.model.norm(hidden))
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def nll_from_logits(logits: torch.Tensor, batch: CalibrationBatch) -> torch.Tensor:
    """Σ -log p(next token) over the valid positions (a scalar tensor)."""
    return F.cross_entropy(logits[:, :-1][batch.valid].float(), batch.labels, reduction="sum")


def nll_from_hidden(model, hidden: torch.Tensor, batch: CalibrationBatch) -> torch.Tensor:
    """`nll_from_logits` from the last layer's raw output, with the head on the valid positions only."""
    logits = head_logits(model, hidden[:, :-1][batch.valid])
    return F.cross_entropy(logits.float(), batch.labels, reduction="sum")


@torch.no_grad()
def check_head(model, batch: CalibrationBatch) -> None:
    """Refuse models whose logits are not `head_logits` of the last layer (e.g. extra logit scaling)."""
    layers = decoder_layers(model)
    row = int(batch.attention_mask.sum(-1).argmax())
    ids = batch.input_ids[row][batch.attention_mask[row].bool()][:16].unsqueeze(0)
    captured: dict[str, torch.Tensor] = {}
    handle = layers[-1].register_forward_hook(lambda module, args, output: captured.update(h=_tensor_of(output)))
    try:
        logits = model(input_ids=ids, use_cache=False).logits.float()
    finally:
        handle.remove()
    mine = head_logits(model, captured["h"]).float()
    scale = float(logits.abs().max()) or 1.0
    if not torch.allclose(mine, logits, rtol=1e-3, atol=1e-3 * scale):
        raise NotImplementedError(
            f"{type(model).__name__}: its logits are not final norm -> output embeddings (-> softcap) of the last "
            "decoder layer's output, so calibration-loss scoring cannot reuse layer prefixes for it"
        )


# ------------------------------------------------------------- naive path


def without_layers(model, removed: Iterable[int]) -> AbstractContextManager[dict[str, Any]]:
    """Temporarily drop decoder layers `removed`: the naive reference for every score here.

    `layerprune.pruning.surgery.layers_removed`: the layers go exactly as `prune` removes them
    (layer list, `layer_idx`, per-layer config lists), so hybrid layers keep their own
    attention kind, and everything is restored on exit, also after an exception.
    """
    return layers_removed(model, removed)


@torch.no_grad()
def scan_naive(
    model, chunks: list[list[CalibrationBatch]], removed: Sequence[int], candidates: Sequence[int]
) -> dict[int, float]:
    """Σ NLL without `removed` ∪ {c}, for each candidate c: one full forward per candidate and batch."""
    totals = {}
    for candidate in candidates:
        total = 0.0
        with without_layers(model, [*removed, candidate]):
            for chunk in chunks:
                for batch in chunk:
                    total += float(nll_from_logits(model(**batch.model_inputs()).logits, batch))
        totals[candidate] = total
    return totals


# ------------------------------------------------------------ prefix reuse


def _passthrough(hidden_states, *args, **kwargs):
    return hidden_states


@dataclass
class Prefix:
    """One batch's recorded layer inputs under a removed set, and every layer's keyword arguments."""

    batch: CalibrationBatch
    inputs: dict[int, torch.Tensor]  # input of each kept layer up to the top candidate
    kwargs: list[dict[str, Any]]  # per layer index, as the model passed them


@torch.no_grad()
def capture_prefix(model, batch: CalibrationBatch, kept: Sequence[int], top: int) -> Prefix:
    """One forward of ``model.model`` in which only the kept layers below `top` run.

    Every other layer passes its input through unchanged (its ``forward`` is shadowed
    for the call), so the pre-hooks still see each layer's keyword arguments and the
    input of every kept layer up to `top` is the one it has with the other layers removed.
    """
    layers = decoder_layers(model)
    runs = {index for index in kept if index < top}
    inputs: dict[int, torch.Tensor] = {}
    kwargs: list[dict[str, Any]] = [{} for _ in layers]

    def record(index: int):
        def hook(module, args, kw):
            if len(args) > 1:
                raise NotImplementedError(f"{type(module).__name__} takes positional arguments besides hidden_states")
            inputs[index] = args[0] if args else kw["hidden_states"]
            kwargs[index] = {key: value for key, value in kw.items() if key != "hidden_states"}

        return hook

    def check_output(module, args, output):
        if not isinstance(output, torch.Tensor):
            raise NotImplementedError(f"{type(module).__name__} returns {type(output).__name__}, not a tensor")

    handles, shadowed = [], []
    try:
        for index, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(record(index), with_kwargs=True))
            if index in runs:
                handles.append(layer.register_forward_hook(check_output))
            else:
                shadowed.append((layer, layer.__dict__.get("forward")))
                layer.forward = _passthrough
        model.model(**batch.model_inputs())
    finally:
        for handle in handles:
            handle.remove()
        for layer, own_forward in shadowed:
            if own_forward is None:
                del layer.forward
            else:
                layer.forward = own_forward
    return Prefix(batch, {index: inputs[index] for index in kept if index <= top}, kwargs)


@torch.no_grad()
def run_layers(model, prefix: Prefix, hidden: torch.Tensor, indices: Iterable[int]) -> torch.Tensor:
    layers = decoder_layers(model)
    for index in indices:
        hidden = _tensor_of(layers[index](hidden, **prefix.kwargs[index]))
    return hidden


@torch.no_grad()
def advance_prefix(model, prefix: Prefix, removed: int, kept: Sequence[int], top: int) -> None:
    """Update `prefix` after layer `removed` leaves the model (`kept` no longer holds it).

    Inputs below `removed` stay valid; those of the kept layers above it, up to `top`,
    are recomputed from the input `removed` had.
    """
    hidden = prefix.inputs.pop(removed)
    for index in [index for index in kept if removed < index <= top]:
        prefix.inputs[index] = hidden
        if index < top:
            hidden = run_layers(model, prefix, hidden, [index])
    for index in [index for index in prefix.inputs if index > top]:
        del prefix.inputs[index]


@torch.no_grad()
def scan_reused(
    model,
    chunks: list[list[CalibrationBatch]],
    removed: Sequence[int],
    candidates: Sequence[int],
    prefixes: list[Prefix] | None = None,
) -> dict[int, float]:
    """`scan_naive` with prefix reuse: per batch one capture, then only the kept layers above each candidate.

    `prefixes` (for a single chunk) are already captured under `removed` and reused as they are.
    """
    if prefixes is not None and len(chunks) != 1:
        raise ValueError("captured prefixes can only stand in for a single chunk")
    num_layers = len(decoder_layers(model))
    kept = [index for index in range(num_layers) if index not in set(removed)]
    top = max(candidates)
    totals = dict.fromkeys(candidates, 0.0)
    for chunk in chunks:
        chunk_prefixes = prefixes if prefixes is not None else [capture_prefix(model, b, kept, top) for b in chunk]
        for prefix in chunk_prefixes:
            for candidate in candidates:
                above = [index for index in kept if index > candidate]
                hidden = run_layers(model, prefix, prefix.inputs[candidate], above)
                totals[candidate] += float(nll_from_hidden(model, hidden, prefix.batch))
    return totals


# ----------------------------------------------------------------- methods


def ppl_scores(
    model,
    tokenizer,
    texts: list[str],
    max_length: int = 256,
    batch_size: int = 8,
    chunk_size: int | None = None,
    reuse: bool = True,
) -> list[float]:
    """Shortened LLaMA's one-shot PPL criterion (Kim et al., 2024, "Shortened LLaMA: Depth
    Pruning for Large Language Models with Simple Methods", arXiv:2402.02834).

    score_l = PPL(model without block l) = exp(-(1/N) Σ_t log p_{-l}(x_{t+1} | x_{≤t}))
    on the calibration set; a higher PPL means block l matters more, so the blocks whose
    removal gives the lowest PPL go first (one shot: each block is removed on its own).
    """
    chunks, tokens = encode_calibration(tokenizer, texts, max_length, batch_size, chunk_size, _device(model))
    candidates = list(range(len(decoder_layers(model))))
    if reuse:
        check_head(model, chunks[0][0])
        totals = scan_reused(model, chunks, [], candidates)
    else:
        totals = scan_naive(model, chunks, [], candidates)
    return [math.exp(totals[layer] / tokens) for layer in candidates]


def taylor_scores(model, tokenizer, texts: list[str], max_length: int = 256, batch_size: int = 8) -> list[float]:
    """Shortened LLaMA's Taylor criterion (Kim et al., 2024, arXiv:2402.02834, after LLM-Pruner).

    score_n = Σ_k Σ_{i,j} |W^{k,n}_{ij} · ∂L/∂W^{k,n}_{ij}| over the weight matrices W^{k,n}
    of block n's linear layers (q, k, v, o, gate, up, down), with L the mean NLL over the
    whole calibration set: gradients of every batch's Σ NLL / N are accumulated before the
    absolute value is taken. The first-order estimate of the loss change when the weights
    are zeroed; the lowest scores go first.
    """
    layers = decoder_layers(model)
    chunks, tokens = encode_calibration(tokenizer, texts, max_length, batch_size, None, _device(model))
    weights = [[m.weight for m in layer.modules() if isinstance(m, torch.nn.Linear)] for layer in layers]
    scored = {id(weight) for block in weights for weight in block}
    saved = [(param, param.requires_grad, param.grad) for param in model.parameters()]
    try:
        for param, _, _ in saved:
            param.requires_grad_(id(param) in scored)
            param.grad = None
        with torch.enable_grad():
            for batch in tqdm(chunks[0], desc="taylor batches", unit="batch"):
                loss = nll_from_logits(model(**batch.model_inputs()).logits, batch) / tokens
                loss.backward()
        return [
            float(sum((w.detach().double() * w.grad.double()).abs().sum() for w in block if w.grad is not None))
            for block in weights
        ]
    finally:
        for param, requires_grad, grad in saved:
            param.grad = grad
            param.requires_grad_(requires_grad)


def sleb_order(
    model,
    tokenizer,
    texts: list[str],
    max_length: int = 256,
    batch_size: int = 8,
    chunk_size: int | None = None,
    exclude_ends: bool = True,
    reuse: bool = True,
    max_rounds: int | None = None,
) -> tuple[list[int], list[dict[str, Any]]]:
    """SLEB (Song et al., 2024, "SLEB: Streamlining LLMs through Redundancy Verification and
    Elimination of Transformer Blocks", arXiv:2402.09025): greedy iterative removal.

    With R_0 = ∅, round r removes b_r = argmin_{b ∉ R_r} NLL(model without R_r ∪ {b}) on the
    calibration set, R_{r+1} = R_r ∪ {b_r}; removal[k] = {b_0, ..., b_{k-1}}. With
    `exclude_ends` the first and last blocks are never candidates, so at most L - 2 blocks
    are removed; otherwise L - 1. Ties go to the later block.

    Prefix reuse per round: one capture of the kept blocks below the top candidate, then
    the kept blocks above each candidate. With a single chunk the captured inputs persist
    across rounds: after b_r leaves, only the inputs of the kept blocks above b_r are
    recomputed (`advance_prefix`).

    `max_rounds` stops the greedy search after that many removals (None: until the pool
    is exhausted): the first rounds are the expensive ones, but a pipeline that prunes at
    most k layers needs no more than k of the up to L - 1.

    Returns the removal order and, per round, the calibration PPL of every candidate.
    """
    num_layers = len(decoder_layers(model))
    if max_rounds is not None and max_rounds < 0:
        raise ValueError(f"max_rounds must be at least 0, got {max_rounds}")
    pool = list(range(1, num_layers - 1)) if exclude_ends else list(range(num_layers))
    chunks, tokens = encode_calibration(tokenizer, texts, max_length, batch_size, chunk_size, _device(model))
    if reuse and pool:
        check_head(model, chunks[0][0])
    persistent = reuse and len(chunks) == 1
    prefixes: list[Prefix] | None = None
    order: list[int] = []
    rounds: list[dict[str, Any]] = []
    num_rounds = min(len(pool), num_layers - 1, num_layers if max_rounds is None else max_rounds)
    for _ in tqdm(range(num_rounds), desc="sleb rounds", unit="round"):
        candidates = [layer for layer in pool if layer not in order]
        kept = [layer for layer in range(num_layers) if layer not in order]
        if not reuse:
            totals = scan_naive(model, chunks, order, candidates)
        else:
            if persistent and prefixes is None:
                prefixes = [capture_prefix(model, batch, kept, max(candidates)) for batch in chunks[0]]
            totals = scan_reused(model, chunks, order, candidates, prefixes)
        best = min(candidates, key=lambda layer: (totals[layer], -layer))
        order.append(best)
        rounds.append({"removed": best, "ppl": {str(c): math.exp(totals[c] / tokens) for c in candidates}})
        remaining = [layer for layer in candidates if layer != best]
        if prefixes is not None and remaining:
            kept.remove(best)
            for prefix in prefixes:
                advance_prefix(model, prefix, best, kept, max(remaining))
    return order, rounds
