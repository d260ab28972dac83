"""The field machinery: `setting(...)` declares one setting; `StageSettings` turns a class of them into
checked, frozen settings with bounds, choices and types coerced from JSON."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

MISSING = dataclasses.MISSING
# The config schema is package data, so an installed layerprune (a wheel, `pip install .`) loads it too;
# workflow/schemas/config.schema.yaml (snakemake.utils.validate, readers of the checkout) is a symlink to it.
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "config.schema.yaml"


def setting(
    default: Any = MISSING,
    *,
    help: str,  # noqa: A002  (the argparse / HfArgumentParser name)
    choices: Sequence[Any] | None = None,
    config: str | None = None,
    schema: dict[str, Any] | None = None,
    methods: Sequence[str] | None = None,
    derived: bool = False,
    home: bool = True,
) -> Any:
    """A settings field.

    config: dotted path in the config (`tasks.*.x`: the task's entry); default the class's SECTION.name.
    schema: JSON-schema keywords beside the type (bounds, minItems, or a whole `$ref`).
    methods: the scoring methods whose jobs use this setting (others never receive it).
    derived: computed by the workflow (e.g. the largest ratio), not a config key.
    home: False where the field is borrowed from the class that declares it (see `borrow`).
    """
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "config": config,
        "schema": schema or {},
        "methods": frozenset(methods) if methods is not None else None,
        "derived": derived,
        "home": home,
    }
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def borrow(cls: type, name: str) -> Any:
    """The field `name` of `cls` for another stage's settings: same default, type, help and config key."""
    source = {f.name: f for f in dataclasses.fields(cls)}[name]
    metadata = {**source.metadata, "config": config_path(cls, source), "home": False}
    if source.default_factory is not MISSING:
        return dataclasses.field(default_factory=source.default_factory, metadata=metadata)
    return dataclasses.field(default=source.default, metadata=metadata)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A settings class's resolved field types: resolved once per class, since a dry run of the paper grid builds
    settings ~6,000 times and resolving the annotations was most of that (bench/README.md, "Planning")."""
    return typing.get_type_hints(cls)


def config_path(cls: type, field: dataclasses.Field) -> str:
    return field.metadata["config"] or ".".join(part for part in (cls.SECTION, field.name) if part)


class StageSettings:
    """Shared behaviour of the settings dataclasses."""

    SECTION: ClassVar[str] = ""
    BUILT_BY: ClassVar[str] = "settings"  # what `build`'s errors name

    @classmethod
    def build(cls, settings: StageSettings | None = None, **overrides: Any) -> Any:
        """`settings` (or the defaults) with `overrides` applied, checked like a config."""
        base = settings.to_dict() if settings is not None else {}
        return cls.from_dict({**base, **overrides}, where=cls.BUILT_BY)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "settings") -> StageSettings:
        """Check, coerce (an int for a float field) and build; errors name the setting and the valid values."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(fields)})")
        hints = _type_hints(cls)
        coerced = {}
        for name, value in values.items():
            coerced[name] = _coerce(value, hints[name], f"{where}: {name}")
            choices = fields[name].metadata["choices"]
            if choices and coerced[name] is not None and coerced[name] not in choices:
                raise ValueError(f"{where}: {name} '{value}' is not one of {', '.join(map(str, choices))}")
            _check_bounds(coerced[name], fields[name].metadata["schema"], f"{where}: {name}")
        missing = [
            name
            for name, f in fields.items()
            if name not in coerced and f.default is MISSING and f.default_factory is MISSING
        ]
        if missing:
            raise ValueError(f"{where}: missing setting(s) {', '.join(missing)}")
        return cls(**coerced)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_BOUNDS = {
    "minimum": (lambda value, bound: value >= bound, ">="),
    "maximum": (lambda value, bound: value <= bound, "<="),
    "exclusiveMinimum": (lambda value, bound: value > bound, ">"),
    "exclusiveMaximum": (lambda value, bound: value < bound, "<"),
}


def _check_bounds(value: Any, schema: dict[str, Any], where: str) -> None:
    """The schema's numeric bounds, so the CLI refuses what the config schema refuses."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    for keyword, (holds, sign) in _BOUNDS.items():
        if keyword in schema and not holds(value, schema[keyword]):
            raise ValueError(f"{where}: {value} is not {sign} {schema[keyword]}")


def _optional_inner(hint: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (hint, False)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _coerce(value: Any, hint: Any, where: str) -> Any:
    inner, optional = _optional_inner(hint)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: null is not allowed")
    origin = typing.get_origin(inner)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(inner)
        return [_coerce(v, item, where) for v in value]
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if inner is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # .inf / .nan pass every bound check, then overflow deep in a job
            raise ValueError(f"{where}: {value} is not a finite number")
        return float(value)
    if inner is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if inner in (str, dict) and isinstance(value, inner):
        return value
    raise ValueError(f"{where}: expected {getattr(inner, '__name__', inner)}, got {value!r}")
