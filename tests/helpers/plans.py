"""Configs and checkpoints a plan reads, `snakemake -n` of a config, and the job counts the plans must give."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from helpers.models import make_config, make_tokenizer
from helpers.workflow import REPO, snakemake, workflow_copy

# The embedded default (config.yaml), as the plan checks read it. Treat it as read-only: copy it to change it.
DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())
# The DAG's arithmetic is tested on a fixed grid (the default before issue 12), not on the embedded
# default, so the literal job tables below do not change whenever the default does.
GRID = yaml.safe_load((REPO / "tests" / "fixtures" / "grid_config.yaml").read_text())


# What each config plans, counted by hand from the grid (not by re-deriving the DAG).
# The embedded default: 1 model x 1 method (bi) x 2 ratios x (4 tasks without recovery (evaluate_pruned) +
# 2 trained recoveries x 2 generative tasks (evaluate_variant)) = 8 + 8 evaluations, 2 x 2 trained
# recoveries = 4 recover jobs, 12 tasks the project builds (country_continent, country_capital_choice,
# 3 arithmetic probe ops, plural, 1 calibration, 5 prompt tasks); nothing from BIG-bench.
DEFAULT_JOBS = {
    "all": 1, "build_task": 12, "prepare_task": 4, "prepare_prompts": 1,
    "prepare_calibration": 1, "materialize": 1, "score": 1, "prune": 2, "filter_prompts": 1, "selfgen": 1,
    "recover": 4, "evaluate_dense": 4, "evaluate_pruned": 8, "evaluate_variant": 8, "aggregate": 1,
}  # fmt: skip
# The grid: 1 model x 2 methods x 3 ratios x 3 recoveries x 6 tasks = 108 variant evaluations,
# 2 x 3 x 2 trained recoveries = 12 recover jobs, 19 built tasks (1 classification + 3 arithmetic
# probe ops + 8 multidigit + plural + country_capital, 1 calibration, 4 prompt tasks).
GRID_JOBS = {
    "all": 1, "build_task": 19, "prepare_task": 6, "prepare_prompts": 1,
    "prepare_calibration": 1, "materialize": 1, "score": 2, "prune": 6, "filter_prompts": 1, "selfgen": 1,
    "recover": 12, "evaluate_dense": 6, "evaluate_pruned": 36, "evaluate_variant": 72, "aggregate": 1,
}  # fmt: skip


def checkpoint_config(path: Path, family: str = "llama", num_layers: int = 4) -> Path:
    """A checkpoint directory with a tiny `family` config.json and a tokenizer (all a plan reads), made by
    transformers itself."""
    from transformers import GPT2Config, MixtralConfig

    if family == "gpt2":
        config = GPT2Config(n_layer=num_layers, n_embd=16, n_head=2, vocab_size=64)
    elif family == "mixtral":
        config = MixtralConfig(
            num_hidden_layers=num_layers, hidden_size=16, intermediate_size=32, num_attention_heads=2,
            num_key_value_heads=1, vocab_size=64, num_local_experts=4, num_experts_per_tok=2,
        )  # fmt: skip
    else:
        config = make_config(family, num_layers)
    config.save_pretrained(path)
    make_tokenizer().save_pretrained(path)  # the plan checks that a local checkpoint has a tokenizer
    return path


def dry_run(tmp_path: Path, config: dict, *args: str, files: dict[str, str] | None = None):
    """`snakemake -n` of `config` (written as the embedded config.yaml) plus `files` written beside it."""
    workdir = workflow_copy(tmp_path / "wf", config)
    for name, text in (files or {}).items():
        (workdir / name).write_text(text)
    result = snakemake(workdir, "-n", "--cores", "1", *args, check=False)
    return result.returncode, result.stdout + result.stderr


def local_study(model_dir: Path, ratios: list[float]) -> dict:
    """The embedded default with its one model replaced by the local checkpoint `model_dir`, pruned at `ratios`."""
    config = copy.deepcopy(DEFAULT)
    config["models"] = {"mine": {"source": {"path": str(model_dir)}}}
    config["pruning"]["ratios"] = ratios
    return config
