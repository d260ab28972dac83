"""layerprune: score, prune, recover and evaluate decoder layers of LLMs."""

__version__ = "0.1.0"
