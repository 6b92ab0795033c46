#!/usr/bin/env bash
# GLIDN on Charades with I3D-R50 features (docs/reproduce-glidn.md): prepare, RPN boxes on 10 clips,
# RoI features on 3 crops, a local-context teacher, the global student it distils, eval by the official metric.
#
#   RAW=/data/Charades examples/charades/pipeline.sh
#
# Environment [default]:
#   RAW              the Charades release (Charades_v1_*.csv, Charades_v1_classes.txt, Charades_v1_480/) [required]
#   OUT              output folder [charades-out]
#   BOXES_ARGS       extra options of `extract boxes`     (e.g. "--device cuda:1")
#   FEATURES_ARGS    extra options of `extract features`  (e.g. "--weights /models/I3D_8x8_R50.pyth --amp")
#   TRAIN_ARGS       extra options of every training command, after the config file (e.g. "--amp")
# Options given here override the config files beside this script (the paper's values). Every stage
# resumes: re-running the script skips what is finished. For several GPUs see examples/torchrun.sh;
# for a cluster, examples/slurm/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${RAW:?set RAW to the Charades release folder}"
out=${OUT:-charades-out}
boxes_args=${BOXES_ARGS:-} features_args=${FEATURES_ARGS:-} train_args=${TRAIN_ARGS:-}

# shellcheck disable=SC2086  # the *_ARGS are lists of options
{
  hoitool prepare charades --root "$RAW" --out "$out/data"
  hoitool extract boxes "$out/data" --out "$out/boxes.h5" --config "$here/boxes.yaml" $boxes_args
  hoitool extract features "$out/boxes.h5" --out "$out/features.h5" --config "$here/features.yaml" $features_args
  hoitool train-teacher "$out/features.h5" --view local --out "$out/runs/local" --config "$here/teacher.yaml" $train_args
  hoitool distill "$out/features.h5" --teacher "$out/runs/local" --view global --out "$out/runs/local-teacher" \
    --config "$here/student.yaml" $train_args
  # Every test video of Charades_v1_test.csv, the 30 views of each fused by max (official mAP).
  hoitool eval "$out/runs/local-teacher" --fusion max
}
