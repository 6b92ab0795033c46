#!/usr/bin/env bash
# GLIDN on CAD-120 (docs/reproduce-glidn.md): one leave-one-subject-out fold stage by stage, then the
# four folds with `hoitool crossval cad120` on the same features store (mean ± std across folds).
#
#   RAW=/data/CAD-120 examples/cad120/pipeline.sh
#
# Environment [default]:
#   RAW              the CAD-120 release (SubjectN_annotations/, SubjectN_rgbd_images/) [required]
#   OUT              output folder [cad120-out]
#   FOLD             test subject of the stage-by-stage fold [Subject1]
#   VAL              share of the training subjects' videos held out as val (never the test subject) [0.2]
#   FOLDS            test subjects of the cross-validation, comma-separated [every subject]
#   BOXES_ARGS       extra options of `extract boxes`     (e.g. "--device cuda:1")
#   FEATURES_ARGS    extra options of `extract features`  (e.g. "--weights /models/resnet50.pth")
#   TRAIN_ARGS       extra options of every training command, after the config file (e.g. "--amp")
# Options given here override the config files beside this script (the paper's values). Every stage
# resumes: re-running the script skips what is finished and continues what was interrupted.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${RAW:?set RAW to the CAD-120 release folder}"
out=${OUT:-cad120-out} fold=${FOLD:-Subject1} val=${VAL:-0.2}
boxes_args=${BOXES_ARGS:-} features_args=${FEATURES_ARGS:-} train_args=${TRAIN_ARGS:-}
runs="$out/runs/$fold"

# shellcheck disable=SC2086  # the *_ARGS are lists of options
{
  hoitool prepare cad120 --root "$RAW" --fold "$fold" --val "$val" --out "$out/$fold"
  hoitool extract boxes "$out/$fold" --out "$out/boxes.h5" --config "$here/boxes.yaml" $boxes_args
  hoitool extract features "$out/boxes.h5" --out "$out/features.h5" --config "$here/features.yaml" $features_args
  hoitool train-teacher "$out/features.h5" --view global --out "$runs/global" --config "$here/teacher.yaml" $train_args
  hoitool distill "$out/features.h5" --teacher "$runs/global" --view local --out "$runs/global-teacher" \
    --config "$here/student.yaml" $train_args
  hoitool eval "$runs/global-teacher"
  # Every fold (Subject1, Subject3, Subject4, Subject5): its own manifest, the same features store.
  hoitool crossval cad120 --root "$RAW" --features "$out/features.h5" --out "$out/crossval" --val "$val" \
    ${FOLDS:+--folds "$FOLDS"} --preset none --config "$here/student.yaml" $train_args
}
