"""A job's own CPU time and peak memory, exact, for the report's "where the time went" table.

Snakemake's `benchmark:` samples a job's process tree every 0.5 s for its first 15 s and then
only every 30 s, so a 35 s job is credited with the CPU time it had used by its 15th second.
Each `layerprune` process therefore ends with one line of getrusage(2) figures in its log (its
own and those of the child processes it waited for, e.g. sandboxes), and the report reads the
log beside each benchmark file. A job that trains in several processes (`torchrun ... -m
layerprune.cli recover`) leaves one line per process, and the job's usage is their sum.
"""

from __future__ import annotations

import json
import os
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
        "pid": os.getpid(),
        "cpu_s": round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 3),
        "wall_s": round(time.monotonic() - started, 3),
        "max_rss_mb": round(max(own.ru_maxrss, children.ru_maxrss) / _MAXRSS_PER_MB, 1),
    }
    return USAGE_PREFIX + json.dumps(usage, sort_keys=True)


def read_usage(log_path: str | Path) -> dict[str, float] | None:
    """A job's usage from its log: CPU and wall summed over its processes' lines, the largest peak RSS.

    None when the log is missing or has no usage line (a job killed, a log older than this code).
    The rules write each job's log afresh (`> {log}`), so every line in it is of that job's run.
    """
    path = Path(log_path)
    if not path.is_file():
        return None
    found = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.startswith(USAGE_PREFIX):
                try:
                    found.append(json.loads(line[len(USAGE_PREFIX) :]))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}: unreadable usage line {line.strip()!r} ({error})") from error
    if not found:
        return None
    return {
        "cpu_s": float(sum(usage["cpu_s"] for usage in found)),
        "wall_s": float(max(usage["wall_s"] for usage in found)),
        "max_rss_mb": float(max(usage["max_rss_mb"] for usage in found)),
        "processes": len(found),
    }


def log_of_benchmark(benchmark_path: str | Path) -> Path:
    """benchmarks/<rule>/<wildcards>.tsv -> logs/<rule>/<wildcards>.log (the workflow names both alike)."""
    parts = list(Path(benchmark_path).parts)
    index = len(parts) - 1 - parts[::-1].index("benchmarks")
    parts[index] = "logs"
    return Path(*parts).with_suffix(".log")
