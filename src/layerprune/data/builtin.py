"""Task data the project builds itself, from packages the package index serves.

The embedded default once read every task from BIG-bench's 358 MB sdist, which the
index no longer serves (a refusal is final). Each task here is built from a pinned
package that `scripts/install.sh` installs (or from Python itself), deterministically:
the same package versions give the same items, byte for byte, on every machine. The
output is a task JSON in BIG-bench's own format (`examples` of `input` with `target`
or `target_scores`), so everything downstream reads both alike, plus a `provenance`
block (package, version, licence, the generator's version) that the prepared task and
every eval JSON carry.

Sources (licences: docs/data.md):
- countryinfo: countries, their capitals and regions (curated by people);
- vaderSentiment: VADER's lexicon, each word's valence as rated by ten people;
- wordfreq + lemminflect: frequent English words and their inflections;
- the project itself: the arithmetic probe, generated as BIG-bench generated its own;
- pydoc_data (Python's standard library): the documentation's prose paragraphs.

Plain data and the standard library at import; each builder imports its package.
"""

from __future__ import annotations

import importlib.metadata
import json
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerprune.io import atomic_path

# Where the workflow builds them (rule build_task) and the stages read them: under results/, so DVC
# versions them with what is made from them.
BUILTIN_DIR = "results/shared/builtin"
# Bump when a builder's output changes for the same package versions: it is part of
# every built task's provenance, so Snakemake (params) and the fingerprints see it.
GENERATOR_VERSION = 1
# Fixed, not the study's seed: the item set is part of the task's definition; the
# study's seed only draws few-shot examples and samples from it (tasks.py).
ITEM_SEED = 20260206


@dataclass(frozen=True)
class BuiltinTask:
    """One task the project builds: what it is, the package it comes from, its builder."""

    description: str
    kind: str  # classification | generative | text (prose: calibration and heal text)
    package: str | None  # distribution name (None: generated, or Python's own pydoc_data)
    licence: str
    build: Callable[[], list[dict[str, Any]]]


# --- countries (countryinfo) --------------------------------------------------------------------

CONTINENTS = ("Africa", "Asia", "Europe", "North America", "South America", "Oceania")
_AMERICAS_CONTINENT = {
    "South America": "South America",
    "Northern America": "North America",
    "Central America": "North America",
    "Caribbean": "North America",
}
# Well-known countries: people (and small models) have heard of them.
_MIN_POPULATION = 5_000_000


def _countries() -> list[dict[str, Any]]:
    from countryinfo import all_countries

    rows = []
    for country in all_countries():
        info = country.info()
        name, capital = info.get("name"), info.get("capital")
        if not name or not capital or (info.get("population") or 0) < _MIN_POPULATION:
            continue
        region = info.get("region") or ""
        # the UN geoscheme splits the Americas below the subregion ("Latin America and the Caribbean")
        americas = info.get("intermediateregion") or info.get("subregion") or ""
        continent = _AMERICAS_CONTINENT.get(americas, "") if region == "Americas" else region
        rows.append({"name": name, "capital": capital, "continent": continent})
    return sorted(rows, key=lambda row: row["name"])


def _country_capital() -> list[dict[str, Any]]:
    return [{"input": f"What is the capital of {c['name']}?", "target": c["capital"]} for c in _countries()]


def _country_capital_choice() -> list[dict[str, Any]]:
    """The capital among four: three other countries' capitals, drawn per country with ITEM_SEED."""
    countries = _countries()
    capitals = sorted({c["capital"] for c in countries})
    examples = []
    for country in countries:
        others = [capital for capital in capitals if capital != country["capital"]]
        choices = sorted([country["capital"], *random.Random(f"{ITEM_SEED}/{country['name']}").sample(others, 3)])
        examples.append(
            {
                "input": f"What is the capital of {country['name']}?",
                "target_scores": {choice: int(choice == country["capital"]) for choice in choices},
            }
        )
    return examples


def _country_continent() -> list[dict[str, Any]]:
    return [
        {
            "input": f"On which continent is {c['name']}?",
            "target_scores": {continent: int(continent == c["continent"]) for continent in CONTINENTS},
        }
        for c in _countries()
        if c["continent"] in CONTINENTS
    ]


# --- word valence (vaderSentiment's lexicon) ----------------------------------------------------

# Words the ten raters agreed were clearly positive or negative (VADER's scale: -4 .. 4), and common
# enough in English (wordfreq's Zipf scale: 3 = once per million words).
_MIN_VALENCE, _MAX_RATER_SD, _MIN_ZIPF = 2.0, 1.0, 3.0


def _word_sentiment() -> list[dict[str, Any]]:
    import vaderSentiment
    from wordfreq import zipf_frequency

    lexicon = Path(vaderSentiment.__file__).with_name("vader_lexicon.txt")
    examples = []
    for line in lexicon.read_text(encoding="utf-8").splitlines():
        word, mean, sd = line.split("\t")[:3]
        mean, sd = float(mean), float(sd)
        if not re.fullmatch(r"[a-z]{3,}", word) or abs(mean) < _MIN_VALENCE or sd > _MAX_RATER_SD:
            continue
        if zipf_frequency(word, "en") < _MIN_ZIPF:
            continue  # slang and abbreviations ("aas") a reader would not know
        positive = mean > 0
        examples.append(
            {
                "input": f'Is the word "{word}" positive or negative?',
                "target_scores": {"positive": int(positive), "negative": int(not positive)},
            }
        )
    return examples


# --- English inflections (wordfreq + lemminflect) -----------------------------------------------

_FREQUENT_WORDS = 5000


def _frequent_words() -> list[str]:
    from wordfreq import top_n_list

    return [word for word in top_n_list("en", _FREQUENT_WORDS) if re.fullmatch(r"[a-z]{3,}", word)]


def _inflected(upos: str, tag: str) -> list[tuple[str, str]]:
    """(lemma, inflection) for frequent words of one part of speech only ("house", not "one" or "run"),
    that are their own lemma and inflect to another word."""
    from lemminflect import getAllInflections, getInflection, getLemma

    others = {"NOUN", "VERB", "ADJ"} - {upos}
    pairs = []
    for word in _frequent_words():
        if word not in getLemma(word, upos=upos, lemmatize_oov=False):
            continue
        if any(getAllInflections(word, upos=other) for other in others):
            continue
        forms = getInflection(word, tag=tag, inflect_oov=False)
        if forms and forms[0] != word and re.fullmatch(r"[a-z]+", forms[0]):
            pairs.append((word, forms[0]))
    return pairs


def _plural() -> list[dict[str, Any]]:
    return [{"input": f'What is the plural of "{w}"?', "target": p} for w, p in _inflected("NOUN", "NNS")]


def _past_tense() -> list[dict[str, Any]]:
    return [{"input": f'What is the past tense of "{w}"?', "target": p} for w, p in _inflected("VERB", "VBD")]


def _word_unscrambling() -> list[dict[str, Any]]:
    rng = random.Random(ITEM_SEED)
    examples = []
    for word in _frequent_words():
        if not 5 <= len(word) <= 8 or len(set(word)) < 3:
            continue
        letters = list(word)
        while "".join(letters) == word:
            rng.shuffle(letters)
        examples.append({"input": f"Unscramble the letters into an English word: {''.join(letters)}", "target": word})
    return examples


# --- arithmetic (generated, as BIG-bench's own arithmetic tasks were) ---------------------------

_OPERATIONS: dict[str, tuple[str, Callable[[int, int], int]]] = {
    "addition": ("plus", lambda a, b: a + b),
    "subtraction": ("minus", lambda a, b: a - b),
    "multiplication": ("times", lambda a, b: a * b),
}


def _arithmetic(digits: int, operation: str, pairs: int | None = None) -> Callable[[], list[dict[str, Any]]]:
    """`digits`-digit operands: every pair for one digit (100), else `pairs` drawn with ITEM_SEED."""

    def build() -> list[dict[str, Any]]:
        low, high = (0, 9) if digits == 1 else (10 ** (digits - 1), 10**digits - 1)
        if operation == "division":  # exact quotients only: a = b * q
            operands = [(b * q, b) for b in range(max(low, 1), high + 1) for q in range(low, high + 1)]
        elif pairs is None:
            operands = [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)]
        else:  # distinct pairs, drawn without listing all (10^10 of them at five digits)
            rng, drawn = random.Random(f"{ITEM_SEED}/{digits}/{operation}"), {}
            while len(drawn) < pairs:
                pair = (rng.randint(low, high), rng.randint(low, high))
                drawn.setdefault(pair, None)
            operands = list(drawn)
        word, apply = _OPERATIONS.get(operation, ("divided by", lambda a, b: a // b))
        return [{"input": f"What is {a} {word} {b}?", "target": str(apply(a, b))} for a, b in operands]

    return build


# --- prose (Python's own documentation) ---------------------------------------------------------


def _python_docs() -> list[dict[str, Any]]:
    """The prose paragraphs of pydoc_data's topics (the language reference): no code, no tables."""
    from pydoc_data.topics import topics

    examples = []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            lines = block.split("\n")
            if any(line.startswith((" ", "\t", ">>>")) for line in lines):
                continue  # code examples and grammar rules are indented
            text = " ".join(line.strip() for line in lines).strip()
            letters = sum(ch.isalpha() or ch == " " for ch in text)
            if len(text) >= 200 and text.endswith(".") and letters >= 0.85 * len(text):
                examples.append({"input": text})
    return examples


BUILTIN_TASKS: dict[str, BuiltinTask] = {
    "country_capital": BuiltinTask(
        "the capital of a country of at least 5 million people", "generative", "countryinfo", "MIT", _country_capital
    ),
    "country_capital_choice": BuiltinTask(
        "the capital of a country of at least 5 million people among four (three other countries' capitals)",
        "classification",
        "countryinfo",
        "MIT",
        _country_capital_choice,
    ),
    "country_continent": BuiltinTask(
        "the continent of a country of at least 5 million people (6 choices)",
        "classification",
        "countryinfo",
        "MIT",
        _country_continent,
    ),
    "word_sentiment": BuiltinTask(
        "positive or negative: VADER lexicon words whose 10 human ratings agree (|mean| >= 2, sd <= 1)",
        "classification",
        "vaderSentiment",
        "MIT",
        _word_sentiment,
    ),
    "plural": BuiltinTask(
        "the plural of a frequent English noun", "generative", "lemminflect", "MIT; word list CC-BY-SA 4.0", _plural
    ),
    "past_tense": BuiltinTask(
        "the past tense of a frequent English verb",
        "generative",
        "lemminflect",
        "MIT; word list CC-BY-SA 4.0",
        _past_tense,
    ),
    "word_unscrambling": BuiltinTask(
        "a frequent English word from its shuffled letters",
        "generative",
        "wordfreq",
        "Apache-2.0; word list CC-BY-SA 4.0",
        _word_unscrambling,
    ),
    "python_docs": BuiltinTask(
        "prose paragraphs of the Python language reference (pydoc_data)", "text", None, "PSF-2.0", _python_docs
    ),
}
for _operation in ("addition", "subtraction", "multiplication", "division"):
    BUILTIN_TASKS[f"arithmetic/1_digit_{_operation}"] = BuiltinTask(
        f"1-digit {_operation}, every operand pair", "generative", None, "generated", _arithmetic(1, _operation)
    )
# Multi-digit: the paper's diagnostic by digit count (as BIG-bench's arithmetic/<n>_digit_* tasks).
for _digits in (2, 3, 4, 5):
    for _operation in ("addition", "subtraction", "multiplication"):
        BUILTIN_TASKS[f"arithmetic/{_digits}_digit_{_operation}"] = BuiltinTask(
            f"{_digits}-digit {_operation}, 200 operand pairs drawn with a fixed seed",
            "generative",
            None,
            "generated",
            _arithmetic(_digits, _operation, 200),
        )

# The distributions each builder reads, beside the one named (their versions are provenance too).
_ALSO_READS = {"plural": ("wordfreq",), "past_tense": ("wordfreq",), "word_sentiment": ("wordfreq",)}


def provenance(name: str) -> dict[str, Any]:
    """Where a built task comes from: generator version, package versions, licence."""
    task = BUILTIN_TASKS[name]
    packages = [task.package] if task.package else []
    packages += _ALSO_READS.get(name, ())
    record: dict[str, Any] = {
        "source": f"builtin:{name}",
        # the generator's name as first recorded (its module is layerprune.data.builtin since the folders)
        "generator": f"layerprune.builtin v{GENERATOR_VERSION}",
        "licence": task.licence,
        "packages": {package: importlib.metadata.version(package) for package in packages},
    }
    if name == "python_docs":
        record["python"] = sys.version.split()[0]  # pydoc_data is Python's own: its text follows the version
    return record


def build_task(name: str, out_path: str | Path) -> dict[str, Any]:
    """Write builtin task `name` as a BIG-bench-format task JSON with its provenance."""
    if name not in BUILTIN_TASKS:
        raise KeyError(f"unknown builtin task '{name}' (choose from {', '.join(BUILTIN_TASKS)})")
    task = BUILTIN_TASKS[name]
    examples = task.build()
    if not examples:
        raise ValueError(f"builtin task '{name}' built no examples from {task.package}")
    payload = {
        "name": name,
        "description": task.description,
        "kind": task.kind,
        "provenance": provenance(name),
        "examples": examples,
    }
    with atomic_path(out_path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return payload
