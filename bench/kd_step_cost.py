"""CPU cost of a `kd` training step against an `sgr` step, and whether a top-k teacher cache would pay.

One process, one torch thread, the two recoveries alternating (`--repeats` rounds), each a real
`recover_checkpoint` run of `--steps` optimizer steps on the same pruned checkpoint, data and
settings (the default config's recovery block unless overridden). The CPU time of every
`Trainer.training_step` call (forward + backward; for kd also the teacher's no-grad forward) is
summed per run, and the whole run's process CPU time is recorded too.

Then, on one kd batch: the CPU of the teacher's forward (what a cache would save per step), of
extracting its top-k log-probs (the cache's one-time cost, with that forward); and the error of the
top-k forward KL (renormalised over the top k) against the full one, per k. A step on cached targets
costs the kd step less that teacher forward (the top-k loss is a gather instead of a softmax over the
vocabulary, cheaper still).

    PYTHONPATH=src python bench/kd_step_cost.py --student results/pruned/smollm2-135m/bi/0.2 \
        --teacher results/models/smollm2-135m/dense --data results/selfgen/smollm2-135m.jsonl
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
import yaml

from layerprune.config.settings import RecoverySettings, settings_from_config
from layerprune.recovery.recover import recover_checkpoint

REPO = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StepClock:
    """Sums the CPU time of every Trainer.training_step call (the per-step work both recoveries share)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._original = transformers.Trainer.training_step
        clock = self

        def timed(trainer, *args, **kwargs):
            start = time.process_time()
            try:
                return clock._original(trainer, *args, **kwargs)
            finally:
                clock.seconds.append(time.process_time() - start)

        transformers.Trainer.training_step = timed


def one_run(recovery: str, args, settings: dict, clock: StepClock, out_root: Path) -> dict:
    clock.seconds.clear()
    out = out_root / recovery
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.parent / f"{recovery}.work", ignore_errors=True)
    start = cpu_seconds()
    teacher = args.teacher if recovery == "kd" else None
    recover_checkpoint(args.student, args.data, out, recovery, teacher_dir=teacher, **settings)
    total = cpu_seconds() - start
    # one Trainer.training_step per micro-batch: GKD's own training_step wraps it (its generation is off for kd)
    return {"recovery": recovery, "steps": len(clock.seconds), "step_cpu": sum(clock.seconds), "run_cpu": total}


def teacher_cache_costs(args, settings: dict, ks: list[int]) -> dict:
    """Per kd batch: the teacher forward, the top-k extraction, the top-k KL error."""
    from trl.experimental.utils import DataCollatorForChatML

    from layerprune.io import read_jsonl
    from layerprune.models.checkpoints import load_checkpoint
    from layerprune.recovery.distill import conversation_records

    teacher, tokenizer = load_checkpoint(args.teacher, dtype="float32")
    student, _ = load_checkpoint(args.student, dtype="float32")
    teacher.eval()
    rows = conversation_records([r for r in read_jsonl(args.data) if r["completion"][0]["content"].strip()])
    collator = DataCollatorForChatML(tokenizer=tokenizer, max_length=settings["max_length"])
    batch = collator(rows[: settings["batch_size"]])
    mask = batch["labels"][:, 1:] != -100
    results = {"tokens": int(mask.sum())}

    seconds = []
    for _ in range(4):  # the first call warms up (allocations); the median of the other three
        start = time.process_time()
        with torch.no_grad():
            t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        seconds.append(time.process_time() - start)
    results["teacher_forward_cpu"] = statistics.median(seconds[1:])
    results["teacher_forward_cpu_first_call"] = seconds[0]
    t_logp = F.log_softmax(t_logits.float(), -1)

    s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    s_logp = F.log_softmax(s_logits.float(), -1)
    full = (t_logp.exp() * (t_logp - s_logp)).sum(-1)[mask].mean().item()
    results["full_kl"] = full
    for k in ks:
        start = time.process_time()
        values, indices = t_logp[mask].topk(k, dim=-1)
        cached = (values.half(), indices.int())  # what a cache would store: 6 bytes per entry
        results[f"top{k}_extract_cpu"] = time.process_time() - start
        target = F.log_softmax(cached[0].float(), -1)  # renormalised over the top k
        approx = (target.exp() * (target - s_logp[mask].gather(-1, cached[1].long()))).sum(-1).mean().item()
        results[f"top{k}_kl_rel_error"] = abs(approx - full) / full
        results[f"top{k}_teacher_mass"] = float(values.exp().sum(-1).mean())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, type=Path, help="a pruned checkpoint")
    parser.add_argument("--teacher", required=True, type=Path, help="its dense checkpoint")
    parser.add_argument("--data", required=True, type=Path, help="the selfgen prompt-completion JSONL")
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml", help="its recovery block is used")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (default: one epoch)")
    parser.add_argument("--repeats", type=int, default=2, help="sgr/kd run pairs; 0 = the cache part only")
    parser.add_argument("--topk", type=int, nargs="+", default=[8, 32, 128])
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load(args.config.read_text())
    config.setdefault("seed", 0)
    base = settings_from_config(RecoverySettings, config).to_dict()
    settings = {**base, "max_steps": args.steps, "save_steps": 10_000, "dtype": "float32"}
    clock = StepClock()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for recovery in ("sgr", "kd"):
                runs.append(one_run(recovery, args, settings, clock, Path(tmp)))
                print(json.dumps(runs[-1]), flush=True)
    summary = {}
    if runs:  # --repeats 0: the cache measurement alone
        per_step = {r: [x["step_cpu"] / x["steps"] for x in runs if x["recovery"] == r] for r in ("sgr", "kd")}
        per_run = {r: [x["run_cpu"] for x in runs if x["recovery"] == r] for r in ("sgr", "kd")}
        for recovery in ("sgr", "kd"):
            summary[f"{recovery}_step_cpu"] = statistics.median(per_step[recovery])
            summary[f"{recovery}_run_cpu"] = statistics.median(per_run[recovery])
        summary["step_ratio_kd_over_sgr"] = summary["kd_step_cpu"] / summary["sgr_step_cpu"]
        summary["run_ratio_kd_over_sgr"] = summary["kd_run_cpu"] / summary["sgr_run_cpu"]
    summary["cache"] = teacher_cache_costs(args, settings, args.topk)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
