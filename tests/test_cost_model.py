"""paper.yaml's runtimes are what the cost model (bench/cost_model.py) gives from paper.yaml's own values."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import cost_model  # noqa: E402
import memory_model  # noqa: E402

from layerprune.config.launch import rule_settings  # noqa: E402
from layerprune.evaluation.generative import plan_batches  # noqa: E402
from layerprune.scoring.score import COSINE_CHUNK_TOKENS  # noqa: E402

PAPER = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
RETRIES = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())["retries"]


def test_paper_runtimes_come_from_the_cost_model():
    rules = cost_model.costs(PAPER, retries=RETRIES)
    assert set(rules) == {"score", "score_iterative", "selfgen", "recover", "evaluate"}
    for rule, row in rules.items():
        assert rule_settings(PAPER["resources"], rule)["runtime"] == row["runtime"], rule
        assert row["attempts"] <= 1 + RETRIES, rule
    # the model reads the config's own values: the probes' lengths, not fixed ones
    iterative = rules["score_iterative"]
    assert iterative["probe_max_new_tokens"] == {
        name: PAPER["tasks"][name]["max_new_tokens"] for name in PAPER["scoring"]["iterative"]["probe_tasks"]
    }
    assert iterative["probe_rows"] == PAPER["scoring"]["iterative"]["probe_batch_size"]


def test_the_model_follows_the_config():
    longer = yaml.safe_load(yaml.safe_dump(PAPER))
    for name in longer["scoring"]["iterative"]["probe_tasks"]:
        longer["tasks"][name]["max_new_tokens"] = 4096  # the authors' context, uncapped
    with pytest.raises(ValueError, match="cap the work"):
        cost_model.costs({**longer, "scoring": {**longer["scoring"], "iterative": {
            **longer["scoring"]["iterative"], "probe_batch_size": 8}}}, retries=RETRIES)  # fmt: skip
    base = cost_model.costs(PAPER, retries=RETRIES)["selfgen"]["cost_h"]
    doubled = {**PAPER, "selfgen": {**PAPER["selfgen"], "max_new_tokens": 2 * PAPER["selfgen"]["max_new_tokens"]}}
    assert cost_model.costs(doubled, retries=RETRIES)["selfgen"]["cost_h"] > 1.9 * base


def test_candidate_count_and_generation_rows_match_the_code():
    # Llama: 32 layers, max ratio 0.3 -> 10 rounds over 31, 30, ... 22 candidates, plus the dense probe
    assert cost_model.candidates(32, 0.3) == 1 + sum(range(22, 32))
    lengths = [400] * 40
    budget = PAPER["evaluation"]["max_generate_tokens"]
    rows = cost_model.rows_for(PAPER["evaluation"]["batch_size"], budget, 400, 8192)
    batches = plan_batches([list(range(40))], lengths, PAPER["evaluation"]["batch_size"], budget, 8192)
    assert len(batches[0]) == rows
    assert memory_model.COSINE_CHUNK_TOKENS == COSINE_CHUNK_TOKENS
