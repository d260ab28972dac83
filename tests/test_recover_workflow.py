"""Recovery through the Snakemake DAG: every variant x trainer plans (dry run), heal text, real tiny runs."""

from __future__ import annotations

import copy
import json

import datasets
import pytest
import yaml
from helpers.plans import GRID as DEFAULT
from helpers.plans import GRID_JOBS
from helpers.workflow import (
    REPO,
    TINY_STUDY,
    copy_run,
    flag,
    is_shared,
    planned_jobs,
    settings_of,
    shared_file,
    shell_commands,
    snakemake,
    workflow_copy,
)

from layerprune.data.heal import prepare_heal_text
from layerprune.io import read_jsonl

VARIANTS = ["none", "data", "sgr", "heal"]


@pytest.mark.parametrize("trainer", ["lora", "qlora", "full"])
@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_every_variant_and_trainer_is_planned(tmp_path, trainer):
    config = copy.deepcopy(DEFAULT)
    config["recovery"]["methods"] = VARIANTS
    config["recovery"]["trainer"] = trainer
    workdir = workflow_copy(tmp_path / "wf", config)
    jobs = planned_jobs(workdir)
    # heal's default text (python_docs) is the calibration's source too: built once
    assert jobs == {**GRID_JOBS, "prepare_heal": 1, "recover": 18, "evaluate_variant": 108}
    # 1 model x 2 methods x 3 ratios x 3 trained variants
    assert jobs["recover"] == 18 and jobs["prepare_heal"] == 1
    output = snakemake(workdir, "-n", "-p", "--cores", "1").stdout
    recover = shell_commands(output, "recover")
    assert len(recover) == 18
    settings = [settings_of(argv) for argv in recover]
    assert all(s["trainer"] == trainer for s in settings)
    heal = [argv for argv in recover if flag(argv, "--recovery") == "heal"]
    assert len(heal) == 6 and all(is_shared(flag(argv, "--dataset"), "heal:.jsonl") for argv in heal)
    assert all((s["adam_beta1"], s["adam_beta2"]) == (0.9, 0.99) for s in settings)
    assert all((s["padding_free"], s["gradient_checkpointing"]) == (False, False) for s in settings)
    assert all(s["report_to"] == "none" for s in settings)


def test_paper_recovery_settings():
    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())["recovery"]
    assert paper["trainer"] == "qlora"
    assert (paper["lora_r"], paper["lora_alpha"], paper["lora_dropout"]) == (64, 16, 0.05)
    assert paper["learning_rate"] == 2e-4 and paper["num_epochs"] == 1
    assert (paper["lr_scheduler"], paper["warmup_steps"]) == ("constant_with_warmup", 50)
    assert (paper["adam_beta1"], paper["adam_beta2"], paper["weight_decay"]) == (0.9, 0.99, 1e-4)
    assert (paper["batch_size"], paper["grad_accum"]) == (4, 2)
    assert paper["completion_only_loss"] is True


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(trainer="adapter"), "adapter"),
        (lambda r: r.update(precision="fp8"), "fp8"),
        (lambda r: r.update(report_to="mlflow"), "mlflow"),
        (lambda r: r.update(heal={"source": {"path": "a.txt", "hub": "b"}, "num_texts": 4}), "source"),
    ],
)
def test_bad_recovery_config_is_rejected(tmp_path, mutate, message):
    config = copy.deepcopy(DEFAULT)
    mutate(config["recovery"])
    workdir = workflow_copy(tmp_path / "wf", config)
    result = snakemake(workdir, "-n", "--cores", "1", check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


# --------------------------------------------------------------------------- heal text sources


def test_heal_text_from_a_local_file(tmp_path):
    (tmp_path / "corpus.txt").write_text("first document\nstill first\n\nsecond one\n\n\nthird\n")
    assert prepare_heal_text({"path": str(tmp_path / "corpus.txt")}, 3, 0, tmp_path / "heal.jsonl") == 3
    texts = sorted(r["text"] for r in read_jsonl(tmp_path / "heal.jsonl"))
    assert texts == ["first document\nstill first", "second one", "third"]
    with pytest.raises(ValueError, match="recovery.heal.num_texts"):
        prepare_heal_text({"path": str(tmp_path / "corpus.txt")}, 4, 0, tmp_path / "x.jsonl")


def test_heal_text_from_a_saved_hub_dataset(tmp_path):
    rows = {"body": [f"text number {i}" for i in range(10)], "id": list(range(10))}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(tmp_path / "ds")
    source = {"hub": str(tmp_path / "ds"), "split": "train", "text_field": "body"}
    prepare_heal_text(source, 4, 1, tmp_path / "a.jsonl")
    prepare_heal_text(source, 4, 1, tmp_path / "b.jsonl")
    a = read_jsonl(tmp_path / "a.jsonl")
    assert a == read_jsonl(tmp_path / "b.jsonl"), "seeded"
    assert len({r["text"] for r in a}) == 4 and all(r["text"] in rows["body"] for r in a)
    with pytest.raises(KeyError, match="text_field"):
        prepare_heal_text({**source, "text_field": "text"}, 4, 1, tmp_path / "c.jsonl")


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_heal_text_offline_is_disjoint_from_the_evaluated_tasks(tmp_path):
    """The default heal source (builtin python_docs: prose the project builds) shares no text with the
    default's evaluated tasks. It is the calibration text's source too: both are generic English, and
    neither is evaluated."""
    config = copy.deepcopy(DEFAULT)
    config["recovery"]["methods"] = [*config["recovery"]["methods"], "heal"]
    workdir = workflow_copy(tmp_path / "wf", config)
    snakemake(workdir, "--cores", "1", "--until", "prepare_heal", "prepare_calibration", "prepare_task")
    heal = read_jsonl(workdir / shared_file(workdir, "heal:.jsonl"))
    assert len(heal) == DEFAULT["recovery"]["heal"]["num_texts"]
    assert all(r["source"].startswith("builtin:python_docs#") for r in heal)
    heal_texts = {r["text"] for r in heal}
    evaluated = set()
    for task in DEFAULT["tasks"]:
        payload = json.loads((workdir / shared_file(workdir, "tasks", f"{task}.json")).read_text())
        evaluated |= {s["input"] for s in payload["samples"] + payload["fewshot"]}
    for text in heal_texts:
        assert not any(text in other or other in text for other in evaluated if len(other) > 20)


# --------------------------------------------------------------------------- real tiny DAG runs


@pytest.mark.slow  # 2 trainings and their evaluations beside a copy of the session's tiny run
def test_real_tiny_recovery_through_the_dag(tiny_run, tmp_path):
    """heal and data, trained for real by snakemake with the full trainer, evaluated as plain checkpoints.
    The other trainers run through the DAG elsewhere: lora in the session's tiny run (conftest.tiny_run, data and
    sgr), qlora in paper-mini's real run (merged and checked against the 4-bit model); heal's loss does not
    depend on the trainer (test_recover checks it on every token: test_heal_trains_with_lm_loss_on_every_token).
    A copy of the tiny run: its model, score and pruned checkpoint are reused, the trainer's change re-trains."""
    trainer = "full"
    source, config = tiny_run
    workdir = copy_run(source, tmp_path / "wf")
    config = copy.deepcopy(config)
    config["pruning"]["ratios"] = [0.25]
    config["recovery"].update(methods=["none", "data", "heal"], trainer=trainer, save_steps=1)
    config["recovery"]["heal"] = {"source": {"builtin_tasks": ["python_docs"]}, "num_texts": 8}
    config["tasks"].pop("knowledge")
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert planned_jobs(workdir)["recover"] == 2  # data (its trainer changed) and heal, nothing upstream
    snakemake(workdir, "--cores", "2")
    for variant in ("data", "heal"):
        out = workdir / f"results/{TINY_STUDY}/recovered/tiny/bi/0.25/{variant}"
        record = json.loads((out / "recovery.json").read_text())
        assert record["trainer"] == trainer and record["global_steps"] == 2
        assert {"loss_curve.csv", "loss_curve.png", "training_args.json", "config.json"} <= {
            p.name for p in out.iterdir()
        }
        assert not (out.parent / f"{variant}.work").exists()
        assert (workdir / f"results/{TINY_STUDY}/eval/tiny/bi/0.25/{variant}/addition.json").is_file()
    heal = workdir / f"results/{TINY_STUDY}/recovered/tiny/bi/0.25/heal/recovery.json"
    assert json.loads(heal.read_text())["settings"]["completion_only_loss"] is False
