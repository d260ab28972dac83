"""Batched, length-sorted self-generation vs one prompt at a time, greedy, on the CPU.

Runs SmolLM2-135M-Instruct (or any checkpoint) twice over the same chat prompts:

* one-at-a-time: `model.generate` on each prompt alone (no padding);
* batched: layerprune's own selfgen path (`TransformersGenerator` +
  `generate_responses`: length-sorted batches, left padding, KV cache).

Prints generated tokens per second of each (tokens up to and including the end of
turn; wall clock and process CPU time), their ratio, and how many responses are
identical. Exits non-zero if fewer than --min-match of them are.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

# the default study's materialized model (its folder is a fingerprint of the model's source)
DEFAULT_MODEL = next((str(p) for p in sorted(Path("results/shared/models").glob("*/smollm2-135m"))), "")
# Varied lengths on purpose (2 to ~60 words), so padding and sorting matter.
PROMPTS = [
    "What is 7 times 8?",
    "Name three primary colours.",
    "Translate 'good morning' into French.",
    "Write a haiku about autumn leaves.",
    "Explain in one sentence why the sky is blue.",
    "Give me a synonym for 'happy'.",
    "What is the capital of Australia?",
    "List four animals that live in the ocean.",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "How many days are there in a leap year?",
    "Unscramble the letters 'tca' into an English word.",
    "Is a tomato a fruit or a vegetable? Answer briefly and say why.",
    "Describe the water cycle for a ten-year-old.",
    "What does a compiler do?",
    "Suggest a name for a small bakery that sells bread and coffee in a seaside town.",
    "Write a short thank-you note to a teacher who helped you learn to read.",
    "What is 15 minus 9?",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "Give two tips for getting better sleep.",
    "Put these words in alphabetical order: pear, apple, orange, banana.",
    "Which category does the word 'hammer' belong to: tools, fruits or vehicles?",
    "Explain what photosynthesis is, mentioning sunlight, water and carbon dioxide, in simple words "
    "that a child could understand, and keep it short.",
    "Why do we have seasons on Earth?",
    "Write one sentence that uses the word 'serendipity'.",
    "I have a meeting at 3 pm and it lasts 90 minutes. The bus home takes 25 minutes and leaves every "
    "half hour on the hour and half past. When will I get home at the earliest?",
    "What is the opposite of 'ancient'?",
    "Convert 2 kilometres into metres.",
    "Tell me a fun fact about octopuses.",
    "Rewrite this sentence in the passive voice: The cat chased the mouse.",
    "What is the plural of 'child'?",
    "My friend is sad because her exam went badly. She studied a lot and feels it was unfair. What "
    "could I say to cheer her up without dismissing her feelings? Give me two short suggestions.",
    "Count the vowels in the word 'education'.",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory (materialized SmolLM2-135M)")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--system-prompt", default="You are a helpful assistant.")
    parser.add_argument("--min-match", type=float, default=1.0, help="fail below this fraction of equal outputs")
    parser.add_argument("--show-mismatches", type=int, default=3)
    return parser.parse_args()


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from layerprune.data.selfgen import TransformersGenerator, generate_responses, render
    from layerprune.models.checkpoints import load_checkpoint

    if not Path(args.model).is_dir():
        sys.exit(f"{args.model}: no checkpoint; run `layerprune materialize` or the pipeline first")
    model, tokenizer = load_checkpoint(args.model, dtype="float32")
    generator = TransformersGenerator(model, tokenizer, args.max_new_tokens, temperature=0.0, top_p=1.0)
    prompts = (PROMPTS * (args.num_prompts // len(PROMPTS) + 1))[: args.num_prompts]
    system = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []
    texts = [render(tokenizer, [*system, {"role": "user", "content": p}]) for p in prompts]
    ids = [tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids for text in texts]
    lengths = [x.shape[1] for x in ids]
    stops = generator.stop_ids
    print(
        f"model {args.model} ({model.config.num_hidden_layers} layers), {len(texts)} prompts of "
        f"{min(lengths)}-{max(lengths)} tokens, greedy, max_new_tokens {args.max_new_tokens}, "
        f"batch {args.batch_size}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
        flush=True,
    )

    def useful(row: list[int]) -> tuple[list[int], int]:
        """The response's tokens before the stop token, and how many were generated (stop included)."""
        cut = next((i for i, token in enumerate(row) if token in stops), None)
        return (row, len(row)) if cut is None else (row[:cut], cut + 1)

    @torch.no_grad()
    def one_at_a_time():
        outputs = []
        for x in ids:
            out = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stops,
            )
            outputs.append(useful(out[0, x.shape[1] :].tolist()))
        return outputs

    def batched():
        return generate_responses(generator, texts, lengths, args.batch_size, seed=0)

    single, single_wall, single_cpu = timed(one_at_a_time)
    single_tokens = sum(n for _, n in single)
    print(f"one-at-a-time: {single_tokens} tokens in {single_wall:7.1f} s wall, {single_cpu:7.1f} s cpu", flush=True)
    many, batch_wall, batch_cpu = timed(batched)
    batch_tokens = sum(len(tokenizer(g.text, add_special_tokens=False).input_ids) for g in many)
    print(f"batched:       {batch_tokens} tokens (re-tokenized) in {batch_wall:7.1f} s wall, {batch_cpu:7.1f} s cpu")

    single_texts = [tokenizer.decode(row, skip_special_tokens=True).strip() for row, _ in single]
    matches = [a == b.text for a, b in zip(single_texts, many, strict=True)]
    truncated = sum(g.truncated for g in many)
    print(f"identical responses: {sum(matches)}/{len(matches)}; truncated at max_new_tokens: {truncated}")
    for index in [i for i, ok in enumerate(matches) if not ok][: args.show_mismatches]:
        a, b = single_texts[index], many[index].text
        common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        print(
            f"  prompt {index}: differ from character {common}: "
            f"{a[common : common + 40]!r} vs {b[common : common + 40]!r}"
        )
    # Same numerator for both (the one-at-a-time token count), so the ratio is the time ratio.
    print(
        f"tokens/s: one-at-a-time {single_tokens / single_wall:.1f} wall ({single_tokens / single_cpu:.1f} cpu), "
        f"batched {single_tokens / batch_wall:.1f} wall ({single_tokens / batch_cpu:.1f} cpu)"
    )
    print(f"speed-up batched / one-at-a-time: {single_wall / batch_wall:.2f}x wall, {single_cpu / batch_cpu:.2f}x cpu")
    if sum(matches) < args.min_match * len(matches):
        print(f"FAIL: fewer than {args.min_match:.0%} of the responses are identical", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
