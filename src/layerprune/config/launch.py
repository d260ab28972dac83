"""How a training job is started: one process, or one per GPU.

A recover job asking SLURM (or the local machine) for more than one GPU must run one
training process per GPU, or all but one GPU sit idle. `accelerate launch` (what TRL
documents) or `torchrun` starts them; TRL's `SFTTrainer` then trains with DDP. The
rule calls `command_prefix` so the command is built here, where it is unit-tested,
and not in the Snakefile.

Note that under DDP the global batch is `batch_size x grad_accum x processes`, so
changing a recover job's GPU count from 1 to N changes its training: the prefix is a
rule `params:` entry and Snakemake re-runs the job, as it should.
"""

from __future__ import annotations

import shlex

LAUNCHERS = ("accelerate", "torchrun")
# Rules whose job runs on the CPU whatever it is given (prune loads, checks and saves on the CPU;
# materialize de-quantizes or copies): they never ask SLURM for a GPU, not even the default's.
CPU_RULES = ("materialize", "prune")


def command_prefix(num_gpus: int, launcher: str = "accelerate", main_process_port: int | None = None) -> str:
    """The command that runs `layerprune <stage> ...` in `num_gpus` processes (one per GPU, or CPU processes).

    0 or 1: the plain `layerprune` entry point (one process; a single GPU needs no
    launcher). More: `accelerate launch --multi_gpu --num_processes N` or
    `torchrun --standalone --nproc_per_node N`, both running `python -m layerprune.cli`.
    On a machine without GPUs the same commands start N CPU processes that train
    with DDP over gloo (accelerate's `--multi_gpu` is its torchrun-based launcher;
    the processes pick gloo themselves, see recover.prepare_work_dir_once).
    `main_process_port` sets the rendezvous port for accelerate, so two multi-GPU
    jobs sharing a node do not collide on the default 29500 (torchrun `--standalone`
    picks a free one itself).
    """
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 0:
        raise ValueError(f"resources gpus: expected a whole number >= 0, got {num_gpus!r}")
    if launcher not in LAUNCHERS:
        raise ValueError(f"resources launcher: expected one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if num_gpus <= 1:
        return "layerprune"
    if launcher == "torchrun":
        parts = ["torchrun", "--standalone", "--nnodes", "1", "--nproc_per_node", str(num_gpus)]
    else:
        parts = ["accelerate", "launch", "--multi_gpu", "--num_machines", "1", "--num_processes", str(num_gpus)]
        if main_process_port is not None:
            parts += ["--main_process_port", str(main_process_port)]
    return shlex.join([*parts, "-m", "layerprune.cli"])


# A rule whose resources default to another rule's: iterative scoring is scoring, but it runs for
# hours (bench/iterative_cost.py), so `resources.score_iterative` can give it its own runtime.
PARENT_RULES = {"score_iterative": "score"}


def rule_settings(resources: dict, rule: str) -> dict:
    """Config `resources.<rule>` over its parent rule's (PARENT_RULES) over `resources.default`."""
    parent = resources.get(PARENT_RULES[rule], {}) if rule in PARENT_RULES else {}
    return {**resources["default"], **parent, **resources.get(rule, {})}


def num_processes(settings: dict) -> int:
    """Training processes a recover job starts: one per GPU, or `processes` (CPU, DDP over gloo) without GPUs."""
    gpus = num_gpus(settings)
    if gpus:
        return gpus
    processes = settings.get("processes", 1)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"resources processes: expected a whole number >= 1, got {processes!r}")
    return processes


def num_gpus(settings: dict) -> int:
    """GPUs a job gets: `gpus`, else the count in `gres` (`gpu:2`, `gpu:a100:2`), else 0."""
    if settings.get("gpus"):
        return int(settings["gpus"])
    gres = settings.get("gres")
    if gres and gres.split(":", 1)[0] == "gpu":
        count = gres.rsplit(":", 1)[-1]
        return int(count) if count.isdigit() else 1
    return 0


def slurm_resources(resources: dict, rule: str) -> dict:
    """A rule's Snakemake `resources:` from the config, named as the slurm executor wants them.

    threads -> cpus_per_task (also the job's torch threads), mem_mb, runtime (minutes),
    gpus -> gpu (with gpu_model: `--gpus=<model>:<n>`), gres (passed as `--gres`),
    slurm_partition, slurm_account. A local run ignores what it does not know, so the
    same rules serve both. A rule in CPU_RULES gets no GPU (gpus, gres and gpu_model are dropped).
    """
    settings = rule_settings(resources, rule)
    if rule in CPU_RULES:
        settings = {key: value for key, value in settings.items() if key not in ("gpus", "gres", "gpu_model")}
    if settings.get("gpus") and settings.get("gres"):
        raise ValueError(f"resources.{rule}: give either `gpus` or `gres`, not both")
    if settings.get("gpu_model") and not settings.get("gpus"):
        raise ValueError(f"resources.{rule}: `gpu_model` needs `gpus` >= 1")
    out = {"mem_mb": settings["mem_mb"], "runtime": settings["runtime"], "cpus_per_task": settings["threads"]}
    if settings.get("gpus"):
        out["gpu"] = settings["gpus"]
        if settings.get("gpu_model"):
            out["gpu_model"] = settings["gpu_model"]
    for key in ("gres", "slurm_partition", "slurm_account"):
        if settings.get(key):
            out[key] = settings[key]
    return out


def rule_command_prefix(resources: dict, rule: str) -> str:
    """`command_prefix` for a rule from its config resources (gpus/gres or CPU processes, launcher)."""
    settings = rule_settings(resources, rule)
    return command_prefix(
        num_processes(settings), settings.get("launcher", "accelerate"), settings.get("main_process_port")
    )


def cluster_cores_problem(cores: int | None, rule_threads: dict[str, int]) -> str | None:
    """Why `--cores` would shrink cluster jobs' threads below what SLURM gives them, or None.

    With a cluster executor Snakemake still caps each job's threads at `--cores` (the submit
    host's count for `--cores all`) and passes that cap to the job, while SLURM allocates the
    `cpus_per_task` the config asks for: a 2-core login node would run 8-CPU jobs on 2
    threads. Without `--cores` there is no cap (the profile sets `jobs`).
    """
    if cores is None:
        return None
    short = {rule: threads for rule, threads in sorted(rule_threads.items()) if threads > cores}
    if not short:
        return None
    listed = ", ".join(f"{rule} {threads}" for rule, threads in short.items())
    return (
        f"--cores {cores} caps every cluster job's threads at {cores}, but SLURM gives these rules more CPUs "
        f"(resources threads -> cpus_per_task): {listed}. With a cluster executor leave --cores out "
        f"(`snakemake --profile slurm`: the profile's `jobs` bounds the jobs), or give --cores {max(short.values())} "
        "or more"
    )
