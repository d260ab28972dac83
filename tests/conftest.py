"""Fixtures shared by the test modules; their plain helpers are in the `helpers` package.

Import helpers with ``from helpers.models import make_tiny_checkpoint`` (pytest puts this directory on
``sys.path``); this module holds fixtures only. torch is imported inside the fixtures that need it, so a
collection of tests that never touch a model does not pay for it.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# pytest-xdist hands out whole modules, the longest first (helpers/scheduling.py)
from helpers.scheduling import pytest_collection_modifyitems  # noqa: E402, F401


@pytest.fixture
def single_thread():
    """Run torch on one thread: tiny models gain nothing from more, and on a busy machine
    oversubscribed intra-op threads make a 20 ms generate() take seconds."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One real `snakemake --cores 2` run of the tiny DAG (helpers.workflow.tiny_config), made once per session
    for both xdist workers (helpers.scheduling.build_once) and shared by every test that needs a finished run:
    the pipeline, re-run, SLURM, DVC and study tests. Read-only: write nothing into it (a changed config goes
    beside it, see `helpers.workflow.planned_with`); copy it with `helpers.workflow.copy_run` to change it."""
    import yaml
    from helpers.models import CHAT_TEMPLATE, make_tiny_checkpoint
    from helpers.scheduling import build_once
    from helpers.workflow import snakemake, tiny_config, workflow_copy

    def build(root: Path) -> None:
        model_dir = make_tiny_checkpoint(root / "tiny-model", family="llama", num_layers=4, chat_template=CHAT_TEMPLATE)
        snakemake(workflow_copy(root / "wf", tiny_config(model_dir)), "--cores", "2")

    reuse = os.environ.get("LAYERPRUNE_TEST_TINY_RUN")
    # iterating on these tests: a root an earlier session left (<basetemp>/pipeline)
    root = Path(reuse) if reuse else build_once(tmp_path_factory, "pipeline", build)
    return root / "wf", yaml.safe_load((root / "wf" / "config.yaml").read_text())
