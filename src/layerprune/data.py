"""Offline data: BIG-bench task JSON from the `bigbench==1.0.0` sdist on PyPI.

The sdist (358 MB) holds every BIG-bench task's JSON. We download it once, check
its sha256, and extract only the tasks the config uses; it is never installed
(its setup.py declares a `file://` dependency that pip refuses, which is also why
`pip download` cannot fetch it: pip builds the metadata first). The file is read
from the index's "simple" JSON API, so the only network this needs is PyPI.

Task files are normalised to one JSON per task: few-shot examples plus the
evaluated samples, drawn with a seed from the config.
"""

from __future__ import annotations

import json
import os
import random
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

from layerprune.io import atomic_path, sha256_file, write_json, write_jsonl

BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
BIGBENCH_INDEX = "https://pypi.org/simple/bigbench/"
BIGBENCH_TASK_ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def default_cache_dir() -> Path:
    return Path(os.environ.get("LAYERPRUNE_CACHE", Path.home() / ".cache" / "layerprune"))


def _sdist_url(index_url: str) -> str:
    request = urllib.request.Request(index_url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    for entry in files:
        if entry["filename"] == BIGBENCH_SDIST:
            return entry["url"]
    raise FileNotFoundError(f"{BIGBENCH_SDIST} is not listed at {index_url}")


def fetch_bigbench_sdist(out_path: str | Path, index_url: str = BIGBENCH_INDEX) -> Path:
    """Place the verified bigbench sdist at `out_path` (a symlink into the cache).

    A copy in the user cache (`$LAYERPRUNE_CACHE`, default ~/.cache/layerprune) is
    reused, so test runs and fresh clones download it once per machine.
    """
    path = default_cache_dir() / BIGBENCH_SDIST
    if not path.is_file():
        url = _sdist_url(index_url)
        print(f"downloading {url} (358 MB, once) -> {path}", flush=True)
        with atomic_path(path) as tmp, urllib.request.urlopen(url, timeout=600) as response:
            with open(tmp, "wb") as handle:
                while chunk := response.read(1 << 22):
                    handle.write(chunk)
    digest = sha256_file(path)
    if digest != BIGBENCH_SHA256:
        path.unlink()
        raise ValueError(f"{path}: sha256 {digest} != expected {BIGBENCH_SHA256}; removed, re-run to fetch again")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        tmp.unlink()
        # A symbolic link, not a hard link: Snakemake touches every output after
        # its job, and touching a hard link would bump the shared cache file's
        # mtime, making every other workflow using the cache redo its extraction
        # and everything downstream. Touching a symlink changes only the link.
        tmp.symlink_to(path.resolve())
    return out_path


def extract_bigbench_task(task: str, out_path: str | Path, sdist: str | Path) -> None:
    """Extract one BIG-bench task's JSON (e.g. `arithmetic/1_digit_addition`) from the sdist."""
    member_name = BIGBENCH_TASK_ROOT + task + "/task.json"
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive:
            if member.name == member_name:
                payload = archive.extractfile(member).read()
                break
        else:
            raise KeyError(f"BIG-bench 1.0.0 has no task '{task}' (looked for {member_name})")
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(payload)


def load_bigbench_examples(bigbench_dir: str | Path, task: str) -> list[dict[str, Any]]:
    path = Path(bigbench_dir) / task / "task.json"
    if not path.is_file():
        raise FileNotFoundError(f"BIG-bench task '{task}' was not extracted to {path}")
    return json.loads(path.read_text())["examples"]


def _first_target(example: dict[str, Any]) -> str:
    target = example.get("target")
    if isinstance(target, list):
        target = target[0]
    if target is None and "target_scores" in example:
        target = max(example["target_scores"], key=example["target_scores"].get)
    return str(target).strip()


def _normalise(example: dict[str, Any], task_type: str, index: int) -> dict[str, Any]:
    if task_type == "classification":
        scores = example.get("target_scores")
        if not scores:
            raise ValueError(f"example {index} has no target_scores; it cannot be a classification task")
        choices = list(scores)
        return {
            "id": index,
            "input": example["input"].strip(),
            "choices": choices,
            "label": max(range(len(choices)), key=lambda i: scores[choices[i]]),
        }
    targets = example["target"] if isinstance(example["target"], list) else [example["target"]]
    return {"id": index, "input": example["input"].strip(), "targets": [str(t).strip() for t in targets]}


def prepare_task(
    bigbench_dir: str | Path,
    bigbench_task: str,
    task_type: str,
    num_fewshot: int,
    limit: int | None,
    seed: int,
    out_path: str | Path,
) -> dict[str, Any]:
    """Draw few-shot examples and evaluated samples (disjoint) from a BIG-bench task."""
    examples = load_bigbench_examples(bigbench_dir, bigbench_task)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    normalised = [_normalise(examples[i], task_type, i) for i in order]
    fewshot, samples = normalised[:num_fewshot], normalised[num_fewshot:]
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise ValueError(f"BIG-bench task '{bigbench_task}' has no samples left after {num_fewshot} few-shot")
    payload = {
        "source": f"bigbench:{bigbench_task}",
        "type": task_type,
        "num_fewshot": num_fewshot,
        "seed": seed,
        "fewshot": fewshot,
        "samples": samples,
    }
    write_json(out_path, payload)
    return payload


def prepare_prompt_set(
    bigbench_dir: str | Path,
    bigbench_tasks: list[str],
    num_prompts: int,
    seed: int,
    out_path: str | Path,
    system_prompt: str | None = None,
) -> int:
    """Write a TRL conversational prompt–completion JSONL from BIG-bench tasks.

    The completion is the task's own reference answer: that file is the training
    set of the paper's `data` control, and its prompts are what `selfgen` answers.
    The system prompt belongs to the prompt set, so `data` and `sgr` train on the
    very same prompts and differ only in their answers.
    """
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    pool = []
    for task in bigbench_tasks:
        for index, example in enumerate(load_bigbench_examples(bigbench_dir, task)):
            pool.append(
                {
                    "prompt": [*system, {"role": "user", "content": example["input"].strip()}],
                    "completion": [{"role": "assistant", "content": _first_target(example)}],
                    "source": f"bigbench:{task}#{index}",
                }
            )
    if num_prompts > len(pool):
        raise ValueError(f"prompts.num_prompts={num_prompts} exceeds the {len(pool)} available prompts")
    rng = random.Random(seed)
    records = rng.sample(pool, num_prompts)
    return write_jsonl(out_path, records)


def prepare_calibration(
    bigbench_dir: str | Path, bigbench_tasks: list[str], num_samples: int, seed: int, out_path: str | Path
) -> int:
    """Write a JSONL of `{"text": ...}` calibration passages (task inputs and answers)."""
    texts = []
    for task in bigbench_tasks:
        for example in load_bigbench_examples(bigbench_dir, task):
            texts.append(f"{example['input'].strip()} {_first_target(example)}".strip())
    if num_samples > len(texts):
        raise ValueError(f"scoring.calibration.num_samples={num_samples} exceeds the {len(texts)} passages")
    return write_jsonl(out_path, ({"text": text} for text in random.Random(seed).sample(texts, num_samples)))


def prepare_lm_eval_task(
    lm_eval_task: str,
    num_fewshot: int,
    limit: float | None,
    metric: str,
    include_path: str | Path | None,
    seed: int,
    out_path: str | Path,
) -> dict[str, Any]:
    """The task file of an lm-eval task run by name (MMLU, ARC, ...): settings, no samples.

    lm-eval loads the data itself (from the hub, or from YAMLs under `include_path`) at
    evaluation time, so this file only pins what `evaluate` passes to lm-eval; `limit` is a
    count, or a fraction of the test split when below 1 (lm-eval's convention).
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"tasks.*.limit for lm-eval task {lm_eval_task!r} must be > 0, got {limit}")
    payload = {
        "source": f"lm_eval:{lm_eval_task}",
        "type": "classification",
        "lm_eval_task": lm_eval_task,
        "include_path": str(Path(include_path).resolve()) if include_path else None,
        "num_fewshot": num_fewshot,
        "limit": int(limit) if limit is not None and limit >= 1 else limit,
        "metric": metric,
        "seed": seed,
    }
    write_json(out_path, payload)
    return payload
