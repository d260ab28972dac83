import hashlib
import itertools
import json
import os
import re
import sys
from pathlib import Path

from layerprune.config.checks import (
    RATIO_WILDCARD,
    ConfigError,
    ratio_wildcards,
)
from layerprune.io import looks_local
from layerprune.config.launch import cluster_cores_problem, rule_command_prefix, rule_settings, slurm_resources
from layerprune.mtimes import restore_placed_mtimes
from layerprune.registry import (
    DATASETS,
    RECOVERIES,
    RECOVERY_RULES,
    SCORING_METHODS,
    methods_where,
    recoveries_run_by,
)
from layerprune.config.validation import validate_study
from layerprune.data.builtin import BUILTIN_DIR, BUILTIN_TASKS, provenance as builtin_provenance
from layerprune.config.settings import (
    BigbenchSourceSettings,
    CalibrationSettings,
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
    distill_settings_json,
    replicate_suffix,
    settings_from_config,
    settings_json,
    training_seeds,
)

from snakemake.exceptions import WorkflowError

# ---------------------------------------------------------------- where files go (the only place)
# Each study writes under results/<study>/ (its logs and benchmarks under logs/<rule>/<study>/,
# benchmarks/<rule>/<study>/), so studies live side by side in one checkout. What studies can
# share (dense checkpoints, prepared tasks, prompt sets, calibration and heal text) lies under
# results/shared/<kind>/<fingerprint>/: the fingerprint is a hash of every setting the file is
# made from, so equal settings are computed once and different ones never collide.
SHARED = "shared"
STUDY_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


def study_name():
    """config `study`, else the name of the study's config file (`--configfile configs/paper.yaml`:
    paper), else `default` (the embedded config.yaml)."""
    if config.get("study"):
        return config["study"]
    if not workflow.overwrite_configfiles:
        return "default"
    name = Path(workflow.overwrite_configfiles[-1]).stem
    if name == SHARED or not re.fullmatch(STUDY_PATTERN, name):
        raise ValueError(
            f"{workflow.overwrite_configfiles[-1]}: `study` is not set and the file's name {name!r} cannot name "
            f"the study's folder results/<study>; set `study:` (letters, digits, _ . -; not {SHARED!r})"
        )
    return name


STUDY = study_name()
# Every job this run starts names the study in its log's header (layerprune.cli.header), so that a study's
# time table counts the shared jobs its own run made, not those another study's run made.
os.environ.update(LAYERPRUNE_STUDY=STUDY)  # set for the jobs, not read: no `envvars:` to assert


def study_path(path):
    """A file of this study: results/<study>/<path>."""
    return f"results/{STUDY}/{path}"


def study_log(rule_name, path):
    return f"logs/{rule_name}/{STUDY}/{path}.log"


def study_benchmark(rule_name, path):
    return f"benchmarks/{rule_name}/{STUDY}/{path}.tsv"


def shared_path(path):
    """A file any study may use: results/shared/<path> (its path holds the fingerprint of its settings)."""
    return f"results/{SHARED}/{path}"


def fingerprint(*settings):
    """12 hex digits of a hash of the settings a shared file is made from."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def model_source_json(model):
    return json.dumps(config["models"][model]["source"], sort_keys=True)


def dense_checkpoint(model):
    """The materialized model: one checkpoint per source, whichever study names it."""
    return shared_path(f"models/{fingerprint(model_source_json(model))}/{model}")


# The study as a whole (layerprune.config.validation): its defaults filled in from the schema, whose
# settings come from layerprune.config.settings; then every problem at once, each as `file:line: key: ...`
# of the config file that sets the key (a key given twice too: YAML would keep the last one).
# The models are checked from what is on disk: a checkpoint, an architecture the surgery supports, a
# depth every ratio can prune. Not again in each cluster job (it re-reads this file): the plan was checked.
try:
    for note in validate_study(
        config,
        workflow.overwrite_configfiles or workflow.configfiles,
        overrides=workflow.config_settings.config,
        on_this_machine=not workflow.remote_exec,
        dense_checkpoint=dense_checkpoint,
    ):
        print(note, file=sys.stderr)
except ConfigError as error:
    sys.exit(str(error))

# DVC keeps contents, not modification times: the outputs that `dvc repro`, `dvc pull` or `dvc checkout`
# linked from its cache get their recorded times back before anything is planned (layerprune.mtimes), so
# no manual step follows a DVC command. Not in a cluster job (the submitting run did it);
# LAYERPRUNE_KEEP_MTIMES=1 leaves the times as they are (tests/test_dvc.py measures what that plans).
if not workflow.remote_exec and not os.environ.get("LAYERPRUNE_KEEP_MTIMES"):
    restore_placed_mtimes()

SEED = config["seed"]
MODELS = list(config["models"])
METHODS = config["scoring"]["methods"]
RATIOS = ratio_wildcards(config["pruning"]["ratios"])  # each matches RATIO_WILDCARD, one per ratio
MAX_RATIO = float(f"{max(config['pruning']['ratios']):g}")  # where greedy scoring stops
RECOVERIES_RUN = config["recovery"]["methods"]
# recovery.seeds: each trained recovery is replicated per training seed; the study's own seed keeps the
# plain folder name (so a one-seed study's paths are as they always were), another seed s adds `-seed<s>`.
TRAINING_SEEDS = training_seeds(config)
REPLICATES = [replicate_suffix(seed, SEED) for seed in TRAINING_SEEDS]
REPLICATE_PATTERN = "(?:" + "|".join(re.escape(replicate) for replicate in REPLICATES) + ")"  # the recover rules'
TASKS = list(config["tasks"])
# Tasks evaluated on every variant; probe-only tasks (evaluate: false) are prepared for iterative scoring only.
EVALUATED_TASKS = [task for task in TASKS if config["tasks"][task]["evaluate"]]
# Tasks lm-eval runs by name (MMLU, ARC, ...): a settings file, no BIG-bench download.
LM_EVAL_TASKS = [task for task, settings in config["tasks"].items() if settings.get("lm_eval_task")]
LM_EVAL_TASK_PATTERN = "|".join(LM_EVAL_TASKS) or "(?!)"
PROBE_TASKS = config["scoring"]["iterative"]["probe_tasks"] or TASKS
PROMPTS = config["prompts"]


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9_.-]*",
    method="|".join(SCORING_METHODS),
    ratio=RATIO_WILDCARD,
    recovery="|".join(RECOVERIES),
    replicate="(-seed[0-9]+)?",
    task="[A-Za-z0-9][A-Za-z0-9_-]*",
    fp="[0-9a-f]{12}",


# Each rule's `settings` param: the JSON of exactly the settings its job uses
# (layerprune.config.settings), shell-quoted into the command as `--settings {params.settings:q}`.
# Snakemake's params trigger then re-runs exactly the jobs a changed setting reaches.
BIGBENCH_SOURCE_SETTINGS = settings_json(BigbenchSourceSettings, config)
PROMPT_SET_SETTINGS = settings_json(PromptSetSettings, config)
PROMPT_FILTER_SETTINGS = settings_json(PromptFilterSettings, config)
CALIBRATION_SETTINGS = settings_json(CalibrationSettings, config)
HEAL_SETTINGS = settings_json(HealSettings, config)
PRUNE_SETTINGS = settings_json(PruneSettings, config)
SELFGEN_SETTINGS = settings_json(SelfgenSettings, config)
MAGPIE_SETTINGS = settings_json(MagpieSettings, config)
REPORT_SETTINGS = settings_json(
    ReportSettings,
    config,
    task_chance={task: spec["chance"] for task, spec in config["tasks"].items() if spec.get("chance") is not None},
)


# Scoring, pruning and recovery lead to every variant's evaluations: run them before the
# evaluations that are ready (the dense baselines, the pruned checkpoints), which then fill
# the other cores, instead of leaving scoring to run alone after them.
CRITICAL_PATH_PRIORITY = 10


def score_settings(wildcards):
    return score_settings_json(wildcards.method)


def score_settings_json(method):
    if method == "iterative":
        return iterative_settings(None)
    return settings_json(ScoreSettings, config, method=method, max_ratio=MAX_RATIO)


def iterative_settings(wildcards):
    """Each probe is generated with its task's own evaluation settings (prompting, sampling)."""
    probes = [settings_from_config(EvaluationSettings, config, task=task) for task in PROBE_TASKS]
    return settings_json(
        ScoreSettings,
        config,
        method="iterative",
        max_ratio=MAX_RATIO,
        probe_max_new_tokens=[probe.max_new_tokens for probe in probes],
        probe_prompting=[probe.prompting for probe in probes],
        # a probe takes one sample per prompt (the paper's); its temperature, top_k, top_p are the task's
        probe_sampling=[{k: v for k, v in probe.sampling_dict().items() if k != "num_samples"} for probe in probes],
    )


def replicate_seed(replicate):
    """The training seed of a `{replicate}` wildcard: the study's seed for the plain folder."""
    return int(replicate.removeprefix("-seed")) if replicate else SEED


def recovery_settings(wildcards):
    """A recover job's settings, its replicate's training seed as `seed` (the plain folder: the study's settings)."""
    return settings_json(RecoverySettings, {**config, "seed": replicate_seed(wildcards.replicate)})


def kd_settings(wildcards):
    return distill_settings_json({**config, "seed": replicate_seed(wildcards.replicate)}, wildcards.recovery)


def evaluation_settings(wildcards):
    return settings_json(EvaluationSettings, config, task=wildcards.task)


def job_resources(rule_name):
    """Cluster resources for a rule: config resources.<rule> over resources.default."""
    return slurm_resources(config["resources"], rule_name)


def job_threads(rule_name):
    return rule_settings(config["resources"], rule_name)["threads"]


# Before any job is submitted (onstart runs once the executor is known; not in dry runs): a
# cluster job must run the threads SLURM allocates to it (layerprune.config.launch.cluster_cores_problem).
onstart:
    if workflow.non_local_exec and not workflow.remote_exec:
        problem = cluster_cores_problem(
            workflow.resource_settings.cores,
            {
                job.rule.name: job.rule.resources["_cores"].value  # the rule's threads, before the cap
                for job in workflow.dag.needrun_jobs()
                if not workflow.is_local(job.rule) and isinstance(job.rule.resources["_cores"].value, int)
            },
        )
        if problem:
            raise WorkflowError(problem)


# External sources first: a refused download shows before any long job starts.
FETCH_PRIORITY = 100


def bigbench_file(task):
    return f"resources/bigbench/{task}/task.json"


# The project's own tasks (layerprune.data.builtin: BUILTIN_DIR, under results/shared/, so DVC versions them
# with what they feed; the commands read them there).
BUILTIN_TASK_PATTERN = "|".join(re.escape(name) for name in BUILTIN_TASKS)


def builtin_file(name):
    return f"{BUILTIN_DIR}/{name}/task.json"


def builtin_provenance_json(name):
    return json.dumps(builtin_provenance(name), sort_keys=True)


def task_json_files(kind, names):
    """The task JSON files of BIG-bench or builtin tasks (`kind`: bigbench | builtin)."""
    file = bigbench_file if kind == "bigbench" else builtin_file
    return [file(name) for name in names or []]


def calibration_inputs():
    """What the calibration text is drawn from: task JSON files, or a local file (a hub id has none)."""
    calibration = config["scoring"]["calibration"]
    if calibration["source"] in ("bigbench", "builtin"):
        return task_json_files(calibration["source"], calibration[f"{calibration['source']}_tasks"])
    return [calibration["path"]] if looks_local(calibration["path"]) else []


def prompt_source_inputs():
    """Files the prompt set is drawn from: task JSON files, or a local dataset path (a hub id has none)."""
    if PROMPTS["source"] in ("bigbench", "builtin"):  # none when no recovery trains on the prompt set
        return task_json_files(PROMPTS["source"], PROMPTS[f"{PROMPTS['source']}_tasks"])
    if PROMPTS["source"] in ("hub", "jsonl") and os.path.exists(PROMPTS["path"]):
        return [PROMPTS["path"]]
    return []


def model_prompt_set(model):
    """The prompt set of one model, after its token-length filter (or Magpie's questions)."""
    if PROMPTS["source"] == "magpie":  # the dense model's own questions
        return study_path(f"data/prompts/{model}.jsonl")
    # the shared prompt set cut to the model's token limit: shared by every study that draws and cuts it alike
    made_from = fingerprint(model_source_json(model), PROMPT_SET_SETTINGS, PROMPT_FILTER_SETTINGS)
    return shared_path(f"filtered/{made_from}/{model}.jsonl")


def prompt_set_file():
    """The drawn prompt set (before each model's token filter), shared by studies that draw it alike."""
    return shared_path(f"prompts/{fingerprint(PROMPT_SET_SETTINGS)}.jsonl")


def calibration_file():
    return shared_path(f"calibration/{fingerprint(CALIBRATION_SETTINGS)}.jsonl")


def heal_file():
    return shared_path(f"heal/{fingerprint(HEAL_SETTINGS)}.jsonl")


def task_inputs(wildcards):
    """What preparing a task reads: its BIG-bench task(s) (gem/xsum for offline XSum) and local files."""
    spec = config["tasks"][wildcards.task]
    if spec.get("lm_eval_task"):
        return []  # prepared by prepare_lm_eval_task, from lm-eval's own task config
    files = [spec[key] for key in ("file", "fewshot_file") if spec.get(key)]
    if spec["dataset"] in ("bigbench", "builtin"):
        tasks = spec[f"{spec['dataset']}_task"]
        files += task_json_files(spec["dataset"], [tasks] if isinstance(tasks, str) else tasks)
    elif spec["dataset"] == "xsum" and not spec.get("hub") and not spec.get("file"):
        files.append(bigbench_file("gem/xsum"))
    return files


def heal_inputs():
    """The files the heal text is drawn from: task JSONs or a local file (none for the hub)."""
    source = config["recovery"]["heal"]["source"]
    for kind in ("bigbench", "builtin"):
        if f"{kind}_tasks" in source:
            return task_json_files(kind, source[f"{kind}_tasks"])
    return [source["path"]] if "path" in source else []


def selfgen_file(model):
    return study_path(f"selfgen/{model}.jsonl")


# Scores, pruned checkpoints, the dense and the unrecovered evaluations depend on no recovery setting: they
# lie under results/shared/, each keyed by a fingerprint of everything it is made from (the model's source,
# the settings, the fingerprints of its inputs), so a study that shares them with another (one that varies
# only a recovery or selfgen setting) runs none of them again, and a study whose settings differ gets its own.
CALIBRATED = methods_where("calibrated")


def score_fingerprint(model, method):
    made_from = [model_source_json(model), score_settings_json(method)]
    if method in CALIBRATED:
        made_from.append(CALIBRATION_SETTINGS)
    if method == "iterative":
        made_from.append([task_fingerprint(task) for task in PROBE_TASKS])
    return fingerprint(*made_from)


def score_file(model, method):
    return shared_path(f"scores/{score_fingerprint(model, method)}/{model}/{method}.json")


def prune_fingerprint(model, method):
    return fingerprint(score_fingerprint(model, method), PRUNE_SETTINGS)


def pruned_checkpoint(model, method, ratio):
    return shared_path(f"pruned/{prune_fingerprint(model, method)}/{model}/{method}/{ratio}")


def shared_log(rule_name, path):
    return f"logs/{rule_name}/{SHARED}/{path}.log"


def shared_benchmark(rule_name, path):
    return f"benchmarks/{rule_name}/{SHARED}/{path}.tsv"


def recovered_checkpoint(model, method, ratio, recovery, replicate=""):
    """replicate: "" (the study's seed) or `-seed<s>` (recovery.seeds)."""
    return study_path(f"recovered/{model}/{method}/{ratio}/{recovery}{replicate}")


def eval_file(model, variant, task):
    """variant: `dense` or method/ratio/recovery (recovery + `-seed<s>` for another training seed). The dense
    and the unrecovered (`none`) evaluations are shared by every study that makes them alike."""
    settings = settings_json(EvaluationSettings, config, task=task)
    if variant == "dense":
        fp = fingerprint(model_source_json(model), task_fingerprint(task), settings)
        return shared_path(f"eval/{fp}/{model}/dense/{task}.json")
    method, ratio, recovery = variant.split("/")
    if recovery == "none":
        fp = fingerprint(prune_fingerprint(model, method), task_fingerprint(task), settings)
        return shared_path(f"eval/{fp}/{model}/{variant}/{task}.json")
    return study_path(f"eval/{model}/{variant}/{task}.json")


REPORT_DIR = study_path("report")
# The rules whose jobs' benchmarks this study's report times (each under benchmarks/<rule>/<study>/).
STUDY_BENCHMARKED_RULES = (
    "score",
    "score_iterative",
    "prune",
    "magpie_prompts",
    "selfgen",
    *RECOVERY_RULES,  # every rule that trains a recovery (layerprune.registry.RECOVERIES)
    "evaluate_dense",
    "evaluate_variant",
)


def study_benchmark_sources():
    """The benchmark folders of this study's jobs and the benchmark files of the shared jobs it uses (aggregate
    counts these only where this study's run made them: layerprune.cli.ran_by)."""
    folders = [f"benchmarks/{rule_name}/{STUDY}" for rule_name in STUDY_BENCHMARKED_RULES]
    models = [f"benchmarks/materialize/{fingerprint(model_source_json(model))}/{model}.tsv" for model in MODELS]
    # sorted: a params list must not depend on the order the config declares its tasks in (a study re-written with
    # sorted keys would otherwise re-run aggregate)
    return folders + models + sorted(set(shared_benchmarks()))


def shared_benchmarks():
    """The benchmark files of the shared scoring, pruning and evaluation jobs this study uses."""
    files = []
    for model, method in itertools.product(MODELS, METHODS):
        rule_name, name = ("score_iterative", model) if method == "iterative" else ("score", f"{model}/{method}")
        files.append(shared_benchmark(rule_name, f"{score_fingerprint(model, method)}/{name}"))
        files += [
            shared_benchmark("prune", f"{prune_fingerprint(model, method)}/{model}/{method}/{ratio}")
            for ratio in RATIOS
        ]
    for path in all_evaluations():
        if path.startswith(shared_path("eval/")):
            fp, model, *variant, task = path.removeprefix(shared_path("eval/")).removesuffix(".json").split("/")
            rule_name = "evaluate_dense" if variant == ["dense"] else "evaluate_pruned"
            name = os.path.join(fp, model, *([] if variant == ["dense"] else variant[:2]), task)
            files.append(shared_benchmark(rule_name, name))
    return files


# Where each kind of training data (layerprune.registry.TRAINING_DATA) lies for one model.
TRAINING_DATA_FILES = {
    "reference": model_prompt_set,
    "selfgen": selfgen_file,
    "text": lambda model: heal_file(),
}


def recovery_dataset(wildcards):
    """The file a recovery trains on: its declared training data (layerprune.registry.RECOVERIES)."""
    return TRAINING_DATA_FILES[RECOVERIES[wildcards.recovery].data](wildcards.model)


def recovery_teacher(wildcards):
    """The dense checkpoint, for a recovery that learns from it (none otherwise)."""
    return dense_checkpoint(wildcards.model) if RECOVERIES[wildcards.recovery].teacher else []


def recovery_pattern(rule_name):
    """The `recovery` wildcard of a training rule (recover, recover_kd), from the recoveries declared to run in it."""
    return "|".join(recoveries_run_by(rule_name))


def variant_checkpoint(wildcards):
    """recovery `none` evaluates the pruned checkpoint itself (it trains nothing, so it has no seed replicates)."""
    if not RECOVERIES[wildcards.recovery].trains:
        if wildcards.replicate:
            raise ValueError(f"recovery none trains nothing: no {wildcards.replicate} replicate")
        return pruned_checkpoint(wildcards.model, wildcards.method, wildcards.ratio)
    return recovered_checkpoint(
        wildcards.model, wildcards.method, wildcards.ratio, wildcards.recovery, wildcards.replicate
    )


def recovery_replicates(recovery):
    """The folder suffixes of a recovery's training seeds: none for `none`, which trains nothing."""
    return REPLICATES if RECOVERIES[recovery].trains else [""]


TASK_USE_KEYS = ("evaluate", "chance", "recoveries")


def task_spec_json(task):
    """A task's config entry for prepare_task, without the keys that decide how the task is used, not what it holds."""
    spec = {key: value for key, value in config["tasks"][task].items() if key not in TASK_USE_KEYS}
    return json.dumps(spec, sort_keys=True)


def lm_eval_task_json(task):
    """What prepare_lm_eval_task makes a task from (its params, as one JSON)."""
    spec = config["tasks"][task]
    keys = ("lm_eval_task", "num_fewshot", "limit", "lm_eval_metric", "lm_eval_include_path")
    return json.dumps({**{key: spec.get(key) for key in keys}, "seed": SEED}, sort_keys=True)


def task_fingerprint(task, seen=()):
    """The hash of everything a prepared task is made from: its entry, the seed and the tasks it excludes."""
    if task in seen:
        raise ValueError(f"tasks.{task}.exclude_tasks: a cycle ({' -> '.join([*seen, task])})")
    if task in LM_EVAL_TASKS:
        return fingerprint(lm_eval_task_json(task))
    excluded = [task_fingerprint(name, (*seen, task)) for name in config["tasks"][task]["exclude_tasks"]]
    return fingerprint(task_spec_json(task), SEED, excluded)


def task_file(task):
    """A prepared task, named after the task (iterative probes take their name from the file)."""
    return shared_path(f"tasks/{task_fingerprint(task)}/{task}.json")


def excluded_task_files(wildcards):
    """The prepared tasks whose rows a task leaves out (tasks.<task>.exclude_tasks)."""
    return [task_file(name) for name in config["tasks"][wildcards.task]["exclude_tasks"]]


def task_recoveries(task):
    """The recoveries whose variants evaluate a task (tasks.<task>.recoveries; all by default)."""
    chosen = config["tasks"][task]["recoveries"]
    return RECOVERIES_RUN if chosen is None else [r for r in RECOVERIES_RUN if r in chosen]


def all_evaluations():
    dense = [eval_file(model, "dense", task) for model, task in itertools.product(MODELS, EVALUATED_TASKS)]
    variants = [
        eval_file(model, f"{method}/{ratio}/{recovery}{replicate}", task)
        for model, method, ratio, recovery, task in itertools.product(
            MODELS, METHODS, RATIOS, RECOVERIES_RUN, EVALUATED_TASKS
        )
        if recovery in task_recoveries(task)
        for replicate in recovery_replicates(recovery)
    ]
    return dense + variants


# Evaluated tasks whose programs are run (grader code): only they have error buckets to draw.
CODE_TASKS = [
    task
    for task in EVALUATED_TASKS
    if (config["tasks"][task].get("grader") or DATASETS[config["tasks"][task]["dataset"]][1]) == "code"
]


def all_recovered():
    """The recovered checkpoint folders (recovery other than none): their loss curves go into the report."""
    return [
        recovered_checkpoint(model, method, ratio, recovery, replicate)
        for model, method, ratio, recovery in itertools.product(MODELS, METHODS, RATIOS, RECOVERIES_RUN)
        if RECOVERIES[recovery].trains
        for replicate in REPLICATES
    ]
