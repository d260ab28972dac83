"""Retention with bootstrap confidence intervals, the diagnostics tables, their plots, and report.md.

Retention is a variant's metric over the dense model's on the same task. Its confidence
interval comes from a paired bootstrap: the evaluated samples (matched by id between the
dense and the pruned run) are resampled with replacement, and the ratio of the two means is
taken on each resample. A task type's retention (classification, generative) is the mean of
its tasks' retentions; its interval resamples every task at once (a stratified bootstrap).
Every random draw is seeded from the config's seed.

Only the result JSONs are read; any per-sample field beyond `id` and `correct` (a numeric
`score`, `error_bucket`, `digits`/`operation`, `output`) is optional, and a missing one drops
the matching table or plot to a short note instead of failing the report.
"""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from layerprune.diagnostics import ERROR_BUCKETS, REP_N, arithmetic_breakdown, degeneration, error_bucket_counts
from layerprune.io import atomic_path

VARIANT = ["model", "method", "ratio", "recovery"]
TYPES = ("classification", "generative")
HEADLINE_PNG = "plots/retention_by_type.png"
ERROR_BUCKETS_PNG = "plots/error_buckets.png"
DEGENERATION_PNG = "plots/degeneration.png"


@dataclass(frozen=True)
class BootstrapSettings:
    """How the confidence intervals are drawn (config `report`)."""

    samples: int = 1000
    confidence: float = 0.95
    seed: int = 0


def sample_scores(result: dict[str, Any]) -> dict[Any, float]:
    """id -> the sample's score: its numeric `score` (e.g. ROUGE-L) if any, else `correct` as 0/1."""
    scores = {}
    for sample in result.get("samples") or []:
        if "id" not in sample:
            continue
        score = sample.get("score")
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            if "correct" not in sample:
                continue
            score = float(bool(sample["correct"]))
        scores[_key(sample["id"])] = float(score)
    return scores


def _key(sample_id: Any) -> Any:
    return tuple(sample_id) if isinstance(sample_id, list) else sample_id


def _rng(settings: BootstrapSettings, *parts: Any) -> np.random.Generator:
    """A generator per (variant, task): the draws do not depend on the order of the results."""
    return np.random.default_rng([settings.seed, zlib.crc32("/".join(map(str, parts)).encode())])


def paired_bootstrap(dense: dict, variant: dict, settings: BootstrapSettings, *key: Any) -> np.ndarray:
    """Retention (variant mean / dense mean) on `settings.samples` paired resamples of the shared ids."""
    ids = sorted(set(dense) & set(variant), key=str)
    if not ids or settings.samples < 1:
        return np.full(max(settings.samples, 0), np.nan)
    d = np.array([dense[i] for i in ids])
    v = np.array([variant[i] for i in ids])
    rng = _rng(settings, *key)
    out = np.empty(settings.samples)
    chunk = max(1, 2_000_000 // len(ids))
    for start in range(0, settings.samples, chunk):
        idx = rng.integers(0, len(ids), size=(min(chunk, settings.samples - start), len(ids)))
        with np.errstate(divide="ignore", invalid="ignore"):
            out[start : start + len(idx)] = v[idx].mean(1) / d[idx].mean(1)
    out[~np.isfinite(out)] = np.nan
    return out


def _interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = replicates[np.isfinite(replicates)]
    if not len(finite):
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def _ratio(value: float, base: float) -> float:
    return value / base if base and not (math.isnan(base) or math.isnan(value)) else math.nan


def retention_tables(results: list[dict[str, Any]], settings: BootstrapSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-task retention, per-type retention), each with ci_low/ci_high, for every pruned variant."""
    dense = {(r["model"], r["task"]): r for r in results if r["method"] == "dense"}
    dense_scores = {key: sample_scores(r) for key, r in dense.items()}
    task_rows, replicates = [], {}
    for result in results:
        if result["method"] == "dense":
            continue
        base = dense.get((result["model"], result["task"]))
        variant = tuple(result[k] for k in VARIANT)
        row = {k: result[k] for k in VARIANT}
        row.update(task=result["task"], type=result.get("type", "unknown"), metric=result.get("metric", ""))
        row.update(value=result["value"], dense_value=base["value"] if base else math.nan)
        row["retention"] = _ratio(row["value"], row["dense_value"])
        draws = (
            paired_bootstrap(
                dense_scores[(result["model"], result["task"])],
                sample_scores(result),
                settings,
                *variant,
                result["task"],
            )
            if base
            else np.full(settings.samples, np.nan)
        )
        replicates[(variant, result["task"])] = draws
        row["ci_low"], row["ci_high"] = _interval(draws, settings.confidence)
        row["n"] = len(set(sample_scores(result)) & set(dense_scores.get((result["model"], result["task"]), {})))
        task_rows.append(row)
    columns = [*VARIANT, "task", "type", "metric", "value", "dense_value", "retention", "ci_low", "ci_high", "n"]
    per_task = pd.DataFrame(task_rows, columns=columns)
    type_rows = []
    groups = per_task.groupby([*VARIANT, "type"], sort=True) if len(per_task) else []
    for key, group in groups:
        variant, task_type = tuple(key[:-1]), key[-1]
        stacked = np.vstack([replicates[(variant, task)] for task in group["task"]])
        # A replicate's type retention: the mean over the type's tasks of their replicate retentions.
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            draws = np.nanmean(stacked, axis=0)
        low, high = _interval(draws, settings.confidence)
        type_rows.append(
            {
                **dict(zip(VARIANT, variant, strict=True)),
                "type": task_type,
                "retention": float(group["retention"].mean()),
                "ci_low": low,
                "ci_high": high,
                "tasks": len(group),
            }
        )
    per_type = pd.DataFrame(type_rows, columns=[*VARIANT, "type", "retention", "ci_low", "ci_high", "tasks"])
    return per_task, per_type


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


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


def plot_retention_by_type(per_type: pd.DataFrame, out_path: Path) -> None:
    """The headline: classification (x) against generative (y) retention, one point per variant.

    Below the diagonal, pruning hurts generation more than classification.
    """
    if not len(per_type) or not set(TYPES) <= set(per_type["type"]):
        present = ", ".join(sorted(per_type["type"].unique())) if len(per_type) else "none"
        _note(out_path, f"classification vs generative retention needs both task types (present: {present})")
        return
    # variant -> type -> (retention, ci_low, ci_high); a variant needs both types to be a point.
    points: dict[tuple, dict[str, tuple[float, float, float]]] = {}
    for row in per_type.itertuples(index=False):
        variant = tuple(getattr(row, k) for k in VARIANT)
        points.setdefault(variant, {})[row.type] = (row.retention, row.ci_low, row.ci_high)
    points = {
        variant: types
        for variant, types in points.items()
        if all(t in types and math.isfinite(types[t][0]) for t in TYPES)
    }
    if not points:
        _note(out_path, "no variant has a finite classification and generative retention (dense score 0?)")
        return
    plt = _pyplot()
    models = sorted({variant[0] for variant in points})
    figure, axes = plt.subplots(1, len(models), figsize=(max(6.5, 5.2 * len(models)), 5.0), squeeze=False)
    methods = sorted({variant[1] for variant in points})
    recoveries = sorted({variant[3] for variant in points})
    colors = {r: f"C{i}" for i, r in enumerate(recoveries)}

    def error(value: float, low: float, high: float) -> np.ndarray:
        return np.nan_to_num(np.array([[max(0.0, value - low)], [max(0.0, high - value)]]))

    for axis, model in zip(axes[0], models, strict=True):
        for (_, method, ratio, recovery), types in sorted(points.items()):
            if _ != model:
                continue
            x, y = types["classification"][0], types["generative"][0]
            axis.errorbar(
                x, y, xerr=error(*types["classification"]), yerr=error(*types["generative"]),
                fmt=MARKERS[methods.index(method) % len(MARKERS)], color=colors[recovery], capsize=2, alpha=0.85,
                markersize=6,
            )  # fmt: skip
            axis.annotate(f"{ratio:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        axis.plot([0, 1.2], [0, 1.2], color="grey", linestyle="--", linewidth=1)
        axis.axhline(1, color="grey", linewidth=0.5)
        axis.axvline(1, color="grey", linewidth=0.5)
        axis.set_xlabel("classification retention (vs dense)")
        axis.set_ylabel("generative retention (vs dense)")
        axis.set_title(model)
        axis.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], color=colors[r], marker="o", linestyle="", label=f"recovery: {r}") for r in recoveries
    ]
    handles += [
        plt.Line2D([], [], color="black", marker=MARKERS[i % len(MARKERS)], linestyle="", label=f"method: {m}")
        for i, m in enumerate(methods)
    ]
    axes[0, -1].legend(handles=handles, fontsize=8, loc="best")
    figure.suptitle(
        "Classification vs generative retention\n"
        "label: pruning ratio · bars: bootstrap CI · below the diagonal: generation lost more",
        fontsize=9,
    )
    figure.tight_layout()
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
        row_axes[-1].legend(fontsize=7)
    figure.tight_layout()
    _save(figure, out_path)


# ----------------------------------------------------------------------------- markdown


def _with_ci(retention: float, low: float, high: float) -> str:
    if math.isnan(retention):
        return "–"
    if math.isnan(low):
        return f"{retention:.2f}"
    return f"{retention:.2f} [{low:.2f}, {high:.2f}]"


def type_summary_table(per_type: pd.DataFrame, ratio: float | None = None) -> pd.DataFrame:
    """Variants as rows, one `retention [CI]` column per task type (at one ratio, or all)."""
    rows = per_type if ratio is None else per_type[np.isclose(per_type["ratio"], ratio)]
    if not len(rows):
        return pd.DataFrame(columns=VARIANT)
    rows = rows.assign(cell=[_with_ci(r.retention, r.ci_low, r.ci_high) for r in rows.itertuples()])
    wide = rows.pivot_table(index=VARIANT, columns="type", values="cell", aggfunc="first").reset_index()
    wide.columns.name = None
    wide["ratio"] = wide["ratio"].map("{:g}".format)
    return wide.fillna("–")


def task_retention_table(per_task: pd.DataFrame) -> pd.DataFrame:
    if not len(per_task):
        return pd.DataFrame(columns=VARIANT)
    rows = per_task.assign(cell=[_with_ci(r.retention, r.ci_low, r.ci_high) for r in per_task.itertuples()])
    wide = rows.pivot_table(index=VARIANT, columns="task", values="cell", aggfunc="first").reset_index()
    wide.columns.name = None
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
        cell=[_with_ci(r.retention, r.ci_low, r.ci_high) for r in rows.itertuples()],
        column=[f"{r.type} · {r.recovery}" for r in rows.itertuples()],
    )
    wide = rows.pivot_table(index=["model", "method"], columns="column", values="cell", aggfunc="first")
    recoveries = sorted(rows["recovery"].unique(), key=lambda r: (r != "none", r))
    types = [t for t in TYPES if t in set(rows["type"])] + sorted(set(rows["type"]) - set(TYPES))
    order = [f"{t} · {r}" for t in types for r in recoveries if f"{t} · {r}" in wide.columns]
    wide = wide[order].reset_index()
    wide.columns.name = None
    return wide.fillna("–")


def answer_lines(per_type: pd.DataFrame, ratio: float | None) -> list[str]:
    """One line per model at the headline ratio: each type's retention per recovery, mean over methods."""
    if ratio is None or not len(per_type):
        return ["_No pruned variant has been evaluated._"]
    rows = per_type[np.isclose(per_type["ratio"], ratio)]
    lines = []
    for model, group in rows.groupby("model", sort=True):
        recoveries = sorted(group["recovery"].unique(), key=lambda r: (r != "none", r))
        parts = []
        for task_type in TYPES:
            typed = group[group["type"] == task_type]
            if len(typed):
                means = typed.groupby("recovery")["retention"].mean()
                kept = " · ".join(f"{r} {means[r]:.0%}" for r in recoveries if r in means)
                parts.append(f"{task_type} keeps {kept}")
        if parts:
            lines.append(f"- **{model}** (mean over methods, by recovery): " + "; ".join(parts) + ".")
    return lines
