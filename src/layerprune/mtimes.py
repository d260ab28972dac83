"""Give pulled outputs the modification times they had where they were made.

DVC keeps contents, not modification times: after `dvc pull` every output is as new as its
download, in no particular order, and a directory output has no `.snakemake_timestamp` (an
empty file that `.dvcignore` leaves out, or a hardlinked cache would make one inode of them
all). Snakemake then takes a directory's own mtime, which changes whenever DVC replaces a
file in it (as `dvc repro` does to every linked output before it runs the stage), and re-runs
whatever lies downstream of such a directory. `snakemake --touch` does not help: it touches
only the jobs it finds out of date, so the directories it judged up to date keep no timestamp.

Snakemake's provenance records (.snakemake/metadata, versioned by git beside dvc.lock) hold,
for every output, its mtime when its job finished (`endtime`). Setting each output's mtime
back to it, and a directory's through a fresh `.snakemake_timestamp`, makes the clone exactly
as up to date as the original checkout, for every study at once and without running or
re-recording anything: a changed setting then plans in the clone the jobs it plans there.

The workflow does this itself before it plans (`restore_placed_mtimes`, from workflow/rules/common.smk), for
the outputs DVC placed: a file that is a link (DVC's cache is `hardlink,symlink`: every file that `dvc repro`,
`dvc pull` or `dvc checkout` put there is one) and every directory output. A file Snakemake wrote and DVC has
not linked yet, or one replaced by hand, keeps its own time. Measured on a real DVC round trip
(tests/test_dvc.py): after `dvc repro` of two studies that share byte-identical files, and in a clone after a
change re-made a file identical to an older cached one, Snakemake without the restore planned jobs again
("updated input files": an output linked to an older inode than the directory it was made from); with it, none.
The other way, a comparison not resting on mtimes (`--rerun-triggers` without `mtime`), would miss a local data
file edited by hand: nothing records its content.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

TIMESTAMP = ".snakemake_timestamp"  # Snakemake's mtime carrier inside a directory output
# A record's `endtime` is a float of seconds (about 0.2 us apart at today's epoch): a time this close to it is
# the one the record holds, and is left as it is. Setting it again would move it by a few nanoseconds and
# touch every output of every study each time the workflow plans (a study that is up to date must stay
# untouched: tests/test_studies.py).
SAME_TIME_S = 1e-4


def _set_time(path: Path, endtime: float, follow_symlinks: bool = True) -> None:
    """`os.utime` to `endtime`, unless the path has that time already."""
    if abs(os.stat(path, follow_symlinks=follow_symlinks).st_mtime - endtime) < SAME_TIME_S:
        return
    os.utime(path, (endtime, endtime), follow_symlinks=follow_symlinks)


@dataclass
class Restored:
    """What `restore_mtimes` did: outputs given their recorded time, and records it left alone."""

    files: int = 0
    directories: int = 0
    absent: list[str] = field(default_factory=list)  # recorded, not here (not pulled)
    unfinished: list[str] = field(default_factory=list)  # a record without an end time (an incomplete job)

    def line(self) -> str:
        text = (
            f"layerprune restore-mtimes: {self.files} files and {self.directories} directories"
            " given the modification time their provenance record holds"
        )
        if self.absent:
            text += f"; {len(self.absent)} recorded outputs are not here (not pulled), e.g. {self.absent[0]}"
        if self.unfinished:
            text += f"; {len(self.unfinished)} records without an end time left alone, e.g. {self.unfinished[0]}"
        return text


def record_paths(metadata: Path) -> dict[str, Path]:
    """Output path -> its record file. Snakemake names a record by the urlsafe base64 of the output's
    path, split into '@'-prefixed folders where it is longer than a file name may be."""
    records = {}
    for record in metadata.rglob("*"):
        if not record.is_file() or record.name.startswith("@"):
            continue
        parts = record.relative_to(metadata).parts
        if any(not part.startswith("@") for part in parts[:-1]):
            continue  # not a record (Snakemake keeps nothing else there, but a stray file must not break this)
        encoded = "".join(part.removeprefix("@") for part in parts[:-1]) + parts[-1]
        try:
            records[base64.urlsafe_b64decode(encoded).decode()] = record
        except (ValueError, UnicodeDecodeError):
            continue
    return records


def restore_mtimes(
    root: str | os.PathLike = ".", metadata: str | os.PathLike = ".snakemake/metadata", placed_only: bool = False
) -> Restored:
    """Set every recorded output under `root` to the mtime its record holds (see the module's doc).

    A symlink gets its own mtime set, never its target's (a link into a user cache, which other
    checkouts share). A file that several outputs share (DVC hardlinks equal contents to one cache
    file) gets the latest of their times: newer than some of their records, which Snakemake forgives
    a file input (up to the workflow profile's `max-checksum-file-size` it compares the content with
    the record before calling it newer), while an output older than a directory it was made from
    would re-run its job.

    placed_only: only the outputs DVC placed (see `restore_placed_mtimes`); other files keep their time.
    """
    root = Path(root)
    metadata = root / metadata
    if not metadata.is_dir():
        raise FileNotFoundError(
            f"{metadata}: no provenance records; run this in the repository root, after `git clone` and `dvc pull`"
        )
    restored = Restored()
    files: dict[tuple[int, int], tuple[float, list[Path]]] = {}  # inode -> the latest time of its paths, its paths
    for output, record in sorted(record_paths(metadata).items()):
        try:
            endtime = json.loads(record.read_text()).get("endtime")
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{record}: not a Snakemake provenance record ({output}): {error}") from error
        path = root / output
        if not isinstance(endtime, (int, float)) or isinstance(endtime, bool):
            restored.unfinished.append(output)
            continue
        if not path.is_symlink() and not path.exists():
            restored.absent.append(output)
            continue
        if path.is_dir() and not path.is_symlink():
            stamp = path / TIMESTAMP
            if not stamp.exists():
                stamp.touch()
            _set_time(stamp, endtime)
            restored.directories += 1
        elif path.is_symlink():
            _set_time(path, endtime, follow_symlinks=False)
            restored.files += 1
        elif placed_only and path.stat().st_nlink < 2:
            continue  # written here and not linked by DVC (yet), or replaced by hand: its own time is right
        else:
            # one inode, one mtime: the latest of its outputs' times, so that none of them is older than
            # what it was made from (a directory input is never compared by content)
            stat = path.stat()
            latest, paths = files.get((stat.st_dev, stat.st_ino), (endtime, []))
            files[stat.st_dev, stat.st_ino] = (max(latest, endtime), [*paths, path])
    for latest, paths in files.values():
        _set_time(paths[0], latest)
        restored.files += len(paths)
    return restored


def restore_placed_mtimes(root: str | os.PathLike = ".") -> Restored | None:
    """What the workflow runs before it plans: `restore_mtimes` for the outputs DVC placed (a link into its
    cache, and every directory output), so that no `dvc repro`, `dvc pull` or `dvc checkout` needs a manual
    step after it. None where there are no records yet (a first run)."""
    if not (Path(root) / ".snakemake" / "metadata").is_dir():
        return None
    return restore_mtimes(root, placed_only=True)
