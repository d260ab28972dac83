"""A study's config checked as a whole when the DAG is built: every problem at once, each on one line
`file:line: key: what is wrong (allowed: ...)`, never a schema dump.

`validate_study` (called by workflow/rules/common.smk):

* fills in every default the schema declares (the settings blocks are generated from
  layerprune.config.settings, so a setting's default is written once, in its declaration);
* collects the schema's complaints, the keys given twice in a file, non-finite numbers
  (`.inf` passes every bound), the plan-time checks of layerprune.config.checks (BIG-bench task
  names, probe tasks, the headline ratio, pass@k ...) and lm-eval task names;
* locates each at the line of the config file that sets the key (the last file that does,
  as later --configfiles win), or at `--config` when an override sets it.

No torch at import. lm-eval's task registry takes ~20 s to index, so its names are cached
per lm-eval version under ~/.cache/layerprune (XDG_CACHE_HOME).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from layerprune.config.checks import (
    ConfigError,
    check_models,
    config_problems,
    duplicate_keys,
    local_path_problems,
    machine_problems,
    plan_warnings,
    ratio_wildcards,
)
from layerprune.config.settings import apply_defaults, load_schema

MAX_LINES = 20  # a report longer than a screen is not read


# --------------------------------------------------------------------------- schema errors as lines


def _dotted(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _short(value: Any) -> str:
    text = "null" if value is None else json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed(names: Iterable[Any], limit: int = 12) -> str:
    names = ["null" if name is None else str(name) for name in names]
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def _bounds(schema: dict[str, Any]) -> str:
    signs = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    return " and ".join(f"{signs[k]} {schema[k]}" for k in signs if k in schema)


def _describe(error: jsonschema.ValidationError) -> list[tuple[str, str]]:
    """(dotted key, what is wrong) for one schema error."""
    path = list(error.absolute_path)
    key = _dotted(path)
    kind, value, instance, schema = error.validator, error.validator_value, error.instance, error.schema
    if kind == "required":
        return [(_dotted([*path, name]), "missing (required)") for name in value if name not in instance]
    if kind == "additionalProperties":
        known = list(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        found = []
        for name in instance:
            if name in known or any(re.search(p, name) for p in patterns):
                continue
            close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            listed = known + [p.strip("^$()").replace("|", ", ") for p in patterns]
            limit = 6 if close else 12
            found.append((_dotted([*path, name]), f"unknown key ({hint}allowed: {_allowed(listed, limit)})"))
        return found
    if kind == "enum":
        close = difflib.get_close_matches(str(instance), [str(v) for v in value], n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return [(key, f"{_short(instance)} is not allowed{hint} (allowed: {_allowed(value)})")]
    if kind == "const":
        return [(key, f"{_short(instance)} is not allowed here (allowed: {_short(value)})")]
    if kind == "type":
        wanted = " or ".join(TYPE_NAMES.get(t, t) for t in ([value] if isinstance(value, str) else value))
        return [(key, f"expected {wanted}, got {_short(instance)}")]
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return [(key, f"{_short(instance)} is out of range (allowed: {_bounds(schema)})")]
    if kind in ("minItems", "minProperties"):
        return [(key, f"needs at least {value} {'item' if kind == 'minItems' else 'entry'}{'s' * (value != 1)}")]
    if kind == "uniqueItems":
        return [(key, f"{_short(instance)} names an item twice")]
    if kind == "pattern":
        return [(key, f"{_short(instance)} has characters a name cannot hold (allowed: {_pattern_allowed(value)})")]
    if kind in ("oneOf", "anyOf"):
        alternatives = [s.get("required") for s in value if isinstance(s, dict)]
        if all(alternatives) and len(alternatives) == len(value) and isinstance(instance, dict):
            forms = " | ".join(" + ".join(a) for a in alternatives)
            given = [name for a in alternatives for name in a if name in instance]
            what = f"gives {', '.join(given)}" if given else "gives none of them"
            return [(key, f"needs exactly one of: {forms}; it {what}")]
        if error.context:
            return _describe(jsonschema.exceptions.best_match(error.context))
    if kind == "not" and isinstance(instance, dict) and "lm_eval_task" in instance:
        return [(key, "lm_eval_task runs a task by name, so bigbench_task, hub and file cannot be given with it")]
    message = error.message if len(error.message) <= 120 else error.message[:117] + "..."
    return [(key, message)]


def _pattern_allowed(pattern: str) -> str:
    """The characters a name pattern admits, in words (only those it does: `study` admits no /)."""
    allowed = ["letters", "digits"] + [c for c in "_-./" if c in pattern.replace("\\.", ".")]
    words = ", ".join(allowed[:2]) + (", " + " ".join(allowed[2:]) if allowed[2:] else "")
    return words + ("; not 'shared'" if "shared" in pattern else "")


def schema_problems(config: dict[str, Any], schema: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, what is wrong) for every schema error of `config`, in file order as far as the schema allows."""
    validator = jsonschema.Draft202012Validator(schema)
    found: list[tuple[str, str]] = []
    for error in validator.iter_errors(config):
        if error.validator == "propertyNames":  # a bad name: the key itself is the value at fault
            name = error.instance
            found.append(
                (
                    _dotted([*error.absolute_path]) + f".{name}",
                    f"'{name}' cannot be a name (allowed: letters, digits, _ -"
                    + (" ." if "." in error.validator_value.get("pattern", "") else "")
                    + ")",
                )
            )
            continue
        found += _describe(error)
    return found


def non_finite(config: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[str, str]]:
    """`.inf` and `.nan` anywhere: they pass every bound check, then overflow (or compare false) in a job."""
    if isinstance(config, dict):
        for key, value in config.items():
            yield from non_finite(value, (*path, key))
    elif isinstance(config, list):
        for index, value in enumerate(config):
            yield from non_finite(value, (*path, index))
    elif isinstance(config, float) and not math.isfinite(config):
        yield _dotted(path), f"{config} is not a finite number (allowed: finite numbers)"


# --------------------------------------------------------------------------- lm-eval task names


def lm_eval_cache_file() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "layerprune" / "lm-eval-tasks.json"


def lm_eval_task_names(cache: Path | None = None) -> frozenset[str] | None:
    """Every task, group and tag lm-eval 0.4 knows, cached per lm-eval version and install; None without lm-eval."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    cache = cache or lm_eval_cache_file()
    key = f"{importlib.metadata.version('lm_eval')} {list(spec.submodule_search_locations)[0]}"
    try:
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return frozenset(stored["names"])
    except (OSError, ValueError, AttributeError):  # no cache (or a broken one): index again
        pass
    from lm_eval.tasks import TaskManager

    names = sorted(TaskManager().all_tasks)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "names": names}))
        tmp.replace(cache)
    except OSError:  # a read-only home: the check still runs, only slower next time
        pass
    return frozenset(names)


def include_path_names(folder: str | Path) -> set[str]:
    """The task, group and tag names the lm-eval YAMLs in `folder` define (what TaskManager(include_path) adds)."""
    names: set[str] = set()
    for path in Path(folder).expanduser().rglob("*.yaml"):
        for match in re.finditer(r"^(?:task|group|tag):\s*['\"]?([^'\"\s#]+)", path.read_text(errors="replace"), re.M):
            names.add(match[1])
    return names


def lm_eval_problems(config: dict[str, Any], names: frozenset[str] | None = None) -> list[tuple[str, str]]:
    tasks = config.get("tasks") if isinstance(config.get("tasks"), dict) else {}
    wanted = {t: s for t, s in tasks.items() if isinstance(s, dict) and isinstance(s.get("lm_eval_task"), str)}
    if not wanted:
        return []
    known = names if names is not None else lm_eval_task_names()
    if known is None:
        return [("tasks", "lm-eval is not installed, but tasks name an lm_eval_task (pip install lm-eval)")]
    found = []
    for task, spec in wanted.items():
        name = spec["lm_eval_task"]
        extra = include_path_names(spec["lm_eval_include_path"]) if spec.get("lm_eval_include_path") else set()
        if name in known or name in extra:
            continue
        close = difflib.get_close_matches(name, sorted(known | extra), n=3, cutoff=0.75)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        where = " or in lm_eval_include_path" if spec.get("lm_eval_include_path") else ""
        found.append((f"tasks.{task}.lm_eval_task", f"'{name}' is not an lm-eval task or group{where}{hint}"))
    return found


# --------------------------------------------------------------------------- locating a key in the files


class Source:
    """One config file as YAML nodes, which keep their line numbers."""

    def __init__(self, path: str | Path) -> None:
        relative = os.path.relpath(path)
        self.path = str(path) if relative.startswith("..") else relative
        try:
            self.root = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
        except (OSError, yaml.YAMLError):
            self.root = None

    def find(self, key: str) -> tuple[int, int]:
        """(how many characters of `key` this file sets, 1-based line of the deepest node found)."""
        node, rest, depth, line = self.root, key, 0, 1
        while rest and node is not None:
            if isinstance(node, yaml.SequenceNode) and (match := re.match(r"\[(\d+)\]\.?", rest)):
                index = int(match[1])
                if index >= len(node.value):
                    break
                node, rest = node.value[index], rest[match.end() :]
            elif isinstance(node, yaml.MappingNode):
                # the longest key that starts `rest`: model names may hold dots
                best = None
                for key_node, value_node in node.value:
                    name = str(key_node.value)
                    if rest == name or rest.startswith(name + ".") or rest.startswith(name + "["):
                        if best is None or len(name) > len(str(best[0].value)):
                            best = (key_node, value_node)
                if best is None:
                    break
                node, line = best[1], best[0].start_mark.line + 1
                rest = rest[len(str(best[0].value)) :].lstrip(".")
            else:
                break
            depth = len(key) - len(rest)
        return depth, line


def _in_overrides(overrides: Mapping[str, Any], key: str) -> bool:
    node: Any = overrides
    for part in re.split(r"\.(?![^\[]*\])", key.split("[")[0]):
        if not isinstance(node, Mapping) or part not in node:  # Snakemake's --config values: a Mapping
            return False
        node = node[part]
    return True


def locate(key: str, sources: list[Source], overrides: Mapping[str, Any] | None = None) -> str:
    """`file:line` of the key (or of its nearest parent a file sets); `--config` when an override sets it."""
    if overrides and _in_overrides(overrides, key):
        return "--config"
    best: tuple[int, str] | None = None
    for source in sources:  # later files win a tie: they override the earlier ones
        depth, line = source.find(key)
        if best is None or depth >= best[0]:
            best = (depth, f"{source.path}:{line}")
    return best[1] if best else "config"


# --------------------------------------------------------------------------- the study


def validate_study(
    config: dict[str, Any],
    files: Iterable[str | Path],
    overrides: Mapping[str, Any] | None = None,
    schema: dict[str, Any] | None = None,
    lm_eval_names: frozenset[str] | None = None,
    on_this_machine: bool = True,
    dense_checkpoint: Callable[[str], str] | None = None,
) -> list[str]:
    """Fill in `config`'s defaults (in place), then ConfigError listing every problem, one line each; else the
    notes on what can only be checked later. `on_this_machine`: also check what this machine holds (lm-eval's
    task names, the models on disk); a cluster job re-reading the Snakefile skips it, the plan was checked.
    `dense_checkpoint`: a model's materialized checkpoint folder (layerprune.config.checks.check_models)."""
    files = [str(f) for f in files]
    sources = [Source(f) for f in files]
    problems: list[tuple[str | None, str, str]] = []  # (location or None to locate, key, message)
    for path in files:
        for line in duplicate_keys(path):
            match = re.match(r".*?: key '(.*?)' is given twice \(lines (\d+) and (\d+)\); (.*)", line)
            if match:
                problems.append(
                    (f"{path}:{match[3]}", match[1], f"given twice (also line {match[2]}); {match[4]} (allowed: once)")
                )
    if not isinstance(config, dict):
        raise ConfigError(f"{files[-1] if files else 'config'}: the config must be a mapping of keys")
    schema = schema if schema is not None else load_schema()
    apply_defaults(config, schema)
    found = schema_problems(config, schema)
    found += [(key, message) for key, message in non_finite(config) if key not in {k for k, _ in found}]
    schema_clean = not found
    try:
        found += [tuple(line.split(": ", 1)) for line in config_problems(config)]  # type: ignore[misc]
    except (AttributeError, KeyError, TypeError):  # checks of values the schema already refused
        if schema_clean:
            raise
    ratios = config.get("pruning", {}).get("ratios") if isinstance(config.get("pruning"), dict) else None
    wildcards = None
    if isinstance(ratios, list) and ratios and all(isinstance(r, (int, float)) for r in ratios):
        try:
            wildcards = ratio_wildcards(ratios)
        except ConfigError as error:
            found.append(tuple(str(error).split(": ", 1)))  # type: ignore[arg-type]
    notes: list[str] = []
    if on_this_machine:
        found += [tuple(line.split(": ", 1)) for line in machine_problems(config)]  # type: ignore[misc]
        found += lm_eval_problems(config, lm_eval_names)
        try:  # every local file the study reads, with the other mistakes (a job would fail on it only when it runs)
            found += [tuple(line.split(": ", 1)) for line in local_path_problems(config)]  # type: ignore[misc]
        except (AttributeError, KeyError, TypeError):
            if schema_clean:
                raise
        if wildcards is not None and schema_clean:  # the models' source entries are well-formed
            try:
                notes = check_models(config, wildcards, dense_checkpoint=dense_checkpoint)
            except ConfigError as error:
                found += [tuple(line.split(": ", 1)) for line in str(error).splitlines()]  # type: ignore[misc]
    problems += [(None, key, message) for key, message in found]
    if not problems:
        return notes + [f"{locate(key, sources, overrides)}: {key}: {text}" for key, text in plan_warnings(config)]
    located = {}
    for where, key, message in problems:
        where = where or locate(key, sources, overrides)
        located.setdefault(f"{where}: {key}: {message}", where)

    def order(line: str) -> tuple[str, int]:  # in the order of the files' lines
        where = located[line]
        name, _, number = where.rpartition(":")
        return (name, int(number)) if number.isdigit() else (where, 0)

    lines = sorted(located, key=order)
    shown = lines[:MAX_LINES]
    if len(lines) > MAX_LINES:
        shown.append(f"... and {len(lines) - MAX_LINES} more")
    count = f"{len(lines)} problem{'s' * (len(lines) != 1)}"
    raise ConfigError(
        f"the study's config has {count} (workflow/schemas/config.schema.yaml documents each key):\n" + "\n".join(shown)
    )
