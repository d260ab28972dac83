"""BI scoring's memory (issue 26 §4): no logits are computed, and the fp32 cosine sums are chunked
without changing them."""

from __future__ import annotations

import torch
from helpers.models import CORPUS, make_tiny_model, make_tokenizer

import layerprune.scoring.score as score


def test_bi_cosines_compute_no_logits_and_chunks_agree(monkeypatch):
    torch.set_num_threads(1)
    model, tokenizer = make_tiny_model("llama", num_layers=3), make_tokenizer()
    texts = [" ".join(CORPUS)[i * 40 : i * 40 + 120] for i in range(5)]
    head_calls = []
    model.lm_head.register_forward_hook(lambda *args: head_calls.append(1))
    whole = score.collect_layer_cosines(model, tokenizer, texts, max_length=32, batch_size=3)
    assert head_calls == [], "the LM head (full-vocabulary logits) never runs while scoring"
    monkeypatch.setattr(score, "COSINE_CHUNK_TOKENS", 5)  # many chunks per batch
    chunked = score.collect_layer_cosines(model, tokenizer, texts, max_length=32, batch_size=3)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    # the same cosines as the full model's forward (the removed logits changed nothing else)
    monkeypatch.setattr(score, "base_model", lambda model: model)
    full = score.collect_layer_cosines(model, tokenizer, texts, max_length=32, batch_size=3)
    assert head_calls, "the control did run the head"
    torch.testing.assert_close(full, whole, rtol=1e-6, atol=1e-6)
