"""Wrong answers that try to be graded `pass`: every one is graded a failure, as root and as a non-root user.

Each strategy follows (or replaces) a wrong completion of HumanEval/0 (`has_close_elements`). The seven "reach into
the harness" strategies of issue 27 were graded `pass` when the tests ran in the program's own interpreter; the
early exits were graded `pass` before the completion marker (issue 17). Now the tests run in a judge process the
program cannot reach (docs/sandbox.md), so none of them can.
"""

from __future__ import annotations

import pytest
from helpers.sandbox_probes import EXITS, FAILED, STRATEGIES

from layerprune.evaluation.graders import grade_code
from layerprune.evaluation.sandbox import SandboxLimits
from layerprune.evaluation.tasks import prepare_task_spec

LIMITS = SandboxLimits(timeout_s=20, cpu_s=10, memory_mb=512)
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
