"""Each setting declared once (layerprune.config.settings): the schema, the CLI and the rules follow from it.

The schema's settings blocks are generated from the dataclasses; these tests fail when
the committed schema is stale, when a schema entry and its field disagree (name, type,
default, allowed values), when a flag is missing from the CLI, and when a registry name
list and the code that dispatches on it drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing

import pytest
import yaml
from helpers.workflow import REPO

from layerprune import registry
from layerprune.config import settings
from layerprune.config.settings import MISSING, RecoverySettings, ScoreSettings, config_path, settings_json

SCHEMA_TEXT = (REPO / "workflow" / "schemas" / "config.schema.yaml").read_text()
SCHEMA = yaml.safe_load(SCHEMA_TEXT)
DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())
JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string", dict: "object", list: "array"}


def schema_at(path: str) -> tuple[dict, dict]:
    """(the property's schema, its parent object's schema) at a dotted config path (`*` = a task)."""
    node, parent = SCHEMA, None
    for part in path.split("."):
        parent = node
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
    return node, parent


def every_declared_field():
    for cls in settings.STAGES:
        own = cls.__dict__.get("__annotations__", {})
        for f in dataclasses.fields(cls):
            if f.name in own and f.metadata["home"] and not f.metadata["derived"]:
                yield pytest.param(cls, f, id=f"{cls.__name__}.{f.name}")


def test_committed_schema_is_generated_from_the_settings():
    assert settings.render_schema(SCHEMA_TEXT) == SCHEMA_TEXT, (
        "run: python -m layerprune.config.settings --write-schema"
    )


@pytest.mark.parametrize(("cls", "field"), list(every_declared_field()))
def test_schema_entry_matches_its_field(cls, field):
    """Field by field: the schema entry at the field's config key has its type, default and choices."""
    schema, parent = schema_at(config_path(cls, field))
    hint = typing.get_type_hints(cls)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    base = args[0] if optional else hint
    base = typing.get_origin(base) or base
    if field.metadata["choices"]:
        assert schema["enum"] == [*field.metadata["choices"], *([None] if optional else [])]
    elif "$ref" in json.dumps(schema) or "oneOf" in schema:
        pass  # a whole schema given in the field's metadata
    else:
        assert schema["type"] == ([JSON_TYPES[base], "null"] if optional else JSON_TYPES[base])
    default = field.default if field.default_factory is MISSING else field.default_factory()
    if default is MISSING:
        assert "default" not in schema
        assert field.name in parent.get("required", []) or config_path(cls, field).rpartition(".")[2] in parent.get(
            "required", []
        ), f"{config_path(cls, field)} has no default, so the schema must require it"
    else:
        assert schema["default"] == default
    assert schema["description"] == field.metadata["help"]


def test_every_setting_has_a_default_so_a_study_names_only_what_it_changes():
    no_default = [
        f"{cls.__name__}.{f.name}"
        for cls in settings.STAGES
        for f in dataclasses.fields(cls)
        if f.default is MISSING and f.default_factory is MISSING
    ]
    assert no_default == []


def test_each_config_key_is_declared_once_and_borrowed_fields_agree_with_their_home():
    declared = {}
    for cls in settings.STAGES:
        for f in dataclasses.fields(cls):
            path = config_path(cls, f)
            if f.metadata["derived"]:
                continue
            value = (f.default, f.default_factory() if f.default_factory is not MISSING else None, f.metadata["help"])
            assert declared.setdefault(path, value) == value, f"{cls.__name__}.{f.name} disagrees about {path}"
    assert len(settings.home_fields()) >= 10


def test_the_default_config_builds_every_stage():
    """Every settings class builds from the validated default config, and the JSON a rule passes round-trips."""
    from snakemake.utils import validate

    config = json.loads(json.dumps(DEFAULT))
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    for cls in settings.STAGES:
        task = "humaneval" if cls is settings.EvaluationSettings else None
        values = json.loads(settings_json(cls, config, task=task))
        built = cls.from_dict(values).to_dict()
        assert {name: built[name] for name in values} == values
    recovery = json.loads(settings_json(RecoverySettings, config))
    assert recovery["lora_r"] == 16 and recovery["lora_target_modules"] == ["all-linear"]


def test_a_method_gets_only_the_settings_it_uses():
    config = {"seed": 3, "scoring": {"batch_size": 2, "chunk_size": 8, "calibration": {"max_length": 64}}}
    assert json.loads(settings_json(ScoreSettings, config, method="reverse")) == {
        "batch_size": 2,
        "dtype": "auto",
        "seed": 3,
    }
    bi = json.loads(settings_json(ScoreSettings, config, method="bi"))
    assert bi == {"batch_size": 2, "dtype": "auto", "seed": 3, "max_length": 64, "calibration_average": "token"}
    sleb = json.loads(settings_json(ScoreSettings, config, method="sleb", max_ratio=0.5))
    assert (sleb["chunk_size"], sleb["sleb_exclude_ends"], sleb["max_ratio"]) == (8, True, 0.5)


def test_bad_settings_name_the_setting_and_the_valid_values():
    with pytest.raises(ValueError, match=r"unknown setting\(s\) lora_rank .*known: .*lora_r"):
        RecoverySettings.build(seed=0, lora_rank=4)
    with pytest.raises(ValueError, match="trainer 'adapter' is not one of lora, qlora, full"):
        RecoverySettings.from_dict({"trainer": "adapter"})
    assert RecoverySettings.from_dict({"seed": 0}).lora_r == 16  # a setting left out takes its declared default
    with pytest.raises(ValueError, match="lora_r: expected int"):
        RecoverySettings.from_dict({"lora_r": "16"})


def layerprune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layerprune", *args], capture_output=True, text=True, timeout=120)


def test_cli_flags_are_derived_from_the_settings():
    shown = layerprune("recover", "--help").stdout
    for f in dataclasses.fields(RecoverySettings):
        assert "--" + f.name.replace("_", "-") in shown, f.name
    assert "--settings" in shown and "--lora-target-modules" in shown


def test_cli_rejects_an_unknown_method_listing_the_registry():
    done = layerprune("score", "--model", "m", "--method", "magic", "--seed", "0", "--out", "x.json")
    assert done.returncode != 0
    assert "unknown scoring method 'magic'" in done.stderr
    assert ", ".join(registry.SCORING_METHODS) in done.stderr


def test_cli_settings_json_with_a_flag_over_it():
    from layerprune.cli import build_parser
    from layerprune.config.settings import settings_from_args

    parser = build_parser()
    args = parser.parse_args(
        ["selfgen", "--model", "m", "--prompts", "p", "--out", "o"]
        + ["--settings", json.dumps({"max_new_tokens": 8, "temperature": 0.5, "top_p": 0.9, "seed": 1})]
        + ["--temperature", "0", "--drop-empty", "true"]
    )
    selfgen = settings_from_args(settings.SelfgenSettings, args, "selfgen")
    assert (selfgen.max_new_tokens, selfgen.temperature, selfgen.drop_empty, selfgen.seed) == (8, 0.0, True, 1)
    with pytest.raises(SystemExit, match="not valid JSON"):
        broken = parser.parse_args(["selfgen", "--model", "m", "--prompts", "p", "--out", "o", "--settings", "{"])
        settings_from_args(settings.SelfgenSettings, broken, "selfgen")


def test_registries_match_the_code_that_dispatches_on_them():
    from layerprune.evaluation.graders import GRADERS, TEXT_GRADERS
    from layerprune.evaluation.tasks import DATASETS, DEFAULT_GRADER, prepare_task_spec
    from layerprune.scoring.score import METHODS

    assert METHODS == tuple(registry.SCORING_METHODS)
    assert set(GRADERS) == set(TEXT_GRADERS) | {"code"} == set(registry.GRADERS)
    assert DATASETS == tuple(registry.DATASETS) and set(DEFAULT_GRADER.values()) <= set(registry.GRADERS)
    with pytest.raises(ValueError, match="unknown task dataset 'squad' .*bigbench, builtin, gsm8k"):
        prepare_task_spec({"dataset": "squad", "type": "generative", "num_fewshot": 0}, "x", 0, "y")
    # the schema's enums are the registries'
    methods = SCHEMA["properties"]["scoring"]["properties"]["methods"]["items"]["enum"]
    task = SCHEMA["properties"]["tasks"]["additionalProperties"]["properties"]
    assert methods == list(registry.SCORING_METHODS)
    assert task["grader"]["enum"] == [*registry.GRADERS, None]
    assert task["dataset"]["enum"] == list(registry.DATASETS)
    recoveries = SCHEMA["properties"]["recovery"]["properties"]["methods"]["items"]["enum"]
    assert recoveries == task["recoveries"]["items"]["enum"] == list(registry.RECOVERIES)


def test_lora_target_modules_reaches_peft(tmp_path, single_thread):
    """The setting added as the proof of 'one place': LoRA on q_proj and v_proj changes only those weights."""
    import torch
    from helpers.models import CHAT_TEMPLATE, make_tiny_checkpoint
    from helpers.records import sourced_prompt_records
    from helpers.training import RECOVER_SETTINGS
    from safetensors.torch import load_file

    from layerprune.io import write_jsonl
    from layerprune.recovery.recover import recover_checkpoint

    base = make_tiny_checkpoint(tmp_path / "base", num_layers=2, chat_template=CHAT_TEMPLATE)
    write_jsonl(tmp_path / "train.jsonl", sourced_prompt_records(4))
    options = RecoverySettings.build(
        **{**RECOVER_SETTINGS, "max_steps": 2, "lora_target_modules": ["q_proj", "v_proj"]}
    )
    record = recover_checkpoint(base, tmp_path / "train.jsonl", tmp_path / "out", "sgr", options)
    assert record["settings"]["lora_target_modules"] == ["q_proj", "v_proj"]
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    changed = {name for name in after if not torch.equal(before[name], after[name])}
    assert changed and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in changed), changed
    assert {name.split(".")[-2] for name in changed} == {"q_proj", "v_proj"}


def test_the_cli_refuses_what_the_schema_refuses():
    """Bounds are checked on the settings object too, so `layerprune recover --lora-r 0` fails like the config."""
    from helpers.training import RECOVER_SETTINGS

    from layerprune.config.settings import RecoverySettings

    good = dict(RECOVER_SETTINGS)
    RecoverySettings.from_dict(good)
    with pytest.raises(ValueError, match=r"lora_r: 0 is not >= 1"):
        RecoverySettings.from_dict({**good, "lora_r": 0})
    with pytest.raises(ValueError, match=r"lora_dropout: 1.5 is not <= 1"):
        RecoverySettings.from_dict({**good, "lora_dropout": 1.5})
    with pytest.raises(ValueError, match="max_steps: 0 would still train one step"):
        RecoverySettings.from_dict({**good, "max_steps": 0})
