"""The schema writer: the config schema's generated blocks, rendered from the declarations."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

from layerprune.config.settings.fields import MISSING, SCHEMA_FILE, StageSettings, _optional_inner, config_path
from layerprune.config.settings.stages import STAGES
from layerprune.registry import (
    DATASETS,
    GRADERS,
    RECOVERIES,
    SCORING_METHODS,
)


def _type_schema(hint: Any) -> dict[str, Any]:
    names = {int: "integer", float: "number", bool: "boolean", str: "string", dict: "object"}
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return {"type": "array", "items": _type_schema(item)}
    return {"type": names[hint]}


def field_schema(cls: type[StageSettings], f: dataclasses.Field) -> dict[str, Any]:
    """The JSON schema of one setting: its type (or enum), bounds, default and help."""
    inner, optional = _optional_inner(typing.get_type_hints(cls)[f.name])
    extra = dict(f.metadata["schema"])
    choices = f.metadata["choices"]
    if "$ref" in extra or "oneOf" in extra:
        schema = extra if not optional else {"anyOf": [extra, {"type": "null"}]}
    else:
        if choices:
            schema = {"enum": [*choices, None] if optional else list(choices)}
        else:
            schema = _type_schema(inner)
            if optional:
                schema["type"] = [schema["type"], "null"]
        if "items" in extra and "items" in schema:
            schema["items"] = {**schema["items"], **extra.pop("items")}
        schema.update(extra)
    if f.default is not MISSING:
        schema["default"] = f.default
    elif f.default_factory is not MISSING:
        schema["default"] = f.default_factory()
    schema["description"] = f.metadata["help"]
    return schema


def home_fields() -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Config section -> [(key, schema)] of every setting declared in this module (borrowed ones at home only)."""
    sections: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    seen: dict[str, str] = {}
    for cls in STAGES:
        own = cls.__dict__.get("__annotations__", {})
        for f in dataclasses.fields(cls):
            if f.name not in own or not f.metadata["home"] or f.metadata["derived"]:
                continue
            path = config_path(cls, f)
            if path in seen:
                raise ValueError(f"config key {path} is declared by both {seen[path]} and {cls.__name__}")
            seen[path] = cls.__name__
            section, _, key = path.rpartition(".")
            sections.setdefault(section, []).append((key, field_schema(cls, f)))
    return sections


def registry_enums() -> dict[str, list[str]]:
    """The schema's enums that come from layerprune.registry."""
    from layerprune.data.builtin import BUILTIN_TASKS

    return {
        "scoring_methods": list(SCORING_METHODS),
        "graders": [*GRADERS, None],
        "datasets": list(DATASETS),
        "builtin_tasks": list(BUILTIN_TASKS),
        "recoveries": list(RECOVERIES),
    }


def recovery_methods_block(indent: str) -> list[str]:
    """recovery.methods' items and description: every declared recovery, each with its label."""
    described = "; ".join(f"{name} = {recovery.label}" for name, recovery in RECOVERIES.items())
    return [f"{indent}items: {{enum: {json.dumps(list(RECOVERIES))}}}", f"{indent}description: {json.dumps(described)}"]


BEGIN = re.compile(r"^(?P<indent> *)# >>> generated: (?P<name>[\w.*:]*) ")
END = re.compile(r"^ *# <<< generated")


def _block(name: str, indent: str) -> list[str]:
    if name.startswith("enum:"):
        return [f"{indent}enum: {json.dumps(registry_enums()[name.removeprefix('enum:')])}"]
    if name == "recovery.methods":
        return recovery_methods_block(indent)
    section = "" if name == "top" else name
    return [f"{indent}{key}: {json.dumps(schema)}" for key, schema in home_fields()[section]]


def render_schema(text: str) -> str:
    """The schema text with every generated block rewritten from the declarations above."""
    lines, out, block = text.splitlines(), [], None
    for line in lines:
        if block is not None:
            if END.match(line):
                out.extend(_block(block[0], block[1]))
                out.append(line)
                block = None
            continue
        out.append(line)
        match = BEGIN.match(line)
        if match:
            block = (match["name"], match["indent"])
    if block is not None:
        raise ValueError(f"generated block {block[0]} has no end marker")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m layerprune.config.settings",
        description="Rewrite (or check) the generated blocks of the config schema.",
    )
    parser.add_argument("--write-schema", action="store_true", help="rewrite the file in place")
    parser.add_argument("--schema", type=Path, default=SCHEMA_FILE)
    args = parser.parse_args(argv)
    text = args.schema.read_text()
    rendered = render_schema(text)
    if args.write_schema:
        if rendered != text:
            args.schema.write_text(rendered)
        return 0
    if rendered != text:
        print(f"{args.schema} is stale: run python -m layerprune.config.settings --write-schema", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
