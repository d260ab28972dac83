"""Generative evaluation: prompt (chat template or few-shot), sample, grade.

Sampling is per task (config `tasks.<name>`): greedy by default so runs are
deterministic; the paper samples at temperature 0.9 with top-k 50. With
`num_samples` > 1 per problem, code tasks report the unbiased pass@k for every
configured k; other graders average over all samples.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from layerprune.graders import ERROR_BUCKETS, TEXT_GRADERS, first_digit, grade_code, pass_at_k
from layerprune.sandbox import SandboxLimits
from layerprune.tasks import build_prompt, stop_strings, use_chat

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


def set_seed(seed: int) -> None:
    """Seed `random`, numpy and torch (every device), as `transformers.set_seed` does. Not imported from
    transformers: its trainer_utils pulls in peft and bitsandbytes, seconds of every evaluate job."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stderr_of(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


class StopOnStrings(StoppingCriteria):
    """Stop each row once its decoded continuation holds a stop string.

    Decoding the continuation (rather than transformers' `stop_strings`, which
    needs a byte-level vocabulary) works with any tokenizer.
    """

    def __init__(self, tokenizer, stops: list[str], prompt_length: int):
        self.tokenizer, self.stops, self.prompt_length = tokenizer, stops, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def truncate(text: str, stops: list[str]) -> str:
    cut = min((text.find(stop) for stop in stops if stop in text), default=len(text))
    return text[:cut]


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
) -> list[list[str]]:
    """`num_samples` completions per prompt (left-padded batches, cut at the stop strings)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    kwargs = sampling.generate_kwargs()
    set_seed(seed)
    outputs: list[list[str]] = []
    n = sampling.num_samples
    for start in tqdm(range(0, len(prompts), batch_size), desc="generating", unit="batch", disable=not progress):
        # a chat template already holds the special tokens (e.g. BOS) it needs
        batch = tokenizer(
            prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=not chat
        ).to(device)
        if stops:
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [StopOnStrings(tokenizer, stops, batch["input_ids"].shape[1])]
            )
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )
        texts = tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        texts = [truncate(text, stops) for text in texts]
        outputs += [texts[i : i + n] for i in range(0, len(texts), n)]
    return outputs


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
) -> dict[str, Any]:
    """Generate for every sample of a prepared task and grade with the task's grader.

    Every sample's prompt, output(s) and verdict are kept; `score` is the sample's
    contribution to the metric (binary except ROUGE-L).
    """
    sampling = sampling or Sampling()
    grader = task.get("grader", "exact_match")
    chat = use_chat(tokenizer, prompting)
    samples = task["samples"]
    prompts = [build_prompt(task, sample, tokenizer, chat) for sample in samples]
    outputs = generate(
        model, tokenizer, prompts, max_new_tokens, batch_size, sampling, stop_strings(task, chat), chat, seed, progress
    )
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
        result["sandbox"] = {**sandbox.__dict__, "isolation": isolation}
    if records and all("operation" in r for r in records):
        result["breakdown"] = _breakdown(records)
    result["samples"] = records
    return result
