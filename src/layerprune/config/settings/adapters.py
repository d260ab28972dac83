"""Config -> settings (a rule's `settings` param) and command line -> settings (a stage's flags)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from layerprune.config.settings.fields import MISSING, SCHEMA_FILE, StageSettings, _optional_inner, config_path
from layerprune.config.settings.stages import RECOVERY_FIELDS, STOP_AT_MAX_RATIO, DistillSettings, TrainingSeeds, _uses


def lookup(config: dict[str, Any], path: str, task: str | None = None) -> Any:
    """The value at a dotted config path (`*` = the task); MISSING where it is not set."""
    node: Any = config
    for part in path.split("."):
        key = task if part == "*" else part
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
    return node


def settings_from_config(
    cls: type[StageSettings], config: dict[str, Any], task: str | None = None, **derived: Any
) -> StageSettings:
    """A stage's settings from a validated config: every field from its config key (the field's
    default where the key is absent), `derived` ones from the workflow (e.g. max_ratio)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata["derived"]:
            if f.name in derived:
                values[f.name] = derived[f.name]
            continue
        value = lookup(config, config_path(cls, f), task)
        if value is not MISSING:
            values[f.name] = value
    return cls.from_dict(values, where=f"config ({cls.__name__})")


def settings_json(
    cls: type[StageSettings], config: dict[str, Any], method: str | None = None, task: str | None = None, **derived: Any
) -> str:
    """The one `settings` param of a rule: JSON of the settings its job uses (for `score`, those of `method`)."""
    settings = settings_from_config(cls, config, task=task, **derived)
    values = {k: v for k, v in settings.to_dict().items() if _uses(cls, k, method)}
    return json.dumps(values, sort_keys=True)


def distill_settings_json(config: dict[str, Any], recovery: str) -> str:
    """The `settings` param of a kd / kd_onpolicy job: the recovery settings and the `recovery.kd` ones it uses."""
    options = settings_from_config(DistillSettings, config)
    values = {k: v for k, v in options.to_dict().items() if k in RECOVERY_FIELDS}
    return json.dumps({**values, **options.distill_values(recovery)}, sort_keys=True)


# --------------------------------------------------------------------------- CLI


def _parser_for(hint: Any) -> tuple[Any, str | None]:
    """argparse (type, nargs) of a field type."""
    inner, optional = _optional_inner(hint)
    nargs = None
    if typing.get_origin(inner) is list:
        (inner,) = typing.get_args(inner)
        nargs = "*"
    if inner is bool:
        convert = _parse_bool
    elif inner is dict:
        convert = json.loads
    else:
        convert = inner
    if optional:
        return (lambda text: None if text.lower() in {"none", "null", ""} else convert(text)), nargs
    return convert, nargs


def _parse_bool(text: str) -> bool:
    if text.lower() in {"true", "1", "yes"}:
        return True
    if text.lower() in {"false", "0", "no"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[StageSettings]) -> None:
    """`--settings JSON` plus one flag per field (`--lora-r`); a flag given wins over the JSON."""
    group = parser.add_argument_group(f"settings ({cls.__name__}; each overrides --settings)")
    group.add_argument(
        "--config",
        default=None,
        metavar="STUDY.yaml",
        help=(
            "a study config: this stage's settings as the pipeline gives them for that study (its defaults filled "
            "in; evaluate: those of --task-name), under --settings and the flags"
        ),
    )
    group.add_argument("--settings", default=None, help="the settings as one JSON object (what the rules pass)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        convert, nargs = _parser_for(hints[f.name])
        default = f.default if f.default_factory is MISSING else f.default_factory()
        shown = "required" if default is MISSING else f"default {default!r}"
        choices = f.metadata["choices"]
        text = f"{f.metadata['help']} ({shown}{'; one of ' + ', '.join(map(str, choices)) if choices else ''})"
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f"setting_{f.name}",
            metavar=f.name.upper(),
            type=convert,
            nargs=nargs,
            default=argparse.SUPPRESS,
            help=text.replace("%", "%%"),  # argparse %-formats help text
        )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:  # json.loads would keep the last one without a word
        raise ValueError(f"key(s) {', '.join(twice)} given twice")
    return dict(pairs)


# The schema's defaults filled into a study's config: what `--config STUDY.yaml` and validation start from.


def load_schema(path: Path = SCHEMA_FILE) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


def _setting_defaults(validator_class: type) -> type:
    """A validator class that, while validating, writes each missing property's `default` into the instance."""
    import jsonschema

    base = validator_class.VALIDATORS["properties"]

    def properties(validator, properties, instance, schema):  # noqa: ANN001, ANN202 (jsonschema's signature)
        if validator.is_type(instance, "object"):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from base(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties})


def apply_defaults(config: dict[str, Any], schema: dict[str, Any]) -> None:
    """Every default of the schema (nested ones too, in sections that were absent) set in `config`, in place."""
    import jsonschema

    validator = _setting_defaults(jsonschema.Draft202012Validator)(schema)
    for _ in validator.iter_errors(config):  # the errors are collected once the defaults are all in
        pass


def study_settings(
    cls: type[StageSettings], config_file: str | Path, task: str | None = None, method: str | None = None
) -> dict[str, Any]:
    """A stage's settings as the pipeline gives them for the study in `config_file` (its defaults filled in):
    what `layerprune <stage> --config FILE` starts from."""
    import yaml

    config = yaml.safe_load(Path(config_file).read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: not a mapping of config keys")
    apply_defaults(config, load_schema())
    uses_task = any("*" in config_path(cls, f).split(".") for f in dataclasses.fields(cls))
    if uses_task and task not in (config.get("tasks") or {}):
        raise ValueError(
            f"{config_file}: --task-name {task!r} is not a task of this study ({', '.join(config['tasks'])})"
        )
    derived: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls) if f.metadata["derived"]}
    if "max_ratio" in names and (method is None or method in STOP_AT_MAX_RATIO):
        derived["max_ratio"] = float(f"{max(config['pruning']['ratios']):g}")
    if "task_chance" in names:
        derived["task_chance"] = {t: s["chance"] for t, s in config["tasks"].items() if s.get("chance") is not None}
    return settings_from_config(cls, config, task=task if uses_task else None, **derived).to_dict()


def settings_from_args(cls: type[StageSettings], args: argparse.Namespace, stage: str) -> StageSettings:
    """The settings of a stage's command line: declared defaults < --config study < --settings JSON < flags."""
    resolved = getattr(args, "resolved_settings", None)
    if type(resolved) is cls:  # the CLI resolved them once, for the log's header
        return resolved
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            values = study_settings(cls, args.config, getattr(args, "task_name", None), getattr(args, "method", None))
        except (OSError, ValueError) as error:
            raise SystemExit(f"layerprune {stage}: --config: {error}") from None
    if getattr(args, "settings", None) is not None:
        if not args.settings.strip():
            raise SystemExit(f"layerprune {stage}: --settings is empty (give a JSON object, or leave the flag out)")
        try:
            given = json.loads(args.settings, object_pairs_hook=_unique_keys)
        except ValueError as error:
            raise SystemExit(f"layerprune {stage}: --settings is not valid JSON ({error})") from None
        if not isinstance(given, dict):
            raise SystemExit(f"layerprune {stage}: --settings must be a JSON object")
        values.update(given)
    for f in dataclasses.fields(cls):
        if hasattr(args, f"setting_{f.name}"):
            values[f.name] = getattr(args, f"setting_{f.name}")
    try:
        return cls.from_dict(values, where=f"layerprune {stage}")
    except ValueError as error:
        raise SystemExit(str(error)) from None


def training_seeds(config: dict[str, Any]) -> list[int]:
    """recovery.seeds of a validated config, or [seed]."""
    options = settings_from_config(TrainingSeeds, config)
    return options.resolve(config.get("seed", 0))
