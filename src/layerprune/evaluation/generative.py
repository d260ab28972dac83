"""Generative evaluation: prompt (chat template or few-shot), sample, grade.

Sampling is per task (config `tasks.<name>`): greedy by default so runs are
deterministic; the paper samples at temperature 0.9 with top-k 50. With
`num_samples` > 1 per problem, code tasks report the unbiased pass@k for every
configured k; other graders average over all samples.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from layerprune.evaluation.graders import ERROR_BUCKETS, TEXT_GRADERS, first_digit, grade_code, pass_at_k
from layerprune.evaluation.sandbox import SandboxLimits, preflight_isolation
from layerprune.evaluation.tasks import answer_prefix, build_prompt, stop_strings, use_chat

if TYPE_CHECKING:
    from layerprune.config.settings import EvaluationSettings

METRIC_NAMES = {
    "exact_match": "exact_match",
    "first_digit": "first_digit_accuracy",
    "math_verify": "math_verify_accuracy",
    "rouge_l": "rouge_l",
    "code": "pass@1",
}


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    num_samples: int = 1

    @classmethod
    def from_settings(cls, settings: EvaluationSettings) -> Sampling:
        """The sampling of an evaluation's settings (evaluation.temperature, top_k, top_p, num_samples)."""
        return cls(**settings.sampling_dict())

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature <= 0:
            if self.num_samples > 1:
                raise ValueError("num_samples > 1 needs temperature > 0 (greedy decoding repeats one answer)")
            return {"do_sample": False}
        kwargs: dict[str, Any] = {"do_sample": True, "temperature": self.temperature}
        kwargs["top_k"] = self.top_k if self.top_k is not None else 0  # 0: no top-k cut (not transformers' 50)
        if self.top_p is not None:
            kwargs["top_p"] = self.top_p
        return kwargs


def stderr_of(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


class StopOnStrings(StoppingCriteria):
    """Stop each row once its continuation holds a stop string, checked incrementally.

    Decoding token ids (rather than transformers' `stop_strings`, which needs a byte-level
    vocabulary) works with any tokenizer. Each step decodes only the last `window` tokens of each
    row: a stop string is found at the step its last token is generated, so it lies within the
    newest tokens, and a token decodes to at least one character except for special and partial
    byte tokens, for which the window keeps a margin. Decoding the whole continuation at every
    step instead costs O(length^2) over a generation (at 8192 new tokens, 33 million token decodes
    per row). Rows stay stopped: `generate` keeps finished rows finished.
    """

    def __init__(self, tokenizer, stops: list[str], prompt_length: int):
        self.tokenizer, self.stops, self.prompt_length = tokenizer, stops, prompt_length
        self.window = 2 * max((len(stop) for stop in stops), default=1) + 8

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        start = max(self.prompt_length, input_ids.shape[1] - self.window)
        texts = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def truncate(text: str, stops: list[str]) -> str:
    cut = min((text.find(stop) for stop in stops if stop in text), default=len(text))
    return text[:cut]


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (every device), as `transformers.set_seed` does.

    Not transformers' own: it lives in `transformers.trainer_utils`, whose import pulls in
    peft and bitsandbytes (about 3 s of every evaluation job's start, bench/eval_job_cost.py).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


# A shared prefix shorter than this is not worth a separate forward and a cache copy per batch.
MIN_SHARED_PREFIX_TOKENS = 8


def shared_prefix_length(sequences: list[list[int]]) -> int:
    """Length of the longest token prefix common to all `sequences`, leaving each at least one token.

    Computed on token ids, not text: a text prefix (the few-shot block) need not tokenize to
    a token prefix of the whole prompt (BPE merges across the boundary, e.g. "\n\n" + "Q").
    """
    if not sequences:
        return 0
    first = sequences[0]
    limit = min(len(seq) for seq in sequences) - 1  # the last token's logits start generation
    length = 0
    while length < limit and all(seq[length] == first[length] for seq in sequences):
        length += 1
    return length


def _generate_batch(model, tokenizer, batch, prompt_length, max_new_tokens, n, stops, kwargs) -> list[list[str]]:
    if stops:
        kwargs = {**kwargs, "stopping_criteria": StoppingCriteriaList([StopOnStrings(tokenizer, stops, prompt_length)])}
    generated = model.generate(
        **batch, max_new_tokens=max_new_tokens, num_return_sequences=n, pad_token_id=tokenizer.pad_token_id, **kwargs
    )
    texts = tokenizer.batch_decode(generated[:, prompt_length:], skip_special_tokens=True)
    texts = [truncate(text, stops) for text in texts]
    return [texts[i : i + n] for i in range(0, len(texts), n)]


def _prefix_cache(model, prefix_ids: list[int]):
    """The key/value cache of the shared prefix (the few-shot examples), computed once per prefix group."""
    device = next(model.parameters()).device
    prefix = torch.tensor([prefix_ids], device=device)
    return prefix, model(input_ids=prefix, use_cache=True).past_key_values


def _generate_with_prefix_cache(
    model, tokenizer, rests: list[list[int]], prefix, prefix_cache, max_new_tokens, n, stops, kwargs
) -> list[list[str]]:
    """Continuations of one batch of prompts sharing the prefix whose cache is `prefix_cache`.

    Each batch gets a copy of the prefix's key/value cache and feeds only the rest of every
    prompt, padded between prefix and rest: `[prefix][pad..][rest]`. Positions come from the
    attention mask's cumulative sum (as in `generate` with left padding), so every real token keeps
    the position it has in the whole prompt and sees the same keys: the same computation as
    `generate` on the whole prompt, up to floating-point summation order.
    """
    device = prefix.device
    prefix_length = prefix.shape[1]
    rows, width = len(rests), max(len(rest) for rest in rests)
    rest_ids = torch.full((rows, width), tokenizer.pad_token_id, dtype=torch.long)
    rest_mask = torch.zeros((rows, width), dtype=torch.long)
    for row, rest in enumerate(rests):
        rest_ids[row, width - len(rest) :] = torch.tensor(rest)
        rest_mask[row, width - len(rest) :] = 1
    batch = {
        "input_ids": torch.cat([prefix.expand(rows, -1).cpu(), rest_ids], dim=1).to(device),
        "attention_mask": torch.cat([torch.ones((rows, prefix_length), dtype=torch.long), rest_mask], 1).to(device),
    }
    cache = copy.deepcopy(prefix_cache)  # generate() appends to the cache it is given
    cache.batch_repeat_interleave(rows)
    cached = {**kwargs, "past_key_values": cache}
    return _generate_batch(model, tokenizer, batch, prefix_length + width, max_new_tokens, n, stops, cached)


def plan_batches(
    groups: list[list[int]],
    lengths: list[int],
    batch_size: int,
    max_batch_tokens: int | None = None,
    new_tokens: int = 0,
) -> list[list[int]]:
    """The generation batches: each prefix group's prompts in order, at most `batch_size` rows, and with
    `max_batch_tokens` at most that many tokens of KV cache, rows x (its longest prompt + `new_tokens`).

    A function of the prompts and settings only, so a resumed run plans the same batches and skips
    the finished ones. A prompt that alone exceeds the budget gets a batch of its own.
    """
    batches: list[list[int]] = []
    for members in groups:
        batch: list[int] = []
        longest = 0
        for index in members:
            wider = max(longest, lengths[index])
            fits = max_batch_tokens is None or (len(batch) + 1) * (wider + new_tokens) <= max_batch_tokens
            if batch and (len(batch) == batch_size or not fits):
                batches.append(batch)
                batch, wider = [], lengths[index]
            batch.append(index)
            longest = wider
        if batch:
            batches.append(batch)
    return batches


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    sampling: Sampling,
    stops: list[str],
    chat: bool,
    seed: int = 0,
    progress: bool = True,
    reuse_prefix: bool = True,
    prefix_groups: list[Hashable] | None = None,
    max_batch_tokens: int | None = None,
    done: dict[int, list[str]] | None = None,
    on_batch: Callable[[list[int], list[list[str]]], None] | None = None,
) -> list[list[str]]:
    """`num_samples` completions per prompt (batches cut at the stop strings).

    With `reuse_prefix` (greedy or one sample per prompt), the prompts of each prefix group
    (`prefix_groups[i]` is prompt i's group; default: one group) share the key/value cache of
    their common token prefix, computed once: the few-shot examples are not prefilled again for
    every prompt. Otherwise each batch is left-padded and prefilled whole.

    Batches (`plan_batches`) hold at most `batch_size` rows and, with `max_batch_tokens`, at most
    that many tokens of prompt + `max_new_tokens`. Each batch is sampled from its own seed (the
    config seed and the batch's number), so a batch's outputs do not depend on which batches ran
    before it: prompts in `done` (index -> outputs, from a killed run) are not generated again, and
    `on_batch(indices, outputs)` gets every newly generated batch, e.g. to save it at once.
    """
    from layerprune.data.selfgen import batch_seed

    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    kwargs = sampling.generate_kwargs()
    n = sampling.num_samples
    done = dict(done or {})
    # the rest of each prompt sits after padding: its positions must come from the attention mask
    accepts_position_ids = "position_ids" in inspect.signature(model.forward).parameters
    grouped: dict[Hashable, list[int]] = defaultdict(list)
    for index, key in enumerate(prefix_groups if prefix_groups is not None else [0] * len(prompts)):
        grouped[key].append(index)
    if not reuse_prefix or n > 1:  # n > 1 would also need the prefix cache expanded per sample
        grouped = {0: list(range(len(prompts)))} if prompts else {}
    groups = list(grouped.values())
    # a chat template already holds the special tokens (e.g. BOS) it needs
    token_ids = [tokenizer(p, add_special_tokens=not chat)["input_ids"] for p in prompts]
    batches = plan_batches(groups, [len(ids) for ids in token_ids], batch_size, max_batch_tokens, max_new_tokens)
    todo = [number for number, batch in enumerate(batches) if not all(i in done for i in batch)]
    if len(todo) < len(batches):
        print(f"resuming: {len(batches) - len(todo)} of {len(batches)} generation batches already done", flush=True)
    group_of = {index: number for number, members in enumerate(groups) for index in members}
    prefixes: dict[int, tuple[int, Any, Any]] = {}  # group -> (prefix length, prefix ids, its cache)
    for number in tqdm(todo, desc="generating", unit="batch", disable=not progress):
        indices = batches[number]
        group = group_of[indices[0]]
        if group not in prefixes:
            prefixes.clear()  # one group's cache at a time: the groups' batches come in order
            members = groups[group]
            length = 0
            if reuse_prefix and n == 1 and accepts_position_ids:
                length = shared_prefix_length([token_ids[i] for i in members])
            cache = _prefix_cache(model, token_ids[members[0]][:length]) if length >= MIN_SHARED_PREFIX_TOKENS else None
            prefixes[group] = (length, *(cache or (None, None)))
        length, prefix, prefix_cache = prefixes[group]
        set_seed(batch_seed(seed, number) % 2**32)  # numpy takes seeds below 2**32
        if prefix_cache is not None:
            rests = [token_ids[i][length:] for i in indices]
            texts = _generate_with_prefix_cache(
                model, tokenizer, rests, prefix, prefix_cache, max_new_tokens, n, stops, kwargs
            )
        else:
            batch = tokenizer(
                [prompts[i] for i in indices], return_tensors="pt", padding=True, add_special_tokens=not chat
            ).to(device)
            texts = _generate_batch(
                model, tokenizer, batch, batch["input_ids"].shape[1], max_new_tokens, n, stops, kwargs
            )
        if on_batch is not None:
            on_batch(indices, texts)
        done.update(zip(indices, texts, strict=True))
    return [done[i] for i in range(len(prompts))]


class GenerationPartial:
    """The finished generations of an evaluation, appended batch by batch to `<out>.partial` beside its result.

    The first line is the fingerprint of what the outputs depend on (model, task, settings); a file
    with another fingerprint is started over, a torn last line (a kill mid-write) is ignored. Each
    batch is flushed and fsynced, so a kill loses at most the batch being generated.
    """

    def __init__(self, out_path: str | Path, fingerprint: dict[str, Any]) -> None:
        out_path = Path(out_path)
        self.path = out_path.parent / f".{out_path.name}.partial"
        self.fingerprint = fingerprint
        self.handle = None

    def load(self) -> dict[int, list[str]]:
        if not self.path.is_file():
            return {}
        lines = self.path.read_text(encoding="utf-8").split("\n")
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = None
        if header != {"partial": self.fingerprint}:
            print(f"{self.path}: written with other settings; starting over", flush=True)
            return {}
        done: dict[int, list[str]] = {}
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[int(record["index"])] = list(record["outputs"])
        return done

    def open(self, done: dict[int, list[str]]) -> None:
        """Rewrite what is kept (dropping a torn line), then append from there."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"partial": self.fingerprint}) + "\n")
            handle.writelines(self._line(index, done[index]) for index in sorted(done))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self.handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held for the whole generation

    @staticmethod
    def _line(index: int, outputs: list[str]) -> str:
        return json.dumps({"index": index, "outputs": outputs}, ensure_ascii=False) + "\n"

    def __call__(self, indices: list[int], outputs: list[list[str]]) -> None:
        self.handle.write("".join(self._line(i, o) for i, o in zip(indices, outputs, strict=True)))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _breakdown(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (and first-digit accuracy) per operation, per digit count, and per both."""
    groups: dict[str, dict[str, list[dict]]] = {"operation": defaultdict(list), "digits": defaultdict(list)}
    groups["operation_digits"] = defaultdict(list)
    for record in records:
        groups["operation"][record["operation"]].append(record)
        groups["digits"][str(record["digits"])].append(record)
        groups["operation_digits"][f"{record['operation']}/{record['digits']}"].append(record)
    return {
        kind: {
            key: {
                "n": len(members),
                "value": sum(r["score"] for r in members) / len(members),
                "first_digit_accuracy": sum(r["first_digit"] for r in members) / len(members),
            }
            for key, members in sorted(by_key.items())
        }
        for kind, by_key in groups.items()
    }


def evaluate_generative(
    model,
    tokenizer,
    task: dict[str, Any],
    max_new_tokens: int,
    batch_size: int,
    progress: bool = True,
    prompting: str = "fewshot",
    sampling: Sampling | None = None,
    pass_k: list[int] | None = None,
    sandbox: SandboxLimits | None = None,
    seed: int = 0,
    reuse_prefix: bool = True,
    max_batch_tokens: int | None = None,
    partial: GenerationPartial | None = None,
) -> dict[str, Any]:
    """Generate for every sample of a prepared task and grade with the task's grader.

    Every sample's prompt, output(s) and verdict are kept; `score` is the sample's
    contribution to the metric (binary except ROUGE-L). `reuse_prefix`: prefill each
    few-shot block once per task (per sub-task when samples carry their own few-shot)
    and reuse its key/value cache for every sample (`generate`). `max_batch_tokens` bounds a
    generation batch's rows x (longest prompt + max_new_tokens). With `partial`, finished batches
    are saved as they come and a re-run after a kill generates only the samples not saved.
    """
    sampling = sampling or Sampling()
    grader = task.get("grader", "exact_match")
    chat = use_chat(tokenizer, prompting)
    samples = task["samples"]
    prompts = [build_prompt(task, sample, tokenizer, chat) for sample in samples]
    # samples of a multi-sub-task task carry their own few-shot block: one shared prefix per block
    prefix_groups = [json.dumps(sample.get("fewshot", task["fewshot"]), sort_keys=True) for sample in samples]
    done = partial.load() if partial is not None else {}
    if partial is not None:
        partial.open(done)
    try:
        outputs = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens,
            batch_size,
            sampling,
            stop_strings(task, chat),
            chat,
            seed,
            progress,
            reuse_prefix=reuse_prefix,
            prefix_groups=prefix_groups,
            max_batch_tokens=max_batch_tokens,
            done=done,
            on_batch=partial,
        )
    finally:
        if partial is not None:
            partial.close()
    sandbox = sandbox or SandboxLimits()
    records = []
    isolation = None
    bar = tqdm(zip(samples, prompts, outputs, strict=True), total=len(samples), desc="grading", disable=not progress)
    for sample, prompt, generations in bar:
        record: dict[str, Any] = {
            "id": sample["id"],
            "prompt": prompt,
            "output": generations[0],
            "target": sample["targets"],
        }
        if len(generations) > 1:
            record["outputs"] = generations
        # an answer begun in the prompt (chat_prompt.answer_prefix) is graded whole: prefix + continuation
        prefix = answer_prefix(task, sample, chat)
        if prefix:
            record["answer_prefix"] = prefix
            generations = [prefix + text for text in generations]
        if grader == "code":
            graded = [grade_code(sample, text, chat, sandbox) for text in generations]
            for g in graded:
                isolation = g.pop("isolation", None) or isolation
            record.update(graded[0])
            record["error_buckets"] = [g["error_bucket"] for g in graded]
            record["passed"] = sum(g["error_bucket"] == "pass" for g in graded)
            record["num_samples"] = len(generations)
            record["score"] = record["passed"] / len(generations)
            record["correct"] = graded[0]["error_bucket"] == "pass"
        else:
            scores = [TEXT_GRADERS[grader](text, sample["targets"]) for text in generations]
            record["score"] = sum(scores) / len(scores)
            record["correct"] = scores[0] >= 1.0 if grader != "rouge_l" else scores[0] >= 0.5
            if len(scores) > 1:
                record["scores"] = scores
        if "operation" in sample:
            record["digits"], record["operation"] = sample["digits"], sample["operation"]
            record["first_digit"] = bool(first_digit(generations[0], sample["targets"]))
        records.append(record)
    values = [r["score"] for r in records]
    result: dict[str, Any] = {
        "metric": METRIC_NAMES[grader],
        "value": sum(values) / len(values),
        "stderr": stderr_of(values),
        "grader": grader,
        "prompting": "chat" if chat else "fewshot",
        "sampling": {**sampling.__dict__},
        "resumed_samples": len(done),
    }
    if grader == "code":
        counts = [r["num_samples"] for r in records]
        passed = [r["passed"] for r in records]
        result["pass_at_k"] = {
            str(k): pass_at_k(counts, passed, k) for k in sorted(set(pass_k or [1])) if k <= min(counts)
        }
        result["error_buckets"] = {
            bucket: sum(Counter(r["error_buckets"])[bucket] for r in records) for bucket in ERROR_BUCKETS
        }
        # Where no sample reached the sandbox, what the preflight got (never null: the report reads null as strict).
        result["sandbox"] = {**sandbox.__dict__, "isolation": isolation or preflight_isolation(sandbox)}
    if records and all("operation" in r for r in records):
        result["breakdown"] = _breakdown(records)
    result["samples"] = records
    return result
