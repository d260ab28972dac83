"""Run the real Snakefile in a scratch copy of the repository; the tiny study the slow tests run.

Plain helpers, no fixtures and no tests: conftest.py and the test modules import from here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]  # tests/helpers/workflow.py -> the repository
BIN = Path(sys.executable).parent

# The tiny study stands where the embedded default would: results/default/ (dvc.yaml names its metrics).
TINY_STUDY = "default"
# A shared file's folder is a fingerprint of its settings (workflow/rules/common.smk).
FINGERPRINT = "[0-9a-f]{12}"


def tiny_config(model_dir) -> dict:
    """The tiny study of the one real pipeline run (conftest.tiny_run): a 4-layer random Llama at `model_dir`."""
    return {
        "study": TINY_STUDY,
        "seed": 0,
        "dtype": "float32",
        "models": {"tiny": {"source": {"path": str(model_dir)}}},
        "scoring": {
            "methods": ["bi"],
            "batch_size": 4,
            "calibration": {"builtin_tasks": ["python_docs"], "num_samples": 4, "max_length": 32},
        },
        "pruning": {"ratios": [0.25, 0.5]},
        "prompts": {
            "builtin_tasks": ["arithmetic/1_digit_subtraction", "word_unscrambling"],
            "num_prompts": 8,
        },
        "selfgen": {
            "max_new_tokens": 6,
            "temperature": 0.7,
            "top_p": 0.95,
            "batch_size": 4,
        },
        "recovery": {
            "methods": ["none", "data", "sgr"],
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_dropout": 0.0,
            "learning_rate": 1e-3,
            "num_epochs": 1,
            "batch_size": 4,
            "grad_accum": 1,
            "max_length": 64,
            "warmup_steps": 0,
            "lr_scheduler": "constant",
            "weight_decay": 0.0,
            "max_steps": 2,
        },
        "tasks": {
            "knowledge": {
                "type": "classification",
                "dataset": "builtin",
                "builtin_task": "country_continent",
                "num_fewshot": 0,
                "limit": 6,
            },
            "addition": {
                "type": "generative",
                "dataset": "builtin",
                "builtin_task": "arithmetic/1_digit_addition",
                "num_fewshot": 1,
                "limit": 6,
                "max_new_tokens": 3,
            },
        },
        "evaluation": {"batch_size": 4},
        "resources": {"default": {"threads": 1, "mem_mb": 2000, "runtime": 10, "gpus": 0}},
    }


def variant_study(config: dict) -> dict:
    """A second, smaller study beside the tiny one (study `variant`): one ratio, no recovery, and the
    addition task's limit changed, so it shares the model and the other data with the tiny study."""
    variant = copy.deepcopy(config)
    variant["study"] = "variant"
    variant["pruning"]["ratios"] = [0.5]
    variant["recovery"]["methods"] = ["none"]
    variant["tasks"]["addition"]["limit"] = 4
    return variant


# What the variant study plans where the tiny study has run: the one task it prepares anew and that task's
# dense and unrecovered evaluations; the score, the pruned checkpoint and the other task's evaluations are the
# tiny study's (results/shared/, the same fingerprints).
VARIANT_JOBS = {
    "prepare_task": 1,
    "evaluate_dense": 1,
    "evaluate_pruned": 1,
    "aggregate": 1,
    "all": 1,
}


def workflow_copy(dest: Path, config: dict | None = None) -> Path:
    """Copy the workflow (Snakefile, rules, schema, envs, profiles, dvc.yaml) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", dest / "Snakefile")
    shutil.copy(REPO / "dvc.yaml", dest / "dvc.yaml")
    shutil.copytree(REPO / "workflow", dest / "workflow", dirs_exist_ok=True)
    shutil.copytree(REPO / "envs", dest / "envs", dirs_exist_ok=True)
    shutil.copytree(REPO / "profiles", dest / "profiles", dirs_exist_ok=True, symlinks=True)
    if not (dest / "slurm").exists():
        (dest / "slurm").symlink_to("profiles/slurm")
    cfg = config if config is not None else yaml.safe_load((REPO / "config.yaml").read_text())
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def env() -> dict:
    """os.environ with the venv's bin first on PATH and the hub offline: what snakemake runs with."""
    variables = dict(os.environ)
    variables["PATH"] = f"{BIN}{os.pathsep}{variables.get('PATH', '')}"
    variables.setdefault("HF_HUB_OFFLINE", "1")
    variables.setdefault("TRANSFORMERS_OFFLINE", "1")
    return variables


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run `cmd` in `cwd` with `env()`, output captured; AssertionError with its output tail if it fails and `check`."""
    result = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The venv's `snakemake *args` in `cwd` (see `run`)."""
    return run([str(BIN / "snakemake"), *args], cwd=cwd, check=check)


def planned_jobs(cwd: Path, *args: str) -> dict[str, int]:
    """Rule -> job count of a dry run (empty when there is nothing to do)."""
    result = snakemake(cwd, "-n", "--cores", "2", *args)
    return jobs_of(result.stdout + result.stderr)


def jobs_of(output: str) -> dict[str, int]:
    """Rule -> job count from a dry run's output (its "Job stats" table; empty when there is nothing to do)."""
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    counts.pop("total", None)
    return counts


def planned_with(workdir: Path, config: dict, *args: str) -> dict[str, int]:
    """`planned_jobs` of `workdir` with `config` given as `--configfile`, a file written beside the workdir, not
    in it, and removed after: the session's tiny run is shared by both xdist workers, and a file written into
    it could be half-copied by the other worker's `copy_run`."""
    handle, name = tempfile.mkstemp(dir=workdir.parent, prefix="changed-", suffix=".yaml")
    try:
        with os.fdopen(handle, "w") as out:
            yaml.safe_dump(config, out)
        return planned_jobs(workdir, "--configfile", name, *args)
    finally:
        os.unlink(name)


def copy_run(src: Path, dest: Path) -> Path:
    """A copy of a finished run (workflow, results, .snakemake metadata) with its mtimes kept,
    so the copy is exactly as up to date as the original."""
    shutil.copytree(src, dest, symlinks=True, copy_function=shutil.copy2)
    return dest


def shared_pattern(kind: str, name: str = "") -> str:
    """A regex of a shared file's path: results/shared/<kind>/<fingerprint>[/<name>] (`name` taken literally;
    without it, `kind`'s file is <fingerprint><suffix> with suffix in `kind` after a colon: "prompts:.jsonl")."""
    if ":" in kind:
        kind, suffix = kind.split(":")
        return rf"results/shared/{re.escape(kind)}/{FINGERPRINT}{re.escape(suffix)}"
    return rf"results/shared/{re.escape(kind)}/{FINGERPRINT}/{re.escape(name)}"


def is_shared(path: str, kind: str, name: str = "") -> bool:
    """Whether `path` is a shared file of that kind (and name): see `shared_pattern`."""
    return re.fullmatch(shared_pattern(kind, name), path) is not None


def shared_file(workdir: Path, kind: str, name: str = "") -> str:
    """The one shared file of that kind (and name) in a workdir, as a path relative to it."""
    found = [
        p.relative_to(workdir).as_posix()
        for p in (workdir / "results" / "shared").rglob("*")
        if is_shared(p.relative_to(workdir).as_posix(), kind, name)
    ]
    assert len(found) == 1, (kind, name, found)
    return found[0]


def outputs_of_dry_run(output: str) -> list[str]:
    """Every output path a `snakemake -n` plan lists."""
    return [path.strip() for line in re.findall(r"^\s+output: (.*)$", output, flags=re.M) for path in line.split(",")]


def planned_paths(workdir: Path) -> dict[str, str]:
    """Each output of the workflow's plan, keyed by its path after the study or shared fingerprint folder
    (`eval/<model>/dense/<task>.json`, `scores/<model>/<method>.json`, ...): where a fixture result must lie for the
    plan to find it, whether the job is the study's own or shared (results/shared/<kind>/<fingerprint>/)."""
    keyed = {}
    for path in outputs_of_dry_run(snakemake(workdir, "-n", "--cores", "1").stdout):
        parts = Path(path).parts
        if parts[:2] == ("results", "shared"):
            keyed[str(Path(parts[2], *parts[4:]))] = path
        elif parts[:1] == ("results",):
            keyed[str(Path(*parts[2:]))] = path
    return keyed


def shell_commands(output: str, stage: str) -> list[list[str]]:
    """The `layerprune <stage>` commands a `snakemake -n -p` printed, each split as the shell would
    (the job's redirection of its output to its log left out)."""
    commands = []
    for line in output.splitlines():
        line = line.strip().removeprefix("Shell command:").strip()
        argv = shlex.split(line) if f"layerprune {stage} " in line or f"layerprune.cli {stage} " in line else []
        if argv:
            commands.append(argv[: argv.index(">")] if ">" in argv else argv)  # without the redirection to the log
    return commands


def settings_of(argv: list[str]) -> dict:
    """The `--settings` JSON of a command line."""
    return json.loads(argv[argv.index("--settings") + 1])


def flag(argv: list[str], name: str) -> str:
    """The value after `name` in a command line."""
    return argv[argv.index(name) + 1]


def kill_at_first_checkpoint(process: subprocess.Popen, work_dir: Path, timeout: float = 300) -> int | None:
    """SIGKILL a training process as soon as a Trainer checkpoint under `work_dir` is complete (its
    trainer_state.json readable); the step it had reached, or None if it ended or stalled first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        states = sorted(work_dir.glob("checkpoint-*/trainer_state.json"))
        if states:
            try:
                step = json.loads(states[-1].read_text())["global_step"]
            except (ValueError, OSError):
                pass
            else:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return step
        time.sleep(0.02)
    process.wait()
    return None


# A study that reads nothing from BIG-bench: the tiny model, GSM8K-format rows from tests/fixtures/tasks as
# its calibration text and its task, its own prompts in JSONL (written by `write_local_data` into data/).
LOCAL_DATA = {
    "gsm8k": REPO / "tests" / "fixtures" / "tasks" / "gsm8k_main_test.jsonl",
}
LOCAL_PROMPTS = [{"instruction": f"Name a number bigger than {n}.", "output": f"{n + 1}"} for n in range(8)]


def write_local_data(workdir: Path) -> None:
    """data/gsm8k.jsonl (4 GSM8K rows) and data/prompts.jsonl (8 prompts with answers) in `workdir`."""
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(LOCAL_DATA["gsm8k"], workdir / "data" / "gsm8k.jsonl")
    (workdir / "data" / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in LOCAL_PROMPTS))


def local_config(model_dir, study: str = "my-study") -> dict:
    """A tiny study of one's own without BIG-bench (the data `write_local_data` writes): one method, one ratio,
    recoveries none and sgr, one generative task of 4 items."""
    return {
        "study": study,
        "seed": 0,
        "dtype": "float32",
        "models": {"tiny": {"source": {"path": str(model_dir)}}},
        "scoring": {
            "methods": ["bi"],
            "batch_size": 4,
            "calibration": {"source": "gsm8k", "path": "data/gsm8k.jsonl", "num_samples": 4, "max_length": 32},
        },
        "pruning": {"ratios": [0.5]},
        "prompts": {
            "source": "jsonl",
            "path": "data/prompts.jsonl",
            "prompt_fields": ["instruction"],
            "num_prompts": 6,
            "max_prompt_tokens": 64,
        },
        "selfgen": {"max_new_tokens": 4, "temperature": 0.7, "top_p": 0.95, "batch_size": 4},
        "recovery": {
            "methods": ["none", "sgr"],
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_dropout": 0.0,
            "learning_rate": 1e-3,
            "batch_size": 2,
            "grad_accum": 1,
            "max_length": 48,
            "warmup_steps": 0,
            "lr_scheduler": "constant",
            "max_steps": 1,
        },
        "tasks": {
            "math": {
                "type": "generative",
                "dataset": "gsm8k",
                "file": "data/gsm8k.jsonl",
                "num_fewshot": 0,
                "limit": 4,
                "max_new_tokens": 4,
            },
        },
        "evaluation": {"batch_size": 4},
        "resources": {"default": {"threads": 1, "mem_mb": 2000, "runtime": 10, "gpus": 0}},
    }
