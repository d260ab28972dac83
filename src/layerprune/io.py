"""Shared plumbing: atomic writes, JSON/JSONL, hashing and seeding.

Every artifact is written to a temporary sibling and renamed into place, so an
interrupted job never leaves a file or directory that looks complete. Temporaries
get the permissions the umask gives a plain `open`, so colleagues on a shared
filesystem can read the results. Readers name the file (and line) that is corrupt
or cut short, and check it against what its writer recorded where it recorded it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` on success.

    On an exception the temporary path is removed and `final` is left untouched.
    Temporaries left beside `final` by a killed earlier attempt are removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # A job killed hard (SIGKILL, node failure) leaves its temporary behind; the re-run
    # of that job (one job per output, so nobody else writes here) removes it.
    for stale in final.parent.glob(f".{glob.escape(final.name)}.????????.tmp"):  # tempfile: 8 random chars
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        # mkstemp/mkdtemp create 0600/0700 (private, as a temporary in a shared /tmp must be),
        # and so do libraries that write through their own temporaries (transformers' safetensors
        # shards); here the temporary becomes the result, so give it what open()/mkdir() would.
        apply_umask(tmp)
        if directory and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if tmp.exists():
            # Renaming a hard link onto another link of the same file is a no-op
            # that leaves the source name behind.
            tmp.unlink()
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def apply_umask(path: str | os.PathLike) -> None:
    """Set `path` (and all under it) to the modes a plain open()/mkdir() gives under the umask.

    Executable files keep their execute bits (as far as the umask allows); links are left alone.
    """
    mask = current_umask()
    path = Path(path)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if item.is_symlink():
            continue
        executable = item.is_dir() or item.stat().st_mode & 0o111
        os.chmod(item, (0o777 if executable else 0o666) & ~mask)


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (/proc), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class CorruptFileError(ValueError):
    """A file that is cut short, malformed or disagrees with what its writer recorded; the message names it."""


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a truncated or corrupt one is a CorruptFileError naming it."""
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        cut = " (it ends mid-document: cut short?)" if error.pos >= len(text.rstrip()) else ""
        raise CorruptFileError(f"{path}: not valid JSON{cut}: {error}") from None


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSONL file; a line that does not parse is a CorruptFileError naming file and line."""
    records = []
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                cut = " (the last line has no newline: the file was cut mid-line)" if not line.endswith("\n") else ""
                raise CorruptFileError(f"{path}: line {number} is not valid JSON{cut}: {error}") from None
    return records


def stats_path_of(path: str | os.PathLike) -> Path:
    """`<dir>/<stem>.stats.json`: where the writers of a JSONL data set (selfgen, filter-prompts) record its counts."""
    path = Path(path)
    return path.with_name(path.stem + ".stats.json")


def read_jsonl_checked(path: str | os.PathLike) -> list[dict]:
    """`read_jsonl`, checked against the record count (`kept`) its writer put in `stats_path_of(path)`, if any.

    A data set cut at a line boundary parses, so only the writer's count shows it is short.
    """
    records = read_jsonl(path)
    stats_file = stats_path_of(path)
    if stats_file.is_file():
        stats = read_json(stats_file)
        if isinstance(stats, dict) and isinstance(stats.get("kept"), int) and stats["kept"] != len(records):
            raise CorruptFileError(
                f"{path}: has {len(records)} records, but {stats_file} records {stats['kept']} written: "
                "the file was cut short or changed since; re-run the job that writes it"
            )
    return records


class SourceUnavailable(RuntimeError):
    """An external source (a package index, a download, the Hub, a model wheel, a local copy) that
    cannot be had: its name, what happened, and the way out, as one line the console shows
    (layerprune.cli prints it without a traceback)."""

    def __init__(self, source: str, status: str, way_out: str) -> None:
        self.source, self.status, self.way_out = source, status, way_out
        super().__init__(f"{source}: {status}. Way out: {way_out}")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_cache_dir() -> Path:
    root = os.environ.get("LAYERPRUNE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(root) / "layerprune" / "sha256"


def cached_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (real path, device, inode, size, mtime in ns).

    Hashing 16 GB of 8B weights takes about a minute; every job that resumes needs the
    identity of its model, so it is computed once per version of a file. Every writer here
    renames a new file into place (new inode and mtime), and a rewrite in place changes the
    mtime, so a changed file never matches a remembered key. A cache that cannot be
    written (read-only home) only costs the re-hash.
    """
    path = Path(path)
    info = path.stat()
    key = f"{path.resolve()}|{info.st_dev}|{info.st_ino}|{info.st_size}|{info.st_mtime_ns}"
    entry = _hash_cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()}.json"
    with contextlib.suppress(OSError, ValueError):
        remembered = json.loads(entry.read_text())
        if remembered.get("key") == key:
            return remembered["sha256"]
    digest = sha256_file(path)
    with contextlib.suppress(OSError):
        write_json(entry, {"key": key, "sha256": digest})
    return digest


def content_fingerprint(directory: str | os.PathLike) -> dict[str, str]:
    """name -> sha256 of every file at the top of a checkpoint directory: what a model *is*, not where.

    This takes in the weights (safetensors, hashed in full once and then remembered, see
    `cached_sha256`), the config and tokenizer, and the source record the pipeline wrote
    (source.json, pruning.json, recovery.json). Resume fingerprints use it so that a model
    replaced at the same path is never mixed with the one a partial result came from.
    """
    directory = Path(directory)
    return {
        path.name: cached_sha256(path)
        for path in sorted(directory.iterdir())
        if path.is_file() and not path.name.startswith(".")
    }


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a safetensors file's framing (None if nothing): cut short, bad header, trailing bytes.

    Reads the 8-byte header length and the JSON header only: the data must end exactly
    where the header's last tensor ends.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        header_length = int.from_bytes(prefix, "little")
        if header_length > size - 8:
            return f"its header claims {header_length} bytes but the file has {size}: cut short"
        try:
            header = json.loads(handle.read(header_length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return f"its header is not valid JSON ({error})"
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    expected = 8 + header_length + max(ends, default=0)
    if size != expected:
        return f"{size} bytes, but its header describes {expected}" + (": cut short" if size < expected else "")
    return None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def tokenizer_problem(directory: str | os.PathLike) -> str | None:
    """Why the checkpoint in `directory` has no tokenizer; None when it has one.

    tokenizer_config.json alone builds none (transformers then says "Couldn't instantiate the backend
    tokenizer"): a fast tokenizer needs tokenizer.json, a slow one its vocabulary file."""
    if any((Path(directory) / name).is_file() for name in TOKENIZER_FILES):
        return None
    return f"tokenizer.json is missing (nor is there {', '.join(TOKENIZER_FILES[1:])}): the checkpoint has no tokenizer"


def check_checkpoint_files(directory: str | os.PathLike) -> None:
    """Fail with a CorruptFileError naming the file when a checkpoint directory is incomplete or cut short.

    Needs config.json, a tokenizer, and the weights: model.safetensors, or an index whose
    every shard is present; every safetensors file must be whole (`safetensors_problem`).
    """
    directory = Path(directory)
    problems = []
    if not (directory / "config.json").is_file():
        problems.append("config.json is missing")
    problems += [problem] if (problem := tokenizer_problem(directory)) else []
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        problems += [
            f"{shard} (listed in {index.name}) is missing" for shard in shards if not (directory / shard).is_file()
        ]
    elif not any((directory / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        problems.append("the weights (model.safetensors or model.safetensors.index.json) are missing")
    for weights in sorted(directory.glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            problems.append(f"{weights.name}: {problem}")
    if problems:
        raise CorruptFileError(f"{directory}: incomplete or corrupt checkpoint: {'; '.join(problems)}")


def check_gguf_complete(path: str | os.PathLike) -> None:
    """Fail with a CorruptFileError naming a GGUF file that does not parse or is shorter than its tensors need."""
    from gguf import GGUFReader

    path = Path(path)
    size = path.stat().st_size
    try:
        reader = GGUFReader(path)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as error:  # the reader fails in many ways on a cut file (struct, reshape, index errors)
        raise CorruptFileError(
            f"{path}: not a readable GGUF file, cut short or corrupt ({type(error).__name__}: {error})"
        ) from None
    if end > size:
        raise CorruptFileError(f"{path}: {size} bytes, but its tensors need {end}: the GGUF is cut short")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a job is a function of its config."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# What a path on disk looks like, as opposed to a Hugging Face hub id (`org/name`): a hub id has at most one
# slash and no data-file suffix, so `mydata/calib.jsonl` is a local file that is missing, never a hub dataset.
LOCAL_DATA_SUFFIXES = (".json", ".jsonl", ".gz", ".txt", ".csv", ".parquet", ".arrow", ".tsv")


def looks_local(path: str) -> bool:
    """True when `path` names a local file or folder (it exists, is absolute or relative with ./ ../ ~, ends in a
    data-file suffix, or is a plain path of more than two parts), so that it must never be looked up on the hub."""
    text = str(path)
    return (
        os.path.exists(text)
        or text.startswith(("/", "./", "../", "~"))
        or text.lower().endswith(LOCAL_DATA_SUFFIXES)
        or (text.count("/") > 1 and not any(char.isspace() for char in text))
    )


def refuse_missing_local(path: str, key: str) -> None:
    """FileNotFoundError naming `key` when `path` looks local and is not there (instead of asking the hub)."""
    if looks_local(path) and not os.path.exists(os.path.expanduser(str(path))):
        raise FileNotFoundError(f"{key}: {path}: no such file (a local path, so not looked up on the hub)")
