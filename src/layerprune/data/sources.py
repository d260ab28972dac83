"""Data for the tasks, prompt sets and calibration texts: BIG-bench task JSON, and datasets.

The default's data is built by the project itself (layerprune.data.builtin). BIG-bench stays
an option: its `bigbench==1.0.0` sdist (358 MB) holds every task's JSON, and the package
index no longer serves it (its version page answers 403). A study that names BIG-bench
tasks points `bigbench.sdist` at a local copy, checked by sha256; without one, the copy in
the user cache is used, else the index is asked, and a refusal stops the first job with
one line naming the source and the ways out. Only the tasks the config uses are
extracted; the sdist is never installed (its setup.py declares a `file://` dependency
that pip refuses, which is also why `pip download` cannot fetch it).

Task files are normalised to one JSON per task: few-shot examples plus the
evaluated samples, drawn with a seed from the config.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from layerprune.io import (
    SourceUnavailable,
    atomic_path,
    read_jsonl,
    refuse_missing_local,
    sha256_file,
    write_json,
    write_jsonl,
)
from layerprune.registry import BIGBENCH_INDEX, BIGBENCH_SDIST, BIGBENCH_SHA256

BIGBENCH_TASK_ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def default_cache_dir() -> Path:
    return Path(os.environ.get("LAYERPRUNE_CACHE", Path.home() / ".cache" / "layerprune"))


BIGBENCH_WAYS_OUT = (
    "set `bigbench.sdist:` to a local copy of bigbench-1.0.0.tar.gz (sha256 checked), or use the tasks the "
    "project builds itself (`dataset: builtin`, prompts/calibration `source: builtin`; docs/data.md)"
)


def _unavailable(url: str, error: Exception) -> SourceUnavailable:
    """An HTTP refusal or an unreachable host, as one line naming the address."""
    if isinstance(error, urllib.error.HTTPError):
        return SourceUnavailable(url, f"HTTP {error.code} {error.reason}", BIGBENCH_WAYS_OUT)
    return SourceUnavailable(url, f"unreachable ({error})", BIGBENCH_WAYS_OUT)


def _sdist_url(index_url: str) -> str:
    """The sdist's download address from the index's PEP 691 JSON page; a refusal names itself."""
    request = urllib.request.Request(index_url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            files = json.load(response)["files"]
    except (urllib.error.URLError, TimeoutError, OSError) as error:  # HTTPError is a URLError
        raise _unavailable(index_url, error) from None
    for entry in files:
        if entry["filename"] == BIGBENCH_SDIST:
            return urllib.parse.urljoin(index_url, entry["url"])
    raise SourceUnavailable(
        index_url, f"{BIGBENCH_SDIST} is not listed (the index no longer serves it)", BIGBENCH_WAYS_OUT
    )


def _download(url: str, path: Path) -> None:
    print(f"downloading {url} (358 MB, once) -> {path}", flush=True)
    try:
        with atomic_path(path) as tmp, urllib.request.urlopen(url, timeout=600) as response:
            with open(tmp, "wb") as handle:
                while chunk := response.read(1 << 22):
                    handle.write(chunk)
    except (urllib.error.URLError, TimeoutError) as error:
        raise _unavailable(url, error) from None


def fetch_bigbench_sdist(
    out_path: str | Path,
    sdist: str | Path | None = None,
    sha256: str = BIGBENCH_SHA256,
    index_url: str = BIGBENCH_INDEX,
) -> Path:
    """Place the verified bigbench sdist at `out_path` (a symlink to the verified file).

    `sdist` (config `bigbench.sdist`): a local copy, used as it is. Otherwise the copy in
    the user cache (`$LAYERPRUNE_CACHE`, default ~/.cache/layerprune), else a download
    from `index_url` into it. Each is checked against `sha256`; a refused or unreachable
    index, and a missing or wrong file, raise SourceUnavailable naming it and the ways out.
    """
    if sdist is not None:
        path, name = Path(sdist), f"bigbench.sdist {sdist}"
        if not path.is_file():
            raise SourceUnavailable(name, "no such file", BIGBENCH_WAYS_OUT)
    else:
        path = default_cache_dir() / BIGBENCH_SDIST
        name = str(path)
        if not path.is_file():
            _download(_sdist_url(index_url), path)
    digest = sha256_file(path)
    if digest != sha256:
        if sdist is None:
            path.unlink()  # our own download or cache copy; a local copy is the user's file and stays
        wrong = f"sha256 {digest} is not the expected {sha256}" + (" (removed)" if sdist is None else "")
        raise SourceUnavailable(name, wrong, BIGBENCH_WAYS_OUT)
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


def bigbench_sdist_task_names(sdist: str | Path) -> dict[str, list[str]]:
    """The tasks in the sdist, sorted: `json` (a task.json that `extract_bigbench_task` can read, subtasks as
    `task/subtask`) and `programmatic` (a task.py only: no task.json, so this pipeline cannot evaluate it)."""
    json_tasks, python_tasks = set(), set()
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive:
            name = member.name
            if not name.startswith(BIGBENCH_TASK_ROOT):
                continue
            if name.endswith("/task.json"):
                json_tasks.add(name[len(BIGBENCH_TASK_ROOT) : -len("/task.json")])
            elif name.endswith("/task.py"):
                python_tasks.add(name[len(BIGBENCH_TASK_ROOT) : -len("/task.py")])
    return {"json": sorted(json_tasks), "programmatic": sorted(python_tasks - json_tasks)}


def load_task_json(task_dir: str | Path, task: str) -> dict[str, Any]:
    """A task JSON in BIG-bench's format (`examples`, and for the project's own tasks `provenance`):
    `<task_dir>/<task>/task.json`, extracted from the BIG-bench sdist or built by layerprune.data.builtin."""
    path = Path(task_dir) / task / "task.json"
    if not path.is_file():
        raise FileNotFoundError(f"task '{task}' is not at {path} (it is extracted or built by its own job)")
    return json.loads(path.read_text(encoding="utf-8"))


def load_bigbench_examples(task_dir: str | Path, task: str) -> list[dict[str, Any]]:
    return load_task_json(task_dir, task)["examples"]


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


def _prompt_record(user: str, response: str | None, source: str, system_prompt: str | None) -> dict[str, Any]:
    """One prompt-set record: TRL conversational prompt(-completion), plus where it came from.

    Sources without reference answers (a JSONL with no response field) give records
    without a `completion`; the `data` control cannot train on those.
    """
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    record: dict[str, Any] = {"prompt": [*system, {"role": "user", "content": user}]}
    if response is not None:
        record["completion"] = [{"role": "assistant", "content": response}]
    record["source"] = source
    return record


def _task_json_pool(task_dir: str | Path, tasks: list[str], kind: str) -> list[tuple[str, str | None, str]]:
    """(input, first target, origin) of every example of BIG-bench-format tasks (`kind`: bigbench, builtin)."""
    pool = []
    for task in tasks:
        for index, example in enumerate(load_bigbench_examples(task_dir, task)):
            pool.append((example["input"].strip(), _first_target(example), f"{kind}:{task}#{index}"))
    return pool


def _join_fields(row: dict[str, Any], prompt_fields: list[str], separator: str, where: str) -> str:
    """The user turn from one row: the non-empty prompt fields joined (Alpaca: instruction + input)."""
    missing = [field for field in prompt_fields if field not in row]
    if missing:
        raise KeyError(
            f"{where}: no field {', '.join(map(repr, missing))} (prompts.prompt_fields); fields: {', '.join(row)}"
        )
    parts = [str(row[field]).strip() for field in prompt_fields if row[field] is not None]
    return separator.join(part for part in parts if part)


def _rows_pool(
    rows: Any, prompt_fields: list[str], response_field: str | None, separator: str, where: str
) -> list[tuple[str, str | None, str]]:
    pool = []
    for index, row in enumerate(rows):
        user = _join_fields(row, prompt_fields, separator, f"{where} row {index}")
        if not user:
            continue  # nothing to ask
        response = None
        if response_field is not None:
            if response_field not in row:
                raise KeyError(
                    f"{where} row {index}: no field {response_field!r} (prompts.response_field); "
                    f"fields: {', '.join(row)}"
                )
            response = "" if row[response_field] is None else str(row[response_field]).strip()
        pool.append((user, response, f"{where}#{index}"))
    return pool


DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def load_prompt_dataset(path: str, name: str | None = None, split: str = "train") -> Any:
    """A `datasets.Dataset` from a hub id, a `Dataset.save_to_disk` directory or a local data file.

    A directory written by `save_to_disk` (or `DatasetDict.save_to_disk`) is read with
    `load_from_disk`; a local .json/.jsonl/.csv/.parquet file with the matching builder;
    anything else is a hub dataset id (e.g. tatsu-lab/alpaca), which needs the network
    or the local Hugging Face cache.
    """
    import datasets

    local = Path(path)
    if local.is_dir() and ((local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file()):
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise KeyError(f"prompts.split={split!r} is not in {path} (splits: {', '.join(loaded)})")
            loaded = loaded[split]
        return loaded
    if local.is_file():
        builder = DATA_FILE_BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise ValueError(f"prompts.path={path}: unknown data file type (known: {', '.join(DATA_FILE_BUILDERS)})")
        return datasets.load_dataset(builder, data_files=str(local), split="train")
    refuse_missing_local(path, "prompts.path")
    return load_hub_dataset(path, name, split)


def prepare_prompt_set(
    bigbench_dir: str | Path | None,
    bigbench_tasks: list[str] | None,
    num_prompts: int,
    seed: int,
    out_path: str | Path,
    system_prompt: str | None = None,
    source: str = "bigbench",
    builtin_tasks: list[str] | None = None,
    builtin_dir: str | Path | None = None,
    path: str | None = None,
    name: str | None = None,
    split: str = "train",
    prompt_fields: list[str] | None = None,
    response_field: str | None = None,
    separator: str = "\n\n",
) -> int:
    """Write a TRL conversational prompt–completion JSONL of `num_prompts` prompts.

    `source` is `builtin` (the default: the inputs and answers of the project's own
    tasks, layerprune.data.builtin), `bigbench` (BIG-bench task inputs and first targets),
    `hub` (a `datasets` hub id, `save_to_disk` directory or local data file at `path`)
    or `jsonl` (a plain local JSONL at `path`). For `hub` and `jsonl` the user turn is
    the non-empty `prompt_fields` joined by `separator` (Alpaca: instruction, input) and
    the completion is `response_field` (null: no reference answers).

    The completion is the dataset's own answer: that file is the training set of the
    paper's `data` control, and its prompts are what `selfgen` answers. The system
    prompt belongs to the prompt set, so `data` and `sgr` train on the very same
    prompts and differ only in their answers.
    """
    if source == "builtin":
        if not builtin_tasks or builtin_dir is None:
            raise ValueError("prompts.source=builtin needs prompts.builtin_tasks (and --builtin-dir)")
        pool = _task_json_pool(builtin_dir, builtin_tasks, "builtin")
    elif source == "bigbench":
        if not bigbench_tasks or bigbench_dir is None:
            raise ValueError("prompts.source=bigbench needs prompts.bigbench_tasks")
        pool = _task_json_pool(bigbench_dir, bigbench_tasks, "bigbench")
    elif source in ("hub", "jsonl"):
        if not path:
            raise ValueError(f"prompts.source={source} needs prompts.path")
        if not prompt_fields:
            raise ValueError(f"prompts.source={source} needs prompts.prompt_fields")
        if source == "jsonl":
            if not Path(path).is_file():
                raise FileNotFoundError(f"prompts.path={path}: no such JSONL file")
            rows = read_jsonl(path)
        else:
            rows = load_prompt_dataset(path, name, split)
        pool = _rows_pool(rows, prompt_fields, response_field, separator, f"{source}:{path}")
    else:
        raise ValueError(f"prompts.source={source!r}: prepare-prompts handles builtin, bigbench, hub and jsonl")
    if num_prompts > len(pool):
        raise ValueError(f"prompts.num_prompts={num_prompts} exceeds the {len(pool)} available prompts")
    rng = random.Random(seed)
    chosen = rng.sample(pool, num_prompts)
    return write_jsonl(
        out_path, (_prompt_record(user, response, where, system_prompt) for user, response, where in chosen)
    )


def filter_prompt_set(
    prompts_path: str | Path,
    model_dir: str | Path,
    max_prompt_tokens: int | None,
    out_path: str | Path,
    stats_path: str | Path,
) -> dict[str, Any]:
    """Keep the prompts whose chat-template rendering fits `max_prompt_tokens` of the model's tokenizer.

    The limit is counted in the dense model's own tokens (system prompt and template
    included, as `selfgen` feeds them), so the filter is per model. The kept file is
    both what `selfgen` answers and what the `data` control trains on, so the two
    stay on identical prompts. Counts go to `stats_path` and the log.
    """
    records = read_jsonl(prompts_path)
    kept = records
    if max_prompt_tokens is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        kept = [record for record in records if len(prompt_token_ids(tokenizer, record["prompt"])) <= max_prompt_tokens]
    stats = {
        "prompts": str(prompts_path),
        "model": str(model_dir),
        "max_prompt_tokens": max_prompt_tokens,
        "total": len(records),
        "kept": len(kept),
        "dropped_too_long": len(records) - len(kept),
    }
    if not kept:
        raise ValueError(f"prompts.max_prompt_tokens={max_prompt_tokens} drops every one of the {len(records)} prompts")
    write_jsonl(out_path, kept)
    write_json(stats_path, stats)
    print(
        f"prompt set: kept {stats['kept']} of {stats['total']} prompts, "
        f"dropped {stats['dropped_too_long']} longer than {max_prompt_tokens} tokens",
        flush=True,
    )
    return stats


def prompt_token_ids(tokenizer: Any, conversation: list[dict]) -> list[int]:
    """The token ids the model is prompted with: the chat template with the generation prompt."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def gsm8k_calibration_text(row: dict[str, Any]) -> str:
    """One GSM8K row as the paper authors' BI calibration text (analysis/cossim_analysis.ipynb).

    Theirs is lm-eval's Llama-style GSM8K question, then the dataset's worked solution as written
    (calculator annotations and all) and its final answer in the sentence the question asks for.
    """
    parts = row["answer"].split("####")
    if len(parts) != 2:
        raise ValueError(f"GSM8K answer without exactly one '####': {row['answer'][:80]!r}")
    reasoning, final = parts
    return (
        "Given the following problem, reason and give a final answer to the problem.\n"
        f"Problem: {row['question']}\n"
        'Your response should end with "The final answer is [answer]" where [answer] is the response to the '
        "problem.\n"
        f"\n{reasoning}The final answer is {final.strip()}"
    )


# --- reading rows -------------------------------------------------------------------------------


def read_rows(file: str | Path, split: str = "test") -> list[dict[str, Any]]:
    """Rows of a local dataset file in its real format."""
    path = Path(file)
    if not path.exists():
        raise FileNotFoundError(f"task file {path} does not exist")
    if path.is_dir():
        import datasets

        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise KeyError(f"{path} has no split '{split}' (splits: {', '.join(loaded)})")
            loaded = loaded[split]
        return [dict(row) for row in loaded]
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    if name.endswith(".json"):
        payload = json.loads(path.read_text())
        if isinstance(payload, dict):
            payload = payload.get("examples", payload.get(split))
        if not isinstance(payload, list):
            raise ValueError(f"{path}: expected a list of rows (or a BIG-bench task.json)")
        return payload
    if name.endswith(".parquet"):
        import datasets

        return [dict(row) for row in datasets.Dataset.from_parquet(str(path))]
    raise ValueError(f"{path}: unsupported task file type (JSON, JSONL, JSONL.gz, Parquet or a save_to_disk dir)")


def load_hub_dataset(hub: str, config_name: str | None, split: str, revision: str | None = None) -> Any:
    """`datasets.load_dataset` of a hub id; a hub that cannot be reached names the id and the way out."""
    import datasets

    try:
        return datasets.load_dataset(hub, config_name, split=split, revision=revision)
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as error:
        raise SourceUnavailable(
            f"Hugging Face Hub dataset '{hub}'" + (f" ({config_name})" if config_name else ""),
            f"cannot be had ({str(error).splitlines()[0][:160] if str(error) else type(error).__name__})",
            "download it where the Hub is reachable into the datasets cache, or save it as a local file and give "
            "its path (`file:` for a task, `path:` for prompts or calibration)",
        ) from None


def hub_rows(hub: str, config_name: str | None, split: str, revision: str | None) -> list[dict[str, Any]]:
    refuse_missing_local(hub, "hub dataset")  # a mistyped local file is named as such, not sought on the hub
    return [dict(row) for row in load_hub_dataset(hub, config_name, split, revision)]


def _example_text(example: dict[str, Any]) -> str:
    """A task example as one passage: its input and, where it has one, its answer."""
    answer = _first_target(example) if ("target" in example or "target_scores" in example) else ""
    return f"{example['input'].strip()} {answer}".strip()


def read_texts(path: str | Path, key: str) -> list[str]:
    """Texts of a local file: JSONL (.jsonl) with a `text` field per line, else one text per non-empty line."""
    local = Path(path)
    if not local.is_file():
        raise FileNotFoundError(f"{key}: {path}: no such file")
    if local.suffix.lower() == ".jsonl":
        texts = []
        for number, line in enumerate(local.read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f"{path}:{number}: {key}: a JSONL line needs a string `text` field")
            texts.append(row["text"])
        return texts
    return [line.strip() for line in local.read_text().splitlines() if line.strip()]


def prepare_calibration(
    bigbench_dir: str | Path | None,
    bigbench_tasks: list[str],
    num_samples: int,
    seed: int,
    out_path: str | Path,
    source: str = "bigbench",
    path: str = "openai/gsm8k",
    split: str = "test",
    builtin_tasks: list[str] | None = None,
    builtin_dir: str | Path | None = None,
) -> int:
    """Write a JSONL of `{"text": ...}` calibration passages (task inputs and answers).

    source builtin: the project's own tasks (python_docs: prose paragraphs), drawn with the seed.
    source text: the texts of a local file at `path` (`read_texts`), drawn with the seed.
    source gsm8k: the first `num_samples` rows of GSM8K's `split`, in the dataset's order
    (`gsm8k_calibration_text`), as the authors' notebook takes them; no seed.
    """
    if source == "gsm8k":
        local = Path(path)
        rows = read_rows(local, split) if local.exists() else hub_rows(path, "main", split, None)
        if num_samples > len(rows):
            raise ValueError(f"scoring.calibration.num_samples={num_samples} exceeds the {len(rows)} rows of {path}")
        return write_jsonl(out_path, ({"text": gsm8k_calibration_text(row)} for row in rows[:num_samples]))
    if source == "text":
        texts = read_texts(path, "scoring.calibration.path")
        if num_samples > len(texts):
            raise ValueError(f"scoring.calibration.num_samples={num_samples} exceeds the {len(texts)} texts of {path}")
        return write_jsonl(out_path, ({"text": text} for text in random.Random(seed).sample(texts, num_samples)))
    if source not in ("bigbench", "builtin"):
        raise ValueError(f"scoring.calibration.source must be builtin, bigbench, gsm8k or text, got {source!r}")
    task_dir, tasks = (builtin_dir, builtin_tasks) if source == "builtin" else (bigbench_dir, bigbench_tasks)
    if not tasks or task_dir is None:
        raise ValueError(f"scoring.calibration.source={source} needs scoring.calibration.{source}_tasks")
    texts = [_example_text(example) for task in tasks for example in load_bigbench_examples(task_dir, task)]
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


def holdout_split(records: list[Any], eval_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Split SFT records into (train, eval): `eval_fraction` of them, at least one, held out (seeded).

    The authors hold out 10% (train/sft_trainer.py: `test_size = max(1, int(len(df) * 0.1))`,
    drawn at random) and log its loss after the epoch. Both parts keep the records' order;
    `eval_fraction` 0 holds nothing out.
    """
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"recovery.eval_fraction must lie in [0, 1), got {eval_fraction}")
    if eval_fraction == 0:
        return list(records), []
    if len(records) < 2:
        raise ValueError(f"recovery.eval_fraction={eval_fraction} needs at least 2 records, got {len(records)}")
    count = max(1, int(len(records) * eval_fraction))
    held = set(random.Random(seed).sample(range(len(records)), count))
    train = [record for index, record in enumerate(records) if index not in held]
    evaluation = [record for index, record in enumerate(records) if index in held]
    return train, evaluation
