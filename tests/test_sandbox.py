"""Hostile programs in the sandbox: each is contained, and the suite finishes.

These run real programs under the real launcher (namespaces, cgroups, rlimits,
a user of the sandbox's own), with tight limits so that a failure of containment
cannot hurt the machine. Where a mechanism has a fallback (no writable cgroups),
the test runs both ways (`LAYERPRUNE_SANDBOX_CGROUPS=0` forces the fallback).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from helpers.sandbox_probes import MEMORY_PROBE, check_memory_probe

import layerprune
from layerprune.evaluation.graders import grade_code
from layerprune.evaluation.sandbox import SandboxLimits, run_program, site_packages
from layerprune.evaluation.tasks import prepare_task_spec

TIGHT = SandboxLimits(timeout_s=5, cpu_s=5, memory_mb=512, file_size_mb=1, nproc=8, tmpfs_mb=8)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="full isolation (namespaces, own uid) is set up as root")
FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"


@pytest.fixture(params=["cgroups", "fallback"])
def mechanism(request, monkeypatch):
    """Each test that takes this runs with per-sandbox cgroups and with the uid/watchdog fallback."""
    if request.param == "fallback":
        monkeypatch.setenv("LAYERPRUNE_SANDBOX_CGROUPS", "0")
    return request.param


def _sandbox_processes() -> dict[int, set[int]]:
    """Uid -> pids of processes of sandbox users: `nobody` (before 0bcd45e) or the sandbox uid range.

    Grouped by uid, so that a test can tell its own sandbox's processes from those of sandboxes
    that other tests (another pytest-xdist worker) run at the same time."""
    by_uid: dict[int, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                uid = entry.stat().st_uid
            except FileNotFoundError:
                continue
            if uid == 65534 or uid >= 1_000_000_000:
                by_uid.setdefault(uid, set()).add(int(entry.name))
    return by_uid


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
def test_fork_bomb_is_contained_and_leaves_no_process(mechanism):
    result = run_program(FORK_BOMB, SandboxLimits(timeout_s=3, cpu_s=3, memory_mb=256, nproc=8))
    assert not result.passed
    uid = result.isolation["uid"]
    assert uid is not None and uid >= 1_000_000_000, result.isolation
    deadline = time.monotonic() + 10  # the kernel tears the PID namespace down asynchronously
    while _sandbox_processes().get(uid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _sandbox_processes().get(uid), "processes of the fork bomb outlived the sandbox"


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


@pytest.fixture(scope="module")
def humaneval_samples(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("he")
    spec = {"type": "generative", "dataset": "humaneval", "num_fewshot": 0, "limit": 8}
    return prepare_task_spec(spec, tmp, 0, tmp / "t.json")["samples"]


@pytest.mark.slow  # waits out a 25 s fork bomb, per mechanism
@needs_root
def test_a_fork_bomb_does_not_fail_correct_programs_in_concurrent_sandboxes(humaneval_samples, mechanism):
    # Each sandbox may hold 8 processes: before 0bcd45e they all counted against the one user `nobody`.
    bomb_limits = SandboxLimits(timeout_s=25, cpu_s=25, memory_mb=256, nproc=8)
    bomb = threading.Thread(target=run_program, args=(FORK_BOMB, bomb_limits))
    bomb.start()
    deadline = time.monotonic() + 20

    def bomb_filled_its_limit() -> bool:
        # One uid holding nproc - 1 processes is the bomb (a grader's program runs as one process). Its first
        # process changed its uid before exec, so it is non-dumpable and /proc shows it as root's.
        return any(len(pids) >= bomb_limits.nproc - 1 for uid, pids in _sandbox_processes().items() if uid != 65534)

    while not bomb_filled_its_limit() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert bomb_filled_its_limit(), "the fork bomb never filled its limit"

    limits = SandboxLimits(timeout_s=60, cpu_s=20, memory_mb=512, nproc=8)
    verdicts: dict[str, dict] = {}

    def grade(samples: list[dict]) -> None:
        for sample in samples:
            verdicts[sample["id"]] = grade_code(sample, sample["solution"], chat=False, limits=limits)

    graders = [threading.Thread(target=grade, args=(humaneval_samples[i::4],)) for i in range(4)]
    start = time.monotonic()
    for thread in graders:
        thread.start()
    for thread in graders:
        thread.join()
    graders_s = time.monotonic() - start
    bomb_outlived_graders = bomb.is_alive()
    bomb.join()
    assert bomb_outlived_graders, "the graders finished after the fork bomb: the test did not run them side by side"
    assert len(verdicts) == len(humaneval_samples) == 8
    failed = {id_: v["stderr_tail"][-300:] for id_, v in verdicts.items() if v["error_bucket"] != "pass"}
    assert not failed, f"canonical solutions failed next to a fork bomb: {failed}"
    print(
        f"{mechanism}: 8/8 canonical HumanEval solutions passed in 4 sandboxes beside a fork bomb ({graders_s:.1f} s);",
        verdicts[humaneval_samples[0]["id"]]["isolation"]["limits"],
    )


@needs_root
@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_memory_limit_covers_the_program_and_all_its_children(mechanism):
    # Six children of 200 MB each (bytearray zero-fills, so every page is resident) under 512 MB in all; the
    # parent ignores how its children ended and exits 0, so only a limit on the whole tree can fail it.
    program = (
        "import os, time\n"
        "children = []\n"
        "for _ in range(6):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        block = bytearray(200 << 20)\n"
        "        time.sleep(4)\n"
        "        os._exit(0)\n"
        "    children.append(pid)\n"
        "for pid in children:\n"
        "    os.waitpid(pid, 0)\n"
        "print('all children done')\n"
    )
    result = run_program(program, SandboxLimits(timeout_s=30, cpu_s=10, memory_mb=512, nproc=16))
    print(
        mechanism,
        result.isolation.get("limits"),
        "->",
        getattr(result, "limit_exceeded", None),
        result.stderr.strip()[-120:],
    )
    assert not result.passed
    assert result.limit_exceeded == "memory" and "exceeded 512 MB" in result.stderr
    expected = "cgroup" if mechanism == "cgroups" else "watchdog"
    assert result.isolation["limits"]["memory"].startswith(expected)
    small = run_program(program.replace("200 << 20", "20 << 20"), SandboxLimits(timeout_s=30, memory_mb=512, nproc=16))
    assert small.passed and small.stdout.strip() == "all children done", small.stderr  # 6 x 20 MB fits


def _venv_under_tmp(parent: Path, package: str) -> tuple[Path, Path]:
    """A venv in a private (0700) directory under /tmp, with a package that exists in that venv only."""
    venv = parent / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    (Path(purelib) / package).mkdir()
    (Path(purelib) / package / "__init__.py").write_text("ANSWER = 42\n")
    return python, Path(purelib)


def _evaluate_in(python: Path, program: str) -> dict:
    """Run `run_program(program, ..., site_packages())` in an evaluator that uses `python` (i.e. the venv)."""
    driver = (
        "import json, sys\n"
        "from layerprune.evaluation.sandbox import SandboxLimits, run_program, site_packages\n"
        "try:\n"
        f"    result = run_program({program!r}, SandboxLimits(timeout_s=30, nproc=8), site_packages())\n"
        "    print(json.dumps({'passed': result.passed, 'stdout': result.stdout, 'stderr': result.stderr}))\n"
        "except RuntimeError as error:\n"
        "    print(json.dumps({'error': str(error)}))\n"
    )
    src = str(Path(layerprune.__file__).parents[1])
    done = subprocess.run(
        [str(python), "-c", driver],
        env={"PYTHONPATH": src, "PATH": os.environ["PATH"]},
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(done.stdout.splitlines()[-1])


@needs_root
def test_a_package_installed_only_in_a_venv_under_tmp_imports_inside():
    package = f"lp_venv_probe_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(dir="/tmp") as parent:  # 0700, as mkdtemp makes it
        python, purelib = _venv_under_tmp(Path(parent), package)
        assert not any(Path(p, package).exists() for p in site_packages() + sys.path if p), "not venv-only"
        program = f"import {package}\nassert {package}.ANSWER == 42\nprint('imported', {package}.__file__)\n"
        result = _evaluate_in(python, program)
        print(result)
        assert result.get("passed"), result
        assert result["stdout"].startswith(f"imported {purelib}"), result

        # A needed directory the sandbox's user cannot read: evaluation stops, naming it; no sample is graded.
        purelib.chmod(0o700)
        refused = _evaluate_in(python, program)
        print(refused)
        assert "could not be set up" in refused.get("error", ""), refused
        assert str(purelib) in refused["error"], refused


@needs_root
def test_setuid_and_killing_the_evaluator_are_refused():
    program = (
        "import os, signal\n"
        f"evaluator = {os.getpid()}\n"
        "for attempt in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.kill(evaluator, signal.SIGKILL)):\n"
        "    try:\n"
        "        attempt()\n"
        "        print('allowed')\n"
        "    except OSError as error:\n"
        "        print('blocked', type(error).__name__)\n"
        "print('uid', os.getuid())\n"
        "os.kill(-1, signal.SIGKILL)\n"  # everything this user may signal: only the sandbox itself
    )
    result = run_program(program, TIGHT)
    assert "allowed" not in result.stdout and result.stdout.count("blocked") == 3, result.stdout
    assert "uid 0" not in result.stdout
    assert not result.passed  # it killed itself, and only itself: this test process is still here to check


def test_a_gigabyte_of_stdout_is_cut_off():
    start = time.monotonic()
    result = run_program(
        "import sys\nblock = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(block)\n", TIGHT
    )
    assert not result.passed and len(result.stdout) <= 4000
    assert time.monotonic() - start < 30


def test_ten_thousand_threads_or_files_are_refused():
    threads = (
        "import threading, time\n"
        "for _ in range(10000):\n"
        "    threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
    )
    files = "handles = [open('f%d' % i, 'w') for i in range(10000)]\n"
    for program in (threads, files):
        result = run_program(program, TIGHT)
        assert not result.passed and not result.timed_out, result.stderr
        assert "can't start new thread" in result.stderr or "Too many open files" in result.stderr, result.stderr


def test_only_the_nonce_written_back_completes_a_program():
    from layerprune.evaluation.sandbox import MARKER_FD, NONCE_FD

    honest = f"import os\nnonce = os.read({NONCE_FD}, 64)\nos.close({NONCE_FD})\nos.write({MARKER_FD}, nonce)\n"
    result = run_program(honest, TIGHT, completion_marker=True)
    assert result.completed and result.passed, result.stderr
    forged = f"import os\nos.close({NONCE_FD})\nos.write({MARKER_FD}, b'0' * 32)\nprint('0' * 32)\n"
    result = run_program(forged, TIGHT, completion_marker=True)
    assert result.returncode == 0 and result.completed is False and not result.passed
    # The config file held the nonce: it is gone before the program starts, wherever the program looks.
    snoop = "import glob\nprint(glob.glob('/tmp/**/config.json', recursive=True))\n"
    assert run_program(snoop, TIGHT).stdout.strip() == "[]"
    assert run_program("print(1)\n", TIGHT).completed is None  # no marker asked for: exit status alone


def test_evaluate_refuses_before_loading_the_model_where_strict_isolation_is_impossible(tmp_path, monkeypatch):
    """The launcher's refusal (as it reads on a machine without user namespaces) stops `evaluate` at once."""
    from layerprune.evaluation import sandbox
    from layerprune.evaluation.evaluate import evaluate_checkpoint
    from layerprune.io import write_json

    refusing = tmp_path / "launcher.py"
    refusing.write_text(
        "import sys\n"
        f"sys.stderr.write({sandbox.UNAVAILABLE!r} + ', missing: user namespaces. Run as root, or accept weaker "
        "isolation explicitly with the setting `evaluation.sandbox.isolation: best_effort`\\n')\n"
        "sys.exit(126)\n"
    )
    monkeypatch.setattr(sandbox, "LAUNCHER", refusing)
    task = tmp_path / "task.json"
    write_json(task, {"type": "generative", "grader": "code", "samples": []})
    with pytest.raises(sandbox.SandboxUnavailable, match="evaluation.sandbox.isolation: best_effort"):
        evaluate_checkpoint(
            tmp_path / "no-such-checkpoint", task, "humaneval", tmp_path / "out.json", batch_size=1, max_new_tokens=8
        )
    assert not (tmp_path / "out.json").exists()


@pytest.fixture
def full_tmpdir(tmp_path, monkeypatch):
    """$TMPDIR on a 64 KiB tmpfs (as issue 27 saw it: 4 KiB free), for this process's sandboxes."""
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    monkeypatch.setattr(tempfile, "tempdir", str(full))
    yield full
    subprocess.run(["umount", "-l", str(full)], check=True)


def test_a_full_tmpdir_stops_the_job_naming_the_cause_and_grades_nothing(full_tmpdir, humaneval_samples, tmp_path):
    from layerprune.evaluation.evaluate import evaluate_checkpoint
    from layerprune.evaluation.sandbox import SandboxError
    from layerprune.io import write_json

    sample = humaneval_samples[0]
    with pytest.raises(SandboxError, match=f"{full_tmpdir}.*free space there or point TMPDIR elsewhere"):
        grade_code(sample, sample["solution"], chat=False, limits=TIGHT)
    # `layerprune evaluate` stops before the model loads (its preflight), with the cause, and writes no result.
    task = tmp_path / "task.json"
    write_json(task, {"type": "generative", "grader": "code", "samples": [sample]})
    with pytest.raises(SandboxError, match="KiB free"):
        evaluate_checkpoint(tmp_path / "no-such-checkpoint", task, "humaneval", tmp_path / "out.json", batch_size=8)
    assert not (tmp_path / "out.json").exists()


def test_a_code_result_records_the_preflights_isolation_when_no_sample_reached_the_sandbox(tmp_path):
    import torch
    from helpers.models import make_tiny_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerprune.evaluation.generative import evaluate_generative

    path = make_tiny_checkpoint(tmp_path / "m", family="llama", num_layers=2)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    # A prompt that no continuation can make compile: every sample is a syntax error, none runs.
    code = {
        "prompt": "1 = 1\n",
        "test": "def check(candidate):\n    pass\n",
        "entry_point": "f",
        "continues_prompt": True,
    }
    task = {
        "type": "generative",
        "grader": "code",
        "fewshot": [],
        "samples": [{"id": 0, "input": "1 = 1\n", "targets": [""], "code": code}],
    }
    result = evaluate_generative(model, AutoTokenizer.from_pretrained(path), task, 4, 1, sandbox=TIGHT, progress=False)
    assert result["error_buckets"]["pass"] == 0 and result["samples"][0]["error_bucket"] != "pass"
    assert "stderr_tail" not in result["samples"][0]  # graded at compile time: no program ran
    assert result["sandbox"]["isolation"]["level"] == "strict", result["sandbox"]


def test_memfd_and_a_nested_tmpfs_cannot_hold_memory_past_the_limit(mechanism):
    limits = SandboxLimits(timeout_s=30, cpu_s=20, memory_mb=256, tmpfs_mb=64)
    result = run_program(MEMORY_PROBE, limits)
    assert result.isolation["seccomp"] is True, result.isolation
    check_memory_probe(result.passed, result.stdout, 256, 64)


def test_a_judged_run_whose_processes_cannot_start_is_a_sandbox_error_not_a_verdict(humaneval_samples, monkeypatch):
    """The judge's and the program's interpreters fail to exec (as when the launcher has no memory to start them):
    the set-up's failure stops the job, naming it; the sample gets no bucket."""
    from layerprune.evaluation import sandbox

    monkeypatch.setattr(sandbox, "_python", lambda: ("/nonexistent/python3", sys.base_prefix))
    sample = humaneval_samples[0]
    with pytest.raises(sandbox.SandboxError, match="set-up failed: the (judge|program)'s process"):
        grade_code(sample, sample["solution"], chat=False, limits=TIGHT)
