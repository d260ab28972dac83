#!/usr/bin/env bash
# Snakemake runs this once, inside the new environment, right after creating it from
# layerprune.yaml (`--sdm conda`), in the directory snakemake runs in (the checkout):
# install this checkout's layerprune package, without touching the pinned dependencies.
set -euo pipefail
pip install --no-deps --editable .
