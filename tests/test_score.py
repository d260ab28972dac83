"""Layer scoring (`layerprune.scoring.score`): hand-checked formulas and a real tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.models import CORPUS, make_tiny_model, make_tokenizer

from layerprune.scoring.score import (
    angular_distances,
    block_influence,
    collect_layer_cosines,
    last_token_mask,
    layers_for_ratio,
    layers_to_remove,
    removal_from_importance,
    score_layers,
)

pytestmark = pytest.mark.usefixtures("single_thread")

TEXTS = [
    "hello world",
    "the quick brown fox jumps over the lazy dog",
    "pruning removes decoder layers",
    "a tiny random model is enough for unit tests of layer pruning and keeps the rest",
]


def _cosines(values: dict[tuple[int, int], float], size: int) -> torch.Tensor:
    """A symmetric cosine matrix with unit diagonal and the given off-diagonal entries."""
    matrix = torch.eye(size, dtype=torch.float64)
    for (i, j), value in values.items():
        matrix[i, j] = matrix[j, i] = value
    return matrix


# ------------------------------------------------------------------ formulas


def test_block_influence_is_one_minus_adjacent_cosine():
    cosines = _cosines({(0, 1): 0.9, (1, 2): 0.5, (2, 3): 0.99, (0, 3): -0.7, (0, 2): 0.1}, 4)
    scores = block_influence(cosines)
    assert len(scores) == 3
    assert scores == pytest.approx([0.1, 0.5, 0.01])
    assert all(isinstance(s, float) for s in scores)


def test_angular_distances_per_block_size():
    half = math.sqrt(0.5)
    cosines = _cosines(
        {
            (0, 1): 1.0,
            (1, 2): 0.0,
            (2, 3): -1.0,
            (0, 2): 0.5,
            (1, 3): half,
            (0, 3): -0.5,
        },
        4,
    )
    distances = angular_distances(cosines)
    assert set(distances) == {1, 2}  # n = 1 .. L-1 for L = 3
    assert distances[1] == pytest.approx([0.0, 0.5, 1.0])
    assert distances[2] == pytest.approx([1 / 3, 0.25])


def test_angular_distances_clamps_rounding_error():
    cosines = _cosines({(0, 1): 1.0 + 1e-7, (1, 2): -1.0 - 1e-7, (0, 2): 0.0}, 3)
    distances = angular_distances(cosines)
    assert distances[1] == pytest.approx([0.0, 1.0])


def test_removal_from_importance_least_important_first_ties_to_later_layer():
    removal = removal_from_importance([0.3, 0.1, 0.2, 0.1])
    assert removal == {0: [], 1: [3], 2: [1, 3], 3: [1, 2, 3]}


def test_removal_from_importance_all_equal_removes_from_the_end():
    assert removal_from_importance([0.5] * 4) == {0: [], 1: [3], 2: [2, 3], 3: [1, 2, 3]}


# ------------------------------------------------------ model-free methods


def _check_removal_shape(removal: dict, num_layers: int, nested: bool = True) -> None:
    assert list(removal) == [str(k) for k in range(num_layers)]
    previous: set[int] = set()
    for k in range(num_layers):
        chosen = removal[str(k)]
        assert len(chosen) == k
        assert chosen == sorted(set(chosen))
        assert all(0 <= i < num_layers for i in chosen)
        if nested:
            assert previous <= set(chosen)
        previous = set(chosen)


def test_score_layers_reverse():
    result = score_layers("reverse", num_layers=6)
    assert result["method"] == "reverse"
    assert result["num_layers"] == 6
    assert result["scores"] is None
    _check_removal_shape(result["removal"], 6)
    assert result["removal"]["0"] == []
    assert result["removal"]["1"] == [5]
    assert result["removal"]["3"] == [3, 4, 5]
    assert result["removal"]["5"] == [1, 2, 3, 4, 5]


def test_score_layers_random_is_seeded_and_nested():
    first = score_layers("random", num_layers=6, seed=3)
    again = score_layers("random", num_layers=6, seed=3)
    assert first == again
    assert first["seed"] == 3
    assert first["scores"] is None
    assert sorted(first["removal_order"]) == list(range(6))
    _check_removal_shape(first["removal"], 6)
    for k in range(6):
        assert first["removal"][str(k)] == sorted(first["removal_order"][:k])

    orders = {tuple(score_layers("random", num_layers=6, seed=seed)["removal_order"]) for seed in range(5)}
    assert len(orders) > 1


def test_score_layers_result_is_json_round_trippable():
    result = score_layers("random", num_layers=5, seed=1)
    assert json.loads(json.dumps(result)) == result


def test_score_layers_rejects_unknown_method_and_missing_texts():
    with pytest.raises(ValueError, match="unknown scoring method 'magnitude'"):
        score_layers("magnitude", num_layers=4)
    model = make_tiny_model("llama", 4)
    for method in ("bi", "angular", "angular_last"):
        with pytest.raises(ValueError, match="needs calibration texts"):
            score_layers(method, model, make_tokenizer(), texts=[])


# ----------------------------------------------------------- layers_to_remove


@pytest.mark.parametrize(
    "ratio, expected",
    [
        (0.5, [3, 4, 5]),  # 3.0
        (0.1, [5]),  # 0.6 -> 1
        (0.4, [4, 5]),  # 2.4 -> 2
        (0.45, [3, 4, 5]),  # 2.7 -> 3
        (0.8, [1, 2, 3, 4, 5]),  # 4.8 -> 5
    ],
)
def test_layers_to_remove_rounds_ratio_times_depth(ratio, expected):
    scores = json.loads(json.dumps(score_layers("reverse", num_layers=6)))
    assert layers_to_remove(scores, ratio) == expected


def test_layers_for_ratio():
    assert layers_for_ratio(0.25, 6) == 2  # 1.5 rounds up
    assert layers_for_ratio(0.3, 30) == 9
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
        layers_for_ratio(1.0, 6)


def test_layers_to_remove_beyond_max_k_names_the_limit():
    scores = {"method": "iterative", "num_layers": 6, "max_k": 2, "removal": {"0": [], "1": [5], "2": [3, 5]}}
    assert layers_to_remove(scores, 0.3) == [3, 5]  # 1.8 -> 2
    with pytest.raises(ValueError, match=r"ratio 0.5 removes 3 of 6 layers.*'iterative'.*k = 2.*--max-ratio"):
        layers_to_remove(scores, 0.5)


@pytest.mark.parametrize(
    "ratio, message",
    [
        (0.0, r"must lie in \(0, 1\), got 0.0"),
        (1.0, r"must lie in \(0, 1\), got 1.0"),
        (-0.2, r"must lie in \(0, 1\)"),
        (1.5, r"must lie in \(0, 1\)"),
        (0.95, "would remove all 6 layers"),  # 5.7 -> 6
        (0.05, "removes no layer of 6"),  # 0.3 -> 0
    ],
)
def test_layers_to_remove_errors(ratio, message):
    with pytest.raises(ValueError, match=message):
        layers_to_remove(score_layers("reverse", num_layers=6), ratio)


# --------------------------------------------------- cosines on a real model


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return make_tiny_model("llama", 4, seed=0), make_tokenizer()


def _hook_counts(model):
    return [(len(layer._forward_hooks), len(layer._forward_pre_hooks)) for layer in model.model.layers]


def test_collect_layer_cosines_shape_diagonal_and_symmetry(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    cosines = collect_layer_cosines(model, tokenizer, TEXTS, max_length=32, batch_size=2)
    assert cosines.shape == (5, 5)
    assert cosines.dtype == torch.float64
    torch.testing.assert_close(cosines.diagonal(), torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(cosines, cosines.T, rtol=0, atol=1e-6)
    assert bool((cosines <= 1 + 1e-6).all()) and bool((cosines >= -1 - 1e-6).all())
    # A random model still changes the residual stream: not every entry is 1.
    assert float(cosines.min()) < 0.99


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_collect_layer_cosines_masks_padding(model_and_tokenizer, padding_side):
    model, _ = model_and_tokenizer
    tokenizer = make_tokenizer()
    tokenizer.padding_side = padding_side
    texts = [TEXTS[0], TEXTS[3]]  # 2 and 15 tokens: the short one is padded in a batch
    batch = tokenizer(texts, padding=True)
    assert 0 in batch["attention_mask"][0]
    together = collect_layer_cosines(model, tokenizer, texts, max_length=32, batch_size=2)
    one_by_one = collect_layer_cosines(model, tokenizer, texts, max_length=32, batch_size=1)
    torch.testing.assert_close(together, one_by_one, rtol=0, atol=1e-5)


def test_text_average_weighs_every_text_alike(model_and_tokenizer):
    """average="text" (the paper authors' BI): the mean over texts of each text's own token mean,
    batched or not; the token average lets the 15-token text outweigh the 2-token one."""
    model, tokenizer = model_and_tokenizer
    texts = [TEXTS[0], TEXTS[3]]
    singles = [collect_layer_cosines(model, tokenizer, [text], max_length=32, batch_size=1) for text in texts]
    per_text = collect_layer_cosines(model, tokenizer, texts, max_length=32, batch_size=2, average="text")
    torch.testing.assert_close(per_text, (singles[0] + singles[1]) / 2, rtol=0, atol=1e-6)
    per_token = collect_layer_cosines(model, tokenizer, texts, max_length=32, batch_size=2)
    assert float((per_text - per_token).abs().max()) > 1e-4
    result = score_layers("bi", model, tokenizer, texts, max_length=32, batch_size=2, average="text")
    assert result["average"] == "text" and result["scores"] == pytest.approx(block_influence(per_text), abs=1e-9)
    with pytest.raises(ValueError, match="average must be token or text"):
        collect_layer_cosines(model, tokenizer, texts, max_length=32, batch_size=2, average="prompt")


def test_collect_layer_cosines_matches_hidden_states():
    """Depths 0..L-1 are the layer inputs; depth L is the last layer's raw (un-normed) output."""
    model, tokenizer = make_tiny_model("llama", 4, seed=0), make_tokenizer()
    with torch.no_grad():  # a non-uniform final norm, so normed and raw states point differently
        model.model.norm.weight.copy_(torch.linspace(0.2, 3.0, model.config.hidden_size))
    text = TEXTS[1]
    cosines = collect_layer_cosines(model, tokenizer, [text], max_length=32, batch_size=1)
    with torch.no_grad():
        hidden = model(**tokenizer([text], return_tensors="pt"), output_hidden_states=True).hidden_states
    normed = hidden[4][0].double()
    # RMSNorm only rescales each feature, so dividing by its weight restores the raw direction.
    raw = normed / model.model.norm.weight.detach().double()
    states = torch.stack([h[0].double() for h in hidden[:4]] + [raw])
    states = torch.nn.functional.normalize(states, dim=-1)
    expected = torch.einsum("ath,bth->ab", states, states) / states.shape[1]
    torch.testing.assert_close(cosines, expected, rtol=0, atol=1e-5)
    with_normed = (states[0] * torch.nn.functional.normalize(normed, dim=-1)).sum(-1).mean()
    assert abs(float(cosines[0, 4]) - float(with_normed)) > 1e-3


def test_collect_layer_cosines_respects_max_length(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    text = TEXTS[3]
    truncated = collect_layer_cosines(model, tokenizer, [text], max_length=5, batch_size=1)
    short = " ".join(text.split()[:5])
    torch.testing.assert_close(
        truncated,
        collect_layer_cosines(model, tokenizer, [short], max_length=32, batch_size=1),
        rtol=0,
        atol=1e-6,
    )


def test_collect_layer_cosines_removes_hooks(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    before = _hook_counts(model)
    collect_layer_cosines(model, tokenizer, TEXTS, max_length=32, batch_size=3)
    assert _hook_counts(model) == before


def test_collect_layer_cosines_removes_hooks_on_error(model_and_tokenizer):
    model, _ = model_and_tokenizer
    before = _hook_counts(model)

    def broken_tokenizer(*args, **kwargs):
        raise RuntimeError("tokenizer failed")

    with pytest.raises(RuntimeError, match="tokenizer failed"):
        collect_layer_cosines(model, broken_tokenizer, TEXTS, max_length=32, batch_size=2)
    assert _hook_counts(model) == before


# ------------------------------------------------- bi and angular end to end


def test_score_layers_bi(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    result = score_layers("bi", model, tokenizer, CORPUS, max_length=32, batch_size=2)
    assert result["method"] == "bi"
    assert result["num_layers"] == 4
    scores = result["scores"]
    assert len(scores) == 4
    _check_removal_shape(result["removal"], 4)
    least = min(range(4), key=lambda i: (scores[i], -i))
    assert result["removal"]["1"] == [least]
    cosines = collect_layer_cosines(model, tokenizer, CORPUS, max_length=32, batch_size=2)
    assert scores == pytest.approx(block_influence(cosines), abs=1e-9)
    assert json.loads(json.dumps(result)) == result


def test_score_layers_angular(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    result = score_layers("angular", model, tokenizer, CORPUS, max_length=32, batch_size=2)
    assert result["method"] == "angular"
    _check_removal_shape(result["removal"], 4, nested=False)
    assert sorted(result["block_distances"]) == ["1", "2", "3"]
    assert result["scores"] == result["block_distances"]["1"]
    for k in range(1, 4):
        chosen = result["removal"][str(k)]
        assert chosen == list(range(chosen[0], chosen[0] + k))  # contiguous block
        per_start = result["block_distances"][str(k)]
        assert len(per_start) == 4 - k + 1
        assert per_start[chosen[0]] == min(per_start)
    assert json.loads(json.dumps(result)) == result


# ------------------------------------------------------- the scores file


def test_score_file_record_adds_provenance_and_settings(tmp_path):
    from layerprune.io import sha256_file, write_jsonl
    from layerprune.scoring.score import score_file_record

    calibration = tmp_path / "calibration.jsonl"
    write_jsonl(calibration, [{"text": text} for text in TEXTS])
    result = score_layers("reverse", num_layers=4)
    record = score_file_record(result, tmp_path / "model", calibration, TEXTS, max_length=64, batch_size=3, seed=5)
    assert {key: record[key] for key in result} == result
    assert record["model"] == str(tmp_path / "model")
    assert record["calibration"] == str(calibration)
    assert record["calibration_sha256"] == sha256_file(calibration)
    assert len(record["calibration_sha256"]) == 64
    assert record["settings"] == {"max_length": 64, "batch_size": 3, "seed": 5, "num_samples": 4}
    assert json.loads(json.dumps(record)) == record

    without = score_file_record(result, "m", None, None, max_length=0, batch_size=8, seed=0)
    assert without["calibration"] is None and without["calibration_sha256"] is None
    assert without["settings"]["num_samples"] is None


def test_cli_score_writes_calibration_sha256_and_settings(tmp_path):
    from helpers.models import make_tiny_checkpoint

    from layerprune.cli import main
    from layerprune.io import read_json, sha256_file, write_jsonl

    model_dir = make_tiny_checkpoint(tmp_path / "model", family="llama", num_layers=4)
    calibration = tmp_path / "calibration.jsonl"
    write_jsonl(calibration, [{"text": text} for text in TEXTS])
    out = tmp_path / "scores.json"
    args = ["score", "--model", str(model_dir), "--method", "bi", "--calibration", str(calibration)]
    args += ["--max-length", "16", "--batch-size", "2", "--seed", "3", "--dtype", "float32", "--out", str(out)]
    assert main(args) == 0
    scores = read_json(out)
    assert scores["method"] == "bi" and scores["num_layers"] == 4
    assert scores["calibration_sha256"] == sha256_file(calibration)
    assert scores["settings"] == {"max_length": 16, "batch_size": 2, "seed": 3, "num_samples": len(TEXTS)}
    assert scores["model"] == str(model_dir)


def test_score_layers_angular_last(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    result = score_layers("angular_last", model, tokenizer, CORPUS, max_length=32, batch_size=2)
    assert (result["method"], result["tokens"]) == ("angular_last", "last")
    assert score_layers("angular", model, tokenizer, CORPUS, max_length=32, batch_size=2)["tokens"] == "all"
    _check_removal_shape(result["removal"], 4, nested=False)
    cosines = collect_layer_cosines(model, tokenizer, CORPUS, max_length=32, batch_size=2, last_token_only=True)
    distances = angular_distances(cosines)
    assert result["block_distances"] == {str(n): pytest.approx(d, abs=1e-9) for n, d in distances.items()}
    for k in range(1, 4):
        chosen = result["removal"][str(k)]
        assert chosen == list(range(chosen[0], chosen[0] + k))
        assert result["block_distances"][str(k)][chosen[0]] == min(result["block_distances"][str(k)])
    assert json.loads(json.dumps(result)) == result


# ------------------------------------------------------ last-token cosines


@pytest.mark.parametrize(
    "mask, expected",
    [
        ([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], [[0, 0, 1, 0, 0], [0, 0, 0, 0, 1]]),  # right padding
        ([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]], [[0, 0, 0, 0, 1], [0, 0, 0, 0, 1]]),  # left padding
        ([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], [[0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]),  # an empty row selects nothing
    ],
)
def test_last_token_mask(mask, expected):
    selected = last_token_mask(torch.tensor(mask))
    assert selected.dtype == torch.bool
    assert selected.tolist() == [[bool(v) for v in row] for row in expected]


class _QuarterTurn(torch.nn.Module):
    """Rotates (x, y) by 90 degrees at tokens whose flag (third coordinate) is set."""

    def forward(self, hidden):
        x, y, flag = hidden.unbind(-1)
        return torch.where(flag[..., None] > 0, torch.stack([-y, x, flag], -1), hidden)


class _FlagModel(torch.nn.Module):
    """Hidden state (1, 0, flag) per token, flag = 1 for `flagged` ids; two quarter-turn layers.

    At a flagged token the depths are (1,0,1), (0,1,1), (-1,0,1): cos(0,1) = cos(1,2) = 1/2,
    cos(0,2) = 0. At any other token every cosine is 1.
    """

    def __init__(self, flagged: list[int]):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList([_QuarterTurn(), _QuarterTurn()])
        self.register_buffer("flagged", torch.tensor(flagged))
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, input_ids, attention_mask=None, **kwargs):
        flag = torch.isin(input_ids, self.flagged).float()
        hidden = torch.stack([torch.ones_like(flag), torch.zeros_like(flag), flag], -1)
        for layer in self.model.layers:
            hidden = layer(hidden)
        return hidden


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_collect_layer_cosines_last_token_known_answer(padding_side, batch_size):
    tokenizer = make_tokenizer()
    tokenizer.padding_side = padding_side
    model = _FlagModel([tokenizer.convert_tokens_to_ids(word) for word in ("fox", "dog")])
    # 10 tokens, 2 flagged (fox, dog); last tokens fox, world, jumps: 1 of 3 flagged.
    texts = ["the quick brown fox", "hello world", "the lazy dog jumps"]

    def expected(share: float) -> torch.Tensor:
        return _cosines({(0, 1): 1 - share / 2, (1, 2): 1 - share / 2, (0, 2): 1 - share}, 3)

    every = collect_layer_cosines(model, tokenizer, texts, max_length=32, batch_size=batch_size)
    last = collect_layer_cosines(model, tokenizer, texts, max_length=32, batch_size=batch_size, last_token_only=True)
    torch.testing.assert_close(every, expected(2 / 10), rtol=0, atol=1e-6)
    torch.testing.assert_close(last, expected(1 / 3), rtol=0, atol=1e-6)
    # truncation moves the last token: "the quick brown" ends unflagged, "the lazy dog" flagged
    truncated = collect_layer_cosines(model, tokenizer, texts, 3, batch_size, last_token_only=True)
    torch.testing.assert_close(truncated, expected(1 / 3), rtol=0, atol=1e-6)
    assert angular_distances(last)[1] == pytest.approx([math.acos(5 / 6) / math.pi] * 2)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_collect_layer_cosines_last_token_padding_invariant(model_and_tokenizer, padding_side):
    model, _ = model_and_tokenizer
    tokenizer = make_tokenizer()
    tokenizer.padding_side = padding_side
    together = collect_layer_cosines(model, tokenizer, TEXTS, max_length=32, batch_size=4, last_token_only=True)
    one_by_one = collect_layer_cosines(model, tokenizer, TEXTS, max_length=32, batch_size=1, last_token_only=True)
    torch.testing.assert_close(together, one_by_one, rtol=0, atol=1e-5)
    every = collect_layer_cosines(model, tokenizer, TEXTS, max_length=32, batch_size=4)
    assert float((together - every).abs().max()) > 1e-3  # the last token is not the average token


def test_collect_layer_cosines_last_token_matches_hidden_states(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    last = collect_layer_cosines(model, tokenizer, TEXTS, max_length=32, batch_size=2, last_token_only=True)
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for text in TEXTS:
        with torch.no_grad():
            hidden = model(**tokenizer([text], return_tensors="pt"), output_hidden_states=True).hidden_states
        # depths 0..L-1 are the layer inputs (the last entry is normed, so left out)
        states = torch.nn.functional.normalize(torch.stack([h[0, -1].double() for h in hidden[:4]]), dim=-1)
        expected += states @ states.T / len(TEXTS)
    torch.testing.assert_close(last[:4, :4], expected, rtol=0, atol=1e-5)
