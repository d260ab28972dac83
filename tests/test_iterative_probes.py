"""Iterative probes as the paper runs them: each generative probe generated with its task's own
evaluation settings (chat or few-shot prompting, sampling, seed), and the selection rule
(mean of pruned ÷ dense, ties to the later layer, layer 0 kept) as named, switchable choices.

Tiny random models: the probe's targets are the dense model's own answers under the
evaluation's settings, so the dense probe accuracy is 1 exactly when the probe generates
as the evaluation does.
"""

from __future__ import annotations

import copy

import pytest
from helpers.models import CHAT_TEMPLATE, make_tiny_model, make_tokenizer
from helpers.probes import NUM_LAYERS, probe_setup, raw_generative_task

from layerprune.evaluation.generative import Sampling, evaluate_generative
from layerprune.io import write_json
from layerprune.scoring.iterative import (
    choose_layer,
    iterative_removal,
    layers_removed,
    load_probe_tasks,
    probe_score,
)

pytestmark = pytest.mark.usefixtures("single_thread")

PAPER_SAMPLING = Sampling(temperature=0.9, top_k=50, top_p=1.0)  # the authors' probe sampling
SEED = 7
BATCH = 4


def chat_tokenizer():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def sampled_chat_task(model, tokenizer) -> dict:
    """A prepared generative task whose targets are the dense model's sampled chat answers."""
    raw = raw_generative_task(8)
    task = {
        "source": "test",
        "type": "generative",
        "dataset": "bigbench",
        "grader": "exact_match",
        "num_fewshot": 1,
        "seed": SEED,
        "fewshot": raw["fewshot"],
        "samples": raw["samples"],
    }
    answers = evaluate_generative(
        model, tokenizer, task, 3, BATCH, progress=False, prompting="chat", sampling=PAPER_SAMPLING, seed=SEED
    )
    assert answers["prompting"] == "chat"
    for sample, record in zip(task["samples"], answers["samples"], strict=True):
        sample["targets"] = [record["output"]]
    return task


def test_generative_probe_is_generated_with_the_tasks_prompting_and_sampling(tmp_path):
    model, tokenizer = make_tiny_model("llama", NUM_LAYERS, seed=0), chat_tokenizer()
    task = sampled_chat_task(model, tokenizer)
    write_json(tmp_path / "gen.json", task)
    # What a few-shot greedy probe (the old behaviour) would measure on the same task: not 1.
    fewshot_greedy = evaluate_generative(model, copy.deepcopy(tokenizer), task, 3, BATCH, progress=False)
    assert fewshot_greedy["prompting"] == "fewshot" and fewshot_greedy["value"] < 1.0, "the test needs a difference"

    probes = load_probe_tasks([tmp_path / "gen.json"], 8, 3, prompting="chat", sampling=PAPER_SAMPLING)
    assert (probes[0]["prompting"], probes[0]["sampling"], probes[0]["seed"]) == ("chat", PAPER_SAMPLING, SEED)
    result = iterative_removal(model, tokenizer, probes, max_k=1, batch_size=BATCH)
    assert result["dense_accuracy"] == {"gen": 1.0}
    assert result["probe_generation"]["gen"] == {
        "prompting": "chat",
        "sampling": {"temperature": 0.9, "top_k": 50, "top_p": 1.0, "num_samples": 1},
        "seed": SEED,
        "max_new_tokens": 3,
    }
    # every candidate's probe accuracy is the evaluation's accuracy of that pruned model
    for layer in (1, NUM_LAYERS - 1):
        with layers_removed(model, [layer]):
            expected = evaluate_generative(
                model, tokenizer, task, 3, BATCH, progress=False, prompting="chat", sampling=PAPER_SAMPLING, seed=SEED
            )["value"]
        assert result["rounds"][0]["accuracy"][str(layer)] == {"gen": expected}


def test_probe_defaults_are_the_evaluations_defaults(tmp_path):
    """Without explicit settings a probe prompts as the evaluation's default does (auto: chat for a
    tokenizer with a chat template) and decodes greedily."""
    model, tokenizer = make_tiny_model("llama", 4, seed=1), chat_tokenizer()
    task = sampled_chat_task(model, tokenizer)
    greedy_chat = evaluate_generative(model, tokenizer, task, 3, BATCH, progress=False, prompting="auto", seed=SEED)
    for sample, record in zip(task["samples"], greedy_chat["samples"], strict=True):
        sample["targets"] = [record["output"]]
    write_json(tmp_path / "gen.json", task)
    fewshot_greedy = evaluate_generative(model, tokenizer, task, 3, BATCH, progress=False, prompting="fewshot")
    assert fewshot_greedy["value"] < 1.0, "the test needs a difference"
    probes = load_probe_tasks([tmp_path / "gen.json"], 8, 3)
    assert (probes[0]["prompting"], probes[0]["sampling"]) == ("auto", Sampling())
    assert iterative_removal(model, tokenizer, probes, max_k=1, batch_size=BATCH)["dense_accuracy"] == {"gen": 1.0}


def test_load_probe_tasks_settings_per_task_and_errors(tmp_path):
    model, tokenizer = make_tiny_model("llama", 4), chat_tokenizer()
    task = sampled_chat_task(model, tokenizer)
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        write_json(path, task)
    probes = load_probe_tasks(paths, 2, [3, 5], prompting=["chat", "fewshot"], sampling=[PAPER_SAMPLING, None])
    assert [(p["name"], p["max_new_tokens"], p["prompting"]) for p in probes] == [("a", 3, "chat"), ("b", 5, "fewshot")]
    assert [p["sampling"] for p in probes] == [PAPER_SAMPLING, Sampling()]
    assert [len(p["samples"]) for p in probes] == [2, 2]
    with pytest.raises(ValueError, match="2 probe tasks but 1 prompting values"):
        load_probe_tasks(paths, 2, prompting=["chat"])
    with pytest.raises(ValueError, match="prompting must be one of auto, chat, fewshot, got 'greedy'"):
        load_probe_tasks(paths, 2, prompting="greedy")
    with pytest.raises(TypeError, match="sampling must be"):
        load_probe_tasks(paths, 2, sampling={"temperature": 0.9})


# ------------------------------------------------------------------ selection rule


def test_tie_break_and_first_layer_are_choices():
    """Layers 0, 2 and 4 are exact identities: the paper's rule takes 4 (later tie, layer 0 kept);
    `earlier` takes 2; with layer 0 a candidate, `earlier` takes 0."""
    model, tokenizer, tasks = probe_setup(0, 2, 4)
    paper = iterative_removal(model, tokenizer, tasks, max_k=1)
    assert paper["selection"] == {"criterion": "mean_ratio", "tie_break": "later", "keep_first_layer": True}
    assert paper["removal_order"] == [4] and "0" not in paper["rounds"][0]["retention"]
    assert iterative_removal(model, tokenizer, tasks, max_k=1, tie_break="earlier")["removal_order"] == [2]
    anywhere = iterative_removal(model, tokenizer, tasks, max_k=2, tie_break="earlier", keep_first_layer=False)
    assert anywhere["rounds"][0]["retention"]["0"] == 1.0
    assert anywhere["removal_order"] == [0, 2]
    assert len(anywhere["rounds"][0]["retention"]) == NUM_LAYERS
    with pytest.raises(ValueError, match="tie_break must be one of later, earlier"):
        iterative_removal(model, tokenizer, tasks, max_k=1, tie_break="first")
    with pytest.raises(ValueError, match="criterion must be one of mean_ratio, mean_score"):
        iterative_removal(model, tokenizer, tasks, max_k=1, criterion="mean")


def test_mean_ratio_and_mean_score_can_choose_differently():
    """The paper normalises each task by its dense score (so ROUGE-L's small scale counts as much as
    accuracy); a plain mean lets the larger-scale task decide."""
    dense = {"gsm8k": 0.5, "xsum": 0.1, "dead": 0.0}
    candidates = {3: {"gsm8k": 0.5, "xsum": 0.05, "dead": 0.0}, 5: {"gsm8k": 0.4, "xsum": 0.1, "dead": 0.0}}
    ratio = {layer: probe_score(acc, dense, "mean_ratio") for layer, acc in candidates.items()}
    plain = {layer: probe_score(acc, dense, "mean_score") for layer, acc in candidates.items()}
    assert ratio == pytest.approx({3: 0.75, 5: 0.9})  # the dense-zero task is left out of both
    assert plain == pytest.approx({3: 0.275, 5: 0.25})
    assert (choose_layer(ratio), choose_layer(plain)) == (5, 3)
    assert choose_layer({1: 0.5, 2: 0.5 - 1e-12, 3: 0.4}) == 2
    assert choose_layer({1: 0.5, 2: 0.5 - 1e-12, 3: 0.4}, "earlier") == 1


def test_mean_score_criterion_end_to_end():
    model, tokenizer, tasks = probe_setup(2)
    result = iterative_removal(model, tokenizer, tasks, max_k=1, criterion="mean_score")
    first = result["rounds"][0]
    for layer, accuracies in first["accuracy"].items():
        assert first["retention"][layer] == pytest.approx((accuracies["mc"] + accuracies["gen"]) / 2)
    assert result["removal_order"] == [2]  # the identity layer keeps every answer under either criterion
