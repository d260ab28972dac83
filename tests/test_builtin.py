"""The tasks the project builds itself (layerprune.data.builtin): from installed packages, the same on every machine."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from layerprune.data.builtin import BUILTIN_TASKS, CONTINENTS, build_task, provenance
from layerprune.data.sources import prepare_prompt_set
from layerprune.evaluation.tasks import prepare_task_spec
from layerprune.io import read_jsonl, sha256_file

ARITHMETIC_PROBE = [
    "arithmetic/1_digit_addition",
    "arithmetic/1_digit_subtraction",
    "arithmetic/1_digit_multiplication",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every builtin task, built once into one folder (as the workflow's build_task jobs do)."""
    root = tmp_path_factory.mktemp("builtin")
    for name in BUILTIN_TASKS:
        build_task(name, root / name / "task.json")
    return root


def _examples(built, name):
    return json.loads((built / name / "task.json").read_text())["examples"]


def test_every_task_builds_items_and_names_its_sources(built):
    for name, task in BUILTIN_TASKS.items():
        document = json.loads((built / name / "task.json").read_text())
        assert document["examples"], name
        assert document["kind"] == task.kind
        record = document["provenance"]
        assert record["source"] == f"builtin:{name}" and record["licence"]
        if task.package:
            assert record["packages"][task.package] == __import__("importlib.metadata").metadata.version(task.package)
        for example in document["examples"]:
            assert example["input"].strip()
            if task.kind == "classification":
                assert sum(example["target_scores"].values()) == 1, example
            elif task.kind == "generative":
                assert isinstance(example["target"], str) and example["target"], example


def test_a_second_build_is_byte_identical(built, tmp_path):
    """Deterministic: the same package versions give the same file (in a fresh interpreter, too)."""
    for name in BUILTIN_TASKS:
        build_task(name, tmp_path / name / "task.json")
        assert sha256_file(tmp_path / name / "task.json") == sha256_file(built / name / "task.json"), name
    again = tmp_path / "again" / "task.json"
    code = f"from layerprune.data.builtin import build_task; build_task('word_unscrambling', {str(again)!r})"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert sha256_file(again) == sha256_file(built / "word_unscrambling" / "task.json")


def test_the_arithmetic_probe_is_every_one_digit_pair_with_the_right_answer(built):
    operations = {"addition": (" plus ", int.__add__), "subtraction": (" minus ", int.__sub__)}
    operations["multiplication"] = (" times ", int.__mul__)
    for name in ARITHMETIC_PROBE:
        word, apply = operations[name.rsplit("_", 1)[1]]
        examples = _examples(built, name)
        pairs = set()
        for example in examples:
            a, b = map(int, re.fullmatch(r"What is (\d)" + word + r"(\d)\?", example["input"]).groups())
            assert example["target"] == str(apply(a, b))
            pairs.add((a, b))
        assert pairs == {(a, b) for a in range(10) for b in range(10)}, name
    assert {"input": "What is 7 times 8?", "target": "56"} in _examples(built, "arithmetic/1_digit_multiplication")
    assert {"input": "What is 3 minus 7?", "target": "-4"} in _examples(built, "arithmetic/1_digit_subtraction")


def test_division_and_two_digit_arithmetic_are_exact(built):
    for example in _examples(built, "arithmetic/1_digit_division"):
        a, b = map(int, re.fullmatch(r"What is (\d+) divided by (\d)\?", example["input"]).groups())
        assert b * int(example["target"]) == a
    for operation, apply in (("addition", int.__add__), ("subtraction", int.__sub__)):
        examples = _examples(built, f"arithmetic/2_digit_{operation}")
        assert len(examples) == 200 == len({e["input"] for e in examples})
        for example in examples:
            a, b = map(int, re.findall(r"\d+", example["input"]))
            assert 10 <= a <= 99 and 10 <= b <= 99 and example["target"] == str(apply(a, b))


def test_country_tasks_hold_known_facts(built):
    capitals = {e["input"]: e["target"] for e in _examples(built, "country_capital")}
    assert capitals["What is the capital of France?"] == "Paris"
    assert capitals["What is the capital of Japan?"] == "Tokyo"
    continents = {
        e["input"]: max(e["target_scores"], key=e["target_scores"].get) for e in _examples(built, "country_continent")
    }
    assert continents["On which continent is Brazil?"] == "South America"
    assert continents["On which continent is Mexico?"] == "North America"
    assert continents["On which continent is Kenya?"] == "Africa"
    assert set(continents.values()) == set(CONTINENTS)


def test_word_tasks_hold_known_words(built):
    valence = {e["input"]: e["target_scores"]["positive"] for e in _examples(built, "word_sentiment")}
    assert valence['Is the word "wonderful" positive or negative?'] == 1
    assert valence['Is the word "terrible" positive or negative?'] == 0
    plurals = {e["input"]: e["target"] for e in _examples(built, "plural")}
    assert len(plurals) >= 300
    assert any(target != re.sub(r"^What is the plural of \"(.*)\"\?$", r"\1", q) + "s" for q, target in plurals.items())
    past = {e["input"]: e["target"] for e in _examples(built, "past_tense")}
    assert len(past) >= 100


def test_python_docs_is_prose(built):
    texts = [e["input"] for e in _examples(built, "python_docs")]
    assert len(texts) >= 128  # the default's calibration draws 32, the declared default 128
    for text in texts:
        assert len(text) >= 200 and text.endswith(".") and ">>>" not in text and "\n" not in text
    assert provenance("python_docs")["python"] == sys.version.split()[0]


def test_unknown_task_is_named(tmp_path):
    with pytest.raises(KeyError, match="unknown builtin task 'capitals'.*country_capital"):
        build_task("capitals", tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_the_default_prompt_set_is_disjoint_from_every_evaluated_task(built, tmp_path):
    """The SGR prompt set shares no question with any task the default evaluates (config.yaml)."""
    import yaml

    config = yaml.safe_load(open("config.yaml"))
    prompts = config["prompts"]
    assert prompts["source"] == "builtin"
    count = prepare_prompt_set(
        None, None, prompts["num_prompts"], 0, tmp_path / "prompts.jsonl", source="builtin",
        builtin_tasks=prompts["builtin_tasks"], builtin_dir=built,
    )  # fmt: skip
    asked = {record["prompt"][-1]["content"] for record in read_jsonl(tmp_path / "prompts.jsonl")}
    assert len(asked) == count == prompts["num_prompts"]
    evaluated = set()
    for name, spec in config["tasks"].items():
        payload = prepare_task_spec(spec, tmp_path / "no-bigbench", 0, tmp_path / f"{name}.json", builtin_dir=built)
        assert payload["provenance"] and all(p["source"].startswith("builtin:") for p in payload["provenance"])
        evaluated |= {sample["input"] for sample in payload["samples"]}
        evaluated |= {shot["input"] for shot in payload["fewshot"]}
    assert evaluated and not asked & evaluated
    # and no evaluated task's source is one the prompt set draws from
    sources = {name for spec in config["tasks"].values() for name in _names(spec["builtin_task"])}
    assert not sources & set(prompts["builtin_tasks"])


def _names(value):
    return [value] if isinstance(value, str) else list(value)
