"""Launcher for one sandboxed program (run as `python -I -S _sandbox_launcher.py CONFIG.json`).

It is a separate, freshly exec'd interpreter (no threads, nothing of the parent's
state), so the privileged set-up below does not run inside a forked copy of a
multi-threaded torch process. Only the standard library is used.

As root (the usual case in containers) it:

1. enters new mount, network and PID namespaces (no network: the new namespace
   has only a downed loopback; the PID namespace dies with its first process,
   taking every descendant with it, so nothing can outlive the time limit);
2. mounts fresh tmpfs over the world-writable directories (/tmp, /var/tmp,
   /dev/shm, /run/lock) and makes one of them the scratch directory, and a fresh
   /proc; the interpreter's installation is re-exposed read-only when it lives
   under a directory `nobody` cannot enter (e.g. pyenv under /root), which also
   hides the rest of that directory;
3. sets resource limits (CPU, address space, file size, processes, open files,
   no core dumps) and drops to the `nobody` user, because the kernel does not
   enforce RLIMIT_NPROC for uid 0;
4. execs `python -I main.py` in the scratch directory with an environment that
   holds HOME only.

As any other user it tries an unprivileged user namespace for the same mount,
network and PID isolation, and otherwise applies the resource limits alone.
What it achieved is written to the `isolation_file` of the config.
"""

import ctypes
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
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
NOBODY = 65534
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


def _expose(prefix: str) -> None:
    """Re-expose `prefix` read-only if some ancestor is closed to others (mode without o+x)."""
    parts = prefix.rstrip("/").split("/")
    closed = None
    for i in range(2, len(parts)):
        ancestor = "/".join(parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            closed = ancestor
            break
    if closed is None:
        return
    holder = "/tmp/.layerprune-python"
    os.mkdir(holder)
    _mount(prefix, holder, None, MS_BIND | MS_REC)
    _mount("tmpfs", closed, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    os.makedirs(prefix, exist_ok=True)
    _mount(holder, prefix, None, MS_BIND | MS_REC)
    _mount(None, prefix, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _limits(config: dict) -> None:
    mb = 1 << 20
    cpu = int(config["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (config["memory_mb"] * mb, config["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (config["file_size_mb"] * mb, config["file_size_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_NPROC, (config["nproc"], config["nproc"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _child(config: dict, isolation: dict, report) -> None:
    """Runs as the first process of the new PID namespace; never returns."""
    try:
        privileged = isolation["namespaces"]
        scratch = SCRATCH if privileged else config["fallback_scratch"]
        if privileged:
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            for directory in WRITABLE_DIRS:
                if os.path.isdir(directory):
                    _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, f"size={config['tmpfs_mb']}m,mode=1777")
            try:
                _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                isolation["proc"] = True
            except OSError:
                isolation["proc"] = False
            if isolation["drop_to_nobody"]:
                _expose(config["python_prefix"])
            os.makedirs(scratch, mode=0o700)
        program = os.path.join(scratch, "main.py")
        with open(program, "w") as handle:
            handle.write(config["source"])
        if isolation["drop_to_nobody"]:
            os.chown(scratch, NOBODY, NOBODY)
            os.chown(program, NOBODY, NOBODY)
        report.write(json.dumps(isolation))
        report.close()
        _limits(config)
        if isolation["drop_to_nobody"]:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        # After the credential change (which clears it): die with the launcher.
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl PDEATHSIG")
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl NO_NEW_PRIVS")
        os.chdir(scratch)
        python = config["python"]
        os.execve(python, [python, "-I", "main.py"], {"HOME": scratch})
    except BaseException as error:  # noqa: BLE001 - report any set-up failure, never run unconfined
        sys.stderr.write(f"layerprune sandbox set-up failed: {error!r}\n")
        sys.stderr.flush()
        os._exit(125)


def main() -> None:
    with open(sys.argv[1]) as handle:
        config = json.load(handle)
    # Opened before the mounts hide the parent's work directory.
    report = open(config["isolation_file"], "w")  # noqa: SIM115
    root = os.geteuid() == 0
    isolation = {"namespaces": False, "network": False, "drop_to_nobody": False, "user": os.geteuid()}
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID
    if root:
        _check(libc.unshare(flags), "unshare")
        isolation.update(namespaces=True, network=True, drop_to_nobody=True, user=NOBODY)
    else:
        uid, gid = os.geteuid(), os.getegid()
        if libc.unshare(flags | CLONE_NEWUSER) == 0:
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as handle:
                    handle.write(text)
            isolation.update(namespaces=True, network=True)
    pid = os.fork()
    if pid == 0:
        _child(config, isolation, report)
    report.close()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
