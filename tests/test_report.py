"""Diagnostics from samples, bootstrap retention and the report, on result JSONs in the evaluate contract.

The fixtures follow the contract of `layerprune evaluate`'s result files: top-level metric,
value, stderr, type, task, grader and samples [{id, prompt, output, target, correct, ...}], with
`error_bucket` on code tasks, `digits`/`operation` on arithmetic tasks and a numeric `score` on
ROUGE-graded ones; some fixtures drop those fields to check that the report degrades.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from helpers.report_grid import TASKS, N, sampled_result
from helpers.results import PNG_MAGIC
from sacrebleu.metrics import BLEU

from layerprune.io import write_json
from layerprune.report.aggregate import aggregate
from layerprune.report.diagnostics import (
    ERROR_BUCKETS,
    arithmetic_breakdown,
    degeneration,
    error_bucket_counts,
    first_digit_correct,
    rep_n,
    self_bleu,
)
from layerprune.report.tables import BootstrapSettings, retention

# ----------------------------------------------------------------------------- diagnostics


def test_rep_n_counts_repeated_ngrams_per_text():
    assert rep_n(["a b c d"], 2) == 0.0
    # "a a a a": 3 bigrams, 1 unique -> 2/3 repeated; averaged with a text without repeats.
    assert rep_n(["a a a a", "a b c d"], 2) == pytest.approx((2 / 3 + 0) / 2)
    # "x y x y x y": trigrams xyx, yxy, xyx, yxy -> 2 unique of 4.
    assert rep_n(["x y x y x y"], 3) == pytest.approx(0.5)
    # Texts shorter than n do not count; none long enough -> NaN.
    assert rep_n(["a", "a a a a"], 4) == pytest.approx(0.0)
    assert np.isnan(rep_n(["a b", ""], 3))


def test_self_bleu_is_sacrebleu_against_the_other_outputs():
    texts = ["the cat sat on the mat", "the cat sat on a mat", "a dog ran in the park today"]
    bleu = BLEU(effective_order=True)
    expected = np.mean([bleu.sentence_score(t, texts[:i] + texts[i + 1 :]).score / 100 for i, t in enumerate(texts)])
    assert self_bleu(texts) == pytest.approx(expected)
    assert self_bleu(["same words here now"] * 4) == pytest.approx(1.0)
    assert self_bleu(texts) < 1.0
    assert np.isnan(self_bleu(["only one"]))
    # The counting shortcut equals sacrebleu's own sentence BLEU against the other outputs.
    rng = random.Random(5)
    words = ["a", "b", "c", "d", "e", "the", "of", "x"]
    varied = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) + "." for _ in range(25)]
    slow = np.mean([bleu.sentence_score(t, varied[:i] + varied[i + 1 :]).score / 100 for i, t in enumerate(varied)])
    assert self_bleu(varied) == pytest.approx(slow, abs=1e-12)
    # Capped texts are a seeded sample: same seed, same value.
    many = [f"w{i} w{i + 1} w{i + 2} common tail" for i in range(30)]
    assert self_bleu(many, max_texts=10, seed=1) == self_bleu(many, max_texts=10, seed=1)


def test_degeneration_of_sample_outputs_skips_missing_outputs():
    samples = [{"output": "a a a a"}, {"output": "b c d e"}, {"id": 3}]
    row = degeneration(samples)
    assert row["n_texts"] == 2
    assert row["rep_2"] == pytest.approx(1 / 3)
    assert set(row) == {"rep_2", "rep_3", "rep_4", "self_bleu", "n_texts"}


def test_error_bucket_counts_in_fixed_order():
    samples = [{"error_bucket": b} for b in ["pass", "syntax_error", "pass", "never_closed_bracket", "timeout"]]
    samples.append({"correct": False})  # no bucket: not counted
    counts = error_bucket_counts(samples)
    assert list(counts)[: len(ERROR_BUCKETS)] == list(ERROR_BUCKETS)
    assert counts["pass"] == 2 and counts["syntax_error"] == 1 and counts["never_closed_bracket"] == 1
    assert counts["unmatched_bracket"] == 0 and counts["timeout"] == 1
    # Several generations per problem (pass@k): every generation's bucket counts.
    sampled = [{"error_bucket": "pass", "error_buckets": ["pass", "wrong_answer", "wrong_answer"]}]
    assert error_bucket_counts(sampled) == {**dict.fromkeys(ERROR_BUCKETS, 0), "pass": 1, "wrong_answer": 2}


def test_first_digit_and_arithmetic_breakdown():
    assert first_digit_correct({"output": " 42 apples", "target": ["47"]})
    assert not first_digit_correct({"output": "-3", "target": "3"})
    assert not first_digit_correct({"output": "no idea", "target": "3"})
    assert first_digit_correct({"output": "9", "target": "3", "first_digit_correct": True})  # grader's own
    assert not first_digit_correct({"output": "3", "target": "3", "first_digit": False})  # grader's own
    samples = [
        {"operation": "+", "digits": 1, "output": "7", "target": "7", "correct": True},
        {"operation": "+", "digits": 1, "output": "8", "target": "9", "correct": False},
        {"operation": "+", "digits": 2, "output": "57", "target": "51", "correct": False},
        {"operation": "*", "digits": 2, "output": "100", "target": "144", "correct": False},
        {"output": "1", "target": "1", "correct": True},  # not an arithmetic sample
    ]
    table = arithmetic_breakdown(samples)
    assert list(table.columns) == ["operation", "digits", "n", "accuracy", "first_digit_accuracy"]
    rows = {(r.operation, r.digits): (r.n, r.accuracy, r.first_digit_accuracy) for r in table.itertuples()}
    assert rows == {("*", 2): (1, 0.0, 1.0), ("+", 1): (2, 0.5, 0.5), ("+", 2): (1, 0.0, 1.0)}
    assert arithmetic_breakdown([{"output": "1"}]).empty


# ----------------------------------------------------------------------------- report fixtures

BASE = {"model": "tiny", "ratio": 0.0, "recovery": "none", "method": "dense"}
VARIANTS = [("bi", 0.25, "none"), ("bi", 0.25, "sgr"), ("reverse", 0.25, "none"), ("bi", 0.5, "none")]


def write_grid(directory) -> list:
    paths = []
    for task in TASKS:
        results = [sampled_result(task, "dense", 0.0, "none", 0.8, False)]
        for method, ratio, recovery in VARIANTS:
            # Classification keeps more than generation; sgr recovers; more pruning hurts more.
            keep = (0.9 if TASKS[task] == "classification" else 0.5) - ratio * 0.4 + (0.2 if recovery == "sgr" else 0)
            results.append(sampled_result(task, method, ratio, recovery, 0.8 * keep, recovery == "none"))
        for result in results:
            path = directory / f"{task}__{result['method']}__{result['ratio']}__{result['recovery']}.json"
            write_json(path, result)
            paths.append(path)
    return paths


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    paths = write_grid(root / "results")
    aggregate(paths, root / "out", bootstrap_samples=300, seed=0)
    return root


def test_type_retention_is_a_ratio_of_means_over_informative_tasks(report_dir):
    out = report_dir / "out"
    per_task = pd.read_csv(out / "retention.csv")
    per_type = pd.read_csv(out / "retention_by_type.csv")
    assert len(per_task) == len(VARIANTS) * len(TASKS)
    counted = per_task[per_task["informative"]]
    assert (counted["ci_low"] <= counted["retention"] + 1e-9).all()
    assert (counted["retention"] <= counted["ci_high"] + 1e-9).all()
    assert (per_task["chance"] == 0).all()  # the fixture records no choices: taken as 0
    for row in per_type.itertuples():
        tasks = per_task[
            (per_task["method"] == row.method)
            & (per_task["ratio"] == row.ratio)
            & (per_task["recovery"] == row.recovery)
            & (per_task["type"] == row.type)
        ]
        assert row.tasks + row.excluded == len(tasks) == (2 if row.type == "classification" else 3)
        assert row.tasks == tasks["informative"].sum() > 0
        used = tasks[tasks["informative"]]
        # With chance 0 the normalised ratio of means is mean(variant) / mean(dense).
        assert row.retention == pytest.approx(used["value"].mean() / used["dense_value"].mean())
        assert row.drop_points == pytest.approx((used["dense_value"] - used["value"]).mean() * 100)
        assert row.ci_low <= row.retention <= row.ci_high and row.drop_low <= row.drop_points <= row.drop_high
        assert row.nan_draws == 0 and row.draws == 300


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_retention_csv_is_reproducible_and_order_free(report_dir, tmp_path):
    paths = sorted((report_dir / "results").glob("*.json"))
    random.Random(3).shuffle(paths)
    aggregate(paths, tmp_path / "again", bootstrap_samples=300, seed=0)
    first = pd.read_csv(report_dir / "out" / "retention.csv")
    again = pd.read_csv(tmp_path / "again" / "retention.csv")
    key = ["method", "ratio", "recovery", "task"]
    pd.testing.assert_frame_equal(
        first.sort_values(key).reset_index(drop=True), again.sort_values(key).reset_index(drop=True)
    )


def test_report_first_screen_states_the_answer(report_dir):
    report = (report_dir / "out" / "report.md").read_text()
    first_screen = report.split("## Retention by task type, every ratio", 1)[0]
    assert first_screen.startswith("# layerprune report")
    findings = first_screen.split("## Findings", 1)[1].split("### SGR at each ratio", 1)[0]
    rows = [line for line in findings.splitlines() if line.startswith("| tiny |")]
    assert [row.split(" | ")[1] for row in rows] == [
        "(i) generation loses more than classification at equal ratio",
        "(ii) SGR recovers generation more than the data control",
        "(ii) SGR recovers generation more than no recovery",
        "(iii) recovery shrinks as the ratio grows",
    ]
    # No data recovery in the fixture, and only bi has two ratios with sgr... and sgr only at 0.25.
    assert "**not tested** | not tested: no data variant with generative retention |" in rows[1]
    assert "**not tested** | not tested: one ratio only" in rows[3]
    by_ratio = first_screen.split("### SGR at each ratio", 1)[1].split("## Retention at 0.25 of the layers removed")[0]
    assert [row.split(" | ")[1:4] for row in by_ratio.splitlines() if row.startswith("| tiny |")] == [
        ["bi", "0.25", "sgr − none"]
    ]
    table = [line for line in first_screen.split("## Retention at", 1)[1].splitlines() if line.startswith("|")]
    assert table[0] == (
        "| model | method | ratio | classification · none | classification · sgr | generative · none "
        "| generative · sgr |"
    )
    assert [line.split(" | ")[1] for line in table[2:]] == ["bi", "reverse"]
    assert table[3].startswith("| tiny | reverse | 0.25 (median of ")
    assert table[3].count("| – |") == 2  # no reverse+sgr run
    assert all("] · drop " in line and " pts" in line for line in table[2:])  # retention [CI] · drop [CI]
    assert "![retention against the pruning ratio](plots/retention_by_type.png)" in first_screen
    assert len(first_screen.splitlines()) < 42  # the one-seed paragraph (issue 30) is two of them


def test_report_sections_diagnostics_and_pngs(report_dir):
    out = report_dir / "out"
    report = (out / "report.md").read_text()
    for png in ["retention_by_type", "error_buckets", "degeneration", "tiny__mc", "tiny__xsum"]:
        payload = (out / "plots" / f"{png}.png").read_bytes()
        assert payload.startswith(PNG_MAGIC) and len(payload) > 5000, png
        assert f"plots/{png}.png" in report
    buckets = pd.read_csv(out / "error_buckets.csv")
    assert set(buckets["task"]) == {"humaneval_plus"} and len(buckets) == 1 + len(VARIANTS)
    assert (buckets[list(ERROR_BUCKETS)].sum(axis=1) == N).all()
    arithmetic = pd.read_csv(out / "arithmetic.csv")
    assert set(arithmetic["operation"]) == {"+", "*", "-"} and set(arithmetic["digits"]) == {1, 2}
    degeneration_table = pd.read_csv(out / "degeneration.csv")
    assert set(degeneration_table["task"]) == {"humaneval_plus", "arith", "xsum"}
    looped = degeneration_table[(degeneration_table["recovery"] == "none") & (degeneration_table["method"] != "dense")]
    dense = degeneration_table[degeneration_table["method"] == "dense"]
    assert looped["rep_2"].min() > dense["rep_2"].max()  # the fixture's looping outputs show up
    for heading in ["### Degeneration of generated text", "### Code error buckets", "### Arithmetic by operation"]:
        assert heading in report


def test_report_degrades_without_optional_fields(tmp_path):
    """Old-style results (no samples beyond id/correct, one task type): notes instead of failures."""
    paths = []
    for method, ratio, value in [("dense", 0.0, 0.5), ("bi", 0.25, 0.25)]:
        result = {**BASE, "method": method, "ratio": ratio, "task": "mc", "value": value, "metric": "accuracy"}
        result["samples"] = [{"id": i, "correct": i < value * 8} for i in range(8)]
        write_json(tmp_path / f"{method}.json", result)
        paths.append(tmp_path / f"{method}.json")
    write_json(tmp_path / "nosamples.json", {**BASE, "method": "bi", "ratio": 0.5, "task": "mc", "value": 0.1})
    aggregate([*paths, tmp_path / "nosamples.json"], tmp_path / "out", bootstrap_samples=50)
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert "_No code task recorded per-sample `error_bucket`._" in report
    assert "Arithmetic by operation" not in report  # no arithmetic task ran: no empty section (issue 30)
    assert "_No generative outputs._" in report
    for png in ["retention_by_type", "degeneration"]:
        assert (out / "plots" / f"{png}.png").read_bytes().startswith(PNG_MAGIC)
    assert not (out / "plots" / "error_buckets.png").exists()  # the fixture's grader is no code grader
    per_task = pd.read_csv(out / "retention.csv")
    no_samples = per_task[per_task["ratio"] == 0.5].iloc[0]
    assert no_samples["value_ratio"] == pytest.approx(0.2) and no_samples["n"] == 0
    assert np.isnan(no_samples["retention"]) and np.isnan(no_samples["drop_points"])


def test_retention_without_dense_is_nan():
    result = {**BASE, "method": "bi", "ratio": 0.25, "task": "mc", "type": "classification", "value": 0.5}
    result["samples"] = [{"id": 0, "correct": True}]
    stats = retention([result], BootstrapSettings(samples=10))
    assert np.isnan(stats.per_task.loc[0, "retention"]) and np.isnan(stats.per_type.loc[0, "ci_low"])
    assert stats.per_type.loc[0, "tasks"] == 0 and stats.per_type.loc[0, "excluded"] == 1


def test_headline_plot_with_undefined_generative_retention(tmp_path):
    """A dense score of 0 leaves retention undefined: the report still renders (the tiny pipeline's case)."""
    paths = []
    for task, task_type in [("mc", "classification"), ("gen", "generative")]:
        for method, ratio, correct in [("dense", 0.0, task_type == "classification"), ("bi", 0.25, False)]:
            samples = [{"id": i, "correct": correct and i % 2 == 0, "output": "x y"} for i in range(6)]
            value = sum(s["correct"] for s in samples) / 6
            result = {**BASE, "method": method, "ratio": ratio, "task": task, "type": task_type, "value": value}
            write_json(tmp_path / f"{task}_{method}.json", {**result, "samples": samples})
            paths.append(tmp_path / f"{task}_{method}.json")
    aggregate(paths, tmp_path / "out", bootstrap_samples=20)
    assert (tmp_path / "out" / "plots" / "retention_by_type.png").read_bytes().startswith(PNG_MAGIC)
    report = (tmp_path / "out" / "report.md").read_text()
    # mc: dense 3/6, pruned 0/6: retention 0 in every draw, but 3 disagreements in 6 items cannot pin it down:
    # the exact bound widens the interval (issue 30: never zero-width); gen: dense 0 -> not informative.
    assert "| tiny | bi | 0.25 (the only ratio) | 0.00 [" in report and "0.00 [0.00, 0.00]" not in report
    assert "· drop 50.0 [" in report and "| – (no informative task) |" in report
    assert "`gen` (generative; dense lower bound 0.000 ≤ chance 0.000 + margin 0.05)" in report


# ----------------------------------------------------------------------------- figures


def test_every_figure_has_a_vector_copy_and_one_style_per_recovery(report_dir, tmp_path):
    """Every PNG has an SVG beside it; each recovery has the same colour everywhere, never matplotlib's cycle.

    Old code: no SVG; the headline drew none = C0 (blue) and sgr = C1, the per-task plots the
    recoveries in groupby order, so colours swapped between figures.
    """
    from layerprune.report.tables import RECOVERY_STYLES

    plots = report_dir / "out" / "plots"
    pngs = sorted(plots.glob("*.png"))
    assert pngs and all(png.with_suffix(".svg").is_file() for png in pngs)
    sgr, none = RECOVERY_STYLES["sgr"][0].lower(), RECOVERY_STYLES["none"][0].lower()
    for name in ["retention_by_type", "tiny__arith", "tiny__mc", "degeneration"]:
        svg = (plots / f"{name}.svg").read_text().lower()
        assert sgr in svg and none in svg, name
        assert "#1f77b4" not in svg and "#ff7f0e" not in svg, name  # matplotlib's C0 and C1
    headline = (plots / "retention_by_type.svg").read_text()
    for label in ["fraction of layers removed", "retention (dense = 1, chance = 0)", "chance"]:
        assert label in headline, label
    arith = (plots / "tiny__arith.svg").read_text()
    assert "exact match" in arith and "exact_match" not in arith and "chance" in arith
    # one panel per (model, task) in the degeneration figure, never a mean over tasks
    degeneration_svg = (plots / "degeneration.svg").read_text()
    assert all(f"tiny · {task}" in degeneration_svg for task in ["arith", "xsum", "humaneval_plus"])


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_layers_removed_axis_and_loss_curves_titled_with_all_four(tmp_path):
    """With scores (L = 30) the ratio axes show k; recovery.json loss curves get one panel each, titled in full."""
    paths = write_grid(tmp_path / "results")
    removal = {str(k): list(range(30 - k, 30)) for k in range(1, 30)}
    write_json(tmp_path / "scores/tiny/bi.json", {"method": "bi", "num_layers": 30, "scores": list(range(30)),
                                                  "removal": removal})  # fmt: skip
    recovered = tmp_path / "recovered/tiny/bi/0.25/sgr"
    curve = [{"step": s, "loss": 3.0 - 0.2 * s} for s in range(1, 6)]
    write_json(recovered / "recovery.json", {"loss_curve": curve, "eval_loss_curve": [{"step": 5, "eval_loss": 2.5}]})
    aggregate(
        paths, tmp_path / "out", score_paths=[tmp_path / "scores/tiny/bi.json"], bootstrap_samples=50,
        recovered=[recovered],
    )  # fmt: skip
    plots = tmp_path / "out" / "plots"
    headline = (plots / "retention_by_type.svg").read_text()
    # k = round(r * L), halves up: 0.25 -> 8 of 30 layers, 0.5 -> 15
    assert "layers removed (of 30)" in headline and ">8</text>" in headline and ">15</text>" in headline
    loss = (plots / "recovery_loss.svg").read_text()
    assert "tiny · bi · 0.25 · sgr" in loss and "held-out eval" in loss
    report = (tmp_path / "out" / "report.md").read_text()
    assert "![recovery loss](plots/recovery_loss.png)" in report and "Error bars: ±1 standard error" in report
    with pytest.raises(FileNotFoundError, match="recovery.json"):
        aggregate(paths, tmp_path / "bad", bootstrap_samples=20, recovered=[tmp_path / "nowhere/tiny/bi/0.25/sgr"])


def test_error_bucket_figure_only_when_code_tasks_ran(tmp_path):
    """No code task: no error_buckets.png (old code: a text placeholder PNG); a stale one is removed."""
    paths = [p for p in write_grid(tmp_path / "results") if "humaneval" not in p.name]
    stale = tmp_path / "out" / "plots" / "error_buckets.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(PNG_MAGIC)
    aggregate(paths, tmp_path / "out", bootstrap_samples=20)
    assert not stale.exists() and not stale.with_suffix(".svg").exists()
    assert "error_buckets.png" not in (tmp_path / "out" / "report.md").read_text()


def test_html_report_captions_are_the_report_captions():
    """workflow/report/<figure>.rst says what report.md says under the figure (one text, the level from the config)."""
    import textwrap
    from pathlib import Path

    from layerprune.report.tables import CAPTIONS, COVERAGE

    level = "{{ (snakemake.config['report']['confidence'] * 100) | round | int }}%"
    # what the intervals cover follows recovery.seeds, as report.md's caption follows the results' seeds
    coverage = (
        f"{{{{ '{COVERAGE[True]}' if (snakemake.config['recovery'].get('seeds') or []) | length > 1 "
        f"else '{COVERAGE[False]}' }}}}"
    )
    folder = Path(__file__).resolve().parents[1] / "workflow" / "report"
    for name, text in CAPTIONS.items():
        expected = textwrap.fill(text.replace("{level}", level).replace("{coverage}", coverage), 118) + "\n"
        assert (folder / f"{name}.rst").read_text() == expected, name


# ----------------------------------------------------------------------------- issue 30: report details


def test_error_bucket_figure_draws_no_training_seed_bucket(tmp_path):
    """Old code: every column but the variant's keys and the task was a bucket, so a training seed of 5 drew a
    third of a bar as "training seed" and named it in the legend."""
    from layerprune.report.tables import bucket_categories, plot_error_buckets

    row = {"model": "m", "method": "bi", "ratio": 0.2, "recovery": "sgr", "training_seed": 5, "task": "code"}
    buckets = pd.DataFrame([row | dict.fromkeys(ERROR_BUCKETS, 0) | {"pass": 3, "wrong_answer": 2}])
    assert bucket_categories(buckets) == list(ERROR_BUCKETS)
    assert plot_error_buckets(buckets, tmp_path / "buckets.png", code_ran=True)
    svg = (tmp_path / "buckets.svg").read_text()
    assert "training seed" not in svg and "training_seed" not in svg
    assert "wrong answer" in svg and "bi 0.2 sgr seed 5" in svg  # the seed is in the bar's label, not a bucket


def test_tables_print_no_pandas_na_and_metric_axes_start_at_zero():
    from layerprune.report.aggregate import _cell, metric_limits

    assert _cell(pd.NA) == "" and _cell(None) == "" and _cell(float("nan")) == "" and _cell(0.25) == "0.250"
    assert "<NA>" not in _cell(pd.Series([1, None], dtype="Int64").iloc[1])
    # pass@1 of 0.0 ± a stderr: matplotlib's own limits went below 0
    assert metric_limits((-0.08, 0.6), pd.Series([0.0, 0.2, 0.5])) == (0.0, 0.6)
    assert metric_limits((-2.0, 3.0), pd.Series([-1.0, 2.0])) == (-2.0, 3.0)  # a metric that can be negative


def test_the_report_counts_ratio_contrasts_and_lists_the_skipped_cells(tmp_path):
    """Ratio 0.1 is evaluated on two tasks, 0.3 on one: no paired contrast between them. Old code dropped the
    cell silently; now it is listed with its task sets, and the contrasts made are counted."""
    from layerprune.report.retention import NOT_TESTED, ratio_contrasts

    paths = []
    for task, n in (("g1", 40), ("g2", 40)):
        entries = (
            [("dense", 0.0, 30)] + [("bi", 0.1, 25), ("bi", 0.2, 20)] + ([("bi", 0.3, 10)] if task == "g1" else [])
        )
        for method, ratio, hits in entries:
            samples = [{"id": i, "correct": i < hits, "output": "x"} for i in range(n)]
            result = {**BASE, "method": method, "ratio": ratio, "task": task, "type": "generative",
                      "metric": "accuracy", "value": hits / n, "samples": samples}  # fmt: skip
            write_json(tmp_path / f"{task}_{ratio}.json", result)
            paths.append(tmp_path / f"{task}_{ratio}.json")
    aggregate(paths, tmp_path / "out", bootstrap_samples=200)
    frame = ratio_contrasts(retention([__import__("json").loads(p.read_text()) for p in paths], BootstrapSettings(200)))
    assert list(frame["verdict"] == NOT_TESTED) == [False, True]
    assert frame["detail"].iloc[1] == "not made: the tasks counted differ (0.2: g1, g2; 0.3: g1)"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "1 contrast made, 1 decided, each at 95% without correction for multiple comparisons" in report
    assert "1 cell skipped (not a paired contrast):" in report
    assert (
        "- tiny · bi · none · generative, 0.3 − 0.2: not made: the tasks counted differ (0.2: g1, g2; 0.3: g1)."
        in report
    )


def test_a_task_left_out_reads_not_counted_with_an_interval_that_is_not_zero_width():
    """Old label: "excluded · drop 0.0 [0.0, 0.0]" for a task at chance whose variant agreed on every item."""
    from layerprune.report.tables import task_retention_table

    entries = []
    for method, ratio in (("dense", 0.0), ("bi", 0.25)):
        samples = [{"id": i, "correct": i < 1} for i in range(10)]  # 1 of 10: not above chance + margin
        entries.append({**BASE, "method": method, "ratio": ratio, "task": "t", "type": "generative",
                        "metric": "accuracy", "value": 0.1, "samples": samples})  # fmt: skip
    table = task_retention_table(retention(entries, BootstrapSettings(samples=100)).per_task)
    assert table["t"].tolist() == ["not counted (dense near chance) · drop 0.0 [-30.8, 30.8] pts"]
