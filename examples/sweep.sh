#!/usr/bin/env bash
# A T x lambda2 sweep of distillation (the paper's Table 9), over seeds, then one report.
#
#   examples/sweep.sh FEATURES TEACHER_RUN STUDENT_VIEW OUT [PRESET]
#   examples/sweep.sh demo-out/features.h5 demo-out/runs/seed0/global local sweep demo
#
# Environment [default]: TS [1 5 10 20], LAMBDAS [0.3 0.5 0.7], SEEDS [0 1 2] (space-separated lists);
# TRAIN_ARGS: extra options of every distill run.
# Every run is resumable: re-running the script skips finished runs and continues interrupted ones.
set -euo pipefail
features=$1 teacher=$2 view=$3 out=$4 preset=${5:-demo}
train_args=${TRAIN_ARGS:-}
for T in ${TS:-1 5 10 20}; do
  for lambda2 in ${LAMBDAS:-0.3 0.5 0.7}; do
    for seed in ${SEEDS:-0 1 2}; do
      run="$out/T${T}-l${lambda2}/seed${seed}"
      resume=(); [ -f "$run/run.json" ] && resume=(--resume)
      # shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
      hoitool distill "$features" --teacher "$teacher" --view "$view" --out "$run" --preset "$preset" \
        --T "$T" --generalized "$lambda2" --seed "$seed" "${resume[@]}" $train_args
    done
  done
done
hoitool report "$out"/T*/seed* --out "$out/report" --split test
