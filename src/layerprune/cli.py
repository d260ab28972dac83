"""`layerprune <stage> ...`: run one stage of the pipeline on files.

The Snakemake rules call exactly these commands, so a job is a function of its command
line. A stage's settings (layerprune.config.settings) arrive as one `--settings` JSON object
(what the rules pass) or one flag each (`--lora-r 16`); a flag wins over the JSON.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import sys
import time
from pathlib import Path

from layerprune.config.settings import (
    BigbenchSourceSettings,
    CalibrationSettings,
    DistillSettings,
    EvaluationSettings,
    HealSettings,
    MagpieSettings,
    PromptFilterSettings,
    PromptSetSettings,
    PruneSettings,
    RecoverySettings,
    ReportSettings,
    ScoreSettings,
    SelfgenSettings,
    add_settings_arguments,
    settings_from_args,
)
from layerprune.data.builtin import BUILTIN_DIR
from layerprune.io import SourceUnavailable
from layerprune.registry import DISTILLATIONS, RECOVERIES, SCORING_METHODS, TRAINED, TRAINING_DATA, check_name


def _threads(count: int | None) -> None:
    if count:
        import torch

        torch.set_num_threads(count)


def _optional_float(text: str) -> float | None:
    return None if text.lower() in {"none", "null", ""} else float(text)


def _optional_str(text: str) -> str | None:
    return None if text.lower() in {"none", "null", ""} else text


def cmd_materialize(args: argparse.Namespace) -> None:
    from layerprune.models.checkpoints import materialize

    materialize(json.loads(args.source), args.out, dtype=args.dtype)


def cmd_fetch_bigbench(args: argparse.Namespace) -> None:
    from layerprune.data.sources import fetch_bigbench_sdist

    settings = settings_from_args(BigbenchSourceSettings, args, "fetch-bigbench")
    fetch_bigbench_sdist(args.out, **settings.to_dict())


def cmd_build_task(args: argparse.Namespace) -> str:
    from layerprune.data.builtin import build_task

    payload = build_task(args.name, args.out)
    return f"layerprune build-task: {args.name}: {len(payload['examples'])} examples -> {args.out}"


def cmd_restore_mtimes(args: argparse.Namespace) -> str:
    from layerprune.mtimes import restore_mtimes

    return restore_mtimes(".", args.metadata).line()


def cmd_dvc_stages(args: argparse.Namespace) -> str:
    from layerprune.dvcstages import write_dvc_yaml

    studies = write_dvc_yaml(".", args.add, args.configs)
    listed = ", ".join(f"{study.name} ({study.config})" for study in studies)
    return f"layerprune dvc-stages: dvc.yaml versions {len(studies)} studies: {listed}"


def cmd_extract_bigbench(args: argparse.Namespace) -> None:
    from layerprune.data.sources import extract_bigbench_task

    extract_bigbench_task(args.task, args.out, args.sdist)


def cmd_prepare_task(args: argparse.Namespace) -> None:
    from layerprune.evaluation.tasks import prepare_task_spec, task_sample_ids

    spec = json.loads(args.spec)
    # tasks.<task>.exclude_tasks: each prepared task sits in its own fingerprint's folder, so the
    # files come as --exclude-task-files, one per name
    names = spec.pop("exclude_tasks", [])
    if len(names) != len(args.exclude_task_files):
        raise SystemExit(
            f"tasks.<task>.exclude_tasks names {len(names)} task(s) ({', '.join(names) or 'none'}), "
            f"but --exclude-task-files gives {len(args.exclude_task_files)} file(s)"
        )
    spec.pop("evaluate", None)
    spec.pop("chance", None)
    exclude_ids = task_sample_ids(args.exclude_task_files) if names else None
    prepare_task_spec(
        spec, args.bigbench_dir, args.seed, args.out, exclude_ids=exclude_ids, builtin_dir=args.builtin_dir
    )


def cmd_prepare_lm_eval_task(args: argparse.Namespace) -> None:
    from layerprune.data.sources import prepare_lm_eval_task

    prepare_lm_eval_task(
        args.lm_eval_task, args.num_fewshot, args.limit, args.metric, args.include_path, args.seed, args.out
    )


def cmd_fetch_lm_eval_data(args: argparse.Namespace) -> str:
    from layerprune.evaluation.evaluate import fetch_lm_eval_data

    fetched = fetch_lm_eval_data(args.task_files)
    for name, docs in fetched.items():
        print(f"{name}: {docs} documents", flush=True)
    return f"layerprune fetch-lm-eval-data: {len(fetched)} lm-eval task(s) in the datasets cache"


def cmd_prepare_prompts(args: argparse.Namespace) -> None:
    from layerprune.data.sources import prepare_prompt_set

    settings = settings_from_args(PromptSetSettings, args, "prepare-prompts")
    prepare_prompt_set(
        bigbench_dir=args.bigbench_dir, builtin_dir=args.builtin_dir, out_path=args.out, **settings.to_dict()
    )


def cmd_filter_prompts(args: argparse.Namespace) -> None:
    from layerprune.data.sources import filter_prompt_set

    settings = settings_from_args(PromptFilterSettings, args, "filter-prompts")
    filter_prompt_set(args.prompts, args.model, settings.max_prompt_tokens, args.out, args.stats)


def cmd_magpie_prompts(args: argparse.Namespace) -> None:
    from layerprune.data.magpie import magpie_prompts

    settings = settings_from_args(MagpieSettings, args, "magpie-prompts")
    _threads(args.threads)
    magpie_prompts(args.model, args.out, args.stats, **settings.to_dict())


def cmd_prepare_calibration(args: argparse.Namespace) -> None:
    from layerprune.data.sources import prepare_calibration

    settings = settings_from_args(CalibrationSettings, args, "prepare-calibration")
    prepare_calibration(
        args.bigbench_dir,
        settings.bigbench_tasks,
        settings.num_samples,
        settings.seed,
        args.out,
        source=settings.source,
        path=settings.path,
        split=settings.split,
        builtin_tasks=settings.builtin_tasks,
        builtin_dir=args.builtin_dir,
    )


def cmd_prepare_heal(args: argparse.Namespace) -> None:
    from layerprune.data.heal import prepare_heal_text

    settings = settings_from_args(HealSettings, args, "prepare-heal")
    count = prepare_heal_text(
        settings.source, settings.num_texts, settings.seed, args.out, args.bigbench_dir, builtin_dir=args.builtin_dir
    )
    print(f"{count} heal texts -> {args.out}")


def cmd_score(args: argparse.Namespace) -> None:
    from layerprune.io import read_jsonl, write_json
    from layerprune.models.checkpoints import decoder_layers, load_checkpoint
    from layerprune.scoring.score import layers_for_ratio, score_file_record, score_layers

    settings = settings_from_args(ScoreSettings, args, "score")
    check_name("scoring method", args.method, SCORING_METHODS)
    _threads(args.threads)
    probe_tasks = max_k = None
    if args.method == "iterative":
        from layerprune.scoring.iterative import load_probe_tasks

        if not args.probe_tasks or settings.max_ratio is None:
            raise SystemExit("layerprune score: --method iterative needs --probe-tasks and --max-ratio")
        max_new_tokens: int | list[int] = settings.probe_max_new_tokens or [16]
        if len(max_new_tokens) == 1:
            max_new_tokens = max_new_tokens[0]
        from layerprune.evaluation.generative import Sampling

        # each probe is generated exactly as its task is evaluated (tasks.<task>: prompting and sampling)
        samplings = [Sampling(**sampling) if sampling else None for sampling in settings.probe_sampling]
        prompting = settings.probe_prompting[0] if len(settings.probe_prompting) == 1 else settings.probe_prompting
        probe_tasks = load_probe_tasks(
            args.probe_tasks,
            settings.num_samples,
            max_new_tokens,
            prompting=prompting,
            sampling=samplings[0] if len(samplings) == 1 else samplings,
        )
    model, tokenizer = load_checkpoint(args.model, dtype=settings.dtype)
    if args.method == "sleb" and settings.max_ratio is not None:
        max_k = layers_for_ratio(settings.max_ratio, len(decoder_layers(model)))
    if args.method == "iterative":
        num_layers = len(decoder_layers(model))
        max_k = layers_for_ratio(settings.max_ratio, num_layers)
        if not 1 <= max_k < num_layers:
            raise SystemExit(
                f"layerprune score: --max-ratio {settings.max_ratio} removes {max_k} of {num_layers} layers"
            )
    texts = [record["text"] for record in read_jsonl(args.calibration)] if args.calibration else None
    state_path = fingerprint = None
    if args.method == "iterative":
        from layerprune.io import content_fingerprint, sha256_file
        from layerprune.scoring.iterative import state_path_for

        # a resumed search must never mix probes of another model, probe set or setting
        state_path = state_path_for(args.out)
        fingerprint = {
            "model": content_fingerprint(args.model),
            "probe_task_files": {str(path): sha256_file(path) for path in args.probe_tasks},
            "settings": settings.to_dict(),
        }
    result = score_layers(
        args.method,
        model,
        tokenizer,
        texts,
        probe_tasks=probe_tasks,
        max_k=max_k,
        chunk_size=settings.chunk_size,
        average=settings.calibration_average,
        sleb_exclude_ends=settings.sleb_exclude_ends,
        selection={
            "criterion": settings.criterion,
            "tie_break": settings.tie_break,
            "keep_first_layer": settings.keep_first_layer,
            "probe_batch_size": settings.probe_batch_size,
        },
        max_length=settings.max_length,
        batch_size=settings.batch_size,
        seed=settings.seed,
        state_path=state_path,
        fingerprint=fingerprint,
    )
    # max_length means something only with calibration texts: recorded as null without them
    max_length = settings.max_length if texts is not None else None
    record = score_file_record(
        result,
        args.model,
        args.calibration,
        texts,
        max_length=max_length,
        batch_size=settings.batch_size,
        seed=settings.seed,
    )
    if SCORING_METHODS[args.method].stops_at_max_ratio:
        record["max_ratio"] = settings.max_ratio
    if args.method == "iterative":
        record["probe_task_files"] = args.probe_tasks
    write_json(args.out, record)


def cmd_prune(args: argparse.Namespace) -> None:
    from layerprune.pruning.prune import prune_checkpoint

    settings = settings_from_args(PruneSettings, args, "prune")
    _threads(args.threads)
    prune_checkpoint(args.model, args.scores, args.ratio, args.out, dtype=settings.dtype)


def cmd_selfgen(args: argparse.Namespace) -> None:
    from layerprune.data.selfgen import self_generate

    settings = settings_from_args(SelfgenSettings, args, "selfgen")
    _threads(args.threads)
    self_generate(args.model, args.prompts, args.out, stats_path=args.stats, **settings.to_dict())


def cmd_recover(args: argparse.Namespace) -> str:
    from layerprune.recovery.recover import recover_checkpoint

    distill = RECOVERIES[args.recovery].teacher
    if not distill:
        given = [
            f"--{name.replace('_', '-')}" for name in DistillSettings.own_fields() if hasattr(args, f"setting_{name}")
        ]
        if given:
            raise SystemExit(f"layerprune recover: {', '.join(given)} apply to {' and '.join(DISTILLATIONS)} only")
    settings = settings_from_args(DistillSettings if distill else RecoverySettings, args, "recover")
    _threads(args.threads)
    record = recover_checkpoint(args.model, args.dataset, args.out, args.recovery, settings, teacher_dir=args.teacher)
    return f"layerprune recover: wrote {args.out} ({record['global_steps']} steps)"


def cmd_evaluate(args: argparse.Namespace) -> None:
    from layerprune.evaluation.evaluate import evaluate_checkpoint

    settings = settings_from_args(EvaluationSettings, args, "evaluate")
    _threads(args.threads)
    variant = {"model": args.model_name, "method": args.method, "ratio": args.ratio, "recovery": args.recovery}
    evaluate_checkpoint(args.model, args.task_file, args.task_name, args.out, settings, variant=variant)


STUDY_VARIABLE = "LAYERPRUNE_STUDY"  # set by the workflow: the study whose run starts a job (its log's header)


def own_benchmark(benchmark: Path, study: str) -> bool:
    """benchmarks/<rule>/<study>/...: a job of the study's own (the shared ones lie elsewhere)."""
    parts = benchmark.parts
    index = len(parts) - 1 - parts[::-1].index("benchmarks") if "benchmarks" in parts else -1
    return 0 <= index and len(parts) > index + 3 and parts[index + 2] == study


def ran_by(benchmark: Path, study: str) -> bool:
    """Whether the job of a benchmark ran in `study`'s run: its log's header names the study."""
    from layerprune.usage import log_of_benchmark

    log = log_of_benchmark(benchmark)
    if not log.is_file():
        return False
    with log.open() as handle:
        head = [handle.readline() for _ in range(8)]
    return f"# study: {study}\n" in head


def cmd_aggregate(args: argparse.Namespace) -> None:
    from layerprune.report.aggregate import aggregate

    settings = settings_from_args(ReportSettings, args, "aggregate")
    # Snakemake writes one benchmark TSV per job under benchmarks/<rule>/: the "where the time went" table.
    # A folder stands for the TSVs under it; a path that is not there (a job that ran elsewhere) adds none.
    benchmarks = None
    if args.benchmarks is not None:
        benchmarks = sorted(
            {tsv for path in map(Path, args.benchmarks) for tsv in (path.rglob("*.tsv") if path.is_dir() else [path])}
        )
        benchmarks = [path for path in benchmarks if path.is_file()]
        if args.study:  # a shared job counts in the table of the study whose run made it, not of every user
            benchmarks = [path for path in benchmarks if own_benchmark(path, args.study) or ran_by(path, args.study)]
    aggregate(
        args.results,
        args.out_dir,
        score_paths=args.scores,
        benchmark_paths=benchmarks,
        recovered=args.recovered,
        **settings.to_dict(),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layerprune", description=__doc__.splitlines()[0])
    stages = parser.add_subparsers(dest="stage", required=True)

    def stage(
        name: str, func, help_text: str, settings: type | None = None, threads: bool = False
    ) -> argparse.ArgumentParser:
        """A subcommand; `settings`: its settings class, whose fields become flags (and --settings JSON)."""
        sub = stages.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(func=func, settings_class=settings)
        if threads:
            sub.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        if settings is not None:
            add_settings_arguments(sub, settings)
        return sub

    sub = stage("materialize", cmd_materialize, "Turn a model source into a plain local checkpoint.")
    sub.add_argument("--source", required=True, help='JSON, e.g. {"hub": "Qwen/Qwen2.5-7B-Instruct"}')
    sub.add_argument("--out", required=True, help="the checkpoint directory to write")
    sub.add_argument("--dtype", default="source", help="source (keep the source's own dtype), float32, bfloat16")

    sub = stage(
        "fetch-bigbench",
        cmd_fetch_bigbench,
        "Verify the bigbench 1.0.0 sdist (a local copy, the cache, or the index) and link it.",
        BigbenchSourceSettings,
    )
    sub.add_argument("--out", required=True, help="where the sdist is linked")

    sub = stage("build-task", cmd_build_task, "Build one of the project's own tasks (layerprune.data.builtin).")
    sub.add_argument("--name", required=True, help="the builtin task, e.g. country_capital (docs/data.md)")
    sub.add_argument("--out", required=True, help="the task.json to write (BIG-bench's format, with provenance)")

    sub = stage(
        "restore-mtimes",
        cmd_restore_mtimes,
        "After `dvc pull`: give every pulled output the modification time its Snakemake provenance record holds.",
    )
    sub.add_argument(
        "--metadata", default=".snakemake/metadata", help="Snakemake's provenance records (versioned by git)"
    )

    sub = stage(
        "dvc-stages",
        cmd_dvc_stages,
        "Write dvc.yaml from studies.yaml: a DVC stage per study, one for the files they share.",
    )
    sub.add_argument(
        "configs", nargs="*", metavar="CONFIG", help="the study config files studies.yaml lists (instead of its list)"
    )
    sub.add_argument("--add", nargs="+", default=[], metavar="CONFIG", help="study config files added to studies.yaml")

    sub = stage("extract-bigbench", cmd_extract_bigbench, "Extract one BIG-bench task's JSON from the sdist.")
    sub.add_argument("--sdist", required=True, help="the bigbench sdist (fetch-bigbench's output)")
    sub.add_argument("--task", required=True, help="the task, e.g. arithmetic/1_digit_addition")
    sub.add_argument("--out", required=True, help="the task.json to write")

    sub = stage("prepare-task", cmd_prepare_task, "Draw few-shot and evaluated samples of a task.")
    sub.add_argument("--spec", required=True, help="the task's config entry (tasks.<name>) as JSON")
    sub.add_argument(
        "--bigbench-dir",
        default="resources/bigbench",
        help="the extracted BIG-bench tasks (extract-bigbench's outputs)",
    )
    sub.add_argument("--builtin-dir", default=BUILTIN_DIR, help="the project's built tasks (build-task's outputs)")
    sub.add_argument(
        "--seed", type=int, required=True, help="seeds the draw of few-shot and evaluated samples (config `seed`)"
    )
    sub.add_argument(
        "--exclude-task-files",
        nargs="*",
        default=[],
        help="the prepared task JSONs of tasks.<task>.exclude_tasks, in its order: their samples are left out",
    )
    sub.add_argument("--out", required=True, help="the prepared task JSON to write")

    sub = stage("prepare-lm-eval-task", cmd_prepare_lm_eval_task, "Pin the settings of an lm-eval task run by name.")
    sub.add_argument("--lm-eval-task", required=True, help="lm-eval task or group name, e.g. mmlu, arc_challenge")
    sub.add_argument(
        "--num-fewshot", type=int, required=True, help="few-shot examples per prompt (tasks.<task>.num_fewshot)"
    )
    sub.add_argument("--limit", type=_optional_float, default=None, help="count, or fraction if < 1 (lm-eval)")
    sub.add_argument(
        "--metric",
        default="acc",
        choices=["acc", "acc_norm"],
        help="lm-eval's per-sample metric reported as the value (tasks.<task>.lm_eval_metric)",
    )
    sub.add_argument("--include-path", type=_optional_str, default=None, help="folder of extra lm-eval task YAMLs")
    sub.add_argument("--seed", type=int, required=True, help="seeds lm-eval's few-shot draw (config `seed`)")
    sub.add_argument("--out", required=True, help="the prepared task JSON to write")

    sub = stage(
        "fetch-lm-eval-data",
        cmd_fetch_lm_eval_data,
        "Download the data of the lm-eval tasks named in task files into the Hugging Face cache (offline nodes).",
    )
    sub.add_argument(
        "task_files", nargs="+", help="task JSONs (results/shared/tasks/<fingerprint>/<task>.json); others are skipped"
    )

    sub = stage(
        "prepare-prompts", cmd_prepare_prompts, "Build the prompt set (with reference answers).", PromptSetSettings
    )
    sub.add_argument("--bigbench-dir", default=None, help="the extracted BIG-bench tasks (source bigbench)")
    sub.add_argument("--builtin-dir", default=BUILTIN_DIR, help="the project's built tasks (build-task's outputs)")
    sub.add_argument("--out", required=True, help="the prompt-set JSONL to write")

    sub = stage(
        "filter-prompts",
        cmd_filter_prompts,
        "Drop prompts over a token limit of a model's tokenizer.",
        PromptFilterSettings,
    )
    sub.add_argument("--prompts", required=True, help="the prompt-set JSONL to filter")
    sub.add_argument("--model", required=True, help="checkpoint whose tokenizer and chat template count")
    sub.add_argument("--out", required=True, help="the filtered prompt-set JSONL to write")
    sub.add_argument("--stats", required=True, help="the counts JSON to write (kept, dropped, token lengths)")

    sub = stage(
        "magpie-prompts",
        cmd_magpie_prompts,
        "Let the dense model write the user turns (Magpie).",
        MagpieSettings,
        threads=True,
    )
    sub.add_argument("--model", required=True, help="the dense checkpoint that writes the questions")
    sub.add_argument("--out", required=True, help="the prompt-set JSONL to write")
    sub.add_argument("--stats", required=True, help="the counts JSON to write")

    sub = stage("prepare-calibration", cmd_prepare_calibration, "Build the calibration texts.", CalibrationSettings)
    sub.add_argument("--bigbench-dir", default=None, help="the extracted BIG-bench tasks (source bigbench)")
    sub.add_argument("--builtin-dir", default=BUILTIN_DIR, help="the project's built tasks (build-task's outputs)")
    sub.add_argument("--out", required=True, help="the calibration JSONL to write")

    sub = stage(
        "prepare-heal", cmd_prepare_heal, "Build the plain texts of the `heal` recovery (LM loss).", HealSettings
    )
    sub.add_argument(
        "--bigbench-dir", default="resources/bigbench", help="the extracted BIG-bench tasks (source bigbench_tasks)"
    )
    sub.add_argument("--builtin-dir", default=BUILTIN_DIR, help="the project's built tasks (build-task's outputs)")
    sub.add_argument("--out", required=True, help="the heal-text JSONL to write")

    sub = stage("score", cmd_score, "Score the decoder layers of a checkpoint.", ScoreSettings, threads=True)
    sub.add_argument("--model", required=True, help="the checkpoint directory to score")
    sub.add_argument("--method", required=True, help=f"one of {', '.join(SCORING_METHODS)}")
    sub.add_argument("--calibration", default=None, help="JSONL with a 'text' field")
    sub.add_argument("--probe-tasks", nargs="+", default=None, help="iterative: prepared task JSON files")
    sub.add_argument("--out", required=True, help="the scores JSON to write")

    sub = stage(
        "prune", cmd_prune, "Remove layers at a ratio and save a plain checkpoint.", PruneSettings, threads=True
    )
    sub.add_argument("--model", required=True, help="the dense checkpoint directory")
    sub.add_argument("--scores", required=True, help="the scores JSON (score's output)")
    sub.add_argument(
        "--ratio", type=float, required=True, help="share of the decoder layers to remove (k = round(ratio x layers))"
    )
    sub.add_argument("--out", required=True, help="the pruned checkpoint directory to write")

    sub = stage(
        "selfgen",
        cmd_selfgen,
        "Generate the dense model's responses to the prompt set.",
        SelfgenSettings,
        threads=True,
    )
    sub.add_argument("--model", required=True, help="the dense checkpoint that answers")
    sub.add_argument("--prompts", required=True, help="the prompt-set JSONL")
    sub.add_argument("--out", required=True, help="the prompt-response JSONL to write")
    sub.add_argument("--stats", default=None, help="stats JSON (default: <out stem>.stats.json)")

    sub = stage(
        "recover",
        cmd_recover,
        "SFT or distillation (LoRA, QLoRA or full) of a pruned checkpoint (TRL), merged.",
        DistillSettings,
        threads=True,
    )
    sub.add_argument("--model", required=True, help="the pruned checkpoint directory")
    sub.add_argument(
        "--dataset",
        required=True,
        help="what the recovery trains on, a JSONL: "
        + "; ".join(f"{name}: {TRAINING_DATA[RECOVERIES[name].data]}" for name in TRAINED),
    )
    sub.add_argument("--out", required=True, help="the recovered (merged) checkpoint directory to write")
    sub.add_argument(
        "--recovery",
        required=True,
        choices=TRAINED,
        help="; ".join(f"{name} = {RECOVERIES[name].label}" for name in TRAINED),
    )
    sub.add_argument(
        "--teacher",
        default=None,
        help=f"{', '.join(DISTILLATIONS)} (and only they): the dense checkpoint the student learns from",
    )

    sub = stage(
        "evaluate", cmd_evaluate, "Evaluate a checkpoint on one prepared task.", EvaluationSettings, threads=True
    )
    sub.add_argument("--model", required=True, help="checkpoint directory")
    sub.add_argument("--task-file", required=True, help="the prepared task JSON (prepare-task's output)")
    sub.add_argument(
        "--task-name",
        required=True,
        help="the task's name in the config (with --config: whose tasks.<name> settings apply)",
    )
    sub.add_argument("--out", required=True, help="the result JSON to write")
    sub.add_argument("--model-name", required=True, help="the model's name in the config")
    sub.add_argument(
        "--method", default="dense", help="recorded in the result: the scoring method (dense for the dense model)"
    )
    sub.add_argument(
        "--ratio", type=float, default=0.0, help="recorded in the result: the pruning ratio (0 for the dense model)"
    )
    sub.add_argument(
        "--recovery",
        default="none",
        choices=list(RECOVERIES),
        help=f"recorded in the result: the recovery ({', '.join(RECOVERIES)})",
    )

    sub = stage("aggregate", cmd_aggregate, "Tidy table, report and plots from evaluation JSONs.", ReportSettings)
    sub.add_argument("--results", nargs="+", required=True, help="the result JSONs (evaluate's outputs)")
    sub.add_argument("--scores", nargs="*", default=[], help="scores JSONs, to compare the methods")
    sub.add_argument(
        "--study",
        default=None,
        help="the study: the time table counts a benchmark outside benchmarks/<rule>/<study>/ (a shared job's) "
        "only when its log says this study's run made it",
    )
    sub.add_argument(
        "--recovered", nargs="*", default=[], help="recovered checkpoint folders, for the recovery loss curves"
    )
    sub.add_argument(
        "--out-dir",
        required=True,
        help="the folder for everything the report writes (the workflow's: results/<study>/report)",
    )
    sub.add_argument(
        "--benchmarks",
        nargs="*",
        default=None,
        help="Snakemake benchmark TSVs or folders of them (benchmarks/<rule>/...): a time table; missing ones skipped",
    )
    return parser


VERSIONED = ("layerprune", "torch", "transformers", "trl", "peft", "lm_eval", "datasets", "accelerate")


def versions() -> str:
    """The versions a job's result depends on, from the installed metadata (no import: milliseconds)."""
    found = [f"python {sys.version.split()[0]}"]
    for name in VERSIONED:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


# The stages whose work runs on a GPU when there is one; the rest (prune and materialize among them) run on
# the CPU whatever the job was given.
GPU_STAGES = ("score", "selfgen", "recover", "evaluate", "magpie-prompts")


def header(args: argparse.Namespace, argv: list[str]) -> str:
    """The first lines of a job's log: the command, the settings it runs with, the versions, and for a
    GPU stage the device and dtype it runs with."""
    lines = ["# command: " + shlex.join(["layerprune", *argv])]
    if args.resolved_settings is not None:
        lines.append("# settings: " + json.dumps(args.resolved_settings.to_dict(), sort_keys=True))
    lines.append("# versions: " + versions())
    if args.stage in GPU_STAGES:
        from layerprune.models.checkpoints import device_summary

        lines.append("# device: " + device_summary(getattr(args.resolved_settings, "dtype", "auto")))
    if os.environ.get(STUDY_VARIABLE):
        lines.append(f"# study: {os.environ[STUDY_VARIABLE]}")
    return "\n".join(lines)


def summary(args: argparse.Namespace) -> str:
    """What the stage did, in a line: the metric of an evaluation, else the output it wrote."""
    out = getattr(args, "out", None) or getattr(args, "out_dir", None)
    if args.stage == "evaluate" and out and Path(out).is_file():
        result = json.loads(Path(out).read_text())
        value = result.get("value")
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else value
        what = f"{result.get('task')} {result.get('metric')} = {shown} (n = {result.get('n')})"
        return f"layerprune evaluate: {what} -> {out}"
    return f"layerprune {args.stage}: wrote {out}"


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # resolved once, before any work: the log's header shows exactly what the job runs with
    args.resolved_settings = (
        settings_from_args(args.settings_class, args, args.stage) if args.settings_class is not None else None
    )
    print(header(args, argv), file=sys.stderr, flush=True)
    if args.stage in GPU_STAGES:
        # before anything heavy: a job given a GPU that torch cannot use stops here, with the cause
        from layerprune.models.checkpoints import check_gpu_usable

        try:
            check_gpu_usable()
        except RuntimeError as error:
            print(f"layerprune {args.stage}: {error}", file=sys.stderr, flush=True)
            return 3
    try:
        said = args.func(args)  # a stage that writes no `--out` says what it did
        if os.environ.get("RANK", "0") == "0":  # under torchrun/accelerate, the first process speaks for all
            print(said or summary(args), flush=True)
    except SourceUnavailable as error:
        # one line, no traceback: the default profile shows the failed job's log on the console
        print(f"layerprune {args.stage}: source unavailable: {error}", file=sys.stderr, flush=True)
        return 3
    finally:
        # the job's exact CPU time and peak memory, as the last line of its log (layerprune.usage)
        from layerprune.usage import usage_line

        print(usage_line(started), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
