"""Aggregate: one tidy table of every result, retention vs dense, report and plots.

"Retention" has one meaning: the chance-normalised ratio of means with paired intervals described in
retention.py (retention.csv, retention_by_type.csv, the first screen). The plain value ÷ dense value of
one row is summary.csv's `value_ratio`, never called retention.

With several training seeds (recovery.seeds) summary.csv has one row per seed (`training_seed`), and
every retention, finding and plot is the mean over seeds, its interval resampling seeds then items.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from layerprune.io import atomic_path, read_json, write_json
from layerprune.report import tables

COLUMNS = [
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


def load_results(result_paths: list[str | Path]) -> list[dict]:
    """Every result JSON, checked for the keys that place it in the grid."""
    results = []
    for path in result_paths:
        result = read_json(path)
        missing = [key for key in ("model", "method", "ratio", "recovery", "task", "value") if key not in result]
        if missing:
            raise KeyError(f"{path} lacks {missing}; was it written by `layerprune evaluate`?")
        results.append(_slim(result))
    return results


# The per-sample fields the report reads; prompts (5-shot MMLU: kilobytes each) are dropped on
# loading so that a paper-sized grid (over a thousand result files) fits in memory.
SAMPLE_FIELDS = (
    "id", "correct", "score", "target", "error_bucket", "error_buckets", "digits", "operation", "first_digit",
    "first_digit_correct",
)  # fmt: skip


def _apply_task_chance(result: dict, given: float | None, path: str | Path) -> None:
    """A task's own chance level (tasks.<task>.chance) for a result evaluated before results stored theirs.

    A result that stores its chance (`layerprune evaluate` does) keeps it, so that the report of a
    run's own files is the same with or without the config; a config that disagrees with it is an
    error, never a silent override.
    """
    if given is None:
        return
    stored = result.get("chance")
    if stored is None:
        result["chance"] = given
    elif not math.isclose(stored, given):
        raise ValueError(
            f"{path}: evaluated with chance {stored} ({result.get('chance_source', 'stored')}), but "
            f"tasks.{result['task']}.chance is {given}; evaluate it again"
        )


def _slim(result: dict) -> dict:
    from layerprune.evaluation.chance import choice_count

    keep = SAMPLE_FIELDS + (("output",) if result.get("type") == "generative" else ())
    samples = []
    for sample in result.get("samples") or []:
        slim = {k: sample[k] for k in keep if k in sample}
        choices = choice_count(sample)  # the chance level needs the number of choices, not the choices
        if choices:
            slim["n_choices"] = choices
        samples.append(slim)
    return {**result, "samples": samples}


def sandbox_isolation_lines(results: list[dict]) -> list[str]:
    """A warning, first in the report, when code was graded in a sandbox weaker than strict (docs/sandbox.md)."""
    weak: dict[str, list[str]] = {}
    for r in results:
        isolation = (r.get("sandbox") or {}).get("isolation") or {}
        if isolation.get("level", "strict") != "strict":
            name = f"{r['model']}/{r['method']}/{r['ratio']}/{r['recovery']}/{r['task']}"
            weak[name] = isolation.get("missing") or []
    if not weak:
        return []
    missing = sorted({m for reasons in weak.values() for m in reasons})
    return [
        f"**Sandbox isolation was not strict** for {len(weak)} code result(s) "
        f"(`evaluation.sandbox.isolation: best_effort`): {', '.join(sorted(weak))}. Missing: {'; '.join(missing)}.",
        "",
    ]


def collect(result_paths: list[str | Path] | list[dict]) -> pd.DataFrame:
    rows = []
    for path in result_paths:
        result = path if isinstance(path, dict) else read_json(path)
        missing = [key for key in ("model", "method", "ratio", "recovery", "task") if key not in result]
        if missing:
            raise KeyError(f"{path} lacks {missing}; was it written by `layerprune evaluate`?")
        rows.append({key: result[key] for key in COLUMNS if key in result})
    table = pd.DataFrame(rows).reindex(columns=[c for c in COLUMNS if c != "value_ratio"])  # absent: NaN
    table["training_seed"] = table["training_seed"].astype("Int64")  # empty where nothing was trained
    dense = table[table["method"] == "dense"].set_index(["model", "task"])["value"]
    if dense.index.has_duplicates:
        raise ValueError("more than one dense result for a (model, task)")

    def value_ratio(row) -> float:
        base = dense.get((row["model"], row["task"]), math.nan)
        return row["value"] / base if base and not math.isnan(base) else math.nan

    table["value_ratio"] = table.apply(value_ratio, axis=1)
    table = table.sort_values(["model", "task", "method", "ratio", "recovery", "training_seed"], key=_dense_first)
    return table[COLUMNS].reset_index(drop=True)


def _replicate(training_seed, study_seed: int) -> str:
    from layerprune.config.settings import replicate_suffix

    return "" if pd.isna(training_seed) else replicate_suffix(int(training_seed), study_seed)


def _dense_first(column: pd.Series) -> pd.Series:
    return column.map(lambda v: "" if v == "dense" else v) if column.name == "method" else column


def metric_limits(limits: tuple[float, float], values: pd.Series) -> tuple[float, float]:
    """The y range of a metric plot: a metric that is never negative (accuracy, pass@1, ROUGE-L) starts at 0 at
    the lowest, so that an error bar (± stderr) around 0 cannot draw the axis below 0."""
    finite = pd.to_numeric(values, errors="coerce").dropna()
    if len(finite) and (finite >= 0).all():
        return max(limits[0], 0.0), limits[1]
    return limits


def plot_task(
    table: pd.DataFrame,
    model: str,
    task: str,
    out_path: Path,
    chance: float | None = None,
    num_layers: int | None = None,
) -> None:
    """The metric against the ratio, one panel per method (stacked), one line per recovery; dense and chance lines."""
    from layerprune.report.tables import _pyplot, _save, layers_axis, metric_label, ratio_axis, recovery_style

    plt = _pyplot()
    rows = table[(table["model"] == model) & (table["task"] == task)]
    dense = rows[rows["method"] == "dense"]
    # several training seeds (recovery.seeds): the mean over seeds, with the mean of their standard errors
    pruned = (
        rows[rows["method"] != "dense"]
        .groupby(["method", "recovery", "ratio"], as_index=False)
        .agg(value=("value", "mean"), stderr=("stderr", "mean"))
    )
    methods = sorted(pruned["method"].unique())
    ratios = sorted(
        float(r) for r in table.loc[(table["model"] == model) & (table["method"] != "dense"), "ratio"].unique()
    )
    panels = max(1, len(methods))
    figure, axes = plt.subplots(panels, 1, figsize=(3.5, 2.3 * panels + 0.5), squeeze=False, layout="constrained")
    dense_value = float(dense["value"].iloc[0]) if len(dense) else math.nan
    for axis, method in zip(axes[:, 0], methods or ["(none)"], strict=True):
        for recovery, group in sorted(
            pruned[pruned["method"] == method].groupby("recovery"), key=lambda g: (g[0] != "none", g[0])
        ):
            group = group.sort_values("ratio")
            ratios_here = [0.0, *group["ratio"]]
            values = [dense_value, *group["value"]]
            axis.errorbar(
                ratios_here, values, yerr=[0.0, *group["stderr"].fillna(0)], capsize=2, label=recovery,
                **recovery_style(recovery),
            )  # fmt: skip
        axis.axhline(dense_value, color="grey", linestyle="--", linewidth=0.8, label="dense")
        if chance is not None and not math.isnan(chance):
            axis.axhline(chance, color="black", linestyle=":", linewidth=0.8, label="chance")
        axis.set_title(f"{model} · {task} · {method}")
        ratio_axis(axis, ratios)
        layers_axis(axis, ratios, num_layers)
        axis.set_ylabel(metric_label(rows["metric"].iloc[0]) if len(rows) else "")
        axis.set_ylim(metric_limits(axis.get_ylim(), rows["value"]))
        axis.grid(alpha=0.3)
    handles, names = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncol=min(4, len(handles)), frameon=False)
    _save(figure, out_path)


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def rst_table(frame: pd.DataFrame, title: str) -> str:
    """A reStructuredText list-table (the HTML report's landing page is reStructuredText)."""
    lines = [f".. list-table:: {title}", "   :header-rows: 1", ""]
    for row in [list(map(str, frame.columns)), *([_cell(v) for v in r] for r in frame.itertuples(index=False))]:
        for index, cell in enumerate(row):
            text = cell.replace("|", "\\|") or " "
            lines.append(("   * - " if index == 0 else "     - ") + text)
    return "\n".join(lines)


def landing_rst(intro: list[str], findings: pd.DataFrame, headline: pd.DataFrame, notes: list[str]) -> str:
    """The HTML report's landing page: the definitions, the findings and the headline table (report.rst)."""
    parts = ["Findings", "========", "", *intro, ""]
    parts += [rst_table(findings, "The paper's findings, per model") if len(findings) else "No pruned variant.", ""]
    parts += ["Retention at each model's headline ratio", "-" * 40, ""]
    parts += [rst_table(headline, "Retention by task type") if len(headline) else "No pruned variant.", ""]
    parts += [*notes, ""]
    return "\n".join(parts)


def _cell(value) -> str:
    """A table cell: floats to 3 decimals; missing (NaN, pandas' NA, None) blank, never `<NA>` or `nan`."""
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _time_cells(timing: pd.DataFrame) -> pd.DataFrame:
    """The time table as printed: whole seconds, CPU share in percent, RSS in MB."""
    return pd.DataFrame(
        {
            "stage": timing["stage"],
            "jobs": timing["jobs"],
            "CPU-s": timing["cpu_s"].map("{:.0f}".format),
            "wall-s (sum over jobs)": timing["wall_s"].map("{:.0f}".format),
            "CPU share": timing["cpu_share"].map(lambda v: "" if math.isnan(v) else f"{v:.0%}"),
            "max RSS (MB, one process)": timing["max_rss_mb"].map(lambda v: "" if math.isnan(v) else f"{v:.0f}"),
        }
    )


def _dense_cells(tasks: pd.DataFrame) -> pd.DataFrame:
    """Dense baselines with their interval, chance level and whether the task counts."""
    return pd.DataFrame(
        {
            "model": tasks["model"],
            "task": tasks["task"],
            "type": tasks["type"],
            "metric": tasks["metric"],
            "value": tasks["dense_value"].map("{:.3f}".format),
            "sample mean [CI]": [_interval_cell(r.dense_mean, r.dense_low, r.dense_high) for r in tasks.itertuples()],
            "chance": [f"{r.chance:.3f} ({r.chance_source})" for r in tasks.itertuples()],
            "n": tasks["n"],
            "counted": ["yes" if r.informative else f"no: {r.reason}" for r in tasks.itertuples()],
        }
    )


def _interval_cell(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return "–"
    if math.isnan(low):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def layer_counts(score_paths: list[str | Path]) -> dict[str, int]:
    """model -> its number of decoder layers L, from its scores JSONs (for the k = layers-removed axis)."""
    from layerprune.report.compare import load_scores

    return {
        model: max(int(s["num_layers"]) for s in methods.values() if s.get("num_layers"))
        for model, methods in load_scores(score_paths).items()
        if any(s.get("num_layers") for s in methods.values())
    }


def recovery_records(folders: list[str | Path]) -> list[dict]:
    """Each recovered checkpoint's recovery.json (loss curves), placed by its folder's last four parts.

    The folder is <...>/<model>/<method>/<ratio>/<recovery>[-seed<s>], as the recover rule writes it; the
    training seed is the one the record says it trained with.
    """
    records = []
    for folder in map(Path, folders):
        record_path = folder / "recovery.json"
        if not record_path.is_file():
            raise FileNotFoundError(f"{record_path}: a recovered checkpoint without its recovery.json")
        record = read_json(record_path)
        model, method, ratio, name = folder.parts[-4:]
        recovery = re.sub(r"-seed[0-9]+$", "", name)
        records.append(
            {
                **record, "model": model, "method": method, "ratio": float(ratio), "recovery": recovery,
                "training_seed": (record.get("settings") or {}).get("seed"),
            }
        )  # fmt: skip
    return records


def intro_lines(
    level: str, bootstrap_samples: int, seed: int, task_weighting: str, training_seeds: list[int] | None = None
) -> list[str]:
    """The report's definitions: retention, drop, what the brackets are and what they cover.

    `training_seeds`: the seeds the recoveries were trained with (recovery.seeds); with more than one, the
    intervals resample them too, and the text says so.
    """
    text = (
        "Retention = mean chance-normalised score of a pruned variant ÷ the same for the dense model, over a task "
        "type's informative tasks (score − chance) / (1 − chance); 1.00 = nothing lost. Drop = mean score lost, in "
        f"points. {weighting_line(task_weighting)} "
    )
    if training_seeds and len(training_seeds) > 1:
        seeds = ", ".join(map(str, training_seeds))
        return [
            text + f"Each trained recovery ran once per training seed (recovery.seeds: {seeds}); its value is the "
            f"mean over its seeds. Brackets: {level} two-stage paired-bootstrap intervals ({bootstrap_samples} "
            "resamples of each task's items, the same items for every variant and the dense model, plus for a "
            "trained recovery a Student-t component of its seeds' spread, s/√m · t(m − 1), drawn once per resample "
            f"for all its tasks; seed {seed}). The intervals cover the variation between "
            "training seeds and the sampling of evaluation items: not the variation between calibration sets or "
            "between task choices. No recovery (none) trains nothing, so its intervals cover the items only.",
        ]
    return [
        text + f"Brackets: {level} paired-bootstrap intervals "
        f"({bootstrap_samples} resamples of each task's items, the same for every variant; seed {seed}). "
        "The intervals cover the sampling of evaluation items only: not the variation between training seeds of a "
        "recovery (one seed was trained; recovery.seeds trains several), between calibration sets or between task "
        "choices; a difference decided here may not survive another seed.",
    ]


def training_seeds_of(results: list[dict]) -> list[int]:
    """The distinct training seeds among the results (recovered checkpoints only), in order."""
    return sorted({int(r["training_seed"]) for r in results if r.get("training_seed") is not None})


def weighting_line(task_weighting: str) -> str:
    """The sentence under each retention table that states report.task_weighting."""
    flag = (
        " ⚠ marks a retention that the other weighting puts outside its interval (or the reverse), with that "
        "weighting's number beside it."
    )
    if task_weighting == "items":
        return (
            "Tasks weighted by their items (report.task_weighting: items): a large task moves a type's means more."
            + flag
        )
    return (
        "Tasks weighted equally (report.task_weighting: equal): a 10-item task moves a type's means as much as a "
        "200-item one." + flag
    )


def method_comparison(table: pd.DataFrame, score_paths: list[str | Path], out_dir: Path) -> list[str]:
    """Plots and overlap table comparing the scoring methods; returns report lines."""
    from layerprune.report.compare import load_scores, overlap_table, plot_layer_scores, plot_removal_map

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
        lines += [markdown_table(overlap), ""]
    return lines


@dataclass
class ReportData:
    """Everything the report shows, computed once; the writers below only format it (lm-eval keeps
    `make_table` apart from computing results in the same way)."""

    results: list[dict]
    table: pd.DataFrame  # summary.csv
    metrics: dict[str, dict[str, float]]  # metrics.json
    stats: tables.Retention
    verdicts: pd.DataFrame  # findings.csv
    by_ratio: pd.DataFrame  # recovery_by_ratio.csv
    between_ratios: pd.DataFrame  # ratio_contrasts.csv
    degeneration: pd.DataFrame
    buckets: pd.DataFrame
    arithmetic: pd.DataFrame
    timing: pd.DataFrame  # time.csv
    num_layers: dict[str, int]
    settings: tables.BootstrapSettings
    headline_ratios: dict[str, tuple[float, str]]
    training_seeds: list[int]

    @property
    def level(self) -> str:
        return f"{self.settings.confidence:.0%}"

    @property
    def several_seeds(self) -> bool:
        return len(self.training_seeds) > 1

    @property
    def intro(self) -> list[str]:
        s = self.settings
        return intro_lines(self.level, s.samples, s.seed, s.task_weighting, self.training_seeds)

    def csv_tables(self) -> dict[str, pd.DataFrame]:
        """The report's CSV files, by name (summary.csv apart: it is the table every other one is read from)."""
        return {
            "retention.csv": self.stats.per_task,
            "retention_by_type.csv": self.stats.per_type,
            "tasks_counted.csv": self.stats.tasks,
            "findings.csv": self.verdicts,
            "recovery_by_ratio.csv": self.by_ratio,
            "ratio_contrasts.csv": self.between_ratios,
            "degeneration.csv": self.degeneration,
            "error_buckets.csv": self.buckets,
            "arithmetic.csv": self.arithmetic,
            "time.csv": self.timing,  # without benchmark files: the header only (the rule declares the file)
        }


@dataclass
class PlotsDrawn:
    """Which of the optional figures exist, and each (model, task) metric plot's path in the report folder."""

    buckets: bool
    losses: bool
    tasks: list[tuple[str, str, Path]]
    method_lines: list[str]  # the scoring-method comparison's section (its plots and overlap table)


def compute_report(
    result_paths: list[str | Path],
    settings: tables.BootstrapSettings,
    score_paths: list[str | Path],
    benchmark_paths: list[str | Path],
    task_chance: dict[str, float],
    headline_ratio: float | None,
    self_bleu_max_texts: int,
) -> ReportData:
    """Read every result and compute every statistic, table and verdict the report shows."""
    results = load_results(result_paths)
    for result, path in zip(results, result_paths, strict=True):
        _apply_task_chance(result, task_chance.get(result["task"]), path)
    table = collect(results)
    # keyed as the results are filed: another training seed than the study's adds -seed<s> to the recovery
    metrics = {
        f"{r.model}/{r.method}/{r.ratio}/{r.recovery}{_replicate(r.training_seed, settings.seed)}/{r.task}": {
            "value": r.value,
            "value_ratio": r.value_ratio,
        }
        for r in table.itertuples()
    }
    stats = tables.retention(results, settings)
    degeneration, buckets, arithmetic = tables.diagnostics_tables(results, self_bleu_max_texts, settings.seed)
    return ReportData(
        results=results,
        table=table,
        metrics=metrics,
        stats=stats,
        verdicts=tables.findings(stats),
        by_ratio=tables.recovery_by_ratio(stats),
        between_ratios=tables.ratio_contrasts(stats),
        degeneration=degeneration,
        buckets=buckets,
        arithmetic=arithmetic,
        timing=tables.time_table(benchmark_paths),
        num_layers=layer_counts(score_paths),
        settings=settings,
        headline_ratios=tables.headline_ratios(stats.per_type, headline_ratio),
        training_seeds=training_seeds_of(results),
    )


def write_tables(data: ReportData, out_dir: Path) -> None:
    """summary.csv, metrics.json and every other CSV, each written whole or not at all."""
    with atomic_path(out_dir / "summary.csv") as tmp:
        data.table.to_csv(tmp, index=False)
    write_json(out_dir / "metrics.json", data.metrics)
    for name, frame in data.csv_tables().items():
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=False)


def draw_plots(
    data: ReportData, out_dir: Path, score_paths: list[str | Path], recovered: list[str | Path]
) -> PlotsDrawn:
    """Every figure: retention against the ratio, the diagnostics, the loss curves, each task's metric and the
    scoring methods compared."""
    tables.plot_retention_by_ratio(data.stats.per_type, out_dir / tables.HEADLINE_PNG, data.num_layers)
    code_ran = any(r.get("grader") == "code" for r in data.results)
    has_buckets = tables.plot_error_buckets(data.buckets, out_dir / tables.ERROR_BUCKETS_PNG, code_ran)
    tables.plot_degeneration(data.degeneration, out_dir / tables.DEGENERATION_PNG, data.num_layers)
    has_losses = tables.plot_loss_curves(recovery_records(recovered), out_dir / tables.LOSS_PNG)
    tasks = []
    chances = {(r.model, r.task): r.chance for r in data.stats.tasks.itertuples()}
    for (model, task), _ in data.table.groupby(["model", "task"], sort=True):
        plot_path = out_dir / "plots" / f"{model}__{task}.png"
        plot_task(data.table, model, task, plot_path, chances.get((model, task)), data.num_layers.get(model))
        tasks.append((model, task, plot_path.relative_to(out_dir)))
    method_lines = method_comparison(data.table, score_paths, out_dir)
    return PlotsDrawn(buckets=has_buckets, losses=has_losses, tasks=tasks, method_lines=method_lines)


def _findings_section(data: ReportData) -> list[str]:
    """The first screen: the paper's findings as verdicts, what the verdicts mean, SGR at each ratio."""
    lines = ["## Findings", ""]
    findings = tables.findings_table(data.verdicts, data.settings.confidence)
    lines += [markdown_table(findings) if len(findings) else "_No pruned variant has been evaluated._", ""]
    lines += [
        "Reproduced: the interval lies wholly on the paper's side of 0; not reproduced: wholly on the other side; "
        f"undecided: it covers 0; {tables.ONE_SEED}: a trained recovery ran with one training seed, so the "
        "interval beside it covers the items only and no verdict is given.",
        "",
        *tables.one_seed_lines(data.verdicts),
    ]
    if len(data.by_ratio):
        lines += [
            "### SGR at each ratio (generative retention, finding ii cell by cell)",
            "",
            markdown_table(tables.recovery_ratio_table(data.by_ratio, data.settings.confidence)),
            "",
            *tables.lowest_ratio_lines(data.by_ratio),
            "",
        ]
    return lines


def _headline_section(data: ReportData) -> list[str]:
    """Retention by task type at each model's headline ratio, the tasks counted and the retention plot."""
    at = sorted({r for r, _ in data.headline_ratios.values()})
    lines = [
        "## Retention"
        + (f" at {at[0]:g} of the layers removed" if len(at) == 1 else " at each model's own ratio" if at else ""),
        "",
    ]
    headline = tables.headline_table(data.stats.per_type, data.headline_ratios)
    lines += [markdown_table(headline) if len(headline) else "_no pruned variants_", ""]
    weighting = weighting_line(data.settings.task_weighting)
    lines += [f"{weighting} Tasks counted (dense lower bound above chance + {data.settings.min_dense_margin:g}):", ""]
    lines += tables.excluded_lines(data.stats) + [""]
    undefined = tables.nan_draw_lines(data.stats.per_type)
    if undefined:
        lines += ["Resamples without a retention (counted, not dropped silently):", "", *undefined, ""]
    lines += [
        f"![retention against the pruning ratio]({tables.HEADLINE_PNG})",
        "",
        tables.caption("headline", data.level, data.several_seeds),
        "",
    ]
    return lines


def _time_section(timing: pd.DataFrame) -> list[str]:
    """Where the time went, by stage; nothing without benchmark files."""
    if not len(timing):
        return []
    sampled = int(timing["sampled_jobs"].iloc[-1])
    return [
        "## Where the time went",
        "",
        markdown_table(_time_cells(timing)),
        "",
        "CPU-s and max RSS: each job's own getrusage (its process and the children it waited for); "
        "wall-s: Snakemake's benchmark files."
        + (
            f" {sampled} of {int(timing['jobs'].iloc[-1])} jobs left no usage line in their log, so their "
            "CPU-s and RSS are Snakemake's samples, which miss most of a job's time after its first 15 s."
            if sampled
            else ""
        ),
        "",
    ]


def _retention_sections(data: ReportData) -> list[str]:
    """Retention by task type at every ratio (with the paired contrasts between ratios), by task, and the dense
    baselines."""
    lines = ["## Retention by task type, every ratio", ""]
    every = tables.type_summary_table(data.stats.per_type)
    lines += [markdown_table(every) if len(every) else "_no pruned variants_", ""]
    lines += [weighting_line(data.settings.task_weighting), ""]
    if len(data.between_ratios):
        confidence = data.settings.confidence
        lines += [
            "### Between adjacent ratios (paired)",
            "",
            "Retention at a ratio minus retention at the next lower ratio, on the same item resamples: two marginal "
            "intervals that overlap can still hide a decided difference, and this says which.",
            "",
            markdown_table(tables.ratio_contrast_table(data.between_ratios, confidence)),
            "",
            *tables.ratio_contrast_lines(data.between_ratios, confidence),
            "",
        ]
    lines += ["## Retention by task", ""]
    by_task = tables.task_retention_table(data.stats.per_task)
    lines += [markdown_table(by_task) if len(by_task) else "_no pruned variants_", ""]
    tasks = data.stats.tasks
    lines += ["## Dense baselines", "", markdown_table(_dense_cells(tasks)) if len(tasks) else "", ""]
    return lines


def _diagnostics_section(data: ReportData, plots: PlotsDrawn) -> list[str]:
    """Degeneration of generated text, code error buckets, arithmetic by operation and digit count."""
    lines = ["## Diagnostics", "", "### Degeneration of generated text", ""]
    if len(data.degeneration):
        lines += [
            "Rep-n: the repeated fraction of whitespace-token n-grams within each output, averaged over outputs "
            "(Welleck et al. 2020). Self-BLEU: sacrebleu sentence BLEU of each output against the task's other "
            "outputs (0-1; high = outputs alike).",
            "",
            f"![degeneration]({tables.DEGENERATION_PNG})",
            "",
            tables.caption("degeneration", data.level),
            "",
            markdown_table(data.degeneration),
            "",
            "A blank cell: the measure is undefined for that result (self-BLEU needs two non-empty outputs; rep-n "
            "needs an output of at least n words).",
            "",
        ]
    else:
        lines += ["_No generative outputs._", ""]
    lines += ["### Code error buckets", ""]
    if plots.buckets:
        lines += [f"![error buckets]({tables.ERROR_BUCKETS_PNG})", "", tables.caption("error_buckets", data.level), ""]
        lines += [markdown_table(data.buckets), ""]
    else:
        lines += ["_No code task recorded per-sample `error_bucket`._", ""]
    arithmetic_ran = any("arithmetic" in str(r["task"]) for r in data.results)
    if len(data.arithmetic) or arithmetic_ran:  # no arithmetic task: no empty section
        lines += ["### Arithmetic by operation and digit count", ""]
    if len(data.arithmetic):
        lines += [
            "First-digit accuracy: the first digit of the output equals the target's (the paper's ablation score).",
            "",
            markdown_table(data.arithmetic),
            "",
        ]
    elif arithmetic_ran:
        lines += ["_No arithmetic task recorded per-sample `digits` and `operation`._", ""]
    return lines


def _figures_section(data: ReportData, plots: PlotsDrawn) -> list[str]:
    """Each task's metric against the ratio, the recovery loss curves and the scoring methods compared."""
    lines = ["## Metric against the pruning ratio", "", tables.caption("task", data.level), ""]
    lines += [f"### {model} · {task}\n\n![{task}]({path.as_posix()})\n" for model, task, path in plots.tasks]
    if plots.losses:
        lines += ["## Recovery training loss", "", f"![recovery loss]({tables.LOSS_PNG})", ""]
        lines += [tables.caption("loss", data.level), ""]
    return lines + plots.method_lines


def render_markdown(data: ReportData, plots: PlotsDrawn) -> str:
    """report.md: the findings first, then retention, time, every table, the diagnostics and the figures."""
    lines = ["# layerprune report", "", *sandbox_isolation_lines(data.results), *data.intro, ""]
    lines += _findings_section(data)
    lines += _headline_section(data)
    lines += _time_section(data.timing)
    lines += _retention_sections(data)
    lines += _diagnostics_section(data, plots)
    lines += _figures_section(data, plots)
    lines += [
        "## All results",
        "",
        "value_ratio = value ÷ the dense model's value on the same task, neither chance-normalised nor called "
        "retention; retention is defined at the top of this report.",
        "",
        markdown_table(data.table),
        "",
    ]
    return "\n".join(lines)


def render_landing(data: ReportData) -> str:
    """report.rst, the HTML report's landing page: the definitions, the findings and the headline table."""
    findings = tables.findings_table(data.verdicts, data.settings.confidence)
    headline = tables.headline_table(data.stats.per_type, data.headline_ratios)
    notes = [weighting_line(data.settings.task_weighting), "", *tables.excluded_lines(data.stats), ""]
    notes.append(tables.caption("headline", data.level, data.several_seeds))
    return landing_rst(data.intro, findings, headline, notes)


def aggregate(
    result_paths: list[str | Path],
    out_dir: str | Path,
    score_paths: list[str | Path] | None = None,
    bootstrap_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    headline_ratio: float | None = None,
    self_bleu_max_texts: int = 1000,
    min_dense_margin: float = 0.05,
    benchmark_paths: list[str | Path] | None = None,
    task_chance: dict[str, float] | None = None,
    task_weighting: str = "equal",
    recovered: list[str | Path] | None = None,
) -> pd.DataFrame:
    """Write summary.csv, the retention, findings and recovery CSVs, diagnostics, metrics.json, report.md, plots/.

    The report opens with the paper's findings as verdicts, then retention by task type at the
    headline ratio with paired-bootstrap intervals (see retention.py) and the retention-vs-ratio
    plot. `min_dense_margin`: a task counts only if the dense lower bound beats chance by this
    much. `benchmark_paths`: Snakemake benchmark TSVs under benchmarks/<rule>/ for the "where the
    time went" table (time.csv); none, no table. With `score_paths`, the report also compares the
    scoring methods (see compare.py) and draws k (layers removed) above each ratio axis.
    `recovered`: recovered checkpoint folders, whose recovery.json loss curves become
    plots/recovery_loss.png.
    """
    out_dir = Path(out_dir)
    settings = tables.BootstrapSettings(
        samples=bootstrap_samples,
        confidence=confidence,
        seed=seed,
        min_dense_margin=min_dense_margin,
        task_weighting=task_weighting,
    )
    data = compute_report(
        result_paths, settings, score_paths or [], benchmark_paths or [], task_chance or {}, headline_ratio,
        self_bleu_max_texts,
    )  # fmt: skip
    write_tables(data, out_dir)
    plots = draw_plots(data, out_dir, score_paths or [], recovered or [])
    with atomic_path(out_dir / "report.rst") as tmp:
        tmp.write_text(render_landing(data))
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(render_markdown(data, plots))
    return data.table
