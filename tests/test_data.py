"""Offline data preparation (`layerprune.data.sources`) and atomic writes (`layerprune.io`).

A tiny synthetic BIG-bench sdist (same member layout as bigbench-1.0.0.tar.gz)
stands in for the real 358 MB one, which the package index no longer serves; the
download is tested against a package index on the loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bigbench_sdist import LoopbackIndex, make_sdist, sha256_of

from layerprune.data.sources import (
    BIGBENCH_SDIST,
    extract_bigbench_task,
    fetch_bigbench_sdist,
    prepare_calibration,
    prepare_prompt_set,
    prepare_task,
)
from layerprune.io import SourceUnavailable, atomic_path, read_json, read_jsonl, sha256_file

NUM_GEN, NUM_MC = 20, 12

# Generative task: "arith/add" (nested name, like `arithmetic/1_digit_addition`).
GEN_TASK = {
    "name": "add",
    "examples": [
        # Alternate string and list targets, with whitespace to strip.
        {
            "input": f"  What is {i} plus {i + 1}? ",
            "target": f" {2 * i + 1} " if i % 2 else [f"{2 * i + 1}", "x"],
        }
        for i in range(NUM_GEN)
    ],
}
# Multiple-choice task: the best choice is never the first key.
MC_TASK = {
    "name": "mc",
    "examples": [
        {
            "input": f"Pick colour {i}.",
            "target_scores": (
                {f"red{i}": 0, f"green{i}": 0, f"blue{i}": 1} if i % 2 else {f"red{i}": 0, f"green{i}": 1}
            ),
        }
        for i in range(NUM_MC)
    ],
}
TASKS = {"arith/add": GEN_TASK, "mc": MC_TASK}


def make_fake_sdist(path: Path) -> Path:
    return make_sdist(path, TASKS)


def _tmp_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    return make_fake_sdist(tmp_path_factory.mktemp("sdist") / BIGBENCH_SDIST)


@pytest.fixture(scope="module")
def bigbench_dir(tmp_path_factory, sdist) -> Path:
    root = tmp_path_factory.mktemp("bigbench")
    for task in TASKS:
        extract_bigbench_task(task, root / task / "task.json", sdist)
    return root


# --------------------------------------------------------------------------- extract


@pytest.mark.parametrize("task", sorted(TASKS))
def test_extract_bigbench_task_writes_exactly_that_json(tmp_path, sdist, task):
    out = tmp_path / "tasks" / task / "task.json"
    extract_bigbench_task(task, out, sdist)
    assert out.read_bytes() == json.dumps(TASKS[task], indent=1).encode()
    assert json.loads(out.read_text()) == TASKS[task]
    assert _tmp_leftovers(out.parent) == []


def test_extract_bigbench_task_missing_task_raises_and_writes_nothing(tmp_path, sdist):
    out = tmp_path / "missing" / "task.json"
    with pytest.raises(KeyError, match="no_such_task"):
        extract_bigbench_task("no_such_task", out, sdist)
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_extract_bigbench_task_does_not_match_a_prefix(tmp_path, sdist):
    # "arith" is a directory of the sdist but has no task.json of its own.
    with pytest.raises(KeyError, match="arith"):
        extract_bigbench_task("arith", tmp_path / "arith.json", sdist)
    assert not (tmp_path / "arith.json").exists()


# --------------------------------------------------------------------------- prepare_task


def _all_ids(payload: dict) -> list[int]:
    return [s["id"] for s in payload["fewshot"]] + [s["id"] for s in payload["samples"]]


def test_prepare_task_generative(tmp_path, bigbench_dir):
    out = tmp_path / "gen.json"
    payload = prepare_task(bigbench_dir, "arith/add", "generative", num_fewshot=3, limit=5, seed=7, out_path=out)
    assert read_json(out) == payload
    assert payload["source"] == "bigbench:arith/add"
    assert payload["type"] == "generative"
    assert (payload["num_fewshot"], payload["seed"]) == (3, 7)
    assert len(payload["fewshot"]) == 3 and len(payload["samples"]) == 5
    ids = _all_ids(payload)
    assert len(set(ids)) == len(ids), "few-shot examples and samples overlap"
    for record in payload["fewshot"] + payload["samples"]:
        i = record["id"]
        assert set(record) == {"id", "input", "targets"}
        assert record["input"] == f"What is {i} plus {i + 1}?"
        expected = [f"{2 * i + 1}"] if i % 2 else [f"{2 * i + 1}", "x"]
        assert record["targets"] == expected


def test_prepare_task_classification_label_is_best_choice(tmp_path, bigbench_dir):
    payload = prepare_task(bigbench_dir, "mc", "classification", 2, None, 0, tmp_path / "mc.json")
    assert len(payload["fewshot"]) == 2
    assert len(payload["samples"]) == NUM_MC - 2  # limit None: every remaining example
    assert sorted(_all_ids(payload)) == list(range(NUM_MC))
    for record in payload["fewshot"] + payload["samples"]:
        i = record["id"]
        scores = MC_TASK["examples"][i]["target_scores"]
        assert set(record) == {"id", "input", "choices", "label"}
        assert record["input"] == f"Pick colour {i}."
        assert record["choices"] == list(scores)
        assert record["choices"][record["label"]] == max(scores, key=scores.get)
        assert record["choices"][record["label"]] == (f"blue{i}" if i % 2 else f"green{i}")


def test_prepare_task_limit_larger_than_pool(tmp_path, bigbench_dir):
    payload = prepare_task(bigbench_dir, "mc", "classification", 0, 1000, 0, tmp_path / "mc.json")
    assert payload["fewshot"] == []
    assert len(payload["samples"]) == NUM_MC


def test_prepare_task_is_seeded(tmp_path, bigbench_dir):
    args = (bigbench_dir, "arith/add", "generative", 2, 10)
    prepare_task(*args, 1, tmp_path / "a.json")
    prepare_task(*args, 1, tmp_path / "b.json")
    prepare_task(*args, 2, tmp_path / "c.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert _all_ids(read_json(tmp_path / "a.json")) != _all_ids(read_json(tmp_path / "c.json"))


def test_prepare_task_no_samples_left(tmp_path, bigbench_dir):
    out = tmp_path / "mc.json"
    with pytest.raises(ValueError, match="no samples left"):
        prepare_task(bigbench_dir, "mc", "classification", NUM_MC, None, 0, out)
    assert not out.exists()


def test_prepare_task_generative_task_is_not_classification(tmp_path, bigbench_dir):
    with pytest.raises(ValueError, match="target_scores"):
        prepare_task(bigbench_dir, "arith/add", "classification", 0, None, 0, tmp_path / "x.json")


def test_prepare_task_unextracted_task(tmp_path, bigbench_dir):
    with pytest.raises(FileNotFoundError, match="nope"):
        prepare_task(bigbench_dir, "nope", "generative", 0, None, 0, tmp_path / "x.json")


# --------------------------------------------------------------------------- prompts and calibration


def _reference(task: str, index: int) -> tuple[str, str]:
    example = TASKS[task]["examples"][index]
    if task == "mc":
        scores = example["target_scores"]
        return example["input"].strip(), max(scores, key=scores.get)
    target = example["target"]
    return example["input"].strip(), (target[0] if isinstance(target, list) else target).strip()


def test_prepare_prompt_set_records(tmp_path, bigbench_dir):
    out = tmp_path / "prompts.jsonl"
    count = prepare_prompt_set(bigbench_dir, ["arith/add", "mc"], 15, 3, out)
    records = read_jsonl(out)
    assert count == len(records) == 15
    sources = [r["source"] for r in records]
    assert len(set(sources)) == 15
    for record in records:
        assert set(record) == {"prompt", "completion", "source"}
        task, index = record["source"].removeprefix("bigbench:").rsplit("#", 1)
        question, answer = _reference(task, int(index))
        assert record["prompt"] == [{"role": "user", "content": question}]
        assert record["completion"] == [{"role": "assistant", "content": answer}]
    assert {s.rsplit("#", 1)[0] for s in sources} <= {"bigbench:arith/add", "bigbench:mc"}


def test_prepare_prompt_set_system_prompt_leads_every_prompt(tmp_path, bigbench_dir):
    out = tmp_path / "prompts.jsonl"
    prepare_prompt_set(bigbench_dir, ["arith/add"], 5, 0, out, system_prompt="You are a helpful assistant.")
    for record in read_jsonl(out):
        system, user = record["prompt"]
        assert system == {"role": "system", "content": "You are a helpful assistant."}
        assert user["role"] == "user"


def test_prepare_prompt_set_is_seeded(tmp_path, bigbench_dir):
    tasks = ["arith/add", "mc"]
    prepare_prompt_set(bigbench_dir, tasks, NUM_GEN + NUM_MC, 0, tmp_path / "a.jsonl")
    prepare_prompt_set(bigbench_dir, tasks, NUM_GEN + NUM_MC, 0, tmp_path / "b.jsonl")
    prepare_prompt_set(bigbench_dir, tasks, NUM_GEN + NUM_MC, 1, tmp_path / "c.jsonl")
    a, c = read_jsonl(tmp_path / "a.jsonl"), read_jsonl(tmp_path / "c.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    # The whole pool both times, in a different order.
    assert sorted(r["source"] for r in a) == sorted(r["source"] for r in c)
    assert [r["source"] for r in a] != [r["source"] for r in c]


def test_prepare_prompt_set_too_many(tmp_path, bigbench_dir):
    out = tmp_path / "prompts.jsonl"
    with pytest.raises(ValueError, match="num_prompts"):
        prepare_prompt_set(bigbench_dir, ["arith/add", "mc"], NUM_GEN + NUM_MC + 1, 0, out)
    assert not out.exists()


def test_prepare_calibration(tmp_path, bigbench_dir):
    out = tmp_path / "calib.jsonl"
    count = prepare_calibration(bigbench_dir, ["arith/add", "mc"], 10, 0, out)
    records = read_jsonl(out)
    assert count == len(records) == 10
    pool = {" ".join(_reference(task, i)) for task in TASKS for i in range(len(TASKS[task]["examples"]))}
    for record in records:
        assert set(record) == {"text"}
        assert record["text"] in pool
    prepare_calibration(bigbench_dir, ["arith/add", "mc"], 10, 0, tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()


def test_prepare_calibration_too_many(tmp_path, bigbench_dir):
    out = tmp_path / "calib.jsonl"
    with pytest.raises(ValueError, match="num_samples"):
        prepare_calibration(bigbench_dir, ["mc"], NUM_MC + 1, 0, out)
    assert not out.exists()


# --------------------------------------------------------------------------- fetch
# Against a package index on the loopback (tests/bigbench_sdist.py): the real one no longer serves the sdist.


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "cache"
    directory.mkdir()
    monkeypatch.setenv("LAYERPRUNE_CACHE", str(directory))
    return directory


NO_INDEX = "http://127.0.0.1:9/simple/bigbench/"  # the discard port: a query fails at once


def test_fetch_bigbench_sdist_rejects_bad_cached_file(tmp_path, cache):
    bad = cache / BIGBENCH_SDIST
    bad.write_bytes(b"not the bigbench sdist")
    out = tmp_path / "out" / BIGBENCH_SDIST
    with pytest.raises(SourceUnavailable, match="sha256"):
        fetch_bigbench_sdist(out, index_url=NO_INDEX)
    assert not bad.exists(), "a file with the wrong hash must be removed from the cache"
    assert not out.exists()


def test_fetch_bigbench_sdist_reuses_verified_cache(tmp_path, cache, sdist):
    cached = cache / BIGBENCH_SDIST
    cached.write_bytes(sdist.read_bytes())
    out_dir = tmp_path / "resources"
    out = fetch_bigbench_sdist(out_dir / BIGBENCH_SDIST, sha256=sha256_file(cached), index_url=NO_INDEX)
    assert out == out_dir / BIGBENCH_SDIST
    assert out.read_bytes() == sdist.read_bytes()
    assert cached.is_file(), "the cache copy is kept for later runs"
    assert sorted(p.name for p in out_dir.iterdir()) == [BIGBENCH_SDIST], "no temporary files left"
    # The placed file is usable by the extract stage.
    extract_bigbench_task("mc", tmp_path / "mc.json", out)
    assert read_json(tmp_path / "mc.json") == MC_TASK


def test_fetch_bigbench_sdist_again_over_existing_output(tmp_path, cache, sdist):
    cached = cache / BIGBENCH_SDIST
    cached.write_bytes(sdist.read_bytes())
    out = tmp_path / "resources" / BIGBENCH_SDIST
    fetch_bigbench_sdist(out, sha256=sha256_file(cached), index_url=NO_INDEX)
    fetch_bigbench_sdist(out, sha256=sha256_file(cached), index_url=NO_INDEX)  # a re-run with the output in place
    assert out.read_bytes() == sdist.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == [BIGBENCH_SDIST], "no temporary files left"


def test_fetch_bigbench_sdist_links_without_sharing_mtime(tmp_path, cache, sdist):
    """Snakemake touches outputs after a job; that must not touch the shared cache file."""
    cached = cache / BIGBENCH_SDIST
    cached.write_bytes(sdist.read_bytes())
    os.utime(cached, (1_000_000, 1_000_000))
    out = fetch_bigbench_sdist(tmp_path / "out" / BIGBENCH_SDIST, sha256=sha256_file(cached), index_url=NO_INDEX)
    assert out.is_symlink() and os.path.samefile(out, cached)
    os.utime(out, (2_000_000, 2_000_000), follow_symlinks=False)  # what Snakemake's touch does
    assert cached.stat().st_mtime == 1_000_000
    assert sorted(p.name for p in out.parent.iterdir()) == [BIGBENCH_SDIST]


def test_fetch_bigbench_sdist_downloads_from_the_index_into_the_cache(tmp_path, cache, sdist):
    """With an empty cache the file comes from the index (a real HTTP server on the loopback) and is verified."""
    with LoopbackIndex(sdist).running() as index:
        out = fetch_bigbench_sdist(tmp_path / "out" / BIGBENCH_SDIST, sha256=sha256_of(sdist), index_url=index.url)
    assert index.requests == ["/simple/bigbench/", f"/files/{BIGBENCH_SDIST}"]
    assert (cache / BIGBENCH_SDIST).read_bytes() == sdist.read_bytes()
    assert out.read_bytes() == sdist.read_bytes()
    assert _tmp_leftovers(cache) == []


def test_fetch_bigbench_sdist_a_refusing_index_names_itself_and_the_ways_out(tmp_path, cache, sdist):
    """The real index's answer today: 403 on the version's page."""
    out = tmp_path / "out" / BIGBENCH_SDIST
    with LoopbackIndex(sdist, index_status=403).running() as index:
        with pytest.raises(SourceUnavailable) as caught:
            fetch_bigbench_sdist(out, sha256=sha256_of(sdist), index_url=index.url)
    error = caught.value
    assert error.source == index.url and error.status.startswith("HTTP 403")
    assert "bigbench.sdist" in error.way_out and "builtin" in error.way_out
    assert "\n" not in str(error)
    assert list(cache.iterdir()) == [] and not out.exists()


def test_fetch_bigbench_sdist_an_index_without_the_file(tmp_path, cache):
    with LoopbackIndex(None).running() as index:
        with pytest.raises(SourceUnavailable, match="is not listed"):
            fetch_bigbench_sdist(tmp_path / "out" / BIGBENCH_SDIST, index_url=index.url)


def test_fetch_bigbench_sdist_removes_a_download_with_the_wrong_sha256(tmp_path, cache, sdist):
    out = tmp_path / "out" / BIGBENCH_SDIST
    with LoopbackIndex(sdist).running() as index:
        with pytest.raises(SourceUnavailable, match="sha256"):
            fetch_bigbench_sdist(out, index_url=index.url)  # the real expected hash: the small sdist cannot match
    assert list(cache.iterdir()) == []
    assert not out.exists()


def test_fetch_bigbench_sdist_from_a_local_copy(tmp_path, cache, sdist):
    """`bigbench.sdist`: used where it is (no cache copy, no index), checked by sha256."""
    out = fetch_bigbench_sdist(
        tmp_path / "out" / BIGBENCH_SDIST, sdist=sdist, sha256=sha256_of(sdist), index_url=NO_INDEX
    )
    assert os.path.samefile(out, sdist) and list(cache.iterdir()) == []
    with pytest.raises(SourceUnavailable, match="sha256 .* is not the expected"):
        fetch_bigbench_sdist(tmp_path / "out2" / BIGBENCH_SDIST, sdist=sdist, index_url=NO_INDEX)
    with pytest.raises(SourceUnavailable, match="no such file"):
        fetch_bigbench_sdist(tmp_path / "out3" / BIGBENCH_SDIST, sdist=tmp_path / "missing.tar.gz")
    assert sdist.is_file(), "a local copy with another hash is the user's file: never removed"


def test_fetch_bigbench_command_prints_one_line_on_refusal(tmp_path, cache, sdist):
    """The CLI: no traceback, one line naming the source, its status and the ways out; exit status 3."""
    settings = json.dumps({"sdist": None, "sha256": sha256_of(sdist), "index_url": ""})
    with LoopbackIndex(sdist, index_status=403).running() as index:
        settings = settings.replace('"index_url": ""', f'"index_url": "{index.url}"')
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "layerprune",
                "fetch-bigbench",
                "--settings",
                settings,
                "--out",
                str(tmp_path / "x"),
            ],
            capture_output=True,
            text=True,
        )
    assert run.returncode == 3, run.stderr
    said = [line for line in run.stderr.splitlines() if "source unavailable" in line]
    assert len(said) == 1 and index.url in said[0] and "HTTP 403" in said[0] and "bigbench.sdist" in said[0]
    assert "Traceback" not in run.stderr and len(run.stderr.splitlines()) <= 5


# --------------------------------------------------------------------------- io.atomic_path


def test_atomic_path_file_exception_leaves_nothing(tmp_path):
    final = tmp_path / "sub" / "out.json"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(final) as tmp:
            assert tmp.parent == final.parent and tmp != final
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


def test_atomic_path_file_exception_keeps_existing_file(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(final) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt
    assert final.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_path_file_success_replaces(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with atomic_path(final) as tmp:
        tmp.write_text("new")
    assert final.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_path_directory_exception_leaves_nothing(tmp_path):
    final = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_path(final, directory=True) as tmp:
            assert tmp.is_dir()
            (tmp / "nested").mkdir()
            (tmp / "nested" / "weights.bin").write_bytes(b"\0" * 10)
            raise RuntimeError("interrupted")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_directory_exception_keeps_existing_directory(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(final, directory=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_atomic_path_directory_success_replaces_existing(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "stale.txt").write_text("stale")
    (final / "stale_dir").mkdir()
    with atomic_path(final, directory=True) as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in final.iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_atomic_path_removes_what_a_killed_attempt_left(tmp_path):
    """SIGKILL skips the cleanup; the job's re-run removes the stale temporaries."""
    (tmp_path / ".out.abc12345.tmp").mkdir()
    (tmp_path / ".out.abc12345.tmp" / "weights").write_text("half")
    (tmp_path / ".out.json.x1234567.tmp").write_text("{")
    (tmp_path / ".other.x1.tmp").write_text("not ours")
    with atomic_path(tmp_path / "out", directory=True) as tmp:
        (tmp / "weights").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.x1.tmp", ".out.json.x1234567.tmp", "out"]
