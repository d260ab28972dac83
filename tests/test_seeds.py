"""Training seeds (recovery.seeds): replicated recoveries in the DAG, and intervals that cover seed variance.

The statistics are checked on constructed results (items scored by a rule, as in test_retention.py);
the DAG by dry runs of the default study with one and with two seeds.
"""

from __future__ import annotations

import copy
import json
import re

import pandas as pd
import pytest
import yaml
from helpers.results import BOOTSTRAP_SETTINGS, dense, result, written
from helpers.workflow import (
    REPO,
    TINY_STUDY,
    copy_run,
    flag,
    jobs_of,
    planned_paths,
    planned_with,
    shared_file,
    shell_commands,
    snakemake,
    workflow_copy,
)

from layerprune.evaluation.evaluate import training_seed
from layerprune.io import write_json
from layerprune.report.aggregate import aggregate, recovery_records
from layerprune.report.retention import NOT_TESTED, ONE_SEED, UNDECIDED, findings, retention

DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())
N = 200


def recovery_study(sgr_hits: dict[int, int], none_hits: int = 40, sgr_shift: dict[int, int] | None = None) -> list:
    """One generative task, dense 160/200; `none` keeps none_hits; sgr's training seed s keeps sgr_hits[s]
    (items shift..shift+hits-1 right, so a seed can be right where `none` is wrong and the reverse)."""
    shifts = sgr_shift or {}
    entries = [dense("gen", "generative", 160, N), result("gen", "generative", "bi", 0.2, "none", none_hits, N)]
    for seed, hits in sgr_hits.items():
        entries.append(
            result("gen", "generative", "bi", 0.2, "sgr", hits, N, training_seed=seed, shift=shifts.get(seed, 0))
        )
    return entries


def sgr_minus_none(entries: list) -> pd.Series:
    frame = findings(retention(entries, BOOTSTRAP_SETTINGS))
    return frame[frame["statistic"] == "sgr − none generative retention"].iloc[0]


def sgr_row(entries: list) -> pd.Series:
    per_type = retention(entries, BOOTSTRAP_SETTINGS).per_type
    return per_type[per_type["recovery"] == "sgr"].iloc[0]


def test_two_seeds_with_identical_outcomes_give_the_one_seed_interval():
    """Old code: each seed a row of its own in retention.csv, and no `training_seeds` to tell them apart."""
    one = recovery_study({0: 100})
    two = recovery_study({0: 100, 1: 100})
    for column in ("retention", "ci_low", "ci_high", "drop_points", "drop_low", "drop_high"):
        assert sgr_row(two)[column] == pytest.approx(sgr_row(one)[column])
    assert sgr_row(two)["training_seeds"] == "0 1" and sgr_row(one)["training_seeds"] == "0"
    per_task = retention(two, BOOTSTRAP_SETTINGS).per_task
    assert len(per_task) == 2 and per_task.set_index("recovery").loc["sgr", "value"] == pytest.approx(0.5)
    a, b = sgr_minus_none(one), sgr_minus_none(two)
    assert (b["estimate"], b["ci_low"], b["ci_high"]) == pytest.approx((a["estimate"], a["ci_low"], a["ci_high"]))


def test_seeds_that_disagree_widen_the_interval_around_their_mean_and_undecide_a_finding():
    """Seed 0 lifts 40 -> 120 of 200 (decided on its own); seed 1 does nothing. Old code: the last result read
    won (estimate 0 from seed 1 alone, or 0.5 from seed 0), and its interval knew of one seed only."""
    alone = recovery_study({0: 120})
    both = recovery_study({0: 120, 1: 40}, sgr_shift={1: 20})
    single, pooled = sgr_minus_none(alone), sgr_minus_none(both)
    # one seed: the items alone would decide it, but one training run cannot (issue 30)
    assert single["verdict"] == ONE_SEED and "items alone: reproduced" in single["detail"]
    assert single["estimate"] == pytest.approx(80 / 160)
    # the centre is the mean over seeds: (80/160 + 0/160) / 2
    assert pooled["estimate"] == pytest.approx(40 / 160)
    assert pooled["verdict"] == UNDECIDED and pooled["ci_low"] < 0 < pooled["ci_high"]
    assert pooled["ci_high"] - pooled["ci_low"] > 2 * (single["ci_high"] - single["ci_low"])
    row = sgr_row(both)
    assert row["retention"] == pytest.approx(((120 + 40) / 2) / 160) and row["training_seeds"] == "0 1"
    # none trained nothing: its row has no seeds, and its interval is the items' alone, as before
    per_type = retention(both, BOOTSTRAP_SETTINGS).per_type.set_index("recovery")
    assert per_type.loc["none", "training_seeds"] == ""
    before = retention(alone, BOOTSTRAP_SETTINGS).per_type.set_index("recovery")
    assert per_type.loc["none", ["ci_low", "ci_high"]].tolist() == before.loc["none", ["ci_low", "ci_high"]].tolist()


def test_one_seed_draw_is_shared_by_the_tasks_of_a_checkpoint():
    """A type's retention over two tasks: resample b draws the seed component once for both (one checkpoint per
    seed). Seed 0 is perfect on both tasks, seed 1 at chance on both: the two tasks move together, so the type's
    interval is each task's; drawn per task independently it would be about 1/sqrt(2) as wide."""
    entries = []
    for task in ("g1", "g2"):
        entries.append(dense(task, "generative", 100, 100))
        entries.append(result(task, "generative", "bi", 0.2, "sgr", 100, 100, training_seed=0))
        entries.append(result(task, "generative", "bi", 0.2, "sgr", 0, 100, training_seed=1))
    stats = retention(entries, BOOTSTRAP_SETTINGS)
    per_task = stats.per_task.set_index("task")
    row = stats.per_type.iloc[0]
    for task in ("g1", "g2"):
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(
            (per_task.loc[task, "ci_low"], per_task.loc[task, "ci_high"])
        )
    assert row["ci_low"] < 0 and row["ci_high"] > 1  # two seeds that disagree this much decide nothing


def test_a_seed_given_twice_is_an_error_not_an_average():
    entries = recovery_study({0: 100}) + [result("gen", "generative", "bi", 0.2, "sgr", 90, N, training_seed=0)]
    with pytest.raises(ValueError, match=r"more than one result for m/bi/0.2/sgr/gen with training seed 0"):
        retention(entries, BOOTSTRAP_SETTINGS)


def test_the_report_says_what_the_intervals_cover(tmp_path):
    """One seed: item sampling only, said plainly. Several: seed variance included, the seeds named. The tables
    keep one row per seed (summary.csv, metrics.json keyed like the result files), the retention their mean."""
    one = aggregate(written(tmp_path / "one", recovery_study({0: 120})), tmp_path / "one" / "out", seed=0)
    report = (tmp_path / "one" / "out" / "report.md").read_text()
    assert "The intervals cover the sampling of evaluation items only: not the variation between training" in report
    assert "over the evaluated items (not over training seeds: one seed was trained)" in report
    assert one.loc[one["recovery"] == "sgr", "training_seed"].tolist() == [0]
    assert one.loc[one["recovery"] != "sgr", "training_seed"].isna().all()  # dense and none trained nothing
    entries = recovery_study({0: 120, 1: 40, 2: 80}, sgr_shift={1: 20})
    aggregate(written(tmp_path / "three", entries), tmp_path / "three" / "out", seed=0)
    out = tmp_path / "three" / "out"
    report = (out / "report.md").read_text()
    assert "recovery.seeds: 0, 1, 2" in report and "two-stage paired-bootstrap" in report
    assert "The intervals cover the variation between training seeds and the sampling of evaluation items" in report
    assert "over the training seeds of each recovery (recovery.seeds), then the evaluated items" in report
    assert "evaluation items only" not in report
    assert "recovery.seeds: 0, 1, 2" in (out / "report.rst").read_text()
    summary = pd.read_csv(out / "summary.csv")
    assert summary[summary["recovery"] == "sgr"]["training_seed"].tolist() == [0, 1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"m/bi/0.2/sgr/gen", "m/bi/0.2/sgr-seed1/gen", "m/bi/0.2/sgr-seed2/gen"} <= set(metrics)
    by_type = pd.read_csv(out / "retention_by_type.csv").set_index("recovery")
    assert by_type.loc["sgr", "retention"] == pytest.approx((120 + 40 + 80) / 3 / 160)
    assert by_type.loc["sgr", "training_seeds"] == "0 1 2"
    assert (out / "plots" / "m__gen.png").stat().st_size > 5000


def test_a_result_records_the_seed_its_checkpoint_was_trained_with(tmp_path):
    """evaluate reads the seed from the recovered checkpoint's recovery.json (what recover trained with)."""
    write_json(tmp_path / "sgr-seed3" / "recovery.json", {"recovery": "sgr", "settings": {"seed": 3}})
    (tmp_path / "pruned").mkdir()
    assert training_seed(tmp_path / "sgr-seed3") == 3
    assert training_seed(tmp_path / "pruned") is None  # no recovery: nothing was trained


def test_loss_curves_of_replicates_name_recovery_and_seed(tmp_path):
    folders = []
    for name, seed in (("sgr", 0), ("sgr-seed1", 1)):
        folder = tmp_path / "m" / "bi" / "0.2" / name
        write_json(
            folder / "recovery.json",
            {"recovery": "sgr", "settings": {"seed": seed}, "loss_curve": [{"step": 1, "loss": 2.0}]},
        )
        folders.append(folder)
    records = recovery_records(folders)
    assert [(r["recovery"], r["training_seed"]) for r in records] == [("sgr", 0), ("sgr", 1)]


# --------------------------------------------------------------------------- the DAG


def seeded_default(seeds: list[int] | None) -> dict:
    config = copy.deepcopy(DEFAULT)
    config["pruning"]["ratios"] = [0.1, 0.2, 0.3]  # the counts below are for 3 ratios, whatever the default's
    config["recovery"]["methods"] = ["none", "data", "sgr", "kd"]
    if seeds is not None:
        config["recovery"]["seeds"] = seeds
    return config


def dry_run(tmp_path, config: dict) -> tuple[dict[str, int], str]:
    workdir = workflow_copy(tmp_path, config)
    output = snakemake(workdir, "-n", "-p", "--cores", "2")
    text = output.stdout + output.stderr
    return jobs_of(text), text


def test_two_seeds_plan_twice_the_recoveries_at_distinct_paths_each_with_its_seed(tmp_path):
    """Old code: recovery.seeds is an unknown key. One seed plans exactly as before (no -seed folder)."""
    one, one_text = dry_run(tmp_path / "one", seeded_default(None))
    two, two_text = dry_run(tmp_path / "two", seeded_default([0, 1]))
    assert (one["recover"], one["recover_kd"]) == (6, 3)
    assert (two["recover"], two["recover_kd"]) == (2 * one["recover"], 2 * one["recover_kd"])
    # none is not replicated: its 12 evaluations (evaluate_pruned, 4 tasks x 3 ratios) run once; the trained
    # ones are 2 generative tasks x 3 ratios x 3 trained recoveries per seed
    assert one["evaluate_pruned"] == two["evaluate_pruned"] == 12
    assert one["evaluate_variant"] == 18 and two["evaluate_variant"] == 2 * 18
    assert not re.search(r"/(none|data|sgr|kd)-seed", one_text)
    commands = shell_commands(two_text, "recover")
    outs = [argv[argv.index("--out") + 1] for argv in commands]
    assert len(outs) == len(set(outs)) == 18
    for argv, out in zip(commands, outs, strict=True):
        seed = json.loads(argv[argv.index("--settings") + 1])["seed"]
        assert seed == (1 if out.endswith("-seed1") else 0)
        assert out.rsplit("/", 1)[1] in {"data", "sgr", "kd", "data-seed1", "sgr-seed1", "kd-seed1"}
    # the study's own seed trains with exactly the settings a one-seed study passes: nothing re-runs
    one_settings = sorted(argv[argv.index("--settings") + 1] for argv in shell_commands(one_text, "recover"))
    two_settings = sorted(
        argv[argv.index("--settings") + 1] for argv in commands if not argv[argv.index("--out") + 1].endswith("seed1")
    )
    assert one_settings == two_settings
    evaluated = {flag(argv, "--model") for argv in shell_commands(two_text, "evaluate")}
    assert "none-seed" not in two_text  # no recovery, no training seed: evaluated once
    assert {path.rsplit("/", 1)[1] for path in evaluated if "/recovered/" in path} == {
        "data", "sgr", "kd", "data-seed1", "sgr-seed1", "kd-seed1"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ([0, 0], "recovery.seeds: [0, 0] names an item twice"),
        ([-1, 2**32], "recovery.seeds[1]: 4294967296 is out of range (allowed: >= 0 and <= 4294967295)"),
    ],
)
def test_bad_seeds_are_named_at_plan_time(tmp_path, seeds, message):
    config = seeded_default(seeds)
    workdir = workflow_copy(tmp_path, config)
    output = snakemake(workdir, "-n", "--cores", "1", check=False)
    text = output.stdout + output.stderr
    assert output.returncode != 0 and "config.yaml:" in text and message in text


def test_not_tested_stays_not_tested_with_seeds():
    """A recovery without its control still says why, with several seeds as with one."""
    entries = [e for e in recovery_study({0: 120, 1: 40}) if e["recovery"] != "none"]
    frame = findings(retention(entries, BOOTSTRAP_SETTINGS))
    assert frame[frame["statistic"] == "sgr − none generative retention"].iloc[0]["verdict"] == NOT_TESTED


@pytest.mark.slow  # a second seed beside a copy of the session's tiny run: 1 LoRA training, 2 evaluations
def test_two_seeds_through_a_real_tiny_run(tiny_run, tmp_path):
    """Each seed trains its own checkpoint (TRL gets the seed), each evaluation records it, the report pools them.
    Seed 0's sgr checkpoint is the tiny run's own; seed 1's is trained here."""
    from safetensors.torch import load_file

    source, config = tiny_run
    workdir = copy_run(source, tmp_path / "wf")
    config = copy.deepcopy(config)
    config["pruning"]["ratios"] = [0.5]
    config["recovery"].update(methods=["none", "sgr"], seeds=[0, 1])
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(workdir, "--cores", "2")
    results = workdir / "results" / TINY_STUDY
    recovered = results / "recovered" / "tiny" / "bi" / "0.5"
    # (`data` beside them is the tiny run's own, trained with seed 0 before this study dropped it)
    assert sorted(p.name for p in recovered.iterdir() if p.is_dir() and p.name.startswith("sgr")) == [
        "sgr",
        "sgr-seed1",
    ]
    for name, seed in (("sgr", 0), ("sgr-seed1", 1)):
        assert json.loads((recovered / name / "training_args.json").read_text())["seed"] == seed
        evaluated = json.loads((results / "eval" / "tiny" / "bi" / "0.5" / name / "addition.json").read_text())
        assert evaluated["training_seed"] == seed and evaluated["recovery"] == "sgr"
    # no recovery is evaluated once, shared by fingerprint (results/shared/eval/<fp>/...), with no training seed
    unrecovered = workdir / shared_file(workdir, "eval", "tiny/bi/0.5/none/addition.json")
    assert json.loads(unrecovered.read_text())["training_seed"] is None
    weights = [load_file(recovered / name / "model.safetensors") for name in ("sgr", "sgr-seed1")]
    assert any(not (weights[0][k] == weights[1][k]).all() for k in weights[0])  # two trainings, not one copied
    summary = pd.read_csv(results / "report" / "summary.csv")
    assert sorted(summary.loc[summary["recovery"] == "sgr", "training_seed"].unique()) == [0, 1]
    assert "recovery.seeds: 0, 1" in (results / "report" / "report.md").read_text()


@pytest.mark.slow  # dry runs against the session's one real tiny run
def test_adding_a_seed_to_a_finished_run_trains_only_that_seed(tiny_run, tmp_path):
    """The study's own seed keeps its folders and settings: listing it plans nothing, adding one trains only it."""
    workdir, config = tiny_run
    same = copy.deepcopy(config)
    same["recovery"]["seeds"] = [config["seed"]]
    assert planned_with(workdir, same) == {}
    more = copy.deepcopy(config)
    more["recovery"]["seeds"] = [config["seed"], 7]
    # 2 ratios x (data, sgr) trained with seed 7, each evaluated on 2 tasks; none is not replicated
    assert planned_with(workdir, more) == {
        "recover": 4,
        "evaluate_variant": 8,
        "aggregate": 1,
        "all": 1,
    }


@pytest.mark.slow  # the real aggregate rule and `snakemake --report` on fixture results: ~20 s
def test_html_report_says_seed_variance_is_covered(tmp_path):
    """The HTML report's captions follow recovery.seeds as report.md's follow the results' seeds."""
    from helpers.plans import GRID
    from helpers.report_grid import sampled_result

    config = copy.deepcopy(GRID)
    config["scoring"]["methods"] = ["reverse"]
    config["pruning"]["ratios"] = [0.25]
    config["recovery"].update(methods=["none", "sgr"], seeds=[0, 1])
    config["report"] = {"bootstrap_samples": 100}
    del config["tasks"]["humaneval"]
    workdir = workflow_copy(tmp_path / "wf", config)
    (model,) = config["models"]
    planned = planned_paths(workdir)  # the study's own files and the shared ones, where the plan wants them
    cells = [("dense", "none", None), ("reverse/0.25/none", "none", None)]
    cells += [("reverse/0.25/sgr", "sgr", 0), ("reverse/0.25/sgr-seed1", "sgr", 1)]
    for task, settings in config["tasks"].items():
        for where, recovery, seed in cells:
            method, ratio = ("dense", 0.0) if where == "dense" else ("reverse", 0.25)
            value = 0.8 if method == "dense" else 0.5 + 0.1 * (seed or 0)
            entry = sampled_result("mc", method, ratio, recovery, value, recovery == "none")
            entry.update(model=model, task=task, type=settings["type"], training_seed=seed)
            write_json(workdir / planned[f"eval/{model}/{where}/{task}.json"], entry)
    removal = {str(k): list(range(30 - k, 30)) for k in range(1, 30)}
    scores = {"method": "reverse", "num_layers": 30, "scores": list(range(30)), "removal": removal}
    write_json(workdir / planned[f"scores/{model}/reverse.json"], scores)
    for name, seed in (("sgr", 0), ("sgr-seed1", 1)):
        record = {"settings": {"seed": seed}, "loss_curve": [{"step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 5)]}
        write_json(workdir / f"results/default/recovered/{model}/reverse/0.25/{name}/recovery.json", record)
    snakemake(workdir, "--cores", "1", "--allowed-rules", "aggregate", "all")
    snakemake(workdir, "--report", "report.html", "--allowed-rules", "aggregate", "all")
    html = (workdir / "report.html").read_text(errors="replace")
    assert "over the training seeds of each recovery (recovery.seeds), then the evaluated items" in html
    assert "not over training seeds" not in html
    assert "recovery.seeds: 0, 1" in (workdir / "results/default/report/report.rst").read_text()
