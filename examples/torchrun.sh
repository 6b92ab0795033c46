#!/usr/bin/env bash
# Train on several GPUs with DDP (docs/training.md): one process per GPU, --batch-size stays the global batch,
# the same config gives the same training at any world size; only rank 0 validates and writes.
#
#   FEATURES=charades-out/features.h5 OUT=charades-out/runs/local NPROC=4 examples/torchrun.sh
#
# Environment [default]:
#   FEATURES         the features store [required]
#   OUT              the run directory [required]
#   NPROC            processes (GPUs) on this node [4]
#   VIEW             context graph [local]
#   CONFIG           training config [examples/charades/teacher.yaml]
#   TRAIN_ARGS       extra options (e.g. "--amp")
# `--no-python hoitool` runs the hoitool on PATH in each process; `-m hoitool` (python -m) is the same.
# Re-running resumes from the run's last.pt, at any NPROC.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${FEATURES:?set FEATURES to the features store}" "${OUT:?set OUT to the run directory}"
# shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
torchrun --standalone --nproc_per_node "${NPROC:-4}" --no-python \
  hoitool train-teacher "$FEATURES" --view "${VIEW:-local}" --out "$OUT" --config "${CONFIG:-$here/charades/teacher.yaml}" \
  ${TRAIN_ARGS:-}
