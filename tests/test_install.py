"""The package works when installed from a wheel, away from the checkout (no `workflow/` beside it).

The wheel is built from a copy of pyproject.toml, README.md and src/ (so the checkout gets no build
folders) and installed with --no-deps into a folder of its own; the test environment's packages serve
as its dependencies. The folder comes first on PYTHONPATH, so `layerprune` is the installed copy, not
the checkout's editable one: the test checks that too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", source], check=True)
    (wheel,) = (root / "dist").glob("layerprune-*.whl")
    site = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", site, wheel], check=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    return site, env


def run_installed(site: Path, env: dict, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def test_the_wheel_holds_the_schema_and_the_cli_runs_from_it(installed, tmp_path):
    site, env = installed
    assert (site / "layerprune" / "config" / "config.schema.yaml").is_file()
    result = run_installed(site, env, str(site / "bin" / "layerprune"), "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "recover" in result.stdout and "evaluate" in result.stdout
    result = run_installed(site, env, str(site / "bin" / "layerprune"), "recover", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "kd_onpolicy" in result.stdout, result.stderr


def test_the_installed_package_loads_its_schema_and_task_names_away_from_the_checkout(installed, tmp_path):
    site, env = installed
    shutil.copy(REPO / "config.yaml", tmp_path / "study.yaml")
    code = (
        "import json, layerprune, layerprune.config.settings as s\n"
        "from layerprune.config.bigbench_tasks import BIGBENCH_JSON_TASKS\n"
        "schema = s.load_schema()\n"
        "recover = s.study_settings(s.RecoverySettings, 'study.yaml')\n"
        "print(json.dumps({'package': layerprune.__file__, 'schema': str(s.SCHEMA_FILE),\n"
        "  'methods': schema['properties']['recovery']['properties']['methods']['items']['enum'],\n"
        "  'lora_r': recover['lora_r'], 'bigbench_json_tasks': len(BIGBENCH_JSON_TASKS)}))\n"
    )
    result = run_installed(site, env, sys.executable, "-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert Path(found["package"]).is_relative_to(site) and Path(found["schema"]).is_relative_to(site)
    from layerprune.config.settings import RecoverySettings, study_settings
    from layerprune.registry import RECOVERIES

    assert found["methods"] == list(RECOVERIES)
    assert found["lora_r"] == study_settings(RecoverySettings, REPO / "config.yaml")["lora_r"]
    assert found["bigbench_json_tasks"] == 1041  # the plan check's task names, package data


def test_the_workflow_schema_is_the_package_schema():
    """snakemake.utils.validate and the checkout's readers use workflow/schemas/: a link to the package's schema."""
    from layerprune.config.settings import SCHEMA_FILE

    workflow_schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    assert SCHEMA_FILE.parent.name == "config" and SCHEMA_FILE.is_file() and not SCHEMA_FILE.is_symlink()
    assert workflow_schema.is_symlink() and workflow_schema.resolve() == SCHEMA_FILE
