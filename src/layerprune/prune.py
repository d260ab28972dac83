"""Layer surgery: remove decoder layers in place and save a plain checkpoint.

The model is not rebuilt from a shallower config: that can silently give hybrid
models (Gemma 2/3, sliding-window Qwen) the wrong attention pattern. Instead the
kept layers are taken as they are, each layer's `layer_idx` (which selects its KV
cache slot) is renumbered, and every per-layer config list (`layer_types`, ...)
is sliced by the kept indices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from layerprune.io import atomic_path, read_json, write_json
from layerprune.models import decoder_layers, load_checkpoint

# Config fields that mean "mixture of experts" when set; the surgery does not
# cover expert routing tables, so such models are refused rather than half-pruned.
# Config lists with one entry per decoder layer. Only these are sliced: other
# lists may have L entries by coincidence (e.g. several eos_token_ids).
PER_LAYER_CONFIG_FIELDS = ("layer_types", "no_rope_layers")

_MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def _check_supported(model) -> None:
    config = model.config
    for field in _MOE_FIELDS:
        if getattr(config, field, None):
            raise NotImplementedError(
                f"{type(model).__name__} (model_type '{config.model_type}') is a mixture-of-experts "
                f"model ({field}={getattr(config, field)}); layer pruning does not support it yet"
            )


def remove_layers(model, removed: list[int]) -> dict[str, Any]:
    """Remove `removed` decoder layers from `model` in place; return what changed."""
    _check_supported(model)
    layers = decoder_layers(model)
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
    sliced = []
    config = model.config
    for key in PER_LAYER_CONFIG_FIELDS:
        value = getattr(config, key, None)
        if isinstance(value, (list, tuple)) and len(value) == num_layers:
            setattr(config, key, type(value)(value[i] for i in kept))
            sliced.append(key)
    config.num_hidden_layers = len(kept)
    return {"num_layers_before": num_layers, "kept_layers": kept, "sliced_config_fields": sliced}


def prune_checkpoint(
    model_dir: str | Path, scores_path: str | Path, ratio: float, out_dir: str | Path, dtype: str = "auto"
) -> dict[str, Any]:
    """Prune the checkpoint in `model_dir` at `ratio` with the removal set in `scores_path`."""
    from layerprune.score import layers_to_remove

    scores = read_json(scores_path)
    removed = layers_to_remove(scores, ratio)
    model, tokenizer = load_checkpoint(model_dir, dtype=dtype, device="cpu")
    num_layers = len(decoder_layers(model))
    if num_layers != scores["num_layers"]:
        raise ValueError(f"{scores_path} scores {scores['num_layers']} layers but {model_dir} has {num_layers}")
    change = remove_layers(model, removed)
    source_file = Path(model_dir) / "source.json"
    record = {
        "source": read_json(source_file) if source_file.is_file() else {"path": str(Path(model_dir).resolve())},
        "method": scores["method"],
        "ratio": ratio,
        "removed_layers": removed,
        **change,
        "num_layers_after": len(change["kept_layers"]),
    }
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "pruning.json", record)
    return record
