"""Execution of untrusted (model-generated) Python programs.

Each program runs in its own freshly exec'd interpreter (`python -I`, isolated
mode) through `_sandbox_launcher.py`, which sets up namespaces, resource limits
and the sandbox's own user (see its docstring for what each step guards against).
Here, the parent side:

* a user id of its own per sandbox (as root): a lease on one id of a high range,
  held by a lock file for as long as the program or any of its processes lives,
  so that per-user limits (RLIMIT_NPROC) count this program's processes only and
  a neighbour's fork bomb cannot make a correct program fail;
* a cgroup of its own per sandbox (as root, where the machine lets us create one):
  `pids.max` and a memory limit that cover the program and all its descendants
  together. Without a writable memory controller, a watchdog sums the resident
  memory of the program's process tree and kills it over the limit; without a
  pids controller, RLIMIT_NPROC on the sandbox's own uid bounds its processes.
  Which mechanism ran is recorded in the result's `isolation["limits"]`;
* a wall-clock timeout that kills the launcher's whole process group (the
  launcher's death also kills the program's PID namespace);
* on request (`completion_marker=True`), proof that the program ran to its end:
  a random nonce on fd NONCE_FD, which the program reads (and closes) before it
  runs anything untrusted and writes to fd MARKER_FD when its last statement is
  done; only then does the result count as `completed` (an exit of any form
  before that, or a printed imitation of the marker, does not);
* stdout/stderr captured in size-limited files rather than pipes (a program that
  prints forever cannot exhaust the evaluator's memory), and a result that the
  evaluation scores instead of raising: a hostile or broken program is simply a
  failed sample. A program that exceeds its memory limit fails even if it exits 0
  (e.g. a parent that ignores its OOM-killed children).

See docs/sandbox.md.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import itertools
import json
import logging
import os
import random
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the settings import no evaluation code, nor this module them at run time
    from layerprune.config.settings import EvaluationSettings

LAUNCHER = Path(__file__).with_name("_sandbox_launcher.py")
UNAVAILABLE = "layerprune sandbox: strict isolation is not available on this machine"  # the launcher's refusal
OUTPUT_TAIL = 4000
# Sandbox user ids: far above any account (useradd's default ceiling is 60000, subuid ranges start at 100000
# and rarely reach 10^9), one per concurrent sandbox on this machine.
UID_BASE = 1_700_000_000
UID_SLOTS = 4096
UID_LOCK_DIRS = (Path("/run/layerprune-sandbox"), Path(tempfile.gettempdir()) / "layerprune-sandbox-uids")
CGROUP_NAME = "layerprune-sandbox"
WATCHDOG_INTERVAL_S = 0.05
DRAIN_TIMEOUT_S = 10.0
# Set to 0 to skip cgroups (then the uid and watchdog fallbacks run): for tests, and machines whose cgroup
# set-up misbehaves.
CGROUPS_ENV = "LAYERPRUNE_SANDBOX_CGROUPS"
ISOLATION_LEVELS = ("strict", "best_effort")
# The completion marker's file descriptors in the program (see `run_program`).
NONCE_FD = 3
MARKER_FD = 4

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits; the defaults fit HumanEval/MBPP tests with a wide margin.

    `memory_mb` bounds the program and all its descendants together (and each
    process's address space); `nproc` bounds how many processes and threads the
    program may have at once, again together with its descendants.
    """

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 2048
    file_size_mb: int = 16
    nproc: int = 32
    tmpfs_mb: int = 64
    # "strict": refuse to run (SandboxUnavailable) where the program cannot be isolated from the user's files,
    # network and processes; "best_effort": run with what the machine allows, and record what was missing.
    isolation_level: str = "strict"

    @classmethod
    def from_settings(cls, settings: EvaluationSettings) -> SandboxLimits:
        """The limits of an evaluation's settings (evaluation.sandbox.*); tmpfs_mb keeps its default."""
        return cls(
            timeout_s=settings.sandbox_timeout,
            cpu_s=settings.sandbox_cpu,
            memory_mb=settings.sandbox_memory_mb,
            file_size_mb=settings.sandbox_file_size_mb,
            nproc=settings.sandbox_nproc,
            isolation_level=settings.sandbox_isolation,
        )


@dataclass
class SandboxResult:
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    isolation: dict[str, Any] = field(default_factory=dict)
    # "memory" when the program (with its descendants) went over `memory_mb`; such a sample fails.
    limit_exceeded: str | None = None
    # With `completion_marker`: whether the program wrote back its nonce (ran to its end); else None.
    completed: bool | None = None
    # With a `judge`: what the judge decided ({"verdict": "pass" | "wrong_answer" | "runtime_error" | "early_exit",
    # "detail": ...}) and how the program's process ended ({"program": {"exit": n} | {"signal": n} |
    # {"killed_after_verdict": True}}); {} when the judge gave none (it was killed: time, memory).
    verdict: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        ok = self.returncode == 0 and not self.timed_out and self.limit_exceeded is None
        if self.verdict is not None:
            return ok and self.verdict.get("verdict") == "pass"
        return ok and self.completed is not False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SandboxError(RuntimeError):
    """A fault of the grader, not of the program (no space for its files, a launcher that could not start, a
    mount that failed): the evaluation stops with the cause; no sample is graded for it."""


class SandboxUnavailable(SandboxError):
    """Strict isolation was asked for and this machine cannot give it (raised before any program runs)."""


@dataclass(frozen=True)
class Judge:
    """Tests that run in a process of their own (see `run_program`).

    `source`: the judge's program, run as `python -I judge.py` with fd 3 (requests to the program), fd 4 (its
    answers) and fd 5 (where it writes its verdict, JSON); `runner`: the program's side, run as
    `python -I -c runner` in the program's scratch directory, where the program itself is `main.py`, with fd 3
    (requests) and fd 4 (answers)."""

    source: str
    runner: str


def _has_room(limits: SandboxLimits) -> bool:
    try:
        check_free_space(limits)
    except SandboxError:
        return False
    return True


# Room the run's files need in $TMPDIR beyond stdout and stderr (each at most `file_size_mb`): config, reports.
SPACE_MARGIN_BYTES = 1 << 20


def check_free_space(limits: SandboxLimits, directory: str | None = None) -> None:
    """Raise SandboxError unless `directory` ($TMPDIR) has room for one program's output at its limits: a program
    whose stdout cannot be written would otherwise fail (exit 120) for the grader's sake."""
    directory = directory or tempfile.gettempdir()
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    needed = 2 * (limits.file_size_mb << 20) + SPACE_MARGIN_BYTES
    if free < needed:
        raise SandboxError(
            f"the sandbox's temporary directory {directory} has {free >> 10} KiB free; a program needs "
            f"{needed >> 20} MiB (stdout and stderr of evaluation.sandbox.file_size_mb each, and its set-up): "
            "free space there or point TMPDIR elsewhere"
        )


def _tail(path: Path) -> str:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - OUTPUT_TAIL))
        return handle.read().decode("utf-8", errors="replace")


def _python() -> tuple[str, str]:
    """The base interpreter and its installation prefix (the program needs the standard library only)."""
    executable = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    return executable, sys.base_prefix


def _needed_paths(python: str, prefix: str, extra_sys_path: list[str]) -> list[str]:
    """Directories the sandboxed interpreter must be able to read: its installation, stdlib and `extra_sys_path`."""
    paths = [prefix, os.path.dirname(python), sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")]
    paths += [path for path in extra_sys_path if os.path.isdir(path)]  # a missing sys.path entry is harmless
    unique: list[str] = []
    for path in paths:
        path = os.path.abspath(path)
        for variant in (path, os.path.realpath(path)):  # symlinked prefixes: both spellings must resolve inside
            if variant not in unique:
                unique.append(variant)
    return unique


def _uid_has_processes(uid: int) -> bool:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    return True
    return False


@functools.cache
def _uid_lock_dir() -> Path:
    for directory in UID_LOCK_DIRS:
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
            if directory.stat().st_uid == os.geteuid() and os.access(directory, os.W_OK):
                return directory
        except OSError:
            continue
    raise SandboxError(f"the sandbox found no directory for its uid locks (tried {[str(d) for d in UID_LOCK_DIRS]})")


@contextlib.contextmanager
def _uid_lease() -> Iterator[int]:
    """A user id no other sandbox on this machine holds (flock on a file per id; released when we exit or die)."""
    directory = _uid_lock_dir()
    start = random.randrange(UID_SLOTS)
    for offset in range(UID_SLOTS):
        slot = (start + offset) % UID_SLOTS
        fd = os.open(directory / f"{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        uid = UID_BASE + slot
        if _uid_has_processes(uid):  # left over from an evaluator that was killed mid-run: not ours to reuse yet
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            os.close(fd)
        return
    raise SandboxError(f"all {UID_SLOTS} sandbox uids are in use")


def _mounts(fstype: str) -> list[tuple[str, str, set[str]]]:
    """(mount point, mounted root, super options) of each mount of `fstype`."""
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, right = line.split(" - ", 1)
            fields, after = left.split(), right.split()
            if after[0] == fstype:
                found.append((fields[4], fields[3], set(after[2].split(","))))
    return found


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per v1 controller (and "" for the unified hierarchy)."""
    own = {}
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = path
    return own


def _mounted_dir(mount_point: str, mount_root: str, path: str) -> Path | None:
    if mount_root != "/" and not (path + "/").startswith(mount_root.rstrip("/") + "/"):
        return None  # our cgroup is not under what is mounted here
    relative = path[len(mount_root.rstrip("/")) :] if mount_root != "/" else path
    return Path(mount_point + relative)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


@dataclass
class _Cgroup:
    """One sandbox's cgroup(s): one directory on v2, one per controller on v1."""

    version: int
    dirs: dict[str, Path]  # controller ("pids", "memory") -> directory that enforces it

    @property
    def procs_files(self) -> list[str]:
        return sorted({str(directory / "cgroup.procs") for directory in self.dirs.values()})

    def describe(self) -> dict[str, str]:
        """Per controller, the file that enforces it (the same for every run, so that it logs once)."""
        files = {"pids": "pids.max", "memory": "memory.limit_in_bytes" if self.version == 1 else "memory.max"}
        return {
            c: f"cgroup v{self.version} {files[c]}, a group per sandbox in {d.parent}" for c, d in self.dirs.items()
        }

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(FileNotFoundError):
                found.update(int(line) for line in Path(procs).read_text().split())
        return found

    def oom_kills(self) -> int:
        memory = self.dirs.get("memory")
        if memory is None:
            return 0
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in (memory / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise RuntimeError(f"{memory / name} has no oom_kill counter (kernel older than 4.13?)")

    def remove(self) -> None:
        """Kill whatever is left in the group, then delete it (the PID namespace dies asynchronously)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise SandboxError(f"sandbox processes {sorted(pids)} survived SIGKILL for {DRAIN_TIMEOUT_S} s")
            time.sleep(0.005)
        for directory in set(self.dirs.values()):
            for attempt in range(200):  # the kernel may report the group busy for a moment after its last exit
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as error:
                    if error.errno != errno.EBUSY or attempt == 199:
                        raise
                    time.sleep(0.005)


def _make_dir(parent: Path, name: str) -> Path:
    directory = parent / name
    with contextlib.suppress(FileNotFoundError):
        directory.rmdir()  # an empty one left by an evaluator that was killed mid-run
    directory.mkdir()
    return directory


def _cgroup_v2(name: str, limits: SandboxLimits) -> _Cgroup | None:
    mounts = _mounts("cgroup2")
    own = _own_cgroups().get("")
    if not mounts or own is None:
        return None
    mount_point, mount_root, _ = mounts[0]
    mine = _mounted_dir(mount_point, mount_root, own)
    if mine is None:
        return None
    # Processes may only live in leaves: the sandbox's group is a sibling of ours when our parent already
    # delegates both controllers (then our own group has their files), else a child of ours if we are the root.
    if (mine / "memory.max").exists() and (mine / "pids.max").exists() and mine != Path(mount_point):
        parent = mine.parent
    else:
        try:
            _write(mine / "cgroup.subtree_control", "+memory +pids")
        except OSError:
            return None
        parent = mine
    try:
        directory = _make_dir(parent, name)
    except OSError:
        return None
    group = _Cgroup(2, {"pids": directory, "memory": directory})
    try:
        _write(directory / "pids.max", str(limits.nproc))
        _write(directory / "memory.max", str(limits.memory_mb << 20))
        if (directory / "memory.swap.max").exists():
            _write(directory / "memory.swap.max", "0")
        _write(directory / "memory.oom.group", "1")  # an OOM kill takes the whole program down
    except OSError:
        group.remove()
        return None
    return group


def _cgroup_v1(name: str, limits: SandboxLimits) -> _Cgroup | None:
    own = _own_cgroups()
    dirs: dict[str, Path] = {}
    for mount_point, mount_root, options in _mounts("cgroup"):
        for controller in ("pids", "memory"):
            if controller in options and controller not in dirs and controller in own:
                mine = _mounted_dir(mount_point, mount_root, own[controller])
                if mine is None:
                    continue
                try:
                    parent = mine / CGROUP_NAME
                    parent.mkdir(exist_ok=True)
                    directory = _make_dir(parent, name)
                except OSError:
                    continue
                dirs[controller] = directory
    if not dirs:
        return None
    group = _Cgroup(1, dirs)
    try:
        if "pids" in dirs:
            _write(dirs["pids"] / "pids.max", str(limits.nproc))
        if "memory" in dirs:
            limit = str(limits.memory_mb << 20)
            _write(dirs["memory"] / "memory.limit_in_bytes", limit)
            with contextlib.suppress(OSError):  # only where swap accounting is on; without it there is no swap
                _write(dirs["memory"] / "memory.memsw.limit_in_bytes", limit)
            group.oom_kills()  # fail here, not after the run, if the kernel has no counter to read
    except (OSError, RuntimeError):
        group.remove()
        return None
    return group


def _cgroup(name: str, limits: SandboxLimits) -> _Cgroup | None:
    """A fresh cgroup for one sandbox, v2 preferred; None when this machine lets us create neither.

    As a user, only cgroup v2 and only where the system delegated the user's cgroup subtree (systemd's
    `Delegate=yes`, as in `user@.service` or `systemd-run --user --scope -p Delegate=yes`; SLURM's cgroup/v2
    plugin): then the memory limit covers the program's tmpfs and shared pages as it does for root. Elsewhere the
    attempt fails on permissions and the watchdog runs."""
    if os.environ.get(CGROUPS_ENV, "1") == "0":
        return None
    if os.geteuid() != 0:
        return _cgroup_v2(name, limits)
    return _cgroup_v2(name, limits) or _cgroup_v1(name, limits)


# The host in the name too: a $TMPDIR on a shared filesystem holds other nodes' evaluators, whose pids mean
# nothing here.
WORK_PREFIX = f"layerprune-sandbox-{socket.gethostname()}-"
_WORK_DIR = re.compile(re.escape(WORK_PREFIX) + r"(\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cgroup_dirs_of_slots() -> list[Path]:
    """Every per-sandbox cgroup directory (`uid-N`) where this evaluator would create one."""
    places: list[Path] = []
    own = _own_cgroups()
    for mount_point, mount_root, _ in _mounts("cgroup2"):
        mine = _mounted_dir(mount_point, mount_root, own.get("", "/"))
        if mine is not None:
            places += [mine, mine.parent]
        break
    for mount_point, mount_root, options in _mounts("cgroup"):
        for controller in ("pids", "memory"):
            if controller in options and controller in own:
                mine = _mounted_dir(mount_point, mount_root, own[controller])
                if mine is not None:
                    places.append(mine / CGROUP_NAME)
    found: list[Path] = []
    for place in dict.fromkeys(places):
        with contextlib.suppress(OSError):
            found += [d for d in place.iterdir() if d.is_dir() and re.fullmatch(r"uid-\d+", d.name)]
    return found


def reap_stale() -> dict[str, int]:
    """Remove what evaluators that died (SIGKILL, a node failure) left: their scratch/work directories, and, as
    root, the processes and cgroups of sandbox uids whose lease nobody holds. Runs once per process, at the first
    sandbox; anything still leased by a live evaluator is left alone. Returns counts of what was removed."""
    removed = {"work_dirs": 0, "cgroups": 0, "processes": 0}
    tmp = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in tmp.iterdir():
            match = _WORK_DIR.match(entry.name)
            with contextlib.suppress(OSError):
                if match and entry.stat().st_uid == os.geteuid() and not _alive(int(match.group(1))):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed["work_dirs"] += 1
    if os.geteuid() != 0:
        return removed
    directory = _uid_lock_dir()
    groups: dict[int, list[Path]] = {}
    for group in _cgroup_dirs_of_slots():
        groups.setdefault(int(group.name[4:]), []).append(group)
    for uid in sorted(set(groups) | set(range(UID_BASE, UID_BASE + UID_SLOTS)) & _sandbox_uids_with_processes()):
        fd = os.open(directory / f"{uid - UID_BASE}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live evaluator holds it
        try:
            removed["processes"] += _kill_uid(uid)
            for group in groups.get(uid, []):
                _Cgroup(2, {"pids": group}).remove()  # kills what is left in it, then removes it
                removed["cgroups"] += 1
        finally:
            os.close(fd)
    if any(removed.values()):
        log.info("sandbox: removed what dead evaluators left: %s", removed)
    return removed


def _sandbox_uids_with_processes() -> set[int]:
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                uid = entry.stat().st_uid
                if UID_BASE <= uid < UID_BASE + UID_SLOTS:
                    found.add(uid)
    return found


def _kill_uid(uid: int) -> int:
    killed = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed += 1
    return killed


_reaped = False


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of `root`'s descendants (not `root`, the launcher), from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()  # fields from the 3rd on (comm may hold spaces)
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21])
    total, stack = 0, list(children.get(root, []))
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total * os.sysconf("SC_PAGE_SIZE")


def _limit_mechanisms(group: _Cgroup | None, uid: int | None) -> dict[str, str]:
    found = group.describe() if group else {}
    processes = "RLIMIT_NPROC" + (f" of the sandbox's own uid {uid}" if uid is not None else " of the evaluator's user")
    return {
        "processes": found.get("pids", processes),
        "memory": found.get("memory", "watchdog: resident memory of the process tree, polled"),
    }


@contextlib.contextmanager
def _exit_waiter(process: subprocess.Popen) -> Iterator[Callable[[float], int | None]]:
    """wait(timeout) -> exit code, or None on timeout; woken by a pidfd the moment the process exits.

    (Popen.wait with a timeout polls with sleeps of up to 50 ms, a delay every sample would pay.)
    """
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # Python or kernel without pidfds
        yield lambda timeout: _popen_wait(process, timeout)
        return

    def wait(timeout: float) -> int | None:
        ready, _, _ = select.select([pidfd], [], [], timeout)
        return process.wait() if ready else None

    try:
        yield wait
    finally:
        os.close(pidfd)


def _popen_wait(process: subprocess.Popen, timeout: float) -> int | None:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


_reported: set[tuple[tuple[str, str], ...]] = set()
_user_groups = itertools.count()
_no_delegation: list[bool] = []


def run_program(
    source: str,
    limits: SandboxLimits | None = None,
    extra_sys_path: list[str] | None = None,
    completion_marker: bool = False,
    judge: Judge | None = None,
) -> SandboxResult:
    """Run Python `source` in the sandbox and report its exit status and output tails.

    With `completion_marker`, the program finds a fresh random nonce to read on
    fd `NONCE_FD` and must write exactly that nonce to fd `MARKER_FD` when it is
    done; `completed` (and so `passed`) is true only if it did. The nonce exists
    nowhere else the program can reach (the launcher's config file is deleted
    before the program starts), so an exit of any kind before the end, or a
    printed imitation, cannot complete. (A program that deliberately inspects
    the frames of its own interpreter can find what that interpreter read;
    guarding against it is beyond any in-process test harness.)

    With a `judge`, the verdict is decided outside the program's interpreter: the
    judge (the task's tests) runs in a process of its own and the program in
    another, in a PID and mount namespace of its own nested in the sandbox's (the
    judge's processes do not exist there: it cannot signal, trace or read them;
    its /tmp is its own, so the judge's files are not there either), under a
    seccomp filter that refuses ptrace and process_vm_readv. They speak through
    two pipes only, in plain data. The judge's verdict reaches the evaluator on a
    file the program's process never holds; `passed` is then that verdict.

    `extra_sys_path` directories (readable by everyone) are appended to the
    program's `sys.path`, e.g. site-packages for MBPP+'s numpy-based checks; they
    stay visible inside even under /tmp or a home directory others cannot enter.
    Raises RuntimeError only when the sandbox itself cannot be set up (including a
    needed directory it cannot make visible), so that nothing ever runs unconfined
    by accident and no sample is graded wrong for the sandbox's sake.
    """
    limits = limits or SandboxLimits()
    if limits.isolation_level not in ISOLATION_LEVELS:
        raise ValueError(
            f"evaluation.sandbox.isolation must be one of {ISOLATION_LEVELS}, not {limits.isolation_level!r}"
        )
    extra_sys_path = list(extra_sys_path or [])
    if extra_sys_path:
        extend = f"import sys\nsys.path.extend({extra_sys_path!r})\n"
        if judge is None:
            source = extend + source
        else:  # the program (main.py) stays as it was written: its server and the judge extend sys.path
            judge = Judge(source=extend + judge.source, runner=extend + judge.runner)
    check_free_space(limits)
    python, prefix = _python()
    root = os.geteuid() == 0
    global _reaped
    if not _reaped:
        _reaped = True
        reap_stale()
    try:
        with contextlib.ExitStack() as stack:
            uid = stack.enter_context(_uid_lease()) if root else None
            # The evaluator's pid in the name: whatever a killed evaluator leaves, the next one removes (reap_stale).
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}{os.getpid()}-")))
            # As a user the name carries this evaluator's pid and a count (a user's sandboxes have no uid lease).
            name = f"uid-{uid}" if uid is not None else f"user-{os.getpid()}-{next(_user_groups)}"
            group = _cgroup(name, limits) if uid is not None or not _no_delegation else None
            if group is None and uid is None:
                _no_delegation.append(True)  # tried once: not delegated here, no need to try per program
            if group is not None:
                stack.callback(group.remove)  # runs before the uid lease is released: no process of it survives
            mechanisms = _limit_mechanisms(group, uid)
            if tuple(mechanisms.items()) not in _reported:
                _reported.add(tuple(mechanisms.items()))
                log.info("sandbox limits: %s", mechanisms)
            fallback_scratch = work / "scratch"
            isolation_file = work / "isolation.json"
            marker_file = work / "marker"
            verdict_file = work / "verdict"
            nonce = secrets.token_hex(16) if completion_marker else None
            config = {
                **asdict(limits),
                "source": source,
                "python": python,
                "python_prefix": prefix,
                "needed_paths": _needed_paths(python, prefix, extra_sys_path),
                "stdlib": sysconfig.get_path("stdlib"),
                "uid": uid,
                "cgroup_procs": group.procs_files if group else [],
                "isolation_file": str(isolation_file),
                "fallback_scratch": str(fallback_scratch),
                "isolation_level": limits.isolation_level,
                "parent_pid": os.getpid(),
                "nonce": nonce,
                "nonce_fd": NONCE_FD,
                "marker_fd": MARKER_FD,
                "marker_file": str(marker_file),
                "judge": None if judge is None else {**asdict(judge), "verdict_file": str(verdict_file)},
            }
            fallback_scratch.mkdir()
            config_file = work / "config.json"
            config_file.write_text(json.dumps(config))
            config_file.chmod(0o600)
            stdout_path, stderr_path = work / "stdout", work / "stderr"
            watchdog = group is None or "memory" not in group.dirs
            limit_exceeded = None
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
                deadline = time.monotonic() + limits.timeout_s
                timed_out = False
                with _exit_waiter(process) as wait:
                    while True:
                        remaining = deadline - time.monotonic()
                        returncode = wait(max(0.0, min(remaining, WATCHDOG_INTERVAL_S) if watchdog else remaining))
                        if returncode is not None:
                            break
                        over_memory = watchdog and _tree_rss_bytes(process.pid) > limits.memory_mb << 20
                        if over_memory or time.monotonic() >= deadline:
                            timed_out = not over_memory
                            limit_exceeded = "memory" if over_memory else None
                            with contextlib.suppress(ProcessLookupError):
                                os.killpg(process.pid, signal.SIGKILL)
                            returncode = process.wait()
                            break
            stderr = _tail(stderr_path)
            if returncode == 126 and UNAVAILABLE in stderr:
                raise SandboxUnavailable(stderr[stderr.index(UNAVAILABLE) :].strip())
            if not isolation_file.is_file() or not isolation_file.stat().st_size:
                if timed_out:  # a set-up that hangs is a sandbox failure too, but say so plainly
                    raise SandboxError(f"the sandbox did not start within {limits.timeout_s} s: {stderr}")
                raise SandboxError(f"the sandbox could not be set up (exit {returncode}): {stderr.strip()}")
            isolation = json.loads(isolation_file.read_text())
            if uid is None and isolation.get("own_process_count"):
                mechanisms = {**mechanisms, "processes": "RLIMIT_NPROC, counted in the sandbox's own user namespace"}
            isolation["limits"] = mechanisms
            isolation["uid"] = uid  # the sandbox's own uid (None where none could be leased)
            if group is not None and group.oom_kills():
                limit_exceeded = "memory"
            if limit_exceeded:
                # Said last, so that the grader's bucket is a runtime error, not the program's own last words.
                stderr += f"\nlayerprune sandbox: the program and its descendants exceeded {limits.memory_mb} MB\n"
            completed = None
            if nonce is not None:
                with contextlib.suppress(FileNotFoundError), open(marker_file, "rb") as handle:
                    completed = handle.read(len(nonce) + 1) == nonce.encode()
                completed = bool(completed)
            if returncode != 0 and not _has_room(limits):
                # The run left $TMPDIR without room (another writer beside it): the program's output may not
                # have been written, so its failure may be ours, not the program's.
                raise SandboxError(
                    f"the sandbox's temporary directory {tempfile.gettempdir()} ran out of space during a program "
                    f"(exit {returncode}): free space there or point TMPDIR elsewhere"
                )
            verdict = None
            if judge is not None:
                verdict = {}
                with contextlib.suppress(FileNotFoundError):
                    for line in verdict_file.read_text().splitlines():
                        if line.strip():
                            verdict.update(json.loads(line))  # written by the judge and the launcher only
            return SandboxResult(
                verdict=verdict,
                returncode=None if timed_out else returncode,
                timed_out=timed_out,
                stdout=_tail(stdout_path),
                stderr=stderr,
                isolation=isolation,
                limit_exceeded=limit_exceeded,
                completed=completed,
            )
    except OSError as error:  # the sandbox's own files (work directory, reports): a grader fault
        raise SandboxError(f"the sandbox's own files in {tempfile.gettempdir()}: {error}") from error


_preflights: dict[SandboxLimits, dict[str, Any]] = {}


def preflight(limits: SandboxLimits) -> dict[str, Any]:
    """Run an empty program once, so that a machine that cannot isolate as `limits.isolation_level` asks (or a
    $TMPDIR without room) stops the evaluation (SandboxError) before any sample; returns the isolation it got."""
    _preflights[limits] = run_program("pass\n", limits).isolation
    return _preflights[limits]


def preflight_isolation(limits: SandboxLimits) -> dict[str, Any]:
    """The isolation this process's preflight got for `limits` (run now where there was none): what a code
    result records when none of its samples reached the sandbox (all syntax errors, no samples)."""
    return _preflights.get(limits) or preflight(limits)


def site_packages() -> list[str]:
    """This environment's site-packages, for programs whose checks import third-party modules."""
    return [sysconfig.get_paths()["purelib"]]
