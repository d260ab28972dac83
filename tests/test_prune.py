"""Layer surgery (`layerprune.prune`) on tiny random Llama, Qwen2, Mistral and Gemma3 models."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import FAMILIES, SLIDING_WINDOW, make_tiny_checkpoint, make_tiny_model, sample_ids
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from layerprune import prune
from layerprune.io import read_json, write_json
from layerprune.models import load_checkpoint
from layerprune.prune import prune_checkpoint, remove_layers
from layerprune.score import score_layers

pytestmark = pytest.mark.usefixtures("single_thread")

NUM_LAYERS = 6
REMOVED = [1, 3]
KEPT = [0, 2, 4, 5]
HYBRID = ("qwen2", "gemma3")


def _sliding_flags(family: str, config) -> list[bool]:
    """Which layers of an *unpruned* config use sliding-window attention."""
    if family == "llama":
        return [False] * config.num_hidden_layers
    if family == "mistral":
        return [True] * config.num_hidden_layers
    return [kind == "sliding_attention" for kind in config.layer_types]


def _manual_logits(model, input_ids: torch.Tensor, sliding: list[bool], window: int = SLIDING_WINDOW):
    """Logits computed by calling the decoder layers one by one with hand-built masks."""
    inner = model.model
    length = input_ids.shape[1]
    positions = torch.arange(length).unsqueeze(0)
    query, key = torch.arange(length)[:, None], torch.arange(length)[None, :]
    causal = key <= query
    windowed = causal & (query - key < window)
    hidden = inner.embed_tokens(input_ids)
    assert len(sliding) == len(inner.layers)
    for layer, is_sliding in zip(inner.layers, sliding, strict=True):
        if model.config.model_type == "gemma3_text":
            kind = "sliding_attention" if is_sliding else "full_attention"
            rotary = inner.rotary_emb(hidden, positions, kind)
        else:
            rotary = inner.rotary_emb(hidden, positions)
        mask = (windowed if is_sliding else causal)[None, None]
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions)
        if isinstance(hidden, tuple):
            hidden = hidden[0]
    return model.lm_head(inner.norm(hidden))


def _logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids, use_cache=False).logits


def _attentions(model):
    return [layer.self_attn for layer in model.model.layers]


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def test_remove_layers_reports_change_and_slices_config(family):
    model = make_tiny_model(family, NUM_LAYERS)
    original_types = copy.deepcopy(getattr(model.config, "layer_types", None))
    change = remove_layers(model, REMOVED)

    assert change["num_layers_before"] == NUM_LAYERS
    assert change["kept_layers"] == KEPT
    assert model.config.num_hidden_layers == len(KEPT)
    assert len(model.model.layers) == len(KEPT)
    if family in HYBRID:
        assert change["sliced_config_fields"] == ["layer_types"]
        assert model.config.layer_types == [original_types[i] for i in KEPT]
        # The test is only meaningful if slicing differs from keeping a prefix.
        assert model.config.layer_types != original_types[: len(KEPT)]
    else:
        assert change["sliced_config_fields"] == []


def test_kept_layers_are_original_modules_and_match_manual_forward(family):
    model = make_tiny_model(family, NUM_LAYERS)
    ids = sample_ids(12)
    original_layers = list(model.model.layers)
    flags = _sliding_flags(family, model.config)
    with torch.no_grad():
        # The reference forward must itself reproduce the unpruned model.
        torch.testing.assert_close(_manual_logits(model, ids, flags), _logits(model, ids), rtol=0, atol=1e-6)
        remove_layers(model, REMOVED)
        pruned_flags = [flags[i] for i in KEPT]
        expected = _manual_logits(model, ids, pruned_flags)

    for new_index, old_index in enumerate(KEPT):
        assert model.model.layers[new_index] is original_layers[old_index]
    assert [attn.layer_idx for attn in _attentions(model)] == list(range(len(KEPT)))
    layer_idx_values = {module.layer_idx for module in model.model.layers[2].modules() if hasattr(module, "layer_idx")}
    assert layer_idx_values == {2}
    torch.testing.assert_close(_logits(model, ids), expected, rtol=0, atol=1e-6)

    if family != "llama":
        # The sliding window really shapes the output of these 12-token inputs.
        with torch.no_grad():
            all_causal = _manual_logits(model, ids, [False] * len(KEPT))
        assert not torch.allclose(all_causal, expected, atol=1e-4)


@pytest.mark.parametrize("family", HYBRID)
def test_naive_prefix_config_would_change_the_model(family):
    """Rebuilding from a shallower config (prefix layer_types) is not the same model."""
    model = make_tiny_model(family, NUM_LAYERS)
    naive_config = copy.deepcopy(model.config)
    remove_layers(model, REMOVED)
    naive_config.num_hidden_layers = len(KEPT)
    naive_config.layer_types = naive_config.layer_types[: len(KEPT)]
    naive = AutoModelForCausalLM.from_config(naive_config, dtype=torch.float32, attn_implementation="sdpa")
    naive.load_state_dict(model.state_dict())
    naive.eval()
    ids = sample_ids(12)
    assert not torch.allclose(_logits(naive, ids), _logits(model, ids), atol=1e-4)


def test_generation_with_and_without_cache_agree(family):
    model = make_tiny_model(family, NUM_LAYERS)
    remove_layers(model, REMOVED)
    ids = sample_ids(12)
    kwargs = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=8,
        min_new_tokens=8,
        do_sample=False,
        pad_token_id=0,
    )
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    assert cached.shape == (1, 12 + 8)
    assert torch.equal(cached, uncached)
    # The continuation is not degenerate (otherwise the comparison proves little).
    assert len(set(cached[0, 12:].tolist())) > 1


def test_save_and_reload_gives_identical_model(family, tmp_path):
    model = make_tiny_model(family, NUM_LAYERS)
    original_types = copy.deepcopy(getattr(model.config, "layer_types", None))
    remove_layers(model, REMOVED)
    model.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_hidden_layers"] == NUM_LAYERS - len(REMOVED)
    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        layer_ids = {int(key.split(".")[2]) for key in handle.keys() if key.startswith("model.layers.")}
    assert layer_ids == set(range(len(KEPT)))

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(reloaded) is type(model)
    assert reloaded.config.num_hidden_layers == len(KEPT)
    assert len(reloaded.model.layers) == len(KEPT)
    if family in HYBRID:
        expected_types = [original_types[i] for i in KEPT]
        assert saved["layer_types"] == expected_types
        assert reloaded.config.layer_types == expected_types
    assert [attn.layer_idx for attn in _attentions(reloaded)] == list(range(len(KEPT)))
    for mine, theirs in zip(_attentions(model), _attentions(reloaded), strict=True):
        assert getattr(mine, "sliding_window", None) == getattr(theirs, "sliding_window", None)

    ids = sample_ids(12, batch=2)
    assert torch.equal(_logits(reloaded, ids), _logits(model, ids))


@pytest.mark.parametrize("family", FAMILIES)
def test_tied_embeddings_stay_tied(family, tmp_path):
    model = make_tiny_model(family, NUM_LAYERS, tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    remove_layers(model, REMOVED)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert reloaded.config.tie_word_embeddings is True
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(reloaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_untied_embeddings_stay_untied(tmp_path):
    model = make_tiny_model("llama", NUM_LAYERS, tie_word_embeddings=False)
    remove_layers(model, REMOVED)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert reloaded.lm_head.weight.data_ptr() != reloaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)
    assert not torch.equal(reloaded.lm_head.weight, reloaded.model.embed_tokens.weight)


# ---------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    "removed, message",
    [
        ([0, 1, 2, 3], "cannot remove all"),
        ([3, 2, 1, 0], "cannot remove all"),
        ([1, 1], "invalid layer indices"),
        ([4], "invalid layer indices"),
        ([-1], "invalid layer indices"),
        ([0, 7], "invalid layer indices"),
    ],
)
def test_invalid_indices_raise_and_leave_model_untouched(removed, message):
    model = make_tiny_model("llama", 4)
    layers_before = list(model.model.layers)
    with pytest.raises(ValueError, match=message):
        remove_layers(model, removed)
    assert list(model.model.layers) == layers_before
    assert model.config.num_hidden_layers == 4


def test_model_without_decoder_layers_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    with pytest.raises(NotImplementedError, match="GPT2LMHeadModel.*model.model.layers"):
        remove_layers(model, [0])


def test_mixture_of_experts_is_refused():
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    model = MixtralForCausalLM(config)
    with pytest.raises(NotImplementedError, match="MixtralForCausalLM.*mixture-of-experts"):
        remove_layers(model, [1])
    assert len(model.model.layers) == 3


def test_only_per_layer_config_lists_are_sliced():
    model = make_tiny_model("llama", 3, eos_token_id=[1, 2, 3])
    remove_layers(model, [1])
    assert model.config.eos_token_id == [1, 2, 3]


# ------------------------------------------------------------- prune_checkpoint


@pytest.fixture
def checkpoint(tmp_path):
    base = make_tiny_checkpoint(tmp_path / "base", family="llama", num_layers=4)
    scores_path = tmp_path / "scores.json"
    write_json(scores_path, score_layers("reverse", num_layers=4))
    return base, scores_path


def _leftovers(directory, name):
    return [p.name for p in directory.iterdir() if p.name.startswith(f".{name}.")]


def test_prune_checkpoint_end_to_end(checkpoint, tmp_path):
    base, scores_path = checkpoint
    out = tmp_path / "pruned"
    record = prune_checkpoint(base, scores_path, 0.5, out, dtype="float32")

    assert record["removed_layers"] == [2, 3]
    assert record["kept_layers"] == [0, 1]
    assert record["ratio"] == 0.5
    assert record["method"] == "reverse"
    assert record["num_layers_before"] == 4
    assert record["num_layers_after"] == 2
    assert record["source"] == {"path": str(base.resolve())}
    assert read_json(out / "pruning.json") == record
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert _leftovers(tmp_path, "pruned") == []

    pruned, tokenizer = load_checkpoint(out, dtype="float32", device="cpu")
    assert pruned.config.num_hidden_layers == 2
    assert tokenizer.pad_token == "<pad>"
    expected, _ = load_checkpoint(base, dtype="float32", device="cpu")
    remove_layers(expected, [2, 3])
    ids = sample_ids(10, batch=2)
    assert torch.equal(_logits(pruned, ids), _logits(expected, ids))


def test_prune_checkpoint_records_source_json_and_replaces_stale_output(checkpoint, tmp_path):
    base, scores_path = checkpoint
    write_json(base / "source.json", {"hub": "org/tiny", "revision": "main"})
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "stale.txt").write_text("left from an older run")
    record = prune_checkpoint(base, scores_path, 0.25, out, dtype="float32")
    assert record["source"] == {"hub": "org/tiny", "revision": "main"}
    assert record["removed_layers"] == [3]
    assert not (out / "stale.txt").exists()
    assert read_json(out / "pruning.json")["num_layers_after"] == 3


@pytest.mark.parametrize(
    "ratio, message",
    [
        (0.0, r"must lie in \(0, 1\)"),
        (1.0, r"must lie in \(0, 1\)"),
        (-0.5, r"must lie in \(0, 1\)"),
        (0.99, "would remove all 4 layers"),
        (0.1, "removes no layer"),
    ],
)
def test_prune_checkpoint_bad_ratio(checkpoint, tmp_path, ratio, message):
    base, scores_path = checkpoint
    out = tmp_path / "pruned"
    with pytest.raises(ValueError, match=message):
        prune_checkpoint(base, scores_path, ratio, out, dtype="float32")
    assert not out.exists()
    assert _leftovers(tmp_path, "pruned") == []


def test_prune_checkpoint_scores_for_other_depth(checkpoint, tmp_path):
    base, _ = checkpoint
    scores_path = tmp_path / "scores6.json"
    write_json(scores_path, score_layers("reverse", num_layers=6))
    out = tmp_path / "pruned"
    with pytest.raises(ValueError, match="scores 6 layers but .* has 4"):
        prune_checkpoint(base, scores_path, 0.5, out, dtype="float32")
    assert not out.exists()


def test_prune_checkpoint_failure_while_writing_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    base, scores_path = checkpoint
    out = tmp_path / "pruned"

    def fail(path, obj):
        raise OSError("disk full")

    monkeypatch.setattr(prune, "write_json", fail)
    with pytest.raises(OSError, match="disk full"):
        prune_checkpoint(base, scores_path, 0.5, out, dtype="float32")
    assert not out.exists()
    assert _leftovers(tmp_path, "pruned") == []
