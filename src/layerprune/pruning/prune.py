"""Pruning a checkpoint: remove layers at a ratio, verify, and save a plain checkpoint.

The surgery itself lives in `layerprune.pruning.surgery` (the bottom layer, shared with
scoring). This module turns it into files, and checks before writing anything:

1. the pruned model's logits on a probe input equal those of the *dense* model with
   the removed layers bypassed by forward hooks (an independent computation: no
   config is rewritten, no layer renumbered, every kept layer sees what it sees in
   the pruned model);
2. the checkpoint as saved (config.json included) reloads with
   `AutoModelForCausalLM.from_pretrained` to the same logits;
3. decoding the reloaded checkpoint with the KV cache gives the logits of its uncached
   forward: teacher-forced on the probe tokens (never free-running generation, which
   in bf16 diverges at the first near-tie), in float32 (see `verify_cache`); where an
   architecture's cached path differs by itself, measured on the dense checkpoint, the
   pruned model may differ up to DENSE_GAP_FACTOR times as much.

Checks 1 and 2 compare the very same computation, so the tolerance is tight (float
rounding of the dtype); check 3 compares different computations and allows float32
summation-order noise (`cache_tolerance`).

A mismatch raises `PruneVerificationError` naming the architecture and what differed,
and the temporary directory is removed: nothing is left behind. See
docs/architectures.md for the families that are supported and refused.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from layerprune.io import atomic_path, read_json, write_json
from layerprune.models.checkpoints import load_checkpoint
from layerprune.pruning.surgery import (
    PER_LAYER_CONFIG_FIELDS,
    architecture,
    check_finite_scores,
    check_supported,
    layers_to_remove,
    refusal_reason,
    remove_layers,
)

__all__ = [
    "PER_LAYER_CONFIG_FIELDS",
    "PruneVerificationError",
    "check_supported",
    "logits_skipping_layers",
    "mergekit_config",
    "mergekit_model_reference",
    "mergekit_slices",
    "prune_checkpoint",
    "remove_layers",
    "teacher_forced_logits",
    "verify_cache",
    "cache_gap",
    "dense_cache_gap",
]

# ------------------------------------------------------------------ verification

PROBE_LENGTH = 24  # tokens per probe row: longer than the tiny test models' sliding windows
CACHED_PREFIX = 8  # probe tokens prefilled into the cache at once; the rest are fed one by one
CACHE_TOLERANCE_EPS = 1024  # see cache_tolerance
NO_TOKEN: list[int] = []  # no end-of-sequence token


class PruneVerificationError(RuntimeError):
    """A pruned model does not compute what the dense model with the layers skipped computes."""


def probe_ids(vocab_size: int, length: int = PROBE_LENGTH, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Fixed pseudo-random token ids, the same on every machine."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


def _vocab_size(model: torch.nn.Module) -> int:
    return int(model.get_input_embeddings().num_embeddings)


@torch.no_grad()
def _logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(input_ids=input_ids.to(device), use_cache=False).logits.float().cpu()


@torch.no_grad()
def logits_skipping_layers(model: torch.nn.Module, removed: Sequence[int], input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the unpruned `model` with the `removed` layers made identities by forward hooks.

    Each removed layer still runs, but its output is replaced by its input, so the kept
    layers see the hidden states, masks and positions that the dense model gives them.
    """
    layers = check_supported(model)

    def bypass(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handles = [layers[index].register_forward_hook(bypass, with_kwargs=True) for index in removed]
    try:
        return _logits(model, input_ids)
    finally:
        for handle in handles:
            handle.remove()


def _tolerance(model: torch.nn.Module) -> float:
    """Largest |difference| allowed, relative to max(1, max |logit|): float rounding only."""
    return 1e-4 if next(model.parameters()).dtype == torch.float32 else 3e-2


def _check_close(
    model: torch.nn.Module, what: str, got: torch.Tensor, expected: torch.Tensor, tolerance: float | None = None
) -> None:
    if got.shape != expected.shape:
        raise PruneVerificationError(
            f"{architecture(model)}: {what}: logits of shape {tuple(got.shape)} instead of {tuple(expected.shape)}; "
            "nothing was written"
        )
    scale = max(1.0, float(expected.abs().max()))
    difference = float((got - expected).abs().max())
    allowed = (_tolerance(model) if tolerance is None else tolerance) * scale
    if not difference <= allowed:  # also catches NaN
        raise PruneVerificationError(
            f"{architecture(model)}: {what}: max |logit difference| {difference:.3g} on a "
            f"{tuple(expected.shape[:2])} probe (allowed {allowed:.3g}); nothing was written"
        )


def cache_tolerance() -> float:
    """Largest |difference| allowed between cached and uncached float32 logits, relative to
    max(1, max |logit|): CACHE_TOLERANCE_EPS times float32's machine epsilon (1.2e-4).

    Measured on SmolLM2-135M (30 layers) pruned at every ratio 0.05-0.5: correct decoding
    differs by at most 86 eps (summation order of other matrix shapes); two layers sharing
    one `layer_idx` differ by about 10^6 eps.
    """
    return CACHE_TOLERANCE_EPS * torch.finfo(torch.float32).eps


class _ForceTokens:
    """A logits processor that makes greedy decoding emit the given tokens (teacher forcing)."""

    def __init__(self, targets: torch.Tensor, prompt_length: int) -> None:
        self.targets, self.prompt_length = targets, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        target = self.targets[:, input_ids.shape[1] - self.prompt_length].to(scores.device)
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(1, target[:, None], 0.0)


@torch.no_grad()
def teacher_forced_logits(model: torch.nn.Module, input_ids: torch.Tensor, prefix: int) -> tuple[torch.Tensor, ...]:
    """(uncached, cached) float logits that predict tokens `prefix`.. of `input_ids`, teacher-forced.

    Both come from `generate` on the first `prefix` tokens (so every family gets the cache and the
    inputs it expects, hybrid recurrent state included), with a logits processor that forces the
    probe's own next token at every step; `output_logits` returns the logits before it. With the
    cache, each step feeds one token; without, the whole sequence so far. The same tokens both
    ways, so the two differ by rounding only; free-running generation would diverge at the first
    near-tie, and after it compare different sequences.
    """
    from transformers import LogitsProcessorList

    device = next(model.parameters()).device
    ids = input_ids.to(device)
    steps = ids.shape[1] - prefix
    runs = []
    for use_cache in (False, True):
        out = model.generate(
            ids[:, :prefix],
            attention_mask=torch.ones_like(ids[:, :prefix]),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=NO_TOKEN,  # a probe token equal to EOS must not end the sequence
            use_cache=use_cache,
            logits_processor=LogitsProcessorList([_ForceTokens(ids[:, prefix:], prefix)]),
            return_dict_in_generate=True,
            output_logits=True,
        )
        if not torch.equal(out.sequences, ids):  # the forcing itself failed: nothing to compare
            raise RuntimeError("teacher forcing did not reproduce the probe tokens")
        runs.append(torch.stack(out.logits, dim=1).float().cpu())
    return runs[0], runs[1]


# The dense model's own cached/uncached gap (relative to its logit scale) that a pruned model may show: some
# architectures' cached path computes in another order (nemotron_h's Mamba-2 mixers: 12 x cache_tolerance on
# the dense tiny model), and the pruning must not be blamed for that. Up to DENSE_GAP_FACTOR times the dense
# model's own gap is allowed, while that gap stays below DENSE_GAP_CEILING x cache_tolerance: beyond it the
# architecture's cache is inconsistent by itself and the check could not see a broken layer_idx (~10^6 eps).
DENSE_GAP_FACTOR = 4
DENSE_GAP_CEILING = 100


@torch.no_grad()
def cache_gap(model: torch.nn.Module, input_ids: torch.Tensor, what: str) -> tuple[float, float]:
    """(max |cached - uncached logit|, max(1, max |logit|)) of `model`, teacher-forced, in float32.

    Runs in float32: the check is about structure (each layer reading and writing its own cache slot:
    `layer_idx`), and a bf16 model's rounding differs between a one-token step and a whole-sequence forward by
    up to 12x bf16's epsilon times the logit scale on SmolLM2, with the weights untouched. bf16 and fp16 weights
    are exactly representable in float32, so the model is cast in place and cast back afterwards, unchanged.
    """
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        model.float()
    try:
        uncached, cached = teacher_forced_logits(model, input_ids, min(CACHED_PREFIX, input_ids.shape[1] - 1))
    except Exception as error:
        raise PruneVerificationError(
            f"{architecture(model)}: {what}: decoding with the cache fails: {type(error).__name__}: "
            f"{error}; nothing was written"
        ) from error
    finally:
        if dtype != torch.float32:
            model.to(dtype)
    if cached.shape != uncached.shape:
        raise PruneVerificationError(
            f"{architecture(model)}: {what}: cached logits of shape {tuple(cached.shape)} instead of "
            f"{tuple(uncached.shape)}; nothing was written"
        )
    return float((cached - uncached).abs().max()), max(1.0, float(uncached.abs().max()))


@torch.no_grad()
def verify_cache(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    what: str,
    dense_gap: float | Callable[[], float] | None = None,
) -> None:
    """Decoding with the cache must give the logits of the uncached forward, teacher-forced (`cache_gap`).

    Allowed: cache_tolerance() times the logit scale; where the model exceeds it and `dense_gap` is given (the
    dense model's own relative gap, or a function that measures it: called only then), up to DENSE_GAP_FACTOR
    times that gap, so that an architecture's own cached numerics are not blamed on the pruning. A dense gap
    beyond DENSE_GAP_CEILING x cache_tolerance() is refused: such a cache cannot show a pruning error.
    """
    difference, scale = cache_gap(model, input_ids, what)
    allowed = cache_tolerance() * scale
    detail = ""
    if not difference <= allowed and dense_gap is not None:
        own = dense_gap() if callable(dense_gap) else dense_gap
        if not own <= DENSE_GAP_CEILING * cache_tolerance():
            raise PruneVerificationError(
                f"{architecture(model)}: {what}: cached and uncached logits differ by {difference:.3g}, and the "
                f"dense model's own differ by {own:.3g} of its logit scale (over {DENSE_GAP_CEILING} x the "
                f"tolerance {cache_tolerance():.3g}): its cache is inconsistent by itself, so the check cannot "
                "tell a pruning error from it; nothing was written"
            )
        allowed = max(allowed, DENSE_GAP_FACTOR * own * scale)
        detail = f"; the dense model's own gap is {own * scale:.3g} at this scale"
    if not difference <= allowed:  # also catches NaN
        raise PruneVerificationError(
            f"{architecture(model)}: {what}: teacher-forced decoding with the cache vs without: max |logit "
            f"difference| {difference:.3g} on a {tuple(input_ids.shape[:2])} probe (allowed {allowed:.3g}"
            f"{detail}); nothing was written"
        )


def dense_cache_gap(model_dir: str | Path, dtype: str, input_ids: torch.Tensor) -> float:
    """The dense checkpoint's own cached/uncached gap, relative to its logit scale (`cache_gap`), loaded afresh."""
    model, _ = load_checkpoint(model_dir, dtype=dtype, device="cpu")
    try:
        difference, scale = cache_gap(model, input_ids, "the dense model")
    finally:
        del model
        gc.collect()
    return difference / scale


def _run(model: torch.nn.Module, input_ids: torch.Tensor, what: str) -> torch.Tensor:
    try:
        return _logits(model, input_ids)
    except Exception as error:
        raise PruneVerificationError(
            f"{architecture(model)}: {what} fails to run: {type(error).__name__}: {error}; nothing was written"
        ) from error


# ------------------------------------------------------------------ mergekit


def mergekit_slices(kept_layers: Sequence[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive kept layers as mergekit `layer_range`s [start, end), end exclusive."""
    kept = list(kept_layers)
    if not kept or kept != sorted(set(kept)) or kept[0] < 0:
        raise ValueError(f"kept layers must be distinct, ascending and non-negative, got {kept}")
    slices: list[tuple[int, int]] = []
    for layer in kept:
        if slices and slices[-1][1] == layer:
            slices[-1] = (slices[-1][0], layer + 1)
        else:
            slices.append((layer, layer + 1))
    return slices


def mergekit_model_reference(source: dict[str, Any], model_dir: str | Path) -> str:
    """How mergekit should name the unpruned model.

    A hub model is `id` or `id@revision`; a local checkpoint is its path. mergekit
    cannot read GGUF, so a packaged GGUF is named by the dense checkpoint it was
    materialized into (`model_dir`).
    """
    if "hub" in source:
        revision = source.get("revision", "main")
        return source["hub"] if revision in (None, "main") else f"{source['hub']}@{revision}"
    if "path" in source:
        return str(source["path"])
    return str(Path(model_dir).resolve())


def mergekit_config(model: str, kept_layers: Sequence[int], dtype: str | None = None) -> dict[str, Any]:
    """A mergekit `passthrough` config that builds the same layer stack from `model`."""
    config: dict[str, Any] = {"merge_method": "passthrough"}
    if dtype:
        config["dtype"] = dtype
    config["slices"] = [
        {"sources": [{"model": model, "layer_range": [start, end]}]} for start, end in mergekit_slices(kept_layers)
    ]
    return config


def _checkpoint_dtype(model_dir: str | Path) -> str | None:
    """The dtype a checkpoint's config.json declares (`dtype`, or the older `torch_dtype`)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype")
    return str(dtype) if dtype else None


def _mergekit_yaml(config: dict[str, Any], removed: list[int], sliced_fields: list[str]) -> str:
    header = (
        "# mergekit passthrough config equivalent to this pruned checkpoint (removed layers "
        f"{removed}).\n# Rebuild it with: mergekit-yaml mergekit.yaml OUTPUT_DIR\n"
    )
    if sliced_fields:
        # Checked with mergekit 0.1.5: it sets num_hidden_layers but copies per-layer lists whole,
        # and transformers then refuses the config (num_hidden_layers != len(layer_types)).
        header += (
            f"# Note: mergekit does not slice per-layer config lists ({', '.join(sliced_fields)}); give its\n"
            "# output this checkpoint's config.json, or the model gets the wrong attention pattern.\n"
        )
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None)


# ---------------------------------------------------------- prune_checkpoint


def prune_checkpoint(
    model_dir: str | Path, scores_path: str | Path, ratio: float, out_dir: str | Path, dtype: str = "auto"
) -> dict[str, Any]:
    """Prune the checkpoint in `model_dir` at `ratio` with the removal set in `scores_path`.

    Writes the pruned checkpoint, `pruning.json` (what was done, with which scores,
    to which model) and `mergekit.yaml` (the same pruning as a mergekit config).
    Nothing is written unless the surgery succeeds and passes the checks in the module docstring.
    """
    from transformers import AutoModelForCausalLM

    scores = read_json(scores_path)
    check_finite_scores(scores, source=str(scores_path))
    removed = layers_to_remove(scores, ratio)
    config_file = Path(model_dir) / "config.json"
    if config_file.is_file():  # refuse before spending the load on an architecture the surgery cannot do
        reason = refusal_reason(read_json(config_file))
        if reason is not None:
            raise NotImplementedError(f"{model_dir}: {reason}")
    if dtype == "auto":  # prune runs on the CPU: keep the checkpoint's dtype rather than auto's float32
        dtype = _checkpoint_dtype(model_dir) or "float32"
    model, tokenizer = load_checkpoint(model_dir, dtype=dtype, device="cpu")
    num_layers = len(check_supported(model))
    if num_layers != scores["num_layers"]:
        raise ValueError(f"{scores_path} scores {scores['num_layers']} layers but {model_dir} has {num_layers}")

    ids = probe_ids(_vocab_size(model))
    expected = logits_skipping_layers(model, removed, ids)
    change = remove_layers(model, removed)
    if change["unexpressible_config_fields"]:
        reasons = "; ".join(change["unexpressible_config_fields"].values())
        raise NotImplementedError(
            f"{architecture(model)}: removing layers {removed} leaves a config that contradicts itself ({reasons}); "
            "choose a removal set that keeps the pattern, or another ratio; nothing was written"
        )
    pruned = _run(model, ids, "the pruned model")
    _check_close(model, "the pruned model vs the dense model with the removed layers skipped", pruned, expected)

    source_file = Path(model_dir) / "source.json"
    source = read_json(source_file) if source_file.is_file() else {"path": str(Path(model_dir).resolve())}
    record = {
        "source": source,
        "dense_checkpoint": str(Path(model_dir).resolve()),
        "method": scores["method"],
        "settings": scores.get("settings"),
        "calibration_sha256": scores.get("calibration_sha256"),
        "ratio": ratio,
        "removed_layers": removed,
        **{key: value for key, value in change.items() if key != "unexpressible_config_fields"},
        "num_layers_after": len(change["kept_layers"]),
    }
    model_dtype = next(model.parameters()).dtype
    # the dtype the checkpoint is written in, so that mergekit builds the same files
    merge = mergekit_config(
        mergekit_model_reference(source, model_dir), change["kept_layers"], str(model_dtype).removeprefix("torch.")
    )
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # Only the files are checked from here on: free the in-memory model before loading them.
        arch = architecture(model)
        del model
        gc.collect()
        try:
            reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=model_dtype).eval()
        except Exception as error:
            raise PruneVerificationError(
                f"{arch}: the saved checkpoint does not load: {type(error).__name__}: {error}; nothing was written"
            ) from error
        what = "the saved checkpoint, reloaded,"
        _check_close(reloaded, f"{what} vs the pruned model", _run(reloaded, ids, what), pruned)
        # measured on the dense checkpoint only when the pruned one exceeds the tolerance (a second load)
        verify_cache(reloaded, ids, what, dense_gap=lambda: dense_cache_gap(model_dir, dtype, ids))
        del reloaded
        write_json(tmp / "pruning.json", record)
        (tmp / "mergekit.yaml").write_text(_mergekit_yaml(merge, removed, change["sliced_config_fields"]))
    return record
