"""Scoring the decoder layers: one-shot scores (cosine, perplexity), ablation and iterative removal."""
