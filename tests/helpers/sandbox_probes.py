"""Programs that try to pass the sandbox's grading or get past its memory limit, and what grading them must give.

The cheats follow (or replace) a wrong completion of a HumanEval problem; test_sandbox_cheats grades them as root,
test_sandbox_users as a non-root user. The memory probe is run by test_sandbox and, as a user, test_sandbox_users.
"""

from __future__ import annotations

import json

# A wrong completion, which every cheat below follows or replaces.
WRONG = "    return None\n\n\n"

# Finds a 32-hex-digit nonce wherever the old harness kept one, writes it to fd 4 (the old marker) and exits 0.
FRAMES = """\
import os, sys
def _steal():
    frame = sys._getframe(1)
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if isinstance(value, bytes) and len(value) == 32:
                os.write(4, value)
                os._exit(0)
        frame = frame.f_back
"""

# The ways to reach into the harness (issue 27), by name.
CHEATS = {
    # the returned object equals anything
    "always-true __eq__": (
        "    class Anything:\n        def __eq__(self, other):\n            return True\n"
        "        __ne__ = lambda self, other: False\n        __bool__ = lambda self: True\n    return Anything()\n"
    ),
    # the harness's compile() of the tests gets an empty module instead
    "replaced builtins.compile": WRONG
    + "import builtins\n_compile = builtins.compile\n"
    + "builtins.compile = lambda source, name, mode, *a, **k: _compile('pass', name, mode)\n"
    + "def check(candidate):\n    pass\n",
    # the harness's exec() of the tests does nothing, and `check` is the program's own
    "replaced builtins.exec": WRONG
    + "import builtins\nbuiltins.exec = lambda *args, **kwargs: None\ndef check(candidate):\n    pass\n",
    "nonce from the harness's frame, module level": WRONG + FRAMES + "_steal()\n",
    "nonce from the harness's frame, in the call": FRAMES.replace("import os, sys", "    import os, sys").replace(
        "\n", "\n    "
    )
    + "_steal()\n    return None\n",
    "nonce scanned in /proc/self/mem": WRONG
    + """\
import os, re
with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
    for line in maps:
        span, perms = line.split()[:2]
        start, end = (int(x, 16) for x in span.split("-"))
        if not perms.startswith("rw") or end - start > 1 << 26:
            continue
        try:
            mem.seek(start)
            chunk = mem.read(end - start)
        except OSError:
            continue
        for match in re.finditer(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])", chunk):
            try:
                os.write(4, match.group())
            except OSError:
                pass
os._exit(0)
""",
    # a trace function that jumps over the tests to the last assert of `check` (HumanEval/146's last assert,
    # `candidate([]) == 0`, is one that `return 0` passes)
    "sys.settrace jumps to the last assert": "    return 0\n\n\n"
    + """\
import sys
def _local(frame, event, arg):
    if event == "line" and frame.f_code.co_name == "check":
        last = max(line for _, _, line in frame.f_code.co_lines() if line is not None)
        if frame.f_lineno < last:
            try:
                frame.f_lineno = last
            except ValueError:
                pass
    return _local
def _global(frame, event, arg):
    return _local if frame.f_code.co_name == "check" else None
sys.settrace(_global)
""",
}

# The early exits (issue 17), by name: each follows WRONG in STRATEGIES.
EXITS = {
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "exit()": "exit()\n",
    "quit()": "quit()\n",
    "raise SystemExit": "raise SystemExit\n",
    "os._exit(0)": "import os\nos._exit(0)\n",
    "posix._exit(0)": "import posix\nposix._exit(0)\n",
    "os.execv a program that exits 0": "import os, sys\nos.execv(sys.executable, [sys.executable, '-c', 'print(1)'])\n",
    "sys.excepthook exits 0": "import os, sys\nsys.excepthook = lambda *args: os._exit(0)\n",
    "atexit os._exit(0)": "import atexit, os\natexit.register(os._exit, 0)\n",
    "a thread exits 0 mid-test": "import os, threading, time\n"
    "threading.Thread(target=lambda: (time.sleep(0.05), os._exit(0)), daemon=True).start()\n",
    "SIGALRM exits 0": "import os, signal\nsignal.signal(signal.SIGALRM, lambda *a: os._exit(0))\n"
    "signal.setitimer(signal.ITIMER_REAL, 0.01)\nimport time\ntime.sleep(1)\n",
    "fake output": "print('pass')\nprint('0' * 32)\nprint('All tests passed')\n",
    "a guessed nonce on fd 4": "import os\nos.write(4, b'0' * 32)\nos._exit(0)\n",
    "the nonce read from fd 3": "import os\nos.set_blocking(3, False)\n"
    "try:\n    os.write(4, os.read(3, 64))\nexcept OSError:\n    pass\nos._exit(0)\n",
    "hunting the parent": "import os, signal\nfor pid in range(1, 400):\n    if pid != os.getpid():\n"
    "        try:\n            os.kill(pid, signal.SIGKILL)\n        except OSError:\n            pass\n",
    "an own check": "def check(candidate):\n    pass\n",
    "a patched AssertionError": "import builtins\nbuiltins.AssertionError = type('AssertionError', (Exception,), {})\n",
    "killing itself": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "killing its parent (and its group)": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
    "os.kill(0, signal.SIGKILL)\n",
    "os.write patched, then exit": "import os, sys\nos.write = lambda *args: 0\nsys.exit(0)\n",
}
# Every cheating program by name: what must be graded a failure, one of FAILED.
STRATEGIES = {**CHEATS, **{f"exit: {name}": WRONG + code for name, code in EXITS.items()}}
FAILED = {"wrong_answer", "runtime_error", "early_exit"}


# Issue 27's two ways past the memory limit as a user, and shared memory: each tries to hold 512 MB (the limit is
# 256 MB) where no process's resident memory shows it, and prints how far it got.
MEMORY_PROBE = """\
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
chunk, outcome, keep = b"x" * (1 << 20), {}, []
def fill(new_file, name):
    # 8 MB per file (RLIMIT_FSIZE stops one file at file_size_mb), up to 512 MB in all
    stored = 0
    try:
        while stored < 512:
            fd = new_file(len(keep))
            keep.append(fd)
            for _ in range(8):
                os.write(fd, chunk)
                stored += 1
    except OSError as error:
        outcome[name + " stopped"] = error.strerror
    outcome[name + " MB"] = stored
try:
    fill(lambda i: os.memfd_create("hidden%d" % i), "memfd")
except OSError as error:
    outcome["memfd"] = "refused: " + error.strerror
for fd in keep:
    os.close(fd)
keep.clear()
if libc.unshare(0x10000000 | 0x00020000) != 0:  # a nested user and mount namespace, for a tmpfs of its own
    outcome["nested user namespace"] = "refused: " + os.strerror(ctypes.get_errno())
else:
    os.makedirs("/tmp/big", exist_ok=True)
    if libc.mount(b"tmpfs", b"/tmp/big", b"tmpfs", 0, b"size=100%") != 0:
        outcome["tmpfs"] = "refused: " + os.strerror(ctypes.get_errno())
    else:
        fill(lambda i: os.open("/tmp/big/f%d" % i, os.O_WRONLY | os.O_CREAT), "nested tmpfs")
for fd in keep:
    os.close(fd)
fill(lambda i: os.open("/dev/shm/f%d" % i, os.O_WRONLY | os.O_CREAT), "/dev/shm")
print(json.dumps(outcome))
"""


def check_memory_probe(passed: bool, stdout: str, limit_mb: int, tmpfs_mb: int) -> None:
    """Neither memfd nor a nested user namespace is there to use; /dev/shm holds at most its tmpfs."""
    if not passed and not stdout.strip():
        return  # killed over the limit before it could say anything: the limit held
    outcome = json.loads(stdout.strip().splitlines()[-1])
    assert outcome.get("memfd MB", 0) == 0, outcome
    assert outcome.get("nested user namespace", "").startswith("refused"), outcome
    assert outcome.get("/dev/shm MB", 0) <= tmpfs_mb < limit_mb, outcome
