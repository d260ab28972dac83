"""`layerprune <stage> ...`: run one stage of the pipeline on files.

The Snakemake rules call exactly these commands; every setting arrives as an
explicit flag, so a job is a function of its command line.
"""

from __future__ import annotations

import argparse
import json
import sys


def _threads(count: int | None) -> None:
    if count:
        import torch

        torch.set_num_threads(count)


def _optional_int(text: str) -> int | None:
    return None if text.lower() in {"none", "null", ""} else int(text)


def _optional_float(text: str) -> float | None:
    return None if text.lower() in {"none", "null", ""} else float(text)


def _optional_str(text: str) -> str | None:
    return None if text.lower() in {"none", "null", ""} else text


def _bool(text: str) -> bool:
    if text.lower() in {"true", "1", "yes"}:
        return True
    if text.lower() in {"false", "0", "no"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def cmd_materialize(args: argparse.Namespace) -> None:
    from layerprune.models import materialize

    materialize(json.loads(args.source), args.out, dtype=args.dtype)


def cmd_fetch_bigbench(args: argparse.Namespace) -> None:
    from layerprune.data import fetch_bigbench_sdist

    fetch_bigbench_sdist(args.out)


def cmd_extract_bigbench(args: argparse.Namespace) -> None:
    from layerprune.data import extract_bigbench_task

    extract_bigbench_task(args.task, args.out, args.sdist)


def cmd_prepare_task(args: argparse.Namespace) -> None:
    from layerprune.tasks import prepare_task_spec

    prepare_task_spec(json.loads(args.spec), args.bigbench_dir, args.seed, args.out)


def cmd_prepare_lm_eval_task(args: argparse.Namespace) -> None:
    from layerprune.data import prepare_lm_eval_task

    prepare_lm_eval_task(
        args.lm_eval_task, args.num_fewshot, args.limit, args.metric, args.include_path, args.seed, args.out
    )


def cmd_prepare_prompts(args: argparse.Namespace) -> None:
    from layerprune.data import prepare_prompt_set

    prepare_prompt_set(
        args.bigbench_dir,
        args.tasks,
        args.num_prompts,
        args.seed,
        args.out,
        system_prompt=args.system_prompt,
        source=args.source,
        path=args.path,
        name=args.name,
        split=args.split,
        prompt_fields=args.prompt_fields,
        response_field=args.response_field,
        separator=args.separator,
    )


def cmd_filter_prompts(args: argparse.Namespace) -> None:
    from layerprune.data import filter_prompt_set

    filter_prompt_set(args.prompts, args.model, args.max_prompt_tokens, args.out, args.stats)


def cmd_magpie_prompts(args: argparse.Namespace) -> None:
    from layerprune.magpie import magpie_prompts

    _threads(args.threads)
    magpie_prompts(
        args.model,
        args.out,
        args.stats,
        num_prompts=args.num_prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        seed=args.seed,
        dedup_threshold=args.dedup_threshold,
        ngram=args.ngram,
        max_candidates=args.max_candidates,
        system_prompt=args.system_prompt,
        max_prompt_tokens=args.max_prompt_tokens,
        dtype=args.dtype,
        backend=args.backend,
    )


def cmd_prepare_calibration(args: argparse.Namespace) -> None:
    from layerprune.data import prepare_calibration

    prepare_calibration(args.bigbench_dir, args.tasks, args.num_samples, args.seed, args.out)


def cmd_prepare_heal(args: argparse.Namespace) -> None:
    from layerprune.heal import prepare_heal_text

    count = prepare_heal_text(json.loads(args.source), args.num_texts, args.seed, args.out, args.bigbench_dir)
    print(f"{count} heal texts -> {args.out}")


def cmd_score(args: argparse.Namespace) -> None:
    from layerprune.io import read_jsonl, write_json
    from layerprune.models import decoder_layers, load_checkpoint
    from layerprune.score import layers_for_ratio, score_file_record, score_layers

    _threads(args.threads)
    probe_tasks = max_k = None
    if args.method == "iterative":
        from layerprune.iterative import load_probe_tasks

        if not args.probe_tasks or args.max_ratio is None:
            raise SystemExit("layerprune score: --method iterative needs --probe-tasks and --max-ratio")
        max_new_tokens = args.probe_max_new_tokens or [16]
        if len(max_new_tokens) == 1:
            max_new_tokens = max_new_tokens[0]
        probe_tasks = load_probe_tasks(args.probe_tasks, args.num_samples, max_new_tokens)
    model, tokenizer = load_checkpoint(args.model, dtype=args.dtype)
    if args.method == "sleb" and args.max_ratio is not None:
        max_k = layers_for_ratio(args.max_ratio, len(decoder_layers(model)))
    if args.method == "iterative":
        num_layers = len(decoder_layers(model))
        max_k = layers_for_ratio(args.max_ratio, num_layers)
        if not 1 <= max_k < num_layers:
            raise SystemExit(f"layerprune score: --max-ratio {args.max_ratio} removes {max_k} of {num_layers} layers")
    texts = [record["text"] for record in read_jsonl(args.calibration)] if args.calibration else None
    settings = dict(max_length=args.max_length, batch_size=args.batch_size, seed=args.seed)
    result = score_layers(
        args.method,
        model,
        tokenizer,
        texts,
        probe_tasks=probe_tasks,
        max_k=max_k,
        chunk_size=args.chunk_size,
        sleb_exclude_ends=args.sleb_exclude_ends,
        **settings,
    )
    record = score_file_record(result, args.model, args.calibration, texts, **settings)
    if args.method in ("iterative", "sleb"):
        record["max_ratio"] = args.max_ratio
    if args.method == "iterative":
        record["probe_task_files"] = args.probe_tasks
    write_json(args.out, record)


def cmd_prune(args: argparse.Namespace) -> None:
    from layerprune.prune import prune_checkpoint

    _threads(args.threads)
    prune_checkpoint(args.model, args.scores, args.ratio, args.out, dtype=args.dtype)


def cmd_selfgen(args: argparse.Namespace) -> None:
    from layerprune.selfgen import self_generate

    _threads(args.threads)
    self_generate(
        args.model,
        args.prompts,
        args.out,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        seed=args.seed,
        dtype=args.dtype,
        backend=args.backend,
        drop_empty=args.drop_empty,
        drop_truncated=args.drop_truncated,
        stats_path=args.stats,
    )


def cmd_recover(args: argparse.Namespace) -> None:
    from layerprune.recover import recover_checkpoint

    _threads(args.threads)
    recover_checkpoint(
        args.model,
        args.dataset,
        args.out,
        recovery=args.recovery,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        learning_rate=args.learning_rate,
        num_epochs=args.num_epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_length=args.max_length,
        warmup_steps=args.warmup_steps,
        lr_scheduler=args.lr_scheduler,
        weight_decay=args.weight_decay,
        seed=args.seed,
        max_steps=args.max_steps,
        dtype=args.dtype,
        trainer=args.trainer,
        precision=args.precision,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        completion_only_loss=args.completion_only_loss,
        padding_free=args.padding_free,
        gradient_checkpointing=args.gradient_checkpointing,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        report_to=args.report_to,
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from layerprune.evaluate import evaluate_checkpoint
    from layerprune.generative import Sampling
    from layerprune.sandbox import SandboxLimits

    _threads(args.threads)
    evaluate_checkpoint(
        args.model,
        args.task_file,
        args.task_name,
        args.out,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        dtype=args.dtype,
        variant={
            "model": args.model_name,
            "method": args.method,
            "ratio": args.ratio,
            "recovery": args.recovery,
        },
        prompting=args.prompting,
        sampling=Sampling(args.temperature, args.top_k, args.top_p, args.num_samples),
        pass_k=args.pass_k,
        sandbox=SandboxLimits(
            timeout_s=args.sandbox_timeout,
            cpu_s=args.sandbox_cpu,
            memory_mb=args.sandbox_memory_mb,
            file_size_mb=args.sandbox_file_size_mb,
            nproc=args.sandbox_nproc,
        ),
    )


def cmd_aggregate(args: argparse.Namespace) -> None:
    from layerprune.aggregate import aggregate

    aggregate(
        args.results,
        args.out_dir,
        score_paths=args.scores,
        bootstrap_samples=args.bootstrap_samples,
        confidence=args.confidence,
        seed=args.seed,
        headline_ratio=args.headline_ratio,
        self_bleu_max_texts=args.self_bleu_max_texts,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layerprune", description=__doc__.splitlines()[0])
    stages = parser.add_subparsers(dest="stage", required=True)

    def stage(name: str, func, help_text: str, model_job: bool = False) -> argparse.ArgumentParser:
        sub = stages.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(func=func)
        if model_job:
            sub.add_argument("--dtype", default="auto", help="auto (bf16 on a capable GPU, else fp32), float32, ...")
            sub.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        return sub

    sub = stage("materialize", cmd_materialize, "Turn a model source into a plain local checkpoint.")
    sub.add_argument("--source", required=True, help='JSON, e.g. {"hub": "Qwen/Qwen2.5-7B-Instruct"}')
    sub.add_argument("--out", required=True)
    sub.add_argument("--dtype", default="float32")

    sub = stage("fetch-bigbench", cmd_fetch_bigbench, "Download and verify the bigbench 1.0.0 sdist.")
    sub.add_argument("--out", required=True)

    sub = stage("extract-bigbench", cmd_extract_bigbench, "Extract one BIG-bench task's JSON from the sdist.")
    sub.add_argument("--sdist", required=True)
    sub.add_argument("--task", required=True)
    sub.add_argument("--out", required=True)

    sub = stage("prepare-task", cmd_prepare_task, "Draw few-shot and evaluated samples of a task.")
    sub.add_argument("--spec", required=True, help="the task's config entry (tasks.<name>) as JSON")
    sub.add_argument("--bigbench-dir", default="resources/bigbench")
    sub.add_argument("--seed", type=int, required=True)
    sub.add_argument("--out", required=True)

    sub = stage("prepare-lm-eval-task", cmd_prepare_lm_eval_task, "Pin the settings of an lm-eval task run by name.")
    sub.add_argument("--lm-eval-task", required=True, help="lm-eval task or group name, e.g. mmlu, arc_challenge")
    sub.add_argument("--num-fewshot", type=int, required=True)
    sub.add_argument("--limit", type=_optional_float, default=None, help="count, or fraction if < 1 (lm-eval)")
    sub.add_argument("--metric", default="acc", choices=["acc", "acc_norm"])
    sub.add_argument("--include-path", type=_optional_str, default=None, help="folder of extra lm-eval task YAMLs")
    sub.add_argument("--seed", type=int, required=True)
    sub.add_argument("--out", required=True)

    sub = stage("prepare-prompts", cmd_prepare_prompts, "Build the prompt set (with reference answers).")
    sub.add_argument("--source", choices=["bigbench", "hub", "jsonl"], default="bigbench")
    sub.add_argument("--bigbench-dir", default=None)
    sub.add_argument("--tasks", nargs="*", default=None, help="bigbench: BIG-bench tasks")
    sub.add_argument("--path", type=_optional_str, default=None, help="hub: id, save_to_disk dir or file; jsonl: file")
    sub.add_argument("--name", type=_optional_str, default=None, help="hub: dataset config name")
    sub.add_argument("--split", default="train", help="hub: split")
    sub.add_argument("--prompt-fields", nargs="*", default=None, help="hub, jsonl: fields joined into the user turn")
    sub.add_argument("--response-field", type=_optional_str, default=None, help="hub, jsonl: the reference answer")
    sub.add_argument("--separator", default="\n\n", help="between the prompt fields")
    sub.add_argument("--num-prompts", type=int, required=True)
    sub.add_argument("--system-prompt", type=_optional_str, default=None, help="prepended to every prompt")
    sub.add_argument("--seed", type=int, required=True)
    sub.add_argument("--out", required=True)

    sub = stage("filter-prompts", cmd_filter_prompts, "Drop prompts over a token limit of a model's tokenizer.")
    sub.add_argument("--prompts", required=True)
    sub.add_argument("--model", required=True, help="checkpoint whose tokenizer and chat template count")
    sub.add_argument("--max-prompt-tokens", type=_optional_int, default=None)
    sub.add_argument("--out", required=True)
    sub.add_argument("--stats", required=True)

    sub = stage("magpie-prompts", cmd_magpie_prompts, "Let the dense model write the user turns (Magpie).", True)
    sub.add_argument("--model", required=True)
    sub.add_argument("--num-prompts", type=int, required=True)
    sub.add_argument("--max-new-tokens", type=int, required=True)
    sub.add_argument("--temperature", type=float, required=True)
    sub.add_argument("--top-p", type=float, required=True)
    sub.add_argument("--batch-size", type=int, default=16)
    sub.add_argument("--seed", type=int, required=True)
    sub.add_argument(
        "--dedup-threshold", type=float, required=True, help="shingle Jaccard at which a question is dropped"
    )
    sub.add_argument("--ngram", type=int, default=3)
    sub.add_argument("--max-candidates", type=_optional_int, default=None, help="default 4 x num-prompts")
    sub.add_argument("--system-prompt", type=_optional_str, default=None)
    sub.add_argument("--max-prompt-tokens", type=_optional_int, default=None)
    sub.add_argument("--backend", choices=["auto", "transformers", "vllm"], default="auto")
    sub.add_argument("--out", required=True)
    sub.add_argument("--stats", required=True)

    sub = stage("prepare-calibration", cmd_prepare_calibration, "Build the calibration texts.")
    sub.add_argument("--bigbench-dir", required=True)
    sub.add_argument("--tasks", nargs="+", required=True)
    sub.add_argument("--num-samples", type=int, required=True)
    sub.add_argument("--seed", type=int, required=True)
    sub.add_argument("--out", required=True)

    sub = stage("prepare-heal", cmd_prepare_heal, "Build the plain texts of the `heal` recovery (LM loss).")
    sub.add_argument("--source", required=True, help='JSON, e.g. {"bigbench_tasks": ["gem/wikilingua_en"]}')
    sub.add_argument("--bigbench-dir", default="resources/bigbench")
    sub.add_argument("--num-texts", type=int, required=True)
    sub.add_argument("--seed", type=int, required=True)
    sub.add_argument("--out", required=True)

    sub = stage("score", cmd_score, "Score the decoder layers of a checkpoint.", model_job=True)
    sub.add_argument("--model", required=True)
    sub.add_argument("--method", required=True)
    sub.add_argument("--calibration", default=None, help="JSONL with a 'text' field")
    sub.add_argument("--max-length", type=int, default=256)
    sub.add_argument("--batch-size", type=int, default=8)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--probe-tasks", nargs="+", default=None, help="iterative: prepared task JSON files")
    sub.add_argument(
        "--probe-max-new-tokens", type=int, nargs="+", default=None, help="iterative: one per probe task (or one)"
    )
    sub.add_argument("--num-samples", type=int, default=16, help="iterative: first samples of each probe task")
    sub.add_argument(
        "--max-ratio",
        type=float,
        default=None,
        help="iterative, sleb: rounds up to round(max_ratio * L) (sleb without it: every round)",
    )
    sub.add_argument(
        "--chunk-size", type=_optional_int, default=None, help="ppl, sleb: texts whose layer inputs are cached at once"
    )
    sub.add_argument("--sleb-exclude-ends", type=_bool, default=True, help="sleb: never remove the first/last layer")
    sub.add_argument("--out", required=True)

    sub = stage("prune", cmd_prune, "Remove layers at a ratio and save a plain checkpoint.", model_job=True)
    sub.add_argument("--model", required=True)
    sub.add_argument("--scores", required=True)
    sub.add_argument("--ratio", type=float, required=True)
    sub.add_argument("--out", required=True)

    sub = stage("selfgen", cmd_selfgen, "Generate the dense model's responses to the prompt set.", model_job=True)
    sub.add_argument("--model", required=True)
    sub.add_argument("--prompts", required=True)
    sub.add_argument("--out", required=True)
    sub.add_argument("--max-new-tokens", type=int, required=True)
    sub.add_argument("--temperature", type=float, required=True)
    sub.add_argument("--top-p", type=float, required=True)
    sub.add_argument("--batch-size", type=int, default=16)
    sub.add_argument("--seed", type=int, required=True)
    sub.add_argument("--backend", choices=["auto", "transformers", "vllm"], default="auto")
    sub.add_argument("--drop-empty", type=_bool, default=False)
    sub.add_argument("--drop-truncated", type=_bool, default=False)
    sub.add_argument("--stats", default=None, help="stats JSON (default: <out stem>.stats.json)")

    sub = stage(
        "recover", cmd_recover, "SFT (LoRA, QLoRA or full) of a pruned checkpoint (TRL), merged.", model_job=True
    )
    sub.add_argument("--model", required=True)
    sub.add_argument("--dataset", required=True, help="prompt-completion JSONL")
    sub.add_argument("--out", required=True)
    sub.add_argument("--recovery", required=True, help="name recorded in recovery.json (sgr, data)")
    sub.add_argument("--lora-r", type=int, required=True)
    sub.add_argument("--lora-alpha", type=int, required=True)
    sub.add_argument("--lora-dropout", type=float, required=True)
    sub.add_argument("--learning-rate", type=float, required=True)
    sub.add_argument("--num-epochs", type=float, required=True)
    sub.add_argument("--batch-size", type=int, required=True)
    sub.add_argument("--grad-accum", type=int, required=True)
    sub.add_argument("--max-length", type=int, required=True)
    sub.add_argument("--warmup-steps", type=int, required=True)
    sub.add_argument("--lr-scheduler", required=True)
    sub.add_argument("--weight-decay", type=float, required=True)
    sub.add_argument("--max-steps", type=int, default=-1)
    sub.add_argument("--seed", type=int, required=True)
    sub.add_argument("--trainer", choices=["lora", "qlora", "full"], default="lora")
    sub.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    sub.add_argument("--adam-beta1", type=float, default=0.9)
    sub.add_argument("--adam-beta2", type=float, default=0.99)
    sub.add_argument("--completion-only-loss", type=_bool, default=True, help="true/false (sgr, data only)")
    sub.add_argument("--padding-free", type=_bool, default=False, help="true/false: flattened batches")
    sub.add_argument("--gradient-checkpointing", type=_bool, default=False, help="true/false: recompute activations")
    sub.add_argument("--save-steps", type=int, default=50, help="checkpoint every N steps (for resuming)")
    sub.add_argument("--save-total-limit", type=int, default=2)
    sub.add_argument("--report-to", default="none", help="none, tensorboard, wandb (comma-separated)")

    sub = stage("evaluate", cmd_evaluate, "Evaluate a checkpoint on one prepared task.", model_job=True)
    sub.add_argument("--model", required=True, help="checkpoint directory")
    sub.add_argument("--task-file", required=True)
    sub.add_argument("--task-name", required=True)
    sub.add_argument("--out", required=True)
    sub.add_argument("--batch-size", type=int, default=16)
    sub.add_argument("--max-new-tokens", type=int, default=16)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--model-name", required=True, help="the model's name in the config")
    sub.add_argument("--method", default="dense")
    sub.add_argument("--ratio", type=float, default=0.0)
    sub.add_argument("--recovery", default="none")
    sub.add_argument("--prompting", default="auto", choices=["auto", "chat", "fewshot"])
    sub.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    sub.add_argument("--top-k", type=_optional_int, default=None)
    sub.add_argument("--top-p", type=_optional_float, default=None)
    sub.add_argument("--num-samples", type=int, default=1, help="generations per problem")
    sub.add_argument("--pass-k", type=int, nargs="+", default=[1], help="code tasks: the k of pass@k")
    sub.add_argument("--sandbox-timeout", type=float, default=10.0, help="seconds of wall clock per program")
    sub.add_argument("--sandbox-cpu", type=int, default=10, help="seconds of CPU per program")
    sub.add_argument("--sandbox-memory-mb", type=int, default=2048)
    sub.add_argument("--sandbox-file-size-mb", type=int, default=16)
    sub.add_argument("--sandbox-nproc", type=int, default=32)

    sub = stage("aggregate", cmd_aggregate, "Tidy table, report and plots from evaluation JSONs.")
    sub.add_argument("--results", nargs="+", required=True)
    sub.add_argument("--scores", nargs="*", default=[], help="scores JSONs, to compare the methods")
    sub.add_argument("--out-dir", required=True)
    sub.add_argument("--bootstrap-samples", type=int, default=1000, help="resamples for the retention intervals")
    sub.add_argument("--confidence", type=float, default=0.95, help="level of the bootstrap intervals")
    sub.add_argument("--seed", type=int, default=0, help="seeds the bootstrap and the self-BLEU subsample")
    sub.add_argument("--headline-ratio", type=_optional_float, default=None, help="first-screen ratio (None: median)")
    sub.add_argument("--self-bleu-max-texts", type=int, default=1000, help="outputs per result for self-BLEU")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
