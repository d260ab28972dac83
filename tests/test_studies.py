"""Studies side by side in one checkout: each under results/<study>/, what they share made once.

On 626b338 every study wrote to the same results/ folders: dry-running configs/paper.yaml where
the default had run planned the default's `prepare_*` jobs again ("params have changed") and
would have overwritten its data and report.
"""

from __future__ import annotations

import copy
import csv
import json
import sys
from pathlib import Path

import pytest
import yaml
from helpers.workflow import (
    REPO,
    TINY_STUDY,
    VARIANT_JOBS,
    copy_run,
    is_shared,
    jobs_of,
    outputs_of_dry_run,
    planned_jobs,
    shell_commands,
    snakemake,
    variant_study,
    workflow_copy,
)

MINI = REPO / "tests" / "fixtures" / "paper_mini"


def csv_column(path: Path, column: str) -> list[str]:
    with path.open(newline="") as handle:
        return [row[column] for row in csv.DictReader(handle)]


@pytest.mark.slow  # seven dry runs: 199 s measured on the loaded 2-core machine
def test_study_name_comes_from_the_config_or_its_file(tmp_path):
    """`study:` names the folder; without it, the config file's name; the embedded config.yaml is `default`."""
    workdir = workflow_copy(tmp_path / "wf")
    default = yaml.safe_load((REPO / "config.yaml").read_text())
    assert default["study"] == "default"
    unnamed = {key: value for key, value in default.items() if key != "study"}
    (workdir / "my-study.yaml").write_text(yaml.safe_dump(unnamed))
    (workdir / "named.yaml").write_text(yaml.safe_dump({**unnamed, "study": "ablation_2"}))
    cases = [((), "default"), (("--configfile", "my-study.yaml"), "my-study")]
    for args, study in [*cases, (("--configfile", "named.yaml"), "ablation_2")]:
        output = snakemake(workdir, "-n", "-p", "--cores", "1", *args).stdout
        (aggregate,) = shell_commands(output, "aggregate")
        assert aggregate[aggregate.index("--out-dir") + 1] == f"results/{study}/report", args
        planned = outputs_of_dry_run(output)
        assert all(path.startswith((f"results/{study}/", "results/shared/", "resources/")) for path in planned), args
    # a name that cannot be a folder, and the shared folder's name, are refused before anything runs
    for bad in ("shared", "../x", "a b"):
        (workdir / "bad.yaml").write_text(yaml.safe_dump({**unnamed, "study": bad}))
        result = snakemake(workdir, "-n", "--cores", "1", "--configfile", "bad.yaml", check=False)
        assert result.returncode != 0 and "study" in result.stdout + result.stderr, bad
    (workdir / "a b.yaml").write_text(yaml.safe_dump(unnamed))
    result = snakemake(workdir, "-n", "--cores", "1", "--configfile", "a b.yaml", check=False)
    assert result.returncode != 0 and "set `study:`" in result.stdout + result.stderr


@pytest.mark.slow  # two dry runs: 56 s measured on the loaded 2-core machine
def test_shared_files_are_keyed_by_their_settings(tmp_path):
    """Two studies with one task's limit apart share the model, the other tasks, the prompt set, the
    calibration text, the scores, the pruned checkpoints and the other tasks' evaluations, and get two
    files for that task and two for each of its dense and unrecovered evaluations."""
    workdir = workflow_copy(tmp_path / "wf")
    default = yaml.safe_load((REPO / "config.yaml").read_text())
    other = copy.deepcopy(default)
    other["study"] = "other"
    other["tasks"]["plural"]["limit"] = 7
    (workdir / "other.yaml").write_text(yaml.safe_dump(other))

    def shared(*args: str) -> set[str]:
        output = snakemake(workdir, "-n", "--cores", "1", *args).stdout
        return {path for path in outputs_of_dry_run(output) if path.startswith("results/shared/")}

    mine, theirs = shared(), shared("--configfile", "other.yaml")
    plural = {path for path in mine | theirs if is_shared(path, "tasks", "plural.json")}
    assert len(plural) == 2 and len(mine & plural) == 1
    # the evaluations of plural (dense and unrecovered) are made from its prepared file: each study its own
    plural_evals = {
        path for path in mine | theirs if path.startswith("results/shared/eval/") and path.endswith("/plural.json")
    }
    assert len(plural_evals) == 2 * 3 and len(mine & plural_evals) == 3  # dense + 2 ratios' none, per study
    assert mine - plural - plural_evals == theirs - plural - plural_evals
    kinds = {path.split("/")[2] for path in mine}
    # builtin: the built tasks; scores, pruned, filtered, eval: the jobs that depend on no recovery setting
    assert kinds == {"builtin", "models", "tasks", "prompts", "calibration", "scores", "pruned", "filtered", "eval"}


@pytest.mark.slow
def test_a_second_study_runs_beside_the_first_and_neither_replans(tiny_run, tmp_path):
    """A second study in the tiny run's checkout (one task's limit changed, fewer variants): it runs
    only its own jobs, reusing the shared model and data; then each study, re-planned, has nothing to do,
    and the first study's files are untouched."""
    workdir, config = tiny_run
    workdir = copy_run(workdir, tmp_path / "wf")
    (workdir / "variant.yaml").write_text(yaml.safe_dump(variant_study(config)))
    first = workdir / "results" / TINY_STUDY
    before = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}

    # made once: no materialize, no prompt set or calibration, only the task whose settings differ
    assert planned_jobs(workdir, "--configfile", "variant.yaml") == VARIANT_JOBS
    snakemake(workdir, "--cores", "2", "--configfile", "variant.yaml")
    assert planned_jobs(workdir, "--configfile", "variant.yaml") == {}
    assert planned_jobs(workdir) == {}
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == before

    def n(task: str) -> list[int]:
        """The item counts of the task's dense evaluations (results/shared/: one per distinct settings)."""
        found = (workdir / "results" / "shared" / "eval").glob(f"*/tiny/dense/{task}.json")
        return sorted(json.loads(path.read_text())["n"] for path in found)

    assert n("addition") == [4, 6] and n("knowledge") == [6]  # knowledge's: one file for both studies
    # each report times the jobs its own run ran, not those the other study's run made (the shared model,
    # the score, the pruned checkpoint, knowledge's evaluations)
    stages = set(csv_column(workdir / "results/variant/report/time.csv", "stage")) - {"total"}
    assert stages == {"evaluate_dense", "evaluate_pruned"}, stages
    assert {"selfgen", "recover"} <= set(csv_column(first / "report" / "time.csv", "stage"))
    assert len(list((workdir / "results" / "shared" / "models").iterdir())) == 1
    assert len(list((workdir / "results" / "shared" / "tasks").glob("*/addition.json"))) == 2


@pytest.mark.slow  # builds the paper-mini model (~15 s)
def test_paper_mini_beside_a_finished_study_plans_only_its_own_jobs(tiny_run, tmp_path):
    """The issue's case: paper-mini dry-run where the tiny study has run plans what it plans in a fresh
    checkout, writes nothing under the tiny study's folder, and leaves the tiny study up to date."""
    sys.path.insert(0, str(MINI))
    import build

    config = build.load_config(build.build_model(tmp_path / "mini-model"))
    fresh = workflow_copy(tmp_path / "fresh")
    beside = copy_run(tiny_run[0], tmp_path / "beside")
    for workdir in (fresh, beside):
        (workdir / "paper-mini.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # the same jobs, less the built tasks the tiny study already built (results/shared/builtin is shared)
    alone = planned_jobs(fresh, "--configfile", "paper-mini.yaml")
    # one dry run beside the tiny study: its job table, its reasons and its outputs
    output = snakemake(beside, "-n", "--cores", "2", "--configfile", "paper-mini.yaml")
    text = output.stdout + output.stderr
    there = jobs_of(text)
    assert {rule: n for rule, n in there.items() if rule != "build_task"} == {
        rule: n for rule, n in alone.items() if rule != "build_task"
    }
    assert there.get("build_task", 0) < alone["build_task"]
    assert "params have changed" not in text.lower()
    planned = outputs_of_dry_run(output.stdout)
    assert planned and not [path for path in planned if path.startswith(f"results/{TINY_STUDY}/")]
    assert all(path.startswith(("results/paper-mini/", "results/shared/", "resources/")) for path in planned)
    assert planned_jobs(beside) == {}
    assert Path(beside / "results" / TINY_STUDY / "report" / "summary.csv").is_file()


# --------------------------------------------------------------------------- DVC stages per study (issue 29)


def test_the_shipped_dvc_yaml_is_the_one_studies_yaml_generates(tmp_path):
    """dvc.yaml is generated (layerprune dvc-stages): the repository's copy matches its studies.yaml."""
    from layerprune.dvcstages import write_dvc_yaml

    for name in ("studies.yaml", "config.yaml"):
        (tmp_path / name).write_text((REPO / name).read_text())
    write_dvc_yaml(tmp_path)
    assert (tmp_path / "dvc.yaml").read_text() == (REPO / "dvc.yaml").read_text()


def test_dvc_stages_one_per_study_and_one_for_what_they_share(tmp_path, monkeypatch):
    from layerprune.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("study: default\n")
    (tmp_path / "my-study.yaml").write_text("seed: 1\n")  # no `study:`: the file's name
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "paper.yaml").write_text("study: paper\n")
    (tmp_path / "clash.yaml").write_text("study: my-study\n")
    (tmp_path / "studies.yaml").write_text((REPO / "studies.yaml").read_text())
    assert main(["dvc-stages", "my-study.yaml"]) == 0  # the list: this study alone
    assert main(["dvc-stages", "--add", "configs/paper.yaml --profile slurm"]) == 0
    doc = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    assert list(doc["stages"]) == ["my-study", "paper", "shared"]
    mine, paper, shared = doc["stages"].values()
    assert mine["cmd"] == "snakemake --cores all --configfile my-study.yaml"
    assert paper["cmd"] == "snakemake --cores all --configfile configs/paper.yaml --profile slurm"
    assert mine["params"] == [{"my-study.yaml": None}] and mine["outs"] == [{"results/my-study": {"persist": True}}]
    assert shared["deps"] == ["results/my-study", "results/paper"]
    assert shared["outs"] == [
        {"results/shared": {"persist": True}},
        {".snakemake/metadata": {"persist": True, "cache": False}},
    ]
    assert doc["metrics"] == ["results/my-study/report/metrics.json", "results/paper/report/metrics.json"]
    assert "bigbench" not in (tmp_path / "dvc.yaml").read_text()  # nothing a study does not use
    assert main(["dvc-stages", "--add", "my-study.yaml"]) == 0  # listed already: once
    assert list(yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]) == ["my-study", "paper", "shared"]
    with pytest.raises(ValueError, match=r"two configs name the same study \['my-study'\]"):
        main(["dvc-stages", "--add", "clash.yaml"])
    assert "clash" not in (tmp_path / "studies.yaml").read_text()
    with pytest.raises(FileNotFoundError, match="nope.yaml: no such file"):
        main(["dvc-stages", "--add", "nope.yaml"])


# --------------------------------------------------------------------------- identical jobs run once (issue 29)


@pytest.mark.slow  # the second study's 9 jobs beside a copy of the session's tiny run
def test_a_second_study_that_varies_one_setting_runs_only_what_depends_on_it(tiny_run, tmp_path):
    """The tiny study ran; other-study differs in selfgen.temperature (and trains sgr alone): its dry run plans
    selfgen, the recoveries that train on it, their evaluations and the report, nothing shared (on 8179f34 it
    re-ran score, prune, filter_prompts, the dense and the unrecovered evaluations: ~58 % of its CPU time). Its
    time table then lists only the stages it ran."""
    source, config = tiny_run
    workdir = copy_run(source, tmp_path / "wf")
    other = copy.deepcopy(config)
    other["study"] = "other-study"
    other["selfgen"]["temperature"] = 0.9
    other["recovery"]["methods"] = ["none", "sgr"]  # `data` is each study's own: it would train again
    (workdir / "other-study.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    dry = snakemake(workdir, "-n", "--cores", "2", "--configfile", "other-study.yaml")  # its jobs and outputs
    planned = outputs_of_dry_run(dry.stdout)
    ratios = len(config["pruning"]["ratios"])
    assert jobs_of(dry.stdout + dry.stderr) == {
        "selfgen": 1,
        "recover": ratios,
        "evaluate_variant": ratios * len(config["tasks"]),
        "aggregate": 1,
        "all": 1,
    }
    assert not [path for path in planned if path.startswith("results/shared/")], planned
    snakemake(workdir, "--cores", "2", "--configfile", "other-study.yaml")
    stages = set(csv_column(workdir / "results" / "other-study" / "report" / "time.csv", "stage")) - {"total"}
    assert stages == {"selfgen", "recover", "evaluate_variant"}, stages
    first = set(csv_column(workdir / "results" / TINY_STUDY / "report" / "time.csv", "stage"))
    assert {"score", "prune", "evaluate_dense", "evaluate_pruned", "selfgen", "recover"} <= first, first
    # the shared results are the same files for both reports
    assert planned_jobs(workdir, "--configfile", "other-study.yaml") == {}
    assert planned_jobs(workdir) == {}
