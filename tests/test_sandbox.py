"""Hostile programs in the sandbox: each is contained, and the suite finishes.

These run real programs under the real launcher (namespaces, rlimits, `nobody`),
with tight limits so that a failure of containment cannot hurt the machine.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from layerprune.sandbox import SandboxLimits, run_program

TIGHT = SandboxLimits(timeout_s=5, cpu_s=5, memory_mb=512, file_size_mb=1, nproc=8, tmpfs_mb=8)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="full isolation (namespaces, nobody) is set up as root")


def _nobody_processes() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == 65534:
                    pids.add(int(entry.name))
            except FileNotFoundError:
                pass
    return pids


def test_ordinary_program_runs_and_reports():
    result = run_program("print(sum(range(10)))\n", TIGHT)
    assert result.passed and result.stdout.strip() == "45"
    failing = run_program("assert 1 == 2\n", TIGHT)
    assert not failing.passed and failing.returncode == 1 and "AssertionError" in failing.stderr


def test_infinite_loop_is_killed_at_the_wall_clock_limit():
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", SandboxLimits(timeout_s=2, cpu_s=60, nproc=8))
    assert result.timed_out and not result.passed
    assert time.monotonic() - start < 10


def test_cpu_limit_kills_a_busy_program_before_the_wall_clock():
    result = run_program("while True:\n    pass\n", SandboxLimits(timeout_s=30, cpu_s=1, nproc=8))
    assert not result.timed_out and not result.passed and result.returncode != 0


@needs_root
def test_fork_bomb_is_contained_and_leaves_no_process():
    before = _nobody_processes()
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = run_program(bomb, SandboxLimits(timeout_s=3, cpu_s=3, memory_mb=256, nproc=8))
    assert not result.passed
    deadline = time.monotonic() + 10  # the kernel tears the PID namespace down asynchronously
    while not _nobody_processes() <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _nobody_processes() <= before, "processes of the fork bomb outlived the sandbox"


def test_ten_gigabyte_allocation_fails_inside():
    result = run_program("x = bytearray(10 * 1024 ** 3)\nprint('allocated')\n", TIGHT)
    assert not result.passed and "allocated" not in result.stdout and "MemoryError" in result.stderr


@needs_root
def test_write_outside_scratch_does_not_land(tmp_path):
    targets = [tmp_path / "escape.txt", Path(f"/tmp/layerprune-escape-{uuid.uuid4().hex}"), Path.cwd() / "escape.txt"]
    program = (
        "import os\n"
        f"for path in {[str(t) for t in targets]!r}:\n"
        "    try:\n"
        "        open(path, 'w').write('escaped')\n"
        "        print('wrote', path)\n"
        "    except OSError as error:\n"
        "        print('blocked', path, error)\n"
        "open('inside.txt', 'w').write('fine')\n"
        "print('scratch', os.getcwd(), os.environ['HOME'])\n"
    )
    result = run_program(program, TIGHT)
    assert result.passed, result.stderr
    for target in targets:
        assert not target.exists(), f"the sandboxed program wrote {target}"


def test_large_file_in_scratch_hits_the_file_size_limit():
    result = run_program("open('big', 'wb').write(b'x' * (8 << 20))\n", TIGHT)
    assert not result.passed


def test_parent_environment_secret_is_not_visible(monkeypatch):
    secret = f"layerprune-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("LAYERPRUNE_TEST_SECRET", secret)
    program = (
        "import os, glob\n"
        "print(dict(os.environ))\n"
        "for path in glob.glob('/proc/*/environ'):\n"
        "    try:\n"
        "        print(open(path, 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
    )
    result = run_program(program, TIGHT)
    assert result.passed, result.stderr
    assert secret not in result.stdout and "LAYERPRUNE_TEST_SECRET" not in result.stdout
    assert set(eval(result.stdout.splitlines()[0])) <= {"HOME", "LC_CTYPE"}  # LC_CTYPE: Python's own C-locale coercion


@needs_root
def test_socket_to_a_listening_localhost_port_fails():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        program = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    print('connected')\n"
            "except OSError as error:\n"
            "    print('blocked', error)\n"
        )
        result = run_program(program, TIGHT)
        # the control: the listening socket is reachable from outside the sandbox
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert result.passed, result.stderr
    assert result.stdout.startswith("blocked"), result.stdout
    assert result.isolation["network"]
