import json

from layerprune.launch import rule_command_prefix, slurm_resources

from snakemake.utils import validate

validate(config, "../schemas/config.schema.yaml", set_default=True)

SEED = config["seed"]
DTYPE = config.get("dtype", "auto")
MODELS = list(config["models"])
METHODS = config["scoring"]["methods"]
RATIOS = [f"{ratio:g}" for ratio in config["pruning"]["ratios"]]
RECOVERIES = config["recovery"]["methods"]
TASKS = list(config["tasks"])
PROBE_TASKS = config["scoring"]["iterative"]["probe_tasks"] or TASKS
_unknown_probes = [task for task in PROBE_TASKS if task not in config["tasks"]]
if _unknown_probes:
    raise ValueError(
        f"scoring.iterative.probe_tasks: {', '.join(map(repr, _unknown_probes))} is not a task in config "
        f"`tasks` (tasks: {', '.join(TASKS)})"
    )

wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9_.-]*",
    method="[a-z][a-z_]*",
    ratio="0\\.[0-9]+",
    recovery="none|data|sgr",
    task="[A-Za-z0-9][A-Za-z0-9_-]*",


def job_resources(rule_name):
    """Cluster resources for a rule: config resources.<rule> over resources.default."""
    return slurm_resources(config["resources"], rule_name)


def job_threads(rule_name):
    return config["resources"].get(rule_name, {}).get("threads", config["resources"]["default"]["threads"])


def bigbench_file(task):
    return f"resources/bigbench/{task}/task.json"


def dense_checkpoint(model):
    return f"results/models/{model}/dense"


def variant_checkpoint(wildcards):
    """recovery `none` evaluates the pruned checkpoint itself."""
    if wildcards.recovery == "none":
        return f"results/pruned/{wildcards.model}/{wildcards.method}/{wildcards.ratio}"
    return f"results/recovered/{wildcards.model}/{wildcards.method}/{wildcards.ratio}/{wildcards.recovery}"


def all_evaluations():
    dense = expand("results/eval/{model}/dense/{task}.json", model=MODELS, task=TASKS)
    variants = expand(
        "results/eval/{model}/{method}/{ratio}/{recovery}/{task}.json",
        model=MODELS, method=METHODS, ratio=RATIOS, recovery=RECOVERIES, task=TASKS,
    )
    return dense + variants
