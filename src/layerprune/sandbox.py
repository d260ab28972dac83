"""Execution of untrusted (model-generated) Python programs.

Each program runs in its own freshly exec'd interpreter (`python -I`, isolated
mode) through `_sandbox_launcher.py`, which sets up namespaces, resource limits
and the `nobody` user (see its docstring for what each step guards against).
Here, the parent side: a wall-clock timeout that kills the launcher's whole
process group (the launcher's death also kills the program's PID namespace),
stdout/stderr captured in size-limited files rather than pipes (a program that
prints forever cannot exhaust the evaluator's memory), and a result that the
evaluation scores instead of raising: a hostile or broken program is simply a
failed sample.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LAUNCHER = Path(__file__).with_name("_sandbox_launcher.py")
OUTPUT_TAIL = 4000


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits; the defaults fit HumanEval/MBPP tests with a wide margin."""

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 2048
    file_size_mb: int = 16
    nproc: int = 32
    tmpfs_mb: int = 64


@dataclass
class SandboxResult:
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    isolation: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tail(path: Path) -> str:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - OUTPUT_TAIL))
        return handle.read().decode("utf-8", errors="replace")


def _python() -> tuple[str, str]:
    """The base interpreter and its installation prefix (the program needs the standard library only)."""
    executable = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    return executable, sys.base_prefix


def run_program(
    source: str, limits: SandboxLimits | None = None, extra_sys_path: list[str] | None = None
) -> SandboxResult:
    """Run Python `source` in the sandbox and report its exit status and output tails.

    `extra_sys_path` directories (readable by everyone) are appended to the
    program's `sys.path`, e.g. site-packages for MBPP+'s numpy-based checks.
    Raises RuntimeError only when the sandbox itself cannot be set up, so that
    nothing ever runs unconfined by accident.
    """
    limits = limits or SandboxLimits()
    if extra_sys_path:
        source = f"import sys\nsys.path.extend({list(extra_sys_path)!r})\n" + source
    python, prefix = _python()
    with tempfile.TemporaryDirectory(prefix="layerprune-sandbox-") as work:
        work = Path(work)
        fallback_scratch = work / "scratch"
        isolation_file = work / "isolation.json"
        config = {
            **asdict(limits),
            "source": source,
            "python": python,
            "python_prefix": prefix,
            "isolation_file": str(isolation_file),
            "fallback_scratch": str(fallback_scratch),
        }
        fallback_scratch.mkdir()
        config_file = work / "config.json"
        config_file.write_text(json.dumps(config))
        config_file.chmod(0o600)
        stdout_path, stderr_path = work / "stdout", work / "stderr"
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(LAUNCHER), str(config_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={},
                cwd=work,
                start_new_session=True,
                close_fds=True,
            )
            timed_out = False
            try:
                returncode = process.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                returncode = process.wait()
        stderr = _tail(stderr_path)
        if not isolation_file.is_file():
            if timed_out:  # a set-up that hangs is a sandbox failure too, but say so plainly
                raise RuntimeError(f"the sandbox did not start within {limits.timeout_s} s: {stderr}")
            raise RuntimeError(f"the sandbox could not be set up (exit {returncode}): {stderr.strip()}")
        isolation = json.loads(isolation_file.read_text())
        return SandboxResult(
            returncode=None if timed_out else returncode,
            timed_out=timed_out,
            stdout=_tail(stdout_path),
            stderr=stderr,
            isolation=isolation,
        )


def site_packages() -> list[str]:
    """This environment's site-packages, for programs whose checks import third-party modules."""
    return [sysconfig.get_paths()["purelib"]]
