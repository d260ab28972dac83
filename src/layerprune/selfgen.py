"""Self-Generated Responses (SGR): the dense model answers the prompt set.

The output is TRL's conversational prompt–completion JSONL, generated once per
model and shared by every scoring method and pruning ratio. Prompts are sorted
by length into batches (less padding) and sampled with a seeded generator, so
the same config gives the same file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from layerprune.io import read_jsonl, seed_everything, write_jsonl
from layerprune.models import load_checkpoint


@torch.no_grad()
def generate_responses(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
) -> list[str]:
    """Answer each conversation; greedy when temperature is 0. Order is preserved."""
    tokenizer.padding_side = "left"
    rendered = [
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        for messages in conversations
    ]
    lengths = [len(tokenizer(text, add_special_tokens=False).input_ids) for text in rendered]
    order = sorted(range(len(rendered)), key=lambda i: lengths[i])
    responses: list[str] = [""] * len(rendered)
    seed_everything(seed)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    )
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), desc="self-generating", unit="batch"):
        indices = order[start : start + batch_size]
        batch = tokenizer(
            [rendered[i] for i in indices], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            # Override sampling defaults a hub model's generation_config may carry
            # (Qwen ships top_k=20, repetition_penalty=1.05): only the config's
            # temperature and top-p shape the distribution.
            top_k=0,
            repetition_penalty=1.0,
            **sampling,
        )
        texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for index, text in zip(indices, texts, strict=True):
            responses[index] = text.strip()
    return responses


def self_generate(
    model_dir: str | Path,
    prompts_path: str | Path,
    out_path: str | Path,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
    dtype: str = "auto",
) -> int:
    """Write the dense model's answers to the prompt set as prompt–completion JSONL."""
    model, tokenizer = load_checkpoint(model_dir, dtype=dtype)
    records = read_jsonl(prompts_path)
    conversations = [record["prompt"] for record in records]
    responses = generate_responses(
        model, tokenizer, conversations, max_new_tokens, temperature, top_p, batch_size, seed
    )
    return write_jsonl(
        out_path,
        (
            {
                "prompt": conversation,
                "completion": [{"role": "assistant", "content": response}],
                "source": record.get("source"),
            }
            for conversation, response, record in zip(conversations, responses, records, strict=True)
        ),
    )
