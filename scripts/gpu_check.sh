#!/usr/bin/env bash
# The GPU check: a thin wrapper around scripts/gpu_check.py (one Python process; see its docstring), so that
# `bash scripts/gpu_check.sh [--dry-run] [--device cpu] [--skip-8b] ...` keeps working. PYTHON picks the
# interpreter (default: python3, e.g. the GPU machine's own, with torch and transformers installed).
# Prepare the bundle it needs where there is network first: bash scripts/gpu_bundle.sh
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"
