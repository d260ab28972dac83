"""Method comparison in the report: removal sets, Jaccard overlap, plots."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers.aggregate_grid import write_results
from helpers.results import PNG_MAGIC

from layerprune.io import write_json
from layerprune.report.aggregate import aggregate
from layerprune.report.compare import jaccard, overlap_table
from layerprune.scoring.score import score_layers

NUM_LAYERS = 8


def bi_like_scores() -> dict:
    """Importance rises with depth except layer 7: removal order 1, 2, 3, 4, ..."""
    importance = [9.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 5.0]
    removal = {str(k): sorted(sorted(range(NUM_LAYERS), key=importance.__getitem__)[:k]) for k in range(NUM_LAYERS)}
    return {"method": "bi", "num_layers": NUM_LAYERS, "scores": importance, "removal": removal}


def test_jaccard_by_hand():
    assert jaccard([1, 2], [2, 3]) == pytest.approx(1 / 3)
    assert jaccard([1, 2], [1, 2]) == 1.0
    assert jaccard([0], [5]) == 0.0


def test_overlap_table_by_hand():
    reverse = score_layers("reverse", num_layers=NUM_LAYERS)
    by_model = {"tiny": {"bi": bi_like_scores(), "reverse": reverse}}
    table = overlap_table(by_model, [0.25, 0.5])
    # ratio 0.25: k=2, bi {1,2} vs reverse {6,7} -> 0; ratio 0.5: k=4, {1,2,3,4} vs {4,5,6,7} -> 1/7
    assert list(table["jaccard"]) == [0.0, pytest.approx(1 / 7)]
    assert list(table["method_a"]) == ["bi", "bi"] and list(table["method_b"]) == ["reverse", "reverse"]


def test_report_compares_methods(tmp_path):
    results = write_results(tmp_path / "results")  # method bi at ratios 0.25 and 0.5
    scores_dir = tmp_path / "scores" / "tiny"
    write_json(scores_dir / "bi.json", bi_like_scores())
    write_json(scores_dir / "reverse.json", score_layers("reverse", num_layers=NUM_LAYERS))
    out = tmp_path / "report"
    aggregate(results, out, score_paths=[scores_dir / "bi.json", scores_dir / "reverse.json"])
    for name in ("tiny__layer_scores.png", "tiny__removal_map.png"):
        assert (out / "plots" / name).read_bytes()[:8] == PNG_MAGIC
    overlap = pd.read_csv(out / "removal_overlap.csv")
    assert overlap["jaccard"].tolist() == pytest.approx([0.0, 1 / 7])
    report = (out / "report.md").read_text()
    assert "## Scoring methods compared" in report
    assert "plots/tiny__removal_map.png" in report and "plots/tiny__layer_scores.png" in report


def test_report_without_scores_has_no_comparison(tmp_path):
    out = tmp_path / "report"
    aggregate(write_results(tmp_path / "results"), out)
    assert "Scoring methods compared" not in (out / "report.md").read_text()
    assert not (out / "removal_overlap.csv").exists()
