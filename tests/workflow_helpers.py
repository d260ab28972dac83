"""Run the real Snakefile in a scratch copy of the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def workflow_copy(dest: Path, config: dict | None = None) -> Path:
    """Copy the workflow (Snakefile, rules, schema, profiles, dvc.yaml) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", dest / "Snakefile")
    shutil.copy(REPO / "dvc.yaml", dest / "dvc.yaml")
    shutil.copytree(REPO / "workflow", dest / "workflow", dirs_exist_ok=True)
    shutil.copytree(REPO / "profiles", dest / "profiles", dirs_exist_ok=True, symlinks=True)
    if not (dest / "slurm").exists():
        (dest / "slurm").symlink_to("profiles/slurm")
    cfg = config if config is not None else yaml.safe_load((REPO / "config.yaml").read_text())
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def env() -> dict:
    variables = dict(os.environ)
    variables["PATH"] = f"{BIN}{os.pathsep}{variables.get('PATH', '')}"
    variables.setdefault("HF_HUB_OFFLINE", "1")
    variables.setdefault("TRANSFORMERS_OFFLINE", "1")
    return variables


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "snakemake"), *args], cwd=cwd, check=check)


def planned_jobs(cwd: Path, *args: str) -> dict[str, int]:
    """Rule -> job count of a dry run (empty when there is nothing to do)."""
    result = snakemake(cwd, "-n", "--cores", "2", *args)
    output = result.stdout + result.stderr
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


def copy_run(src: Path, dest: Path) -> Path:
    """A copy of a finished run (workflow, results, .snakemake metadata) with its mtimes kept,
    so the copy is exactly as up to date as the original."""
    shutil.copytree(src, dest, symlinks=True, copy_function=shutil.copy2)
    return dest
