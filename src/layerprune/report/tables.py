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

from layerprune.io import atomic_path
from layerprune.registry import RECOVERIES
from layerprune.report.diagnostics import ERROR_BUCKETS, REP_N, arithmetic_breakdown, degeneration, error_bucket_counts
from layerprune.report.retention import (  # noqa: F401 - re-exported: the report's settings and statistics
    HIGHER,
    LOWER,
    MIN_SEEDS,
    NOT_REPRODUCED,
    NOT_TESTED,
    ONE_SEED,
    REPRODUCED,
    TYPES,
    VARIANT,
    BootstrapSettings,
    Retention,
    findings,
    ratio_contrasts,
    recovery_by_ratio,
    retention,
    sample_scores,
)
from layerprune.usage import log_of_benchmark, read_usage

HEADLINE_PNG = "plots/retention_by_type.png"
ERROR_BUCKETS_PNG = "plots/error_buckets.png"
DEGENERATION_PNG = "plots/degeneration.png"
LOSS_PNG = "plots/recovery_loss.png"

# Each figure's caption: in report.md under the figure, and (workflow/report/*.rst) in the HTML report.
CAPTIONS = {
    "headline": (
        "Retention (chance-normalised ratio of means over each type's informative tasks; dense = 1, chance = 0) "
        "against the fraction of layers removed (k layers on the top axis): one panel per task type for each model "
        "and method, one colour and marker per recovery. Bands: {level} paired-bootstrap intervals {coverage}."
    ),
    "task": (
        "Each task's metric against the fraction of layers removed (k layers on the top axis), one panel per "
        "method, one colour and marker per recovery; dashed: the dense model; dotted: chance. Error bars: ±1 "
        "standard error of the mean over the task's items (the result's stderr), not a confidence interval; with "
        "several training seeds (recovery.seeds), the mean over seeds of the values and of their standard errors."
    ),
    "degeneration": (
        "Degeneration of generated text per model and task (never averaged over tasks): rep-2/3/4 (share of "
        "repeated n-grams within an output) and self-BLEU (outputs alike, 0-1) against the fraction of layers "
        "removed; dashed: the dense model. Points are means over outputs, without intervals; a missing point is "
        "undefined (rep-n: no output of n words; self-BLEU: fewer than 2 outputs)."
    ),
    "error_buckets": (
        "Share of the generated programs in each error bucket (never closed bracket, unmatched bracket, syntax "
        "error, runtime error, wrong answer, pass), one bar per variant. Shares of counts, without intervals."
    ),
    "loss": (
        "Recovery training loss against the optimizer step, one panel per recovered checkpoint titled model · "
        "method · ratio · recovery (and its training seed where recovery.seeds trains several); solid: training "
        "loss (logged steps), dashed with markers: held-out eval loss (recovery.eval_fraction > 0 only). One "
        "training run each, no interval."
    ),
}


# What a figure's intervals cover: one training seed, or several (recovery.seeds), resampled first.
COVERAGE = {
    False: "over the evaluated items (not over training seeds: one seed was trained)",
    True: "over the training seeds of each recovery (recovery.seeds), then the evaluated items",
}


def caption(name: str, level: str = "95%", several_seeds: bool = False) -> str:
    """A figure's caption (see CAPTIONS), with the interval level and what the intervals cover filled in."""
    return "*" + CAPTIONS[name].format(level=level, coverage=COVERAGE[several_seeds]) + "*"


def diagnostics_tables(
    results: list[dict[str, Any]], self_bleu_max_texts: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(degeneration per generative result, error-bucket counts per code result, arithmetic breakdown)."""
    degeneration_rows, bucket_rows, arithmetic_rows = [], [], []
    for result in results:
        variant = {k: result[k] for k in VARIANT} | {"training_seed": result.get("training_seed")}
        variant["task"] = result["task"]
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
        degeneration_rows,
        columns=[*VARIANT, "training_seed", "task", *(f"rep_{n}" for n in REP_N), "self_bleu", "n_texts"],
    )
    buckets = pd.DataFrame(bucket_rows)
    if len(buckets):
        seeds = buckets["training_seed"]
        buckets = buckets.fillna(0).assign(training_seed=seeds)  # a bucket never hit counts 0; a seed stays empty
        extra = [c for c in buckets.columns if c not in [*VARIANT, "training_seed", "task", *ERROR_BUCKETS]]
        buckets = buckets[[*VARIANT, "training_seed", "task", *ERROR_BUCKETS, *extra]]
    else:
        buckets = pd.DataFrame(columns=[*VARIANT, "training_seed", "task", *ERROR_BUCKETS])
    arithmetic = pd.DataFrame(
        arithmetic_rows,
        columns=[*VARIANT, "training_seed", "task", "operation", "digits", "n", "accuracy", "first_digit_accuracy"],
    )
    for frame in (degeneration_frame, buckets, arithmetic):
        frame["training_seed"] = frame["training_seed"].astype("Int64")  # empty where nothing was trained
    return degeneration_frame, buckets, arithmetic


# ----------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(FONT)
    return plt


# One column of a two-column paper is ~3.5 in: every figure is drawn at that width (taller, not wider,
# when it has more panels), with fonts that stay readable when printed at that size.
COLUMN_WIDTH = 3.5
FONT = {"font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "xtick.labelsize": 6.5, "ytick.labelsize": 6.5,
        "legend.fontsize": 6.5, "figure.titlesize": 7.5, "lines.markersize": 4, "lines.linewidth": 1.2,
        "svg.fonttype": "none"}  # fmt: skip

# One colour (Okabe-Ito, colour-blind safe) and one marker per recovery, in every figure: each recovery's
# declared ones (layerprune.registry.RECOVERIES).
RECOVERY_STYLES = {name: (recovery.color, recovery.marker) for name, recovery in RECOVERIES.items()}
_SPARE_STYLES = [("#56B4E9", "X"), ("#F0E442", "*"), ("#000000", "h"), ("#999999", "p")]

METRIC_LABELS = {
    "accuracy": "accuracy",
    "accuracy_norm": "accuracy (length-normalised)",
    "exact_match": "exact match",
    "first_digit_accuracy": "first-digit accuracy",
    "first_digit": "first-digit accuracy",
    "math_verify": "answer correct (math-verify)",
    "rouge_l": "ROUGE-L F1",
    "rougeL": "ROUGE-L F1",
    "pass@1": "pass@1",
}


def recovery_style(recovery: str) -> dict[str, str]:
    """The colour and marker of a recovery: fixed for the known ones, a stable spare (by name) otherwise."""
    if recovery in RECOVERY_STYLES:
        color, marker = RECOVERY_STYLES[recovery]
    else:
        import zlib

        color, marker = _SPARE_STYLES[zlib.crc32(recovery.encode()) % len(_SPARE_STYLES)]
    return {"color": color, "marker": marker}


def metric_label(metric: str) -> str:
    """A metric id as a reader says it (`first_digit_accuracy` -> first-digit accuracy)."""
    return METRIC_LABELS.get(metric, str(metric).replace("_", " "))


def layers_axis(axis, ratios: list[float], num_layers: int | None) -> None:
    """A top axis with k = the layers removed at each ratio (the same rounding as the pruning itself)."""
    if not num_layers:
        return
    from layerprune.pruning.surgery import layers_for_ratio

    top = axis.secondary_xaxis("top")
    top.set_xticks([0.0, *ratios], ["0", *(str(layers_for_ratio(r, num_layers)) for r in ratios)])
    top.set_xlabel(f"layers removed (of {num_layers})")


def ratio_axis(axis, ratios: list[float]) -> None:
    """The x axis of every plot against the ratio: 0 = dense, then each evaluated ratio."""
    axis.set_xticks([0.0, *ratios], ["0\n(dense)", *(f"{r:g}" for r in ratios)])
    axis.set_xlim(-0.02, (ratios[-1] if ratios else 0.0) + 0.03)
    axis.set_xlabel("fraction of layers removed")


def _save(figure, out_path: Path) -> None:
    """The PNG and, beside it, a vector copy (same name, .svg) for print."""
    plt = _pyplot()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png", dpi=200)
    with atomic_path(out_path.with_suffix(".svg")) as tmp:
        figure.savefig(tmp, format="svg")
    plt.close(figure)


def _note(out_path: Path, text: str) -> None:
    """A small figure that says why there is nothing to plot (the file is a declared output)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 1.2))
    axis.axis("off")
    axis.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, wrap=True)
    _save(figure, out_path)


def _variant_label(row) -> str:
    seed = row.get("training_seed")
    return f"{row['method']} {row['ratio']:g} {row['recovery']}" + ("" if pd.isna(seed) else f" seed {seed}")


def plot_retention_by_ratio(
    per_type: pd.DataFrame, out_path: Path, num_layers: dict[str, int] | None = None, confidence: float = 0.95
) -> None:
    """The headline plot: retention against the pruning ratio, one line per recovery with its interval band.

    One panel per task type (columns) for each (model, method) (rows); the dense model is the point
    (0, 1); retention 0 is chance. A ratio whose type has no informative task has no point.
    """
    rows = per_type[per_type["tasks"] > 0] if len(per_type) else per_type
    if not len(rows):
        _note(out_path, "no task type has an informative task (see the report's excluded tasks)")
        return
    plt = _pyplot()
    panels = sorted({(r.model, r.method) for r in rows.itertuples()})
    types = [t for t in TYPES if t in set(rows["type"])] + sorted(set(rows["type"]) - set(TYPES))
    recoveries = sorted(rows["recovery"].unique(), key=lambda r: (r != "none", r))
    top = max(1.2, float(np.nanmax(rows[["retention", "ci_high"]].to_numpy(dtype=float))) + 0.05)
    bottom = min(-0.1, float(np.nanmin(rows[["retention", "ci_low"]].to_numpy(dtype=float))) - 0.05)
    figure, axes = plt.subplots(
        len(panels),
        len(types),
        figsize=(COLUMN_WIDTH, 2.1 * len(panels) + 0.8),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for panel_axes, (model, method) in zip(axes, panels, strict=True):
        ratios = sorted(float(r) for r in rows.loc[rows["model"] == model, "ratio"].unique())
        for axis, task_type in zip(panel_axes, types, strict=True):
            cell = rows[(rows["model"] == model) & (rows["method"] == method) & (rows["type"] == task_type)]
            for recovery in recoveries:
                line = cell[cell["recovery"] == recovery].sort_values("ratio")
                if not len(line):
                    continue
                style = recovery_style(recovery)
                xs = [0.0, *line["ratio"]]
                axis.plot(xs, [1.0, *line["retention"]], label=recovery, **style)
                low = [1.0, *line["ci_low"].fillna(line["retention"])]
                high = [1.0, *line["ci_high"].fillna(line["retention"])]
                axis.fill_between(xs, low, high, color=style["color"], alpha=0.15, linewidth=0)
            axis.axhline(1, color="grey", linestyle="--", linewidth=0.8)
            axis.axhline(0, color="black", linestyle=":", linewidth=0.8)
            axis.text(0.02, 0.0, "chance", transform=axis.get_yaxis_transform(), ha="left", va="bottom", fontsize=6)
            tasks = int(cell["tasks"].max()) if len(cell) else 0
            axis.set_title(f"{model} · {method}\n{task_type} ({tasks} task{'s' if tasks != 1 else ''})")
            ratio_axis(axis, ratios)
            layers_axis(axis, ratios, (num_layers or {}).get(model))
            axis.set_ylim(bottom, top)
            axis.grid(alpha=0.3)
        panel_axes[0].set_ylabel("retention (dense = 1, chance = 0)")
    handles = [plt.Line2D([], [], label=f"recovery: {r}", **recovery_style(r)) for r in recoveries]
    figure.legend(handles=handles, loc="outside lower center", ncol=min(3, len(handles)), frameon=False)
    _save(figure, out_path)


def bucket_categories(buckets: pd.DataFrame) -> list[str]:
    """The error buckets among a buckets table's columns: not the variant's keys, its task or its training seed."""
    return [c for c in buckets.columns if c not in [*VARIANT, "training_seed", "task"]]


def plot_error_buckets(buckets: pd.DataFrame, out_path: Path, code_ran: bool = False) -> bool:
    """Stacked bars: the share of each code error bucket, one bar per variant, a panel per (model, task).

    No code task evaluated (`code_ran` False) and no buckets: no figure (False), and a stale one
    from an earlier run is removed. A code task that recorded no buckets gets a figure saying so.
    """
    if not len(buckets):
        if code_ran:
            _note(out_path, "code tasks were evaluated, but no sample recorded an error_bucket")
            return True
        out_path.unlink(missing_ok=True)
        out_path.with_suffix(".svg").unlink(missing_ok=True)
        return False
    plt = _pyplot()
    categories = bucket_categories(buckets)
    panels = sorted(buckets.groupby(["model", "task"]).groups)
    bars = int(buckets.groupby(["model", "task"]).size().max())
    figure, axes = plt.subplots(
        len(panels), 1, figsize=(COLUMN_WIDTH, (1.0 + 0.18 * bars) * len(panels) + 0.9), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    colors = {c: f"C{i}" for i, c in enumerate(categories)}
    for axis, (model, task) in zip(axes[:, 0], panels, strict=True):
        rows = buckets[(buckets["model"] == model) & (buckets["task"] == task)].copy()
        rows["_dense"] = rows["method"] != "dense"
        rows = rows.sort_values(["_dense", "method", "ratio", "recovery"], ascending=[True, True, True, True])
        labels = ["dense" if r["method"] == "dense" else _variant_label(r) for _, r in rows.iterrows()]
        totals = rows[categories].sum(axis=1).replace(0, np.nan)
        left = np.zeros(len(rows))
        for category in categories:
            share = (rows[category] / totals).fillna(0).to_numpy()
            axis.barh(range(len(rows)), share, left=left, color=colors[category], label=category.replace("_", " "))
            left += share
        axis.set_yticks(range(len(rows)), labels)
        axis.invert_yaxis()
        axis.set_xlim(0, 1)
        axis.set_xlabel("share of programs")
        axis.set_title(f"{model} · {task}")
    handles, names = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncol=3, frameon=False)
    _save(figure, out_path)
    return True


DEGENERATION_MEASURES = {"rep_2": "rep-2", "rep_3": "rep-3", "rep_4": "rep-4", "self_bleu": "self-BLEU"}


def plot_degeneration(frame: pd.DataFrame, out_path: Path, num_layers: dict[str, int] | None = None) -> None:
    """Rep-2/3/4 and self-BLEU against the ratio, per (model, task): never averaged over tasks.

    A 2 x 2 block of panels per (model, task); one line per (method, recovery), dense at ratio 0;
    the x axis spans every evaluated ratio even where a line has one point.
    """
    if not len(frame):
        _note(out_path, "no generative outputs to measure degeneration on")
        return
    plt = _pyplot()
    measures = [m for m in DEGENERATION_MEASURES if m in frame.columns]
    blocks = sorted(frame.groupby(["model", "task"]).groups)
    figure = plt.figure(figsize=(COLUMN_WIDTH, 2.7 * len(blocks) + 0.3), layout="constrained")
    subfigures = np.atleast_1d(figure.subfigures(len(blocks), 1))
    methods = sorted(frame.loc[frame["method"] != "dense", "method"].unique())
    dashes = {m: ["-", "--", ":", "-."][i % 4] for i, m in enumerate(methods)}
    for block, (model, task) in enumerate(blocks):
        rows = frame[(frame["model"] == model) & (frame["task"] == task)]
        dense = rows[rows["method"] == "dense"]
        # several training seeds (recovery.seeds): one line per recovery, the mean over its seeds
        pruned = rows[rows["method"] != "dense"].groupby(["method", "recovery", "ratio"], as_index=False)
        pruned = pruned[measures].mean()
        ratios = sorted(
            float(r) for r in frame.loc[(frame["model"] == model) & (frame["method"] != "dense"), "ratio"].unique()
        )
        subfigure = subfigures[block]
        axes = subfigure.subplots(2, 2, sharex=True)
        subfigure.suptitle(f"{model} · {task}", fontweight="bold")
        for index, measure in enumerate(measures):
            axis = axes[index // 2, index % 2]
            dense_value = float(dense[measure].iloc[0]) if len(dense) else math.nan
            for (method, recovery), group in pruned.groupby(["method", "recovery"]):
                group = group.sort_values("ratio")
                xs, ys = [0.0, *group["ratio"]], [dense_value, *group[measure]]
                label = f"{recovery}" + (f" · {method}" if len(methods) > 1 else "")
                axis.plot(xs, ys, linestyle=dashes[method], label=label, **recovery_style(recovery))
            if len(dense):
                axis.axhline(dense_value, color="grey", linestyle="--", linewidth=0.8)
            axis.set_ylabel(DEGENERATION_MEASURES[measure] + (" (0-1)" if measure == "self_bleu" else " (share)"))
            ratio_axis(axis, ratios)
            axis.set_xlabel("")
            if rows[measure].isna().all():  # say why a panel is empty rather than leave it blank
                why = "no output of n words" if measure.startswith("rep") else "fewer than 2 non-empty outputs"
                axis.text(0.5, 0.5, f"undefined:\n{why}", transform=axis.transAxes, ha="center", va="center")
                axis.set_yticks([])
            axis.grid(alpha=0.3)
        subfigure.supxlabel("fraction of layers removed", fontsize=7)
    labelled = {}
    for subfigure in subfigures:
        for axis in subfigure.axes:
            for handle, name in zip(*axis.get_legend_handles_labels(), strict=True):
                labelled.setdefault(name, handle)
    names = sorted(labelled, key=lambda name: (name.split(" · ")[0] != "none", name))
    handles = [labelled[name] for name in names]
    if handles:
        figure.legend(handles, names, loc="outside lower center", ncol=min(3, len(handles)), frameon=False)
    _save(figure, out_path)


def plot_loss_curves(records: list[dict[str, Any]], out_path: Path) -> bool:
    """Recovery loss (train, solid; held-out eval, dashed) against the step: one panel per recovered checkpoint.

    `records`: recovery.json contents with model, method, ratio, recovery added. Each panel is
    titled with all four. False (and no file) when there is nothing to draw.
    """
    records = [r for r in records if r.get("loss_curve") or r.get("eval_loss_curve")]
    if not records:
        out_path.unlink(missing_ok=True)
        out_path.with_suffix(".svg").unlink(missing_ok=True)
        return False
    plt = _pyplot()
    records = sorted(
        records, key=lambda r: (r["model"], r["method"], float(r["ratio"]), r["recovery"], r.get("training_seed") or 0)
    )
    several = len({r.get("training_seed") for r in records}) > 1
    columns = 2 if len(records) > 1 else 1
    rows = math.ceil(len(records) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(COLUMN_WIDTH, 1.5 * rows + 0.6), squeeze=False, layout="constrained", sharey=True
    )
    for axis, record in zip(axes.flat, records, strict=False):
        style = recovery_style(record["recovery"])
        train = record.get("loss_curve") or []
        held_out = record.get("eval_loss_curve") or []
        axis.plot([e["step"] for e in train], [e["loss"] for e in train], color=style["color"], label="train")
        if held_out:
            axis.plot(
                [e["step"] for e in held_out], [e["eval_loss"] for e in held_out], color=style["color"],
                marker=style["marker"], linestyle="--", label="held-out eval",
            )  # fmt: skip
        seed = f" · seed {record.get('training_seed')}" if several else ""
        axis.set_title(
            f"{record['model']} · {record['method']} · {float(record['ratio']):g} · {record['recovery']}{seed}"
        )
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
    for axis in axes[:, 0]:
        axis.set_ylabel("loss")
    for axis in list(axes.flat)[len(records) :]:
        axis.axis("off")
    handles = [plt.Line2D([], [], color="black", label="train")]
    if any(r.get("eval_loss_curve") for r in records):
        handles.append(plt.Line2D([], [], color="black", linestyle="--", label="held-out eval"))
    figure.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
    _save(figure, out_path)
    return True


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
    return f"{_with_ci(row.retention, row.ci_low, row.ci_high)} · drop {drop} pts" + weighting_flag(row)


WEIGHTED = {"equal": "weighted equally", "items": "weighted by items"}


def weighting_flag(row: Any) -> str:
    """` ⚠ weighted by items: 0.06 [0.03, 0.10]` when the two task weightings (report.task_weighting) give
    retentions that differ beyond their intervals (e.g. a lucky 10-item task beside a collapsed 200-item one);
    else nothing."""
    flag = getattr(row, "weightings_diverge", False)
    if not isinstance(flag, (bool, np.bool_)) or not flag:  # NaN or absent: no flag
        return ""
    other = _with_ci(row.other_retention, row.other_ci_low, row.other_ci_high)
    return f" ⚠ {WEIGHTED.get(row.other_weighting, row.other_weighting)}: {other}"


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
        return f"not counted (dense near chance) · drop {_with_ci(row.drop_points, row.drop_low, row.drop_high, 1)} pts"

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


def headline_ratios(per_type: pd.DataFrame, requested: float | None) -> dict[str, tuple[float, str]]:
    """model -> (its first-screen ratio, why): each model at its own median ratio, or the nearest to `requested`.

    Per model, so that a model run at other ratios than the rest is never silently left out.
    """
    chosen = {}
    for model, rows in per_type.groupby("model", sort=True) if len(per_type) else []:
        ratios = sorted(float(r) for r in rows["ratio"].unique())
        ratio = headline_ratio(rows, requested)
        listed = ", ".join(f"{r:g}" for r in ratios)
        if requested is None:
            why = f"median of {listed}" if len(ratios) > 1 else "the only ratio"
        elif math.isclose(ratio, requested):
            why = "as requested"
        else:
            why = f"nearest to {requested:g} among {listed}"
        chosen[model] = (ratio, why)
    return chosen


def headline_table(per_type: pd.DataFrame, ratio: float | dict[str, tuple[float, str]] | None) -> pd.DataFrame:
    """The first-screen table: (model, method) rows at each model's ratio, a `type · recovery` column each.

    `ratio`: one ratio for every model, or `headline_ratios`' model -> (ratio, why); the `ratio`
    column says which ratio each row is at and why. Compact on purpose: the paper's grid (3 models
    x 3 methods x 3 recoveries) is 9 rows.
    """
    if ratio is None or not len(per_type):
        return pd.DataFrame(columns=["model", "method"])
    chosen = ratio if isinstance(ratio, dict) else {m: (ratio, "") for m in per_type["model"].unique()}
    at = per_type["model"].map(lambda m: chosen[m][0] if m in chosen else math.nan).astype(float)
    rows = per_type[np.isclose(per_type["ratio"].astype(float), at)]
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
    wide.insert(
        2,
        "ratio",
        [f"{chosen[m][0]:g}" + (f" ({chosen[m][1]})" if chosen[m][1] else "") for m in wide["model"]],
    )
    return wide.fillna("–")


def ratio_contrast_lines(frame: pd.DataFrame, confidence: float) -> list[str]:
    """How many adjacent-ratio contrasts were made (several at once: some decide by chance alone), and the
    cells skipped because their task sets differ, each named."""
    made = frame[frame["verdict"] != NOT_TESTED]
    skipped = frame[frame["verdict"] == NOT_TESTED]
    decided = int(made["verdict"].isin([LOWER, HIGHER]).sum())
    lines = [
        f"{len(made)} contrast{'s' if len(made) != 1 else ''} made, {decided} decided, each at {confidence:.0%} "
        f"without correction for multiple comparisons: with no true difference anywhere about "
        f"{(1 - confidence) * len(made):.1f} of them would be decided by chance alone (higher or lower, each half "
        "as often).",
    ]
    if len(skipped):
        lines += ["", f"{len(skipped)} cell{'s' if len(skipped) != 1 else ''} skipped (not a paired contrast):", ""]
        lines += [
            f"- {r.model} · {r.method} · {r.recovery} · {r.type}, {r.to_ratio:g} − {r.from_ratio:g}: {r.detail}."
            for r in skipped.itertuples(index=False)
        ]
    return lines


def ratio_contrast_table(frame: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Retention at a ratio minus at the next lower ratio (paired), as the report prints it (made ones only)."""
    frame = frame[frame["verdict"] != NOT_TESTED]
    return pd.DataFrame(
        {
            "model": frame["model"],
            "method": frame["method"],
            "recovery": frame["recovery"],
            "type": frame["type"],
            "ratios": [f"{r.to_ratio:g} − {r.from_ratio:g}" for r in frame.itertuples(index=False)],
            f"difference [{confidence:.0%} CI]": [
                _with_ci(r.estimate, r.ci_low, r.ci_high) for r in frame.itertuples(index=False)
            ],
            "verdict": frame["verdict"],
        }
    )


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
        elif row["verdict"] == ONE_SEED:
            what = "one training seed cannot decide it (recovery.seeds)"
        else:
            what = "this run cannot tell whether SGR helps (undecided)"
        lines.append(f"- **{model}** · {method} · {contrast} at the lowest ratio, {row['ratio']:g}: {what}.")
    return lines


def one_seed_lines(frame: pd.DataFrame) -> list[str]:
    """The first screen's words on the findings one training seed cannot decide (none: no line)."""
    undecidable = frame[frame["verdict"] == ONE_SEED] if len(frame) else frame
    if not len(undecidable):
        return []
    named = sorted({f"({r.finding}) {r.statistic.split(' generative')[0]}" for r in undecidable.itertuples()})
    return [
        f"**One training seed cannot decide** {', '.join(named)}: each compares a trained recovery, and one "
        "training run's luck moves it by more than the items' interval allows (bench/seed_decisions.py: 31 % of "
        "such null contrasts were decided with one seed). The estimate and its items-only interval stand beside "
        f"the verdict; set recovery.seeds to {MIN_SEEDS} or more seeds (e.g. [0, 1, 2]) to decide them.",
        "",
    ]


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
