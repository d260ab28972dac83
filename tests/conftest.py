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
    """One real `snakemake --cores 2` run of the tiny DAG (helpers.workflow.tiny_config),
    shared by every test that needs a finished run: the pipeline, re-run, SLURM and DVC
    tests. Treat it as read-only; copy it with `helpers.workflow.copy_run` to change it."""
    from helpers.models import CHAT_TEMPLATE, make_tiny_checkpoint
    from helpers.workflow import snakemake, tiny_config, workflow_copy

    reuse = os.environ.get("LAYERPRUNE_TEST_TINY_RUN")
    if reuse:  # iterating on these tests: a root an earlier session left (<basetemp>/pipeline0)
        root = Path(reuse)
        import yaml

        return root / "wf", yaml.safe_load((root / "wf" / "config.yaml").read_text())
    root = tmp_path_factory.mktemp("pipeline")
    model_dir = make_tiny_checkpoint(root / "tiny-model", family="llama", num_layers=4, chat_template=CHAT_TEMPLATE)
    config = tiny_config(model_dir)
    workdir = workflow_copy(root / "wf", config)
    snakemake(workdir, "--cores", "2")
    return workdir, config


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Groups for pytest-xdist's `--dist loadgroup` (pyproject's addopts): a module's tests run on one worker,
    so its module-scoped fixtures (a real tiny run, a built venv, a 270M model) are built once, not once on each
    worker; every module that uses the session's `tiny_run` joins one group, so that run is made once."""
    uses_tiny_run = {item.module.__name__ for item in items if "tiny_run" in getattr(item, "fixturenames", ())}
    for item in items:
        module = item.module.__name__
        item.add_marker(pytest.mark.xdist_group("tiny_run" if module in uses_tiny_run else module))
