"""layerprune restore-mtimes: pulled outputs get the modification times their provenance records hold.

The records here are written the way Snakemake writes them (one JSON per output, named by the urlsafe
base64 of its path, split into '@' folders where that is longer than a file name may be); the whole
round trip through DVC and Snakemake is in tests/test_dvc.py.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from layerprune.cli import main
from layerprune.mtimes import record_paths, restore_mtimes


def record(root: Path, output: str, endtime: float | None, max_len: int = 255) -> None:
    """A Snakemake provenance record of `output` (persistence/file.py: _record_path)."""
    encoded = base64.urlsafe_b64encode(output.encode()).decode()
    chunks = [encoded[i : i + max_len - 1] for i in range(0, len(encoded), max_len - 1)]
    path = root / ".snakemake" / "metadata" / Path(*["@" + c for c in chunks[:-1]], chunks[-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rule": "r", "endtime": endtime, "incomplete": endtime is None}))


@pytest.fixture
def pulled(tmp_path):
    """A clone right after `dvc pull`: outputs as new as the download, directories without a timestamp."""
    (tmp_path / "results" / "model").mkdir(parents=True)
    (tmp_path / "results" / "model" / "weights.bin").write_bytes(b"w")
    (tmp_path / "results" / "prompts.jsonl").write_text("p\n")
    os.link(tmp_path / "results" / "prompts.jsonl", tmp_path / "results" / "filtered.jsonl")  # equal contents, one file
    (tmp_path / "results" / "scores.json").write_text("{}")
    target = tmp_path / "cache-file"
    target.write_text("sdist")
    (tmp_path / "results" / "sdist.tar.gz").symlink_to(target)
    long_name = "results/" + "/".join(["x" * 100] * 3) + ".json"  # its record's name is split into '@' folders
    (tmp_path / long_name).parent.mkdir(parents=True)
    (tmp_path / long_name).write_text("{}")
    record(tmp_path, "results/model", 1000.0)
    record(tmp_path, "results/prompts.jsonl", 900.0)
    record(tmp_path, "results/filtered.jsonl", 1100.0)
    record(tmp_path, "results/scores.json", 1200.0)
    record(tmp_path, "results/sdist.tar.gz", 800.0)
    record(tmp_path, long_name, 1300.0)
    record(tmp_path, "results/not-pulled.json", 1400.0)
    record(tmp_path, "results/killed.json", None)
    return tmp_path, long_name, target


def test_record_paths_decode_snakemake_names(pulled):
    root, long_name, _ = pulled
    records = record_paths(root / ".snakemake" / "metadata")
    assert long_name in records and records[long_name].parent.name.startswith("@")
    assert len(records) == 8


def test_outputs_get_their_recorded_times(pulled):
    root, long_name, target = pulled
    target_mtime = target.stat().st_mtime
    restored = restore_mtimes(root)
    # a directory through a fresh .snakemake_timestamp (what Snakemake reads), its files left alone
    stamp = root / "results" / "model" / ".snakemake_timestamp"
    assert stamp.stat().st_mtime == 1000.0
    assert (root / "results" / "model" / "weights.bin").stat().st_mtime != 1000.0
    assert (root / "results" / "scores.json").stat().st_mtime == 1200.0
    assert (root / long_name).stat().st_mtime == 1300.0
    # one inode for two outputs: the later time, so the one made later is not older than its inputs
    assert (root / "results" / "prompts.jsonl").stat().st_mtime == 1100.0
    # a link gets its own time; the file it points to (another checkout's cache) keeps its own
    assert os.lstat(root / "results" / "sdist.tar.gz").st_mtime == 800.0
    assert target.stat().st_mtime == target_mtime
    assert (restored.files, restored.directories) == (5, 1)
    assert restored.absent == ["results/not-pulled.json"] and restored.unfinished == ["results/killed.json"]


def test_command_says_what_it_did(pulled, monkeypatch, capsys):
    root, _, _ = pulled
    monkeypatch.chdir(root)
    assert main(["restore-mtimes"]) == 0
    said = capsys.readouterr().out
    assert "5 files and 1 directories" in said and "results/not-pulled.json" in said, said


def test_no_records_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"\.snakemake/metadata: no provenance records"):
        main(["restore-mtimes"])


def test_a_corrupt_record_is_named(pulled):
    root, _, _ = pulled
    broken = record_paths(root / ".snakemake" / "metadata")["results/scores.json"]
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=f"{broken.name}.*results/scores.json"):
        restore_mtimes(root)


def test_the_workflow_restores_only_what_dvc_placed(pulled):
    """restore_placed_mtimes (run by the workflow before it plans): links (what DVC's hardlink/symlink cache puts
    there) and directories get their recorded times; a file Snakemake wrote or one replaced by hand keeps its own."""
    from layerprune.mtimes import restore_placed_mtimes

    root, long_name, _ = pulled
    own = {path: (root / path).stat().st_mtime for path in ("results/scores.json", long_name)}
    restored = restore_placed_mtimes(root)
    assert (root / "results" / "model" / ".snakemake_timestamp").stat().st_mtime == 1000.0
    assert (root / "results" / "prompts.jsonl").stat().st_mtime == 1100.0  # one inode, two outputs: the later
    assert os.lstat(root / "results" / "sdist.tar.gz").st_mtime == 800.0
    assert {path: (root / path).stat().st_mtime for path in own} == own
    assert (restored.files, restored.directories) == (3, 1)


def test_nothing_to_restore_before_a_first_run(tmp_path):
    from layerprune.mtimes import restore_placed_mtimes

    assert restore_placed_mtimes(tmp_path) is None
