"""Evaluation of one checkpoint on one task (a dispatcher).

* classification: log-likelihood over the choices, through lm-eval, with a local
  task YAML over local JSONL and the already-loaded model object passed in;
* generative: `layerprune.generative` (chat or few-shot prompts, per-task
  sampling, graders from `layerprune.graders`, code run in `layerprune.sandbox`).

Every sample's prompt, output and verdict is kept in the result JSON.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from layerprune.generative import Sampling, evaluate_generative
from layerprune.graders import normalise_answer  # noqa: F401 - re-exported
from layerprune.io import read_json, write_json, write_jsonl
from layerprune.models import load_checkpoint
from layerprune.sandbox import SandboxLimits

QUESTION, ANSWER = "Q: ", "A:"


def fewshot_prompt(fewshot: list[dict], question: str) -> str:
    shots = "".join(f"{QUESTION}{shot['input']}\n{ANSWER} {shot['targets'][0]}\n\n" for shot in fewshot)
    return f"{shots}{QUESTION}{question}\n{ANSWER}"


def _lm_eval_task_yaml(name: str, test_file: Path, fewshot_file: Path) -> dict[str, Any]:
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(test_file), "train": str(fewshot_file)}},
        "test_split": "test",
        "fewshot_split": "train",
        "output_type": "multiple_choice",
        "doc_to_text": QUESTION + "{{input}}\n" + ANSWER,
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


def evaluate_classification(
    model, tokenizer, task: dict[str, Any], task_name: str, batch_size: int, seed: int
) -> dict[str, Any]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm_eval_name = f"layerprune_{task_name}"
    with tempfile.TemporaryDirectory(prefix="layerprune-lmeval-") as work:
        work = Path(work)
        write_jsonl(work / "test.jsonl", task["samples"])
        # lm-eval needs a non-empty few-shot split even for 0-shot.
        write_jsonl(work / "fewshot.jsonl", task["fewshot"] or task["samples"][:1])
        task_yaml = _lm_eval_task_yaml(lm_eval_name, work / "test.jsonl", work / "fewshot.jsonl")
        (work / f"{lm_eval_name}.yaml").write_text(yaml.safe_dump(task_yaml))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=[lm_eval_name],
            num_fewshot=task["num_fewshot"],
            task_manager=TaskManager(include_path=str(work), include_defaults=False),
            log_samples=True,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    metrics = results["results"][lm_eval_name]
    records = []
    for logged in sorted(results["samples"][lm_eval_name], key=lambda s: s["doc_id"]):
        doc = logged["doc"]
        loglikelihoods = [float(resp[0]) for resp in logged["filtered_resps"]]
        records.append(
            {
                "id": doc["id"],
                "prompt": logged["arguments"][0][0] if logged.get("arguments") else doc["input"],
                "output": doc["choices"][max(range(len(loglikelihoods)), key=loglikelihoods.__getitem__)],
                "target": doc["choices"][doc["label"]],
                "loglikelihoods": loglikelihoods,
                "correct": bool(logged["acc"]),
            }
        )
    return {
        "metric": "accuracy",
        "value": float(metrics["acc,none"]),
        "stderr": float(metrics.get("acc_stderr,none", float("nan"))),
        "samples": records,
        "lm_eval_version": lm_eval.__version__,
    }


def evaluate_checkpoint(
    model_dir: str | Path,
    task_path: str | Path,
    task_name: str,
    out_path: str | Path,
    batch_size: int,
    max_new_tokens: int,
    seed: int,
    dtype: str = "auto",
    variant: dict[str, Any] | None = None,
    prompting: str = "auto",
    sampling: Sampling | None = None,
    pass_k: list[int] | None = None,
    sandbox: SandboxLimits | None = None,
) -> dict[str, Any]:
    """Evaluate the checkpoint in `model_dir` on the prepared task in `task_path`.

    `variant` (model, method, ratio, recovery) is recorded in the result so the
    aggregate step needs nothing but the result files.
    """
    task = read_json(task_path)
    model, tokenizer = load_checkpoint(model_dir, dtype=dtype)
    if task["type"] == "classification":
        result = evaluate_classification(model, tokenizer, task, task_name, batch_size, seed)
    else:
        result = evaluate_generative(
            model,
            tokenizer,
            task,
            max_new_tokens,
            batch_size,
            prompting=prompting,
            sampling=sampling,
            pass_k=pass_k,
            sandbox=sandbox,
            seed=seed,
        )
    result = {
        **(variant or {}),
        "task": task_name,
        "type": task["type"],
        "source": task["source"],
        "num_fewshot": task["num_fewshot"],
        "checkpoint": str(model_dir),
        "n": len(result["samples"]),
        **result,
    }
    write_json(out_path, result)
    return result
