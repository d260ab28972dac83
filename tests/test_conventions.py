"""Workflow-catalog conventions, enforced: lint, formatting, conda envs, logs, benchmarks, shell quoting.

`snakemake --lint`, `snakefmt --check` and `ruff format --check` must be clean; every rule
that runs a command declares the conda env in envs/ (pinned as constraints.txt), a log
and, when it runs as a cluster job, a benchmark; and no config value reaches a shell
unquoted: a config with shell syntax in every string setting runs no injected command.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from helpers.plans import GRID as DEFAULT
from helpers.workflow import BIN, REPO, flag, run, shared_file, shell_commands, snakemake, workflow_copy

# Commands of these rules run as cluster jobs: they get a benchmark (CPU-s, wall, max RSS).
COMPUTE_RULES = {
    "materialize", "score", "score_iterative", "prune", "selfgen", "magpie_prompts", "recover", "recover_kd",
    "evaluate_dense", "evaluate_pruned", "evaluate_variant",
}  # fmt: skip


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert found, f"{name} is not installed (pip install -e .[test])"
    return found


def constraints(name: str = "constraints.txt") -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_snakemake_lint_is_clean(tmp_path):
    workdir = workflow_copy(tmp_path / "wf")
    result = snakemake(workdir, "--lint", check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Lints for" not in output, output[-3000:]


def test_snakefmt_and_ruff_format_are_clean():
    snakefiles = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    done = run([tool("snakefmt"), "--check", *map(str, snakefiles)], REPO, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run([tool("ruff"), "format", "--check", "src", "tests", "bench"], REPO, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


VLLM_RULES = {"selfgen", "magpie_prompts"}


def test_gpu_constraints_are_the_tested_ones_plus_vllm():
    """constraints-gpu.txt differs from constraints.txt only by vLLM (on Python 3.13: its header says why)."""
    cpu, gpu = constraints(), constraints("constraints-gpu.txt")
    assert {k: v for k, v in gpu.items() if cpu.get(k) != v} == {"vllm": "0.30.0"}
    assert set(cpu) <= set(gpu)
    assert '"vllm==0.30.0"' in (REPO / "pyproject.toml").read_text()


def test_env_files_pin_the_tested_versions():
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert [env.name for env in envs] == ["layerprune-gpu.yaml", "layerprune.yaml"]
    for env in envs:
        pins = constraints("constraints-gpu.txt" if env.stem == "layerprune-gpu" else "constraints.txt")
        assert (REPO / "envs" / f"{env.stem}.post-deploy.sh").is_file(), env.name
        spec = yaml.safe_load(env.read_text())
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
        for requirement in pip:
            name, version = requirement.split("==")
            assert pins.get(re.sub(r"[-_.]+", "-", name).lower()) == version, f"{env.name}: {requirement}"
        python = next(d for d in spec["dependencies"] if isinstance(d, str) and d.startswith("python="))
        # the GPU environment needs 3.13 (constraints-gpu.txt's header: vLLM's numpy marker)
        assert python == ("python=3.13" if env.stem == "layerprune-gpu" else "python=3.11")
    # every runtime dependency of the package that a job imports is in the env
    pyproject = (REPO / "pyproject.toml").read_text()
    block = pyproject[pyproject.index("dependencies = [") : pyproject.index("]", pyproject.index("dependencies = ["))]
    wanted = {re.sub(r"[-_.]+", "-", re.match(r'\s*"([A-Za-z0-9_.-]+)', line).group(1)).lower()
              for line in block.splitlines()[1:] if line.strip().startswith('"')}  # fmt: skip
    in_env = {
        re.sub(r"[-_.]+", "-", requirement.split("==")[0]).lower()
        for env in envs
        for d in yaml.safe_load(env.read_text())["dependencies"]
        if isinstance(d, dict)
        for requirement in d["pip"]
    }
    workflow_only = {"snakemake", "snakemake-executor-plugin-slurm", "dvc"}  # the driver, not the jobs
    assert wanted - workflow_only <= in_env, wanted - workflow_only - in_env


def rule_blocks() -> dict[str, str]:
    """Rule name -> its text, from every Snakefile of the workflow."""
    blocks = {}
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        text = path.read_text()
        starts = [(m.start(), m.group(2)) for m in re.finditer(r"^( *)rule (\w+):", text, flags=re.M)]
        for (start, name), (end, _) in zip(starts, [*starts[1:], (len(text), "")], strict=False):
            blocks[name] = text[start:end]
    return blocks


def test_every_rule_that_runs_a_command_has_conda_log_and_benchmark():
    blocks = rule_blocks()
    assert COMPUTE_RULES <= set(blocks)
    for name, block in blocks.items():
        if "shell:" not in block:
            assert name == "all", name
            continue
        # the rules that may generate with vLLM get the GPU environment (vLLM, numpy<2.4)
        env = "layerprune-gpu" if name in VLLM_RULES else "layerprune"
        assert "conda:\n" in block and f'"../../envs/{env}.yaml"' in block, name
        # logs/<rule>/..., literally or through study_log / shared_log (logs/<rule>/<study or shared>/...)
        assert re.search(rf'log:\n\s+("logs/{name}[/.]|(study|shared)_log\("{name}", )', block), name
        assert ("benchmark:" in block) == (name in COMPUTE_RULES), name
        assert "> {log:q} 2>&1" in block or ">> {log:q} 2>&1" in block, f"{name}: the job's output goes to its log"
        if name in COMPUTE_RULES:  # the time table finds a job's usage line in the log beside its benchmark
            log = re.search(r'log:\n\s+("logs/[^"]+)\.log"|(study|shared)_log\(([^)]+)\)', block)
            benchmark = re.search(
                r'benchmark:\n\s+("benchmarks/[^"]+)\.tsv"|(study|shared)_benchmark\(([^)]+)\)', block
            )
            assert (log[1] or "").removeprefix('"logs/') == (benchmark[1] or "").removeprefix('"benchmarks/'), name
            assert (log[2], log[3]) == (benchmark[2], benchmark[3]), name


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_job_output_lands_in_its_log(tmp_path):
    """A real job (the calibration set) writes nothing to the terminal and its own lines to logs/."""
    workdir = workflow_copy(tmp_path / "wf")
    snakemake(workdir, "--cores", "1", "--until", "prepare_calibration")
    logs = {p.relative_to(workdir).as_posix() for p in (workdir / "logs").rglob("*.log")}
    assert "logs/build_task/python_docs.log" in logs and not any("bigbench" in log for log in logs)
    fp = Path(shared_file(workdir, "calibration:.jsonl")).stem
    assert f"logs/prepare_calibration/{fp}.log" in logs


# Shell syntax in every string a rule could put into a command: each would create a marker file
# if it reached a shell unquoted.
INJECT = "x; touch {marker}; echo $(touch {marker}) `touch {marker}` '\""


def hostile_config(marker: str) -> dict:
    """Shell syntax in every free-text string setting (names have patterns: see the test below)."""
    payload = INJECT.format(marker=marker)
    config = copy.deepcopy(DEFAULT)
    config["prompts"].update(system_prompt=payload, separator=payload, split=payload, name=payload, path=payload)
    config["prompts"]["prompt_fields"] = [payload]
    config["tasks"]["arc"] = {
        "type": "classification", "lm_eval_task": "arc_easy", "num_fewshot": 0, "lm_eval_include_path": payload,
    }  # fmt: skip
    config["tasks"]["humaneval"]["split"] = payload
    config["recovery"]["lora_target_modules"] = [payload]
    config["recovery"]["report_to"] = "none"
    config["models"]["smollm2-135m"]["source"]["gguf"] = payload
    config["recovery"]["heal"] = {"source": {"hub": payload, "split": payload, "text_field": payload}}
    config["recovery"]["methods"] = ["none", "data", "sgr", "heal"]
    return config


@pytest.mark.slow  # a real run of the whole hostile config (~20 s)
def test_shell_syntax_in_config_strings_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    workdir = workflow_copy(tmp_path / "wf", hostile_config(str(marker)))
    output = snakemake(workdir, "-n", "-p", "--cores", "1").stdout
    # every string arrives intact: the settings JSON of each command parses back to the payload
    payload = INJECT.format(marker=marker)
    (prepare,) = shell_commands(output, "prepare-prompts")
    prompts = json.loads(prepare[prepare.index("--settings") + 1])
    assert prompts["system_prompt"] == prompts["separator"] == payload and prompts["prompt_fields"] == [payload]
    (lm_eval,) = shell_commands(output, "prepare-lm-eval-task")
    assert "--include-path=" + payload in lm_eval
    specs = [json.loads(argv[argv.index("--spec") + 1]) for argv in shell_commands(output, "prepare-task")]
    assert [spec["split"] for spec in specs if spec.get("dataset") == "humaneval"] == [payload]
    recover = shell_commands(output, "recover")
    assert {json.loads(argv[argv.index("--settings") + 1])["lora_target_modules"][0] for argv in recover} == {payload}
    (materialize,) = shell_commands(output, "materialize")
    assert json.loads(materialize[materialize.index("--source") + 1])["gguf"] == payload
    # real runs of the jobs whose commands carry those strings: they fail (no such task or
    # dataset), but the shell never runs the injected commands
    for until in ("prepare_lm_eval_task", "prepare_prompts", "prepare_heal", "prepare_task"):
        snakemake(workdir, "--cores", "1", "--keep-going", "--until", until, check=False)
    assert not marker.exists(), "a config value reached a shell unquoted"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["models"].update({"a;b": {"source": {"hub": "x/y"}}}), "a;b"),
        (lambda c: c["tasks"].update({"t$(x)": {"type": "classification", "bigbench_task": "x", "num_fewshot": 0}}),
         "t$(x)"),
        (lambda c: c["scoring"].update(methods=["bi;touch"]), "bi;touch"),
        (lambda c: c["recovery"].update(methods=["none", "sgr x"]), "sgr x"),
        (lambda c: c["prompts"].update(source="bigbench", bigbench_tasks=["a b"]), "a b"),
        (lambda c: c["prompts"].update(builtin_tasks=["a b"]), "a b"),
        (lambda c: c["tasks"]["plural"].update(builtin_task="x; touch y"), "x; touch y"),
        (lambda c: c["tasks"].update(arc={"type": "classification", "lm_eval_task": "x --help; touch /tmp/PWNED; echo",
                                          "num_fewshot": 0}), "lm_eval_task"),
    ],
)  # fmt: skip
def test_names_with_shell_syntax_are_rejected(tmp_path, mutate, message):
    """Names become wildcards and paths: the schema's patterns and registries admit no shell syntax."""
    config = copy.deepcopy(DEFAULT)
    mutate(config)
    workdir = workflow_copy(tmp_path / "wf", config)
    result = snakemake(workdir, "-n", "--cores", "1", check=False)
    assert result.returncode != 0 and message in result.stdout + result.stderr


def test_dvc_versions_the_report_folder_the_aggregate_rule_writes(tmp_path):
    """The report's outputs are listed once, in rule aggregate: all lie under results/<study>/report/,
    inside the `results` out of dvc.yaml, and its top-level metrics and plots are files aggregate writes."""
    workdir = workflow_copy(tmp_path / "wf")
    output = snakemake(workdir, "-n", "-p", "--cores", "1", "-R", "aggregate", "--until", "aggregate").stdout
    block = output[output.index("rule aggregate:") :]
    written = {path.strip() for path in block.split("output:", 1)[1].splitlines()[0].split(", ")}
    report = "results/default/report"
    assert {f"{report}/summary.csv", f"{report}/report.md", f"{report}/metrics.json"} <= written
    assert all(path.startswith(f"{report}/") for path in written), sorted(written)
    (command,) = shell_commands(output, "aggregate")
    assert flag(command, "--out-dir") == report

    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stage = dvc["stages"]["default"]  # the default study's stage (layerprune dvc-stages, from studies.yaml)
    assert set(stage) & {"metrics", "plots"} == set(), "stage outs may not overlap results/<study>: top level only"
    outs = {next(iter(entry)): entry[next(iter(entry))] for entry in stage["outs"]}
    assert outs == {"results/default": {"persist": True}}
    shared = {next(iter(entry)): entry[next(iter(entry))] for entry in dvc["stages"]["shared"]["outs"]}
    assert shared == {
        "results/shared": {"persist": True},
        ".snakemake/metadata": {"persist": True, "cache": False},  # git versions the provenance records
    }
    metrics = [next(iter(e)) if isinstance(e, dict) else e for e in dvc["metrics"]]
    plots = [next(iter(e)) if isinstance(e, dict) else e for e in dvc["plots"]]
    assert metrics == [f"{report}/metrics.json"]
    assert plots == [f"{report}/summary.csv"]
    assert set(metrics + plots) <= written
    assert "envs" in stage["deps"], "a changed environment file must re-run the DVC stage"
