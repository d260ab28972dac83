"""The whole DAG for real on a tiny random model, then what a re-run would redo.

One complete `snakemake --cores 2` run (a few minutes on 2 cores); the re-run
checks are dry runs against that finished state, counting the jobs Snakemake plans.
"""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
from helpers.workflow import TINY_STUDY, planned_jobs, planned_with
from transformers import AutoModelForCausalLM


@pytest.fixture(scope="module")
def finished_run(tiny_run):
    """The session's one real tiny run (conftest.tiny_run builds it from `tiny_config`)."""
    return tiny_run


@pytest.mark.slow
def test_pipeline_produces_summary_report_and_plots(finished_run):
    workdir, config = finished_run
    results = workdir / "results" / TINY_STUDY
    summary = pd.read_csv(results / "report" / "summary.csv")
    assert list(summary.columns) == [
        "model",
        "method",
        "ratio",
        "recovery",
        "training_seed",
        "task",
        "type",
        "metric",
        "value",
        "stderr",
        "n",
        "value_ratio",
    ]
    # 2 dense rows + 1 method x 2 ratios x 3 recoveries x 2 tasks
    assert len(summary) == 2 + 12
    assert set(summary["recovery"]) == {"none", "data", "sgr"}
    assert (summary["n"] == 6).all()
    assert summary["value"].between(0, 1).all()
    dense = summary[summary["method"] == "dense"]
    assert set(dense["task"]) == {"knowledge", "addition"}
    report = (results / "report" / "report.md").read_text()
    assert "Retention" in report
    for task in ("knowledge", "addition"):
        png = results / "report" / "plots" / f"tiny__{task}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/tiny__{task}.png" in report

    # every sample's prompt, output and verdict is kept
    result = json.loads((results / "eval/tiny/bi/0.5/sgr/addition.json").read_text())
    assert len(result["samples"]) == 6
    assert {"prompt", "output", "correct"} <= set(result["samples"][0])

    # the pruned and recovered checkpoints are plain HF checkpoints of the new depth
    (pruned,) = (workdir / "results" / "shared" / "pruned").glob("*/tiny/bi/0.5/pruning.json")  # by fingerprint
    pruning = json.loads(pruned.read_text())
    assert pruning["num_layers_after"] == 2 and len(pruning["removed_layers"]) == 2
    recovered = AutoModelForCausalLM.from_pretrained(results / "recovered/tiny/bi/0.5/sgr")
    assert recovered.config.num_hidden_layers == 2

    # selfgen is TRL prompt-completion JSONL, one record per prompt
    records = [json.loads(line) for line in (results / "selfgen/tiny.jsonl").read_text().splitlines()]
    assert len(records) == 8
    assert records[0]["prompt"][-1]["role"] == "user" and records[0]["completion"][0]["role"] == "assistant"


@pytest.mark.slow
def test_finished_run_has_nothing_to_do(finished_run):
    workdir, _ = finished_run
    assert planned_jobs(workdir) == {}


@pytest.mark.slow
def test_adding_a_ratio_reruns_only_that_ratio(finished_run, tmp_path):
    workdir, config = finished_run
    changed = copy.deepcopy(config)
    changed["pruning"]["ratios"].append(0.75)
    jobs = planned_with(workdir, changed)
    assert jobs == {"prune": 1, "recover": 2, "evaluate_variant": 2 * 2, "evaluate_pruned": 2, "aggregate": 1, "all": 1}


@pytest.mark.slow
def test_evaluation_setting_reruns_no_scoring_selfgen_or_training(finished_run):
    workdir, config = finished_run
    changed = copy.deepcopy(config)
    changed["evaluation"]["batch_size"] = 2
    jobs = planned_with(workdir, changed)
    assert jobs == {"evaluate_dense": 2, "evaluate_variant": 8, "evaluate_pruned": 4, "aggregate": 1, "all": 1}


@pytest.mark.slow
def test_selfgen_setting_reruns_selfgen_and_its_descendants_only(finished_run):
    workdir, config = finished_run
    changed = copy.deepcopy(config)
    changed["selfgen"]["temperature"] = 0.9
    jobs = planned_with(workdir, changed)
    # the sgr branch only: 2 ratios x (1 recover + 2 task evaluations)
    assert jobs == {"selfgen": 1, "recover": 2, "evaluate_variant": 4, "aggregate": 1, "all": 1}
