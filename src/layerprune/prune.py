"""Layer surgery: remove decoder layers in place and save a plain checkpoint.

The model is not rebuilt from a shallower config: that can silently give hybrid
models (Gemma 2/3, sliding-window Qwen) the wrong attention pattern. Instead the
kept layers are taken as they are, each layer's `layer_idx` (which selects its KV
cache slot) is renumbered, and every per-layer config list (`layer_types`, ...)
is sliced by the kept indices.

Tested families (tests/test_prune.py): Llama, Mistral, Qwen2, Qwen3, Gemma2,
Gemma3 (text), Phi3 and OLMo2. Any other causal LM with its decoder layers at
`model.model.layers` is handled the same way; models without them and
mixture-of-experts models are refused before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from layerprune.io import atomic_path, read_json, write_json
from layerprune.models import decoder_layers, load_checkpoint

# Config lists with one entry per decoder layer. Only these are sliced: other
# lists may have L entries by coincidence (e.g. several eos_token_ids).
#   layer_types      attention kind per layer (Gemma2/3, Qwen2/3, Mistral-family hybrids, ...)
#   no_rope_layers   1/0 per layer: whether the layer applies RoPE (SmolLM3)
#   layer_rope_theta RoPE base per layer, 0 = no RoPE (GraniteSWA)
#   mlp_layer_types  dense/sparse MLP per layer (hybrid MoE configs; refused today, listed for completeness)
PER_LAYER_CONFIG_FIELDS = ("layer_types", "no_rope_layers", "layer_rope_theta", "mlp_layer_types")

# Config integers that count a leading run of layers. Qwen2/Qwen3's `max_window_layers`:
# layers below it use full attention when `layer_types` is derived from the config.
# `layer_types` is authoritative once present, but a stale count would contradict it
# for any tool that re-derives the pattern; so it becomes the number of kept layers
# below it, which reproduces the sliced `layer_types` whenever the original followed it.
LAYER_COUNT_CONFIG_FIELDS = ("max_window_layers",)

# Config fields that mean "mixture of experts" when set; the surgery does not
# cover expert routing tables, so such models are refused rather than half-pruned.
_MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def _architecture(model) -> str:
    return f"{type(model).__name__} (model_type '{getattr(model.config, 'model_type', '?')}')"


def check_supported(model) -> torch.nn.ModuleList:
    """The decoder layers of `model`, or NotImplementedError naming the architecture."""
    layers = decoder_layers(model)
    config = model.config
    for field in _MOE_FIELDS:
        if getattr(config, field, None):
            raise NotImplementedError(
                f"{_architecture(model)} is a mixture-of-experts model ({field}={getattr(config, field)}); "
                f"layer pruning does not support it yet"
            )
    # A config may name its experts differently; the modules do not lie.
    for module in layers.modules():
        if hasattr(module, "experts") or "expert" in type(module).__name__.lower():
            raise NotImplementedError(
                f"{_architecture(model)} is a mixture-of-experts model ({type(module).__name__} in its "
                f"decoder layers); layer pruning does not support it yet"
            )
    return layers


def remove_layers(model, removed: list[int]) -> dict[str, Any]:
    """Remove `removed` decoder layers from `model` in place; return what changed."""
    layers = check_supported(model)
    num_layers = len(layers)
    if len(set(removed)) != len(removed) or any(not 0 <= i < num_layers for i in removed):
        raise ValueError(f"invalid layer indices {removed} for a model with {num_layers} layers")
    if len(removed) >= num_layers:
        raise ValueError(f"cannot remove all {num_layers} layers")
    kept = [i for i in range(num_layers) if i not in set(removed)]
    model.model.layers = torch.nn.ModuleList([layers[i] for i in kept])
    for new_index, layer in enumerate(model.model.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    sliced = []
    for key in PER_LAYER_CONFIG_FIELDS:
        value = getattr(config, key, None)
        if isinstance(value, (list, tuple)) and len(value) == num_layers:
            setattr(config, key, type(value)(value[i] for i in kept))
            sliced.append(key)
    recounted = {}
    for key in LAYER_COUNT_CONFIG_FIELDS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            new_value = sum(1 for i in kept if i < value)
            setattr(config, key, new_value)
            recounted[key] = [value, new_value]
    config.num_hidden_layers = len(kept)
    return {
        "num_layers_before": num_layers,
        "kept_layers": kept,
        "sliced_config_fields": sliced,
        "recounted_config_fields": recounted,
    }


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
    Nothing is written unless the whole surgery succeeds.
    """
    from layerprune.score import layers_to_remove

    scores = read_json(scores_path)
    removed = layers_to_remove(scores, ratio)
    model, tokenizer = load_checkpoint(model_dir, dtype=dtype, device="cpu")
    num_layers = len(check_supported(model))
    if num_layers != scores["num_layers"]:
        raise ValueError(f"{scores_path} scores {scores['num_layers']} layers but {model_dir} has {num_layers}")
    change = remove_layers(model, removed)
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
        **change,
        "num_layers_after": len(change["kept_layers"]),
    }
    merge = mergekit_config(
        mergekit_model_reference(source, model_dir), change["kept_layers"], _checkpoint_dtype(model_dir)
    )
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "pruning.json", record)
        (tmp / "mergekit.yaml").write_text(_mergekit_yaml(merge, removed, change["sliced_config_fields"]))
    return record
