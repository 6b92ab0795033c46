#!/usr/bin/env bash
# A T x lambda2 sweep of distillation (the paper's Table 9), over seeds, then one report.
#
#   examples/sweep.sh FEATURES TEACHER_RUN STUDENT_VIEW OUT [PRESET]
#   examples/sweep.sh demo-out/features.h5 demo-out/runs/seed0/global local sweep demo
#
# Every run is resumable: re-running the script skips finished runs and continues interrupted ones.
set -euo pipefail
features=$1 teacher=$2 view=$3 out=$4 preset=${5:-demo}
for T in 1 5 10 20; do
  for lambda2 in 0.3 0.5 0.7; do
    for seed in 0 1 2; do
      run="$out/T${T}-l${lambda2}/seed${seed}"
      resume=(); [ -f "$run/run.json" ] && resume=(--resume)
      hoitool distill "$features" --teacher "$teacher" --view "$view" --out "$run" --preset "$preset" \
        --T "$T" --generalized "$lambda2" --seed "$seed" "${resume[@]}"
    done
  done
done
hoitool report "$out"/T*/seed* --out "$out/report" --split test
