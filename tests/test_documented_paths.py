"""Every output path that `layerprune ... --help` and the config schema name is one the workflow writes.

The paths come from the help of every command and from the schema's text; the workflow's own paths
from a dry run of the embedded config with every recovery (the places common.smk decides where files
go). A documented path is a template: `<study>` is the study's name, `<fingerprint>` a settings hash,
`{model}`, `<task>`, ... one path part, `*` part of one, `…` any run of parts; it must match a planned
output or a folder holding one.
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from helpers.workflow import REPO, snakemake, workflow_copy

from layerprune.config import settings
from layerprune.registry import RECOVERIES

PATH = re.compile(r"results/[^\s,;()'\"`]*")
STUDY = "default"


def help_texts(monkeypatch) -> str:
    from layerprune.cli import build_parser

    monkeypatch.setenv("COLUMNS", "100000")  # no wrapped paths
    parser = build_parser()
    stages = next(a for a in parser._actions if a.dest == "stage").choices
    return "\n".join([parser.format_help(), *(sub.format_help() for sub in stages.values())])


def documented_paths(text: str) -> set[str]:
    return {match.rstrip(".:") for match in PATH.findall(text)}


def template_regex(path: str) -> re.Pattern:
    parts = re.split(r"(<study>|<fingerprint>|\{[a-z_]+\}|<[a-z_]+>|\*|…)", path)
    pattern = ""
    for part in parts:
        if part == "<study>":
            pattern += re.escape(STUDY)
        elif part == "<fingerprint>":
            pattern += "[0-9a-f]{12}"
        elif part == "*":
            pattern += "[^/]*"
        elif part == "…":
            pattern += ".*"
        elif re.fullmatch(r"\{[a-z_]+\}|<[a-z_]+>", part):
            pattern += "[^/]+"
        else:
            pattern += re.escape(part)
    # the path itself, or a folder (with or without its trailing `/`) that holds it
    return re.compile(pattern.removesuffix("/") + "(/.*)?")


@pytest.fixture(scope="module")
def planned_outputs(tmp_path_factory) -> list[str]:
    """Every output of a dry run of the default config with every recovery (and each output's stats file)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config = copy.deepcopy(config)
    config["recovery"]["methods"] = list(RECOVERIES)
    workdir = workflow_copy(tmp_path_factory.mktemp("wf"), config)
    output = snakemake(workdir, "-n", "--cores", "1").stdout
    paths = []
    for line in output.splitlines():
        if line.strip().startswith("output:"):
            paths += [p.strip() for p in line.split(":", 1)[1].split(",")]
    assert any(p.startswith(f"results/{STUDY}/recovered/") for p in paths)
    return paths


def test_paths_in_the_help_and_the_schema_are_written_by_the_workflow(planned_outputs, monkeypatch):
    documented = documented_paths(help_texts(monkeypatch)) | documented_paths(settings.SCHEMA_FILE.read_text())
    assert len(documented) >= 4
    # a stats file is written beside its JSONL (selfgen, filter-prompts), not declared as a rule output
    written = planned_outputs + [p.removesuffix(".jsonl") + ".stats.json" for p in planned_outputs]
    unknown = sorted(path for path in documented if not any(template_regex(path).fullmatch(p) for p in written))
    assert unknown == [], f"documented paths no rule writes: {unknown}"


def test_an_old_path_is_caught():
    assert not template_regex("results/data/heal.jsonl").fullmatch("results/shared/heal/0123456789ab.jsonl")
    assert not template_regex("results/report/").fullmatch("results/default/report/summary.csv")
    assert template_regex("results/shared/heal/<fingerprint>.jsonl").fullmatch("results/shared/heal/0123456789ab.jsonl")
