"""The GPU environment resolves against PyPI: exactly what the README tells a GPU user to install.

vLLM cannot run here (no CUDA), but whether its requirements agree with the whole project (snakemake,
its slurm plugin, torch, transformers and the rest) is a question for a resolver, answered without
installing. The README's GPU install is `python3.13 -m venv ...` then `pip install -c constraints-gpu.txt
-e .[vllm]`; this machine has no Python 3.13, and pip's `--python-version` only changes which wheel tags
it accepts while evaluating markers (mistral_common's `numpy<2.4; python_version <= "3.12"`, the
reason for 3.13) for the interpreter pip runs on. `uv pip compile --python-version 3.13` evaluates
markers and tags for the target, so the test resolves the README's arguments with uv (a pinned uv
installed into a throwaway venv: uv is a binary shipped in its PyPI wheel). As a control, the same
arguments for Python 3.11 must fail on numpy: the reason the README says 3.13.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
UV = "uv==0.13.9"
# a GPU node: Linux x86_64 with glibc 2.28 or newer (torch 2.13's CUDA wheels are manylinux_2_28)
PLATFORM = "x86_64-manylinux_2_28"


def pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/vllm/", timeout=15) as response:
            return response.status == 200
    except OSError:
        return False


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def readme_gpu_install() -> tuple[str, list[str]]:
    """(python version, pip arguments) of the documented GPU install block (docs/studies.md, where the README's
    front door sends a GPU user), as typed there."""
    text = (REPO / "docs" / "studies.md").read_text()
    venv = re.search(r"^python(3\.\d+) -m venv (\S+)$", text, re.M)
    assert venv, "docs/studies.md: the GPU environment's `python3.X -m venv` line"
    install = re.search(rf"^{re.escape(venv[2])}/bin/pip install (.+)$", text, re.M)
    assert install, "docs/studies.md: the GPU environment's pip install line"
    return venv[1], shlex.split(install[1])


def test_readme_gpu_install_line_is_the_documented_one():
    python, arguments = readme_gpu_install()
    assert python == "3.13"
    assert arguments == ["-c", "constraints-gpu.txt", "-e", ".[vllm]"]
    spec = yaml.safe_load((REPO / "envs" / "layerprune-gpu.yaml").read_text())
    assert f"python={python}" in spec["dependencies"]


@pytest.fixture(scope="module")
def uv(tmp_path_factory) -> Path:
    if not pypi_reachable():
        pytest.skip("PyPI (https://pypi.org) is unreachable from this machine: the resolution needs it")
    venv = tmp_path_factory.mktemp("uv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--isolated", "-q", "--disable-pip-version-check", UV],
        check=True,
        timeout=600,
    )
    return venv / "bin" / "uv"


def compile_for(uv: Path, python: str, arguments: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`uv pip compile` of pip install `arguments` (run in the checkout, as the README's line is) for `python`."""
    requirements, rest = tmp_path / "requirements.in", []
    lines: list[str] = []
    iterator = iter(arguments)
    for argument in iterator:
        if argument == "-c":
            rest += ["-c", str(REPO / next(iterator))]
        elif argument == "-e":
            lines.append(f"-e {REPO}{next(iterator).removeprefix('.')}")
        else:
            lines.append(argument)
    requirements.write_text("\n".join(lines) + "\n")
    command = [str(uv), "pip", "compile", "--no-config", "--no-cache", "--python-version", python]
    command += ["--python-platform", PLATFORM, *rest, str(requirements), "-o", str(tmp_path / "resolved.txt")]
    # the public index, whatever this machine's pip configuration points at (its local CPU torch wheel)
    environment = {**os.environ, "UV_INDEX_URL": "https://pypi.org/simple", "UV_NO_PROGRESS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO, env=environment)


def resolved_versions(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            found[canonical(match[1])] = match[2]
    return found


@pytest.mark.slow  # about 1-2 min: installs uv, then three resolutions of ~270 packages against PyPI
def test_readme_gpu_install_resolves_for_python_3_13(uv, tmp_path):
    python, arguments = readme_gpu_install()
    done = compile_for(uv, python, arguments, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    resolved = resolved_versions(tmp_path / "resolved.txt")
    # every pin of constraints-gpu.txt that the project needs is what gets installed, the whole project included
    pins = {}
    for line in (REPO / "constraints-gpu.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if match:
            pins[canonical(match[1])] = match[2]
    for name, version in resolved.items():
        if name in pins:
            assert version == pins[name], name
    for name in ("vllm", "torch", "transformers", "numpy", "snakemake", "snakemake-executor-plugin-slurm", "trl"):
        assert resolved[name] == pins[name], name
    assert "layerprune" in (tmp_path / "resolved.txt").read_text()

    # the conda environment file's own list (its python=3.13 and pip pins) resolves too
    spec = yaml.safe_load((REPO / "envs" / "layerprune-gpu.yaml").read_text())
    conda_pins = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    conda_python = next(d for d in spec["dependencies"] if isinstance(d, str) and d.startswith("python="))
    (tmp_path / "conda").mkdir()
    done = compile_for(uv, conda_python.split("=")[1], ["-c", "constraints-gpu.txt", *conda_pins], tmp_path / "conda")
    assert done.returncode == 0, done.stderr[-4000:]
    assert resolved_versions(tmp_path / "conda" / "resolved.txt")["vllm"] == "0.30.0"

    # control: the same line on Python 3.11 cannot resolve, on vLLM's numpy marker
    (tmp_path / "py311").mkdir()
    done = compile_for(uv, "3.11", arguments, tmp_path / "py311")
    assert done.returncode != 0 and "numpy" in done.stderr and "mistral-common" in done.stderr, done.stderr[-3000:]
