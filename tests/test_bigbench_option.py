"""BIG-bench as an option (issue 25): a study that names BIG-bench tasks reads them from a local copy of the
sdist (`bigbench.sdist`, checked by sha256); without one, a refusing index stops the first job with one
console line naming it and the ways out. The sdist here is a small one of the real layout (bigbench_sdist)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bigbench_sdist import LoopbackIndex, make_sdist, sha256_of
from helpers.plans import checkpoint_config, dry_run
from helpers.workflow import snakemake, workflow_copy

ADD = {"name": "add", "examples": [{"input": f"What is {i} plus 1?", "target": str(i + 1)} for i in range(12)]}


def bigbench_study(model_dir: Path, bigbench: dict) -> dict:
    return {
        "seed": 0,
        "bigbench": bigbench,
        "models": {"tiny": {"source": {"path": str(model_dir)}}},
        "scoring": {"methods": ["reverse"]},
        "pruning": {"ratios": [0.5]},
        "recovery": {"methods": ["none"]},
        "tasks": {
            "addition": {
                "type": "generative",
                "bigbench_task": "arithmetic/1_digit_addition",
                "num_fewshot": 1,
                "limit": 4,
            }
        },
    }


def console_lines(output: str, needle: str) -> list[str]:
    return [line for line in output.splitlines() if needle in line]


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_a_missing_local_copy_is_refused_at_plan_time(tmp_path):
    model = checkpoint_config(tmp_path / "model")
    config = bigbench_study(model, {"sdist": "downloads/bigbench-1.0.0.tar.gz"})
    code, output = dry_run(tmp_path, config)
    assert code != 0
    said = console_lines(output, "bigbench.sdist: downloads/bigbench-1.0.0.tar.gz: no such file")
    assert len(said) == 1, output
    assert "tasks.addition" in said[0] and "builtin" in said[0]


def test_a_study_without_bigbench_plans_no_bigbench_job(tmp_path):
    """The embedded default reads nothing from BIG-bench: no fetch, no extraction, even with a missing copy named."""
    workdir = workflow_copy(tmp_path / "wf")
    result = snakemake(workdir, "-n", "--cores", "1", "--config", "bigbench={'sdist': 'missing.tar.gz'}")
    output = result.stdout + result.stderr
    assert "fetch_bigbench" not in output and "extract_bigbench" not in output
    assert "build_task" in output


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_a_refusing_index_stops_the_first_job_with_one_console_line(tmp_path, monkeypatch):
    """No local copy, an empty cache, and the index answers 403 (as the real one does for bigbench 1.0.0)."""
    monkeypatch.setenv("LAYERPRUNE_CACHE", str(tmp_path / "empty-cache"))
    model = checkpoint_config(tmp_path / "model")
    sdist = make_sdist(tmp_path / "sdist" / "bigbench-1.0.0.tar.gz", {"arithmetic/1_digit_addition": ADD})
    with LoopbackIndex(sdist, index_status=403).running() as index:
        workdir = workflow_copy(tmp_path / "wf", bigbench_study(model, {"index_url": index.url}))
        result = snakemake(workdir, "--cores", "1", "--until", "prepare_task", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    said = console_lines(output, "source unavailable")
    assert len(said) == 1, output
    assert index.url in said[0] and "HTTP 403" in said[0] and "bigbench.sdist" in said[0] and "builtin" in said[0]
    assert "Traceback" not in output
    assert index.requests == ["/simple/bigbench/"], "the refusal stops the job: nothing else is asked"
    assert not (workdir / "resources" / "bigbench-1.0.0.tar.gz").exists()


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_a_local_copy_is_checked_and_its_tasks_prepared(tmp_path, monkeypatch):
    """`bigbench.sdist` + its sha256: the study's BIG-bench task is extracted and prepared, with its provenance."""
    monkeypatch.setenv("LAYERPRUNE_CACHE", str(tmp_path / "empty-cache"))
    model = checkpoint_config(tmp_path / "model")
    sdist = make_sdist(tmp_path / "downloads" / "bigbench-1.0.0.tar.gz", {"arithmetic/1_digit_addition": ADD})
    config = bigbench_study(model, {"sdist": str(sdist), "sha256": sha256_of(sdist)})
    workdir = workflow_copy(tmp_path / "wf", config)
    snakemake(workdir, "--cores", "1", "--until", "prepare_task")
    (prepared,) = (workdir / "results" / "shared" / "tasks").glob("*/addition.json")
    payload = json.loads(prepared.read_text())
    assert payload["source"] == "bigbench:arithmetic/1_digit_addition"
    assert {s["input"] for s in payload["samples"]} <= {e["input"] for e in ADD["examples"]}
    assert payload["samples"][0]["operation"] == "addition"
    assert not (tmp_path / "empty-cache" / "bigbench-1.0.0.tar.gz").exists(), "a local copy is used where it is"
    # the same study with another sha256: refused by the first job, naming the file
    config["bigbench"]["sha256"] = "0" * 64
    workdir = workflow_copy(tmp_path / "wf2", config)
    result = snakemake(workdir, "--cores", "1", "--until", "prepare_task", check=False)
    said = console_lines(result.stdout + result.stderr, "source unavailable")
    assert result.returncode != 0 and len(said) == 1 and str(sdist) in said[0] and "sha256" in said[0]
