"""Layer surgery, the bottom layer: which architectures can lose decoder layers, how
to remove them (for good, or for the length of a `with` block), and how a pruning
ratio becomes a number of layers.

Scoring (`layerprune.scoring.score`, `layerprune.scoring.ablation`, `layerprune.scoring.iterative`) and
pruning (`layerprune.pruning.prune`) all build on this module; it imports nothing from
layerprune but the decoder-layer lookup in `layerprune.models.checkpoints`.

The surgery (see docs/architectures.md for the families it supports and refuses):

* the kept layers are taken as they are, in order, and every module's `layer_idx`
  (which selects its KV cache slot) is renumbered. Rebuilding from a shallower config
  instead can silently give a hybrid model (Gemma 2/3, sliding-window Qwen) the wrong
  attention pattern;
* every per-layer config list (`layer_types`, ...) is sliced by the kept indices;
* config fields that describe the layer pattern in another form are rewritten to
  describe the sliced pattern: counts (`max_window_layers`), index lists
  (`full_attn_idxs`, `attn_layer_indices`), cyclic patterns (`block_types`) and
  periods (`sliding_window_pattern`, `no_rope_layer_interval`); a period that no
  value can express is listed in `unexpressible_config_fields`;
* a per-layer field that the config derives read-only from other fields (Bamba's
  `layers_block_type`, ...) must come out equal to the sliced list, or the model
  is refused before anything changes.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from layerprune.models.checkpoints import decoder_layers

# Config lists with one entry per decoder layer, sliced by the kept indices. Only these
# are sliced: other lists may have L entries by coincidence (e.g. several eos_token_ids).
#   layer_types                  attention kind per layer (Gemma2/3, Qwen2/3, Mistral-family hybrids, ...)
#   layers_block_type            the same under its older name (Zamba2 stores it; Bamba derives it)
#   no_rope_layers               1/0 per layer: whether the layer applies RoPE (SmolLM3)
#   layer_rope_theta             RoPE base per layer, 0 = no RoPE (GraniteSWA)
#   mlp_layer_types              dense/sparse MLP per layer (hybrid MoE configs; refused, listed for completeness)
#   intermediate_size            MLP width per layer, when it is a list (Gemma3n; refused for other reasons)
#   activation_sparsity_pattern  per-layer MLP sparsity (Gemma3n)
PER_LAYER_CONFIG_FIELDS = (
    "layer_types",
    "layers_block_type",
    "no_rope_layers",
    "layer_rope_theta",
    "mlp_layer_types",
    "intermediate_size",
    "activation_sparsity_pattern",
)

# Config integers that count a leading run of layers. Qwen2/Qwen3's `max_window_layers`:
# layers below it use full attention when `layer_types` is derived from the config. It
# becomes the number of kept layers below it, which reproduces the sliced `layer_types`
# whenever the original followed it.
LAYER_COUNT_CONFIG_FIELDS = ("max_window_layers",)

# Config lists of layer indices (the layers of one kind), renumbered to the kept layers.
#   full_attn_idxs      LFM2: the attention layers (the others are short convolutions)
#   attn_layer_indices  Bamba: the attention layers (the others are Mamba-2 mixers)
LAYER_INDEX_CONFIG_FIELDS = ("full_attn_idxs", "attn_layer_indices")

# Config fields that mean "mixture of experts" when set; the surgery does not
# cover expert routing tables, so such models are refused rather than half-pruned.
MOE_CONFIG_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")

# Families whose layers depend on state outside `model.model.layers` that the surgery
# does not rewrite; pruning them the generic way writes a checkpoint that cannot run
# or computes something else, so they are refused before anything is loaded or written.
REFUSED_MODEL_TYPES = {
    "gemma3n": "per-layer input embeddings (embed_tokens_per_layer holds one slice per decoder layer) and KV "
    "sharing (its last num_kv_shared_layers layers reuse the cache of earlier ones) are not pruned with the layers",
    "gemma3n_text": "per-layer input embeddings (embed_tokens_per_layer holds one slice per decoder layer) and KV "
    "sharing (its last num_kv_shared_layers layers reuse the cache of earlier ones) are not pruned with the layers",
    "zamba": "its shared attention block is applied at the hybrid layers through a shared-block map "
    "(attn_layer_offset/period) that removing layers makes stale",
    "zamba2": "its shared transformer blocks are applied at hybrid_layer_ids through a shared-block map "
    "that removing layers makes stale (the pruned checkpoint fails with KeyError)",
    "diffllama": "its differential attention derives lambda_init from each layer's index at construction, so a "
    "kept layer would compute differently once the pruned checkpoint is loaded",
}

# Config fields that, when positive, tie layers to state outside their own modules.
#   num_kv_shared_layers          the last layers reuse the KV cache of earlier ones (Gemma3n, Gemma 4)
#   hidden_size_per_layer_input   per-layer input embeddings, one slice per layer (Gemma3n, Gemma 4)
REFUSED_CONFIG_FIELDS = {
    "num_kv_shared_layers": "its last layers reuse the KV cache of earlier layers (KV sharing)",
    "hidden_size_per_layer_input": "it feeds every layer its own slice of per-layer input embeddings",
}

# Config fields that scale with depth, per model_type: MiniCPM3 multiplies each residual
# branch by scale_depth / sqrt(num_hidden_layers), so scale_depth is rescaled by
# sqrt(kept / before) to keep every kept layer's branch scale exactly as it was.
DEPTH_SCALED_CONFIG_FIELDS = {"minicpm3": "scale_depth"}


def architecture(model_or_config: Any) -> str:
    """`ClassName (model_type 'x')` of a model, or of a config (its first `architectures` entry), for messages."""
    if isinstance(model_or_config, torch.nn.Module):
        config, name = model_or_config.config, type(model_or_config).__name__
    else:
        config = model_or_config
        names = config.get("architectures") if isinstance(config, dict) else getattr(config, "architectures", None)
        name = names[0] if names else None
    model_type = config.get("model_type", "?") if isinstance(config, dict) else getattr(config, "model_type", "?")
    if not name:  # a config built in code names no architecture: the causal LM class transformers would build
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    return f"{name} (model_type '{model_type}')" if name else f"model_type '{model_type}'"


# ------------------------------------------------------------------ refusals


def _config_refusal(config: Any, described: str | None = None) -> str | None:
    """Why the config alone rules the surgery out (None: nothing in the config does); `described`
    names the architecture in the message (default: from the config)."""
    described = described or architecture(config)
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type in REFUSED_MODEL_TYPES:
        return f"{described} is not supported: {REFUSED_MODEL_TYPES[model_type]}"
    # Multimodal configs nest the language model's settings in text_config.
    text_config = config.get("text_config") if isinstance(config, dict) else getattr(config, "text_config", None)
    for scope in (config, text_config):
        for field, why in REFUSED_CONFIG_FIELDS.items():
            value = scope.get(field) if isinstance(scope, dict) else getattr(scope, field, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return f"{described} is not supported ({field}={value}): {why}, which layer pruning does not rewrite"
        for field in MOE_CONFIG_FIELDS:
            # getattr on a config object also follows its attribute_map (Mixtral: num_experts -> num_local_experts)
            value = scope.get(field) if isinstance(scope, dict) else getattr(scope, field, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return (
                    f"{described} is a mixture-of-experts model ({field}={value}); "
                    "layer pruning does not support it yet"
                )
    return None


def _module_refusal(model: torch.nn.Module) -> str | None:
    """Why the model's modules rule the surgery out: no decoder layers found, or expert modules."""
    try:
        layers = decoder_layers(model)
    except NotImplementedError as error:
        return str(error)
    # A config may name its experts differently; the modules do not lie.
    for module in layers.modules():
        if hasattr(module, "experts") or "expert" in type(module).__name__.lower():
            return (
                f"{architecture(model)} is a mixture-of-experts model ({type(module).__name__} in its "
                "decoder layers); layer pruning does not support it yet"
            )
    return None


def refusal_reason(config: Any) -> str | None:
    """Why layer surgery refuses the architecture of `config`; None when it supports it.

    `config` is a PretrainedConfig, the dict of a checkpoint's config.json, or the path of
    a checkpoint directory (or of its config.json). Cheap enough for plan time: the config
    is checked first, then the model is built on the meta device (no weights, no memory)
    to look for its decoder layers and expert modules. A config transformers cannot build
    at all gives None here: loading it fails later with transformers' own error.
    """
    from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, PretrainedConfig

    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        config = AutoConfig.from_pretrained(path.parent if path.name == "config.json" else path)
    reason = _config_refusal(config)
    if reason is not None:
        return reason
    try:
        if not isinstance(config, PretrainedConfig):
            # as from_pretrained reads config.json: special floats ({"__float__": "Infinity"}) decoded
            values = PretrainedConfig._decode_special_floats(dict(config))
            config = CONFIG_MAPPING[values["model_type"]].from_dict(values)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 -- any failure to build is reported by the real load, with its own message
        return None
    return _module_refusal(model)


def check_supported(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of `model`, or NotImplementedError naming the architecture and why not."""
    reason = _config_refusal(model.config, architecture(model)) or _module_refusal(model)
    if reason is not None:
        raise NotImplementedError(reason)
    return decoder_layers(model)


# ------------------------------------------------------------------ ratio -> k


def layers_for_ratio(ratio: float, num_layers: int) -> int:
    """k = round(r * L) layers for pruning ratio r, halves rounded up (Python's round() goes to even)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"pruning ratio must lie in (0, 1), got {ratio}")
    return math.floor(ratio * num_layers + 0.5)


def nonfinite_layers(scores: dict[str, Any]) -> list[int]:
    """The layers whose score in a scores record is NaN or infinite, ascending.

    Looks at the per-layer `scores`, the angular methods' `block_distances` (a block
    counts for each layer it spans) and the greedy methods' per-round candidate values
    (`rounds[*].ppl`, `rounds[*].retention`).
    """
    bad: set[int] = set()

    def finite(value: Any) -> bool:
        return value is None or (isinstance(value, (int, float)) and math.isfinite(value))

    for layer, value in enumerate(scores.get("scores") or []):
        if not finite(value):
            bad.add(layer)
    for size, per_start in (scores.get("block_distances") or {}).items():
        for start, value in enumerate(per_start):
            if not finite(value):
                bad.update(range(start, start + int(size)))
    for round_ in scores.get("rounds") or []:
        for key in ("ppl", "retention"):
            for layer, value in (round_.get(key) or {}).items():
                if not finite(value):
                    bad.add(int(layer))
    return sorted(bad)


def check_finite_scores(scores: dict[str, Any], source: str = "the scores") -> None:
    """ValueError naming the layers when any score is NaN or infinite (e.g. a checkpoint with NaN weights)."""
    bad = nonfinite_layers(scores)
    if bad:
        raise ValueError(
            f"{source} ({scores.get('method', '?')}) has NaN or infinite scores for layers {bad}: the model's "
            "activations are not finite there (NaN or inf weights?), so no removal set can be chosen from them"
        )


def layers_to_remove(scores: dict[str, Any], ratio: float) -> list[int]:
    """The removal set for pruning ratio r from a scores record: k = round(r * L) layers, halves rounded up."""
    check_finite_scores(scores)
    num_layers = scores["num_layers"]
    k = layers_for_ratio(ratio, num_layers)
    if k >= num_layers:
        raise ValueError(f"ratio {ratio} would remove all {num_layers} layers")
    if k == 0:
        raise ValueError(f"ratio {ratio} removes no layer of {num_layers} (round({ratio} * {num_layers}) = 0)")
    if str(k) not in scores["removal"]:
        largest = max(int(key) for key in scores["removal"])
        hint = "; score again with a larger --max-ratio" if scores["method"] in ("iterative", "sleb") else ""
        raise ValueError(
            f"ratio {ratio} removes {k} of {num_layers} layers, but these '{scores['method']}' scores only go up to "
            f"k = {largest}{hint}"
        )
    return scores["removal"][str(k)]


# ------------------------------------------------------------------ config rewriting


def _read_only(config: Any, key: str) -> bool:
    """Whether `key` (after the config's attribute_map) is a property without a setter."""
    resolved = getattr(config, "attribute_map", {}).get(key, key)
    attribute = getattr(type(config), resolved, None)
    return isinstance(attribute, property) and attribute.fset is None


def _period_pattern(key: str, period: int, num_layers: int) -> list[Any] | None:
    """The per-layer list a period field derives (None: not a period field this module knows)."""
    if key == "sliding_window_pattern":  # Exaone4: every `period`-th layer is full attention
        return ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(num_layers)]
    if key == "no_rope_layer_interval":  # SmolLM3: every `period`-th layer has no RoPE
        return [int((i + 1) % period != 0) for i in range(num_layers)]
    return None


# Period fields: (config field, the sliced per-layer list it must reproduce, may it be None).
PERIOD_CONFIG_FIELDS = (
    ("sliding_window_pattern", "layer_types", True),
    ("no_rope_layer_interval", "no_rope_layers", False),
)


def _rewrite_config(config: Any, kept: list[int], num_layers: int) -> dict[str, Any]:
    """Rewrite `config` (a copy) for the kept layers; return what changed."""
    sliced: list[str] = []
    expected_derived: dict[str, list[Any]] = {}
    seen: set[str] = set()
    for key in PER_LAYER_CONFIG_FIELDS:
        resolved = getattr(config, "attribute_map", {}).get(key, key)
        if resolved in seen:
            continue
        seen.add(resolved)
        value = getattr(config, key, None)
        if not isinstance(value, (list, tuple)) or len(value) != num_layers:
            continue
        new_value = type(value)(value[i] for i in kept)
        if _read_only(config, key):
            expected_derived[key] = list(new_value)  # checked once the fields it derives from are rewritten
        else:
            setattr(config, key, new_value)
            sliced.append(key)
    recounted: dict[str, list[Any]] = {}
    for key in LAYER_COUNT_CONFIG_FIELDS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            new_value = sum(1 for i in kept if i < value)
            setattr(config, key, new_value)
            recounted[key] = [value, new_value]
    for key in LAYER_INDEX_CONFIG_FIELDS:
        value = getattr(config, key, None)
        if isinstance(value, (list, tuple)) and all(isinstance(i, int) for i in value):
            members = set(value)
            new_value = [new for new, old in enumerate(kept) if old in members]
            setattr(config, key, new_value)
            recounted[key] = [list(value), new_value]
    # RecurrentGemma: layer kinds repeat `block_types` cyclically; the kept kinds, written out, repeat trivially.
    block_types = getattr(config, "block_types", None)
    if isinstance(block_types, (list, tuple)) and block_types:
        expanded = [block_types[i % len(block_types)] for i in range(num_layers)]
        new_value = [expanded[i] for i in kept]
        config.block_types = new_value
        recounted["block_types"] = [list(block_types), new_value]
    # Heterogeneous configs (transformers' per_layer_config, e.g. Gemma 4): overrides keyed by layer index.
    heterogeneity = config.__dict__.get("_heterogeneity_spec")
    if heterogeneity is not None:
        overrides = heterogeneity.per_layer_overrides
        new_overrides = {new: copy.deepcopy(overrides[old]) for new, old in enumerate(kept) if old in overrides}
        config.per_layer_config = new_overrides
        recounted["per_layer_config"] = [sorted(overrides), sorted(new_overrides)]
    scaled = DEPTH_SCALED_CONFIG_FIELDS.get(getattr(config, "model_type", None))
    if scaled is not None and isinstance(getattr(config, scaled, None), (int, float)):
        value = getattr(config, scaled)
        new_value = value * math.sqrt(len(kept) / num_layers)
        setattr(config, scaled, new_value)
        recounted[scaled] = [value, new_value]
    config.num_hidden_layers = len(kept)
    unexpressible: dict[str, str] = {}
    for key, target, nullable in PERIOD_CONFIG_FIELDS:
        period = getattr(config, key, None)
        pattern = getattr(config, target, None)
        if not isinstance(period, int) or isinstance(period, bool) or period <= 0 or not isinstance(pattern, list):
            continue
        # Smallest period that reproduces the sliced pattern; L + 1 means "no layer of the other kind".
        fitting = [p for p in range(1, len(kept) + 2) if _period_pattern(key, p, len(kept)) == list(pattern)]
        if period in fitting:
            continue
        if fitting:
            new_period = fitting[0]
        elif nullable:
            new_period = None  # the config then follows its explicit per-layer list alone
        else:
            unexpressible[key] = f"no {key} reproduces the kept layers' {target} {list(pattern)}"
            continue
        setattr(config, key, new_period)
        recounted[key] = [period, new_period]
    for key, expected in expected_derived.items():
        derived = list(getattr(config, key))
        if derived != expected:
            raise NotImplementedError(
                f"model_type '{getattr(config, 'model_type', '?')}' derives {key} from other config fields, and "
                f"after removing layers it gives {derived} instead of the kept layers' {expected}"
            )
    return {"sliced_config_fields": sliced, "recounted_config_fields": recounted, "unexpressible": unexpressible}


def _check_config(model: torch.nn.Module, config: Any, removed: list[int]) -> None:
    """NotImplementedError, naming the architecture and transformers' reason, when the rewritten config fails
    its class's own validation (which save_pretrained runs): e.g. OLMo-Hybrid refuses a config without an
    attention layer (StrictDataclassClassValidationError at saving, old code)."""
    validate = getattr(config, "validate", None)
    if not callable(validate):
        return
    try:
        validate()
    except Exception as error:  # noqa: BLE001 -- any validator's refusal, reported with its own words
        cause = error.__cause__ or error
        raise NotImplementedError(
            f"{architecture(model)}: removing layers {removed} leaves a config that transformers refuses "
            f"({type(cause).__name__}: {cause}); choose another removal set or ratio; nothing was changed"
        ) from error


def _configs_of(model: torch.nn.Module) -> list[Any]:
    """The distinct config objects the surgery rewrites: the model's and its inner model's."""
    candidates = [model.config, getattr(getattr(model, "model", None), "config", model.config)]
    return list({id(config): config for config in candidates}.values())


# ------------------------------------------------------------------ removal


def remove_layers(model: torch.nn.Module, removed: Iterable[int]) -> dict[str, Any]:
    """Remove the `removed` decoder layers from `model` in place, for good; return what changed.

    Raises (leaving the model untouched) for an unsupported architecture, invalid
    indices, or removing every layer. `unexpressible_config_fields` names period
    fields (e.g. SmolLM3's `no_rope_layer_interval`) that cannot describe the kept
    layers; the model computes correctly, but a saved config would contradict itself.
    """
    removed = list(removed)
    layers = check_supported(model)
    num_layers = len(layers)
    if len(set(removed)) != len(removed) or any(
        not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < num_layers for i in removed
    ):
        raise ValueError(f"invalid layer indices {removed} for a model with {num_layers} layers")
    if len(removed) >= num_layers:
        raise ValueError(f"cannot remove all {num_layers} layers")
    kept = [i for i in range(num_layers) if i not in set(removed)]
    # Rewrite copies first: a refusal must leave the model exactly as it was.
    rewritten = []
    changes = []
    for config in _configs_of(model):
        new_config = copy.deepcopy(config)
        changes.append(_rewrite_config(new_config, kept, num_layers))
        _check_config(model, new_config, removed)
        rewritten.append((config, new_config))
    change = changes[0]  # the model's own config; an inner model's config changes alike
    for config, new_config in rewritten:
        # In place, so every module holding this config object sees the new values.
        config.__dict__.clear()
        config.__dict__.update(new_config.__dict__)
    model.model.layers = torch.nn.ModuleList([layers[i] for i in kept])
    for new_index, layer in enumerate(model.model.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    return {
        "num_layers_before": num_layers,
        "kept_layers": kept,
        "sliced_config_fields": change["sliced_config_fields"],
        "recounted_config_fields": change["recounted_config_fields"],
        "unexpressible_config_fields": change["unexpressible"],
    }


@contextmanager
def layers_removed(model: torch.nn.Module, removed: Iterable[int]) -> Iterator[dict[str, Any]]:
    """Within the block, `model` lacks the `removed` layers exactly as a pruned checkpoint would
    (the same `remove_layers`); on exit, also after an exception, it is restored exactly:
    the layer list, every module's `layer_idx` and every config value."""
    layers = decoder_layers(model)
    layer_indices = [(module, module.layer_idx) for module in layers.modules() if hasattr(module, "layer_idx")]
    saved_configs = [(config, copy.deepcopy(config.__dict__)) for config in _configs_of(model)]
    try:
        yield remove_layers(model, removed)
    finally:
        model.model.layers = layers
        for module, index in layer_indices:
            module.layer_idx = index
        for config, values in saved_configs:
            config.__dict__.clear()
            config.__dict__.update(values)
