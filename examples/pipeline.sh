#!/usr/bin/env bash
# The GLIDN pipeline stage by stage on the built-in synthetic set (what `hoitool demo` runs for one seed).
#
#   examples/pipeline.sh [OUT]
#
# Environment [default]: OUT (or the first argument) [example-out]; PREPARE_ARGS, BOXES_ARGS, FEATURES_ARGS and
# TRAIN_ARGS: extra options of `prepare synthetic`, `extract boxes`, `extract features` and every training command.
set -euo pipefail
out=${1:-${OUT:-example-out}}
prepare_args=${PREPARE_ARGS:-} boxes_args=${BOXES_ARGS:-} features_args=${FEATURES_ARGS:-} train_args=${TRAIN_ARGS:-}
# shellcheck disable=SC2086  # the *_ARGS are lists of options
{
  hoitool prepare synthetic --out "$out/data" $prepare_args
  hoitool extract boxes "$out/data" --out "$out/boxes.h5" --source dataset --frames 8 --top-k 2 $boxes_args
  hoitool extract features "$out/boxes.h5" --out "$out/features.zarr" --backbone resnet18 --weights random \
    --mode crop --set crop_size=64 $features_args
  hoitool cache info "$out/features.zarr"
  for view in baseline global local; do
    hoitool train-teacher "$out/features.zarr" --view "$view" --out "$out/runs/$view" --preset demo $train_args
  done
  hoitool distill "$out/features.zarr" --teacher "$out/runs/global" --view local --out "$out/runs/global-to-local" \
    --preset demo $train_args
  hoitool distill "$out/features.zarr" --teacher "$out/runs/local" --view global --out "$out/runs/local-to-global" \
    --preset demo $train_args
  hoitool distill "$out/features.zarr" --dml --view local --out "$out/runs/dml" --preset demo $train_args
  hoitool eval "$out/runs/global-to-local" --split test
  hoitool report "$out"/runs/* "$out/runs/dml/peer" --out "$out/report"
}
