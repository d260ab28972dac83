"""Distillation recoveries (kd, kd_onpolicy) on a tiny random Llama: a real TRL GKDTrainer run each.

The teacher is a 4-layer model, the student the same model with one layer removed (what
prune writes), the data prompt–completion records as selfgen writes them.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.models import CHAT_TEMPLATE, make_tiny_checkpoint
from helpers.records import prompt_records
from helpers.training import RECOVER_SETTINGS, VENV_BIN, cli_env, cli_settings, weights
from transformers import AutoModelForCausalLM, AutoTokenizer

from layerprune.io import read_json, write_jsonl
from layerprune.pruning.surgery import remove_layers
from layerprune.recovery.recover import recover_checkpoint

SETTINGS = {**RECOVER_SETTINGS, "precision": "fp32"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """(teacher, student): a tiny dense checkpoint and the same with its layer 2 removed."""
    root = tmp_path_factory.mktemp("kd")
    teacher = make_tiny_checkpoint(root / "dense", family="llama", num_layers=4, chat_template=CHAT_TEMPLATE)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher)
    remove_layers(model, [2])
    model.save_pretrained(root / "pruned")
    tokenizer.save_pretrained(root / "pruned")
    return teacher, root / "pruned"


def completion_kl(teacher_dir: Path, student_dir: Path, records: list[dict], temperature: float = 1.0):
    """(sum over completion tokens of KL(teacher || student) at `temperature`, token count), one record at a time."""
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    total, count = 0.0, 0
    for record in records:
        messages = [*record["prompt"], *record["completion"]]
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = tokenizer.apply_chat_template(record["prompt"], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            t = teacher(input_ids=torch.tensor([ids])).logits[0, start - 1 : -1] / temperature
            s = student(input_ids=torch.tensor([ids])).logits[0, start - 1 : -1] / temperature
        log_t, log_s = F.log_softmax(t.double(), -1), F.log_softmax(s.double(), -1)
        total += float((log_t.exp() * (log_t - log_s)).sum())
        count += len(ids) - start
    return total, count


def test_kd_loss_is_the_hand_computed_kl(pair, tmp_path):
    """Step 1's logged loss is KL(teacher || student) at the temperature, per completion token.

    The whole data set is one batch and LoRA's B starts at zero, so step 1 sees the pruned model
    as it is: the loss must be the mean over every completion token of the forward KL between the
    two models' softened distributions. GKDTrainer alone would leave the temperature out of it.
    """
    teacher, student = pair
    records = prompt_records(4)
    data = tmp_path / "train.jsonl"
    write_jsonl(data, records)
    settings = {**SETTINGS, "batch_size": 4, "max_steps": 1, "temperature": 2.0, "max_length": 128}
    record = recover_checkpoint(student, data, tmp_path / "kd", "kd", teacher_dir=teacher, **settings)
    total, count = completion_kl(teacher, student, records, temperature=2.0)
    assert count > 10
    assert record["loss_curve"][0]["loss"] == pytest.approx(total / count, rel=1e-4)
    assert record["settings"]["divergence"] == "forward_kl" and record["settings"]["temperature"] == 2.0
    assert "lmbda" not in record["settings"], "kd never generates: lmbda is not its setting"
    assert record["teacher"] == str(teacher)


def test_kd_lowers_the_kl_to_the_teacher_on_held_out_prompts(pair, tmp_path):
    teacher, student = pair
    records = prompt_records(24)
    train, held_out = records[:16], records[16:]
    data = tmp_path / "train.jsonl"
    write_jsonl(data, train)
    out = tmp_path / "kd"
    recover_checkpoint(student, data, out, "kd", teacher_dir=teacher, **{**SETTINGS, "max_steps": 8})
    before = completion_kl(teacher, student, held_out)
    after = completion_kl(teacher, out, held_out)
    assert before[1] == after[1] > 10
    assert after[0] / after[1] < 0.8 * before[0] / before[1], (before, after)


def test_kd_onpolicy_loss_is_normalised_by_the_generated_tokens(pair, tmp_path):
    """lmbda 1: the student writes every completion, so the dataset's answers must not matter.

    Two data sets with the same prompts and answers of different lengths: the student generates
    the same completions from the same seed, so step 1's loss is the same. GKDTrainer alone divides
    by the replaced answers' token count (the Trainer's num_items_in_batch) and differs.
    """
    teacher, student = pair
    short = prompt_records(4)
    long = [{**r, "completion": [{"role": "assistant", "content": " ".join(["fox"] * 20)}]} for r in short]
    settings = {**SETTINGS, "batch_size": 4, "max_steps": 1, "max_new_tokens": 6, "max_length": 128}
    settings.update(divergence="jsd", beta=0.5)
    losses = []
    for name, records in (("short", short), ("long", long)):
        data = tmp_path / f"{name}.jsonl"
        write_jsonl(data, records)
        record = recover_checkpoint(student, data, tmp_path / name, "kd_onpolicy", teacher_dir=teacher, **settings)
        assert record["settings"]["lmbda"] == 1.0 and record["settings"]["beta"] == 0.5
        losses.append(record["loss_curve"][0]["loss"])
    assert 0 < losses[0] < 0.7  # a JSD is at most log 2 per token
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_distillation_needs_a_teacher_and_sft_takes_none(pair, tmp_path):
    teacher, student = pair
    with pytest.raises(ValueError, match="needs --teacher"):
        recover_checkpoint(student, tmp_path / "x.jsonl", tmp_path / "o", "kd", **SETTINGS)
    with pytest.raises(ValueError, match="takes no --teacher"):
        recover_checkpoint(student, tmp_path / "x.jsonl", tmp_path / "o", "sgr", teacher_dir=teacher, **SETTINGS)
    done = subprocess.run(
        [str(VENV_BIN / "layerprune"), "recover", "--model", "m", "--dataset", "d", "--out", "o"]
        + ["--recovery", "sgr", "--divergence", "jsd"],
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert done.returncode != 0 and "--divergence apply to kd and kd_onpolicy only" in done.stderr


RESUME_SETTINGS = {**SETTINGS, "lora_dropout": 0.1, "max_steps": 16, "batch_size": 2, "learning_rate": 5e-3}


def _kd_cli(student: Path, teacher: Path, data: Path, out: Path, save_steps: int) -> list[str]:
    return [
        str(VENV_BIN / "layerprune"),
        "recover",
        "--model",
        str(student),
        "--teacher",
        str(teacher),
        "--dataset",
        str(data),
        "--out",
        str(out),
        "--recovery",
        "kd",
        "--save-steps",
        str(save_steps),
        "--threads",
        "1",
        *cli_settings(RESUME_SETTINGS),
    ]


@pytest.mark.slow
def test_killed_kd_resumes_to_the_same_weights(pair, tmp_path):
    """SIGKILL a kd run after a checkpoint, re-run: it resumes and ends with the uninterrupted run's weights."""
    teacher, student = pair
    data = tmp_path / "train.jsonl"
    write_jsonl(data, prompt_records(32))
    reference = tmp_path / "reference" / "kd"
    subprocess.run(_kd_cli(student, teacher, data, reference, 100), check=True, env=cli_env(), capture_output=True)

    out = tmp_path / "resumed" / "kd"
    work = out.parent / "kd.work"
    process = subprocess.Popen(
        _kd_cli(student, teacher, data, out, 4), env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    from helpers.workflow import kill_at_first_checkpoint

    killed_after = kill_at_first_checkpoint(process, work)
    assert killed_after is not None and process.returncode == -signal.SIGKILL
    assert 0 < killed_after < RESUME_SETTINGS["max_steps"] and not out.exists()

    result = subprocess.run(_kd_cli(student, teacher, data, out, 4), env=cli_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    record = read_json(out / "recovery.json")
    assert record["resumed_from_step"] >= killed_after > 0 and "resuming from" in result.stdout
    assert record["global_steps"] == RESUME_SETTINGS["max_steps"]
    a, b = weights(out), weights(reference)
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert not work.exists()


# --------------------------------------------------------------------------- through the DAG


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_kd_jobs_get_the_dense_teacher_and_the_sgr_data(tmp_path):
    """Dry run: each kd job reads the selfgen pairs and the dense checkpoint; sgr's settings carry no kd key."""
    from helpers.plans import GRID
    from helpers.workflow import (
        FINGERPRINT,
        TINY_STUDY,
        flag,
        planned_jobs,
        settings_of,
        shell_commands,
        snakemake,
        workflow_copy,
    )

    config = json.loads(json.dumps(GRID))
    config["recovery"]["methods"] = ["none", "sgr", "kd", "kd_onpolicy"]
    config["recovery"]["kd"] = {"divergence": "jsd", "beta": 0.3, "lmbda": 0.5}
    workdir = workflow_copy(tmp_path / "wf", config)
    jobs = planned_jobs(workdir)
    model, methods, ratios = next(iter(config["models"])), config["scoring"]["methods"], config["pruning"]["ratios"]
    cells = len(methods) * len(ratios)
    assert jobs["recover"] == cells and jobs["recover_kd"] == 2 * cells
    output = snakemake(workdir, "-n", "-p", "--cores", "1").stdout
    commands = shell_commands(output, "recover")
    distilled = [argv for argv in commands if flag(argv, "--recovery") in ("kd", "kd_onpolicy")]
    assert len(distilled) == 2 * cells
    for argv in distilled:
        assert re.fullmatch(rf"results/shared/models/{FINGERPRINT}/{re.escape(model)}", flag(argv, "--teacher"))
        assert flag(argv, "--dataset") == f"results/{TINY_STUDY}/selfgen/{model}.jsonl"
        settings = settings_of(argv)
        assert (settings["divergence"], settings["beta"], settings["lora_r"]) == (
            "jsd",
            0.3,
            config["recovery"]["lora_r"],
        )
        assert ("lmbda" in settings) == (flag(argv, "--recovery") == "kd_onpolicy")
    sgr = [settings_of(argv) for argv in commands if flag(argv, "--recovery") == "sgr"]
    assert sgr and not any("divergence" in s or "temperature" in s for s in sgr)
    # the report times the kd jobs as it does sgr's: their benchmark folders reach the aggregate step
    (aggregate,) = shell_commands(output, "aggregate")
    benchmarks = aggregate[aggregate.index("--benchmarks") + 1 :]
    assert {f"benchmarks/recover/{TINY_STUDY}", f"benchmarks/recover_kd/{TINY_STUDY}"} <= set(benchmarks)


@pytest.mark.slow
def test_kd_runs_through_the_dag_into_the_findings(tiny_run, tmp_path):
    """Add kd to the finished tiny run: only the kd branch runs, and the report's findings get kd − sgr."""
    import pandas as pd
    import yaml
    from helpers.workflow import TINY_STUDY, copy_run, planned_jobs, snakemake

    source, config = tiny_run
    workdir = copy_run(source, tmp_path / "run")
    changed = json.loads(json.dumps(config))
    changed["recovery"]["methods"] = [*config["recovery"]["methods"], "kd"]
    (workdir / "kd.yaml").write_text(yaml.safe_dump(changed))
    ratios = len(config["pruning"]["ratios"]) * len(config["scoring"]["methods"])
    evaluated = [t for t, spec in config["tasks"].items() if spec.get("evaluate", True)]
    jobs = planned_jobs(workdir, "--configfile", "kd.yaml")
    assert jobs["recover_kd"] == ratios and "recover" not in jobs and "selfgen" not in jobs
    snakemake(workdir, "--cores", "2", "--configfile", "kd.yaml")
    for path in workdir.glob(f"results/{TINY_STUDY}/recovered/*/*/*/kd/recovery.json"):
        assert read_json(path)["recovery"] == "kd"
    findings = pd.read_csv(workdir / "results" / TINY_STUDY / "report" / "findings.csv")
    row = findings[findings["finding"] == "kd"]
    assert len(row) == 1 and row.iloc[0]["statistic"] == "kd − sgr generative retention"
    summary = pd.read_csv(workdir / "results" / TINY_STUDY / "report" / "summary.csv")
    assert len(summary[summary["recovery"] == "kd"]) == ratios * len(evaluated)  # kd is evaluated as sgr is
