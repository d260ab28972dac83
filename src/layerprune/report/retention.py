"""The statistics the report prints: retention as a ratio of chance-normalised means, and the paper's findings.

Every interval comes from one paired, task-stratified bootstrap per model: for each (model, task)
the dense model's evaluated items are resampled with replacement `samples` times, and the very same
resamples (the same item indices) are applied to the dense run and to every pruned or recovered
variant of that model. Differences between variants (sgr − data), between task types at one ratio
(generative − classification) and between ratios are therefore paired too.

On each resample, for a task t with chance level c_t (1/choices for multiple choice, 0 for free
generation unless the result says otherwise) a score s becomes (s − c_t) / (1 − c_t). A task type's
retention for a variant is

    mean over informative tasks t of normalised(variant score on t)
    ─────────────────────────────────────────────────────────────────
    mean over informative tasks t of normalised(dense score on t)

a ratio of means, never a mean of ratios, so a task with a tiny dense score cannot dominate it.
A task is informative when the dense model's lower confidence bound beats chance by
`min_dense_margin`; the others are listed with the reason. Beside each ratio: the absolute drop,
the mean over the same tasks of (dense score − variant score), in points (0-100).

A resample whose normalised dense mean is not positive has no retention; such draws are counted
(`nan_draws`) and left out of the interval, never dropped silently.

Training seeds (recovery.seeds): a trained recovery evaluated once per training seed is one variant
whose score on a task is the mean over its seeds. Its draws add a small-sample seed component to the
items' resample: on resample b, the mean over its seeds of the items' resample (shared with the dense
model) plus (s / sqrt(m)) times a Student t with m - 1 degrees of freedom, s the seeds' spread and m
their number, drawn once per resample for all of the variant's tasks (one checkpoint per seed answers
them all; see `pool_seeds`). Different variants draw independently (separate training runs), seeded from
`seed` and the variant. A bootstrap of 2-5 seeds covered 84-89 % at 95 %; this one is measured in
bench/seed_decisions.py and docs/pipeline.md. With one seed there is nothing to draw: the intervals are
those of the items alone, exactly, and no contrast of a trained recovery is decided (`verdict`). A
variant that lacks the result of one of its seeds on one of its tasks is refused (`missing_seeds`).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from layerprune.evaluation.chance import task_chance
from layerprune.registry import DISTILLATIONS

VARIANT = ["model", "method", "ratio", "recovery"]
TYPES = ("classification", "generative")
NONE = "none"
TASK_WEIGHTINGS = ("equal", "items")
# A contrast with a trained recovery on either side is decided only with at least this many training seeds
# behind each trained arm: with one, its interval covers the items alone, and one seed's luck (a real
# seed-to-seed spread of a few points) decides 31 % of null contrasts (bench/seed_decisions.py).
MIN_SEEDS = 2


@dataclass(frozen=True)
class BootstrapSettings:
    """How the intervals are drawn and which tasks count (config `report`)."""

    samples: int = field(default=1000, metadata={"help": "paired-bootstrap resamples behind every interval"})
    confidence: float = field(default=0.95, metadata={"help": "level of every interval (0-1)"})
    seed: int = field(default=0, metadata={"help": "seeds the resampling (the same seed, the same intervals)"})
    min_dense_margin: float = field(
        default=0.05,
        metadata={
            "help": "a task counts towards its type's retention only if the dense model's lower confidence "
            "bound exceeds chance by this much (score units, 0-1)"
        },
    )

    task_weighting: str = field(
        default="equal",
        metadata={"help": "equal: every task counts alike in its type's means; items: in proportion to its items"},
    )

    def __post_init__(self) -> None:
        if self.task_weighting not in TASK_WEIGHTINGS:
            choices = ", ".join(TASK_WEIGHTINGS)
            raise ValueError(f"report.task_weighting must be one of {choices}, got {self.task_weighting!r}")
        if self.samples < 1:
            raise ValueError(f"report.bootstrap_samples must be at least 1, got {self.samples}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"report.confidence must lie in (0, 1), got {self.confidence}")
        if not 0 <= self.min_dense_margin < 1:
            raise ValueError(f"report.min_dense_margin must lie in [0, 1), got {self.min_dense_margin}")


# ----------------------------------------------------------------------------- per-sample inputs


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


def _id_order(sample_id: Any) -> tuple:
    """Numeric ids in numeric order, then the rest as text: a fixed order for the resample weights."""
    numeric = isinstance(sample_id, (int, float)) and not isinstance(sample_id, bool)
    return (0, sample_id, "") if numeric else (1, 0, str(sample_id))


# ----------------------------------------------------------------------------- the bootstrap


@dataclass
class TaskBase:
    """One (model, task): the dense run, its chance level and the resamples shared by every variant."""

    model: str
    task: str
    type: str
    metric: str
    ids: list[Any]
    dense: np.ndarray
    dense_value: float
    chance: float
    chance_source: str
    weights: np.ndarray  # (samples, n): how often each item appears in each resample
    dense_low: float
    dense_high: float
    informative: bool
    reason: str

    def index(self) -> dict[Any, int]:
        return {sample_id: i for i, sample_id in enumerate(self.ids)}


def resample_weights(n: int, settings: BootstrapSettings, *key: Any) -> np.ndarray:
    """(samples, n) counts: resample b draws item i weights[b, i] times (n draws with replacement).

    Seeded per key (model, task), so the draws depend neither on the order of the results nor
    on which variants exist.
    """
    rng = np.random.default_rng([settings.seed, zlib.crc32("/".join(map(str, key)).encode())])
    return rng.multinomial(n, np.full(n, 1 / n), size=settings.samples).astype(float)


def interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of the finite draws (NaN, NaN when none is finite)."""
    finite = draws[np.isfinite(draws)]
    if not len(finite):
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def task_base(dense_result: dict[str, Any], settings: BootstrapSettings) -> TaskBase:
    scores = sample_scores(dense_result)
    ids = sorted(scores, key=_id_order)
    dense = np.array([scores[i] for i in ids])
    chance, source = task_chance(dense_result, f"{dense_result['model']}/dense/{dense_result['task']}")
    weights = resample_weights(len(ids), settings, dense_result["model"], dense_result["task"]) if ids else None
    if ids:
        low, high = interval(weights @ dense / len(ids), settings.confidence)
        threshold = chance + settings.min_dense_margin
        informative = low > threshold
        margin = settings.min_dense_margin
        reason = "" if informative else f"dense lower bound {low:.3f} ≤ chance {chance:.3f} + margin {margin:g}"
    else:
        low = high = math.nan
        informative, reason = False, "dense result has no per-sample scores to resample"
    return TaskBase(
        model=dense_result["model"],
        task=dense_result["task"],
        type=dense_result.get("type", "unknown"),
        metric=dense_result.get("metric", ""),
        ids=ids,
        dense=dense,
        dense_value=float(dense_result["value"]),
        chance=chance,
        chance_source=source,
        weights=weights if weights is not None else np.zeros((settings.samples, 0)),
        dense_low=low,
        dense_high=high,
        informative=informative,
        reason=reason,
    )


@dataclass
class Paired:
    """A variant's and the dense model's mean score on one task: on all shared items and per resample."""

    variant: float
    dense: float
    variant_draws: np.ndarray
    dense_draws: np.ndarray
    n: int
    seeds: tuple = ()  # the training seeds pooled (recovery.seeds); () when none was recorded
    items: np.ndarray | None = None  # the variant's score on each of the base's items (NaN: not scored by it)

    def disagreements(self, base: TaskBase) -> tuple[int, int]:
        """(worse, better): shared items the variant scored below / above the dense model (its seeds' mean)."""
        if self.items is None:
            return 0, 0
        shared = np.isfinite(self.items)
        difference = base.dense[shared] - self.items[shared]
        return int((difference > 0).sum()), int((difference < 0).sum())


def paired_means(base: TaskBase, variant_result: dict[str, Any]) -> Paired | None:
    """Means over the items both runs scored, on the full sample and on each of the base's resamples.

    Returns None when the runs share no item.
    """
    scores = sample_scores(variant_result)
    index = base.index()
    shared = [index[i] for i in scores if i in index]
    if not shared:
        return None
    mask = np.zeros(len(base.ids))
    mask[shared] = 1.0
    variant = np.zeros(len(base.ids))
    for sample_id, score in scores.items():
        if sample_id in index:
            variant[index[sample_id]] = score
    counted = base.weights @ mask  # items of resample b that the variant also scored
    with np.errstate(invalid="ignore", divide="ignore"):
        variant_draws = np.where(counted > 0, base.weights @ variant / counted, np.nan)
        dense_draws = np.where(counted > 0, base.weights @ (base.dense * mask) / counted, np.nan)
    items = np.full(len(base.ids), np.nan)
    items[shared] = variant[shared]
    return Paired(
        variant=float(variant[shared].mean()),
        dense=float(base.dense[shared].mean()),
        variant_draws=variant_draws,
        dense_draws=dense_draws,
        n=len(shared),
        items=items,
    )


@dataclass
class SeedDraws:
    """The seed stage of one trained recovery's draws, shared by all of its tasks (one checkpoint per seed answers
    them all): per resample b, a standard normal weight on each seed (`normal`, samples x seeds) and a chi-square
    draw with seeds - 1 degrees of freedom (`chi2`)."""

    normal: np.ndarray
    chi2: np.ndarray


def seed_draws(seeds: list[Any], settings: BootstrapSettings, *key: Any) -> SeedDraws | None:
    """The seed stage for a variant trained with `seeds` (None for one seed: nothing to draw). Seeded per variant
    `key`, on a stream of its own, so the items' resamples (resample_weights) are the same with or without it."""
    if len(seeds) < 2:
        return None
    rng = np.random.default_rng([settings.seed, zlib.crc32("/".join(["training seeds", *map(str, key)]).encode())])
    normal = rng.standard_normal((settings.samples, len(seeds)))
    return SeedDraws(normal, rng.chisquare(len(seeds) - 1, settings.samples))


def pool_seeds(pairs: dict[Any, Paired], draws: SeedDraws | None, order: list[Any]) -> Paired:
    """One variant's per-seed means on a task as one: the mean over its seeds, and per resample the mean over
    seeds of the items' resample plus a seed term that is (s / sqrt(m)) times a Student t with m - 1 degrees of
    freedom (s: the seeds' standard deviation on the task, m seeds).

    The seed term of resample b is sum_j Z_bj d_j / sqrt(m V_b), with d_j the seed's deviation from the mean over
    seeds, Z_bj standard normal and V_b chi-square (m - 1): for any weighted sum over tasks (the type means are
    one) the term is exactly the t-based small-sample component of that sum, because Z and V are shared by the
    variant's tasks. A bootstrap over 2-5 seeds cannot show this spread (a resample of 2 seeds is one of 3
    means): it covered 84-89 % at 95 % (bench/seed_decisions.py).
    """
    seeds = [seed for seed in order if seed in pairs]
    if len(seeds) == 1 or draws is None:
        return pairs[seeds[0]]  # one seed: exactly the single run's numbers
    points = np.array([pairs[s].variant for s in seeds])
    normal = draws.normal[:, [order.index(seed) for seed in seeds]]
    spread = normal @ (points - points.mean()) / np.sqrt(len(seeds) * draws.chi2)
    return Paired(
        variant=float(points.mean()),
        dense=float(np.mean([pairs[s].dense for s in seeds])),
        variant_draws=np.column_stack([pairs[s].variant_draws for s in seeds]).mean(axis=1) + spread,
        dense_draws=np.column_stack([pairs[s].dense_draws for s in seeds]).mean(axis=1),
        n=min(pairs[s].n for s in seeds),
        seeds=tuple(seeds),
        items=np.mean([pairs[s].items for s in seeds], axis=0),  # NaN where a seed did not score the item
    )


def missing_seeds(replicates: dict[tuple, dict[Any, dict[str, Any]]]) -> list[str]:
    """`model/method/ratio/recovery: (task, seed), ...` for every variant that lacks a result for one of its
    training seeds on one of its tasks (its seeds: those found on any of its tasks)."""
    seeds: dict[tuple, set] = {}
    for (variant, _), by_seed in replicates.items():
        seeds.setdefault(variant, set()).update(by_seed)
    missing: dict[tuple, list[str]] = {}
    for (variant, task), by_seed in sorted(replicates.items(), key=str):
        for seed in sorted(seeds[variant] - set(by_seed), key=_seed_order):
            missing.setdefault(variant, []).append(f"({task}, {seed})")
    return [f"{'/'.join(map(str, variant))}: {', '.join(pairs)}" for variant, pairs in sorted(missing.items(), key=str)]


# Below this many items on which a variant and the dense model disagree, the percentile bootstrap cannot show
# how far they may differ (no disagreement at all: every resample gives the same difference, a zero-width
# interval), so each interval is widened to hold the exact bound below.
MIN_DISAGREEMENTS = 10


def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """The exact (Clopper-Pearson) one-sided upper bound, at (1 + confidence) / 2, on a rate seen k times in n:
    the p with P(Binomial(n, p) <= k) = (1 - confidence) / 2; 1 for k = n. k = 0: 1 - ((1 - confidence) / 2)^(1/n),
    0.31 at n = 10 and 0.018 at n = 200 for 95 %."""
    if k >= n:
        return 1.0
    tail = (1 - confidence) / 2
    log_pmf = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]

    def cdf(p: float) -> float:
        return sum(math.exp(c + i * math.log(p) + (n - i) * math.log1p(-p)) for i, c in enumerate(log_pmf))

    low, high = k / n, 1.0
    for _ in range(100):  # the CDF falls as p grows: bisect to double precision
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) > tail else (low, middle)
    return high


def disagreement_bounds(
    bases: list[TaskBase], pairs: list[Paired], weights: np.ndarray, confidence: float
) -> tuple[int, tuple[float, float], tuple[float, float]] | None:
    """(disagreeing items, (drop low, high) in points, (retention low, high)) that the intervals must hold when
    the variant and the dense model disagree on fewer than MIN_DISAGREEMENTS items; None with more.

    Each item's score lies in [0, 1], so the drop is at most the rate of items the variant does worse on, and
    at least minus the rate it does better on; an exact one-sided bound on each rate (Clopper-Pearson, from
    the items pooled over the tasks) bounds the drop, and the retention through the dense mean
    (retention = 1 - drop / (dense - chance) for one task; over several, the weighted means of both).
    """
    worse = better = n = 0
    for base, pair in zip(bases, pairs, strict=True):
        w, b = pair.disagreements(base)
        worse, better, n = worse + w, better + b, n + pair.n
    if worse + better >= MIN_DISAGREEMENTS or not n:
        return None
    up_worse, up_better = clopper_pearson_upper(worse, n, confidence), clopper_pearson_upper(better, n, confidence)
    chances = np.array([b.chance for b in bases])
    scale = float(np.average(1 / (1 - chances), weights=weights))  # normalised units per score unit
    dense = float(np.average([(p.dense - c) / (1 - c) for p, c in zip(pairs, chances, strict=True)], weights=weights))
    ret = (1 - up_worse * scale / dense, 1 + up_better * scale / dense) if dense > 0 else (math.nan, math.nan)
    return worse + better, (-100 * up_better, 100 * up_worse), ret


def _hull(bounds: tuple[float, float], floor: tuple[float, float]) -> tuple[float, float]:
    """The smallest interval holding both (NaN bounds ignored)."""
    return float(np.nanmin([bounds[0], floor[0]])), float(np.nanmax([bounds[1], floor[1]]))


def normalised(score: np.ndarray | float, chance: float) -> np.ndarray | float:
    return (score - chance) / (1 - chance)


@dataclass
class TypeDraws:
    """A variant's retention and drop on one task type, point estimate and per-resample draws."""

    retention: float
    retention_draws: np.ndarray
    drop: float
    drop_draws: np.ndarray
    tasks: tuple[str, ...]
    recovery: str = NONE  # the variant's recovery: none trains nothing, every other one is a training run
    seeds: int = 0  # training seeds behind a trained recovery's draws (recovery.seeds); 0 where nothing was trained

    @property
    def one_seed(self) -> bool:
        """A trained recovery behind which one training seed stands: its draws cover the items alone."""
        return self.recovery != NONE and self.seeds < MIN_SEEDS


def _ratio_of_means(variant: np.ndarray, dense: np.ndarray, chances: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean normalised variant score ÷ the same for dense over the task axis (0); NaN where ≤ 0."""
    numerator = np.average(normalised(variant, chances[:, None]), axis=0, weights=weights)
    denominator = np.average(normalised(dense, chances[:, None]), axis=0, weights=weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def task_weights(pairs: list[Paired], weighting: str = "equal") -> np.ndarray:
    """Each task's weight in its type's means: 1 each (`equal`), or its number of paired items (`items`)."""
    if weighting == "items":
        return np.array([float(p.n) for p in pairs])
    return np.ones(len(pairs))


def combine(bases: list[TaskBase], pairs: list[Paired], weighting: str = "equal") -> TypeDraws:
    """Retention (ratio of mean chance-normalised scores) and drop (points) over the given tasks.

    `weighting` (report.task_weighting): equal, every task alike, so a 10-item task moves the
    means as much as a 200-item one; items, each task in proportion to its items, as if the
    type's items were pooled.
    """
    chances = np.array([b.chance for b in bases])
    weights = task_weights(pairs, weighting)
    points_variant = np.array([[p.variant] for p in pairs])
    points_dense = np.array([[p.dense] for p in pairs])
    draws_variant = np.vstack([p.variant_draws for p in pairs])
    draws_dense = np.vstack([p.dense_draws for p in pairs])
    return TypeDraws(
        retention=float(_ratio_of_means(points_variant, points_dense, chances, weights)[0]),
        retention_draws=_ratio_of_means(draws_variant, draws_dense, chances, weights),
        drop=float(np.average(points_dense - points_variant, axis=0, weights=weights)[0] * 100),
        drop_draws=np.average(draws_dense - draws_variant, axis=0, weights=weights) * 100,
        tasks=tuple(b.task for b in bases),
    )


def type_intervals(
    bases: list[TaskBase], pairs: list[Paired], weighting: str, settings: BootstrapSettings
) -> tuple[TypeDraws, tuple[float, float], tuple[float, float]]:
    """(draws, retention interval, drop interval) of a type's tasks under `weighting`, the percentile intervals
    widened to the exact bound where few items disagree (`disagreement_bounds`)."""
    combined = combine(bases, pairs, weighting)
    ret = interval(combined.retention_draws, settings.confidence)
    drop = interval(combined.drop_draws, settings.confidence)
    floor = disagreement_bounds(bases, pairs, task_weights(pairs, weighting), settings.confidence)
    if floor is not None:
        drop, ret = _hull(drop, floor[1]), _hull(ret, floor[2])
    return combined, ret, drop


def weightings_diverge(one: tuple[float, float, float], other: tuple[float, float, float]) -> bool:
    """Whether two (estimate, low, high) of one retention under the two task weightings differ beyond their
    intervals: either estimate outside the other's interval. (With equal tasks they are the same number.)"""
    if any(math.isnan(v) for v in (*one, *other)):
        return False
    return not (one[1] <= other[0] <= one[2]) or not (other[1] <= one[0] <= other[2])


@dataclass
class Retention:
    """Everything the report prints about retention, and the draws the findings are computed from."""

    per_task: pd.DataFrame
    per_type: pd.DataFrame
    tasks: pd.DataFrame  # one row per (model, task): dense score, its interval, chance, informative, reason
    draws: dict[tuple[tuple, str], TypeDraws]  # (variant, type) -> draws
    settings: BootstrapSettings


TASK_COLUMNS = [
    *VARIANT, "task", "type", "metric", "value", "dense_value", "chance", "informative", "retention", "ci_low",
    "ci_high", "drop_points", "drop_low", "drop_high", "value_ratio", "n", "nan_draws", "training_seeds",
    "disagreements",
]  # fmt: skip
TYPE_COLUMNS = [
    *VARIANT, "type", "retention", "ci_low", "ci_high", "drop_points", "drop_low", "drop_high", "tasks",
    "excluded", "nan_draws", "draws", "training_seeds", "disagreements", "other_weighting", "other_retention",
    "other_ci_low", "other_ci_high", "weightings_diverge",
]  # fmt: skip
BASE_COLUMNS = [
    "model", "task", "type", "metric", "dense_value", "dense_mean", "dense_low", "dense_high", "chance",
    "chance_source", "n", "informative", "reason",
]  # fmt: skip


def _seed_order(seed: Any) -> tuple:
    return (seed is not None, seed if seed is not None else 0)


def _seed_list(seeds: Any) -> str:
    """The training seeds of a row as text ("0 1 2"); empty where none was recorded (no recovery)."""
    return " ".join(str(seed) for seed in sorted(seeds, key=_seed_order) if seed is not None)


def seed_replicates(results: list[dict[str, Any]]) -> dict[tuple, dict[Any, dict[str, Any]]]:
    """(variant, task) -> training seed -> result, for every pruned variant (recovery.seeds: one result per seed).

    A result without a `training_seed` (no recovery, or evaluated before results stored it) is the variant's
    one run; two results of one variant and task with the same training seed are an error, never averaged.
    """
    replicates: dict[tuple, dict[Any, dict[str, Any]]] = {}
    for result in results:
        if result["method"] == "dense":
            continue
        variant = tuple(result[k] for k in VARIANT)
        seed = result.get("training_seed")
        by_seed = replicates.setdefault((variant, result["task"]), {})
        if seed in by_seed:
            name = "/".join(map(str, (*variant, result["task"])))
            raise ValueError(
                f"more than one result for {name} with training seed {seed}: each recovery.seeds replicate is "
                "evaluated once"
            )
        by_seed[seed] = result
    return replicates


def retention(results: list[dict[str, Any]], settings: BootstrapSettings) -> Retention:
    """Per-task and per-type retention with paired intervals, for every pruned variant of every model."""
    bases: dict[tuple[str, str], TaskBase] = {}
    for result in results:
        if result["method"] == "dense":
            key = (result["model"], result["task"])
            if key in bases:
                raise ValueError(f"more than one dense result for model {key[0]!r}, task {key[1]!r}")
            bases[key] = task_base(result, settings)
    task_rows: list[dict[str, Any]] = []
    paired: dict[tuple, dict[str, Paired]] = {}
    types: dict[tuple, str] = {}
    replicates = seed_replicates(results)
    missing = missing_seeds(replicates)
    if missing:  # a mean over other seeds on one task than on the next is no mean over the variant's seeds
        raise ValueError(
            "training seeds missing: every (task, training seed) of a trained variant needs its result; none for "
            + "; ".join(missing)
            + ". Evaluate them (snakemake plans them), or leave the seed out of recovery.seeds"
        )
    variant_seeds: dict[tuple, list[Any]] = {}
    for (variant, _), by_seed in replicates.items():
        variant_seeds[variant] = sorted(set(variant_seeds.get(variant, [])) | set(by_seed), key=_seed_order)
    counts = {variant: seed_draws(seeds, settings, *variant) for variant, seeds in variant_seeds.items()}
    for (variant, task), by_seed in replicates.items():
        first = next(iter(by_seed.values()))
        base = bases.get((variant[0], task))
        pairs = {seed: paired_means(base, result) for seed, result in by_seed.items()} if base else {}
        pairs = {seed: pair for seed, pair in pairs.items() if pair is not None}
        pair = pool_seeds(pairs, counts[variant], variant_seeds[variant]) if pairs else None
        row: dict[str, Any] = dict(zip(VARIANT, variant, strict=True))
        row.update(task=task, type=first.get("type", "unknown"), metric=first.get("metric", ""))
        value = float(np.mean([float(r["value"]) for r in by_seed.values()]))  # the mean over training seeds
        row.update(value=value, dense_value=base.dense_value if base else math.nan)
        row["value_ratio"] = row["value"] / row["dense_value"] if row["dense_value"] else math.nan
        row.update(chance=base.chance if base else math.nan, informative=bool(base and base.informative))
        row.update(n=pair.n if pair else 0, nan_draws=0)
        row.update(dict.fromkeys(["retention", "ci_low", "ci_high", "drop_points", "drop_low", "drop_high"], math.nan))
        if pair is not None:
            single = combine([base], [pair])
            row["drop_points"] = single.drop
            row["drop_low"], row["drop_high"] = interval(single.drop_draws, settings.confidence)
            row["disagreements"] = sum(pair.disagreements(base))
            floor = disagreement_bounds([base], [pair], np.ones(1), settings.confidence)
            if floor is not None:
                row["drop_low"], row["drop_high"] = _hull((row["drop_low"], row["drop_high"]), floor[1])
            if base.informative:
                row["retention"] = single.retention
                row["ci_low"], row["ci_high"] = interval(single.retention_draws, settings.confidence)
                if floor is not None:
                    row["ci_low"], row["ci_high"] = _hull((row["ci_low"], row["ci_high"]), floor[2])
                row["nan_draws"] = int(np.isnan(single.retention_draws).sum())
            paired.setdefault(variant, {})[task] = pair
        row["training_seeds"] = _seed_list(by_seed)
        types[(variant, task)] = row["type"]
        task_rows.append(row)
    per_task = pd.DataFrame(task_rows, columns=TASK_COLUMNS)

    type_rows, draws = [], {}
    variant_types = sorted({(variant, task_type) for (variant, _), task_type in types.items()}, key=str)
    for variant, task_type in variant_types:
        model = variant[0]
        evaluated = sorted(task for (v, task), t in types.items() if v == variant and t == task_type)
        counted = [task for task in evaluated if task in paired.get(variant, {}) and bases[(model, task)].informative]
        row = dict(zip(VARIANT, variant, strict=True)) | {"type": task_type, "tasks": len(counted)}
        row.update(excluded=len(evaluated) - len(counted), draws=settings.samples)
        row["training_seeds"] = _seed_list(variant_seeds.get(variant, []))
        row["weightings_diverge"] = False
        if counted:
            type_bases, type_pairs = [bases[(model, t)] for t in counted], [paired[variant][t] for t in counted]
            combined, (row["ci_low"], row["ci_high"]), (row["drop_low"], row["drop_high"]) = type_intervals(
                type_bases, type_pairs, settings.task_weighting, settings
            )
            combined.recovery, combined.seeds = variant[3], len(variant_seeds.get(variant, []))
            draws[(variant, task_type)] = combined
            row.update(retention=combined.retention, drop_points=combined.drop)
            row["nan_draws"] = int(np.isnan(combined.retention_draws).sum())
            row["disagreements"] = sum(sum(p.disagreements(b)) for b, p in zip(type_bases, type_pairs, strict=True))
            # the other weighting, beside it: a lucky small task must not hide a collapsed large one
            other = next(w for w in TASK_WEIGHTINGS if w != settings.task_weighting)
            alternative, (low, high), _ = type_intervals(type_bases, type_pairs, other, settings)
            row.update(other_weighting=other, other_retention=alternative.retention, other_ci_low=low)
            row["other_ci_high"] = high
            row["weightings_diverge"] = weightings_diverge(
                (combined.retention, row["ci_low"], row["ci_high"]), (alternative.retention, low, high)
            )
        type_rows.append(row)
    per_type = pd.DataFrame(type_rows, columns=TYPE_COLUMNS)
    base_rows = [
        {
            "model": b.model,
            "task": b.task,
            "type": b.type,
            "metric": b.metric,
            "dense_value": b.dense_value,
            "dense_mean": float(b.dense.mean()) if len(b.ids) else math.nan,
            "dense_low": b.dense_low,
            "dense_high": b.dense_high,
            "chance": b.chance,
            "chance_source": b.chance_source,
            "n": len(b.ids),
            "informative": b.informative,
            "reason": b.reason,
        }  # fmt: skip
        for b in sorted(bases.values(), key=lambda b: (b.model, b.task))
    ]
    return Retention(per_task, per_type, pd.DataFrame(base_rows, columns=BASE_COLUMNS), draws, settings)


# ----------------------------------------------------------------------------- findings

REPRODUCED, NOT_REPRODUCED, UNDECIDED, NOT_TESTED = "reproduced", "not reproduced", "undecided", "not tested"
ONE_SEED = "one seed: not decidable"
FINDING_COLUMNS = ["model", "finding", "claim", "statistic", "estimate", "ci_low", "ci_high", "verdict", "detail"]


@dataclass
class Contrast:
    """A paired difference averaged over several (method, ratio) cells: point estimate and draws."""

    point: float
    draws: np.ndarray
    cells: int
    unit: str = "(method, ratio) cell"
    one_seed: tuple[str, ...] = ()  # trained recoveries among its arms with fewer than MIN_SEEDS seeds


def _one_seed(*arms: TypeDraws) -> tuple[str, ...]:
    """The trained recoveries among `arms` that one training seed stands behind (sorted, once each)."""
    return tuple(sorted({arm.recovery for arm in arms if arm.one_seed}))


def _mean_contrast(pairs: list[tuple[TypeDraws, TypeDraws]]) -> Contrast | None:
    """Mean over pairs of (first − second) retention, per draw."""
    if not pairs:
        return None
    point = float(np.mean([a.retention - b.retention for a, b in pairs]))
    draws = np.mean([a.retention_draws - b.retention_draws for a, b in pairs], axis=0)
    return Contrast(point, draws, len(pairs), one_seed=_one_seed(*(arm for pair in pairs for arm in pair)))


def verdict(contrast: Contrast, sign: int, confidence: float) -> tuple[str, float, float, str]:
    """(verdict, ci_low, ci_high, detail): reproduced only when the interval lies wholly on the paper's side of 0.

    A contrast with a trained recovery behind which one training seed stands (`contrast.one_seed`) is
    never decided: its interval covers the items alone, not the seed-to-seed spread of a training run,
    so its verdict is ONE_SEED, with the items-only interval and what the items alone would say.
    """
    finite = np.isfinite(contrast.draws)
    low, high = interval(contrast.draws, confidence)
    detail = f"mean over {contrast.cells} {contrast.unit}{'s' if contrast.cells > 1 else ''}"
    missing = int((~finite).sum())
    if missing:
        detail += f"; {missing} of {len(finite)} draws had no retention (dense mean ≤ chance) and are left out"
    if finite.sum() < len(finite) / 2:
        return NOT_TESTED, low, high, f"retention undefined in {missing} of {len(finite)} draws"
    if sign * low > 0 and sign * high > 0:
        decided, note = REPRODUCED, ""
    elif sign * low < 0 and sign * high < 0:
        decided, note = NOT_REPRODUCED, ""
    else:
        decided, note = UNDECIDED, "; the interval covers 0"
    if contrast.one_seed:
        trained = ", ".join(contrast.one_seed)
        return (
            ONE_SEED,
            low,
            high,
            (
                f"{detail}; {trained} trained with one seed: the interval covers the items only, not the "
                f"seed-to-seed spread (items alone: {decided}; recovery.seeds with {MIN_SEEDS}+ seeds decides)"
            ),
        )
    return decided, low, high, detail + note


def _cells(draws: dict, model: str, task_type: str, recovery: str) -> dict[tuple[str, float], TypeDraws]:
    """(method, ratio) -> draws of one model, type and recovery."""
    return {
        (variant[1], variant[2]): d
        for (variant, t), d in draws.items()
        if variant[0] == model and t == task_type and variant[3] == recovery
    }


def findings(stats: Retention) -> pd.DataFrame:
    """The paper's three findings, per model, each as a paired difference with its interval and a verdict.

    (i)   generation loses more than classification: generative − classification retention with no
          recovery, within each (method, ratio), averaged over them; the paper: < 0.
    (ii)  SGR recovers generation better than the data control (sgr − data) and than no recovery
          (sgr − none): generative retention, within each (method, ratio), averaged; the paper: > 0.
    (iii) recovery shrinks as the ratio grows: gain(r) = generative retention of the best recovery − none
          at ratio r; per method gain(lowest ratio) − gain(highest ratio), averaged over methods; the
          paper: > 0. The best recovery is the one with the largest mean point gain, chosen once and
          held fixed in every draw (so that no draw picks its own luckiest recovery).
    (kd)  beyond the paper, only when a study runs kd / kd_onpolicy: distillation − sgr generative
          retention, within each (method, ratio), averaged; > 0 = distillation recovers more.
    """
    confidence = stats.settings.confidence
    models = sorted({variant[0] for variant, _ in stats.draws} | set(stats.per_type["model"]))
    rows = []
    for model in models:

        def row(
            finding: str, claim: str, statistic: str, contrast: Contrast | None, sign: int, why: str, model=model
        ) -> None:
            entry = {"model": model, "finding": finding, "claim": claim, "statistic": statistic}
            if contrast is None:
                entry.update(estimate=math.nan, ci_low=math.nan, ci_high=math.nan, verdict=NOT_TESTED, detail=why)
            else:
                result, low, high, detail = verdict(contrast, sign, confidence)
                entry.update(estimate=contrast.point, ci_low=low, ci_high=high, verdict=result, detail=detail)
            rows.append(entry)

        gen_none = _cells(stats.draws, model, "generative", NONE)
        cls_none = _cells(stats.draws, model, "classification", NONE)
        shared = sorted(set(gen_none) & set(cls_none))
        why = _absent(stats, model, {"generative": gen_none, "classification": cls_none}, "recovery none")
        row(
            "i",
            "generation loses more than classification at equal ratio",
            "generative − classification retention, no recovery",
            _mean_contrast([(gen_none[c], cls_none[c]) for c in shared]),
            -1,
            why,
        )
        sgr = _cells(stats.draws, model, "generative", "sgr")
        for control in ("data", NONE):
            other = _cells(stats.draws, model, "generative", control)
            shared = sorted(set(sgr) & set(other))
            why = _absent(stats, model, {"sgr": sgr, control: other}, "generative retention")
            row(
                "ii",
                f"SGR recovers generation more than {'the data control' if control == 'data' else 'no recovery'}",
                f"sgr − {control} generative retention",
                _mean_contrast([(sgr[c], other[c]) for c in shared]),
                +1,
                why,
            )
        contrast, statistic, why = _shrinking_recovery(stats, model)
        row("iii", "recovery shrinks as the ratio grows", statistic, contrast, +1, why)
        # Beyond the paper, only where a study runs distillation: does the dense model's whole
        # distribution recover more than its sampled answers? (> 0: distillation recovers more)
        # (a study that ran it gets the row even where nothing could be tested, saying why)
        ran = set(stats.per_task.loc[stats.per_task["model"] == model, "recovery"])
        for distilled in DISTILLATIONS:
            cells = _cells(stats.draws, model, "generative", distilled)
            if cells or distilled in ran:
                shared = sorted(set(cells) & set(sgr))
                row(
                    "kd",
                    f"distillation ({distilled}) recovers generation more than SGR (beyond the paper)",
                    f"{distilled} − sgr generative retention",
                    _mean_contrast([(cells[c], sgr[c]) for c in shared]),
                    +1,
                    _absent(stats, model, {distilled: cells, "sgr": sgr}, "generative retention"),
                )
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)


RECOVERY_COLUMNS = ["model", "method", "ratio", "contrast", "estimate", "ci_low", "ci_high", "verdict"]


def recovery_by_ratio(stats: Retention) -> pd.DataFrame:
    """Finding (ii) cell by cell: sgr − data and sgr − none generative retention at each (method, ratio).

    The findings table averages over the cells; this says where recovery is decided and where
    not (e.g. at the lowest ratio, where a small model has the least to recover). Verdicts as in
    `verdict`, with the paper's side > 0.
    """
    confidence = stats.settings.confidence
    rows = []
    models = sorted({variant[0] for variant, _ in stats.draws})
    for model in models:
        sgr = _cells(stats.draws, model, "generative", "sgr")
        for control in ("data", NONE):
            other = _cells(stats.draws, model, "generative", control)
            for method, ratio in sorted(set(sgr) & set(other)):
                a, b = sgr[(method, ratio)], other[(method, ratio)]
                contrast = Contrast(
                    a.retention - b.retention, a.retention_draws - b.retention_draws, 1, one_seed=_one_seed(a, b)
                )
                result, low, high, _ = verdict(contrast, +1, confidence)
                rows.append(
                    {
                        "model": model, "method": method, "ratio": ratio, "contrast": f"sgr − {control}",
                        "estimate": contrast.point, "ci_low": low, "ci_high": high, "verdict": result,
                    }
                )  # fmt: skip
    return pd.DataFrame(rows, columns=RECOVERY_COLUMNS)


def _absent(stats: Retention, model: str, arms: dict[str, dict], what: str) -> str:
    """Why a contrast has no cell: which arm is missing, and whether its tasks were all excluded."""
    missing = [name for name, cells in arms.items() if not cells]
    if not missing:
        return "no (method, ratio) has both arms"
    reasons = []
    for name in missing:
        task_type = name if name in TYPES else "generative"
        bases = stats.tasks[(stats.tasks["model"] == model) & (stats.tasks["type"] == task_type)]
        if not len(bases):
            reasons.append(f"no {task_type} task evaluated")
        elif not bases["informative"].any():
            reasons.append(f"no informative {task_type} task ({len(bases)} excluded)")
        else:
            reasons.append(f"no {name} variant with {what}")
    return "; ".join(reasons)


def _shrinking_recovery(stats: Retention, model: str) -> tuple[Contrast | None, str, str]:
    none = _cells(stats.draws, model, "generative", NONE)
    recoveries = sorted({v[3] for v, t in stats.draws if v[0] == model and t == "generative"} - {NONE})
    if not none or not recoveries:
        return None, "gain(lowest ratio) − gain(highest ratio)", "needs generative retention with none and a recovery"
    gains = {}
    for recovery in recoveries:
        cells = _cells(stats.draws, model, "generative", recovery)
        shared = set(cells) & set(none)
        if shared:
            gains[recovery] = np.mean([cells[c].retention - none[c].retention for c in shared])
    if not gains:
        return None, "gain(lowest ratio) − gain(highest ratio)", "no (method, ratio) has a recovery and none"
    best = max(sorted(gains), key=gains.__getitem__)
    cells = _cells(stats.draws, model, "generative", best)
    statistic = f"gain(lowest ratio) − gain(highest ratio), gain = {best} − none generative retention"
    per_method, arms = [], []
    for method in sorted({m for m, _ in cells}):
        ratios = sorted(r for m, r in set(cells) & set(none) if m == method)
        if len(ratios) >= 2:
            low, high = (method, ratios[0]), (method, ratios[-1])
            point = (cells[low].retention - none[low].retention) - (cells[high].retention - none[high].retention)
            draws = (cells[low].retention_draws - none[low].retention_draws) - (
                cells[high].retention_draws - none[high].retention_draws
            )
            per_method.append((point, draws))
            arms += [cells[low], cells[high], none[low], none[high]]
    if not per_method:
        return None, statistic, "one ratio only: nothing to compare across ratios"
    contrast = Contrast(
        float(np.mean([p for p, _ in per_method])),
        np.mean([d for _, d in per_method], axis=0),
        len(per_method),
        unit="method",
        one_seed=_one_seed(*arms),
    )
    return contrast, statistic, ""


RATIO_CONTRAST_COLUMNS = [
    "model", "method", "recovery", "type", "from_ratio", "to_ratio", "estimate", "ci_low", "ci_high", "verdict",
    "detail",
]  # fmt: skip
LOWER, HIGHER = "lower at the higher ratio", "higher at the higher ratio"


def ratio_contrasts(stats: Retention) -> pd.DataFrame:
    """Retention at each ratio minus retention at the next lower ratio, paired, per (model, method, recovery, type).

    Both retentions are computed on the very same item resamples, so the interval of their
    difference is far narrower than the two marginal intervals suggest when they overlap (the
    items a variant gets right at one ratio it mostly gets right at the next). Verdict: lower or
    higher at the higher ratio when the interval excludes 0, else undecided.
    """
    confidence = stats.settings.confidence
    cells: dict[tuple, dict[float, TypeDraws]] = {}
    for (variant, task_type), draws in stats.draws.items():
        model, method, ratio, recovery = variant
        cells.setdefault((model, method, recovery, task_type), {})[float(ratio)] = draws
    rows = []
    for (model, method, recovery, task_type), by_ratio in sorted(cells.items(), key=lambda item: str(item[0])):
        ratios = sorted(by_ratio)
        for low_ratio, high_ratio in zip(ratios, ratios[1:], strict=False):
            low, high = by_ratio[low_ratio], by_ratio[high_ratio]
            cell = {
                "model": model, "method": method, "recovery": recovery, "type": task_type, "from_ratio": low_ratio,
                "to_ratio": high_ratio,
            }  # fmt: skip
            if low.tasks != high.tasks:  # a difference over different tasks is no paired contrast: listed, not made
                detail = (
                    f"not made: the tasks counted differ ({low_ratio:g}: {', '.join(low.tasks)}; "
                    f"{high_ratio:g}: {', '.join(high.tasks)})"
                )
                rows.append(
                    cell
                    | {"estimate": math.nan, "ci_low": math.nan, "ci_high": math.nan}
                    | {"verdict": NOT_TESTED, "detail": detail}
                )
                continue
            draws = high.retention_draws - low.retention_draws
            ci_low, ci_high = interval(draws, confidence)
            if _one_seed(low, high):  # two training runs, one seed each: the items alone cannot decide
                decided = ONE_SEED
            elif ci_high < 0:
                decided = LOWER
            elif ci_low > 0:
                decided = HIGHER
            else:
                decided = UNDECIDED
            rows.append(
                cell | {
                    "estimate": high.retention - low.retention, "ci_low": ci_low, "ci_high": ci_high,
                    "verdict": decided, "detail": "",
                }
            )  # fmt: skip
    return pd.DataFrame(rows, columns=RATIO_CONTRAST_COLUMNS)
