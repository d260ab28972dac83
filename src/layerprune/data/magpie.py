"""Prompt-free SGR after Magpie (Xu et al. 2024, arXiv:2406.08464).

The dense model writes the user turns itself: its chat template is rendered up to
the start of a user turn (the "pre-query template") and sampled until the end of
that turn. Near-duplicate questions (word-shingle Jaccard) are removed, and the
kept ones form a prompt set with no reference answers, which `selfgen` then
answers like any other. A study therefore needs no prompt dataset at all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tqdm import tqdm

from layerprune.data.selfgen import VLLMOptions, batch_seed, make_generator, render
from layerprune.io import write_json, write_jsonl

MAGPIE_SENTINEL = "MAGPIE_USER_TURN_7f3a"


def magpie_user_prefix(tokenizer: Any, system_prompt: str | None = None) -> tuple[str, str]:
    """The chat template rendered up to where a user turn's text starts, and what ends the turn.

    Rendering a conversation whose user text is a sentinel and cutting there gives
    the model's own "pre-query template" (Magpie): the model then writes a user
    turn, stopped by the turn's end marker (the first token after the sentinel).
    """
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": MAGPIE_SENTINEL})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    prefix, found, suffix = text.partition(MAGPIE_SENTINEL)
    if not found:
        raise ValueError("the chat template does not render the user turn's text verbatim; Magpie cannot use it")
    return prefix, suffix


def _normalise_words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def shingles(text: str, ngram: int) -> frozenset[tuple[str, ...]]:
    """Word n-grams of the normalised text (the whole text when it is shorter than n words)."""
    words = _normalise_words(text)
    if len(words) <= ngram:
        return frozenset([tuple(words)])
    return frozenset(tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1))


class NearDuplicateFilter:
    """Keeps a text unless its shingle Jaccard similarity to a kept one reaches `threshold`.

    Exact comparison against every kept text: quadratic, but a few thousand short
    questions take seconds, and it needs no MinHash tuning.
    """

    def __init__(self, threshold: float, ngram: int) -> None:
        self.threshold, self.ngram = threshold, ngram
        self.kept: list[frozenset] = []

    def add(self, text: str) -> bool:
        candidate = shingles(text, self.ngram)
        for other in self.kept:
            union = len(candidate | other)
            if union and len(candidate & other) / union >= self.threshold:
                return False
        self.kept.append(candidate)
        return True


def magpie_prompts(
    model_dir: str | Path,
    out_path: str | Path,
    stats_path: str | Path,
    num_prompts: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
    dedup_threshold: float,
    ngram: int = 3,
    max_candidates: int | None = None,
    system_prompt: str | None = None,
    max_prompt_tokens: int | None = None,
    dtype: str = "auto",
    backend: str = "auto",
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    tensor_parallel_size: int = 1,
    batch_invariant: bool = True,
) -> dict[str, Any]:
    """Write a prompt set (no reference answers) of user turns the dense model writes itself.

    Batches of the pre-query template are sampled until `num_prompts` distinct
    questions are kept or `max_candidates` (default 4 x num_prompts) were drawn.
    Empty, truncated (no end of turn within `max_new_tokens`), too long (rendered
    prompt over `max_prompt_tokens`) and near-duplicate questions are dropped and
    counted in the stats JSON.
    """
    from layerprune.data.sources import _prompt_record

    max_candidates = max_candidates or 4 * num_prompts
    from transformers import AutoTokenizer

    # The end-of-turn marker stops a question: read it from the template first.
    prefix, suffix = magpie_user_prefix(AutoTokenizer.from_pretrained(model_dir), system_prompt)
    generator, tokenizer, resolved = make_generator(
        model_dir,
        backend,
        dtype,
        max_new_tokens,
        temperature,
        top_p,
        seed,
        extra_stop_text=suffix,
        vllm_options=VLLMOptions(max_model_len, gpu_memory_utilization, tensor_parallel_size, batch_invariant),
    )
    end_text = suffix.strip()
    dedup = NearDuplicateFilter(dedup_threshold, ngram)
    counts = {"candidates": 0, "empty": 0, "truncated": 0, "too_long": 0, "near_duplicate": 0}
    questions: list[str] = []
    progress = tqdm(total=num_prompts, desc="magpie questions", unit="question")
    number = 0
    while len(questions) < num_prompts and counts["candidates"] < max_candidates:
        size = min(batch_size, max_candidates - counts["candidates"])
        for generation in generator([prefix] * size, batch_seed(seed, number)):
            counts["candidates"] += 1
            text = generation.text.split(end_text)[0].strip() if end_text else generation.text
            if not text:
                counts["empty"] += 1
            elif generation.truncated:
                counts["truncated"] += 1
            elif (
                max_prompt_tokens is not None
                and generator.token_count(render(tokenizer, _prompt_record(text, None, "", system_prompt)["prompt"]))
                > max_prompt_tokens
            ):
                counts["too_long"] += 1
            elif not dedup.add(text):
                counts["near_duplicate"] += 1
            elif len(questions) < num_prompts:
                questions.append(text)
                progress.update(1)
        number += 1
    progress.close()
    if not questions:
        raise ValueError(f"Magpie kept no question out of {counts['candidates']} candidates ({counts})")
    model_name = Path(model_dir).name
    write_jsonl(
        out_path,
        (_prompt_record(q, None, f"magpie:{model_name}#{i}", system_prompt) for i, q in enumerate(questions)),
    )
    stats = {
        "source": "magpie",
        "model": str(model_dir),
        "backend": resolved,
        "requested": num_prompts,
        **counts,
        "kept": len(questions),
        "dedup_threshold": dedup_threshold,
        "ngram": ngram,
        "max_prompt_tokens": max_prompt_tokens,
        "pre_query_template": prefix,
    }
    write_json(stats_path, stats)
    print(
        f"magpie: kept {len(questions)} of {num_prompts} requested from {counts['candidates']} candidates "
        f"(empty {counts['empty']}, truncated {counts['truncated']}, too long {counts['too_long']}, "
        f"near-duplicate {counts['near_duplicate']})",
        flush=True,
    )
    return stats
