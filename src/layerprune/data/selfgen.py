"""Self-Generated Responses (SGR): the dense model answers the prompt set.

The output is TRL's conversational prompt–completion JSONL, generated once per
model and shared by every scoring method and pruning ratio. Prompts are sorted
by length into batches (less padding, KV cache on) and every batch is sampled
from its own seed, derived from the config seed and the batch's position, so
that a run interrupted and resumed writes the very same file as one that was not.

Resumption: each finished batch is appended to a partial JSONL beside the output
and fsync'ed; a re-run with the same settings skips the batches already there.
The output itself appears only at the end, by an atomic rename, so a partial file
is never taken for the finished dataset.

Backends: transformers `generate` (the tested CPU path) or vLLM, used when it is
installed and a CUDA GPU is present (`selfgen.backend: auto`); both return the
same records (not the same texts: the kernels differ).

What "resumed equals uninterrupted" rests on, per backend. transformers: a batch's
samples depend only on its prompts and its seed (same machine, same torch). vLLM:
every request carries its own seed, but its logits depend on what else the engine
runs beside it (batch shape, prefix-cache hits); vLLM makes them independent of
that only in batch-invariant mode (`VLLM_BATCH_INVARIANT=1`, beta in vLLM 0.30,
NVIDIA compute capability >= 8.0), which `selfgen.batch_invariant` (default on)
turns on, with prefix caching off. With it off, a resumed vLLM run is a valid
sample from the same settings but not byte-equal to an uninterrupted one. Neither
backend promises equality across GPU models, tensor_parallel_size or versions.

Prompt-free SGR (Magpie) lives in `layerprune.data.magpie`; `self_generate` answers its
questions like any prompt set.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from layerprune.io import content_fingerprint, read_jsonl_checked, sha256_file, write_json, write_jsonl

BACKENDS = ("auto", "transformers", "vllm")
PARTIAL_FORMAT = 2  # 2: the model by content


@dataclass(frozen=True)
class Generation:
    """One sampled response: its text (stripped) and whether it hit max_new_tokens without a stop token."""

    text: str
    truncated: bool


def batch_seed(seed: int, batch_index: int) -> int:
    """The seed of one batch: a function of the config seed and the batch's place only.

    Seeding every batch afresh (rather than once per run) makes a batch's samples
    independent of which batches ran before it in this process, which is what
    lets a resumed run reproduce an uninterrupted one.
    """
    digest = hashlib.sha256(f"{seed}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def batch_request_seed(seed: int, position: int) -> int:
    """The seed of the request at `position` in a batch seeded `seed` (vLLM seeds each request)."""
    return (seed + position) % (1 << 63)


# prompts per vLLM `generate` call (VLLMGenerator.prompts_per_call): thousands, as its scheduler expects;
# the partial file is written after each call, so a kill loses at most one call's answers
VLLM_PROMPTS_PER_CALL = 4096


@dataclass(frozen=True)
class VLLMOptions:
    """What vLLM's engine is built with (selfgen settings; only the vllm backend reads them)."""

    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    batch_invariant: bool = True

    def engine_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "tensor_parallel_size": self.tensor_parallel_size,
        }
        if self.max_model_len is not None:
            args["max_model_len"] = self.max_model_len
        if self.batch_invariant:
            # a prefix-cache hit computes a prompt's KV in another shape than a fresh prefill
            args["enable_prefix_caching"] = False
        return args


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(backend: str, has_vllm: bool | None = None, has_cuda: bool | None = None) -> str:
    """`auto` -> vllm when vLLM is importable and a CUDA GPU is present, else transformers.

    Asking for `vllm` explicitly without either is an error rather than a silent
    fallback, so a study never runs on a different backend than it says.
    """
    if backend not in BACKENDS:
        raise ValueError(f"selfgen.backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    has_vllm = vllm_available() if has_vllm is None else has_vllm
    has_cuda = torch.cuda.is_available() if has_cuda is None else has_cuda
    if backend == "auto":
        return "vllm" if has_vllm and has_cuda else "transformers"
    if backend == "vllm":
        if not has_vllm:
            raise RuntimeError(
                "selfgen.backend=vllm, but vLLM is not installed: `pip install -e .[vllm]` on a CUDA machine, "
                "or set selfgen.backend to auto or transformers"
            )
        if not has_cuda:
            raise RuntimeError(
                "selfgen.backend=vllm needs a CUDA GPU and none is visible; set selfgen.backend to auto or transformers"
            )
    return backend


def stop_token_ids(model: Any, tokenizer: Any, extra: Sequence[int] = ()) -> list[int]:
    """Token ids that end a response: the generation config's EOS ids, the tokenizer's, and `extra`."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id, *extra):
        for token in value if isinstance(value, list | tuple) else [value]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids


class TransformersGenerator:
    """Batched decoding on a transformers model with the KV cache; greedy when temperature is 0.

    The loop is `model.generate`'s (left padding, position ids from the attention
    mask, the library's temperature and top-p warpers, multinomial sampling), with one
    difference: a row that has produced its stop token leaves the batch, its KV cache
    rows included (`DynamicCache.batch_select_indices`). `generate` keeps computing
    finished rows until the longest answer ends, which on SmolLM2 answers wastes about
    40% of a batch's work (bench/selfgen_batching.py).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        extra_stop_ids: Sequence[int] = (),
    ) -> None:
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens = max_new_tokens
        self.stop_ids = stop_token_ids(model, tokenizer, extra_stop_ids)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.do_sample = temperature > 0
        # Only the config's temperature and top-p shape the distribution: a hub model's
        # generation_config (Qwen ships top_k=20, repetition_penalty=1.05) is not applied.
        self.warpers = LogitsProcessorList()
        if self.do_sample and temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if self.do_sample and top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _next_tokens(self, logits: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        scores = self.warpers(previous, logits.float())
        if not self.do_sample:
            return scores.argmax(-1)
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)

    @torch.no_grad()
    def __call__(self, texts: list[str], seed: int) -> list[Generation]:
        from transformers import DynamicCache

        torch.manual_seed(seed)
        device = next(self.model.parameters()).device
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        mask = batch["attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        cache = DynamicCache(config=self.model.config)
        logits = self.model(
            input_ids=batch["input_ids"],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        stops = torch.tensor(self.stop_ids, device=device)
        rows = torch.arange(len(texts), device=device)  # batch row -> text index
        last = positions[:, -1]
        tokens = batch["input_ids"][:, -1]
        generated: list[list[int]] = [[] for _ in texts]
        finished = [False] * len(texts)
        for step in range(self.max_new_tokens):
            tokens = self._next_tokens(logits, tokens)
            ended = torch.isin(tokens, stops)
            for row, token, end in zip(rows.tolist(), tokens.tolist(), ended.tolist(), strict=True):
                if end:
                    finished[row] = True
                else:
                    generated[row].append(token)
            if step == self.max_new_tokens - 1 or bool(ended.all()):
                break
            if bool(ended.any()):
                keep = (~ended).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, mask, last, tokens = rows[keep], mask[keep], last[keep], tokens[keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            last = last + 1
            logits = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=last[:, None],
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1]
        return [
            Generation(self.tokenizer.decode(ids, skip_special_tokens=True).strip(), truncated=not done)
            for ids, done in zip(generated, finished, strict=True)
        ]


class VLLMGenerator:
    """The same interface on vLLM (GPU only; not exercised by the CPU test suite).

    Prompts go in as token ids (the chat template already holds BOS), each request
    with its own seed, so the batch composition does not change a sample.
    """

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        extra_stop_ids: Sequence[int] = (),
        options: VLLMOptions | None = None,
    ) -> None:
        options = options or VLLMOptions()
        # Read by vLLM's workers when the engine starts, so it is set before LLM(...), and set
        # either way: the setting decides, not whatever the job's environment held. Batch-invariant
        # mode swaps cuBLAS for vLLM's batch-invariant Triton kernels (matmul, attention, reductions):
        # slower, on an A100 by an amount not measured here (bench/cost_model.py assumes 2x).
        os.environ["VLLM_BATCH_INVARIANT"] = "1" if options.batch_invariant else "0"
        if options.batch_invariant:
            capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
            if capability is not None and capability < (8, 0):
                raise RuntimeError(
                    f"selfgen.batch_invariant needs an NVIDIA GPU of compute capability >= 8.0, this one is "
                    f"{capability[0]}.{capability[1]}; set selfgen.batch_invariant: false (a resumed run then "
                    "may differ from an uninterrupted one)"
                )
        from transformers import AutoTokenizer, GenerationConfig
        from vllm import LLM

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        try:
            generation_config = GenerationConfig.from_pretrained(model_dir)
        except OSError:
            generation_config = None
        holder = type("Holder", (), {"generation_config": generation_config})()
        self.stop_ids = stop_token_ids(holder, self.tokenizer, extra_stop_ids)
        self.max_model_len = options.max_model_len
        self.llm = LLM(model=str(model_dir), dtype=dtype, seed=seed, **options.engine_args())
        self.settings = dict(
            max_tokens=max_new_tokens, temperature=temperature, top_p=top_p if temperature > 0 else 1.0
        )

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    # vLLM schedules the requests of one `generate` call together (continuous batching): a call of a
    # batch of 64 waits for its longest answer with the GPU mostly idle, a call of thousands keeps it
    # full. generate_responses hands it this many prompts (many batches) per call; a kill loses one call.
    prompts_per_call = VLLM_PROMPTS_PER_CALL

    def __call__(self, texts: list[str], seed: int) -> list[Generation]:
        return self.generate_seeded(texts, [batch_request_seed(seed, j) for j in range(len(texts))])

    def generate_seeded(self, texts: list[str], seeds: list[int]) -> list[Generation]:
        """One vLLM call over `texts`, request i sampled from `seeds[i]` (so grouping changes no sample)."""
        from vllm import SamplingParams

        prompts = [{"prompt_token_ids": self.tokenizer(t, add_special_tokens=False).input_ids} for t in texts]
        params = [SamplingParams(**self.settings, seed=seed, stop_token_ids=self.stop_ids) for seed in seeds]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [Generation(o.outputs[0].text.strip(), o.outputs[0].finish_reason == "length") for o in outputs]


def make_generator(
    model_dir: str | Path,
    backend: str,
    dtype: str,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    extra_stop_text: str | None = None,
    vllm_options: VLLMOptions | None = None,
) -> tuple[Any, Any, str]:
    """The generator for the resolved backend, the tokenizer, and the backend's name."""
    resolved = resolve_backend(backend)
    if resolved == "vllm":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        extra = _first_token(tokenizer, extra_stop_text)
        generator = VLLMGenerator(model_dir, dtype, max_new_tokens, temperature, top_p, seed, extra, vllm_options)
        return generator, tokenizer, resolved
    from layerprune.models.checkpoints import load_checkpoint

    model, tokenizer = load_checkpoint(model_dir, dtype=dtype)
    extra = _first_token(tokenizer, extra_stop_text)
    return TransformersGenerator(model, tokenizer, max_new_tokens, temperature, top_p, extra), tokenizer, resolved


def _first_token(tokenizer: Any, text: str | None) -> list[int]:
    if not text or not text.strip():
        return []
    return tokenizer(text.strip(), add_special_tokens=False).input_ids[:1]


def render(tokenizer: Any, conversation: list[dict]) -> str:
    return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None, new_tokens: int = 0
) -> list[list[int]]:
    """Indices grouped into batches of similar length (stable: ties keep file order).

    With `max_tokens`, a batch also ends before rows x (its longest prompt + `new_tokens`) would
    exceed it, so the KV cache a batch fills is bounded however long the prompts; a prompt that
    alone exceeds it gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if max_tokens is None:
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    for index in order:  # ascending: the newest row is a batch's longest
        batch = batches[-1] if batches else None
        if batch and len(batch) < batch_size and (len(batch) + 1) * (lengths[index] + new_tokens) <= max_tokens:
            batch.append(index)
        else:
            batches.append([index])
    return batches


def generate_responses(
    generator: Callable[[list[str], int], list[Generation]],
    texts: list[str],
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    done: dict[int, Generation] | None = None,
    on_batch: Callable[[int, list[int], list[Generation]], None] | None = None,
    max_batch_tokens: int | None = None,
    max_new_tokens: int = 0,
) -> list[Generation]:
    """Answer every rendered prompt in length-sorted batches, each batch from its own seed.

    Batches whose every index is in `done` are skipped (resumption); `on_batch`
    gets each newly generated batch (its number, indices and generations), e.g.
    to append it to the partial file before the next one starts. `max_batch_tokens`
    bounds a batch's rows x (longest prompt + `max_new_tokens`); the batches then run
    longest first, so one that does not fit in memory fails at the start, not hours in
    (a batch's seed is its number, so the order changes no output). A generator with
    `prompts_per_call` (vLLM) is called with that many prompts at a time, many batches together,
    each request seeded as in its own batch (`generate_seeded`), and each batch is still handed to
    `on_batch` on its own.
    """
    done = dict(done or {})
    batches = length_sorted_batches(lengths, batch_size, max_batch_tokens, max_new_tokens)
    todo = [b for b, indices in enumerate(batches) if not all(i in done for i in indices)]
    if max_batch_tokens is not None:
        todo.reverse()
    if len(todo) < len(batches):
        print(f"resuming: {len(batches) - len(todo)} of {len(batches)} batches already generated", flush=True)
    per_call = getattr(generator, "prompts_per_call", None)
    if per_call:
        # a generator that takes one seed per request (vLLM) gets many batches per call, each request
        # seeded as in its own batch: the same samples as batch by batch, the batches saved as before
        calls: list[list[int]] = []
        for number in todo:
            if not calls or sum(len(batches[b]) for b in calls[-1]) + len(batches[number]) > per_call:
                calls.append([])
            calls[-1].append(number)
        for call in tqdm(calls, desc="self-generating", unit="call"):
            requests = [
                (texts[i], batch_request_seed(batch_seed(seed, number), j))
                for number in call
                for j, i in enumerate(batches[number])
            ]
            generations = generator.generate_seeded([t for t, _ in requests], [s for _, s in requests])
            offset = 0
            for number in call:
                indices = batches[number]
                part = generations[offset : offset + len(indices)]
                offset += len(indices)
                if on_batch is not None:
                    on_batch(number, indices, part)
                done.update(zip(indices, part, strict=True))
        return [done[i] for i in range(len(texts))]
    for number in tqdm(todo, desc="self-generating", unit="batch"):
        indices = batches[number]
        generations = generator([texts[i] for i in indices], batch_seed(seed, number))
        if on_batch is not None:
            on_batch(number, indices, generations)
        done.update(zip(indices, generations, strict=True))
    return [done[i] for i in range(len(texts))]


def partial_path(out_path: str | Path) -> Path:
    out_path = Path(out_path)
    return out_path.parent / f".{out_path.name}.partial"


def _load_partial(path: Path, fingerprint: dict[str, Any]) -> dict[int, Generation]:
    """The generations of a previous run with the same settings; anything else starts afresh.

    The first line is the settings header; every following line is one record. A
    torn last line (the process died mid-write) is ignored; its batch is redone.
    """
    if not path.is_file():
        return {}
    done: dict[int, Generation] = {}
    with open(path) as handle:
        lines = handle.read().split("\n")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        header = None
    if header != {"partial": fingerprint}:
        print(f"{path}: written with other settings; starting over", flush=True)
        return {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[record["index"]] = Generation(record["text"], record["truncated"])
    return done


class PartialWriter:
    """Appends each finished batch to the partial file and fsyncs it, so a kill loses at most one batch."""

    def __init__(self, path: Path, fingerprint: dict[str, Any], done: dict[int, Generation]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Rewrite what is kept (drops a torn line), then append from there.
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as handle:
            handle.write(json.dumps({"partial": fingerprint}) + "\n")
            for index in sorted(done):
                handle.write(self._line(index, done[index]))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        self.handle = open(path, "a")  # noqa: SIM115 - held for the whole generation

    @staticmethod
    def _line(index: int, generation: Generation) -> str:
        record = {"index": index, "text": generation.text, "truncated": generation.truncated}
        return json.dumps(record, ensure_ascii=False) + "\n"

    def __call__(self, number: int, indices: list[int], generations: list[Generation]) -> None:
        self.handle.write("".join(self._line(i, g) for i, g in zip(indices, generations, strict=True)))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


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
    backend: str = "auto",
    max_batch_tokens: int | None = None,
    drop_empty: bool = False,
    drop_truncated: bool = False,
    stats_path: str | Path | None = None,
    on_batch: Callable[[int, list[int], list[Generation]], None] | None = None,
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    tensor_parallel_size: int = 1,
    batch_invariant: bool = True,
) -> int:
    """Write the dense model's answers to the prompt set as prompt–completion JSONL; return the record count.

    Empty and truncated responses are counted (and dropped when asked) in the stats
    JSON, by default `<out>.stats.json`. `on_batch` is called after each batch is
    safely in the partial file.
    """
    out_path = Path(out_path)
    stats_path = Path(stats_path) if stats_path else out_path.with_name(out_path.stem + ".stats.json")
    records = read_jsonl_checked(prompts_path)
    if not records:
        raise ValueError(f"{prompts_path}: the prompt set is empty")
    options = VLLMOptions(max_model_len, gpu_memory_utilization, tensor_parallel_size, batch_invariant)
    generator, tokenizer, resolved = make_generator(
        model_dir, backend, dtype, max_new_tokens, temperature, top_p, seed, vllm_options=options
    )
    texts = [render(tokenizer, record["prompt"]) for record in records]
    lengths = [generator.token_count(text) for text in texts]
    if resolved == "vllm" and max_model_len is not None and max(lengths) + max_new_tokens > max_model_len:
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        raise ValueError(
            f"selfgen.max_model_len={max_model_len} is shorter than prompt {longest} of {prompts_path} "
            f"({lengths[longest]} tokens) plus selfgen.max_new_tokens={max_new_tokens}: raise it, or lower "
            "prompts.max_prompt_tokens"
        )
    fingerprint = {
        "format": PARTIAL_FORMAT,
        # what the model is (weights, config, tokenizer, source record), not where: answers of a
        # model replaced at the same path are never mixed into the new one's file
        "model": content_fingerprint(model_dir),
        "prompts_sha256": sha256_file(prompts_path),
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "batch_size": batch_size,
        "max_batch_tokens": max_batch_tokens,
        "seed": seed,
        "backend": resolved,
        "dtype": dtype,
        # what changes a vLLM sample (the GPU split, and whether batching may change it)
        **(
            {"tensor_parallel_size": tensor_parallel_size, "batch_invariant": batch_invariant}
            if resolved == "vllm"
            else {}
        ),
    }
    partial = partial_path(out_path)
    done = _load_partial(partial, fingerprint)
    reused = len(done)
    writer = PartialWriter(partial, fingerprint, done)

    def after_batch(number: int, indices: list[int], generations: list[Generation]) -> None:
        writer(number, indices, generations)
        if on_batch is not None:
            on_batch(number, indices, generations)

    try:
        generations = generate_responses(
            generator, texts, lengths, batch_size, seed, done, after_batch, max_batch_tokens, max_new_tokens
        )
    finally:
        writer.close()
    empty = [i for i, g in enumerate(generations) if not g.text]
    truncated = [i for i, g in enumerate(generations) if g.truncated]
    dropped = set(empty if drop_empty else []) | set(truncated if drop_truncated else [])
    count = write_jsonl(
        out_path,
        (
            {
                "prompt": record["prompt"],
                "completion": [{"role": "assistant", "content": generation.text}],
                "source": record.get("source"),
            }
            for index, (record, generation) in enumerate(zip(records, generations, strict=True))
            if index not in dropped
        ),
    )
    stats = {
        "prompts": str(prompts_path),
        "model": str(model_dir),
        "backend": resolved,
        "settings": {k: fingerprint[k] for k in ("max_new_tokens", "temperature", "top_p", "batch_size", "seed")},
        "total": len(records),
        "resumed_records": reused,
        "empty": len(empty),
        "truncated": len(truncated),
        "drop_empty": drop_empty,
        "drop_truncated": drop_truncated,
        "dropped": len(dropped),
        "kept": count,
    }
    write_json(stats_path, stats)
    partial.unlink(missing_ok=True)
    print(
        f"selfgen: {count} of {len(records)} responses kept; empty {len(empty)}, truncated {len(truncated)} "
        f"(at {max_new_tokens} new tokens), dropped {len(dropped)}; backend {resolved}",
        flush=True,
    )
    return count


# --------------------------------------------------------------------------- Magpie
