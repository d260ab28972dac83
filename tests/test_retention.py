"""The report's statistics on constructed results whose right answer is known.

Items are scored by a rule (item i is correct when i < k; helpers.results), so a variant's hits are a subset of
the dense model's and every ratio, drop and pairing is known in closed form.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.results import BOOTSTRAP_SETTINGS, dense, result, written
from snakemake.benchmark import BenchmarkRecord, write_benchmark_records

from layerprune.evaluation.chance import task_chance
from layerprune.io import write_json
from layerprune.report.aggregate import aggregate
from layerprune.report.retention import (
    MIN_DISAGREEMENTS,
    NOT_REPRODUCED,
    NOT_TESTED,
    ONE_SEED,
    REPRODUCED,
    UNDECIDED,
    BootstrapSettings,
    Contrast,
    clopper_pearson_upper,
    findings,
    recovery_by_ratio,
    resample_weights,
    retention,
    verdict,
)
from layerprune.report.tables import findings_table, lowest_ratio_lines, time_table
from layerprune.usage import USAGE_PREFIX, log_of_benchmark, read_usage


def seeded(entries: list[dict], seeds=(0, 1)) -> list[dict]:
    """Every trained result (recovery not none) once per training seed, all seeds alike: the seed-to-seed spread
    is 0, so the intervals are the items' alone, and a contrast of trained recoveries can be decided."""
    out = []
    for entry in entries:
        if entry["recovery"] == "none" or "training_seed" in entry:
            out.append(entry)
        else:
            out += [{**entry, "training_seed": seed} for seed in seeds]
    return out


# The constructed collapse: arithmetic 13 -> 6 of 30, plural 44 -> 8 of 100, dyck a lucky 2 -> 4 of 16.
COLLAPSE = [
    dense("arithmetic", "generative", 13, 30),
    result("arithmetic", "generative", "bi", 0.2, "none", 6, 30),
    dense("plural", "generative", 44, 100),
    result("plural", "generative", "bi", 0.2, "none", 8, 100),
    dense("dyck", "generative", 2, 16),
    result("dyck", "generative", "bi", 0.2, "none", 4, 16),
]


def type_row(frame: pd.DataFrame, task_type: str, recovery: str = "none", ratio: float = 0.2) -> pd.Series:
    rows = frame[(frame["type"] == task_type) & (frame["recovery"] == recovery) & np.isclose(frame["ratio"], ratio)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_collapse_reads_as_a_collapse_through_aggregate(tmp_path):
    """Old code: a mean of per-task ratios, 0.88 [0.24, 2.22] with dyck's lucky 2.0 counted, and tasks = 3."""
    paths = []
    for i, entry in enumerate(COLLAPSE):
        write_json(tmp_path / f"{i}.json", entry)
        paths.append(tmp_path / f"{i}.json")
    aggregate(paths, tmp_path / "out", bootstrap_samples=2000, seed=0)
    per_type = pd.read_csv(tmp_path / "out" / "retention_by_type.csv")
    row = type_row(per_type, "generative")
    # dyck (dense 2/16: lower bound 0, not above chance 0 + 0.05) is left out; the rest is a ratio of means.
    assert row["tasks"] == 2 and row["excluded"] == 1
    assert row["retention"] == pytest.approx((6 / 30 + 8 / 100) / (13 / 30 + 44 / 100))
    assert row["ci_high"] < 0.6 and row["ci_low"] > 0.05
    assert row["drop_points"] == pytest.approx(((13 - 6) / 30 + (44 - 8) / 100) / 2 * 100)
    assert row["drop_low"] > 15 and row["nan_draws"] == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "`dyck` (generative; dense lower bound 0.000 ≤ chance 0.000 + margin 0.05)" in report


def test_lucky_draw_on_an_uninformative_task_counts_for_nothing():
    stats = retention(COLLAPSE[4:], BOOTSTRAP_SETTINGS)
    row = type_row(stats.per_type, "generative")
    assert row["tasks"] == 0 and row["excluded"] == 1 and np.isnan(row["retention"])
    task = stats.per_task.iloc[0]
    assert not task["informative"] and np.isnan(task["retention"])
    assert task["value_ratio"] == 2.0  # what the old headline averaged in
    assert task["drop_points"] == pytest.approx(-12.5) and task["drop_low"] < 0 <= task["drop_high"]
    verdicts = findings(stats)
    assert (verdicts["verdict"] == NOT_TESTED).all()
    assert "no informative generative task (1 excluded)" in verdicts.iloc[1]["detail"]


def test_chance_level_from_choices_and_a_task_at_chance_is_excluded():
    assert task_chance(dense("mc", "classification", 1, 4, choices=4)) == (0.25, "1/choices (4 choices)")
    assert task_chance(dense("gen", "generative", 1, 4)) == (0.0, "free generation")
    assert task_chance(dense("gen", "generative", 1, 4, chance=0.1)) == (0.1, "given by the task")
    mixed = dense("mc", "classification", 1, 4)
    for sample, count in zip(mixed["samples"], [2, 2, 4, 4], strict=True):
        sample["loglikelihoods"] = [0.0] * count
    assert task_chance(mixed)[0] == pytest.approx((0.5 + 0.5 + 0.25 + 0.25) / 4)
    with pytest.raises(ValueError, match="chance"):
        task_chance(dense("gen", "generative", 1, 4, chance=1.5))
    results = [
        # 4 choices, the dense model right on 55 of 200: chance is 0.25, so 0.275 is not informative ...
        dense("at_chance", "classification", 55, 200, choices=4),
        result("at_chance", "classification", "bi", 0.2, "none", 20, 200, choices=4),
        # ... while 150 of 200 is; its retention is normalised: (0.5 - 0.25) / (0.75 - 0.25) = 0.5.
        dense("knows", "classification", 150, 200, choices=4),
        result("knows", "classification", "bi", 0.2, "none", 100, 200, choices=4),
    ]
    stats = retention(results, BOOTSTRAP_SETTINGS)
    row = type_row(stats.per_type, "classification")
    assert row["tasks"] == 1 and row["excluded"] == 1
    assert row["retention"] == pytest.approx(0.5)
    assert row["drop_points"] == pytest.approx(25.0)  # raw points lost: 75 % -> 50 %
    tasks = stats.tasks.set_index("task")
    assert tasks.loc["at_chance", "chance"] == 0.25 and not tasks.loc["at_chance", "informative"]
    assert "≤ chance 0.250 + margin 0.05" in tasks.loc["at_chance", "reason"]
    # The margin is a setting: with a lower bar... still at chance; with a higher one, nothing counts.
    strict = retention(results, BootstrapSettings(samples=500, min_dense_margin=0.6))
    assert type_row(strict.per_type, "classification")["tasks"] == 0


def test_all_zero_dense_has_no_retention_and_no_nan_draws():
    results = [dense("zero", "generative", 0, 20), result("zero", "generative", "bi", 0.2, "none", 0, 20)]
    stats = retention(results, BOOTSTRAP_SETTINGS)
    row = type_row(stats.per_type, "generative")
    assert row["tasks"] == 0 and np.isnan(row["retention"]) and np.isnan(row["ci_low"])
    task = stats.per_task.iloc[0]
    # no item disagrees: the drop's interval is the exact bound on 0 disagreements in 20 items, not [0, 0]
    assert task["drop_points"] == 0 and -task["drop_low"] == task["drop_high"] == pytest.approx(
        100 * (1 - 0.025 ** (1 / 20))
    )
    assert stats.tasks.iloc[0]["reason"].startswith("dense lower bound 0.000")


def test_one_task_only_equals_its_own_normalised_ratio():
    results = [dense("only", "generative", 120, 160), result("only", "generative", "bi", 0.2, "none", 40, 160)]
    stats = retention(results, BOOTSTRAP_SETTINGS)
    row, task = type_row(stats.per_type, "generative"), stats.per_task.iloc[0]
    assert row["retention"] == task["retention"] == pytest.approx(40 / 120)
    assert (row["ci_low"], row["ci_high"]) == (task["ci_low"], task["ci_high"])
    assert row["drop_points"] == pytest.approx(50.0)
    # Variant hits are a subset of the dense hits: per resample retention = hits in [0,40) / hits in [0,120).
    weights = resample_weights(160, BOOTSTRAP_SETTINGS, "m", "only")
    expected = weights[:, :40].sum(1) / weights[:, :120].sum(1)
    assert np.percentile(expected, [2.5, 97.5]) == pytest.approx([row["ci_low"], row["ci_high"]])


def test_identical_models_retain_one_and_drop_nothing_in_every_draw():
    results = []
    for task, task_type, hits in [("a", "generative", 30), ("b", "generative", 50), ("c", "classification", 70)]:
        results.append(dense(task, task_type, hits, 100))
        for ratio in (0.1, 0.3):
            for recovery in ("none", "data", "sgr"):
                results.append(result(task, task_type, "bi", ratio, recovery, hits, 100))
    stats = retention(seeded(results), BootstrapSettings(samples=300))
    assert np.allclose(stats.per_type["retention"], 1.0) and np.allclose(stats.per_type["drop_points"], 0.0)
    # no item disagrees: the intervals are the exact bound on the disagreement rate, never zero-width (issue 30)
    assert (stats.per_type["disagreements"] == 0).all()
    assert (stats.per_type["ci_low"] < 1).all() and (stats.per_type["ci_high"] > 1).all()
    assert (stats.per_type["drop_low"] < 0).all() and (stats.per_type["drop_high"] > 0).all()
    for draws in stats.draws.values():
        assert np.allclose(draws.retention_draws, 1.0) and np.allclose(draws.drop_draws, 0.0)
    verdicts = findings(stats)
    assert list(verdicts["verdict"][1:]) == [UNDECIDED] * 3  # sgr = data = none at every ratio: exactly 0
    assert (verdicts[["estimate", "ci_low", "ci_high"]].iloc[1:].abs() < 1e-12).all().all()


def test_draws_are_paired_across_variants_and_seeded():
    base = [dense("t", "generative", 60, 100)]
    variants = [result("t", "generative", "bi", 0.2, rec, hits, 100) for rec, hits in [("none", 30), ("sgr", 31)]]
    stats = retention(base + variants, BOOTSTRAP_SETTINGS)
    none, sgr = (stats.draws[(("m", "bi", 0.2, rec), "generative")] for rec in ("none", "sgr"))
    # sgr differs from none on item 30 only: every draw's difference is (weight of item 30) / (dense hits).
    weights = resample_weights(100, BOOTSTRAP_SETTINGS, "m", "t")
    assert np.allclose(sgr.retention_draws - none.retention_draws, weights[:, 30] / weights[:, :60].sum(1))
    again = retention(list(reversed(base + variants)), BOOTSTRAP_SETTINGS)
    assert np.array_equal(again.draws[(("m", "bi", 0.2, "none"), "generative")].retention_draws, none.retention_draws)
    other = retention(base + variants, BootstrapSettings(samples=2000, seed=1))
    assert not np.array_equal(
        other.draws[(("m", "bi", 0.2, "none"), "generative")].retention_draws, none.retention_draws
    )
    assert (weights.sum(1) == 100).all()


def test_resamples_without_a_retention_are_counted_not_dropped(tmp_path):
    # A weak dense task admitted by a lax setting: some resamples hold none of its 2 hits.
    results = [dense("weak", "generative", 2, 16), result("weak", "generative", "bi", 0.2, "none", 1, 16)]
    lax = BootstrapSettings(samples=2000, confidence=0.5, min_dense_margin=0.0)
    stats = retention(results, lax)
    row = type_row(stats.per_type, "generative")
    weights = resample_weights(16, lax, "m", "weak")
    empty = int((weights[:, :2].sum(1) == 0).sum())
    assert row["tasks"] == 1 and row["nan_draws"] == empty > 0
    assert stats.per_task.iloc[0]["nan_draws"] == empty
    paths = written(tmp_path, results)
    aggregate(paths, tmp_path / "out", bootstrap_samples=2000, confidence=0.5, min_dense_margin=0.0)
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"{empty} of 2000 resamples had a dense mean at or below chance" in report


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="min_dense_margin"):
        BootstrapSettings(min_dense_margin=-0.1)
    with pytest.raises(ValueError, match="confidence"):
        BootstrapSettings(confidence=1.0)
    with pytest.raises(ValueError, match="bootstrap_samples"):
        BootstrapSettings(samples=0)


# ----------------------------------------------------------------------------- findings

N = 200


def study(
    keep: dict[tuple[str, float, str], float | tuple], ratios=(0.1, 0.3), model: str = "m", seeds=(0, 1)
) -> list[dict]:
    """Two tasks per type, dense 160/200 each (chance 0); keep[(type, ratio, recovery)] = share of hits kept;
    each trained recovery once per training seed in `seeds`, the seeds alike (see `seeded`).

    A (share, shift) pair moves the variant's window of correct items by `shift`: hits the dense
    model missed and misses it had, so that two variants differ in both directions.
    """
    results = []
    for task, task_type in [
        ("c1", "classification"),
        ("c2", "classification"),
        ("g1", "generative"),
        ("g2", "generative"),
    ]:
        results.append(dense(task, task_type, 160, N, model=model))
        for ratio in ratios:
            for recovery in ("none", "data", "sgr"):
                share = keep.get((task_type, ratio, recovery))
                if share is not None:
                    share, shift = share if isinstance(share, tuple) else (share, 0)
                    hits = round(160 * share)
                    results.append(result(task, task_type, "bi", ratio, recovery, hits, N, model=model, shift=shift))
    return seeded(results, seeds)


def paper_like(gen_none=(0.4, 0.2), cls_none=(0.9, 0.7), sgr_gain=(0.3, 0.05), data_gain=(0.1, 0.0)) -> dict:
    keep = {}
    for i, ratio in enumerate((0.1, 0.3)):
        keep[("classification", ratio, "none")] = cls_none[i]
        keep[("generative", ratio, "none")] = gen_none[i]
        keep[("generative", ratio, "sgr")] = gen_none[i] + sgr_gain[i]
        keep[("generative", ratio, "data")] = gen_none[i] + data_gain[i]
    return keep


def verdicts_of(results: list[dict]) -> list[str]:
    return list(findings(retention(results, BOOTSTRAP_SETTINGS))["verdict"])


def test_findings_reproduced_on_paper_like_data():
    frame = findings(retention(study(paper_like()), BOOTSTRAP_SETTINGS))
    assert list(frame["finding"]) == ["i", "ii", "ii", "iii"]
    assert list(frame["verdict"]) == [REPRODUCED] * 4
    # (i) mean over ratios of gen - cls: (0.4 - 0.9 + 0.2 - 0.7) / 2; (ii) sgr - data (0.2 + 0.05) / 2 ...
    assert frame["estimate"].tolist() == pytest.approx([-0.5, 0.125, 0.175, 0.25])
    assert (frame["ci_low"] <= frame["estimate"]).all() and (frame["estimate"] <= frame["ci_high"]).all()
    assert "sgr − none" in frame.iloc[3]["statistic"]  # the best recovery by its point gain


def test_findings_not_reproduced_when_the_data_say_the_opposite():
    opposite = paper_like(gen_none=(0.9, 0.7), cls_none=(0.4, 0.2), sgr_gain=(-0.1, -0.05), data_gain=(0.0, 0.2))
    frame = findings(retention(study(opposite), BOOTSTRAP_SETTINGS))
    assert list(frame["verdict"]) == [NOT_REPRODUCED] * 4
    assert frame["ci_high"].iloc[1] < 0 and frame["ci_low"].iloc[0] > 0
    assert "data − none" in frame.iloc[3]["statistic"]  # data gained more here, so it is the best recovery


def test_kd_minus_sgr_is_a_finding_only_where_kd_ran():
    """A study with kd gets a "kd − sgr" row (mean over cells of kd − sgr generative retention); others do not."""
    results = study(paper_like())
    # kd keeps 0.4 + 0.3 + 0.1 and 0.2 + 0.05 + 0.1 of the dense hits: 0.1 above sgr at both ratios
    for task in ("g1", "g2"):
        for ratio, share in ((0.1, 0.8), (0.3, 0.35)):
            results.append(result(task, "generative", "bi", ratio, "kd", round(160 * share), N))
    results = seeded(results)
    frame = findings(retention(results, BOOTSTRAP_SETTINGS))
    assert list(frame["finding"]) == ["i", "ii", "ii", "iii", "kd"]
    row = frame.iloc[4]
    assert row["statistic"] == "kd − sgr generative retention" and row["verdict"] == REPRODUCED
    assert row["estimate"] == pytest.approx(0.1) and row["ci_low"] > 0
    table = findings_table(frame, 0.95)
    assert "(paper: no claim" in table.iloc[4]["statistic"]
    assert "kd" not in list(findings(retention(study(paper_like()), BOOTSTRAP_SETTINGS))["finding"])


def test_a_study_that_ran_kd_gets_its_row_even_when_nothing_could_be_tested():
    """kd ran, but no generative cell can be compared (here kd was evaluated on classification tasks only, as
    when every generative task sits at chance): the row is there, "not tested", saying why."""
    results = study(paper_like())
    for task in ("c1", "c2"):
        results.append(result(task, "classification", "bi", 0.1, "kd", 150, N))
    frame = findings(retention(results, BOOTSTRAP_SETTINGS))
    (row,) = frame[frame["finding"] == "kd"].itertuples()
    assert row.verdict == "not tested" and row.detail == "no kd variant with generative retention"


def test_findings_undecided_when_the_interval_covers_zero():
    # Equal counts everywhere; sgr and data get 10-15 items right that none gets wrong, and the reverse.
    close = {
        (task_type, ratio, recovery): (0.5, {"none": 0, "sgr": 10, "data": 15 if ratio == 0.1 else 5}[recovery])
        for task_type in ("classification", "generative")
        for ratio in (0.1, 0.3)
        for recovery in ("none", "sgr", "data")
    }
    frame = findings(retention(study(close), BOOTSTRAP_SETTINGS))
    assert list(frame["verdict"]) == [UNDECIDED] * 4
    assert ((frame["ci_low"] < 0) & (frame["ci_high"] > 0)).all()
    assert frame["detail"].str.contains("covers 0").all()


def test_recovery_by_ratio_decides_each_cell_on_its_own():
    """Dense 20/40. At 0.1 SGR equals no recovery and beats a collapsed data control (0/40); at 0.3 it lifts
    2/40 to 16/40 and a lucky data run (18/40) edges it out: undecided, not a win either way."""
    entries = [dense("gen", "generative", 20, 40)]
    for ratio, hits in ((0.1, {"none": 10, "sgr": 10, "data": 0}), (0.3, {"none": 2, "sgr": 16, "data": 18})):
        # the lucky data run is right on other items (20..37) than SGR (0..15), so their difference varies
        entries += [
            result("gen", "generative", "bi", ratio, rec, n, 40, shift=20 if (ratio, rec) == (0.3, "data") else 0)
            for rec, n in hits.items()
        ]
    entries = seeded(entries)
    table = recovery_by_ratio(retention(entries, BOOTSTRAP_SETTINGS)).set_index(["ratio", "contrast"])
    cell = table.loc[(0.1, "sgr − none")]
    assert cell["estimate"] == 0 and cell["ci_low"] == 0 and cell["ci_high"] == 0 and cell["verdict"] == UNDECIDED
    cell = table.loc[(0.1, "sgr − data")]
    assert cell["estimate"] == pytest.approx(10 / 20) and cell["verdict"] == REPRODUCED
    cell = table.loc[(0.3, "sgr − none")]
    assert cell["estimate"] == pytest.approx(16 / 20 - 2 / 20) and cell["verdict"] == REPRODUCED
    cell = table.loc[(0.3, "sgr − data")]
    assert cell["estimate"] == pytest.approx(16 / 20 - 18 / 20) and cell["verdict"] == UNDECIDED
    assert cell["ci_low"] < 0 < cell["ci_high"]
    lines = lowest_ratio_lines(recovery_by_ratio(retention(entries, BOOTSTRAP_SETTINGS)))
    assert lines == [
        "- **m** · bi · sgr − data at the lowest ratio, 0.1: SGR recovers more, and the interval decides it.",
        "- **m** · bi · sgr − none at the lowest ratio, 0.1: this run cannot tell whether SGR helps (undecided).",
    ]


def test_the_report_says_where_sgr_is_decided(tmp_path):
    entries = [dense("gen", "generative", 20, 40)]
    entries += [result("gen", "generative", "bi", 0.2, rec, n, 40) for rec, n in (("none", 12), ("sgr", 4))]
    paths = written(tmp_path, seeded(entries))
    aggregate(paths, tmp_path / "out", bootstrap_samples=500)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| m | bi | 0.2 | sgr − none | -0.40 [" in report
    assert "sgr − none at the lowest ratio, 0.2: SGR recovers less, and the interval decides it" in report
    csv = pd.read_csv(tmp_path / "out" / "recovery_by_ratio.csv")
    assert csv[["contrast", "verdict"]].values.tolist() == [["sgr − none", "not reproduced"]]


def test_findings_not_tested_say_why():
    no_classification = [r for r in study(paper_like()) if r["type"] == "generative"]
    frame = findings(retention(no_classification, BOOTSTRAP_SETTINGS))
    assert frame.iloc[0]["verdict"] == NOT_TESTED and "no classification task evaluated" in frame.iloc[0]["detail"]
    assert list(frame["verdict"][1:]) == [REPRODUCED] * 3
    one_ratio = {k: v for k, v in paper_like().items() if k[1] == 0.1}
    frame = findings(retention(study(one_ratio, ratios=(0.1,)), BOOTSTRAP_SETTINGS))
    assert frame.iloc[3]["verdict"] == NOT_TESTED and "one ratio" in frame.iloc[3]["detail"]
    no_data = {k: v for k, v in paper_like().items() if k[2] != "data"}
    frame = findings(retention(study(no_data), BOOTSTRAP_SETTINGS))
    assert frame.iloc[1]["verdict"] == NOT_TESTED and "no data variant" in frame.iloc[1]["detail"]
    assert frame.iloc[2]["verdict"] == REPRODUCED


def test_verdict_rules_on_given_draws():
    draws = np.linspace(0.1, 0.3, 1001)
    assert verdict(Contrast(0.2, draws, 1), +1, 0.95)[0] == REPRODUCED
    assert verdict(Contrast(0.2, draws, 1), -1, 0.95)[0] == NOT_REPRODUCED
    assert verdict(Contrast(0.0, draws - 0.2, 1), +1, 0.95)[0] == UNDECIDED
    mostly_nan = np.where(np.arange(1001) < 600, np.nan, draws)
    assert verdict(Contrast(0.2, mostly_nan, 1), +1, 0.95)[0] == NOT_TESTED
    some_nan = np.where(np.arange(1001) < 10, np.nan, draws)
    result, _, _, detail = verdict(Contrast(0.2, some_nan, 1), +1, 0.95)
    assert result == REPRODUCED and "10 of 1001 draws had no retention" in detail


def test_report_first_screen_gives_the_verdicts(tmp_path):
    results = study(paper_like())
    results += [dense("dyck", "generative", 2, 16), result("dyck", "generative", "bi", 0.1, "none", 4, 16)]
    paths = written(tmp_path, results)
    aggregate(paths, tmp_path / "out", bootstrap_samples=500)
    report = (tmp_path / "out" / "report.md").read_text()
    first_screen = "\n".join(report.splitlines()[:40])
    assert "## Findings" in first_screen
    for claim in ["(i) generation loses more than classification", "(ii) SGR recovers generation more than the data"]:
        line = next(line for line in first_screen.splitlines() if claim in line)
        assert "| **reproduced** |" in line and "[" in line
    assert "`dyck` (generative; dense lower bound" in first_screen
    assert "![retention against the pruning ratio](plots/retention_by_type.png)" in first_screen
    verdict_table = pd.read_csv(tmp_path / "out" / "findings.csv")
    assert list(verdict_table["verdict"]) == [REPRODUCED] * 4
    counted = pd.read_csv(tmp_path / "out" / "tasks_counted.csv")
    assert counted.set_index("task")["informative"].to_dict() == {
        "c1": True, "c2": True, "dyck": False, "g1": True, "g2": True
    }  # fmt: skip


# ----------------------------------------------------------------------------- where the time went


def _benchmark(path: Path, rows: list[tuple[float, float | None, float | None]]) -> Path:
    """A benchmark TSV as Snakemake writes it: (seconds, max RSS MB, CPU seconds) per run; None = not measured."""
    records = []
    for seconds, rss, cpu in rows:
        record = BenchmarkRecord(running_time=seconds, max_rss=rss, cpu_time=cpu)
        record.data_collected = rss is not None
        records.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_benchmark_records(records, str(path), False)
    return path


def test_time_table_sums_per_stage(tmp_path):
    bench = tmp_path / "benchmarks"
    paths = [
        _benchmark(bench / "evaluate" / "m" / "bi" / "t1.tsv", [(10.0, 500.0, 9.0)]),
        _benchmark(bench / "evaluate" / "m" / "bi" / "t2.tsv", [(20.0, 700.0, 18.0)]),
        _benchmark(bench / "recover" / "m_sgr.tsv", [(60.0, 1200.0, 110.0)]),
        _benchmark(bench / "prune" / "m.tsv", [(3.0, None, None)]),  # Snakemake measured nothing: NA
    ]
    table = time_table(paths).set_index("stage")
    assert list(table.index) == ["recover", "evaluate", "prune", "total"]
    assert table.loc["evaluate", ["jobs", "cpu_s", "wall_s", "max_rss_mb"]].tolist() == [2, 27.0, 30.0, 700.0]
    assert (
        table.loc["prune", "jobs"] == 1
        and table.loc["prune", "cpu_s"] == 0
        and np.isnan(table.loc["prune", "max_rss_mb"])
    )
    assert table.loc["total", ["jobs", "cpu_s", "wall_s", "max_rss_mb"]].tolist() == [4, 137.0, 93.0, 1200.0]
    assert table.loc["recover", "cpu_share"] == pytest.approx(110 / 137)
    assert table.loc["total", "sampled_jobs"] == 4  # no logs beside them: Snakemake's samples, counted
    with pytest.raises(ValueError, match="stray.tsv"):
        time_table([_benchmark(tmp_path / "elsewhere" / "stray.tsv", [(1.0, 1.0, 1.0)])])
    (bench / "evaluate" / "bad.tsv").write_text("wall\n3\n")
    with pytest.raises(KeyError, match="bad.tsv"):
        time_table([bench / "evaluate" / "bad.tsv"])


def test_time_table_takes_cpu_and_rss_from_the_jobs_own_usage_line(tmp_path):
    """A 35 s job that Snakemake last sampled at 15 s: the log's getrusage line (35 CPU-s) is what counts."""
    bench = tmp_path / "benchmarks"
    measured = _benchmark(bench / "evaluate_variant" / "m" / "bi" / "0.2" / "none" / "t.tsv", [(36.0, 900.0, 15.0)])
    sampled = _benchmark(bench / "evaluate_variant" / "m" / "bi" / "0.2" / "none" / "u.tsv", [(12.0, 800.0, 11.0)])
    log = tmp_path / "logs" / "evaluate_variant" / "m" / "bi" / "0.2" / "none" / "t.log"
    log.parent.mkdir(parents=True)
    log.write_text(f"progress...\n{USAGE_PREFIX}" + '{"cpu_s": 35.0, "max_rss_mb": 1400.0, "wall_s": 35.5}\n')
    assert log_of_benchmark(measured) == log
    table = time_table([measured, sampled]).set_index("stage")
    assert table.loc["evaluate_variant", ["jobs", "cpu_s", "wall_s", "max_rss_mb", "sampled_jobs"]].tolist() == [
        2, 35.0 + 11.0, 36.0 + 12.0, 1400.0, 1
    ]  # fmt: skip
    write_json(tmp_path / "r.json", COLLAPSE[0])
    aggregate([tmp_path / "r.json"], tmp_path / "report", bootstrap_samples=50, benchmark_paths=[measured, sampled])
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| evaluate_variant | 2 | 46 | 48 |" in report
    assert "1 of 2 jobs left no usage line in their log" in report


def test_a_job_in_several_processes_is_the_sum_of_their_usage_lines(tmp_path):
    """A 2-process DDP recover: each worker writes its own line into the job's one log."""
    log = tmp_path / "logs" / "recover" / "m.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        f'{USAGE_PREFIX}{{"cpu_s": 40.0, "max_rss_mb": 900.0, "pid": 11, "wall_s": 30.0}}\n'
        "rank 1 done\n"
        f'{USAGE_PREFIX}{{"cpu_s": 38.5, "max_rss_mb": 950.0, "pid": 12, "wall_s": 29.0}}\n'
    )
    assert read_usage(log) == {"cpu_s": 78.5, "wall_s": 30.0, "max_rss_mb": 950.0, "processes": 2}
    bench = _benchmark(tmp_path / "benchmarks" / "recover" / "m.tsv", [(31.0, 1200.0, 20.0)])
    assert time_table([bench]).set_index("stage").loc["recover", ["cpu_s", "sampled_jobs"]].tolist() == [78.5, 0]
    repeated = _benchmark(tmp_path / "benchmarks" / "recover" / "m.tsv", [(31.0, 1200.0, 20.0), (30.0, 1100.0, 19.0)])
    assert time_table([repeated]).set_index("stage").loc["recover", ["cpu_s", "sampled_jobs"]].tolist() == [39.0, 1]


def test_the_usage_line_counts_the_process_and_its_children_exactly(tmp_path):
    """0.6 CPU-s in the process and 0.6 in a child it waits for: the line says 1.2 (plus the child's start-up)."""
    burn = "import time\nwhile time.process_time() < 0.6: pass\n"
    program = (
        "import subprocess, sys, time\n"
        "from layerprune.usage import usage_line\n"
        "started = time.monotonic()\n"
        f"{burn}"
        f"subprocess.run([sys.executable, '-S', '-c', {burn!r}], check=True)\n"
        "print(usage_line(started))\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
    line = out.strip().splitlines()[-1]
    (tmp_path / "job.log").write_text(out)
    usage = read_usage(tmp_path / "job.log")
    assert line.startswith(USAGE_PREFIX) and usage["cpu_s"] >= 1.2 and usage["cpu_s"] < 1.2 + 1.5
    assert usage["max_rss_mb"] > 5 and usage["wall_s"] >= 0.6


def test_a_layerprune_command_ends_its_log_with_its_usage(tmp_path):
    write_json(tmp_path / "r.json", COLLAPSE[0])
    done = subprocess.run(
        [str(Path(sys.executable).parent / "layerprune"), "aggregate", "--results", str(tmp_path / "r.json"),
         "--out-dir", str(tmp_path / "out"), "--bootstrap-samples", "20"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (tmp_path / "aggregate.log").write_text(done.stdout + done.stderr)
    assert done.stderr.strip().splitlines()[-1].startswith(USAGE_PREFIX)
    assert read_usage(tmp_path / "aggregate.log")["cpu_s"] > 0


def test_time_table_from_a_real_snakemake_run(tmp_path):
    (tmp_path / "Snakefile").write_text(
        textwrap.dedent(
            """
            rule all:
                input: expand("out/{i}.txt", i=[1, 2])
            rule busy:
                output: "out/{i}.txt"
                benchmark: "benchmarks/busy/{i}.tsv"
                shell: "python -c 'sum(range(3_000_000))' && touch {output}"
            """
        )
    )
    snakemake = Path(sys.executable).parent / "snakemake"
    subprocess.run([str(snakemake), "--cores", "1", "--quiet"], cwd=tmp_path, check=True, capture_output=True)
    paths = sorted((tmp_path / "benchmarks").rglob("*.tsv"))
    assert len(paths) == 2
    table = time_table(paths).set_index("stage")
    assert table.loc["busy", "jobs"] == 2 and table.loc["busy", "wall_s"] > 0
    write_json(tmp_path / "r.json", COLLAPSE[0])
    aggregate([tmp_path / "r.json"], tmp_path / "report", bootstrap_samples=50, benchmark_paths=paths)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Where the time went" in report and "| busy | 2 |" in report
    assert pd.read_csv(tmp_path / "report" / "time.csv")["stage"].tolist() == ["busy", "total"]


def test_a_task_chance_from_the_config_reaches_the_statistic(tmp_path):
    """tasks.<task>.chance (the arithmetic probe's guessed digit: 0.1) replaces the free-generation default 0."""
    entries = [dense("probe", "generative", 15, 30), result("probe", "generative", "bi", 0.2, "none", 6, 30)]
    paths = written(tmp_path, entries)
    aggregate(paths, tmp_path / "zero", bootstrap_samples=200, seed=0)
    aggregate(paths, tmp_path / "tenth", bootstrap_samples=200, seed=0, task_chance={"probe": 0.1})
    at_zero = type_row(pd.read_csv(tmp_path / "zero" / "retention_by_type.csv"), "generative")
    at_tenth = type_row(pd.read_csv(tmp_path / "tenth" / "retention_by_type.csv"), "generative")
    assert at_zero["retention"] == pytest.approx(6 / 15)
    assert at_tenth["retention"] == pytest.approx((0.2 - 0.1) / (0.5 - 0.1))  # (6/30 - 0.1) / (15/30 - 0.1)


def test_results_that_store_their_chance_aggregate_the_same_without_the_config(tmp_path):
    """An evaluated result stores its chance: re-aggregating the run's own files without the config changes nothing.

    Old code: the chance lived only in the config (report.task_chance), so the files alone gave 0 for the probe.
    """
    entries = [
        dense("probe", "generative", 15, 30, chance=0.1, chance_source="given by the task"),
        result("probe", "generative", "bi", 0.2, "none", 6, 30, chance=0.1, chance_source="given by the task"),
        dense("mc", "classification", 20, 30, choices=4),
        result("mc", "classification", "bi", 0.2, "none", 12, 30, choices=4),
    ]
    paths = written(tmp_path, entries)
    aggregate(paths, tmp_path / "with", bootstrap_samples=200, seed=0, task_chance={"probe": 0.1})
    aggregate(paths, tmp_path / "without", bootstrap_samples=200, seed=0)
    for name in ("retention_by_type.csv", "findings.csv", "tasks_counted.csv"):
        with_config = pd.read_csv(tmp_path / "with" / name)
        pd.testing.assert_frame_equal(with_config, pd.read_csv(tmp_path / "without" / name))
    at_tenth = type_row(pd.read_csv(tmp_path / "without" / "retention_by_type.csv"), "generative")
    assert at_tenth["retention"] == pytest.approx((0.2 - 0.1) / (0.5 - 0.1))
    # a config that disagrees with what a result was evaluated with is an error naming the file
    with pytest.raises(ValueError, match=r"0\.json: evaluated with chance 0\.1 .* tasks\.probe\.chance is 0\.2"):
        aggregate(paths, tmp_path / "clash", bootstrap_samples=20, task_chance={"probe": 0.2})


# The lucky tiny task: 6 -> 10 of 10 while a 200-item task goes 150 -> 0.
LUCKY_TINY = [
    dense("tiny", "generative", 6, 10),
    result("tiny", "generative", "bi", 0.2, "none", 10, 10),
    dense("large", "generative", 150, 200),
    result("large", "generative", "bi", 0.2, "none", 0, 200),
]


LUCKY_EXPECTED = {"equal": (1.0 + 0.0) / (0.6 + 0.75), "items": (10 * 1.0 + 0.0) / (10 * 0.6 + 200 * 0.75)}


@pytest.mark.parametrize(("weighting", "expected"), list(LUCKY_EXPECTED.items()))
def test_task_weighting_on_a_lucky_tiny_task(tmp_path, weighting, expected):
    """report.task_weighting: equal lets a lucky 10/10 lift retention to 0.74; items pools the items (0.064)."""
    paths = written(tmp_path, LUCKY_TINY)
    aggregate(paths, tmp_path / "out", bootstrap_samples=300, seed=0, task_weighting=weighting)
    row = type_row(pd.read_csv(tmp_path / "out" / "retention_by_type.csv"), "generative")
    assert row["tasks"] == 2 and row["retention"] == pytest.approx(expected)
    drops = {"equal": ((0.6 - 1.0) + 0.75) / 2, "items": (10 * (0.6 - 1.0) + 200 * 0.75) / 210}
    assert row["drop_points"] == pytest.approx(100 * drops[weighting])
    assert row["ci_low"] <= row["retention"] <= row["ci_high"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"report.task_weighting: {weighting}" in report
    # the other weighting differs beyond the intervals: flagged next to the number, on the first screen too
    other = {"equal": "items", "items": "equal"}[weighting]
    assert row["weightings_diverge"] and row["other_weighting"] == other
    assert row["other_retention"] == pytest.approx(LUCKY_EXPECTED[other])
    assert not row["other_ci_low"] <= row["retention"] <= row["other_ci_high"]
    headline = report.split("## Retention at", 1)[1].split("\n\n", 2)[1]
    flag = {"equal": "⚠ weighted by items: 0.06 [", "items": "⚠ weighted equally: 0.74 ["}[weighting]
    assert flag in headline.splitlines()[-1]
    with pytest.raises(ValueError, match="report.task_weighting must be one of equal, items"):
        BootstrapSettings(task_weighting="pooled")


def nested(task: str, task_type: str, hits: dict[float, int], n: int, **extra) -> list[dict]:
    """A dense result and one variant per ratio; hits are nested (a variant's hits are the dense model's first ones)."""
    dense_hits = hits.pop(0.0)
    return [dense(task, task_type, dense_hits, n, **extra)] + [
        result(task, task_type, "bi", ratio, "none", k, n, **extra) for ratio, k in hits.items()
    ]


def test_ratio_contrasts_are_paired_differences_of_adjacent_ratios(tmp_path):
    """The issue's case: retention 0.60 at 0.1 and 0.90 at 0.2; the paired difference +0.30 is decided.

    Old code: no comparison between ratios at all. Nested hits: every resample's difference is
    positive, so the paired interval lies above 0; identical hits at 0.2 and 0.3: exactly 0 in every draw.
    """
    entries = nested("words", "generative", {0.0: 20, 0.1: 12, 0.2: 18, 0.3: 18}, 40)
    stats = retention(entries, BootstrapSettings(samples=1000, seed=0))
    from layerprune.report.retention import HIGHER, ratio_contrasts

    frame = ratio_contrasts(stats)
    assert frame[["from_ratio", "to_ratio"]].values.tolist() == [[0.1, 0.2], [0.2, 0.3]]
    first, second = frame.iloc[0], frame.iloc[1]
    assert first["estimate"] == pytest.approx(18 / 20 - 12 / 20)
    assert first["ci_low"] > 0 and first["verdict"] == HIGHER
    # the marginal intervals overlap, yet the paired one is decided
    per_type = stats.per_type.set_index("ratio")
    assert per_type.loc[0.1, "ci_high"] > per_type.loc[0.2, "ci_low"]
    assert (second["estimate"], second["ci_low"], second["ci_high"]) == (0.0, 0.0, 0.0)
    assert second["verdict"] == UNDECIDED
    aggregate(written(tmp_path, entries), tmp_path / "out", bootstrap_samples=200, seed=0)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "### Between adjacent ratios (paired)" in report and "| 0.2 − 0.1 |" in report
    assert "cover the sampling of evaluation items only" in report
    assert len(pd.read_csv(tmp_path / "out" / "ratio_contrasts.csv")) == 2


def test_every_model_is_in_the_headline_at_its_own_ratio(tmp_path):
    """A model run at other ratios is in the first-screen table at its own median, and the table says so.

    Old code: one median over all models' ratios (0.3 here), so model `a` (0.1, 0.2) dropped out.
    """
    entries = nested("words", "generative", {0.0: 20, 0.1: 12, 0.2: 10}, 40, model="a")
    entries += nested("words", "generative", {0.0: 20, 0.3: 12, 0.4: 8, 0.5: 4}, 40, model="b")
    aggregate(written(tmp_path, entries), tmp_path / "out", bootstrap_samples=100, seed=0)
    report = (tmp_path / "out" / "report.md").read_text()
    headline = report.split("## Retention at each model's own ratio")[1].split("\n\n")[1]
    assert "| a | bi | 0.1 (median of 0.1, 0.2) |" in headline
    assert "| b | bi | 0.4 (median of 0.3, 0.4, 0.5) |" in headline
    aggregate(written(tmp_path, entries), tmp_path / "asked", bootstrap_samples=100, seed=0, headline_ratio=0.2)
    report = (tmp_path / "asked" / "report.md").read_text()
    assert "| a | bi | 0.2 (as requested) |" in report
    assert "| b | bi | 0.3 (nearest to 0.2 among 0.3, 0.4, 0.5) |" in report


# ----------------------------------------------------------------------------- one training seed


def test_one_seed_cannot_decide_a_contrast_of_trained_recoveries():
    """The same paper-like outcomes as above, each recovery trained once: (i) compares untrained variants and is
    decided; (ii) and (iii) compare trained recoveries, so their verdict is "one seed: not decidable", with the
    items-only interval beside it (the very interval two identical seeds give) and what the items alone say."""
    one = findings(retention(study(paper_like(), seeds=(0,)), BOOTSTRAP_SETTINGS))
    two = findings(retention(study(paper_like(), seeds=(0, 1)), BOOTSTRAP_SETTINGS))
    assert list(one["verdict"]) == [REPRODUCED, ONE_SEED, ONE_SEED, ONE_SEED]
    assert list(two["verdict"]) == [REPRODUCED] * 4
    for column in ("estimate", "ci_low", "ci_high"):
        assert one[column].tolist() == pytest.approx(two[column].tolist())
    assert (
        one["detail"]
        .iloc[1]
        .endswith(
            "data, sgr trained with one seed: the interval covers the items only, not the seed-to-seed spread (items "
            "alone: reproduced; recovery.seeds with 2+ seeds decides)"
        )
    )
    assert "sgr trained with one seed" in one["detail"].iloc[2]  # sgr − none: none trains nothing
    # results that record no training seed (evaluated before results stored it) are one run each: the same
    unrecorded = [{k: v for k, v in r.items() if k != "training_seed"} for r in study(paper_like(), seeds=(0,))]
    assert list(findings(retention(unrecorded, BOOTSTRAP_SETTINGS))["verdict"]) == list(one["verdict"])
    table = findings_table(one, 0.95)
    assert table["verdict"].tolist()[1:] == ["**one seed: not decidable**"] * 3
    assert table[f"estimate [{0.95:.0%} CI]"].iloc[1].startswith(("0.12 [", "0.13 ["))
    by_ratio = recovery_by_ratio(retention(study(paper_like(), seeds=(0,)), BOOTSTRAP_SETTINGS))
    assert set(by_ratio["verdict"]) == {ONE_SEED}
    assert set(lowest_ratio_lines(by_ratio)) == {
        "- **m** · bi · sgr − data at the lowest ratio, 0.1: one training seed cannot decide it (recovery.seeds).",
        "- **m** · bi · sgr − none at the lowest ratio, 0.1: one training seed cannot decide it (recovery.seeds).",
    }


def test_one_seed_verdict_on_given_draws_keeps_what_the_items_say():
    draws = np.linspace(0.1, 0.3, 1001)
    label, low, high, detail = verdict(Contrast(0.2, draws, 1, one_seed=("sgr",)), +1, 0.95)
    assert label == ONE_SEED and (low, high) == verdict(Contrast(0.2, draws, 1), +1, 0.95)[1:3]
    assert "items alone: reproduced" in detail
    assert "items alone: undecided" in verdict(Contrast(0.0, draws - 0.2, 1, one_seed=("sgr",)), +1, 0.95)[3]


def test_the_first_screen_names_what_one_seed_cannot_decide(tmp_path):
    paths = written(tmp_path, study(paper_like(), seeds=(0,)))
    aggregate(paths, tmp_path / "out", bootstrap_samples=300)
    report = (tmp_path / "out" / "report.md").read_text()
    first_screen = "\n".join(report.splitlines()[:30])
    line = next(line for line in first_screen.splitlines() if "(ii) SGR recovers generation more than the data" in line)
    assert "| **one seed: not decidable** |" in line and ("| 0.12 [" in line or "| 0.13 [" in line)
    assert (
        "**One training seed cannot decide** (ii) sgr − data, (ii) sgr − none, (iii) gain(lowest ratio) − "
        "gain(highest ratio), gain = sgr − none:" in first_screen
    )
    contrasts = pd.read_csv(tmp_path / "out" / "ratio_contrasts.csv")
    trained = contrasts["recovery"] != "none"
    assert set(contrasts.loc[trained, "verdict"]) == {ONE_SEED}
    assert ONE_SEED not in set(contrasts.loc[~trained, "verdict"])
    seeded_paths = written(tmp_path / "two", study(paper_like(), seeds=(0, 1)))
    aggregate(seeded_paths, tmp_path / "two" / "out", bootstrap_samples=300)
    assert "One training seed cannot decide" not in (tmp_path / "two" / "out" / "report.md").read_text()


# ----------------------------------------------------------------------------- few training seeds


def scored(task: str, method: str, recovery: str, scores: list[float], **extra) -> dict:
    """A result whose items carry numeric scores (e.g. ROUGE-L), one per item."""
    samples = [{"id": i, "score": score} for i, score in enumerate(scores)]
    ratio = 0.0 if method == "dense" else 0.2
    return {
        "model": "m", "method": method, "ratio": ratio, "recovery": recovery, "task": task, "type": "generative",
        "metric": "rouge_l", "value": float(np.mean(scores)), "n": len(scores), "samples": samples, **extra,
    }  # fmt: skip


@pytest.mark.parametrize("seed_scores", [(0.6, 0.4, 0.5), (0.7, 0.3)])
def test_few_seeds_get_a_student_t_seed_component(seed_scores):
    """Every item of seed j scores the same, and the dense model 1 on every item: the items' resamples cannot
    move anything, so the interval is the seed component alone, mean ± t(0.975, m - 1) · s / sqrt(m): for
    0.6, 0.4, 0.5 (s = 0.1, t = 4.303) 0.5 ± 0.248; for 0.7, 0.3 (s = 0.283, t = 12.71) 0.5 ± 2.54. A bootstrap
    over the seeds gave [0.43, 0.57] and [0.3, 0.7]."""
    m, n = len(seed_scores), 50
    entries = [scored("gen", "dense", "none", [1.0] * n)]
    entries += [scored("gen", "bi", "sgr", [score] * n, training_seed=j) for j, score in enumerate(seed_scores)]
    t = {2: 12.706, 3: 4.303}[m]
    half = t * np.std(seed_scores, ddof=1) / np.sqrt(m)
    row = retention(entries, BootstrapSettings(samples=100_000, seed=1)).per_type.iloc[0]
    assert row["retention"] == pytest.approx(0.5)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(
        (0.5 - half, 0.5 + half), rel=0.04
    )  # the tail quantiles: about 2 % SE
    # the drop gets the same seed component: dense 1, so drop = 100 (1 - retention) in every draw
    assert (row["drop_low"], row["drop_high"]) == pytest.approx((100 * (1 - row["ci_high"]), 100 * (1 - row["ci_low"])))


# ----------------------------------------------------------------------------- few disagreements


def test_clopper_pearson_upper_bound_is_exact():
    """k = 0: 1 - 0.025^(1/n) in closed form; k > 0: P(Binomial(n, bound) <= k) = 0.025, checked by summing."""
    assert clopper_pearson_upper(0, 10, 0.95) == pytest.approx(1 - 0.025 ** (1 / 10))  # 0.308
    assert clopper_pearson_upper(0, 200, 0.95) == pytest.approx(1 - 0.025 ** (1 / 200))  # 0.0183
    assert clopper_pearson_upper(10, 10, 0.95) == 1.0
    from math import comb

    bound = clopper_pearson_upper(3, 40, 0.95)
    assert sum(comb(40, i) * bound**i * (1 - bound) ** (40 - i) for i in range(4)) == pytest.approx(0.025)


@pytest.mark.parametrize(("n", "dense_hits"), [(10, 7), (200, 150)])
def test_a_pruned_model_that_agrees_on_every_item_gets_the_exact_bound_not_zero_width(n, dense_hits):
    """The issue's case: pruned and dense agree on all 10 items; the bootstrap gave 1.00 [1.00, 1.00], drop 0.0
    [0.0, 0.0]. Zero disagreements in n items still allow a rate up to u = 1 - 0.025^(1/n) (0.31 at 10, 0.018
    at 200), so the drop is within ±u and the retention within 1 ± u / dense (chance 0)."""
    entries = [dense("t", "generative", dense_hits, n), result("t", "generative", "bi", 0.2, "none", dense_hits, n)]
    stats = retention(entries, BOOTSTRAP_SETTINGS)
    bound = 1 - 0.025 ** (1 / n)
    dense_mean = dense_hits / n
    for row in (stats.per_task.iloc[0], stats.per_type.iloc[0]):
        assert row["retention"] == 1.0 and row["drop_points"] == 0.0 and row["disagreements"] == 0
        assert (row["drop_low"], row["drop_high"]) == pytest.approx((-100 * bound, 100 * bound))
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((1 - bound / dense_mean, 1 + bound / dense_mean))
    assert stats.per_task.iloc[0]["ci_low"] < 0.6 if n == 10 else stats.per_task.iloc[0]["ci_low"] > 0.97


def test_many_disagreements_keep_the_bootstrap_interval():
    """20 of 200 items lost (nested hits): MIN_DISAGREEMENTS or more, so the percentile bootstrap stands."""
    entries = [dense("t", "generative", 150, 200), result("t", "generative", "bi", 0.2, "none", 130, 200)]
    row = retention(entries, BOOTSTRAP_SETTINGS).per_task.iloc[0]
    assert row["disagreements"] == 20 >= MIN_DISAGREEMENTS
    resamples = resample_weights(200, BOOTSTRAP_SETTINGS, "m", "t")
    dense_items = (np.arange(200) < 150).astype(float)
    variant_items = (np.arange(200) < 130).astype(float)
    expected = 100 * (resamples @ (dense_items - variant_items)) / 200
    assert (row["drop_low"], row["drop_high"]) == pytest.approx(tuple(np.percentile(expected, [2.5, 97.5])))


def test_one_item_lost_widens_to_the_exact_bound_on_both_sides():
    """1 of 40 items lost, none won: drop 2.5 points; the interval holds [-u(0), u(1)] with the exact bounds."""
    entries = [dense("t", "generative", 30, 40), result("t", "generative", "bi", 0.2, "none", 29, 40)]
    row = retention(entries, BOOTSTRAP_SETTINGS).per_task.iloc[0]
    assert row["disagreements"] == 1 and row["drop_points"] == pytest.approx(2.5)
    assert row["drop_low"] == pytest.approx(-100 * clopper_pearson_upper(0, 40, 0.95))
    assert row["drop_high"] == pytest.approx(100 * clopper_pearson_upper(1, 40, 0.95))  # 12.9 points


def test_weightings_that_agree_are_not_flagged():
    """Two tasks of one size: both weightings give the same number, so nothing is flagged."""
    row = type_row(retention(study(paper_like()), BOOTSTRAP_SETTINGS).per_type, "generative", "sgr", 0.1)
    assert row["other_retention"] == pytest.approx(row["retention"]) and not row["weightings_diverge"]
    from layerprune.report.tables import retention_cell

    assert "⚠" not in retention_cell(row)
