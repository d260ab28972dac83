"""Recovery trainers, precision, heal text, padding-free loss and kill-and-resume, on a tiny random Llama.

Everything here trains for real (TRL SFTTrainer, PEFT) on CPU for a few steps.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CORPUS, RECOVER_SETTINGS, make_tiny_checkpoint
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from layerprune.io import read_json, write_jsonl
from layerprune.recover import (
    check_trainer,
    prepare_work_dir,
    recover_checkpoint,
    resolve_precision,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<bos> {{ m['content'] }} <eos> {% endfor %}{% if add_generation_prompt %}<bos>{% endif %}"
)
WORDS = " ".join(CORPUS).split()
VENV_BIN = Path(sys.executable).parent

SETTINGS = {**RECOVER_SETTINGS, "precision": "fp32"}


def phrase(start: int, length: int) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(length))


def prompt_records(count: int) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": phrase(3 * i, 2 + (5 * i) % 7)}],
            "completion": [{"role": "assistant", "content": phrase(5 * i + 1, 2 + i % 3)}],
        }
        for i in range(count)
    ]


def text_records(count: int) -> list[dict]:
    return [{"text": phrase(7 * i, 4 + (3 * i) % 11)} for i in range(count)]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base")
    model_dir = make_tiny_checkpoint(root / "model", family="llama", num_layers=2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sft") / "train.jsonl"
    write_jsonl(path, prompt_records(12))
    return path


@pytest.fixture(scope="module")
def heal_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("heal") / "heal.jsonl"
    write_jsonl(path, text_records(12))
    return path


# --------------------------------------------------------------------------- precision and trainer checks


def test_resolve_precision_for_every_machine():
    assert resolve_precision("auto", cuda=False, bf16_supported=False) == "fp32"
    assert resolve_precision("auto", cuda=True, bf16_supported=True) == "bf16"
    assert resolve_precision("auto", cuda=True, bf16_supported=False) == "fp32"
    assert resolve_precision("fp32", cuda=True, bf16_supported=True) == "fp32"
    assert resolve_precision("bf16", cuda=False, bf16_supported=False) == "bf16"  # CPU autocast is bf16
    assert resolve_precision("fp16", cuda=True, bf16_supported=False) == "fp16"
    with pytest.raises(ValueError, match="recovery.precision"):
        resolve_precision("fp16", cuda=False, bf16_supported=False)
    with pytest.raises(ValueError, match="recovery.precision"):
        resolve_precision("bf16", cuda=True, bf16_supported=False)
    with pytest.raises(ValueError, match="recovery.precision"):
        resolve_precision("fp8", cuda=True, bf16_supported=True)
    # with no arguments it asks torch; this machine has no GPU
    assert resolve_precision("auto") == ("bf16" if torch.cuda.is_available() else "fp32")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_qlora_fails_at_once_on_cpu(base, sft_data, tmp_path):
    with pytest.raises(RuntimeError, match="recovery.trainer"):
        check_trainer("qlora")
    with pytest.raises(ValueError, match="recovery.trainer"):
        check_trainer("adapter")
    # The CLI fails before loading the model or the data (a missing model dir is not what it reports).
    start = time.monotonic()
    result = subprocess.run(
        [
            str(VENV_BIN / "layerprune"),
            "recover",
            "--model",
            str(tmp_path / "absent"),
            "--dataset",
            str(sft_data),
            "--out",
            str(tmp_path / "out"),
            "--recovery",
            "sgr",
            "--trainer",
            "qlora",
            *_cli_settings(SETTINGS),
        ],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert result.returncode != 0
    assert "recovery.trainer" in result.stderr and "CUDA" in result.stderr
    assert time.monotonic() - start < 60
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()


# --------------------------------------------------------------------------- trainers and heal


@pytest.fixture(scope="module")
def full_run(base, sft_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "full"
    record = recover_checkpoint(base, sft_data, out, "data", trainer="full", **{**SETTINGS, "learning_rate": 1e-3})
    return out, record


def test_full_finetune_changes_every_trained_tensor(base, full_run):
    out, record = full_run
    assert record["trainer"] == "full" and record["global_steps"] == 3
    before, after = weights(base), weights(out)
    assert set(after) == set(before), "same plain layout as the input"
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    # every layer's norms and projections move, not just LoRA's linear layers
    assert any("norm" in k for k in changed) and any("embed_tokens" in k for k in changed)
    assert {k for k in after if k.endswith("_proj.weight")} <= changed
    assert not (out.parent / "full.work").exists(), "the work dir is removed after a finished run"


def test_outputs_loss_curve_and_training_args(full_run):
    out, record = full_run
    with open(out / "loss_curve.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert [float(r["loss"]) for r in rows] == [e["loss"] for e in record["loss_curve"]]
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    args = json.loads((out / "training_args.json").read_text())
    assert args["adam_beta1"] == 0.9 and args["adam_beta2"] == 0.99
    assert args["report_to"] in ("none", ["none"], [])
    assert args["padding_free"] is False and args["gradient_checkpointing"] is False
    assert read_json(out / "recovery.json") == record


def test_heal_trains_with_lm_loss_on_every_token(base, heal_data, tmp_path, monkeypatch):
    """`heal` labels every text token (no completion mask); a LoRA run merges as usual."""
    import trl

    captured = []

    class Recording(trl.SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            captured.append({k: v.detach().clone() for k, v in inputs.items() if torch.is_tensor(v)})
            return super().compute_loss(model, inputs, *args, **kwargs)

    monkeypatch.setattr(trl, "SFTTrainer", Recording)
    record = recover_checkpoint(
        base, heal_data, tmp_path / "heal", "heal", trainer="lora", padding_free=True, **SETTINGS
    )
    assert record["recovery"] == "heal" and record["settings"]["completion_only_loss"] is False
    assert len(captured) == 3
    for batch in captured:
        positions = batch["position_ids"][0]
        starts = (positions == 0).nonzero().flatten().tolist()
        labels = batch["labels"][0]
        # padding-free: one row; only each sequence's first token is unlabelled
        assert batch["input_ids"].shape[0] == 1
        for i, (label, token) in enumerate(zip(labels.tolist(), batch["input_ids"][0].tolist(), strict=True)):
            assert label == (-100 if i in starts else token)
    names = {p.name for p in (tmp_path / "heal").iterdir()}
    assert {"config.json", "recovery.json", "loss_curve.csv", "loss_curve.png", "training_args.json"} <= names
    assert not [n for n in names if "adapter" in n]


def test_heal_rejects_prompt_completion_data(base, sft_data, tmp_path):
    with pytest.raises(ValueError, match="heal"):
        recover_checkpoint(base, sft_data, tmp_path / "x", "heal", **SETTINGS)


def test_padding_free_loss_equals_padded_loss(base, sft_data):
    """Same batch, padded vs flattened with position ids: same loss through TRL's compute_loss (SDPA on CPU).

    transformers detects the packed sequences from the position ids only without a KV
    cache; TRL's compute_loss passes use_cache=False, which this checks with a config
    that asks for the cache.
    """
    import trl
    from datasets import Dataset
    from trl import SFTConfig

    from layerprune.io import read_jsonl

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.config.use_cache = True
    assert model.config._attn_implementation == "sdpa"
    tokenizer = AutoTokenizer.from_pretrained(base)
    losses = {}
    for padding_free in (False, True):
        args = SFTConfig(
            output_dir="/tmp/unused",
            padding_free=padding_free,
            max_length=None,
            report_to="none",
            use_cpu=True,
            per_device_train_batch_size=6,
            completion_only_loss=True,
        )
        trainer = trl.SFTTrainer(
            model=model,
            args=args,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(read_jsonl(sft_data)[:6]),
        )
        batch = next(iter(trainer.get_train_dataloader()))
        if not padding_free:
            assert batch["attention_mask"].min() == 0, "the batch really is padded"
        with torch.no_grad():
            losses[padding_free] = trainer.compute_loss(model, dict(batch)).item()
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- work dir and resume


def test_stale_work_dir_is_discarded(tmp_path):
    work = tmp_path / "out.work"
    assert prepare_work_dir(work, "aaa") is None
    (work / "checkpoint-4").mkdir()
    (work / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (work / "checkpoint-6").mkdir()  # killed while saving: no trainer_state.json
    assert prepare_work_dir(work, "aaa") == work / "checkpoint-4"
    assert not (work / "checkpoint-6").exists()
    assert prepare_work_dir(work, "bbb") is None, "another config's checkpoints are not resumed"
    assert not (work / "checkpoint-4").exists()


def test_fingerprint_tracks_settings_data_and_model(base, sft_data, heal_data):
    from layerprune.recover import _fingerprint

    one = _fingerprint(base, sft_data, {"lora_r": 4})
    assert one == _fingerprint(base, sft_data, {"lora_r": 4})
    assert one != _fingerprint(base, sft_data, {"lora_r": 8})
    assert one != _fingerprint(base, heal_data, {"lora_r": 4})
    original = (base / "config.json").read_text()
    try:
        (base / "config.json").write_text(json.dumps({**json.loads(original), "num_hidden_layers": 1}))
        assert one != _fingerprint(base, sft_data, {"lora_r": 4})
    finally:
        (base / "config.json").write_text(original)
    assert one == _fingerprint(base, sft_data, {"lora_r": 4})


def _cli_settings(settings: dict) -> list[str]:
    flags = []
    for key, value in settings.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    env["OMP_NUM_THREADS"] = "1"
    return env


RESUME_SETTINGS = {**SETTINGS, "lora_dropout": 0.1, "max_steps": 30, "batch_size": 2, "learning_rate": 5e-3}


def _recover_cli(base: Path, data: Path, out: Path, save_steps: int) -> list[str]:
    return [
        str(VENV_BIN / "layerprune"),
        "recover",
        "--model",
        str(base),
        "--dataset",
        str(data),
        "--out",
        str(out),
        "--recovery",
        "sgr",
        "--trainer",
        "lora",
        "--save-steps",
        str(save_steps),
        "--threads",
        "1",
        *_cli_settings(RESUME_SETTINGS),
    ]


@pytest.mark.slow
def test_killed_training_resumes_from_its_checkpoint(base, tmp_path):
    """SIGKILL a real CLI run after a checkpoint, re-run: it resumes, and ends where an uninterrupted run ends.

    Data order (data_seed) and LoRA dropout (RNG state saved in each checkpoint)
    are seeded, so the resumed run replays the same steps; the adapters agree to
    float32 round-off (atol 1e-5), far below a single step's update (~5e-3).
    """
    data = tmp_path / "train.jsonl"
    write_jsonl(data, prompt_records(40))
    reference = tmp_path / "reference" / "sgr"
    subprocess.run(_recover_cli(base, data, reference, save_steps=100), check=True, env=_env(), capture_output=True)

    out = tmp_path / "resumed" / "sgr"
    work = out.parent / "sgr.work"
    process = subprocess.Popen(
        _recover_cli(base, data, out, save_steps=4), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    killed_after = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        states = sorted(work.glob("checkpoint-*/trainer_state.json"))
        if states:
            try:
                killed_after = json.loads(states[-1].read_text())["global_step"]
            except (ValueError, OSError):
                pass
            else:
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    process.wait()
    assert killed_after is not None, "the run finished (or stalled) before a checkpoint could be caught"
    assert process.returncode == -signal.SIGKILL
    assert 0 < killed_after < RESUME_SETTINGS["max_steps"]
    assert not out.exists(), "a killed run leaves no output that looks complete"

    result = subprocess.run(_recover_cli(base, data, out, save_steps=4), env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    record = read_json(out / "recovery.json")
    assert record["resumed_from_step"] >= killed_after > 0
    assert "resuming from" in result.stdout
    assert record["global_steps"] == RESUME_SETTINGS["max_steps"]
    reference_record = read_json(reference / "recovery.json")
    assert reference_record["resumed_from_step"] == 0
    # the loss curve after the resume point is the uninterrupted run's
    resumed = {e["step"]: e["loss"] for e in record["loss_curve"]}
    for entry in reference_record["loss_curve"]:
        assert resumed[entry["step"]] == pytest.approx(entry["loss"], abs=1e-5)
    a, b = weights(out), weights(reference)
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)
    assert not work.exists()


def test_report_to_tensorboard_passes_through(base, sft_data, tmp_path):
    """recovery.report_to reaches SFTConfig; the event files are kept with the checkpoint."""
    out = tmp_path / "tb"
    recover_checkpoint(base, sft_data, out, "sgr", report_to="tensorboard", **{**SETTINGS, "max_steps": 2})
    args = json.loads((out / "training_args.json").read_text())
    assert args["report_to"] == ["tensorboard"]
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
