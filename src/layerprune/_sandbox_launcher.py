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
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
WRITABLE_DIRS = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"]
SCRATCH = "/tmp/scratch"

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


def _closed_ancestor(path: str) -> "str | None":
    """The topmost proper ancestor of `path` that others may not enter (mode without o+x), if any."""
    parts = path.rstrip("/").split("/")
    for i in range(2, len(parts)):
        ancestor = "/".join(parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def _expose(paths: list, drop: bool, tmpfs_mb: int) -> None:
    """Mount the world's writable dirs over with tmpfs, keeping each needed path visible read-only at its place.

    Each needed directory is opened (O_PATH) before anything is mounted over it, and bound back from
    /proc/self/fd afterwards, so that it survives a tmpfs over /tmp or over a closed ancestor.
    """
    covered = [d for d in WRITABLE_DIRS if os.path.isdir(d)]
    hidden, closed = [], []
    for path in paths:
        if not os.path.isdir(path):
            continue
        ancestor = _closed_ancestor(path) if drop else None
        if any(_inside(path, d) for d in covered) or ancestor:
            hidden.append(path)
        if ancestor and not any(_inside(ancestor, d) for d in covered):
            closed.append(ancestor)
    closed = sorted(a for a in set(closed) if not any(_inside(a, b) and a != b for b in closed))
    hidden = sorted(p for p in set(hidden) if not any(_inside(p, q) and p != q for q in hidden))
    for path in hidden:
        if any(path == d for d in covered + closed):
            raise OSError(f"{path} is a directory the sandbox replaces; it cannot stay visible inside")
    handles = {path: os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for path in hidden}
    for directory in covered:
        _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=1777")
    for directory in closed:
        _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path, handle in handles.items():
        old_umask = os.umask(0o022)
        os.makedirs(path, mode=0o755, exist_ok=True)
        os.umask(old_umask)
        _mount(f"/proc/self/fd/{handle}", path, None, MS_BIND | MS_REC)
        _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.close(handle)


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


def _child(config: dict, isolation: dict, report, marker_fds) -> None:
    """Runs as the first process of the new PID namespace; never returns."""
    try:
        privileged = isolation["namespaces"]
        drop = isolation["drop_privileges"]
        scratch = SCRATCH if privileged else config["fallback_scratch"]
        if privileged:
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            _expose(config["needed_paths"], drop, config["tmpfs_mb"])
            try:
                _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                isolation["proc"] = True
            except OSError:
                isolation["proc"] = False
            os.makedirs(scratch, mode=0o700)
        program = os.path.join(scratch, "main.py")
        with open(program, "w") as handle:
            handle.write(config["source"])
        uid = config["uid"]
        if drop:
            os.chown(scratch, uid, uid)
            os.chown(program, uid, uid)
        _limits(config)
        if drop:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        _check_visible(config)
        report.write(json.dumps(isolation))
        report.close()
        # After the credential change (which clears it): die with the launcher.
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl PDEATHSIG")
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl NO_NEW_PRIVS")
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
    # Opened before the mounts hide the parent's work directory.
    report = open(config["isolation_file"], "w")  # noqa: SIM115
    marker_fds = _marker_fds(config)
    root = os.geteuid() == 0
    isolation = {"namespaces": False, "network": False, "drop_privileges": False, "user": os.geteuid()}
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID
    if root:
        if config["uid"] is None:
            raise SystemExit("layerprune sandbox set-up failed: as root the parent must lease a uid")
        # Joined before anything else (even the namespaces), so that every process and byte after counts.
        for procs in config["cgroup_procs"]:
            with open(procs, "w") as handle:
                handle.write("0")
        _check(libc.unshare(flags), "unshare")
        isolation.update(namespaces=True, network=True, drop_privileges=True, user=config["uid"])
    else:
        uid, gid = os.geteuid(), os.getegid()
        if libc.unshare(flags | CLONE_NEWUSER) == 0:
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as handle:
                    handle.write(text)
            isolation.update(namespaces=True, network=True)
        else:  # no PID namespace: orphans must still re-parent to us, for the parent's memory watchdog
            _check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl CHILD_SUBREAPER")
    pid = os.fork()
    if pid == 0:
        _child(config, isolation, report, marker_fds)
    report.close()
    if marker_fds is not None:
        for fd in marker_fds:
            os.close(fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
