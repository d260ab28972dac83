import itertools
import json
import os
import sys

from layerprune.checks import (
    RATIO_WILDCARD,
    check_config,
    check_config_files,
    check_models,
    ratio_wildcards,
)
from layerprune.launch import rule_command_prefix, slurm_resources
from layerprune.registry import DISTILLATIONS, RECOVERIES, SCORING_METHODS, methods_where
from layerprune.settings import (
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
    settings_from_config,
    settings_json,
)

from snakemake.utils import validate

# The config files as written: a key given twice is an error (YAML keeps the last one silently).
check_config_files(workflow.overwrite_configfiles or workflow.configfiles)
validate(config, "../schemas/config.schema.yaml", set_default=True)
check_config(config)  # what the schema cannot express (layerprune.checks)

SEED = config["seed"]
MODELS = list(config["models"])
METHODS = config["scoring"]["methods"]
RATIOS = ratio_wildcards(config["pruning"]["ratios"])  # each matches RATIO_WILDCARD, one per ratio
# The models on disk: a checkpoint, an architecture the surgery supports, a depth every ratio
# can prune. Not again in each cluster job (it re-reads this file): the plan was checked.
if not workflow.remote_exec:
    for note in check_models(config, RATIOS):
        print(note, file=sys.stderr)
MAX_RATIO = float(f"{max(config['pruning']['ratios']):g}")  # where greedy scoring stops
RECOVERIES_RUN = config["recovery"]["methods"]
TASKS = list(config["tasks"])
# Tasks evaluated on every variant; probe-only tasks (evaluate: false) are prepared for iterative scoring only.
EVALUATED_TASKS = [task for task in TASKS if config["tasks"][task]["evaluate"]]
# Tasks lm-eval runs by name (MMLU, ARC, ...): a settings file, no BIG-bench download.
LM_EVAL_TASKS = [task for task, settings in config["tasks"].items() if settings.get("lm_eval_task")]
LM_EVAL_TASK_PATTERN = "|".join(LM_EVAL_TASKS) or "(?!)"
PROBE_TASKS = config["scoring"]["iterative"]["probe_tasks"] or TASKS
_unknown_probes = [task for task in PROBE_TASKS if task not in config["tasks"]]
_lm_eval_probes = [task for task in PROBE_TASKS if task in LM_EVAL_TASKS]
if "iterative" in METHODS and _lm_eval_probes:
    raise ValueError(
        f"scoring.iterative.probe_tasks: {', '.join(map(repr, _lm_eval_probes))} run through lm-eval by name and "
        "have no prepared samples to probe with; name BIG-bench or dataset tasks (set probe_tasks explicitly)"
    )
if _unknown_probes:
    raise ValueError(
        f"scoring.iterative.probe_tasks: {', '.join(map(repr, _unknown_probes))} is not a task in config "
        f"`tasks` (tasks: {', '.join(TASKS)})"
    )

PROMPTS = config["prompts"]
if PROMPTS["source"] == "bigbench" and not PROMPTS.get("bigbench_tasks"):
    raise ValueError("prompts.source is bigbench but prompts.bigbench_tasks is missing or empty")
if PROMPTS["source"] in ("hub", "jsonl") and not PROMPTS["path"]:
    raise ValueError(f"prompts.source is {PROMPTS['source']} but prompts.path is not set")
if "data" in RECOVERIES_RUN and (
    PROMPTS["source"] == "magpie" or (PROMPTS["source"] in ("hub", "jsonl") and PROMPTS["response_field"] is None)
):
    raise ValueError(
        "recovery.methods has `data`, which trains on the prompt set's own answers, but the prompt set has none "
        f"(prompts.source: {PROMPTS['source']}, prompts.response_field: {PROMPTS['response_field']}); "
        "remove `data` from recovery.methods or use a prompt source with answers"
    )


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9_.-]*",
    method="|".join(SCORING_METHODS),
    ratio=RATIO_WILDCARD,
    recovery="|".join(RECOVERIES),
    task="[A-Za-z0-9][A-Za-z0-9_-]*",


# Each rule's `settings` param: the JSON of exactly the settings its job uses
# (layerprune.settings), shell-quoted into the command as `--settings {params.settings:q}`.
# Snakemake's params trigger then re-runs exactly the jobs a changed setting reaches.
PROMPT_SET_SETTINGS = settings_json(PromptSetSettings, config)
PROMPT_FILTER_SETTINGS = settings_json(PromptFilterSettings, config)
CALIBRATION_SETTINGS = settings_json(CalibrationSettings, config)
HEAL_SETTINGS = settings_json(HealSettings, config)
PRUNE_SETTINGS = settings_json(PruneSettings, config)
SELFGEN_SETTINGS = settings_json(SelfgenSettings, config)
MAGPIE_SETTINGS = settings_json(MagpieSettings, config)
RECOVERY_SETTINGS = settings_json(RecoverySettings, config)
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
    return settings_json(ScoreSettings, config, method=wildcards.method, max_ratio=MAX_RATIO)


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


def evaluation_settings(wildcards):
    return settings_json(EvaluationSettings, config, task=wildcards.task)


def job_resources(rule_name):
    """Cluster resources for a rule: config resources.<rule> over resources.default."""
    return slurm_resources(config["resources"], rule_name)


def job_threads(rule_name):
    return config["resources"].get(rule_name, {}).get("threads", config["resources"]["default"]["threads"])


def bigbench_file(task):
    return f"resources/bigbench/{task}/task.json"


def prompt_source_inputs():
    """Files the prompt set is drawn from: BIG-bench task files, or a local dataset path (a hub id has none)."""
    if PROMPTS["source"] == "bigbench":
        return [bigbench_file(task) for task in PROMPTS["bigbench_tasks"]]
    if PROMPTS["source"] in ("hub", "jsonl") and os.path.exists(PROMPTS["path"]):
        return [PROMPTS["path"]]
    return []


def model_prompt_set(model):
    """The prompt set of one model, after its token-length filter (or Magpie's questions)."""
    return f"results/data/prompts/{model}.jsonl"


def task_inputs(wildcards):
    """What preparing a task reads: its BIG-bench task(s) (gem/xsum for offline XSum) and local files."""
    spec = config["tasks"][wildcards.task]
    if spec.get("lm_eval_task"):
        return []  # prepared by prepare_lm_eval_task, from lm-eval's own task config
    files = [spec[key] for key in ("file", "fewshot_file") if spec.get(key)]
    if spec["dataset"] == "bigbench":
        tasks = spec["bigbench_task"]
        files += [bigbench_file(task) for task in ([tasks] if isinstance(tasks, str) else tasks)]
    elif spec["dataset"] == "xsum" and not spec.get("hub") and not spec.get("file"):
        files.append(bigbench_file("gem/xsum"))
    return files


def heal_inputs():
    """The files the heal text is drawn from: BIG-bench task JSONs or a local file (none for the hub)."""
    source = config["recovery"]["heal"]["source"]
    if "bigbench_tasks" in source:
        return [bigbench_file(task) for task in source["bigbench_tasks"]]
    return [source["path"]] if "path" in source else []


def dense_checkpoint(model):
    return f"results/models/{model}/dense"


def recovery_dataset(wildcards):
    """`sgr` trains on the dense model's answers, `data` on the prompt set's references, `heal` on plain text."""
    if wildcards.recovery == "sgr":
        return f"results/selfgen/{wildcards.model}.jsonl"
    if wildcards.recovery == "heal":
        return "results/data/heal.jsonl"
    return model_prompt_set(wildcards.model)


def variant_checkpoint(wildcards):
    """recovery `none` evaluates the pruned checkpoint itself."""
    if wildcards.recovery == "none":
        return f"results/pruned/{wildcards.model}/{wildcards.method}/{wildcards.ratio}"
    return f"results/recovered/{wildcards.model}/{wildcards.method}/{wildcards.ratio}/{wildcards.recovery}"


TASK_USE_KEYS = ("evaluate", "chance", "recoveries")


def task_spec_json(task):
    """A task's config entry for prepare_task, without the keys that decide how the task is used, not what it holds."""
    spec = {key: value for key, value in config["tasks"][task].items() if key not in TASK_USE_KEYS}
    return json.dumps(spec, sort_keys=True)


def excluded_task_files(wildcards):
    """The prepared tasks whose rows a task leaves out (tasks.<task>.exclude_tasks)."""
    return [f"results/data/tasks/{name}.json" for name in config["tasks"][wildcards.task]["exclude_tasks"]]


def task_recoveries(task):
    """The recoveries whose variants evaluate a task (tasks.<task>.recoveries; all by default)."""
    chosen = config["tasks"][task]["recoveries"]
    return RECOVERIES_RUN if chosen is None else [r for r in RECOVERIES_RUN if r in chosen]


def all_evaluations():
    dense = expand("results/eval/{model}/dense/{task}.json", model=MODELS, task=EVALUATED_TASKS)
    variants = [
        f"results/eval/{model}/{method}/{ratio}/{recovery}/{task}.json"
        for model, method, ratio, recovery, task in itertools.product(
            MODELS, METHODS, RATIOS, RECOVERIES_RUN, EVALUATED_TASKS
        )
        if recovery in task_recoveries(task)
    ]
    return dense + variants
