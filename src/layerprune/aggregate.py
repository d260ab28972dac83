"""Aggregate: one tidy table of every result, retention vs dense, report and plots.

Retention is a variant's metric divided by the dense model's on the same task,
the paper's way of comparing how much of each capability survives pruning.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from layerprune.io import atomic_path, read_json, write_json

COLUMNS = [
    "model",
    "method",
    "ratio",
    "recovery",
    "task",
    "type",
    "metric",
    "value",
    "stderr",
    "n",
    "retention",
]


def collect(result_paths: list[str | Path]) -> pd.DataFrame:
    rows = []
    for path in result_paths:
        result = read_json(path)
        missing = [key for key in ("model", "method", "ratio", "recovery", "task") if key not in result]
        if missing:
            raise KeyError(f"{path} lacks {missing}; was it written by `layerprune evaluate`?")
        rows.append({key: result[key] for key in COLUMNS if key in result})
    table = pd.DataFrame(rows)
    dense = table[table["method"] == "dense"].set_index(["model", "task"])["value"]
    if dense.index.has_duplicates:
        raise ValueError("more than one dense result for a (model, task)")

    def retention(row) -> float:
        base = dense.get((row["model"], row["task"]), math.nan)
        return row["value"] / base if base and not math.isnan(base) else math.nan

    table["retention"] = table.apply(retention, axis=1)
    table = table.sort_values(["model", "task", "method", "ratio", "recovery"], key=_dense_first)
    return table[COLUMNS].reset_index(drop=True)


def _dense_first(column: pd.Series) -> pd.Series:
    return column.map(lambda v: "" if v == "dense" else v) if column.name == "method" else column


def plot_task(table: pd.DataFrame, model: str, task: str, out_path: Path) -> None:
    """The metric against the ratio, one panel per method, one line per recovery."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[(table["model"] == model) & (table["task"] == task)]
    dense = rows[rows["method"] == "dense"]
    pruned = rows[rows["method"] != "dense"]
    methods = sorted(pruned["method"].unique())
    figure, axes = plt.subplots(1, max(1, len(methods)), figsize=(4.2 * max(1, len(methods)), 3.4), squeeze=False)
    dense_value = float(dense["value"].iloc[0]) if len(dense) else math.nan
    for axis, method in zip(axes[0], methods or ["(none)"], strict=True):
        for recovery, group in pruned[pruned["method"] == method].groupby("recovery"):
            group = group.sort_values("ratio")
            ratios = [0.0, *group["ratio"]]
            values = [dense_value, *group["value"]]
            axis.errorbar(ratios, values, yerr=[0.0, *group["stderr"].fillna(0)], marker="o", capsize=3, label=recovery)
        axis.axhline(dense_value, color="grey", linestyle="--", linewidth=1, label="dense")
        axis.set_title(f"{method}")
        axis.set_xlabel("pruning ratio")
        axis.set_ylabel(rows["metric"].iloc[0] if len(rows) else "")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"{model} · {task}")
    figure.tight_layout()
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def method_comparison(table: pd.DataFrame, score_paths: list[str | Path], out_dir: Path) -> list[str]:
    """Plots and overlap table comparing the scoring methods; returns report lines."""
    from layerprune.compare import load_scores, overlap_table, plot_layer_scores, plot_removal_map

    by_model = load_scores(score_paths)
    ratios = sorted(float(r) for r in table.loc[table["method"] != "dense", "ratio"].unique())
    if not by_model or not ratios:
        return []
    lines = ["## Scoring methods compared", ""]
    for model, methods in sorted(by_model.items()):
        scores_png = out_dir / "plots" / f"{model}__layer_scores.png"
        if plot_layer_scores(methods, model, scores_png):
            lines += [f"![layer scores]({scores_png.relative_to(out_dir).as_posix()})", ""]
        removal_png = out_dir / "plots" / f"{model}__removal_map.png"
        plot_removal_map(methods, ratios, model, removal_png)
        lines += [f"![removal map]({removal_png.relative_to(out_dir).as_posix()})", ""]
    overlap = overlap_table(by_model, ratios)
    with atomic_path(out_dir / "removal_overlap.csv") as tmp:
        overlap.to_csv(tmp, index=False)
    if len(overlap):
        lines += ["Overlap (Jaccard) of the removal sets of two methods at each ratio:", ""]
        lines += [_markdown_table(overlap), ""]
    return lines


def aggregate(
    result_paths: list[str | Path], out_dir: str | Path, score_paths: list[str | Path] | None = None
) -> pd.DataFrame:
    """Write summary.csv, metrics.json, report.md and plots/ under `out_dir`.

    With `score_paths`, the report also compares the scoring methods (see compare.py).
    """
    out_dir = Path(out_dir)
    table = collect(result_paths)
    with atomic_path(out_dir / "summary.csv") as tmp:
        table.to_csv(tmp, index=False)
    metrics = {
        f"{r.model}/{r.method}/{r.ratio}/{r.recovery}/{r.task}": {"value": r.value, "retention": r.retention}
        for r in table.itertuples()
    }
    write_json(out_dir / "metrics.json", metrics)

    plots = []
    for (model, task), _ in table.groupby(["model", "task"], sort=True):
        plot_path = out_dir / "plots" / f"{model}__{task}.png"
        plot_task(table, model, task, plot_path)
        plots.append((model, task, plot_path.relative_to(out_dir)))

    pivot = (
        table[table["method"] != "dense"]
        .pivot_table(index=["model", "method", "ratio", "recovery"], columns="task", values="retention")
        .reset_index()
    )
    dense = table[table["method"] == "dense"][["model", "task", "metric", "value", "stderr", "n"]]
    lines = [
        "# layerprune report",
        "",
        "Retention = metric of the variant ÷ metric of the dense model on the same task.",
        "",
        "## Retention by variant",
        "",
        _markdown_table(pivot) if len(pivot) else "_no pruned variants_",
        "",
        "## Dense baselines",
        "",
        _markdown_table(dense),
        "",
        "## Plots",
        "",
    ]
    lines += [f"### {model} · {task}\n\n![{task}]({path.as_posix()})\n" for model, task, path in plots]
    lines += method_comparison(table, score_paths or [], out_dir)
    lines += ["## All results", "", _markdown_table(table), ""]
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
    return table
