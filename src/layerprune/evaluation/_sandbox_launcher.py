"""Launcher for one sandboxed program (run as `python -I -S _sandbox_launcher.py CONFIG.json`).

It is a separate, freshly exec'd interpreter (no threads, nothing of the parent's
state), so the privileged set-up below does not run inside a forked copy of a
multi-threaded torch process. Only the standard library is used.

As root (the usual case in containers) it:

1. puts itself into the sandbox's own cgroup(s) that the parent created (their
   `pids.max` and memory limit then cover the program and every descendant);
2. enters new mount, network and PID namespaces (no network: the new namespace
   has only a downed loopback; the PID namespace dies with its first process,
   taking every descendant with it, so nothing can outlive the time limit);
3. mounts fresh tmpfs over the world-writable directories (/tmp, /var/tmp,
   /dev/shm, /run/lock) and makes one of them the scratch directory, and a fresh
   /proc. The directories the interpreter needs (its installation, stdlib,
   site-packages passed on `sys.path`) are re-exposed read-only at their own
   paths when those mounts would hide them (a venv under /tmp) or an ancestor
   is closed to others (pyenv under /root, a 0750 home; the closed ancestor is
   then replaced by an empty tmpfs holding just those paths);
4. sets resource limits (CPU, address space, file size, processes, open files,
   no core dumps) and drops to the sandbox's own uid (one per concurrent
   sandbox, leased by the parent), because the kernel does not enforce
   RLIMIT_NPROC for uid 0 and counts it per user;
5. checks, as that user, that every needed directory is readable, and stops
   with exit 125 and a message naming the directory if one is not (the parent
   then raises: a sandbox fault never becomes a failed sample);
6. execs `python -I main.py` in the scratch directory with an environment that
   holds HOME only; with a completion marker, the program inherits a pipe that
   holds the nonce on fd `nonce_fd` and the marker file, opened for writing, on
   fd `marker_fd` (the config file, the nonce's only other copy, is deleted
   first).

As any other user it tries an unprivileged user namespace for the same mount,
network and PID isolation, and otherwise applies the resource limits alone.
What it achieved is written to the `isolation_file` of the config.
"""

import contextlib
import ctypes
import fcntl
import json
import os
import re
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
PR_SET_DUMPABLE, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 4, 22, 2
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}
SCRATCH = "/tmp/scratch"
UNAVAILABLE = "layerprune sandbox: strict isolation is not available on this machine, missing"
# Mounted over /tmp in the sandbox's own mount namespace, then pivoted into: the new root.
NEW_ROOT = "/tmp"
SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
SYSTEM_FILES = ["/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime"]
DEVICES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]
DEVICE_LINKS = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
]

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _unescape(field: str) -> str:
    """A path as /proc/self/mountinfo writes it (space, tab, newline, backslash as octal escapes)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mount_points_under(directory: str) -> list:
    with open("/proc/self/mountinfo") as handle:
        points = [_unescape(line.split()[4]) for line in handle]
    return [p for p in points if _inside(p, directory)]


def _remount_read_only(directory: str) -> None:
    """Every mount at or under `directory` read-only, nosuid, nodev (keeping the flags a user namespace locks)."""
    for point in _mount_points_under(directory):
        locked = os.statvfs(point).f_flag
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
        for st_flag, ms_flag in ((8, MS_NOEXEC), (1024, MS_NOATIME), (2048, MS_NODIRATIME), (4096, MS_RELATIME)):
            if locked & st_flag:
                flags |= ms_flag
        _mount(None, point, None, flags)


def _replicate(path: str, new_root: str, bound: list, depth: int = 0) -> None:
    """Make `path` resolve inside `new_root` as it does outside: its ancestors as directories, symlinks as they are.

    Stops at a directory already bound into the new root (below it, the host's own tree resolves)."""
    if depth > 40:
        raise OSError(f"too many levels of symbolic links in {path}")
    parts = [part for part in path.split("/") if part]
    current = ""
    for i, part in enumerate(parts):
        current += "/" + part
        if any(_inside(current, b) for b in bound):
            return
        target = new_root + current
        if os.path.islink(current):
            link = os.readlink(current)
            if not os.path.lexists(target):
                os.symlink(link, target)
            resolved = os.path.normpath(os.path.join(os.path.dirname(current), link))
            _replicate("/".join([resolved, *parts[i + 1 :]]), new_root, bound, depth + 1)
            return
        if not os.path.exists(current):
            return
        if not os.path.lexists(target):
            if os.path.isdir(current):
                os.mkdir(target, 0o755)
            else:
                open(target, "w").close()  # a mount point for a file


def _mapped_library_dirs() -> list:
    """Directories of the shared libraries this interpreter has loaded (libpython, libc, the loader)."""
    found = set()
    with open("/proc/self/maps") as handle:
        for line in handle:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/") and ".so" in fields[5]:
                found.add(os.path.dirname(fields[5].strip()))
    return sorted(found)


def _bind_sources(config: dict) -> list:
    """Host paths bound read-only into the new root: the system's programs and libraries, the interpreter, the
    directories on the program's sys.path, the loader's cache. Nothing else of the host (no home, no project)."""
    sources = [d for d in SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    sources += [os.path.realpath(p) for p in config["needed_paths"] + _mapped_library_dirs() if os.path.isdir(p)]
    sources += [f for f in SYSTEM_FILES if os.path.isfile(f) and not os.path.islink(f)]
    unique = []
    for path in sorted(set(sources), key=len):  # an ancestor first; then its descendants are already inside
        if not any(_inside(path, u) for u in unique):
            unique.append(path)
    return unique


def _private_root(config: dict, scratch_owner: "int | None") -> dict:
    """Pivot into a fresh read-only tmpfs root that holds only what the program needs (see `_bind_sources`),
    a private /tmp (scratch) and /dev/shm, a few device nodes and a fresh /proc. Returns what it achieved."""
    tmpfs_mb = config["tmpfs_mb"]
    sources = _bind_sources(config)
    # Opened before anything is mounted over them (a venv under /tmp stays reachable from the fd).
    handles = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path in sources}
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    new_root = NEW_ROOT
    _mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    old_umask = os.umask(0o022)
    for directory in ("/tmp", "/dev", "/proc"):
        os.mkdir(new_root + directory, 0o755)
    # The writable places first: a needed directory under /tmp (a venv) is bound on top of the fresh /tmp.
    _mount("tmpfs", new_root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=1777")
    _mount("tmpfs", new_root + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755")
    for device in DEVICES:
        open(new_root + device, "w").close()
        _mount(device, new_root + device, None, MS_BIND)
    for name, target in DEVICE_LINKS:
        os.symlink(target, f"{new_root}/dev/{name}")
    os.mkdir(new_root + "/dev/shm", 0o755)
    _mount("tmpfs", new_root + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=1777")
    _mount(None, new_root + "/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    bound = []
    for path, handle in handles.items():
        _replicate(os.path.dirname(path), new_root, bound)
        target = new_root + path
        if os.path.isdir(f"/proc/self/fd/{handle}"):
            os.makedirs(target, mode=0o755, exist_ok=True)
        elif not os.path.exists(target):
            open(target, "w").close()
        _mount(f"/proc/self/fd/{handle}", target, None, MS_BIND | MS_REC)
        _remount_read_only(target)
        os.close(handle)
        bound.append(path)
    for link in SYSTEM_DIRS + SYSTEM_FILES:  # merged-/usr symlinks (/lib -> usr/lib) and the like
        _replicate(link, new_root, bound)
    for path in config["needed_paths"]:  # the spellings with symlinks (a venv's lib64 -> lib, /home -> /gpfs/home)
        _replicate(path, new_root, bound)
    try:
        _mount("proc", new_root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        proc = True
    except OSError:  # e.g. a container's /proc with masked paths, in a user namespace: then there is no /proc
        proc = False
    os.umask(old_umask)
    os.makedirs(new_root + SCRATCH, mode=0o700)
    if scratch_owner is not None:
        os.chown(new_root + SCRATCH, scratch_owner, scratch_owner)
    os.chdir(new_root)
    _check(libc.syscall(ctypes.c_long(SYS_PIVOT_ROOT[os.uname().machine]), b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "umount the host's root")  # the old root, stacked under the new one
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return {"private_root": True, "proc": proc}


# --- seccomp: what no sandboxed process may do, whoever it runs as -------------------------------------------------
# Refused with EPERM: a nested user namespace (unshare/clone with CLONE_NEWUSER; inside one, an unprivileged program
# would hold every capability again and could mount a tmpfs of any size, uncounted), memfd_create/memfd_secret and
# SysV shared memory (pages no process maps stay out of resident memory, so the watchdog would not see them),
# ptrace/process_vm_* (reading another process's memory), setns, userfaultfd, and the x32 ABI (other numbers for
# the same calls). clone3 answers ENOSYS: its flags live in memory a filter cannot read, and glibc then falls back
# to clone, whose flags it can.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
SYSCALLS = {
    "x86_64": {"clone": 56, "unshare": 272, "clone3": 435, "refused": [319, 447, 29, 101, 310, 311, 308, 323]},
    "aarch64": {"clone": 220, "unshare": 97, "clone3": 435, "refused": [279, 447, 194, 117, 270, 271, 268, 282]},
}
BPF_LD_W_ABS, BPF_JEQ, BPF_JGE, BPF_JSET, BPF_RET = 0x20, 0x15, 0x35, 0x45, 0x06
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
EPERM, ENOSYS = 1, 38


def _seccomp_program(machine: str) -> list:
    """The filter as (code, jt, jf, k) instructions (classic BPF over struct seccomp_data)."""
    numbers = SYSCALLS[machine]
    refused = numbers["refused"]
    program = [
        (BPF_LD_W_ABS, 0, 0, 4),  # arch
        (BPF_JEQ, 1, 0, AUDIT_ARCH[machine]),
        (BPF_RET, 0, 0, RET_ERRNO | EPERM),
        (BPF_LD_W_ABS, 0, 0, 0),  # syscall number
        (BPF_JGE, 0, 1, 0x40000000),  # x32
        (BPF_RET, 0, 0, RET_ERRNO | EPERM),
        (BPF_JEQ, 0, 1, numbers["clone3"]),
        (BPF_RET, 0, 0, RET_ERRNO | ENOSYS),
    ]
    for number in refused:
        program += [(BPF_JEQ, 0, 1, number), (BPF_RET, 0, 0, RET_ERRNO | EPERM)]
    program += [
        (BPF_JEQ, 1, 0, numbers["clone"]),
        (BPF_JEQ, 0, 3, numbers["unshare"]),
        (BPF_LD_W_ABS, 0, 0, 16),  # args[0], low 32 bits (little-endian): the flags
        (BPF_JSET, 0, 1, CLONE_NEWUSER),
        (BPF_RET, 0, 0, RET_ERRNO | EPERM),
        (BPF_RET, 0, 0, RET_ALLOW),
    ]
    return program


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _install_seccomp() -> None:
    """Install the filter on this process (inherited by everything it execs or forks; needs NO_NEW_PRIVS)."""
    machine = os.uname().machine
    if machine not in SYSCALLS:
        raise OSError(f"no seccomp filter for {machine}")
    program = _seccomp_program(machine)
    filters = (_SockFilter * len(program))(*[_SockFilter(*instruction) for instruction in program])
    fprog = _SockFprog(len(program), filters)
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "prctl SECCOMP")


def _seccomp_or_refuse(config: dict, isolation: dict) -> None:
    try:
        _install_seccomp()
        isolation["seccomp"] = True
    except OSError as error:
        isolation["seccomp"] = False
        isolation["missing"].append(
            f"a seccomp filter ({error}): without it the program could open a nested user namespace (mounts "
            "uncounted by the memory limit) or hide memory in memfd pages"
        )
        isolation["level"] = "best_effort"
        if config["isolation_level"] == "strict":
            _refuse(isolation["missing"])


def _drop(uid: "int | None") -> None:
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    # Cleared by a credential change; set again so that this process dies with its parent.
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl PDEATHSIG")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl NO_NEW_PRIVS")


def _place_fds(fds: list) -> None:
    """dup2 `fds` to 3, 4, ... (inheritable), every other descriptor above 2 closed on exec."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10 + len(fds)) for fd in fds]
    for target, fd in enumerate(high, start=3):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)


def _candidate_process(config: dict, isolation: dict, fds: list, error_pipe: int, scratch: str) -> None:
    """Forked by the namespace's first process; never returns. A PID namespace of its own (the judge's processes
    do not exist in it: it cannot signal, trace or read them), its own mount namespace with a fresh /tmp (the
    scratch) and /dev/shm and a /proc of its namespace only; then the program's server, `python -I -c RUNNER`."""
    try:
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl PDEATHSIG")
        drop = isolation["drop_privileges"]
        uid = config["uid"] if drop else None
        namespaced = isolation["namespaces"]
        if namespaced:
            _check(libc.unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC), "unshare for the program")
            pid = os.fork()
            if pid:  # stays in the judge's namespace only to wait and pass on the program's status
                os.close(error_pipe)
                for fd in fds:
                    os.close(fd)
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
                os._exit(code if code >= 0 else 128 - code)
            _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl PDEATHSIG")
            tmpfs = f"size={config['tmpfs_mb']}m,mode=1777"
            _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmpfs)
            _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, tmpfs)
            if isolation.get("proc"):
                _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            scratch = SCRATCH
            os.makedirs(scratch, mode=0o700)
            if uid is not None:
                os.chown(scratch, uid, uid)
        if namespaced:
            # A process group of its own: kill(0, ...) (getppid() is 0 in a namespace's first process) reaches
            # every process of the caller's group across PID namespaces, and the judge is in the launcher's group.
            # (Without namespaces it stays in the group that the evaluator's timeout kills.)
            os.setsid()
        program = os.path.join(scratch, "main.py")
        with open(program, "w") as handle:
            handle.write(config["source"])
        if uid is not None:
            os.chown(program, uid, uid)
        _limits(config)
        _drop(uid)
        _check_visible(config)
        _install_seccomp()  # the namespace's first process checked that it works (see _judged)
        os.chdir(scratch)
        _place_fds(fds)
        python = config["python"]
        os.execve(python, [python, "-I", "-c", config["judge"]["runner"]], {"HOME": scratch})
    except BaseException as error:  # noqa: BLE001 - report any set-up failure, never run unconfined
        with contextlib.suppress(OSError):
            os.write(error_pipe, f"the program's process: {error}".encode())
        os._exit(125)


def _judge_process(config: dict, isolation: dict, fds: list, error_pipe: int, directory: str) -> None:
    """Forked by the namespace's first process; never returns: the task's tests in `python -I judge.py`."""
    try:
        uid = config["uid"] if isolation["drop_privileges"] else None
        _limits(config)
        _drop(uid)
        _install_seccomp()
        os.chdir(directory)
        _place_fds(fds)
        python = config["python"]
        os.execve(python, [python, "-I", "judge.py"], {"HOME": directory})
    except BaseException as error:  # noqa: BLE001
        with contextlib.suppress(OSError):
            os.write(error_pipe, f"the judge's process: {error}".encode())
        os._exit(125)


def _judged(config: dict, isolation: dict, report, verdict, scratch: str) -> None:
    """The namespace's first process, for a judged program: the task's tests run in a process of their own (the
    judge), the program in another (see `_candidate_process`), and they speak only through two pipes, in plain
    data. The judge writes its verdict to `verdict`, which the program's process never holds; this process then
    adds how the program's process ended. Exits with the judge's status."""
    uid = config["uid"] if isolation["drop_privileges"] else None
    try:
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl NO_NEW_PRIVS")
        _seccomp_probe(config, isolation)
        if not isolation["namespaces"]:
            isolation["missing"].append(
                "a judge out of the program's reach (without a PID namespace the program can read the tests)"
            )
        isolation["level"] = "best_effort" if isolation["missing"] else "strict"
        # The judge's directory: in this namespace's /tmp, which the program's own fresh /tmp hides from it.
        directory = os.path.join(os.path.dirname(scratch), "judge")
        os.makedirs(directory, mode=0o700)
        with open(os.path.join(directory, "judge.py"), "w") as handle:
            handle.write(config["judge"]["source"])
        if uid is not None:
            os.chown(directory, uid, uid)
            os.chown(os.path.join(directory, "judge.py"), uid, uid)
        requests_read, requests_write = os.pipe()
        answers_read, answers_write = os.pipe()
        errors_read, errors_write = os.pipe2(os.O_CLOEXEC)
        candidate = os.fork()
        if candidate == 0:
            for fd in (requests_write, answers_read, errors_read):
                os.close(fd)
            report.close()
            verdict.close()
            _candidate_process(config, isolation, [requests_read, answers_write], errors_write, scratch)
        judge = os.fork()
        if judge == 0:
            for fd in (requests_read, answers_write, errors_read):
                os.close(fd)
            report.close()
            _judge_process(config, isolation, [requests_write, answers_read, verdict.fileno()], errors_write, directory)
        for fd in (requests_read, answers_write, requests_write, answers_read, errors_write):
            os.close(fd)
        failure = b""
        while chunk := os.read(errors_read, 4096):  # EOF once both exec'd (close-on-exec) or died
            failure += chunk
        os.close(errors_read)
        if failure:
            raise OSError(failure.decode(errors="replace"))
        report.write(json.dumps(isolation))
        report.close()
    except BaseException as error:  # noqa: BLE001 - a set-up failure: no report, the evaluator raises
        sys.stderr.write(f"layerprune sandbox set-up failed: {error}\n")
        sys.stderr.flush()
        os._exit(125)
    # Whichever ends first: the judge (its verdict is in; the program's process is then killed) or the program's
    # process (then the judge sees its pipe close and says so).
    statuses: dict = {}
    candidate_first = None
    while judge not in statuses:
        pid, status = os.waitpid(-1, 0)
        if pid in (judge, candidate):
            statuses[pid] = status
            if candidate_first is None:
                candidate_first = pid == candidate
    if candidate not in statuses:
        with contextlib.suppress(ProcessLookupError):
            os.kill(candidate, signal.SIGKILL)
        statuses[candidate] = os.waitpid(candidate, 0)[1]
    status = statuses[candidate]
    ended = {"exit": os.WEXITSTATUS(status)} if os.WIFEXITED(status) else {"signal": os.WTERMSIG(status)}
    if not candidate_first:
        ended = {"killed_after_verdict": True}
    verdict.write("\n" + json.dumps({"program": ended}) + "\n")
    verdict.close()
    code = os.waitstatus_to_exitcode(statuses[judge])
    os._exit(code if code >= 0 else 128 - code)


def _seccomp_probe(config: dict, isolation: dict) -> None:
    """Whether this kernel takes the filter, tried in a throwaway child (the children install it for real)."""
    pid = os.fork()
    if pid == 0:
        try:
            _install_seccomp()
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        isolation["seccomp"] = False
        isolation["missing"].append("a seccomp filter (the kernel refused it)")
        if config["isolation_level"] == "strict":
            _refuse(isolation["missing"])
    else:
        isolation["seccomp"] = True


def _check_visible(config: dict) -> None:
    """As the sandbox's user: every needed directory is readable, and the stdlib is there."""
    for path in config["needed_paths"]:
        if not (os.path.isdir(path) and os.access(path, os.R_OK | os.X_OK)):
            raise OSError(f"needed directory {path} is not visible to the sandbox's user {os.getuid()}")
    stdlib_os = os.path.join(config["stdlib"], "os.py")
    if not os.access(stdlib_os, os.R_OK):
        raise OSError(f"the standard library ({stdlib_os}) is not readable by the sandbox's user {os.getuid()}")


def _limits(config: dict) -> None:
    mb = 1 << 20
    cpu = int(config["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (config["memory_mb"] * mb, config["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (config["file_size_mb"] * mb, config["file_size_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_NPROC, (config["nproc"], config["nproc"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _marker_fds(config: dict) -> "tuple[int, int] | None":
    """(read end of a pipe holding the nonce, the marker file opened for writing), or None without a marker."""
    nonce = config.get("nonce")
    if nonce is None:
        return None
    marker = os.open(config["marker_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    read_end, write_end = os.pipe()
    os.write(write_end, nonce.encode())
    os.close(write_end)
    return read_end, marker


def _place_marker_fds(config: dict, fds: "tuple[int, int] | None") -> None:
    """Move the marker's fds to the numbers the program expects (inherited across exec, unlike all others)."""
    if fds is None:
        return
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds]  # out of the way of the targets first
    for fd in fds:
        os.close(fd)
    for fd, target in zip(high, (config["nonce_fd"], config["marker_fd"]), strict=True):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)


def _kernel_counts_processes_per_user_namespace() -> bool:
    """Linux >= 5.14 counts RLIMIT_NPROC per (user namespace, uid): a sandbox's own user namespace then holds
    its own count, which other processes of the same user (a fork bomb in the next sandbox) do not fill."""
    release = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return bool(release) and (int(release.group(1)), int(release.group(2))) >= (5, 14)


def _refuse(missing: list) -> None:
    """Strict isolation was asked for and this machine cannot give it: stop before anything runs."""
    sys.stderr.write(
        f"{UNAVAILABLE}: {'; '.join(missing)}. Run as root, enable unprivileged user namespaces, or accept weaker "
        "isolation explicitly with the setting `evaluation.sandbox.isolation: best_effort`\n"
    )
    sys.stderr.flush()
    os._exit(126)


def _child(config: dict, isolation: dict, report, marker_fds, verdict) -> None:
    """Runs as the first process of the new PID namespace; never returns."""
    try:
        # First: the launcher's death (SIGKILL of the evaluator, then of the launcher) takes this whole PID
        # namespace down with it. Set again after the credential change, which clears it.
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl PDEATHSIG")
        if not isolation["namespaces"] and os.getppid() != config["launcher_pid"]:  # (pid 1 has no parent to ask)
            os._exit(125)  # the launcher already died
        namespaced = isolation["namespaces"]
        drop = isolation["drop_privileges"]
        uid = config["uid"]
        scratch = SCRATCH if namespaced else config["fallback_scratch"]
        if namespaced:
            try:
                isolation.update(_private_root(config, uid if drop else None))
            except OSError as error:
                isolation["missing"].append(f"a private root (it failed: {error})")
                if config["isolation_level"] == "strict":
                    _refuse(isolation["missing"])
                _mount(None, "/", None, MS_REC | MS_PRIVATE)  # never let a mount below reach the host
                _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={config['tmpfs_mb']}m,mode=1777")
                os.makedirs(scratch, mode=0o700)
                if drop:
                    os.chown(scratch, uid, uid)
        if config.get("judge") is not None:
            _judged(config, isolation, report, verdict, scratch)  # never returns
        isolation["level"] = "best_effort" if isolation["missing"] else "strict"
        program = os.path.join(scratch, "main.py")
        with open(program, "w") as handle:
            handle.write(config["source"])
        if drop:
            os.chown(program, uid, uid)
        _limits(config)
        if drop:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        _check_visible(config)
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl PDEATHSIG")
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl NO_NEW_PRIVS")
        _seccomp_or_refuse(config, isolation)
        report.write(json.dumps(isolation))
        report.close()
        os.chdir(scratch)
        _place_marker_fds(config, marker_fds)
        python = config["python"]
        os.execve(python, [python, "-I", "main.py"], {"HOME": scratch})
    except BaseException as error:  # noqa: BLE001 - report any set-up failure, never run unconfined
        sys.stderr.write(f"layerprune sandbox set-up failed: {error}\n")
        sys.stderr.flush()
        os._exit(125)


def main() -> None:
    with open(sys.argv[1]) as handle:
        config = json.load(handle)
    with contextlib.suppress(OSError):  # it holds the nonce: the program must not find it
        os.unlink(sys.argv[1])
    # Die with the evaluator, whoever kills it (it started us in a session of our own, out of its group's reach).
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl PDEATHSIG")
    if os.getppid() != config["parent_pid"]:
        os._exit(125)  # the evaluator died before the line above
    config["launcher_pid"] = os.getpid()
    # Opened before the mounts hide the parent's work directory.
    report = open(config["isolation_file"], "w")  # noqa: SIM115
    marker_fds = _marker_fds(config)
    # Appended to by the judge and then by the namespace's first process (O_APPEND: one shared file offset is moot).
    verdict = open(config["judge"]["verdict_file"], "a") if config.get("judge") else None  # noqa: SIM115
    root = os.geteuid() == 0
    isolation = {
        "required": config["isolation_level"],
        "namespaces": False,
        "network": False,
        "private_root": False,
        "drop_privileges": False,
        "own_process_count": False,
        "user": os.geteuid(),
        "missing": [],
    }
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
    # Joined before anything else (even the namespaces), so that every process and byte after counts. (As root a
    # group per sandbox; as a user, one in the cgroup subtree the system delegated to the user, where it did.)
    for procs in config["cgroup_procs"]:
        with open(procs, "w") as handle:
            handle.write("0")
    if root:
        if config["uid"] is None:
            raise SystemExit("layerprune sandbox set-up failed: as root the parent must lease a uid")
        _check(libc.unshare(flags), "unshare")
        isolation.update(namespaces=True, network=True, drop_privileges=True, own_process_count=True)
        isolation["user"] = config["uid"]
    else:
        uid, gid = os.geteuid(), os.getegid()
        try:
            _check(libc.unshare(flags | CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as handle:
                    handle.write(text)
            isolation.update(namespaces=True, network=True)
        except OSError as error:
            isolation["missing"].append(
                f"user namespaces ({error}): without them the program would see your home directory, the "
                "network and your processes"
            )
        if isolation["namespaces"] and _kernel_counts_processes_per_user_namespace():
            isolation["own_process_count"] = True
        elif isolation["namespaces"]:
            isolation["missing"].append(
                f"a process count of its own (Linux {os.uname().release} counts RLIMIT_NPROC across all your "
                "processes; 5.14 and later count it per user namespace)"
            )
        if isolation["missing"] and config["isolation_level"] == "strict":
            _refuse(isolation["missing"])
        if not isolation["namespaces"]:  # no PID namespace: orphans must still re-parent to us, for the watchdog
            _check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl CHILD_SUBREAPER")
    pid = os.fork()
    if pid == 0:
        _child(config, isolation, report, marker_fds, verdict)
    report.close()
    if verdict is not None:
        verdict.close()
    if marker_fds is not None:
        for fd in marker_fds:
            os.close(fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
