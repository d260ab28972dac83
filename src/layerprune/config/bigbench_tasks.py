"""The task names of the bigbench 1.0.0 sdist (pinned by sha256 in layerprune.data.sources), for plan-time checks.

The names are data, in bigbench_tasks.json beside this module, written from the sdist's file list by
`python -m layerprune.config.bigbench_tasks SDIST` (the sdist is pinned, so this runs once). The index no longer
serves that sdist; reading its 358 MB to check a config would take seconds, reading the list takes none.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TASK_NAMES_FILE = Path(__file__).with_name("bigbench_tasks.json")


def read_task_names(path: Path = TASK_NAMES_FILE) -> tuple[frozenset[str], frozenset[str]]:
    """The (json, programmatic) task names a names file holds."""
    names = json.loads(path.read_text(encoding="utf-8"))
    return frozenset(names["json_tasks"]), frozenset(names["programmatic_tasks"])


# BIGBENCH_JSON_TASKS: tasks with a task.json (subtasks as task/subtask), what
# layerprune.data.sources.extract_bigbench_task reads; BIGBENCH_PROGRAMMATIC_TASKS: tasks with only a task.py,
# which this pipeline cannot evaluate (named as such in the plan-time error).
BIGBENCH_JSON_TASKS, BIGBENCH_PROGRAMMATIC_TASKS = read_task_names()


def write_task_names(sdist: str | Path, out: Path = TASK_NAMES_FILE) -> None:
    """Write the names file from an sdist's file list (to a temporary file, then renamed)."""
    from layerprune.data.sources import bigbench_sdist_task_names
    from layerprune.registry import BIGBENCH_SDIST

    names = bigbench_sdist_task_names(sdist)
    record = {"sdist": BIGBENCH_SDIST, "json_tasks": names["json"], "programmatic_tasks": names["programmatic"]}
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Rewrite {TASK_NAMES_FILE.name} from the bigbench sdist.")
    parser.add_argument("sdist", type=Path, help="bigbench-1.0.0.tar.gz")
    parser.add_argument("--out", type=Path, default=TASK_NAMES_FILE, help="default: %(default)s")
    args = parser.parse_args(argv)
    write_task_names(args.sdist, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
