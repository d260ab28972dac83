"""A job's own CPU time and peak memory, exact, for the report's "where the time went" table.

Snakemake's `benchmark:` samples a job's process tree every 0.5 s for its first 15 s and then
only every 30 s, so a 35 s job is credited with the CPU time it had used by its 15th second.
Each `layerprune` command therefore ends its log with one line of getrusage(2) figures (its
own and those of the child processes it waited for: sandboxes, torchrun workers), and the
report reads that line from the log beside each benchmark file.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

USAGE_PREFIX = "layerprune usage: "
# ru_maxrss is in KiB on Linux, in bytes on macOS
_MAXRSS_PER_MB = 2**20 if sys.platform == "darwin" else 2**10


def usage_line(started: float) -> str:
    """`layerprune usage: {"cpu_s": ..., "wall_s": ..., "max_rss_mb": ...}` since `started` (time.monotonic()).

    cpu_s: user + system time of this process and its waited-for children; max_rss_mb: the peak
    resident set of the largest single process among them (not a sum over processes).
    """
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    usage = {
        "cpu_s": round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 3),
        "wall_s": round(time.monotonic() - started, 3),
        "max_rss_mb": round(max(own.ru_maxrss, children.ru_maxrss) / _MAXRSS_PER_MB, 1),
    }
    return USAGE_PREFIX + json.dumps(usage, sort_keys=True)


def read_usage(log_path: str | Path) -> dict[str, float] | None:
    """The last usage line of a job's log; None when the log is missing or has none (a job killed, an older log)."""
    path = Path(log_path)
    if not path.is_file():
        return None
    found = None
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.startswith(USAGE_PREFIX):
                found = line
    if found is None:
        return None
    try:
        usage = json.loads(found[len(USAGE_PREFIX) :])
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: unreadable usage line {found.strip()!r} ({error})") from error
    return {key: float(usage[key]) for key in ("cpu_s", "wall_s", "max_rss_mb")}


def log_of_benchmark(benchmark_path: str | Path) -> Path:
    """benchmarks/<rule>/<wildcards>.tsv -> logs/<rule>/<wildcards>.log (the workflow names both alike)."""
    parts = list(Path(benchmark_path).parts)
    index = len(parts) - 1 - parts[::-1].index("benchmarks")
    parts[index] = "logs"
    return Path(*parts).with_suffix(".log")
