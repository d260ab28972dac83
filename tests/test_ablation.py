"""Calibration-loss scoring (`layerprune.scoring.ablation`): constructed models with known answers,
naive and prefix-reusing paths agreeing, and the wiring through score_layers and the CLI."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from helpers.models import CORPUS, make_tiny_checkpoint, make_tiny_model, make_tokenizer

from layerprune.cli import main as cli_main
from layerprune.io import read_json, write_jsonl
from layerprune.pruning.prune import remove_layers
from layerprune.scoring import ablation
from layerprune.scoring.score import layers_to_remove, score_layers

pytestmark = pytest.mark.usefixtures("single_thread")

NUM_LAYERS = 6
IDENTITY = 3  # the layer made an exact identity
TEXTS = CORPUS[:4]


def make_identity(model, layer: int) -> None:
    """Zero the layer's o_proj and down_proj: both residual branches add exactly 0."""
    block = model.model.layers[layer]
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()


def fitted_model_with_identity(family: str, steps: int = 10):
    """A tiny model trained on TEXTS, with layer IDENTITY an exact identity throughout.

    The identity layer's zeroed projections are frozen (its other weights then get no
    gradient), so removing it leaves the model's function unchanged, while removing any
    trained layer costs the fit to the texts: the identity is the unique cheapest removal.
    """
    model = make_tiny_model(family, NUM_LAYERS, seed=0)
    tokenizer = make_tokenizer()
    make_identity(model, IDENTITY)
    block = model.model.layers[IDENTITY]
    frozen = {id(block.self_attn.o_proj.weight), id(block.mlp.down_proj.weight)}
    params = [p for p in model.parameters() if id(p) not in frozen]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    model.eval()
    assert float(block.self_attn.o_proj.weight.detach().abs().max()) == 0.0
    assert float(block.mlp.down_proj.weight.detach().abs().max()) == 0.0
    return model, tokenizer


def hf_ppl(model, tokenizer, texts: list[str]) -> float:
    """exp of transformers' own mean next-token loss on one right-padded batch: an independent reference."""
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        return math.exp(float(model(**batch, labels=labels, use_cache=False).loss))


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def fitted(request):
    return (request.param, *fitted_model_with_identity(request.param))


def _hook_state(model):
    return [
        (len(layer._forward_hooks), len(layer._forward_pre_hooks), "forward" in layer.__dict__)
        for layer in model.model.layers
    ]


# ------------------------------------------------------------ known answers


def test_ppl_scores_are_the_pruned_models_perplexities(fitted):
    """score_l = PPL of the model with block l removed (the real surgery), by transformers' own loss."""
    family, model, tokenizer = fitted
    scores = ablation.ppl_scores(model, tokenizer, TEXTS, max_length=32, batch_size=4)
    assert len(scores) == NUM_LAYERS
    for layer in range(NUM_LAYERS):
        pruned = copy.deepcopy(model)
        remove_layers(pruned, [layer])
        assert scores[layer] == pytest.approx(hf_ppl(pruned, tokenizer, TEXTS), rel=1e-5), (family, layer)


def test_ppl_removes_the_identity_layer_first_at_the_dense_ppl(fitted):
    _, model, tokenizer = fitted
    result = score_layers("ppl", model, tokenizer, TEXTS, max_length=32, batch_size=2)
    assert result["removal"]["1"] == [IDENTITY]
    dense = hf_ppl(model, tokenizer, TEXTS)
    assert result["scores"][IDENTITY] == pytest.approx(dense, rel=1e-5)
    others = [s for layer, s in enumerate(result["scores"]) if layer != IDENTITY]
    assert min(others) > dense * 1.05


def test_sleb_removes_the_identity_layer_first(fitted):
    _, model, tokenizer = fitted
    result = score_layers("sleb", model, tokenizer, TEXTS, max_length=32, batch_size=2)
    assert result["removal_order"][0] == IDENTITY
    first = result["rounds"][0]["ppl"]
    assert first[str(IDENTITY)] == pytest.approx(hf_ppl(model, tokenizer, TEXTS), rel=1e-5)
    assert sorted(first) == [str(layer) for layer in range(1, NUM_LAYERS - 1)]


def test_taylor_identity_layer_scores_zero(fitted):
    _, model, tokenizer = fitted
    result = score_layers("taylor", model, tokenizer, TEXTS, max_length=32, batch_size=2)
    scores = result["scores"]
    assert scores[IDENTITY] == 0.0  # zero weights, and zero gradients behind the zeroed projections
    assert all(score > 0 for layer, score in enumerate(scores) if layer != IDENTITY)
    assert result["removal"]["1"] == [IDENTITY]


def test_taylor_matches_a_direct_autograd_computation():
    """Σ|W ⊙ ∂L/∂W| with L the mean NLL of the whole set, however it is batched."""
    model, tokenizer = make_tiny_model("llama", 4, seed=1), make_tokenizer()
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    reference_model = copy.deepcopy(model)
    reference_model(**batch, labels=labels, use_cache=False).loss.backward()
    expected = [
        sum(
            float((m.weight * m.weight.grad).detach().abs().sum())
            for m in layer.modules()
            if isinstance(m, torch.nn.Linear)
        )
        for layer in reference_model.model.layers
    ]
    for batch_size in (1, 3, 4):
        scores = ablation.taylor_scores(model, tokenizer, TEXTS, max_length=32, batch_size=batch_size)
        assert scores == pytest.approx(expected, rel=1e-5)


def test_taylor_restores_requires_grad_and_grads():
    model, tokenizer = make_tiny_model("llama", 4), make_tokenizer()
    model.lm_head.weight.requires_grad_(False)
    before = [(name, p.requires_grad) for name, p in model.named_parameters()]
    ablation.taylor_scores(model, tokenizer, TEXTS, max_length=32, batch_size=2)
    assert [(name, p.requires_grad) for name, p in model.named_parameters()] == before
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------- naive and prefix reuse agree


@pytest.mark.parametrize(
    "family, overrides",
    [("llama", {}), ("gemma3", {}), ("gemma3", {"final_logit_softcapping": 3.0}), ("qwen2", {})],
)
def test_ppl_reused_equals_naive(family, overrides):
    model, tokenizer = make_tiny_model(family, NUM_LAYERS, seed=2, **overrides), make_tokenizer()
    naive = ablation.ppl_scores(model, tokenizer, CORPUS, max_length=32, batch_size=2, reuse=False)
    for chunk_size in (None, 3):
        reused = ablation.ppl_scores(model, tokenizer, CORPUS, max_length=32, batch_size=2, chunk_size=chunk_size)
        assert reused == pytest.approx(naive, rel=1e-5)
    assert len(set(naive)) == NUM_LAYERS  # distinct scores: the comparison means something


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("exclude_ends", [True, False])
def test_sleb_reused_equals_naive(family, exclude_ends):
    model, tokenizer = make_tiny_model(family, NUM_LAYERS, seed=3), make_tokenizer()
    kwargs = dict(max_length=32, batch_size=2, exclude_ends=exclude_ends)
    naive_order, naive_rounds = ablation.sleb_order(model, tokenizer, CORPUS, reuse=False, **kwargs)
    # chunk_size None: one chunk, cache kept across rounds; 2: three chunks, rebuilt every round
    for chunk_size in (None, 2):
        order, rounds = ablation.sleb_order(model, tokenizer, CORPUS, chunk_size=chunk_size, **kwargs)
        assert order == naive_order
        for mine, reference in zip(rounds, naive_rounds, strict=True):
            assert mine["removed"] == reference["removed"]
            assert list(mine["ppl"]) == list(reference["ppl"])
            assert list(mine["ppl"].values()) == pytest.approx(list(reference["ppl"].values()), rel=1e-5)
    assert len(naive_order) == (NUM_LAYERS - 2 if exclude_ends else NUM_LAYERS - 1)


def test_sleb_max_rounds_stops_early_with_the_same_choices():
    model, tokenizer = make_tiny_model("llama", NUM_LAYERS, seed=3), make_tokenizer()
    full_order, full_rounds = ablation.sleb_order(model, tokenizer, CORPUS, max_length=32, batch_size=2)
    order, rounds = ablation.sleb_order(model, tokenizer, CORPUS, max_length=32, batch_size=2, max_rounds=2)
    assert len(full_order) > 2
    assert order == full_order[:2]
    assert rounds == full_rounds[:2]
    assert ablation.sleb_order(model, tokenizer, CORPUS, max_length=32, max_rounds=0)[0] == []
    with pytest.raises(ValueError, match="max_rounds"):
        ablation.sleb_order(model, tokenizer, CORPUS, max_length=32, max_rounds=-1)


def test_hybrid_naive_path_keeps_each_layers_attention_kind():
    """Without slicing layer_types, gemma3 layers above a removed one would get the wrong mask."""
    model, tokenizer = make_tiny_model("gemma3", NUM_LAYERS, seed=2), make_tokenizer()
    chunks, _ = ablation.encode_calibration(tokenizer, CORPUS, 32, 8, None, "cpu")
    batch = chunks[0][0]
    with ablation.without_layers(model, [0]), torch.no_grad():
        assert model.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"] + [
            "sliding_attention",
            "full_attention",
        ]
        sliced = float(ablation.nll_from_logits(model(**batch.model_inputs()).logits, batch))
    pruned = copy.deepcopy(model)
    remove_layers(pruned, [0])
    with torch.no_grad():
        reference = float(ablation.nll_from_logits(pruned(**batch.model_inputs()).logits, batch))
    assert sliced == pytest.approx(reference, rel=1e-6)
    assert model.config.layer_types[:3] == ["sliding_attention", "sliding_attention", "full_attention"]
    assert model.config.num_hidden_layers == NUM_LAYERS


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_ppl_ignores_padding(padding_side):
    model, tokenizer = make_tiny_model("llama", 4, seed=4), make_tokenizer()
    tokenizer.padding_side = padding_side
    together = ablation.ppl_scores(model, tokenizer, CORPUS, max_length=32, batch_size=len(CORPUS))
    one_by_one = ablation.ppl_scores(model, tokenizer, CORPUS, max_length=32, batch_size=1)
    assert together == pytest.approx(one_by_one, rel=1e-5)


def _count_layer_forwards(model) -> tuple[list[int], list]:
    """Count real forwards per layer (a shadowed pass-through returns its input object)."""
    counts = [0]
    handles = []
    for layer in model.model.layers:

        def hook(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            counts[0] += output is not hidden

        handles.append(layer.register_forward_hook(hook, with_kwargs=True))
    return counts, handles


def _sleb_forwards(num_layers: int, order: list[int], persistent: bool, batches: int) -> int:
    """Layer forwards of prefix-reusing sleb, counted from the design (check_head: one full forward)."""
    pool = list(range(1, num_layers - 1))
    total = num_layers
    removed: list[int] = []
    for round_index, best in enumerate(order):
        kept = [k for k in range(num_layers) if k not in removed]
        candidates = [c for c in pool if c not in removed]
        top = max(candidates)
        if not persistent or round_index == 0:
            total += batches * sum(1 for k in kept if k < top)  # capture below the top candidate
        total += batches * sum(sum(1 for k in kept if k > c) for c in candidates)  # the suffixes
        removed.append(best)
        remaining = [c for c in candidates if c != best]
        if persistent and remaining:  # advance: recompute inputs above `best`, up to the new top
            total += batches * sum(1 for k in kept if best < k < max(remaining) and k != best)
    return total


def test_prefix_reuse_halves_the_layer_forwards():
    layers = 12
    model, tokenizer = make_tiny_model("llama", layers, seed=5), make_tokenizer()
    counts, handles = _count_layer_forwards(model)
    runs, orders = {}, {}
    try:
        for name, call in {
            "ppl naive": lambda: ablation.ppl_scores(model, tokenizer, TEXTS, 32, 4, reuse=False),
            "ppl reused": lambda: ablation.ppl_scores(model, tokenizer, TEXTS, 32, 4),
            "sleb naive": lambda: ablation.sleb_order(model, tokenizer, TEXTS, 32, 4, reuse=False),
            "sleb reused": lambda: ablation.sleb_order(model, tokenizer, TEXTS, 32, 4),
            "sleb rebuilt": lambda: ablation.sleb_order(model, tokenizer, TEXTS, 32, 2, chunk_size=2),
        }.items():
            counts[0] = 0
            orders[name] = call()
            runs[name] = counts[0]
    finally:
        for handle in handles:
            handle.remove()
    # ppl, one batch: naive runs L-1 layers per candidate; reused captures layers 0..L-2 once, then
    # candidate l runs the L-1-l layers above it (plus the head check's one short full forward)
    assert runs["ppl naive"] == layers * (layers - 1)
    assert runs["ppl reused"] == (layers - 1) + layers * (layers - 1) // 2 + layers
    # sleb over the L-2 middle layers: sum over rounds of |candidates| x (|kept| - 1)
    assert runs["sleb naive"] == sum(c * (c + 1) for c in range(1, layers - 1))
    order = orders["sleb naive"][0]
    assert orders["sleb reused"][0] == orders["sleb rebuilt"][0] == order
    assert runs["sleb reused"] == _sleb_forwards(layers, order, persistent=True, batches=1)
    assert runs["sleb rebuilt"] == _sleb_forwards(layers, order, persistent=False, batches=2)
    assert runs["sleb reused"] < 0.6 * runs["sleb naive"]
    assert runs["sleb rebuilt"] < 0.65 * 2 * runs["sleb naive"]  # two batches


# ----------------------------------------------------- restoring the model


def test_without_layers_restores_on_error():
    model = make_tiny_model("gemma3", NUM_LAYERS)
    layers, types = model.model.layers, list(model.config.layer_types)
    with pytest.raises(RuntimeError, match="inside"):
        with ablation.without_layers(model, [1, 4]):
            assert len(model.model.layers) == NUM_LAYERS - 2
            assert model.config.num_hidden_layers == NUM_LAYERS - 2
            raise RuntimeError("inside")
    assert model.model.layers is layers
    assert model.config.layer_types == types
    assert model.config.num_hidden_layers == NUM_LAYERS


def test_capture_restores_layers_on_error():
    model, tokenizer = make_tiny_model("llama", 4), make_tokenizer()
    chunks, _ = ablation.encode_calibration(tokenizer, TEXTS, 32, 4, None, "cpu")
    before = _hook_state(model)

    def broken(module, args, kwargs):
        raise RuntimeError("layer failed")

    handle = model.model.layers[2].register_forward_pre_hook(broken, with_kwargs=True)
    with pytest.raises(RuntimeError, match="layer failed"):
        ablation.capture_prefix(model, chunks[0][0], kept=[0, 1, 2, 3], top=1)
    handle.remove()
    assert _hook_state(model) == before
    ablation.capture_prefix(model, chunks[0][0], kept=[0, 1, 2, 3], top=3)
    assert _hook_state(model) == before


def test_check_head_refuses_unknown_logit_processing():
    model, tokenizer = make_tiny_model("llama", 4), make_tokenizer()
    model.config.final_logit_softcapping = 0.5  # llama ignores it, so head_logits would not match
    with pytest.raises(NotImplementedError, match="logits"):
        ablation.ppl_scores(model, tokenizer, TEXTS, max_length=32)


# --------------------------------------------------------- score_layers


def _check_removal(removal: dict, max_k: int, num_layers: int) -> None:
    assert list(removal) == [str(k) for k in range(max_k + 1)]
    for k in range(max_k + 1):
        chosen = removal[str(k)]
        assert len(chosen) == k and chosen == sorted(set(chosen))
        assert all(0 <= layer < num_layers for layer in chosen)


@pytest.mark.parametrize("method", ["ppl", "taylor", "sleb"])
def test_score_layers_returns_a_removal_set_for_every_k(method):
    model, tokenizer = make_tiny_model("qwen2", NUM_LAYERS, seed=6), make_tokenizer()
    result = score_layers(method, model, tokenizer, CORPUS, max_length=32, batch_size=2, chunk_size=2)
    assert result["method"] == method and result["num_layers"] == NUM_LAYERS
    max_k = NUM_LAYERS - 2 if method == "sleb" else NUM_LAYERS - 1
    _check_removal(result["removal"], max_k, NUM_LAYERS)
    if method == "sleb":
        order = result["removal_order"]
        assert result["exclude_ends"] is True
        for k in range(max_k + 1):
            assert result["removal"][str(k)] == sorted(order[:k])  # nested: prefixes of one order
        assert 0 not in order and NUM_LAYERS - 1 not in order
        assert [r["removed"] for r in result["rounds"]] == order
        with pytest.raises(ValueError, match="only go up to k = 4"):
            layers_to_remove(result, 0.85)  # 5.1 -> 5 > 4
    else:
        assert len(result["scores"]) == NUM_LAYERS
    assert json.loads(json.dumps(result)) == result


def test_score_layers_sleb_with_ends():
    model, tokenizer = make_tiny_model("llama", 4, seed=6), make_tokenizer()
    result = score_layers("sleb", model, tokenizer, TEXTS, max_length=32, sleb_exclude_ends=False)
    _check_removal(result["removal"], 3, 4)
    assert len(result["removal_order"]) == 3


@pytest.mark.parametrize("method", ["ppl", "taylor", "sleb"])
def test_score_layers_needs_texts(method):
    with pytest.raises(ValueError, match="needs calibration texts"):
        score_layers(method, make_tiny_model("llama", 4), make_tokenizer(), texts=[])


def test_cli_score_passes_sleb_settings(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "model", "llama", num_layers=4)
    calibration = tmp_path / "calibration.jsonl"
    write_jsonl(calibration, ({"text": text} for text in CORPUS))
    out = tmp_path / "sleb.json"
    argv = ["score", "--model", str(checkpoint), "--method", "sleb", "--calibration", str(calibration)]
    argv += ["--max-length", "32", "--batch-size", "2", "--chunk-size", "None", "--sleb-exclude-ends", "False"]
    argv += ["--dtype", "float32", "--threads", "1", "--out", str(out)]
    assert cli_main(argv) == 0
    result = read_json(out)
    assert result["exclude_ends"] is False
    assert list(result["removal"]) == ["0", "1", "2", "3"]


def test_cli_score_sleb_stops_at_the_largest_ratio(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "model", "llama", num_layers=6)
    calibration = tmp_path / "calibration.jsonl"
    write_jsonl(calibration, ({"text": text} for text in CORPUS))
    out = tmp_path / "sleb.json"
    argv = ["score", "--model", str(checkpoint), "--method", "sleb", "--calibration", str(calibration)]
    argv += ["--max-length", "32", "--batch-size", "2", "--max-ratio", "0.3", "--dtype", "float32", "--out", str(out)]
    assert cli_main(argv) == 0
    result = read_json(out)
    assert result["max_ratio"] == 0.3
    assert list(result["removal"]) == ["0", "1", "2"]  # round(0.3 * 6) = 2 rounds
    assert layers_to_remove(result, 0.3) == result["removal"]["2"]
    with pytest.raises(ValueError, match="larger --max-ratio"):
        layers_to_remove(result, 0.5)
