"""Side-by-side comparison of scoring methods for the report.

For each model: the per-layer scores of every method that has them, a removal map
(which layers each method removes at each pruning ratio), and the overlap
(Jaccard index |A ∩ B| / |A ∪ B|) of the removal sets of every pair of methods at
each ratio.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pandas as pd

from layerprune.io import read_json
from layerprune.scoring.score import layers_to_remove


def load_scores(score_paths: list[str | Path]) -> dict[str, dict[str, dict[str, Any]]]:
    """model -> method -> scores JSON; the model name is the scores file's parent folder."""
    by_model: dict[str, dict[str, dict[str, Any]]] = {}
    for path in score_paths:
        path = Path(path)
        scores = read_json(path)
        by_model.setdefault(path.parent.name, {})[scores["method"]] = scores
    return by_model


def removal_sets(scores: dict[str, Any], ratios: list[float]) -> dict[float, list[int]]:
    return {ratio: layers_to_remove(scores, ratio) for ratio in ratios}


def jaccard(first: list[int], second: list[int]) -> float:
    union = set(first) | set(second)
    return len(set(first) & set(second)) / len(union) if union else 1.0


def overlap_table(by_model: dict[str, dict[str, dict[str, Any]]], ratios: list[float]) -> pd.DataFrame:
    """One row per (model, ratio, method pair) with the Jaccard index of their removal sets."""
    rows = []
    for model, methods in sorted(by_model.items()):
        removed = {method: removal_sets(scores, ratios) for method, scores in methods.items()}
        for ratio in ratios:
            for first, second in itertools.combinations(sorted(methods), 2):
                rows.append(
                    {
                        "model": model,
                        "ratio": ratio,
                        "method_a": first,
                        "method_b": second,
                        "jaccard": jaccard(removed[first][ratio], removed[second][ratio]),
                    }
                )
    return pd.DataFrame(rows, columns=["model", "ratio", "method_a", "method_b", "jaccard"])


def plot_layer_scores(methods: dict[str, dict[str, Any]], model: str, out_path: Path) -> bool:
    """One panel per method (stacked) with per-layer scores; False, and a figure saying so, when none has scores."""
    from layerprune.report.tables import COLUMN_WIDTH, _note, _pyplot, _save

    scored = {method: s for method, s in sorted(methods.items()) if s.get("scores")}
    if not scored:
        _note(out_path, f"{model}: no scoring method recorded per-layer scores")
        return False
    plt = _pyplot()
    figure, axes = plt.subplots(
        len(scored), 1, figsize=(COLUMN_WIDTH, 1.6 * len(scored) + 0.4), squeeze=False, layout="constrained"
    )
    for axis, (method, scores) in zip(axes[:, 0], scored.items(), strict=True):
        values = scores["scores"]
        axis.bar(range(len(values)), values, color="tab:blue")
        axis.set_title(method)
        axis.set_xlabel("layer")
        axis.set_ylabel("score (low = removed first)")
        axis.grid(alpha=0.3, axis="y")
    figure.suptitle(f"{model} · per-layer scores")
    _save(figure, out_path)
    return True


def plot_removal_map(methods: dict[str, dict[str, Any]], ratios: list[float], model: str, out_path: Path) -> None:
    """Layers (x) × ratio (y) for each method; a filled cell is a removed layer."""
    import numpy as np

    from layerprune.report.tables import COLUMN_WIDTH, _pyplot, _save

    plt = _pyplot()
    names = sorted(methods)
    num_layers = max(methods[name]["num_layers"] for name in names)
    figure, axes = plt.subplots(
        len(names),
        1,
        figsize=(COLUMN_WIDTH, 0.6 + 0.3 * len(ratios) * len(names)),
        squeeze=False,
        layout="constrained",
    )
    for axis, name in zip(axes[:, 0], names, strict=True):
        grid = np.zeros((len(ratios), num_layers))
        for row, (_, removed) in enumerate(sorted(removal_sets(methods[name], ratios).items())):
            grid[row, removed] = 1.0
        axis.imshow(grid, aspect="auto", cmap="Reds", vmin=0, vmax=1, interpolation="nearest")
        axis.set_yticks(range(len(ratios)), [f"{r:g}" for r in sorted(ratios)])
        axis.set_xticks(range(0, num_layers, max(1, num_layers // 15)))
        axis.set_ylabel(name)
    axes[-1, 0].set_xlabel("layer (red = removed)")
    figure.suptitle(f"{model} · removed layers by method and fraction removed")
    _save(figure, out_path)
