"""Plain text for the `heal` recovery variant (LM-loss finetuning after pruning).

Gromov et al. and Shortened LLaMA "heal" a pruned model with ordinary language
modelling on generic text rather than SFT on chat data. The text comes from one
of three sources (`recovery.heal.source` in the config):

- `{builtin_tasks: [...]}`: the project's own text tasks (layerprune.data.builtin); the
  default, `python_docs`, is the prose of the Python language reference.
- `{bigbench_tasks: [...]}`: from a local copy of the bigbench sdist (`bigbench.sdist`);
  `gem/wikilingua_en` is 1001 English WikiHow articles.
- `{path: file}`: a local `.txt` (documents separated by blank lines) or a
  `.jsonl` with a `text` field.
- `{hub: name, split: train, text_field: text, name: null}`: a dataset loaded
  with `datasets.load_dataset`; a local directory written by
  `Dataset.save_to_disk` is loaded with `load_from_disk` instead.

The output is a JSONL of `{"text": ..., "source": ...}` records, sampled with the seed.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from layerprune.data.builtin import BUILTIN_DIR
from layerprune.data.sources import load_bigbench_examples
from layerprune.io import read_jsonl, refuse_missing_local, write_jsonl


def _task_json_texts(task_dir: str | Path, tasks: list[str], field: str, kind: str) -> list[tuple[str, str]]:
    texts = []
    for task in tasks:
        for index, example in enumerate(load_bigbench_examples(task_dir, task)):
            value = example.get(field)
            if isinstance(value, list):
                value = value[0] if value else None
            if value is None:
                raise KeyError(f"recovery.heal.source.field: {kind} task '{task}' example {index} has no '{field}'")
            texts.append((str(value), f"{kind}:{task}#{index}"))
    return texts


def _file_texts(path: str | Path) -> list[tuple[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recovery.heal.source.path: {path} is not a file")
    if path.suffix == ".jsonl":
        rows = read_jsonl(path)
        if rows and "text" not in rows[0]:
            raise KeyError(f"recovery.heal.source.path: {path} records have no 'text' field")
        return [(row["text"], f"{path.name}#{i}") for i, row in enumerate(rows)]
    documents = [block.strip() for block in path.read_text().split("\n\n")]
    return [(doc, f"{path.name}#{i}") for i, doc in enumerate(documents) if doc]


def _hub_texts(hub: str, split: str, text_field: str, name: str | None) -> list[tuple[str, str]]:
    import datasets

    if Path(hub).is_dir():
        dataset = datasets.load_from_disk(hub)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[split]
    else:
        refuse_missing_local(hub, "recovery.heal.source.hub")
        dataset = datasets.load_dataset(hub, name, split=split)
    if text_field not in dataset.column_names:
        raise KeyError(
            f"recovery.heal.source.text_field: '{text_field}' is not a column of {hub} "
            f"(columns: {', '.join(dataset.column_names)})"
        )
    return [(text, f"{hub}:{split}#{i}") for i, text in enumerate(dataset[text_field])]


def prepare_heal_text(
    source: dict[str, Any],
    num_texts: int,
    seed: int,
    out_path: str | Path,
    bigbench_dir: str | Path = "resources/bigbench",
    min_chars: int = 1,
    builtin_dir: str | Path = BUILTIN_DIR,
) -> int:
    """Write `num_texts` plain-text records drawn (seeded) from `source`; return the count."""
    if "builtin_tasks" in source:
        texts = _task_json_texts(builtin_dir, source["builtin_tasks"], source.get("field", "input"), "builtin")
    elif "bigbench_tasks" in source:
        texts = _task_json_texts(bigbench_dir, source["bigbench_tasks"], source.get("field", "input"), "bigbench")
    elif "path" in source:
        texts = _file_texts(source["path"])
    elif "hub" in source:
        texts = _hub_texts(
            source["hub"], source.get("split", "train"), source.get("text_field", "text"), source.get("name")
        )
    else:
        raise ValueError(
            f"recovery.heal.source: needs builtin_tasks, bigbench_tasks, path or hub, got {sorted(source)}"
        )
    texts = [(text.strip(), origin) for text, origin in texts if text and len(text.strip()) >= min_chars]
    if num_texts > len(texts):
        raise ValueError(f"recovery.heal.num_texts={num_texts} exceeds the {len(texts)} texts in {source}")
    chosen = random.Random(seed).sample(texts, num_texts)
    return write_jsonl(out_path, ({"text": text, "source": origin} for text, origin in chosen))
