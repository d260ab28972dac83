"""Tiny offline models, tokenizers and checkpoints, and the chat template written onto them.

Everything here is built from configs with fixed seeds: no hub access. torch and transformers are imported
inside the functions, so importing this module (as every test collection does) costs neither.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# No hub access, also for scripts that use these helpers outside pytest (bench/); conftest.py sets the same.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "olmo2")
# Families whose tiny configs mix sliding-window and full-attention layers (`layer_types`).
HYBRID_FAMILIES = ("qwen2", "qwen3", "gemma2", "gemma3")
VOCAB_SIZE = 128
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
SLIDING_WINDOW = 4

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a tiny random model is enough for unit tests of layer pruning",
    "pruning removes decoder layers and keeps the rest of the network as it is",
    "every kept layer keeps its weights while its cache slot is renumbered",
    "hello world",
]

# The tiny tokenizer has no chat template; this minimal one renders every message as real tokens
# (<bos> ... <eos>), so chat prompts of CORPUS words have no <unk> in them.
CHAT_TEMPLATE = (
    "{% for m in messages %}<bos> {{ m['content'] }} <eos> {% endfor %}{% if add_generation_prompt %}<bos>{% endif %}"
)


def _layer_types(family: str, num_layers: int) -> list[str] | None:
    """Per-layer attention kinds used by the hybrid families (None: no layer_types)."""
    if family == "gemma3":
        # sliding, sliding, full, sliding, sliding, full, ...
        return ["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(num_layers)]
    if family == "gemma2":
        # sliding, full, sliding, full, ... (Gemma 2's own default pattern)
        return ["full_attention" if i % 2 else "sliding_attention" for i in range(num_layers)]
    if family == "qwen2":
        # full for the first two layers, sliding above (Qwen2's max_window_layers convention).
        return ["full_attention" if i < 2 else "sliding_attention" for i in range(num_layers)]
    if family == "qwen3":
        # full, sliding, full, sliding, ...: an explicit list that max_window_layers could not express.
        return ["sliding_attention" if i % 2 else "full_attention" for i in range(num_layers)]
    return None


def make_config(family: str = "llama", num_layers: int = 6, tie_word_embeddings: bool = False, **overrides):
    """A tiny config of `family` (see FAMILIES)."""
    import transformers

    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
    )
    qwen_sliding = {"use_sliding_window": True, "sliding_window": SLIDING_WINDOW}
    gemma = {"head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": SLIDING_WINDOW}
    families = {
        "llama": (transformers.LlamaConfig, {}),
        "mistral": (transformers.MistralConfig, {"sliding_window": SLIDING_WINDOW}),
        "qwen2": (transformers.Qwen2Config, {**qwen_sliding, "max_window_layers": 2}),
        "qwen3": (transformers.Qwen3Config, {**qwen_sliding, "head_dim": 8}),
        # Gemma 2 keeps its default attention and final logit soft-capping.
        "gemma2": (transformers.Gemma2Config, gemma),
        "gemma3": (transformers.Gemma3TextConfig, gemma),
        # Phi-3 (mini-4k) applies one sliding window to every layer.
        "phi3": (transformers.Phi3Config, {"sliding_window": SLIDING_WINDOW}),
        "olmo2": (transformers.Olmo2Config, {}),
    }
    if family not in families:
        raise ValueError(f"unknown family {family}")
    config_class, specific = families[family]
    layer_types = _layer_types(family, num_layers)
    if layer_types is not None:
        specific = {**specific, "layer_types": layer_types}
    return config_class(**{**common, **specific, **overrides})


def attn_implementation(family: str) -> str:
    """sdpa, except for Gemma 2, whose attention logit soft-capping transformers only runs eagerly
    (from_pretrained picks the same, so a reloaded model computes exactly alike)."""
    return "eager" if family == "gemma2" else "sdpa"


def make_tiny_model(
    family: str = "llama", num_layers: int = 6, seed: int = 0, tie_word_embeddings: bool = False, **overrides
):
    """A float32, eval-mode, seeded random causal LM of `family`."""
    import torch
    from transformers import AutoModelForCausalLM

    config = make_config(family, num_layers, tie_word_embeddings=tie_word_embeddings, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        config, dtype=torch.float32, attn_implementation=attn_implementation(family)
    )
    return model.eval()


def make_tokenizer(with_pad: bool = True):
    """A word-level fast tokenizer trained on CORPUS (ids: <pad>=0, <eos>=1, <bos>=2, <unk>=3)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"]))
    special = {"eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"}
    if with_pad:
        special["pad_token"] = "<pad>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    assert len(tokenizer) <= VOCAB_SIZE
    return tokenizer


def make_tiny_checkpoint(
    path,
    family: str = "llama",
    num_layers: int = 4,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    with_pad: bool = True,
    chat_template: str | None = None,
) -> Path:
    """Save a tiny random model of `family` and a tokenizer (with `chat_template`, if given) to `path`; return it."""
    path = Path(path)
    model = make_tiny_model(family, num_layers, seed=seed, tie_word_embeddings=tie_word_embeddings)
    model.save_pretrained(path)
    tokenizer = make_tokenizer(with_pad=with_pad)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(path)
    return path


def sample_ids(length: int = 12, batch: int = 1, seed: int = 1) -> torch.Tensor:
    """Random token ids that avoid the special tokens."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB_SIZE, (batch, length), generator=generator)
