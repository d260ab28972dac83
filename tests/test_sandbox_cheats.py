"""Wrong answers that try to be graded `pass`: every one is graded a failure, as root and as a non-root user.

Each strategy follows (or replaces) a wrong completion of HumanEval/0 (`has_close_elements`). The seven "reach into
the harness" strategies of issue 27 were graded `pass` when the tests ran in the program's own interpreter; the
early exits were graded `pass` before the completion marker (issue 17). Now the tests run in a judge process the
program cannot reach (docs/sandbox.md), so none of them can.
"""

from __future__ import annotations

import pytest

from layerprune.graders import grade_code
from layerprune.sandbox import SandboxLimits
from layerprune.tasks import prepare_task_spec

LIMITS = SandboxLimits(timeout_s=20, cpu_s=10, memory_mb=512)
WRONG = "    return None\n\n\n"

# Finds a 32-hex-digit nonce wherever the old harness kept one, writes it to fd 4 (the old marker) and exits 0.
_FRAMES = """\
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
    "nonce from the harness's frame, module level": WRONG + _FRAMES + "_steal()\n",
    "nonce from the harness's frame, in the call": _FRAMES.replace("import os, sys", "    import os, sys").replace(
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
STRATEGIES = {**CHEATS, **{f"exit: {name}": WRONG + code for name, code in EXITS.items()}}
FAILED = {"wrong_answer", "runtime_error", "early_exit"}
# Those that end the program's process at module level, unconditionally. (The others wait for an event that the
# judge's process does not give them, an exception or the end of the tests, or do not exit: wrong_answer.)
ENDS_BEFORE_THE_TESTS = {
    f"exit: {name}"
    for name in EXITS
    if name not in ("sys.excepthook exits 0", "atexit os._exit(0)", "a thread exits 0 mid-test", "fake output")
    and name not in ("hunting the parent", "an own check", "a patched AssertionError")
    # the program's process is the first of its PID namespace: a signal it sends itself is ignored, as for init
    and not name.startswith("killing")
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("he")
    spec = {"type": "generative", "dataset": "humaneval", "num_fewshot": 0, "limit": 1}
    sample = prepare_task_spec(spec, tmp, 0, tmp / "t.json")["samples"][0]
    assert sample["id"] == "HumanEval/146"  # the settrace strategy is written for its tests
    return sample


def test_the_correct_answer_passes(sample):
    graded = grade_code(sample, sample["solution"], chat=False, limits=LIMITS)
    assert graded["error_bucket"] == "pass", graded["stderr_tail"]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_cheating_wrong_answer_fails(sample, strategy):
    graded = grade_code(sample, STRATEGIES[strategy], chat=False, limits=LIMITS)
    assert graded["error_bucket"] in FAILED, (strategy, graded["error_bucket"], graded["stderr_tail"])
    assert graded["completed"] is False
    if strategy in ENDS_BEFORE_THE_TESTS:
        # an end of the program's process before the tests were done, whatever form it took
        assert graded["error_bucket"] == "early_exit", (strategy, graded["stderr_tail"])
