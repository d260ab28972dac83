"""Plan-time checks: a config that cannot work fails when the DAG is built, not hours later.

layerprune.config.validation (called by workflow/rules/common.smk) runs these with the schema
validation and reports every problem at once, each at the file and line that sets its key:

* `check_config_files`: a key given twice in one mapping of a config file (YAML keeps
  the last one without a word);
* `ratio_wildcards`: the pruning ratios as the `{ratio}` wildcards of the output paths,
  each of which must match `RATIO_WILDCARD`, stand for exactly its ratio, and be unique;
* `config_problems` (`check_config` raises them): values the schema cannot express
  (`recovery.max_steps: 0`, BIG-bench task names not in the pinned bigbench 1.0.0 sdist,
  probe tasks, pass@k above num_samples, a headline ratio the study does not run);
* `check_models`: what the models on disk allow: a local checkpoint needs config.json,
  an architecture the surgery supports and enough layers for every ratio to remove at
  least one and not all of them. A hub model is checked the same way once its config is
  on disk (the offline Hugging Face cache, or the materialized dense checkpoint), else
  when `materialize` downloads it.

Fast enough for every DAG build: no torch at import. Only a local (or cached) model's
architecture check imports transformers (seconds), and its verdict is cached under
.snakemake/ keyed on the config.json, the transformers version and the surgery code.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from layerprune.config.bigbench_tasks import BIGBENCH_JSON_TASKS, BIGBENCH_PROGRAMMATIC_TASKS
from layerprune.io import tokenizer_problem
from layerprune.registry import RECOVERIES

# The `{ratio}` wildcard of every output path. Ratios are written with `{:g}` (six
# significant digits), as report and aggregate print them.
RATIO_WILDCARD = r"0\.[0-9]+"
ARCHITECTURE_CACHE = Path(".snakemake") / "layerprune" / "architecture-checks.json"


class ConfigError(ValueError):
    """A config value (or a file it names) that cannot work; the message names the key."""


# --------------------------------------------------------------------------- config files


def duplicate_keys(path: str | Path) -> list[str]:
    """One line per key that a mapping of the YAML (or JSON) file `path` gives twice: file, dotted key, lines."""
    text = Path(path).read_text(encoding="utf-8")
    root = yaml.compose(text, Loader=yaml.SafeLoader)  # nodes keep their lines; the loader would drop duplicates
    found: list[str] = []

    def walk(node: yaml.Node | None, where: str) -> None:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                dotted = f"{where}.{key}" if where else key
                line = key_node.start_mark.line + 1
                if key in first_line and key != "<<":
                    found.append(
                        f"{path}: key '{dotted}' is given twice (lines {first_line[key]} and {line}); "
                        "YAML would silently keep the last one"
                    )
                first_line.setdefault(key, line)
                walk(value_node, dotted)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, f"{where}[{index}]")

    walk(root, "")
    return found


def check_config_files(paths: Iterable[str | Path]) -> None:
    """ConfigError naming file, key and lines for every key given twice in the same mapping."""
    found = [line for path in paths for line in duplicate_keys(path)]
    if found:
        raise ConfigError("duplicate config key(s):\n  " + "\n  ".join(found))


# --------------------------------------------------------------------------- ratios


def ratio_wildcard(ratio: float) -> str:
    """The `{ratio}` wildcard of a pruning ratio (the text of its output paths)."""
    return f"{ratio:g}"


def ratio_wildcards(ratios: list[float]) -> list[str]:
    """The wildcards of `pruning.ratios`, in order; ConfigError when two share one, one does not
    match RATIO_WILDCARD, or one would run a different ratio than the config gives."""
    wildcards = [ratio_wildcard(ratio) for ratio in ratios]
    problems = []
    by_wildcard: dict[str, list[float]] = {}
    for ratio, wildcard in zip(ratios, wildcards, strict=True):
        by_wildcard.setdefault(wildcard, []).append(ratio)
    for wildcard, same in by_wildcard.items():
        if len(same) > 1:
            problems.append(
                f"{', '.join(map(repr, same))} are all written as ratio {wildcard} (six significant digits): "
                "their results would share one path and give duplicate summary rows; keep one"
            )
    for ratio, wildcard in zip(ratios, wildcards, strict=True):
        if len(by_wildcard[wildcard]) > 1:
            continue
        if not re.fullmatch(RATIO_WILDCARD, wildcard):
            problems.append(
                f"{ratio!r} is written {wildcard}, which no output path can hold (ratios below 0.0001 are written "
                "in scientific notation, and would remove a layer only from a model with at least 5000)"
            )
        elif float(wildcard) != ratio:
            problems.append(f"{ratio!r} would run as {wildcard} (six significant digits); write {wildcard}")
    if problems:
        raise ConfigError("pruning.ratios: " + "; ".join(problems))
    return wildcards


def layers_removed_by(ratio: float, num_layers: int) -> int:
    """k = round(r * L), halves up: layerprune.pruning.surgery.layers_for_ratio without importing torch (a test keeps
    the two equal)."""
    return math.floor(ratio * num_layers + 0.5)


# --------------------------------------------------------------------------- config values


def bigbench_task_keys(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(config key, BIG-bench task name) for every BIG-bench task the config names."""
    named: list[tuple[str, str]] = []
    for task, spec in config.get("tasks", {}).items():
        if spec.get("dataset", "bigbench") == "bigbench" and spec.get("bigbench_task"):
            value = spec["bigbench_task"]
            names = [value] if isinstance(value, str) else value
            key = f"tasks.{task}.bigbench_task"
            named += [(key if isinstance(value, str) else f"{key}[{i}]", name) for i, name in enumerate(names)]
    prompts = config.get("prompts", {})
    if prompts.get("source", "bigbench") == "bigbench":
        named += [(f"prompts.bigbench_tasks[{i}]", n) for i, n in enumerate(prompts.get("bigbench_tasks") or [])]
    calibration = config.get("scoring", {}).get("calibration", {})
    named += [
        (f"scoring.calibration.bigbench_tasks[{i}]", n) for i, n in enumerate(calibration.get("bigbench_tasks", []))
    ]
    heal_source = config.get("recovery", {}).get("heal", {}).get("source", {})
    named += [
        (f"recovery.heal.source.bigbench_tasks[{i}]", n) for i, n in enumerate(heal_source.get("bigbench_tasks", []))
    ]
    return named


def unknown_bigbench_task(key: str, name: str) -> str | None:
    """Why `name` (at config key `key`) is not a BIG-bench 1.0.0 task with a task.json; None when it is one."""
    if name in BIGBENCH_JSON_TASKS:
        return None
    if name in BIGBENCH_PROGRAMMATIC_TASKS:
        return f"{key}: '{name}' is a programmatic BIG-bench task (task.py, no task.json), which cannot be read here"
    close = difflib.get_close_matches(name, sorted(BIGBENCH_JSON_TASKS), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"{key}: '{name}' is not a task of BIG-bench 1.0.0 (the pinned bigbench sdist){hint}"


def bigbench_readers(config: dict[str, Any]) -> list[str]:
    """The config keys whose data this study reads from the BIG-bench sdist (none: it is never fetched)."""
    readers = [
        f"tasks.{task}"
        for task, spec in (config.get("tasks") or {}).items()
        if isinstance(spec, dict)
        and not spec.get("lm_eval_task")
        and (
            (spec.get("dataset", "bigbench") == "bigbench" and spec.get("bigbench_task"))
            or (spec.get("dataset") == "xsum" and not spec.get("hub") and not spec.get("file"))
        )
    ]
    recoveries = set((config.get("recovery") or {}).get("methods") or [])
    if (config.get("prompts") or {}).get("source") == "bigbench" and recoveries - {"none", "heal"}:
        readers.append("prompts.source")
    if ((config.get("scoring") or {}).get("calibration") or {}).get("source") == "bigbench":
        readers.append("scoring.calibration.source")
    if "heal" in recoveries and "bigbench_tasks" in ((config.get("recovery") or {}).get("heal") or {}).get(
        "source", {}
    ):
        readers.append("recovery.heal.source")
    return readers


def bigbench_source_problems(config: dict[str, Any]) -> list[str]:
    """A local copy named by `bigbench.sdist` that is not there, for a study that reads BIG-bench."""
    sdist = (config.get("bigbench") or {}).get("sdist")
    readers = bigbench_readers(config)
    if sdist and readers and not Path(sdist).is_file():
        return [
            f"bigbench.sdist: {sdist}: no such file ({', '.join(readers[:3])} read BIG-bench tasks); point it at a "
            "copy of bigbench-1.0.0.tar.gz, or use the project's own tasks (dataset: builtin; docs/data.md)"
        ]
    return []


def config_problems(config: dict[str, Any]) -> list[str]:
    """Values the schema admits but that mean nothing, one `key: what is wrong` line each (the config has its
    defaults applied; keys the schema already refused may be missing or of the wrong type, and are skipped)."""
    problems = []
    recovery = config.get("recovery") if isinstance(config.get("recovery"), dict) else {}
    if recovery.get("max_steps") == 0:
        problems.append(
            "recovery.max_steps: 0 would still train one step (the trainer treats 0 as unset); "
            "use -1 to train num_epochs, or a positive step count"
        )
    problems += [reason for key, name in bigbench_task_keys(config) if (reason := unknown_bigbench_task(key, name))]
    problems += bigbench_source_problems(config)
    selfgen, prompts = config.get("selfgen", {}), config.get("prompts", {})
    longest_prompt = prompts.get("max_prompt_tokens") if prompts.get("source") != "magpie" else None
    if selfgen.get("max_model_len") and longest_prompt and "max_new_tokens" in selfgen:
        if selfgen["max_model_len"] < longest_prompt + selfgen["max_new_tokens"]:
            problems.append(
                f"selfgen.max_model_len: {selfgen['max_model_len']} is less than prompts.max_prompt_tokens "
                f"({longest_prompt}) + selfgen.max_new_tokens ({selfgen['max_new_tokens']}): vLLM would refuse "
                "the longest prompts"
            )
    resources = config.get("resources", {})
    if "default" in resources and selfgen.get("tensor_parallel_size", 1) > 1:
        from layerprune.config.launch import num_gpus, rule_settings

        gpus = num_gpus(rule_settings(resources, "selfgen"))
        if 0 < gpus < selfgen["tensor_parallel_size"]:
            problems.append(
                f"selfgen.tensor_parallel_size: {selfgen['tensor_parallel_size']} GPUs, but the selfgen job gets "
                f"{gpus} (resources.selfgen); vLLM would not start"
            )
    tasks = config.get("tasks") if isinstance(config.get("tasks"), dict) else {}
    recoveries = recovery.get("methods") or []
    for task, spec in tasks.items():
        if not isinstance(spec, dict):
            continue
        unknown = [name for name in spec.get("exclude_tasks", []) if name not in tasks or name == task]
        if unknown:
            problems.append(
                f"tasks.{task}.exclude_tasks: {', '.join(map(repr, unknown))} is not another task in config `tasks` "
                f"(tasks: {', '.join(tasks)})"
            )
        not_run = [name for name in spec.get("recoveries") or [] if name not in recoveries]
        if not_run:
            problems.append(
                f"tasks.{task}.recoveries: {', '.join(map(repr, not_run))} is not in recovery.methods "
                f"({', '.join(recoveries)}): no such variant is built"
            )
        num_samples = spec.get("num_samples", 1)
        too_large = [k for k in spec.get("pass_k", [1]) if isinstance(k, int) and k > num_samples]
        if too_large and isinstance(num_samples, int):
            problems.append(
                f"tasks.{task}.pass_k: {', '.join(map(str, too_large))} is more than num_samples ({num_samples}): "
                "pass@k needs at least k samples per problem (allowed: k <= num_samples)"
            )
    problems += _grid_problems(config, tasks, recoveries)
    problems += path_and_id_problems(config)
    return problems


def _grid_problems(config: dict[str, Any], tasks: dict[str, Any], recoveries: list[str]) -> list[str]:
    """What ties the grid together: probe tasks, the headline ratio, the prompt set the recoveries train on."""
    problems = []
    scoring = config.get("scoring") if isinstance(config.get("scoring"), dict) else {}
    iterative = scoring.get("iterative") if isinstance(scoring.get("iterative"), dict) else {}
    if "iterative" in (scoring.get("methods") or []) and tasks:
        probes = iterative.get("probe_tasks") or list(tasks)
        unknown = [task for task in probes if task not in tasks]
        by_name = [task for task in probes if task in tasks and tasks[task].get("lm_eval_task")]
        if unknown:
            problems.append(
                f"scoring.iterative.probe_tasks: {', '.join(map(repr, unknown))} is not a task in config `tasks` "
                f"(allowed: {', '.join(tasks)})"
            )
        if by_name:
            problems.append(
                f"scoring.iterative.probe_tasks: {', '.join(map(repr, by_name))} run through lm-eval by name and "
                "have no prepared samples to probe with; name BIG-bench or dataset tasks (set probe_tasks explicitly)"
            )
    ratios = (config.get("pruning") or {}).get("ratios") if isinstance(config.get("pruning"), dict) else None
    report = config.get("report") if isinstance(config.get("report"), dict) else {}
    headline = report.get("headline_ratio")
    if headline is not None and isinstance(ratios, list) and headline not in ratios:
        problems.append(
            f"report.headline_ratio: {headline} is not a ratio this study runs "
            f"(allowed: {', '.join(map(str, ratios))}, or null for the median)"
        )
    prompts = config.get("prompts") if isinstance(config.get("prompts"), dict) else {}
    # the recoveries declared to train on data drawn from the prompt set (layerprune.registry.RECOVERIES)
    on_prompts = [name for name in recoveries if name in RECOVERIES and RECOVERIES[name].reads_prompt_set]
    if on_prompts:
        source = prompts.get("source", "builtin")
        if source in ("bigbench", "builtin") and not prompts.get(f"{source}_tasks"):
            problems.append(
                f"prompts.{source}_tasks: missing; the {'/'.join(on_prompts)} recoveries train on a prompt set "
                f"(or responses generated from it) and prompts.source is {source} (or name a prompts.source: "
                "builtin, hub, jsonl, magpie)"
            )
        if source in ("hub", "jsonl") and not prompts.get("path"):
            problems.append(f"prompts.path: missing; prompts.source is {source}")
        on_answers = [name for name in on_prompts if RECOVERIES[name].data == "reference"]
        if on_answers and (
            source == "magpie" or (source in ("hub", "jsonl") and prompts.get("response_field", "output") is None)
        ):
            named = ", ".join(f"`{name}`" for name in on_answers)
            problems.append(
                f"recovery.methods: {named} trains on the prompt set's own answers, but the prompt set has none "
                f"(prompts.source: {source}, prompts.response_field: {prompts.get('response_field')}); "
                f"remove {named} from recovery.methods or use a prompt source with answers"
            )
    return problems


def check_config(config: dict[str, Any]) -> None:
    """ConfigError for values the schema admits but that mean nothing (one line per key)."""
    problems = config_problems(config)
    if problems:
        raise ConfigError("\n".join(problems))


# --------------------------------------------------------------------------- models on disk

# GGUF metadata value types (gguf spec): struct format of each scalar; 8 = string, 9 = array.
GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
GGUF_STRING, GGUF_ARRAY = 8, 9


def gguf_metadata(path: str | Path, wanted: Iterable[str] | None = None) -> dict[str, Any]:
    """The header key/values of a GGUF file (only the first part is needed for a split one), read up to the
    last of `wanted` (default: all). Reads the header alone, so it takes milliseconds, unlike gguf.GGUFReader."""
    wanted = set(wanted) if wanted is not None else None
    values: dict[str, Any] = {}

    def read(handle: BinaryIO, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        data = handle.read(size)
        if len(data) != size:
            raise ConfigError(f"{path}: the GGUF header is cut short")
        return struct.unpack("<" + fmt, data)[0]

    def read_string(handle: BinaryIO) -> str:
        return handle.read(read(handle, "Q")).decode("utf-8", errors="replace")

    def read_value(handle: BinaryIO, kind: int) -> Any:
        if kind == GGUF_STRING:
            return read_string(handle)
        if kind == GGUF_ARRAY:
            item_kind, count = read(handle, "I"), read(handle, "Q")
            if item_kind in GGUF_SCALARS:  # skipped, not decoded: tokenizer arrays hold ~10^5 entries
                handle.seek(count * struct.calcsize("<" + GGUF_SCALARS[item_kind]), os.SEEK_CUR)
                return None
            return [read_value(handle, item_kind) for _ in range(count)]
        if kind not in GGUF_SCALARS:
            raise ConfigError(f"{path}: unknown GGUF metadata type {kind}")
        return read(handle, GGUF_SCALARS[kind])

    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ConfigError(f"{path} is not a GGUF file (no GGUF magic)")
        version = read(handle, "I")
        if version not in (2, 3):
            raise ConfigError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        _tensor_count, kv_count = read(handle, "Q"), read(handle, "Q")
        for _ in range(kv_count):
            key = read_string(handle)
            values[key] = read_value(handle, read(handle, "I"))
            if wanted is not None and wanted <= values.keys():
                break
    return values


def _package_directories(package: str) -> list[Path]:
    try:
        spec = importlib.util.find_spec(package)
    except (ModuleNotFoundError, ValueError):
        return []
    return [Path(p) for p in spec.submodule_search_locations or []] if spec else []


def packaged_gguf_head(package: str, filename: str) -> Path | None:
    """The packaged GGUF (or the first chunk of one split across `<package>_partN`), found as
    layerprune.models.checkpoints locates it but without importing torch; None when it is not installed."""
    directories = _package_directories(package)
    index = 1
    while extra := _package_directories(f"{package}_part{index}"):
        directories += extra
        index += 1
    for pattern in (filename, f"{filename}.part*"):
        for search in ("glob", "rglob"):
            found = sorted(p for d in directories for p in getattr(d, search)(pattern) if p.is_file())
            if found:
                parts = [p for p in found if re.fullmatch(re.escape(filename) + r"(\.part\d+)?", p.name)]
                if parts:
                    return min(parts, key=lambda p: int(p.name.rsplit(".part", 1)[1]) if ".part" in p.name else -1)
    return None


def num_layers_of(config: dict[str, Any]) -> int | None:
    """The decoder depth in a config.json (multimodal configs nest it in text_config)."""
    for scope in (config, config.get("text_config") or {}):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(scope.get(key), int):
                return scope[key]
    return None


def _architecture_cache_key(config_json: bytes) -> str:
    """The config.json, the transformers version and the surgery code: what the verdict depends on."""
    digest = hashlib.sha256(config_json)
    digest.update(importlib.metadata.version("transformers").encode())
    package = Path(__file__).parents[1]
    for module in ("pruning/surgery.py", "models/checkpoints.py"):
        digest.update((package / module).read_bytes())
    return digest.hexdigest()


def architecture_refusal(config_file: Path, cache: Path | None = ARCHITECTURE_CACHE) -> str | None:
    """layerprune.pruning.surgery.refusal_reason of a config.json, cached in `cache` (None: no cache)."""
    config_json = config_file.read_bytes()
    key = _architecture_cache_key(config_json)
    verdicts: dict[str, str | None] = {}
    if cache is not None and cache.is_file():
        try:
            verdicts = json.loads(cache.read_text())
        except json.JSONDecodeError:  # a cache is never worth an error: recompute
            verdicts = {}
        if key in verdicts:
            return verdicts[key]
    from layerprune.pruning.surgery import refusal_reason  # torch + transformers: seconds, so only here

    reason = refusal_reason(json.loads(config_json))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        verdicts[key] = reason
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps(verdicts, indent=1))
        tmp.replace(cache)
    return reason


def _hub_config_file(source: dict[str, Any]) -> Path | None:
    """The hub model's config.json in the offline Hugging Face cache, if it is there (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source["hub"], "config.json", revision=source.get("revision"))
    return Path(found) if isinstance(found, str) else None


def _depth_problems(model: str, key: str, num_layers: int, ratios: list[str]) -> list[str]:
    problems = []
    for wildcard in ratios:
        k = layers_removed_by(float(wildcard), num_layers)
        if k == 0:
            problems.append(
                f"pruning.ratios: {wildcard} removes no layer of model '{model}' ({key}: {num_layers} layers, "
                f"round({wildcard} x {num_layers}) = 0)"
            )
        elif k >= num_layers:
            problems.append(
                f"pruning.ratios: {wildcard} removes all {num_layers} layers of model '{model}' ({key}: "
                f"round({wildcard} x {num_layers}) = {k})"
            )
    return problems


def _checkpoint_problems(model: str, key: str, config_file: Path, ratios: list[str], cache: Path | None) -> list[str]:
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return [f"{key}: {config_file} is not valid JSON ({error})"]
    if not isinstance(config, dict):
        return [f"{key}: {config_file} is not a JSON object"]
    reason = architecture_refusal(config_file, cache)
    if reason is not None:
        return [f"{key}: model '{model}' cannot be pruned: {reason}"]
    num_layers = num_layers_of(config)
    return [] if num_layers is None else _depth_problems(model, key, num_layers, ratios)


def check_models(
    config: dict[str, Any],
    ratios: list[str],
    cache: Path | None = ARCHITECTURE_CACHE,
    dense_checkpoint: Callable[[str], str] | None = None,
) -> list[str]:
    """ConfigError for a model on disk that the study cannot prune; returns notes on the models that can only be
    checked later (a hub model whose config is not on this machine yet). `dense_checkpoint`: a model's
    materialized checkpoint folder (the workflow's path for it), where a hub model may already be."""
    problems, notes = [], []
    for model, spec in config["models"].items():
        source = spec["source"]
        if "path" in source:
            key = f"models.{model}.source.path"
            directory = Path(source["path"]).expanduser()
            if not directory.is_dir():
                problems.append(f"{key}: '{directory}' does not exist (a local checkpoint directory is expected)")
            elif not (directory / "config.json").is_file():
                problems.append(f"{key}: '{directory}' has no config.json, so it is not a checkpoint directory")
            else:
                problems += _checkpoint_problems(model, key, directory / "config.json", ratios, cache)
                problems += _tokenizer_problems(key, directory)
        elif "hub" in source:
            key = f"models.{model}.source.hub"
            dense = Path(dense_checkpoint(model)) / "config.json" if dense_checkpoint else None
            config_file = dense if dense is not None and dense.is_file() else _hub_config_file(source)
            if config_file is None:
                notes.append(
                    f"{key}: '{source['hub']}' is not in the offline Hugging Face cache; its architecture and depth "
                    "are checked when materialize downloads it"
                )
            else:
                problems += _checkpoint_problems(model, key, config_file, ratios, cache)
        else:  # package + gguf; a package that is not installed is reported by materialize, the first job
            key = f"models.{model}.source.gguf"
            head = packaged_gguf_head(source["package"], source["gguf"])
            if head is None:
                continue
            try:
                architecture = gguf_metadata(head, ["general.architecture"])["general.architecture"]
                depth = gguf_metadata(head, [f"{architecture}.block_count"]).get(f"{architecture}.block_count")
            except (ConfigError, KeyError, OSError) as error:
                problems.append(f"{key}: cannot read the GGUF header of {head} ({error})")
                continue
            if isinstance(depth, int):
                problems += _depth_problems(model, key, depth, ratios)
    if problems:
        raise ConfigError("\n".join(problems))
    return notes


# --------------------------------------------------------------------------- paths and ids a study names (issue 27)

# What huggingface_hub accepts as a repo id (its validate_repo_id): `name` or `owner/name` of letters, digits,
# _ - . (no `--` or `..`, at most 96 characters). Anything else would reach a URL or a cache path.
HUB_ID = re.compile(r"(?!.*(?:--|\.\.))[A-Za-z0-9_][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)?")


def _climbs_out(path: str) -> bool:
    """Whether a relative path leaves the study's working directory (a `..` that climbs above it)."""
    depth = 0
    for part in Path(path).parts:
        depth += -1 if part == ".." else 0 if part in (".", "") else 1
        if depth < 0:
            return True
    return False


def path_and_id_problems(config: dict[str, Any]) -> list[str]:
    """Files the study names that would leave its folders, and hub ids that are not ids, one line each.

    A relative `file`, `fewshot_file` or `lm_eval_include_path` of a task may not climb out of the working
    directory with `..` (an absolute path names a dataset's place explicitly and is taken as given); a packaged
    GGUF is a file inside its package, so neither absolute nor with `..`; a hub id is `owner/name`."""
    problems = []
    tasks = config.get("tasks") if isinstance(config.get("tasks"), dict) else {}
    for task, spec in tasks.items():
        for field in ("file", "fewshot_file", "lm_eval_include_path"):
            value = spec.get(field) if isinstance(spec, dict) else None
            if isinstance(value, str) and not Path(value).is_absolute() and _climbs_out(value):
                problems.append(
                    f"tasks.{task}.{field}: '{value}' leaves the study's folders (a relative path may not climb "
                    "above the working directory; give the absolute path of data kept elsewhere)"
                )
    models = config.get("models") if isinstance(config.get("models"), dict) else {}
    for model, spec in models.items():
        source = spec.get("source") if isinstance(spec, dict) else None
        if not isinstance(source, dict):
            continue
        gguf, hub = source.get("gguf"), source.get("hub")
        if isinstance(gguf, str) and (Path(gguf).is_absolute() or ".." in Path(gguf).parts):
            problems.append(
                f"models.{model}.source.gguf: '{gguf}' is not a file inside package '{source.get('package')}' "
                "(a path relative to the package's folder, without ..)"
            )
        if isinstance(hub, str) and not (len(hub) <= 96 and HUB_ID.fullmatch(hub)):
            problems.append(
                f"models.{model}.source.hub: {hub!r} is not a Hugging Face hub id (allowed: name or owner/name of "
                "letters, digits, _ - .; no .. or --; at most 96 characters)"
            )
    return problems


def machine_problems(config: dict[str, Any], results: Path = Path("results")) -> list[str]:
    """What this machine must hold for the plan to run, one line each: a results folder it can write. (The local
    files a study reads, a jsonl prompt source's among them, are `local_path_problems`'.)"""
    problems = []
    folder = results if results.is_dir() else results.parent
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".layerprune-write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        problems.append(f"results: the results folder {results.resolve()} is not writable ({error.strerror})")
    return problems


def _tokenizer_problems(key: str, directory: Path) -> list[str]:
    """A local checkpoint without a tokenizer: named now, not in materialize's traceback."""
    problem = tokenizer_problem(directory)
    return [f"{key}: '{directory}' has no tokenizer ({problem})"] if problem else []


# --------------------------------------------------------------------------- local paths (plan time)


def _path_suggestion(path: str, limit: int = 4000) -> str | None:
    """The existing path closest to a missing one: among the entries below its nearest existing folder."""
    missing = Path(os.path.expanduser(path))
    base = missing.parent
    while not base.is_dir() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        return None
    candidates = []
    depth = len(missing.parts) - len(base.parts)
    for root, folders, files in os.walk(base):
        level = len(Path(root).parts) - len(base.parts)
        folders[:] = [name for name in folders if not name.startswith(".") and level < depth]
        candidates += [os.path.normpath(os.path.join(root, name)) for name in [*folders, *files]]
        if len(candidates) > limit:
            break
    close = difflib.get_close_matches(os.path.normpath(path), candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def _missing(key: str, path: str) -> str:
    suggestion = _path_suggestion(path)
    hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
    return f"{key}: no such file {path!r}{hint}"


def local_path_keys(config: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(key, path, always local) of every path a study reads from disk or, when it does not look local, the hub:
    a local file must exist at plan time; a hub id that looks like a local path (layerprune.io.looks_local) too."""
    keys: list[tuple[str, str, bool]] = []

    def section(name: str) -> dict[str, Any]:
        value = config.get(name)
        return value if isinstance(value, dict) else {}

    calibration = section("scoring").get("calibration")
    if isinstance(calibration, dict) and isinstance(calibration.get("path"), str):
        if calibration.get("source") in ("gsm8k", "text"):
            keys.append(("scoring.calibration.path", calibration["path"], calibration["source"] == "text"))
    prompts = section("prompts")
    if isinstance(prompts.get("path"), str) and prompts.get("source") in ("hub", "jsonl"):
        keys.append(("prompts.path", prompts["path"], prompts["source"] == "jsonl"))
    for task, spec in section("tasks").items():
        if not isinstance(spec, dict):
            continue
        keys += [
            (f"tasks.{task}.{key}", spec[key], True)
            for key in ("file", "fewshot_file")
            if isinstance(spec.get(key), str)
        ]
        if isinstance(spec.get("hub"), str):
            keys.append((f"tasks.{task}.hub", spec["hub"], False))
    heal = section("recovery").get("heal")
    source = heal.get("source") if isinstance(heal, dict) else None
    if isinstance(source, dict):
        if isinstance(source.get("path"), str):
            keys.append(("recovery.heal.source.path", source["path"], True))
        if isinstance(source.get("hub"), str):
            keys.append(("recovery.heal.source.hub", source["hub"], False))
    return keys


def local_path_problems(config: dict[str, Any]) -> list[str]:
    """`key: no such file 'x' (did you mean 'y'?)` for each local path of the study that is not there (relative
    paths from the working directory, as the jobs read them), all at once, before anything runs."""
    from layerprune.io import looks_local

    return [
        _missing(key, path)
        for key, path, local in local_path_keys(config)
        if (local or looks_local(path)) and not os.path.exists(os.path.expanduser(path))
    ]


def plan_warnings(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, warning) for settings that run but are likely not what was meant (printed at plan time)."""
    recovery = config.get("recovery") if isinstance(config.get("recovery"), dict) else {}
    warmup, max_steps = recovery.get("warmup_steps"), recovery.get("max_steps")
    trains = any(method != "none" for method in recovery.get("methods") or [])
    if trains and isinstance(warmup, int) and isinstance(max_steps, int) and 0 < max_steps <= warmup:
        return [
            (
                "recovery.warmup_steps",
                f"warning: {warmup} warmup steps >= recovery.max_steps ({max_steps}): every step trains at a "
                "rising learning rate that never reaches learning_rate; set warmup_steps below max_steps",
            )
        ]
    return []
