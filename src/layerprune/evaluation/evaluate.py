"""Evaluation of one checkpoint on one task (a dispatcher).

* classification: log-likelihood over the choices, through lm-eval, with a local
  task YAML over local JSONL and the already-loaded model object passed in;
* generative: `layerprune.evaluation.generative` (chat or few-shot prompts, per-task
  sampling, graders from `layerprune.evaluation.graders`, code run in `layerprune.evaluation.sandbox`).

Every sample's prompt, output and verdict is kept in the result JSON.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import yaml

from layerprune.config.settings import EvaluationSettings
from layerprune.evaluation.generative import GenerationPartial, Sampling, evaluate_generative
from layerprune.evaluation.graders import normalise_answer  # noqa: F401 - re-exported
from layerprune.evaluation.sandbox import SandboxLimits, preflight
from layerprune.io import content_fingerprint, read_json, sha256_file, write_json, write_jsonl
from layerprune.models.checkpoints import load_checkpoint

QUESTION, ANSWER = "Q: ", "A:"


def fewshot_prompt(fewshot: list[dict], question: str) -> str:
    shots = "".join(f"{QUESTION}{shot['input']}\n{ANSWER} {shot['targets'][0]}\n\n" for shot in fewshot)
    return f"{shots}{QUESTION}{question}\n{ANSWER}"


def _lm_eval_task_yaml(name: str, test_file: Path, fewshot_file: Path) -> dict[str, Any]:
    """lm-eval task config for a prepared local (BIG-bench) multiple-choice task."""
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
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }


def write_local_lm_eval_task(task: dict[str, Any], task_name: str, directory: str | Path) -> str:
    """Write a prepared local task as an lm-eval task (YAML + JSONL) under `directory`.

    Returns the lm-eval task name. The pipeline and the `lm_eval` command line read the
    very same files, which is what the agreement test relies on.
    """
    directory = Path(directory)
    lm_eval_name = f"layerprune_{task_name}"
    write_jsonl(directory / "test.jsonl", task["samples"])
    # lm-eval needs a non-empty few-shot split even for 0-shot.
    write_jsonl(directory / "fewshot.jsonl", task["fewshot"] or task["samples"][:1])
    task_yaml = _lm_eval_task_yaml(lm_eval_name, directory / "test.jsonl", directory / "fewshot.jsonl")
    (directory / f"{lm_eval_name}.yaml").write_text(yaml.safe_dump(task_yaml))
    return lm_eval_name


def budgeted_batch_size(longest: int, batch_size: int, max_batch_tokens: int | None) -> int:
    """Rows in a batch whose longest request has `longest` tokens: at most `batch_size`, and
    rows x `longest` at most `max_batch_tokens` (None: no token bound), never fewer than one."""
    if max_batch_tokens is None:
        return batch_size
    return max(1, min(batch_size, max_batch_tokens // max(longest, 1)))


# The dtype lm-eval's HF backend computes log-softmax in (its `softmax_dtype`; unset, the model's own);
# recorded in every classification result.
LM_EVAL_SOFTMAX_DTYPE = "float32"


def token_budget_hflm(model, tokenizer, batch_size: int, max_batch_tokens: int | None):
    """lm-eval's HFLM around `model`, whose log-likelihood batches hold at most `max_batch_tokens`
    tokens (rows x the batch's longest request, padding included), and at most `batch_size` rows.

    lm-eval 0.4's HFLM materialises log-softmax over [rows, length, vocab] beside the logits, and
    the previous batch's log-softmax is still referenced while the next is computed
    (`_loglikelihood_tokens`): 3 such tensors at the peak (bench/eval_logits_memory.py), so MMLU
    5-shot on Llama-3.1-8B at batch 32 is 3 x 32 x 2.5k x 128256 x 2 bytes = 62 GB. Its own
    `batch_size: auto` runs batches from 64 rows down until one raises no out-of-memory error: on
    CPU that bounds nothing (Linux overcommits; a cgroup limit kills the job instead), on a GPU it
    picks whatever fitted at that moment, so the batches (and their rounding) vary by machine.
    Here each batch's rows follow from its first request, which lm-eval sorts longest first (so
    that request's length is the batch's padded length), through the per-batch hook `auto` uses
    (`_batch_scheduler`). Batching does not change a request's log-likelihood beyond kernel
    rounding: the inputs are right-padded and causal, so no real token sees the padding.
    `batch_sizes_used` records the rows of each budgeted batch.
    """
    from lm_eval.models.huggingface import HFLM

    class TokenBudgetHFLM(HFLM):
        def __init__(self) -> None:
            # log-softmax in fp32 whatever the model's dtype: in bf16 (8 mantissa bits) the log-probabilities
            # of long continuations round enough to flip close multiple-choice answers
            super().__init__(
                pretrained=model, tokenizer=tokenizer, batch_size=batch_size, softmax_dtype=LM_EVAL_SOFTMAX_DTYPE
            )
            self.batch_sizes_used: list[int] = []
            self._batch_end, self._rows = 0, batch_size

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            if max_batch_tokens is None:
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            # In "auto" mode lm-eval asks _batch_scheduler for each batch's size; an outer caller's
            # override_bs (loglikelihood_rolling's window batches) would bypass it, so it is dropped.
            self.batch_size_per_gpu, self._batch_end = "auto", 0
            try:
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs=None)
            finally:
                self.batch_size_per_gpu = batch_size

        def _batch_scheduler(self, pos: int, n_reordered_requests) -> int:
            # Collator.get_chunks calls this for every request as it joins a batch and closes the
            # batch when its length equals the answer: the size is fixed by the batch's first request.
            if pos >= self._batch_end or pos == 0:
                _, context, continuation = n_reordered_requests[pos]
                # HFLM's causal input: (context + continuation)[-(max_length + 1):][:-1]
                longest = min(len(context) + len(continuation), self.max_length + 1) - 1
                self._rows = budgeted_batch_size(longest, batch_size, max_batch_tokens)
                self._batch_end = pos + self._rows
                self.batch_sizes_used.append(self._rows)
            return self._rows

    return TokenBudgetHFLM()


LM_EVAL_BACKENDS = ("hf", "vllm")


def check_lm_eval_backend(backend: str) -> None:
    """ValueError for an unknown backend, RuntimeError for vllm without vLLM (before any model loads)."""
    if backend not in LM_EVAL_BACKENDS:
        raise ValueError(f"evaluation.backend must be one of {', '.join(LM_EVAL_BACKENDS)}, got {backend!r}")
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise RuntimeError(
            "evaluation.backend: vllm, but vLLM is not installed here: `pip install -e .[vllm]` on a CUDA "
            "machine, or set evaluation.backend: hf"
        )


def run_lm_eval(
    model,
    tokenizer,
    lm_eval_task: str,
    num_fewshot: int,
    limit: float | None,
    batch_size: int,
    seed: int,
    include_path: str | Path | None = None,
    include_defaults: bool = True,
    backend: str = "hf",
    model_dir: str | Path | None = None,
    dtype: str = "auto",
    max_batch_tokens: int | None = None,
) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` on one task (or group) by name.

    backend hf: lm-eval's HFLM around the model object passed in, its log-likelihood batches
    bounded by `max_batch_tokens` (`token_budget_hflm`); vllm: lm-eval's vLLM model
    loading `model_dir` itself (the paper authors' `lm_eval --model vllm`; `model` and
    `tokenizer` are unused). The seeds are lm-eval's four (python, numpy, torch, few-shot
    sampler), all set from `seed`, as `lm_eval --seed <seed>` does, so that the command line
    gives the same numbers.
    """
    check_lm_eval_backend(backend)
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(
        include_path=str(include_path) if include_path else None, include_defaults=include_defaults
    )
    if lm_eval_task not in task_manager.all_tasks:
        where = f" (include_path {include_path})" if include_path else ""
        raise KeyError(f"tasks.*.lm_eval_task: lm-eval knows no task or group {lm_eval_task!r}{where}")
    if backend == "vllm":
        if model_dir is None:
            raise ValueError("evaluation.backend vllm loads the checkpoint itself: pass model_dir")
        from lm_eval.models.vllm_causallms import VLLM

        lm = VLLM(pretrained=str(model_dir), dtype=dtype, batch_size="auto", seed=seed)
    else:
        lm = token_budget_hflm(model, tokenizer, batch_size, max_batch_tokens)
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=[lm_eval_task],
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=task_manager,
        log_samples=True,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )


def fetch_lm_eval_data(task_files: list[str | Path]) -> dict[str, int]:
    """Build every lm-eval task the task files name, which downloads its data into the Hugging Face
    cache (HF_HOME); return each (sub)task's number of evaluated documents.

    For clusters whose compute nodes have no internet: run it once where there is (after the
    prepare_lm_eval_task jobs), then the evaluations run with HF_HUB_OFFLINE=1. Task files of
    other tasks (BIG-bench, datasets) hold their samples already and are skipped.
    """
    from lm_eval.tasks import TaskManager, get_task_dict

    counts: dict[str, int] = {}

    def walk(tasks: dict[Any, Any]) -> None:
        for name, task in tasks.items():
            if isinstance(task, dict):
                walk(task)
            else:
                counts[getattr(name, "group_name", name)] = len(task.eval_docs)

    for path in task_files:
        spec = read_json(path)
        if not spec.get("lm_eval_task"):
            continue
        manager = TaskManager(include_path=spec.get("include_path"), include_defaults=True)
        if spec["lm_eval_task"] not in manager.all_tasks:
            raise KeyError(f"{path}: lm-eval knows no task or group {spec['lm_eval_task']!r}")
        walk(get_task_dict([spec["lm_eval_task"]], manager))
    return counts


def lm_eval_records(results: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """Per-sample records from lm-eval's logged samples, over every subtask of a group (MMLU).

    A sample's id is its document's own `id` (or its index) and, in a group, is prefixed with
    `<subtask>/`: the same on every checkpoint, so dense and pruned runs pair up for the bootstrap.
    """
    records = []
    grouped = len(results["samples"]) > 1
    for subtask in sorted(results["samples"]):
        for logged in sorted(results["samples"][subtask], key=lambda s: s["doc_id"]):
            arguments = [tuple(arg) for arg in logged["arguments"]]
            loglikelihoods = [float(resp[0]) for resp in logged["filtered_resps"]]
            best = max(range(len(loglikelihoods)), key=loglikelihoods.__getitem__)
            doc_id = logged["doc"].get("id", logged["doc_id"]) if isinstance(logged["doc"], dict) else logged["doc_id"]
            target = logged["target"]
            choices = [continuation.strip() for _, continuation in arguments]
            if len(set(choices)) == 1:  # e.g. WinoGrande: the choices differ in the context
                choices = [context for context, _ in arguments]
            records.append(
                {
                    "id": f"{subtask}/{doc_id}" if grouped else doc_id,
                    "subtask": subtask,
                    "prompt": arguments[0][0],
                    "output": choices[best],
                    "target": choices[target] if isinstance(target, int) and 0 <= target < len(choices) else target,
                    "loglikelihoods": loglikelihoods,
                    "correct": bool(logged[metric]),
                }
            )
    return records


def _stderr_value(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def evaluate_classification(
    model,
    tokenizer,
    task: dict[str, Any],
    task_name: str,
    batch_size: int,
    seed: int,
    backend: str = "hf",
    model_dir: str | Path | None = None,
    dtype: str = "auto",
    max_batch_tokens: int | None = None,
) -> dict[str, Any]:
    """Log-likelihood over the choices through lm-eval.

    A task JSON with `lm_eval_task` names an lm-eval task or group (MMLU, ARC, ...; its data
    comes from the hub, or from `include_path`'s own YAMLs); otherwise the prepared samples
    (BIG-bench) become a local lm-eval task.
    """
    import lm_eval

    metric = task.get("metric", "acc")
    with tempfile.TemporaryDirectory(prefix="layerprune-lmeval-") as work:
        if task.get("lm_eval_task"):
            lm_eval_name, include_path, include_defaults = task["lm_eval_task"], task.get("include_path"), True
            limit = task.get("limit")
        else:
            lm_eval_name = write_local_lm_eval_task(task, task_name, work)
            include_path, include_defaults, limit = work, False, None
        results = run_lm_eval(
            model,
            tokenizer,
            lm_eval_name,
            task["num_fewshot"],
            limit,
            batch_size,
            seed,
            include_path,
            include_defaults,
            backend=backend,
            model_dir=model_dir,
            dtype=dtype,
            max_batch_tokens=max_batch_tokens,
        )
    metrics = results["results"][lm_eval_name]
    if f"{metric},none" not in metrics:
        raise KeyError(
            f"tasks.{task_name}.lm_eval_metric: lm-eval task {lm_eval_name} reports no {metric!r} ({sorted(metrics)})"
        )
    return {
        "backend": backend,
        "metric": {"acc": "accuracy", "acc_norm": "accuracy_norm"}.get(metric, metric),
        "value": float(metrics[f"{metric},none"]),
        # lm-eval reports "N/A" when it cannot estimate one (a single sample, a group of such subtasks)
        "stderr": _stderr_value(metrics.get(f"{metric}_stderr,none")),
        "grader": f"lm-eval {lm_eval.__version__} {lm_eval_name} {metric}",
        "samples": lm_eval_records(results, metric),
        "lm_eval_task": lm_eval_name,
        "lm_eval_version": lm_eval.__version__,
        # the vllm backend computes log-probabilities in its own sampler (fp32)
        "softmax_dtype": LM_EVAL_SOFTMAX_DTYPE if backend == "hf" else "vllm",
    }


def training_seed(model_dir: str | Path) -> int | None:
    """The seed a recovered checkpoint was trained with (its recovery.json); None for a checkpoint never trained
    here (the dense model, a pruned one without recovery). With recovery.seeds the report tells replicates apart
    by it."""
    record = Path(model_dir) / "recovery.json"
    if not record.is_file():
        return None
    seed = (read_json(record).get("settings") or {}).get("seed")
    return int(seed) if seed is not None else None


def evaluate_checkpoint(
    model_dir: str | Path,
    task_path: str | Path,
    task_name: str,
    out_path: str | Path,
    settings: EvaluationSettings | None = None,
    variant: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate the checkpoint in `model_dir` on the prepared task in `task_path`.

    The result describes itself, so the aggregate step needs nothing but the result files: the
    `variant` (model, method, ratio, recovery), the `training_seed` of a recovered checkpoint (from its
    recovery.json; None otherwise), the chance level (`chance`, tasks.<task>.chance,
    else 1/choices or 0; `chance_source` says which), the dtype the weights were evaluated in, the
    prompting used and every evaluation setting. `settings` (layerprune.config.settings.EvaluationSettings, the
    task's: what `layerprune evaluate` passes) with `overrides` applied, e.g. `batch_size=4`. `backend`
    (hf or vllm) is the model lm-eval runs classification tasks on; generative tasks always use
    transformers. `max_batch_tokens` bounds the tokens of an hf-backend classification batch
    (`token_budget_hflm`).
    `max_generate_tokens` bounds those of a generation batch (prompt + max_new_tokens: the KV cache). A
    generative evaluation saves its finished batches beside `out_path` (`GenerationPartial`) and,
    re-run after a kill with the same model, task and settings, generates only what is missing.
    """
    from layerprune.evaluation.chance import task_chance

    options = EvaluationSettings.build(settings, **overrides)
    batch_size, seed, dtype, backend = options.batch_size, options.seed, options.dtype, options.backend

    task = read_json(task_path)
    if task.get("grader") == "code":
        # Before the model loads: where strict isolation is impossible, stop now (SandboxUnavailable names what
        # is missing and the setting that accepts less), not after the generations.
        preflight(SandboxLimits.from_settings(options))
    model = None  # lm-eval's vLLM backend loads the weights itself
    classification = task["type"] == "classification"
    if classification:
        check_lm_eval_backend(backend)
    if classification and backend == "vllm":
        result = evaluate_classification(
            None, None, task, task_name, batch_size, seed, backend=backend, model_dir=model_dir, dtype=dtype
        )
    elif classification:
        model, tokenizer = load_checkpoint(model_dir, dtype=dtype)
        result = evaluate_classification(
            model, tokenizer, task, task_name, batch_size, seed, max_batch_tokens=options.max_batch_tokens
        )
    else:
        model, tokenizer = load_checkpoint(model_dir, dtype=dtype)
        partial = GenerationPartial(
            out_path,
            {
                "format": 1,
                # what the model is, not where (io.content_fingerprint), and the task file's content
                "model": content_fingerprint(model_dir),
                "task_sha256": sha256_file(task_path),
                "max_new_tokens": options.max_new_tokens,
                "batch_size": batch_size,
                "max_generate_tokens": options.max_generate_tokens,
                "seed": seed,
                "dtype": str(next(model.parameters()).dtype),
                "prompting": options.prompting,
                "sampling": {**Sampling.from_settings(options).__dict__},
            },
        )
        result = evaluate_generative(
            model,
            tokenizer,
            task,
            options.max_new_tokens,
            batch_size,
            prompting=options.prompting,
            sampling=Sampling.from_settings(options),
            pass_k=options.pass_k,
            sandbox=SandboxLimits.from_settings(options),
            seed=seed,
            max_batch_tokens=options.max_generate_tokens,
            partial=partial,
        )
    result = {
        **(variant or {}),
        "task": task_name,
        "type": task["type"],
        "source": task["source"],
        # package versions, file hashes, licence: what the samples were drawn from (layerprune.evaluation.tasks)
        "provenance": task.get("provenance"),
        "num_fewshot": task["num_fewshot"],
        "checkpoint": str(model_dir),
        "n": len(result["samples"]),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch.") if model is not None else dtype,
        # classification scores the choices' log-likelihoods after the few-shot prompt, never a chat template
        "prompting": "fewshot" if task["type"] == "classification" else options.prompting,
        **result,
    }
    result["training_seed"] = training_seed(model_dir)
    result["chance"], result["chance_source"] = task_chance(
        {**result, "chance": options.chance}, f"{task_name} on {model_dir}"
    )
    result["settings"] = options.to_dict()
    write_json(out_path, result)
    if not classification:
        partial.remove()
    return result
