"""The GPU environment (envs/layerprune-gpu.yaml, constraints-gpu.txt) resolves: a real pip resolution against PyPI.

vLLM cannot run here (no CUDA), but whether its requirements agree with the pinned torch, transformers and
the rest is a question for pip's resolver, answered without installing: `pip install --dry-run --report`.
`--isolated` ignores this machine's pip configuration (its local CPU torch wheel); `fast-deps` reads each
wheel's metadata with HTTP range requests instead of downloading GBs of CUDA wheels.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/vllm/", timeout=15) as response:
            return response.status == 200
    except OSError:
        return False


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.slow  # about 80 s: pip resolves ~200 packages over the network
def test_gpu_env_resolves_against_pypi(tmp_path):
    if not pypi_reachable():
        pytest.skip("PyPI (https://pypi.org) is unreachable from this machine: the resolution needs it")
    spec = yaml.safe_load((REPO / "envs" / "layerprune-gpu.yaml").read_text())
    requirements = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    assert "vllm==0.30.0" in requirements
    report = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--isolated",
        "--use-feature=fast-deps",
        "--dry-run",
        "--ignore-installed",
        "--report",
        str(report),
        "-c",
        str(REPO / "constraints-gpu.txt"),
        *requirements,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    resolved = {
        canonical(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    # every pin of the environment is what gets installed, vLLM's CUDA stack included
    for requirement in requirements:
        name, version = requirement.split("==")
        assert resolved[canonical(name)] == version, requirement
    assert (resolved["vllm"], resolved["torch"], resolved["transformers"]) == ("0.30.0", "2.13.0", "5.23.0")
    assert resolved["numpy"] == "2.3.5"
