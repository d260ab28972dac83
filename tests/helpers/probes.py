"""Iterative-pruning probe tasks on a tiny Llama, labelled with the dense model's own answers (accuracy 1)."""

from __future__ import annotations

import copy

from helpers.models import make_tiny_model, make_tokenizer
from helpers.records import phrase

NUM_LAYERS = 6
CHOICES = ["fox", "dog", "model", "layers", "world", "weights"]


def make_identity(model, *layers: int) -> None:
    """Zero both residual branches' output projections: the layer passes its input through."""
    import torch

    with torch.no_grad():
        for index in layers:
            layer = model.model.layers[index]
            for linear in (layer.self_attn.o_proj, layer.mlp.down_proj):
                linear.weight.zero_()
                if linear.bias is not None:
                    linear.bias.zero_()


def raw_classification_task(count: int = 12) -> dict:
    """A probe classification task of CORPUS phrases, four CHOICES each, labels still to fill in."""
    samples = [
        {"id": i, "input": phrase(3 * i, 2 + i % 4), "choices": CHOICES[i % 2 : i % 2 + 4], "label": 0}
        for i in range(count)
    ]
    fewshot = [{"id": 100, "input": "the lazy", "choices": ["dog", "fox"], "label": 0}]
    return {"name": "mc", "type": "classification", "fewshot": fewshot, "samples": samples, "max_new_tokens": 16}


def raw_generative_task(count: int = 8) -> dict:
    """A probe generative task (one shot) of CORPUS phrases whose targets are placeholders to fill in."""
    samples = [{"id": i, "input": phrase(5 * i + 1, 2 + i % 3), "targets": ["?"]} for i in range(count)]
    fewshot = [{"id": 100, "input": "the quick brown", "targets": ["fox"]}]
    return {"name": "gen", "type": "generative", "fewshot": fewshot, "samples": samples, "max_new_tokens": 3}


def answered_by(model, tokenizer, classification: dict, generative: dict) -> list[dict]:
    """The tasks with the model's own answers as labels and targets (dense accuracy 1)."""
    from layerprune.evaluation.evaluate import evaluate_generative
    from layerprune.scoring.iterative import classification_prompt, continuation_loglikelihoods, encode_pair

    classification = copy.deepcopy(classification)
    pairs = [
        encode_pair(tokenizer, classification_prompt(classification["fewshot"], s["input"]), " " + c)
        for s in classification["samples"]
        for c in s["choices"]
    ]
    loglikelihoods = continuation_loglikelihoods(model, pairs, batch_size=8)
    offset = 0
    for sample in classification["samples"]:
        scores = loglikelihoods[offset : offset + len(sample["choices"])]
        offset += len(sample["choices"])
        sample["label"] = max(range(len(scores)), key=scores.__getitem__)
    generative = copy.deepcopy(generative)
    outputs = evaluate_generative(model, tokenizer, generative, generative["max_new_tokens"], 4, progress=False)
    for sample, record in zip(generative["samples"], outputs["samples"], strict=True):
        sample["targets"] = [record["output"]]
    return [classification, generative]


def probe_setup(*identity: int, seed: int = 0):
    """(model, tokenizer, tasks): a seeded tiny Llama of NUM_LAYERS whose layers `identity` are exact identities,
    and the two probe tasks answered by it."""
    model, tokenizer = make_tiny_model("llama", NUM_LAYERS, seed=seed), make_tokenizer()
    make_identity(model, *identity)
    return model, tokenizer, answered_by(model, tokenizer, raw_classification_task(), raw_generative_task())
