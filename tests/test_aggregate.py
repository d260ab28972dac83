"""`layerprune.report.aggregate`: tidy table, retention vs dense, report, metrics and plots."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from helpers.aggregate_grid import DENSE, MODEL, TASKS, VALUES, grid_result, write_results
from helpers.results import PNG_MAGIC

from layerprune.io import read_json, write_json
from layerprune.report.aggregate import COLUMNS, aggregate, collect

# The retention aggregate must give on the grid (helpers.aggregate_grid): VALUES / DENSE.
RETENTION = {
    (0.25, "none"): {"arith": 0.5, "colours": 0.5},
    (0.25, "sgr"): {"arith": 1.0, "colours": 1.0},
    (0.5, "none"): {"arith": 0.25, "colours": 0.25},
    (0.5, "sgr"): {"arith": 0.75, "colours": 0.75},
}


@pytest.fixture(scope="module")
def aggregated(tmp_path_factory):
    root = tmp_path_factory.mktemp("aggregate")
    paths = write_results(root / "results")
    out_dir = root / "report"
    table = aggregate(paths, out_dir)
    return table, out_dir


def test_summary_csv_columns_and_rows(aggregated):
    table, out_dir = aggregated
    summary = pd.read_csv(out_dir / "summary.csv")
    assert list(summary.columns) == COLUMNS
    assert COLUMNS == [
        "model", "method", "ratio", "recovery", "training_seed", "task", "type", "metric", "value", "stderr", "n",
        "value_ratio",
    ]  # fmt: skip
    assert list(table.columns) == COLUMNS
    assert len(summary) == len(table) == 2 * (1 + len(VALUES))
    pd.testing.assert_frame_equal(summary, table, check_dtype=False)


def test_value_ratio_is_value_over_dense(aggregated):
    _, out_dir = aggregated
    summary = pd.read_csv(out_dir / "summary.csv")
    for row in summary.itertuples():
        assert row.model == MODEL
        assert (row.type, row.metric) == TASKS[row.task]
        if row.method == "dense":
            assert (row.ratio, row.recovery) == (0.0, "none")
            assert row.value == DENSE[row.task]
            assert row.value_ratio == 1.0
            assert row.stderr == 0.125
        else:
            assert row.method == "bi"
            assert row.value == VALUES[(row.ratio, row.recovery)][row.task]
            assert row.value_ratio == RETENTION[(row.ratio, row.recovery)][row.task]
            assert row.value_ratio == row.value / DENSE[row.task]
            assert row.stderr == 0.0625
        assert row.n == 16


def test_rows_sorted_dense_first(aggregated):
    table, _ = aggregated
    for _, rows in table.groupby("task", sort=False):
        assert rows.iloc[0]["method"] == "dense"
        pruned = rows.iloc[1:]
        assert list(zip(pruned["ratio"], pruned["recovery"], strict=True)) == sorted(VALUES)
    assert list(table["task"]) == sorted(table["task"])


def test_metrics_json(aggregated):
    _, out_dir = aggregated
    metrics = read_json(out_dir / "metrics.json")
    expected = {f"{MODEL}/dense/0.0/none/{task}" for task in TASKS}
    expected |= {f"{MODEL}/bi/{ratio}/{recovery}/{task}" for ratio, recovery in VALUES for task in TASKS}
    assert set(metrics) == expected
    assert metrics[f"{MODEL}/dense/0.0/none/colours"] == {"value": 0.75, "value_ratio": 1.0}
    assert metrics[f"{MODEL}/bi/0.5/sgr/arith"] == {"value": 0.375, "value_ratio": 0.75}
    assert metrics[f"{MODEL}/bi/0.25/none/colours"] == {"value": 0.375, "value_ratio": 0.5}


def test_plots_are_png(aggregated):
    _, out_dir = aggregated
    plots = sorted((out_dir / "plots").glob("*.png"))
    # no code task in the fixture: no error-bucket figure
    expected = [f"{MODEL}__{task}.png" for task in TASKS] + ["degeneration.png"]
    assert [p.name for p in plots] == sorted([*expected, "retention_by_type.png"])
    assert sorted((out_dir / "plots").glob("*.svg")) == [p.with_suffix(".svg") for p in plots]
    for plot in plots:
        payload = plot.read_bytes()
        assert len(payload) > 1000
        assert payload.startswith(PNG_MAGIC)
        assert payload[12:16] == b"IHDR"
        width, height = int.from_bytes(payload[16:20], "big"), int.from_bytes(payload[20:24], "big")
        assert width > 100 and height > 100
        assert payload.endswith(b"IEND\xaeB`\x82")


def test_report_markdown(aggregated):
    _, out_dir = aggregated
    report = (out_dir / "report.md").read_text()
    assert report.startswith("# layerprune report")
    assert "## Retention by task" in report
    retention_section = report.split("## Retention by task\n", 1)[1].split("## Dense baselines", 1)[0]
    lines = [line for line in retention_section.splitlines() if line.startswith("|")]
    assert lines[0] == "| model | method | ratio | recovery | arith | colours |"
    body = lines[2:]
    assert len(body) == len(VALUES)
    for ratio, recovery in RETENTION:
        # The fixture's results carry one sample each, correct everywhere: the report's retention and drop
        # come from those samples (1, 0), while summary.csv keeps the raw value ratio. (The old report printed
        # value ratios beside sample intervals: "0.50 [1.00, 1.00]".) One item that agrees allows a disagreement
        # rate up to 1 - 0.025 = 0.975 (exact bound): drop ±97.5 points, retention 1 ± 0.975 (issue 30: the
        # old interval was [1.00, 1.00], drop [0.0, 0.0]).
        kept = ["1.00 [0.03, 1.98] · drop 0.0 [-97.5, 97.5] pts"] * 2
        cells = [MODEL, "bi", f"{ratio:g}", recovery, *kept]
        assert "| " + " | ".join(cells) + " |" in body
    dense_section = report.split("## Dense baselines", 1)[1].split("## Diagnostics", 1)[0]
    assert (
        f"| {MODEL} | colours | classification | accuracy | 0.750 | 1.000 [1.000, 1.000] | 0.000 (choices not recorded:"
        in (dense_section)
    )
    assert (
        f"| {MODEL} | arith | generative | exact_match | 0.500 | 1.000 [1.000, 1.000] | 0.000 (free generation) | 1 |"
        in (dense_section)
    )
    for task in TASKS:
        assert f"![{task}](plots/{MODEL}__{task}.png)" in report
    assert "## All results" in report


def test_aggregate_leaves_no_temporary_files(aggregated):
    _, out_dir = aggregated
    names = sorted(p.name for p in out_dir.rglob("*"))
    assert not [name for name in names if name.endswith(".tmp")]
    assert {"summary.csv", "metrics.json", "report.md", "plots"} <= set(names)


def test_missing_variant_key_names_the_file(tmp_path):
    paths = write_results(tmp_path)
    broken = tmp_path / "broken.json"
    result = grid_result("arith", "bi", 0.5, "none", 0.25, 0.0)
    del result["method"]
    write_json(broken, result)
    with pytest.raises(KeyError, match="broken.json") as excinfo:
        aggregate([*paths, broken], tmp_path / "out")
    assert "method" in str(excinfo.value)
    assert not (tmp_path / "out").exists()


def test_two_dense_results_for_one_task(tmp_path):
    paths = write_results(tmp_path)
    duplicate = tmp_path / "dense_again.json"
    write_json(duplicate, grid_result("arith", "dense", 0.0, "none", 0.25, 0.0))
    with pytest.raises(ValueError, match="dense"):
        collect([*paths, duplicate])
    with pytest.raises(ValueError, match="dense"):
        aggregate([*paths, duplicate], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dense_for_another_model_is_not_a_duplicate(tmp_path):
    paths = write_results(tmp_path)
    other = grid_result("arith", "dense", 0.0, "none", 0.25, 0.0)
    other["model"] = "other"
    write_json(tmp_path / "other.json", other)
    table = collect([*paths, tmp_path / "other.json"])
    row = table[table["model"] == "other"].iloc[0]
    assert row["value_ratio"] == 1.0


def test_no_dense_baseline_gives_nan_retention(tmp_path):
    path = tmp_path / "only.json"
    write_json(path, grid_result("arith", "bi", 0.5, "sgr", 0.25, float("nan")))
    table = aggregate([path], tmp_path / "out")
    assert len(table) == 1
    assert math.isnan(table.loc[0, "value_ratio"])
    assert json.loads((tmp_path / "out" / "metrics.json").read_text().replace("NaN", "null"))
    assert (tmp_path / "out" / "plots" / f"{MODEL}__arith.png").read_bytes().startswith(PNG_MAGIC)


def test_report_says_when_code_was_graded_without_strict_isolation(tmp_path, aggregated):
    _, strict_dir = aggregated
    assert "Sandbox isolation was not strict" not in (strict_dir / "report.md").read_text()
    paths = write_results(tmp_path / "results")
    weak = next(p for p in paths if p.name == "arith__bi__0.5__none.json")
    result = json.loads(weak.read_text())
    missing = "user namespaces ([Errno 28] unshare(CLONE_NEWUSER): No space left on device)"
    result["sandbox"] = {"isolation": {"level": "best_effort", "required": "best_effort", "missing": [missing]}}
    write_json(weak, result)
    aggregate(paths, tmp_path / "report")
    first_lines = (tmp_path / "report" / "report.md").read_text().splitlines()[:4]
    warning = next(line for line in first_lines if "Sandbox isolation was not strict" in line)
    assert f"{MODEL}/bi/0.5/none/arith" in warning and missing in warning and "best_effort" in warning


def test_a_missing_training_seed_is_refused_naming_the_task_and_seed(tmp_path):
    """sgr trained with seeds 0 and 1, but seed 1 was never evaluated on task b: a mean over seed 0 alone on b
    and over both on a is no mean over the variant's seeds (issue 30: 266 of 1,000 draws came out NaN, and the
    report blamed the dense model)."""

    def result(task: str, method: str, recovery: str, hits: int, **extra) -> dict:
        samples = [{"id": i, "correct": i < hits} for i in range(20)]
        ratio = 0.0 if method == "dense" else 0.2
        return {
            "model": "m", "method": method, "ratio": ratio, "recovery": recovery, "task": task,
            "type": "generative", "metric": "accuracy", "value": hits / 20, "n": 20, "samples": samples, **extra,
        }  # fmt: skip

    entries = [result(task, "dense", "none", 15) for task in ("a", "b")]
    entries += [result(task, "bi", "sgr", 10, training_seed=0) for task in ("a", "b")]
    entries += [result("a", "bi", "sgr", 12, training_seed=1), result("a", "bi", "data", 9, training_seed=1)]
    paths = []
    for i, entry in enumerate(entries):
        write_json(tmp_path / f"{i}.json", entry)
        paths.append(tmp_path / f"{i}.json")
    with pytest.raises(ValueError, match=r"training seeds missing: .* none for m/bi/0\.2/sgr: \(b, 1\)\. Evaluate"):
        aggregate(paths, tmp_path / "out", bootstrap_samples=50)
    assert not (tmp_path / "out" / "report.md").exists()
    write_json(tmp_path / "late.json", result("b", "bi", "sgr", 11, training_seed=1))
    aggregate([*paths, tmp_path / "late.json"], tmp_path / "out", bootstrap_samples=50)  # data: one seed, on a only
    assert (tmp_path / "out" / "report.md").exists()
