"""The report's tables, plots and first screen; the statistics themselves live in `retention.py`.

Only the result JSONs are read; any per-sample field beyond `id` and `correct` (a numeric
`score`, `error_bucket`, `digits`/`operation`, `output`, the choices' `loglikelihoods`) is
optional, and a missing one drops the matching table or plot to a short note instead of failing
the report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from layerprune.diagnostics import ERROR_BUCKETS, REP_N, arithmetic_breakdown, degeneration, error_bucket_counts
from layerprune.io import atomic_path
from layerprune.retention import (  # noqa: F401 - re-exported: the report's settings and statistics
    NOT_REPRODUCED,
    NOT_TESTED,
    REPRODUCED,
    TYPES,
    VARIANT,
    BootstrapSettings,
    Retention,
    findings,
    recovery_by_ratio,
    retention,
    sample_scores,
)
from layerprune.usage import log_of_benchmark, read_usage

HEADLINE_PNG = "plots/retention_by_type.png"
ERROR_BUCKETS_PNG = "plots/error_buckets.png"
DEGENERATION_PNG = "plots/degeneration.png"


def diagnostics_tables(
    results: list[dict[str, Any]], self_bleu_max_texts: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(degeneration per generative result, error-bucket counts per code result, arithmetic breakdown)."""
    degeneration_rows, bucket_rows, arithmetic_rows = [], [], []
    for result in results:
        variant = {k: result[k] for k in VARIANT} | {"task": result["task"]}
        samples = result.get("samples") or []
        if result.get("type") == "generative":
            row = degeneration(samples, max_texts=self_bleu_max_texts, seed=seed)
            if row["n_texts"]:
                degeneration_rows.append(variant | row)
        if any(s.get("error_bucket") or s.get("error_buckets") for s in samples):
            bucket_rows.append(variant | error_bucket_counts(samples))
        breakdown = arithmetic_breakdown(samples)
        for row in breakdown.to_dict("records"):
            arithmetic_rows.append(variant | row)
    degeneration_frame = pd.DataFrame(
        degeneration_rows, columns=[*VARIANT, "task", *(f"rep_{n}" for n in REP_N), "self_bleu", "n_texts"]
    )
    buckets = pd.DataFrame(bucket_rows)
    if len(buckets):
        buckets = buckets.fillna(0)
        extra = [c for c in buckets.columns if c not in [*VARIANT, "task", *ERROR_BUCKETS]]
        buckets = buckets[[*VARIANT, "task", *ERROR_BUCKETS, *extra]]
    else:
        buckets = pd.DataFrame(columns=[*VARIANT, "task", *ERROR_BUCKETS])
    arithmetic = pd.DataFrame(
        arithmetic_rows, columns=[*VARIANT, "task", "operation", "digits", "n", "accuracy", "first_digit_accuracy"]
    )
    return degeneration_frame, buckets, arithmetic


# ----------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, out_path: Path) -> None:
    plt = _pyplot()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def _note(out_path: Path, text: str) -> None:
    """A small figure that says why there is nothing to plot (the file is a declared output)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 1.2))
    axis.axis("off")
    axis.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, wrap=True)
    _save(figure, out_path)


def _variant_label(row) -> str:
    return f"{row['method']} {row['ratio']:g} {row['recovery']}"


def plot_retention_by_ratio(per_type: pd.DataFrame, out_path: Path) -> None:
    """The headline plot: retention against the pruning ratio, one line per recovery with its interval band.

    One panel per task type (columns) for each (model, method) (rows); the dense model is the point
    (0, 1). A ratio whose type has no informative task has no point.
    """
    rows = per_type[per_type["tasks"] > 0] if len(per_type) else per_type
    if not len(rows):
        _note(out_path, "no task type has an informative task (see the report's excluded tasks)")
        return
    plt = _pyplot()
    panels = sorted({(r.model, r.method) for r in rows.itertuples()})
    types = [t for t in TYPES if t in set(rows["type"])] + sorted(set(rows["type"]) - set(TYPES))
    recoveries = sorted(rows["recovery"].unique(), key=lambda r: (r != "none", r))
    colors = {r: f"C{i}" for i, r in enumerate(recoveries)}
    ratios = sorted(rows["ratio"].unique())
    top = max(1.2, float(np.nanmax(rows[["retention", "ci_high"]].to_numpy(dtype=float))) + 0.05)
    bottom = min(0.0, float(np.nanmin(rows[["retention", "ci_low"]].to_numpy(dtype=float))) - 0.05)
    figure, axes = plt.subplots(
        len(panels),
        len(types),
        figsize=(4.2 * len(types), 3.2 * len(panels) + 0.9),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for panel_axes, (model, method) in zip(axes, panels, strict=True):
        for axis, task_type in zip(panel_axes, types, strict=True):
            cell = rows[(rows["model"] == model) & (rows["method"] == method) & (rows["type"] == task_type)]
            for recovery in recoveries:
                line = cell[cell["recovery"] == recovery].sort_values("ratio")
                if not len(line):
                    continue
                xs = [0.0, *line["ratio"]]
                axis.plot(xs, [1.0, *line["retention"]], marker="o", color=colors[recovery], label=recovery)
                low, high = (
                    [1.0, *line["ci_low"].fillna(line["retention"])],
                    [1.0, *line["ci_high"].fillna(line["retention"])],
                )
                axis.fill_between(xs, low, high, color=colors[recovery], alpha=0.15, linewidth=0)
            axis.axhline(1, color="grey", linestyle="--", linewidth=0.8)
            axis.axhline(0, color="black", linewidth=0.6)
            tasks = int(cell["tasks"].max()) if len(cell) else 0
            axis.set_title(f"{model} · {method} · {task_type} ({tasks} task{'s' if tasks != 1 else ''})", fontsize=9)
            axis.set_xticks([0.0, *ratios], ["dense", *(f"{r:g}" for r in ratios)])
            axis.set_xlim(-0.01, ratios[-1] + 0.02)
            axis.set_ylim(bottom, top)
            axis.set_xlabel("fraction of layers removed")
            axis.grid(alpha=0.3)
        panel_axes[0].set_ylabel("retention (dense = 1)")
    handles = [plt.Line2D([], [], color=colors[r], marker="o", label=f"recovery: {r}") for r in recoveries]
    figure.legend(handles=handles, loc="outside upper center", ncol=len(handles), fontsize=8, frameon=False)
    figure.supxlabel(
        "Retention = mean chance-normalised score ÷ the dense model's, informative tasks only; bands: paired bootstrap",
        fontsize=8,
    )
    _save(figure, out_path)


def plot_error_buckets(buckets: pd.DataFrame, out_path: Path) -> None:
    """Stacked bars: the share of each code error bucket, one bar per variant, a panel per (model, task)."""
    if not len(buckets):
        _note(out_path, "no code task with per-sample error_bucket")
        return
    plt = _pyplot()
    categories = [c for c in buckets.columns if c not in [*VARIANT, "task"]]
    panels = sorted(buckets.groupby(["model", "task"]).groups)
    width = max(6.0, 0.45 * buckets.groupby(["model", "task"]).size().max() + 3)
    figure, axes = plt.subplots(len(panels), 1, figsize=(width, 3.4 * len(panels)), squeeze=False)
    colors = {c: f"C{i}" for i, c in enumerate(categories)}
    for axis, (model, task) in zip(axes[:, 0], panels, strict=True):
        rows = buckets[(buckets["model"] == model) & (buckets["task"] == task)].copy()
        rows["_dense"] = rows["method"] != "dense"
        rows = rows.sort_values(["_dense", "method", "ratio", "recovery"])
        labels = ["dense" if r["method"] == "dense" else _variant_label(r) for _, r in rows.iterrows()]
        totals = rows[categories].sum(axis=1).replace(0, np.nan)
        bottom = np.zeros(len(rows))
        for category in categories:
            share = (rows[category] / totals).fillna(0).to_numpy()
            axis.bar(range(len(rows)), share, bottom=bottom, color=colors[category], label=category)
            bottom += share
        axis.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
        axis.set_ylabel("share of samples")
        axis.set_title(f"{model} · {task}")
        axis.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    figure.tight_layout()
    _save(figure, out_path)


def plot_degeneration(frame: pd.DataFrame, out_path: Path) -> None:
    """Rep-2/3/4 and self-BLEU (mean over generative tasks) against the ratio; dense at ratio 0."""
    if not len(frame):
        _note(out_path, "no generative outputs to measure degeneration on")
        return
    plt = _pyplot()
    measures = [*(f"rep_{n}" for n in REP_N), "self_bleu"]
    mean = frame.groupby(VARIANT)[measures].mean().reset_index()
    models = sorted(mean["model"].unique())
    size = (3.6 * len(measures), 3.2 * len(models))
    figure, axes = plt.subplots(len(models), len(measures), figsize=size, squeeze=False)
    for row_axes, model in zip(axes, models, strict=True):
        rows = mean[mean["model"] == model]
        dense = rows[rows["method"] == "dense"]
        pruned = rows[rows["method"] != "dense"]
        for axis, measure in zip(row_axes, measures, strict=True):
            for (method, recovery), group in pruned.groupby(["method", "recovery"]):
                group = group.sort_values("ratio")
                xs, ys = list(group["ratio"]), list(group[measure])
                if len(dense):
                    xs, ys = [0.0, *xs], [float(dense[measure].iloc[0]), *ys]
                axis.plot(xs, ys, marker="o", label=f"{method} · {recovery}")
            if len(dense):
                axis.axhline(float(dense[measure].iloc[0]), color="grey", linestyle="--", linewidth=1)
            axis.set_title(f"{model} · {measure.replace('_', '-')}", fontsize=9)
            axis.set_xlabel("pruning ratio")
            axis.grid(alpha=0.3)
        if row_axes[-1].get_legend_handles_labels()[0]:  # a dense-only model has no lines to name
            row_axes[-1].legend(fontsize=7)
    figure.tight_layout()
    _save(figure, out_path)


# ----------------------------------------------------------------------------- markdown


def _with_ci(value: float, low: float, high: float, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return "–"
    if math.isnan(low):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def retention_cell(row: Any) -> str:
    """`retention [CI] · drop points [CI]`, or `–` with the reason when no task counted."""
    if not getattr(row, "tasks", 1):
        return "– (no informative task)"
    if math.isnan(row.retention) and math.isnan(row.drop_points):
        return "–"
    drop = _with_ci(row.drop_points, row.drop_low, row.drop_high, 1)
    return f"{_with_ci(row.retention, row.ci_low, row.ci_high)} · drop {drop} pts"


def type_summary_table(per_type: pd.DataFrame, ratio: float | None = None) -> pd.DataFrame:
    """Variants as rows, one `retention [CI] · drop [CI]` column per task type (at one ratio, or all)."""
    rows = per_type if ratio is None else per_type[np.isclose(per_type["ratio"], ratio)]
    if not len(rows):
        return pd.DataFrame(columns=VARIANT)
    rows = rows.assign(cell=[retention_cell(r) for r in rows.itertuples()])
    wide = rows.pivot_table(index=VARIANT, columns="type", values="cell", aggfunc="first").reset_index()
    wide.columns.name = None
    wide = _none_first(wide)
    wide["ratio"] = wide["ratio"].map("{:g}".format)
    return wide.fillna("–")


def _none_first(wide: pd.DataFrame) -> pd.DataFrame:
    """Rows by model, method, ratio, then recovery with `none` (the baseline) first."""
    order = wide["recovery"].map(lambda r: (r != "none", r))
    return wide.assign(_order=order).sort_values(["model", "method", "ratio", "_order"]).drop(columns="_order")


def task_retention_table(per_task: pd.DataFrame) -> pd.DataFrame:
    """Variants as rows, a column per task: retention [CI] for informative tasks, else the drop only."""
    if not len(per_task):
        return pd.DataFrame(columns=VARIANT)

    def cell(row: Any) -> str:
        if row.informative:
            return retention_cell(row)
        if math.isnan(row.drop_points):
            return "–"
        return f"excluded · drop {_with_ci(row.drop_points, row.drop_low, row.drop_high, 1)} pts"

    rows = per_task.assign(cell=[cell(r) for r in per_task.itertuples()])
    wide = rows.pivot_table(index=VARIANT, columns="task", values="cell", aggfunc="first").reset_index()
    wide.columns.name = None
    wide = _none_first(wide)
    wide["ratio"] = wide["ratio"].map("{:g}".format)
    return wide.fillna("–")


def headline_ratio(per_type: pd.DataFrame, requested: float | None) -> float | None:
    """The ratio of the first-screen table: `requested`, else the median configured ratio."""
    ratios = sorted(per_type["ratio"].unique()) if len(per_type) else []
    if not ratios:
        return None
    if requested is not None:
        return min(ratios, key=lambda r: abs(r - requested))
    return ratios[(len(ratios) - 1) // 2]


def headline_table(per_type: pd.DataFrame, ratio: float | None) -> pd.DataFrame:
    """The first-screen table at one ratio: (model, method) rows, a `type · recovery` column each.

    Compact on purpose: the paper's grid (3 models x 3 methods x 3 recoveries) is 9 rows.
    """
    if ratio is None or not len(per_type):
        return pd.DataFrame(columns=["model", "method"])
    rows = per_type[np.isclose(per_type["ratio"], ratio)]
    rows = rows.assign(
        cell=[retention_cell(r) for r in rows.itertuples()],
        column=[f"{r.type} · {r.recovery}" for r in rows.itertuples()],
    )
    wide = rows.pivot_table(index=["model", "method"], columns="column", values="cell", aggfunc="first")
    recoveries = sorted(rows["recovery"].unique(), key=lambda r: (r != "none", r))
    types = [t for t in TYPES if t in set(rows["type"])] + sorted(set(rows["type"]) - set(TYPES))
    order = [f"{t} · {r}" for t in types for r in recoveries if f"{t} · {r}" in wide.columns]
    wide = wide[order].reset_index()
    wide.columns.name = None
    return wide.fillna("–")


PAPER_SIGN = {"i": "< 0", "ii": "> 0", "iii": "> 0", "kd": "no claim; > 0 = distillation recovers more"}


def findings_table(frame: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """The findings as the first screen shows them: one row per (model, finding)."""
    rows = []
    for row in frame.itertuples(index=False):
        tested = row.verdict != NOT_TESTED
        rows.append(
            {
                "model": row.model,
                "finding": f"({row.finding}) {row.claim}",
                "statistic": f"{row.statistic} (paper: {PAPER_SIGN[row.finding]})",
                f"estimate [{confidence:.0%} CI]": _with_ci(row.estimate, row.ci_low, row.ci_high),
                "verdict": f"**{row.verdict}**",
                "basis": row.detail if tested else f"not tested: {row.detail}",
            }
        )
    return pd.DataFrame(rows)


def recovery_ratio_table(frame: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """sgr − control generative retention at each (model, method, ratio), as the report prints it."""
    return pd.DataFrame(
        {
            "model": frame["model"],
            "method": frame["method"],
            "ratio": frame["ratio"].map("{:g}".format),
            "contrast": frame["contrast"],
            f"estimate [{confidence:.0%} CI]": [
                _with_ci(r.estimate, r.ci_low, r.ci_high) for r in frame.itertuples(index=False)
            ],
            "verdict": frame["verdict"],
        }
    )


def lowest_ratio_lines(frame: pd.DataFrame) -> list[str]:
    """Plain words on SGR at each method's lowest ratio, where recovery has the least to win back."""
    lines = []
    for (model, method, contrast), group in frame.groupby(["model", "method", "contrast"], sort=True):
        row = group.sort_values("ratio").iloc[0]
        if row["verdict"] == REPRODUCED:
            what = "SGR recovers more, and the interval decides it"
        elif row["verdict"] == NOT_REPRODUCED:
            what = "SGR recovers less, and the interval decides it (not reproduced)"
        elif row["verdict"] == NOT_TESTED:
            what = "there is no retention to compare"
        else:
            what = "this run cannot tell whether SGR helps (undecided)"
        lines.append(f"- **{model}** · {method} · {contrast} at the lowest ratio, {row['ratio']:g}: {what}.")
    return lines


def excluded_lines(stats: Retention) -> list[str]:
    """One line per model naming the tasks left out of the type retention, and why."""
    tasks = stats.tasks
    lines = []
    for model, group in tasks.groupby("model", sort=True):
        left_out = group[~group["informative"].astype(bool)]
        counted = group[group["informative"].astype(bool)]
        if not len(left_out):
            lines.append(f"- **{model}**: every task counts ({', '.join(counted['task'])}).")
            continue
        parts = [f"`{r.task}` ({r.type}; {r.reason})" for r in left_out.itertuples()]
        lines.append(f"- **{model}**: left out {'; '.join(parts)}.")
    return lines


def nan_draw_lines(per_type: pd.DataFrame) -> list[str]:
    """A line for every type retention whose resamples were not all defined (never silent)."""
    if not len(per_type):
        return []
    partial = per_type[per_type["nan_draws"].fillna(0) > 0]
    return [
        f"- {r.model} {r.method} {r.ratio:g} {r.recovery} · {r.type}: {int(r.nan_draws)} of {int(r.draws)} resamples "
        "had a dense mean at or below chance (no retention); its interval is over the rest."
        for r in partial.itertuples()
    ]


# ----------------------------------------------------------------------------- where the time went

BENCHMARK_COLUMNS = [
    "s",
    "h:m:s",
    "max_rss",
    "max_vms",
    "max_uss",
    "max_pss",
    "io_in",
    "io_out",
    "mean_load",
    "cpu_time",
]
TIME_COLUMNS = ["stage", "jobs", "cpu_s", "wall_s", "cpu_share", "max_rss_mb", "sampled_jobs"]


def benchmark_stage(path: Path) -> str:
    """The rule a Snakemake benchmark file belongs to: the folder right under `benchmarks/`."""
    parts = path.parts
    if "benchmarks" not in parts[:-1] or parts.index("benchmarks") >= len(parts) - 2:
        raise ValueError(f"{path}: a benchmark file must lie under benchmarks/<rule>/")
    return parts[parts.index("benchmarks") + 1]


def time_table(benchmark_paths: list[str | Path]) -> pd.DataFrame:
    """Per stage (rule): jobs, CPU seconds, wall seconds (summed over jobs), share of CPU, peak RSS (MB).

    Wall seconds are Snakemake's `benchmark:` TSVs (s, h:m:s, max_rss, ..., cpu_time; "NA" or "-"
    where Snakemake measured nothing; a file with several rows, `repeat`, counts each row as a run).
    CPU seconds and peak RSS come from the usage line each `layerprune` command leaves at the end
    of its log (logs/<rule>/... beside benchmarks/<rule>/...; layerprune.usage): Snakemake only
    samples them, every 30 s after a job's first 15 s. A job whose log has no such line falls back
    to Snakemake's samples and is counted in `sampled_jobs`.
    """
    per_stage: dict[str, dict[str, float]] = {}
    for raw_path in benchmark_paths:
        path = Path(raw_path)
        stage = benchmark_stage(path)
        try:
            frame = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as error:
            raise ValueError(f"{path}: not a Snakemake benchmark TSV ({error})") from error
        missing = [c for c in ("s", "max_rss", "cpu_time") if c not in frame.columns]
        if missing:
            raise KeyError(f"{path}: benchmark TSV lacks columns {missing} (has {list(frame.columns)})")
        totals = per_stage.setdefault(
            stage, {"jobs": 0, "cpu_s": 0.0, "wall_s": 0.0, "max_rss_mb": math.nan, "sampled_jobs": 0}
        )
        totals["jobs"] += 1
        totals["wall_s"] += float(pd.to_numeric(frame["s"], errors="coerce").fillna(0).sum())
        # a benchmark of several runs (`repeat`) has a log of the last run only: its samples are all there is
        usage = read_usage(log_of_benchmark(path)) if len(frame) == 1 else None
        if usage is not None:
            cpu, rss = usage["cpu_s"], usage["max_rss_mb"]
        else:
            totals["sampled_jobs"] += 1
            cpu = float(pd.to_numeric(frame["cpu_time"], errors="coerce").fillna(0).sum())
            rss = pd.to_numeric(frame["max_rss"], errors="coerce").max()
        totals["cpu_s"] += cpu
        if not math.isnan(rss):
            totals["max_rss_mb"] = rss if math.isnan(totals["max_rss_mb"]) else max(totals["max_rss_mb"], rss)
    if not per_stage:
        return pd.DataFrame(columns=TIME_COLUMNS)
    table = pd.DataFrame([{"stage": stage, **totals} for stage, totals in per_stage.items()])
    table = table.sort_values("cpu_s", ascending=False).reset_index(drop=True)
    total_cpu = table["cpu_s"].sum()
    table["cpu_share"] = table["cpu_s"] / total_cpu if total_cpu else math.nan
    total = {
        "stage": "total", "jobs": int(table["jobs"].sum()), "cpu_s": total_cpu, "wall_s": table["wall_s"].sum(),
        "cpu_share": 1.0 if total_cpu else math.nan, "max_rss_mb": table["max_rss_mb"].max(),
        "sampled_jobs": int(table["sampled_jobs"].sum()),
    }  # fmt: skip
    table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    table["jobs"] = table["jobs"].astype(int)
    table["sampled_jobs"] = table["sampled_jobs"].astype(int)
    return table[TIME_COLUMNS]
