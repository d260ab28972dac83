"""Each recovery is declared once (layerprune.registry.RECOVERIES); every other place derives from it.

These check that each declaration resolves (its recipe imports, its rule and its training data exist
in the workflow) and that the places that once re-listed the recoveries now follow the declarations,
also for a recovery added to the table (monkeypatched), without a change anywhere else.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from helpers.workflow import REPO

from layerprune import registry
from layerprune.config import checks, settings
from layerprune.registry import LOSSES, RECOVERIES, TRAINING_DATA, Recovery

RULES = (REPO / "workflow" / "rules").glob("*.smk")
RULE_NAMES = {name for path in RULES for name in re.findall(r"^rule (\w+):", path.read_text(), re.M)}
COMMON = (REPO / "workflow" / "rules" / "common.smk").read_text()


@pytest.mark.parametrize("name", list(RECOVERIES))
def test_each_declaration_resolves(name):
    recovery = RECOVERIES[name]
    if not recovery.trains:
        assert recovery.loss is recovery.rule is recovery.recipe is None and not recovery.teacher
        return
    from layerprune.recovery.recover import Recipe, load_recipe

    assert recovery.data in TRAINING_DATA and recovery.loss in LOSSES
    assert recovery.rule in RULE_NAMES, f"{name}: no rule {recovery.rule} in workflow/rules"
    assert isinstance(load_recipe(name), Recipe)
    # the rule's dataset for this kind of data is declared in the workflow
    assert re.search(rf'^    "{recovery.data}": ', COMMON, re.M), f"TRAINING_DATA_FILES has no {recovery.data!r}"
    assert recovery.on_policy <= recovery.teacher  # only a distillation has a student that generates


def test_styles_are_distinct():
    styles = [(r.color, r.marker) for r in RECOVERIES.values()]
    assert len({color for color, _ in styles}) == len({marker for _, marker in styles}) == len(styles)


def test_derived_tables_follow_the_declarations():
    from layerprune.report.tables import RECOVERY_STYLES

    assert registry.DISTILLATIONS == ("kd", "kd_onpolicy")
    assert registry.RECOVERY_RULES == ("recover", "recover_kd")
    assert registry.recoveries_run_by("recover") == ("data", "sgr", "heal")
    assert RECOVERY_STYLES == {name: (r.color, r.marker) for name, r in RECOVERIES.items()}
    # the workflow's benchmarked rules take every rule that trains a recovery (recover_kd was left out)
    assert "*RECOVERY_RULES" in COMMON and '"recover",\n' not in COMMON.split("STUDY_BENCHMARKED_RULES")[1][:300]


@pytest.fixture
def sgr_twin(monkeypatch):
    """A recovery added only to the table: sgr's data and recipe under a new name and style."""
    twin = dataclasses.replace(RECOVERIES["sgr"], label="SFT on the responses, again", color="#000000", marker="h")
    monkeypatch.setitem(RECOVERIES, "sgr_twin", twin)
    return "sgr_twin"


def test_a_declared_recovery_reaches_the_schema_and_the_plan_checks(sgr_twin):
    import yaml

    text = settings.render_schema(settings.SCHEMA_FILE.read_text())
    schema = yaml.safe_load(text)
    methods = schema["properties"]["recovery"]["properties"]["methods"]
    assert sgr_twin in methods["items"]["enum"]
    assert f"{sgr_twin} = SFT on the responses, again" in methods["description"]
    task = schema["properties"]["tasks"]["additionalProperties"]["properties"]["recoveries"]
    assert sgr_twin in task["items"]["enum"]
    config = {"recovery": {"methods": ["none", sgr_twin]}, "prompts": {"source": "bigbench", "bigbench_tasks": []}}
    assert any(p.startswith(f"prompts.bigbench_tasks: missing; the {sgr_twin} recoveries") for p in
               checks.config_problems(config))  # fmt: skip


def test_the_schema_and_the_cli_name_exactly_the_declared_recoveries(monkeypatch):
    import yaml

    monkeypatch.setenv("COLUMNS", "100000")  # one line per help entry: argparse wraps at hyphens too

    from layerprune.cli import build_parser

    schema = yaml.safe_load(settings.SCHEMA_FILE.read_text())
    methods = schema["properties"]["recovery"]["properties"]["methods"]
    assert methods["items"]["enum"] == list(RECOVERIES)
    for name, recovery in RECOVERIES.items():
        assert f"{name} = {recovery.label}" in methods["description"]
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "stage").choices
    recover = {a.dest: a for a in subparsers["recover"]._actions}
    evaluate = {a.dest: a for a in subparsers["evaluate"]._actions}
    assert list(recover["recovery"].choices) == list(registry.TRAINED)
    assert list(evaluate["recovery"].choices) == list(RECOVERIES)
    help_text = subparsers["recover"].format_help()
    for name in registry.TRAINED:
        assert f"{name} = {RECOVERIES[name].label}" in help_text


def test_a_recovery_without_a_recipe_is_refused_by_name():
    from layerprune.recovery.recover import load_recipe

    with pytest.raises(ValueError, match=r"unknown recovery 'none' \(choose from data, sgr, heal, kd, kd_onpolicy\)"):
        load_recipe("none")
    assert isinstance(Recovery("x", "#111111", "o"), Recovery)
