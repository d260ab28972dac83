#!/usr/bin/env bash
# The wheel bundle scripts/gpu_check.py needs on a GPU machine that has torch, transformers,
# huggingface_hub, peft, accelerate, pandas, numpy, safetensors and tokenizers but no network:
# trl, datasets (with pyarrow, dill, multiprocess, xxhash), lm_eval (with requests and sacrebleu), evaluate
# and bitsandbytes, at the versions constraints.txt pins (but sacrebleu, see below), downloaded here from PyPI for that machine's Python (manylinux x86_64)
# and packed into one tar.xz (29.8 MB for Python 3.12 at xz -9, measured 2026-12-07: little margin
# under the limit below; bitsandbytes' CUDA 13.2 library (4 MB) is the next thing to leave out if needed).
#
#   bash scripts/gpu_bundle.sh [--python-version 3.12] [--out build/gpu_bundle.tar.xz] [--level 9]
#
# Left out, so that it stays under 30 MB: bitsandbytes' libraries for other CUDA versions and ROCm
# (kept: the CPU one and CUDA 13's, which torch 2.11+ needs), pyarrow's headers, tests, Flight, S3,
# ORC and the duplicate copies of libarrow_python, and lm_eval's own task library (the check runs
# local tasks). The wheels are stored uncompressed inside the tar so that xz compresses across them;
# each stays a valid wheel (its RECORD lists what it holds), so `pip install --no-deps` takes them too.
# --level is xz's preset (0-9): lower packs faster and bigger (for a local test run; the 30 MB limit is
# enforced at the default, 9, the pack that travels).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
PYVER=3.12
OUT="$REPO/build/gpu_bundle.tar.xz"
LEVEL=9
DEFAULT_LEVEL=9
LIMIT_MB=30
while [[ $# -gt 0 ]]; do
    case "$1" in
        --python-version) PYVER="$2"; shift ;;
        --out) OUT="$(realpath -m "$2")"; shift ;;
        --level) LEVEL="$2"; shift ;;
        *) echo "gpu_bundle: unknown argument $1 (usage: gpu_bundle.sh [--python-version X.Y] [--out FILE] [--level 0-9])" >&2; exit 2 ;;
    esac
    shift
done
# what lm-eval imports at its start besides: requests (and its needs), sacrebleu with portalocker, tabulate
# and colorama. sacrebleu 1.5.1, not the pinned 2.x: 2.x imports lxml (5 MB) at its start, and no step of
# the check computes BLEU (report.py's self-BLEU runs on the CPU machines, with the pinned version).
PACKAGES=(trl datasets lm_eval evaluate bitsandbytes pyarrow dill multiprocess xxhash
    requests urllib3 idna charset_normalizer certifi portalocker tabulate colorama)
pins=(sacrebleu==1.5.1)
for package in "${PACKAGES[@]}"; do  # the versions the project is tested with
    pin="$(grep -iE "^${package//_/[-_]}==" constraints.txt | cut -d' ' -f1)"
    [[ -n "$pin" ]] || { echo "gpu_bundle: constraints.txt pins no $package" >&2; exit 1; }
    pins+=("$pin")
done
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$WORK/download" \
    --python-version "$PYVER" --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "${pins[@]}" 2> >(grep -v "^WARNING: Location" >&2)
mkdir -p "$WORK/wheels"
python3 - "$WORK/download" "$WORK/wheels" <<'PY'
"""Rewrite each wheel without what the check never loads, stored uncompressed (xz packs the whole)."""
import re
import sys
import zipfile
from pathlib import Path

DROP = [
    r"bitsandbytes/libbitsandbytes_(?!cpu|cuda13).*",  # other CUDA versions and ROCm
    r"pyarrow/(include|tests|src)/.*",
    r"pyarrow/.*\.(pyx|pxd|pxi|h)$",
    r"pyarrow/(lib)?_?(arrow_)?(flight|s3|s3fs|orc|dataset_orc|gcsfs|azurefs|hdfs|pyarrow_cpp_tests|arrow_python_flight).*",
    r"pyarrow/libarrow_python\.so(\.\d+\.\d+\.\d+)?$",  # copies of libarrow_python.so.<major>, which is kept
    r"pyarrow/libarrow_python_parquet_encryption\.so(\.\d+\.\d+\.\d+)?$",
    r"lm_eval/tasks/[^/]+/.*",  # lm-eval's task library (the check writes its own local tasks)
]
drop = re.compile("|".join(f"(?:{pattern})" for pattern in DROP))
source, target = Path(sys.argv[1]), Path(sys.argv[2])
for wheel in sorted(source.glob("*.whl")):
    kept = dropped = 0
    with zipfile.ZipFile(wheel) as old, zipfile.ZipFile(target / wheel.name, "w", zipfile.ZIP_STORED) as new:
        names = [n for n in old.namelist() if not drop.match(n)]
        for info in old.infolist():
            if info.filename not in names:
                dropped += info.file_size
                continue
            data = old.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(line for line in lines if not drop.match(line.split(",", 1)[0])) + "\n").encode()
            info.compress_type = zipfile.ZIP_STORED
            new.writestr(info, data)
            kept += info.file_size
    print(f"{wheel.name}: kept {kept / 1e6:.1f} MB, dropped {dropped / 1e6:.1f} MB")
PY
mkdir -p "$(dirname "$OUT")"
tar -C "$WORK/wheels" -cf - . | xz -"$LEVEL" -T2 > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
size=$(stat -c %s "$OUT")
echo "gpu_bundle: $OUT: $(awk "BEGIN {printf \"%.1f\", $size / 1e6}") MB packed (Python $PYVER, xz -$LEVEL)"
if (( size > LIMIT_MB * 1000000 && LEVEL == DEFAULT_LEVEL )); then
    echo "gpu_bundle: over the ${LIMIT_MB} MB the GPU machine's carry allows the bundle" >&2
    exit 1
fi
