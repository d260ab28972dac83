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
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
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


def _child(config: dict, isolation: dict, report, marker_fds) -> None:
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
        report.write(json.dumps(isolation))
        report.close()
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
    # Die with the evaluator, whoever kills it (it started us in a session of our own, out of its group's reach).
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl PDEATHSIG")
    if os.getppid() != config["parent_pid"]:
        os._exit(125)  # the evaluator died before the line above
    config["launcher_pid"] = os.getpid()
    # Opened before the mounts hide the parent's work directory.
    report = open(config["isolation_file"], "w")  # noqa: SIM115
    marker_fds = _marker_fds(config)
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
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID
    if root:
        if config["uid"] is None:
            raise SystemExit("layerprune sandbox set-up failed: as root the parent must lease a uid")
        # Joined before anything else (even the namespaces), so that every process and byte after counts.
        for procs in config["cgroup_procs"]:
            with open(procs, "w") as handle:
                handle.write("0")
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
