"""The GPU paths no CPU test reaches, run in one process on one CUDA GPU in bf16, with the project's own code.

It needs only the source tree, the machine's own torch, transformers, huggingface_hub, peft, accelerate,
pandas, numpy, safetensors and tokenizers, and the wheel bundle scripts/gpu_bundle.sh prepares (trl,
datasets, lm_eval, evaluate, bitsandbytes; unpacked into a temporary folder and put on sys.path behind
the machine's own packages). No network, no snakemake, no downloaded model: it builds its checkpoints.

Steps (each line: `ran`, `failed (reason)` or `skipped (reason)`; exit 1 if one failed or none ran):
  environment              the bundle unpacked; versions and where each module came from; CUDA and bf16
  build/<family>           a tiny random-weight bf16 checkpoint of each shape (Llama, Gemma-3)
  selfgen-hf/<family>      layerprune.data.selfgen.self_generate, transformers backend
  prune/<family>           BI scores (layerprune.scoring.score, on the device) and layerprune.pruning.prune (on the CPU,
                           as the prune rule runs, bf16 checkpoint, with its cache checks)
  recover-lora/<family>    layerprune.recovery.recover.recover_checkpoint, LoRA, precision bf16, 3 steps, merged
  recover-qlora/<family>   the same with a 4-bit NF4 base (bitsandbytes) and the merge check
  lm-eval/<family>         layerprune.evaluation.evaluate.evaluate_checkpoint on a local multiple-choice task through
                           lm-eval and the token-budget model (evaluation.max_batch_tokens)
  generative/<family>      the same on a local few-shot generative task
  build/llama-8b           a random-weight Llama-3.1-8B-shaped model in bf16, built on the GPU, saved
  memory/lm-eval-4096      torch.cuda.max_memory_allocated of an lm-eval batch of 4096 tokens at 8B shape
  memory/bi-8x512          BI cosines (layerprune.scoring.score) on 8 texts x 512 tokens
  memory/decode-32x256     256 decode steps at batch 32 (selfgen's TransformersGenerator)
  memory/qlora-8b          one QLoRA step (r 64, 4 x 2048 tokens, gradient checkpointing) and its merge
Each memory figure is written next to the one bench/memory_model.py (docs/pipeline.md's table) predicts.
vLLM is not checked here (its 315 MB wheel cannot travel): it stays a cluster-only check.

    python3 scripts/gpu_check.py [--bundle build/gpu_bundle.tar.xz] [--out results/gpu_check]
                                 [--device cuda|cpu] [--skip-8b] [--steps GLOB ...] [--budget-s 360] [--dry-run]

--device cpu runs the tiny steps on the CPU (bf16 weights, bf16 autocast), so the whole chain can be
proven without a GPU; the 8B steps need CUDA. --dry-run lists every step and what it would run, and checks
that the bundle is there and that the memory model gives each prediction; it runs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tarfile
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("llama", "gemma3")
GB = 1e9
# What the bundle brings (module name, what it is for); everything else must be on the machine.
BUNDLED = {"trl": "recover", "datasets": "recover, lm-eval", "lm_eval": "evaluate", "bitsandbytes": "qlora"}
MACHINE = ("torch", "transformers", "huggingface_hub", "peft", "accelerate", "pandas", "numpy", "safetensors")
WORDS = (
    "the quick brown fox jumps over a lazy dog while every layer of a tiny model keeps its weights and "
    "pruning removes decoder layers so the rest of the network answers each question with one short word "
    "hello world one two three four five six seven eight nine ten red green blue cat sat on mat yes no"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<bos> {{ m['content'] }} <eos> {% endfor %}{% if add_generation_prompt %}<bos>{% endif %}"
)
TINY_RECOVERY = dict(
    lora_r=8,
    lora_alpha=16,
    lora_dropout=0.0,
    learning_rate=1e-3,
    num_epochs=1,
    batch_size=2,
    grad_accum=1,
    max_length=64,
    warmup_steps=0,
    lr_scheduler="constant",
    weight_decay=0.0,
    seed=0,
    max_steps=3,
    eval_fraction=0.0,
    precision="bf16",
    dtype="bfloat16",
    gradient_checkpointing=False,
    save_steps=1000,
)


@dataclass
class Step:
    name: str
    what: str
    run: Callable[[], str]  # does the work, returns a one-line summary; raises on failure
    needs: list[str] = field(default_factory=list)
    cuda_only: bool = False
    status: str = "planned"
    reason: str = ""
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)


class Check:
    """The steps, their shared state (paths, loaded modules) and their results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.work = self.out / "work"
        self.device = args.device
        self.steps: list[Step] = []
        self.memory: list[dict[str, Any]] = []
        self.environment: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        self._plan()

    # ------------------------------------------------------------------ plan

    def _plan(self) -> None:
        add = self._add
        add("environment", "unpack the bundle, import every module, check the device and bf16", self.environment_step)
        for family in FAMILIES:
            add(
                f"build/{family}",
                f"a tiny random-weight {family} checkpoint in bf16",
                self._bind(self.build_tiny, family),
                needs=["environment"],
            )
            add(
                f"selfgen-hf/{family}",
                "layerprune.data.selfgen.self_generate, backend transformers, 8 prompts",
                self._bind(self.selfgen, family),
                needs=[f"build/{family}"],
            )
            add(
                f"prune/{family}",
                "layerprune.scoring.score (bi, on the device) + layerprune.pruning.prune at ratio 0.25 (CPU)",
                self._bind(self.prune, family),
                needs=[f"build/{family}"],
            )
            for trainer in ("lora", "qlora"):
                add(
                    f"recover-{trainer}/{family}",
                    f"layerprune.recovery.recover, {trainer}, bf16, 3 steps, merged and checked",
                    self._bind(self.recover, family, trainer),
                    needs=[f"prune/{family}", f"selfgen-hf/{family}"],
                )
            add(
                f"lm-eval/{family}",
                "layerprune.evaluation.evaluate: local multiple-choice task, lm-eval, max_batch_tokens 64",
                self._bind(self.lm_eval, family),
                needs=[f"recover-lora/{family}"],
            )
            add(
                f"generative/{family}",
                "layerprune.evaluation.evaluate: local 2-shot generative task, exact match",
                self._bind(self.generative, family),
                needs=[f"recover-lora/{family}"],
            )
        big = dict(cuda_only=True)
        add(
            "build/llama-8b",
            "random-weight Llama-3.1-8B shape (32 x 4096, vocab 128256), bf16, on the GPU, saved",
            self.build_8b,
            needs=["environment"],
            **big,
        )
        add(
            "memory/lm-eval-4096",
            "lm-eval log-likelihood batch of 4 x 1024 tokens (max_batch_tokens 4096)",
            self.memory_lm_eval,
            needs=["build/llama-8b"],
            **big,
        )
        add(
            "memory/bi-8x512",
            "layerprune.scoring.score bi on 8 texts x 512 tokens",
            self.memory_bi,
            needs=["build/llama-8b"],
            **big,
        )
        add(
            "memory/decode-32x256",
            "selfgen's TransformersGenerator: batch 32 x 256 prompt tokens, 256 new",
            self.memory_decode,
            needs=["build/llama-8b"],
            **big,
        )
        add(
            "memory/qlora-8b",
            "layerprune.recovery.recover qlora: 1 step, r 64, 4 x 2048 tokens, then the merge",
            self.memory_qlora,
            needs=["build/llama-8b"],
            **big,
        )

    def _add(
        self, name: str, what: str, run: Callable[[], str], needs: list[str] | None = None, cuda_only: bool = False
    ) -> None:
        self.steps.append(Step(name, what, run, list(needs or []), cuda_only))

    @staticmethod
    def _bind(function: Callable[..., str], *arguments: Any) -> Callable[[], str]:
        return lambda: function(*arguments)

    def selected(self, step: Step) -> str | None:
        """Why `step` is skipped (None: it runs)."""
        if self.args.steps and not any(fnmatch.fnmatch(step.name, pattern) for pattern in self.args.steps):
            return "not among --steps"
        if step.cuda_only and self.device != "cuda":
            return "needs CUDA (--device cpu runs the tiny steps only)"
        if step.cuda_only and self.args.skip_8b:
            return "--skip-8b"
        return None

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        started = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        by_name = {step.name: step for step in self.steps}
        for step in self.steps:
            skip = self.selected(step)
            if skip is not None:
                step.status, step.reason = "skipped", skip
            elif failed := [n for n in step.needs if by_name[n].status != "ran" and by_name[n].status != "skipped"]:
                step.status, step.reason = "failed", f"not run: {', '.join(failed)} failed"
            elif missing := [n for n in step.needs if by_name[n].status == "skipped"]:
                step.status, step.reason = "failed", f"not run: {', '.join(missing)} was skipped (select it too)"
            elif time.monotonic() - started > self.args.budget_s:
                step.status, step.reason = "failed", f"not started: the {self.args.budget_s:.0f} s budget is spent"
            else:
                self._run_step(step)
            self._report(step)
            self._write_json(time.monotonic() - started)
        ran = sum(step.status == "ran" for step in self.steps)
        failed = sum(step.status == "failed" for step in self.steps)
        total = time.monotonic() - started
        print(
            f"gpu_check: {ran} ran, {failed} failed, {len(self.steps) - ran - failed} skipped in {total:.0f} s; "
            f"figures: {self.out / 'gpu_check.json'}",
            flush=True,
        )
        if ran == 0:
            print("gpu_check: nothing ran", flush=True)
            return 1
        return 1 if failed else 0

    def _run_step(self, step: Step) -> None:
        log = self.out / "logs" / (step.name.replace("/", "_") + ".log")
        start = time.monotonic()
        try:
            with _output_to(log):
                self.current = step
                summary = step.run()
            step.status, step.reason = "ran", summary
        except BaseException as error:  # noqa: BLE001 - every failure is one step's result, with its reason
            if isinstance(error, KeyboardInterrupt):
                raise
            with open(log, "a") as handle:
                traceback.print_exc(file=handle)
            step.status = "failed"
            step.reason = (
                f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"
            )
            step.reason += f" (log: {log})"
        finally:
            step.seconds = time.monotonic() - start
            self._free()

    def _report(self, step: Step) -> None:
        if step.status == "ran":
            line = f"ran ({step.seconds:.1f} s): {step.reason}"
        else:
            line = f"{step.status} ({step.reason})"
        print(f"{step.name:<24} {line}", flush=True)

    def _write_json(self, seconds: float) -> None:
        import socket

        record = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "host": socket.gethostname(),
            "device": self.device,
            "seconds": round(seconds, 1),
            "environment": self.environment,
            "steps": [
                {
                    "name": s.name,
                    "what": s.what,
                    "status": s.status,
                    "reason": s.reason,
                    "seconds": round(s.seconds, 2),
                    "figures": s.figures,
                }
                for s in self.steps
            ],
            "memory": self.memory,
        }
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, self.out / "gpu_check.json")

    def _free(self) -> None:
        import gc

        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and self.device == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ steps: environment

    def environment_step(self) -> str:
        bundle = self.args.bundle
        unpacked = None
        if bundle is not None and bundle.is_file():
            unpacked = unpack_bundle(bundle, self.work / "bundle")
            sys.path.append(str(unpacked))  # behind the machine's own packages: those win
        sys.path.insert(0, str(REPO / "src"))
        sys.path.insert(0, str(REPO / "bench"))
        modules = {}
        for name in (*MACHINE, *BUNDLED, "layerprune"):
            try:
                module = importlib.import_module(name)
            except Exception as error:
                hint = (
                    "" if unpacked or name not in BUNDLED else f" (no bundle at {bundle}: bash scripts/gpu_bundle.sh)"
                )
                raise RuntimeError(f"cannot import {name}: {error}{hint}") from error
            where = Path(getattr(module, "__file__", "") or "?")
            origin = (
                "bundle"
                if unpacked and unpacked in where.parents
                else "source"
                if REPO / "src" in where.parents
                else "machine"
            )
            modules[name] = {"version": getattr(module, "__version__", None), "from": origin}
        import torch

        self.environment.update(
            python=sys.version.split()[0], modules=modules, bundle=str(bundle) if unpacked else None
        )
        if self.device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(
                    f"no CUDA GPU (torch {torch.__version__}, built for CUDA {torch.version.cuda}): "
                    "torch.cuda.is_available() is False; --device cpu runs the tiny steps on the CPU"
                )
            if not torch.cuda.is_bf16_supported(including_emulation=False):
                raise RuntimeError(f"{torch.cuda.get_device_name()} has no native bf16")
            self.environment["gpu"] = {
                "name": torch.cuda.get_device_name(),
                "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / GB, 1),
                "capability": ".".join(map(str, torch.cuda.get_device_capability())),
                "cuda": torch.version.cuda,
            }
            import bitsandbytes.cextension as native  # the CUDA library bitsandbytes loaded (the bundle keeps 13.x)

            if isinstance(native.lib, native.ErrorHandlerMockBNBNativeLibrary):
                raise RuntimeError(
                    f"bitsandbytes loaded no CUDA library for CUDA {torch.version.cuda} "
                    "(the bundle keeps the CPU and CUDA 13.x ones)"
                )
            self.environment["bitsandbytes_library"] = f"{native.BNB_BACKEND}: {type(native.lib).__name__}"
        self.state["predictions"] = predictions()
        bundled = ", ".join(f"{n} {modules[n]['version']} ({modules[n]['from']})" for n in BUNDLED)
        where = self.environment.get("gpu", {}).get("name", "CPU")
        return (
            f"python {self.environment['python']}, torch {torch.__version__} ({modules['torch']['from']}), "
            f"transformers {modules['transformers']['version']}; {bundled}; on {where}"
        )

    # ------------------------------------------------------------------ steps: tiny models

    def build_tiny(self, family: str) -> str:
        import torch
        from transformers import AutoModelForCausalLM

        directory = self.work / "tiny" / family
        shutil.rmtree(directory, ignore_errors=True)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.bfloat16)
        model.save_pretrained(directory)
        tokenizer = make_tokenizer()
        tokenizer.save_pretrained(directory)
        write_jsonl(self.work / "prompts.jsonl", prompt_records(8))
        layers = model.config.num_hidden_layers
        return f"{type(model).__name__}, {layers} layers, {sum(p.numel() for p in model.parameters())} parameters, bf16"

    def selfgen(self, family: str) -> str:
        from layerprune.data.selfgen import self_generate

        out = self.work / "selfgen" / f"{family}.jsonl"
        count = self_generate(
            self.work / "tiny" / family,
            self.work / "prompts.jsonl",
            out,
            max_new_tokens=16,
            temperature=0.9,
            top_p=0.95,
            batch_size=4,
            seed=0,
            dtype="bfloat16",
            backend="transformers",
        )
        stats = json.loads(out.with_name(out.stem + ".stats.json").read_text())
        if count != 8 or stats["backend"] != "transformers":
            raise AssertionError(f"{count} responses, backend {stats['backend']}: expected 8 from transformers")
        return f"{count} responses (empty {stats['empty']}, truncated {stats['truncated']}), {self.device}"

    def prune(self, family: str) -> str:
        from layerprune.io import write_json
        from layerprune.models.checkpoints import load_checkpoint
        from layerprune.pruning.prune import prune_checkpoint
        from layerprune.scoring.score import score_layers

        source = self.work / "tiny" / family
        model, tokenizer = load_checkpoint(source, dtype="bfloat16")
        on = str(next(model.parameters()).device)
        scores = score_layers(
            "bi", model, tokenizer, [" ".join(WORDS[i:] + WORDS[:i]) for i in range(8)], max_length=48, batch_size=4
        )
        del model
        write_json(self.work / "scores" / f"{family}.json", scores)
        out = self.work / "pruned" / family
        shutil.rmtree(out, ignore_errors=True)
        record = prune_checkpoint(source, self.work / "scores" / f"{family}.json", 0.25, out, dtype="bfloat16")
        removed = record.get("removed_layers", record.get("removed"))
        return f"BI on {on} ({scores['num_layers']} layers), removed {removed}, bf16 checkpoint, cache checks passed"

    def recover(self, family: str, trainer: str) -> str:
        from layerprune.models.checkpoints import load_checkpoint
        from layerprune.recovery import recover as recovery

        out = self.work / "recovered" / f"{family}-{trainer}"
        shutil.rmtree(out, ignore_errors=True)
        with _loss_curve_without_matplotlib(recovery) as notes:
            record = recovery.recover_checkpoint(
                self.work / "pruned" / family,
                self.work / "selfgen" / f"{family}.jsonl",
                out,
                "sgr",
                trainer=trainer,
                **TINY_RECOVERY,
            )
        if record["global_steps"] != TINY_RECOVERY["max_steps"]:
            raise AssertionError(f"trained {record['global_steps']} steps, not {TINY_RECOVERY['max_steps']}")
        model, tokenizer = load_checkpoint(out, dtype="bfloat16")
        import torch

        ids = tokenizer(" ".join(WORDS[:12]), return_tensors="pt").input_ids.to(next(model.parameters()).device)
        with torch.no_grad():
            logits = model(ids).logits
        if not torch.isfinite(logits).all():
            raise AssertionError("the merged checkpoint's logits are not finite")
        figures = {
            "train_loss": record["train_loss"],
            "steps": record["global_steps"],
            "precision": record["settings"]["precision"],
            "device": str(logits.device),
        }
        summary = f"{record['global_steps']} steps, loss {record['train_loss']:.3f}, merged checkpoint reloads"
        if trainer == "qlora":
            check = record["merge_check"]
            figures["merge_check"] = check
            summary += (
                f"; merge check: gap {check['merge_gap']:.3g} vs 4-bit error "
                f"{check['quantisation_error']:.3g}, {check['layers_checked']} linear layers folded"
            )
        if notes:
            figures["notes"] = notes
            summary += f" ({'; '.join(notes)})"
        self.current.figures.update(figures)
        return summary

    def lm_eval(self, family: str) -> str:
        from layerprune.evaluation.evaluate import evaluate_checkpoint
        from layerprune.io import write_json

        task = classification_task(12, 6)
        write_json(self.work / "tasks" / "mc.json", task)
        result = evaluate_checkpoint(
            self.work / "recovered" / f"{family}-lora",
            self.work / "tasks" / "mc.json",
            "mc",
            self.work / "eval" / family / "mc.json",
            batch_size=8,
            max_new_tokens=8,
            seed=0,
            dtype="bfloat16",
            max_batch_tokens=64,
        )
        if result["n"] != len(task["samples"]) or not 0 <= result["value"] <= 1:
            raise AssertionError(f"n {result['n']}, accuracy {result['value']}")
        self.current.figures.update(value=result["value"], n=result["n"], dtype=result["dtype"])
        return f"{result['grader']}: accuracy {result['value']:.2f} on {result['n']}, {result['dtype']}"

    def generative(self, family: str) -> str:
        from layerprune.evaluation.evaluate import evaluate_checkpoint
        from layerprune.io import write_json

        task = generative_task(8)
        write_json(self.work / "tasks" / "gen.json", task)
        result = evaluate_checkpoint(
            self.work / "recovered" / f"{family}-lora",
            self.work / "tasks" / "gen.json",
            "gen",
            self.work / "eval" / family / "gen.json",
            batch_size=4,
            max_new_tokens=8,
            seed=0,
            dtype="bfloat16",
            prompting="fewshot",
        )
        if result["n"] != len(task["samples"]) or result["prompting"] != "fewshot":
            raise AssertionError(f"n {result['n']}, prompting {result['prompting']}")
        self.current.figures.update(value=result["value"], n=result["n"], dtype=result["dtype"])
        return f"{result['metric']} {result['value']:.2f} on {result['n']} (2-shot), {result['dtype']}"

    # ------------------------------------------------------------------ steps: 8B shape

    def build_8b(self) -> str:
        import torch
        from transformers import AutoModelForCausalLM, LlamaConfig

        config = LlamaConfig(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=8192,
            rope_theta=500000.0,
            tie_word_embeddings=False,
            bos_token_id=2,
            eos_token_id=1,
            pad_token_id=0,
        )
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
        tokenizer = make_tokenizer()
        directory = self.work / "llama-8b"
        shutil.rmtree(directory, ignore_errors=True)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        self.state["model_8b"], self.state["tokenizer_8b"] = model, tokenizer
        parameters = sum(p.numel() for p in model.parameters())
        size = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
        self.current.figures.update(parameters=parameters, file_gb=round(size / GB, 2))
        return f"{parameters / 1e9:.2f} B parameters, {size / GB:.1f} GB saved"

    def _measure(self, key: str, prediction: str, call: Callable[[], Any]) -> Any:
        """Run `call` from a fresh peak; record torch.cuda.max_memory_allocated beside its prediction."""
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        result = call()
        torch.cuda.synchronize()
        self._record(key, torch.cuda.max_memory_allocated(), prediction)
        return result

    def _record(self, key: str, peak: int, prediction: str) -> None:
        predicted = lookup(self.state["predictions"], prediction)
        row = {
            "what": key,
            "measured_gb": round(peak / GB, 2),
            "predicted_gb": predicted[1],
            "predicted_by": predicted[0],
        }
        if predicted[1]:
            row["measured_over_predicted"] = round(peak / GB / predicted[1], 3)
        self.memory.append(row)
        self.current.figures.setdefault("memory", []).append(row)

    def _memory_summary(self) -> str:
        return "; ".join(
            f"{r['what']}: {r['measured_gb']} GB (predicted {r['predicted_gb']})"
            for r in self.current.figures["memory"]
        )

    def memory_lm_eval(self) -> str:
        from layerprune.evaluation.evaluate import evaluate_classification

        model, tokenizer = self.state["model_8b"], self.state["tokenizer_8b"]
        # "Q: <1016 words>\nA:" + a 1-word choice: 1024 tokens a request (measured), so 4 rows a batch
        task = classification_task(8, 1016)
        result = self._measure(
            "lm-eval batch of 4096 tokens",
            "evaluate lm-eval, max_batch_tokens",
            lambda: evaluate_classification(
                model, tokenizer, task, "long", batch_size=32, seed=0, max_batch_tokens=4096
            ),
        )
        self.current.figures["n"] = len(result["samples"])
        return self._memory_summary()

    def memory_bi(self) -> str:
        from layerprune.scoring.score import score_layers

        model, tokenizer = self.state["model_8b"], self.state["tokenizer_8b"]
        texts = [" ".join((WORDS * 40)[i : i + 600]) for i in range(8)]
        self._measure(
            "BI cosines, 8 x 512 tokens",
            "score bi",
            lambda: score_layers("bi", model, tokenizer, texts, max_length=512, batch_size=8),
        )
        return self._memory_summary()

    def memory_decode(self) -> str:
        from layerprune.data.selfgen import TransformersGenerator

        model, tokenizer = self.state["model_8b"], self.state["tokenizer_8b"]
        generator = TransformersGenerator(model, tokenizer, 256, 0.9, 0.95, [])
        texts = [" ".join((WORDS * 10)[i : i + 255]) for i in range(32)]
        key = "decode, batch 32 x (256 + 256 new) tokens"
        self.state["predictions"][key] = decode_prediction(32, 256 + 256)
        generations = self._measure(key, key, lambda: generator(texts, 0))
        steps = max(len(tokenizer(g.text).input_ids) for g in generations)
        self.current.figures["truncated"] = sum(g.truncated for g in generations)
        return self._memory_summary() + f"; {self.current.figures['truncated']} of 32 rows ran all 256 steps ({steps})"

    def memory_qlora(self) -> str:
        import torch

        from layerprune.recovery import recover as recovery

        self.state.pop("model_8b", None)  # the QLoRA step loads its own 4-bit model
        self._free()
        words = WORDS * 200
        records = [
            {
                "prompt": [{"role": "user", "content": " ".join(words[i : i + 1000])}],
                "completion": [{"role": "assistant", "content": " ".join(words[i + 7 : i + 1100])}],
            }
            for i in range(8)
        ]
        write_jsonl(self.work / "sft-8b.jsonl", records)
        original = recovery.merge_qlora

        def merge_measured(*arguments: Any, **keywords: Any) -> Any:
            # the training peak ends here: the 4-bit model, optimizer and trainer were freed just before
            torch.cuda.synchronize()
            self._record("QLoRA step, r 64, 4 x 2048 tokens", torch.cuda.max_memory_allocated(), "recover QLoRA (GPU)")
            torch.cuda.reset_peak_memory_stats()
            merged = original(*arguments, **keywords)
            torch.cuda.synchronize()
            self._record("QLoRA merge", torch.cuda.max_memory_allocated(), "recover merge")
            return merged

        settings = {
            **TINY_RECOVERY,
            "lora_r": 64,
            "lora_alpha": 16,
            "lora_dropout": 0.05,
            "batch_size": 4,
            "max_length": 2048,
            "max_steps": 1,
            "gradient_checkpointing": True,
        }
        out = self.work / "recovered" / "llama-8b-qlora"
        shutil.rmtree(out, ignore_errors=True)
        torch.cuda.reset_peak_memory_stats()
        recovery.merge_qlora = merge_measured
        try:
            with _loss_curve_without_matplotlib(recovery):
                record = recovery.recover_checkpoint(
                    self.work / "llama-8b", self.work / "sft-8b.jsonl", out, "sgr", trainer="qlora", **settings
                )
        finally:
            recovery.merge_qlora = original
        shutil.rmtree(out, ignore_errors=True)  # 16 GB
        self.current.figures["merge_check"] = record["merge_check"]
        return self._memory_summary()


# ---------------------------------------------------------------------- helpers


def unpack_bundle(bundle: Path, target: Path) -> Path:
    """Unpack the bundle's wheels into `target`/site (a wheel is a zip of its installed files); return that folder."""
    # "site-packages" in the path: dill (datasets' fingerprints) pickles by reference only what lies in one
    site = target / "lib" / "site-packages"
    shutil.rmtree(target, ignore_errors=True)
    site.mkdir(parents=True)
    with tarfile.open(bundle) as archive:
        archive.extractall(target / "wheels", filter="data")
    for wheel in sorted((target / "wheels").rglob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    for data in site.glob("*.data"):  # a wheel's <name>.data/{purelib,platlib} belong in site-packages itself
        for kind in ("purelib", "platlib"):
            if (data / kind).is_dir():
                shutil.copytree(data / kind, site, dirs_exist_ok=True)
    shutil.rmtree(target / "wheels")
    importlib.invalidate_caches()
    return site


def predictions() -> dict[str, float]:
    """bench/memory_model.py's computed GPU figures at 8B (the docs/pipeline.md table), by its own row names."""
    import memory_model

    return {name: row["gpu_gb"] for name, row in memory_model.computed(prune_ratio=2.6).items()}


def decode_prediction(batch: int, tokens: int) -> float:
    """memory_model's HF selfgen figure (weights + the KV cache + 2 GB) at this step's batch and length."""
    import memory_model

    m = memory_model.LLAMA_8B
    kv_per_token = 2 * 2 * m["layers"] * m["kv_heads"] * m["head_dim"] / GB
    return round(2 * m["params"] / GB + batch * tokens * kv_per_token + 2, 1)


def lookup(table: dict[str, float], prefix: str) -> tuple[str | None, float | None]:
    """The first prediction whose name starts with `prefix` (the memory model names its rows)."""
    for name, value in table.items():
        if name.startswith(prefix):
            return name, value
    return None, None


def tiny_config(family: str):
    import transformers

    common = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    if family == "llama":
        return transformers.LlamaConfig(**common)
    layer_types = ["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(4)]
    return transformers.Gemma3TextConfig(
        **common, head_dim=16, query_pre_attn_scalar=16, sliding_window=8, layer_types=layer_types
    )


def make_tokenizer():
    """A word-level tokenizer over WORDS (<pad>=0, <eos>=1, <bos>=2, <unk>=3) with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [" ".join(WORDS), "Q : A : 0 1 2 3 4 5 6 7 8 9"]
    backend.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"]))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", bos_token="<bos>", unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def phrase(start: int, length: int) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(length))


def prompt_records(count: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": phrase(3 * i, 3 + i % 5)}]} for i in range(count)]


def classification_task(count: int, words: int) -> dict:
    """A prepared local multiple-choice task (the BIG-bench format evaluate_classification takes)."""
    choices = ["fox", "dog", "cat"]
    return {
        "source": "gpu_check:mc",
        "type": "classification",
        "num_fewshot": 0 if words > 100 else 1,
        "seed": 0,
        "fewshot": [{"id": 100, "input": phrase(1, 4), "choices": choices, "label": 0}],
        "samples": [{"id": i, "input": phrase(5 * i, words), "choices": choices, "label": i % 3} for i in range(count)],
    }


def generative_task(count: int) -> dict:
    return {
        "source": "gpu_check:gen",
        "type": "generative",
        "dataset": "bigbench",
        "grader": "exact_match",
        "num_fewshot": 2,
        "fewshot": [{"id": 100 + j, "input": phrase(7 * j, 3), "targets": [WORDS[j]]} for j in range(2)],
        "samples": [{"id": i, "input": phrase(11 * i, 3), "targets": [WORDS[i]]} for i in range(count)],
    }


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@contextlib.contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """The libraries' own output (prints, progress bars, C-level warnings) goes to the step's log."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextlib.contextmanager
def _loss_curve_without_matplotlib(recovery: Any) -> Iterator[list[str]]:
    """recover draws loss_curve.png with matplotlib, which the lent GPU machine lacks (and the bundle leaves out:
    with its fonts and Pillow it would not fit): there the loss curve is written as its CSV only, and said so."""
    notes: list[str] = []
    if importlib.util.find_spec("matplotlib") is not None:
        yield notes
        return
    original = recovery.write_loss_curve

    def csv_only(log_history: list[dict[str, Any]], out_dir: Path, title: str) -> list[dict[str, Any]]:
        rows = [{"step": e["step"], "loss": e["loss"]} for e in log_history if "loss" in e]
        (out_dir / "loss_curve.csv").write_text("step,loss\n" + "".join(f"{r['step']},{r['loss']}\n" for r in rows))
        notes.append("loss_curve.png not drawn: no matplotlib here")
        return rows

    recovery.write_loss_curve = csv_only
    try:
        yield notes
    finally:
        recovery.write_loss_curve = original


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--bundle",
        type=Path,
        default=REPO / "build" / "gpu_bundle.tar.xz",
        help="the wheel bundle of scripts/gpu_bundle.sh (not needed where its modules are installed)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "results" / "gpu_check", help="logs, work files, the JSON")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the tiny steps on the CPU")
    parser.add_argument("--skip-8b", action="store_true", help="leave out the 8B-shape memory steps")
    parser.add_argument("--steps", nargs="+", metavar="GLOB", help="run only the steps these match (and skip the rest)")
    parser.add_argument("--budget-s", type=float, default=360.0, help="a step not started by then fails (default 360)")
    parser.add_argument("--dry-run", action="store_true", help="list every step and check the plan; run nothing")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.bundle = args.bundle.resolve() if args.bundle else None
    os.environ.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(args.out / "hf_home"),
        TOKENIZERS_PARALLELISM="false",
    )
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # every `auto` device choice in the project then picks the CPU
    check = Check(args)
    if args.dry_run:
        return dry_run(check)
    return check.run()


def dry_run(check: Check) -> int:
    """Every step with what it would run; the plan's inputs (bundle, memory model) checked, nothing run."""
    problems = []
    bundle = check.args.bundle
    if bundle is None or not bundle.is_file():
        missing = [name for name in BUNDLED if importlib.util.find_spec(name) is None]
        if missing:
            problems.append(f"no bundle at {bundle} and {', '.join(missing)} not installed: bash scripts/gpu_bundle.sh")
    sys.path.insert(0, str(REPO / "bench"))
    table = predictions()
    wanted = {
        "memory/lm-eval-4096": ["evaluate lm-eval, max_batch_tokens"],
        "memory/bi-8x512": ["score bi"],
        "memory/qlora-8b": ["recover QLoRA (GPU)", "recover merge"],
    }
    for step in check.steps:
        skip = check.selected(step)
        note = ""
        for prefix in wanted.get(step.name, []):
            name, value = lookup(table, prefix)
            if value is None:
                problems.append(f"{step.name}: bench/memory_model.py has no row {prefix!r}")
            note += f" [predicted: {value} GB, {name}]"
        if step.name == "memory/decode-32x256":
            note = f" [predicted: {decode_prediction(32, 512)} GB]"
        print(f"{step.name:<24} {'skipped (' + skip + ')' if skip else 'would run: ' + step.what}{note}")
    for problem in problems:
        print(f"gpu_check: {problem}")
    print(
        f"gpu_check: {len(check.steps)} steps planned on {check.device}; bundle "
        f"{bundle if bundle and bundle.is_file() else 'absent'}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
