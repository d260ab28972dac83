#!/bin/bash
# One recovery setting: `layerprune recover` on the pipeline's own pruned checkpoint (bi) with the default
# config's recovery settings overridden, then `layerprune evaluate` on arithmetic_probe and plural.
# usage: WORKFLOW_DIR=. bench/recovery_settings.sh NAME RATIO RECOVERY DATASET [recover-flag value ...]
# e.g.   WORKFLOW_DIR=. bench/recovery_settings.sh B 0.1 sgr results/default/selfgen/smollm2-135m.jsonl learning-rate 1e-3 num-epochs 4
set -e
export OMP_NUM_THREADS=1 TQDM_DISABLE=1
cd "${WORKFLOW_DIR:?set WORKFLOW_DIR to a workflow directory that has run score, prune and selfgen}"
name=$1 ratio=$2 recovery=$3 dataset=$4; shift 4
out=${OUT_DIR:-bench-recovery}/$name/bi/$ratio/$recovery
mkdir -p $(dirname $out)
declare -A s=([lora-r]=16 [lora-alpha]=32 [lora-dropout]=0.05 [learning-rate]=2e-4 [num-epochs]=1 [batch-size]=8
  [grad-accum]=1 [max-length]=192 [warmup-steps]=2 [lr-scheduler]=constant_with_warmup [weight-decay]=1e-4
  [adam-beta1]=0.9 [adam-beta2]=0.99 [max-steps]=-1)
while [ $# -gt 0 ]; do s[$1]=$2; shift 2; done
args=""; for k in "${!s[@]}"; do args="$args --$k ${s[$k]}"; done
if [ ! -d $out ]; then
/usr/bin/time -f "RECOVER $name $ratio $recovery cpu %U+%S s wall %e s" layerprune recover --model results/default/pruned/smollm2-135m/bi/$ratio --dataset $dataset --out $out \
  --recovery $recovery --trainer lora --precision auto $args --completion-only-loss true --padding-free false \
  --gradient-checkpointing false --save-steps 1000 --save-total-limit 1 --report-to none --seed 0 --dtype auto --threads 1 > $out.log 2>&1 || { tail -20 $out.log; exit 1; }
grep RECOVER $out.log
fi
for task in arithmetic_probe:3 plural:8; do
  t=${task%%:*}; m=${task##*:}
  /usr/bin/time -f "EVAL $name $ratio $recovery $t cpu %U+%S s" layerprune evaluate --model $out --task-file results/shared/tasks/*/$t.json --task-name $t \
    --model-name smollm2-135m --method bi --ratio $ratio --recovery $recovery --batch-size 32 --max-new-tokens $m --seed 0 \
    --prompting fewshot --threads 1 --out $out.$t.json 2>&1 | grep EVAL
  python3 -c "import json; d=json.load(open('$out.$t.json')); print('VALUE $name $ratio $recovery $t', round(d['value'],3), d['n'])"
done
