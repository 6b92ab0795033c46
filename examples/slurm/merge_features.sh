#!/usr/bin/env bash
# Join the shards examples/slurm/extract_features.sbatch wrote into FEATURES (equal to a single run, same
# fingerprint). Refuses an incomplete set (a failed task: resubmit it first) unless MERGE_ARGS=--allow-partial.
#
#   FEATURES=ch/features.h5 SHARDS=16 examples/slurm/merge_features.sh   (or sbatch it after the array)
#SBATCH --job-name=hoitool-merge
#SBATCH --time=01:00:00
set -euo pipefail
: "${FEATURES:?set FEATURES to the features store the shards are named after}"
shards=${SHARDS:-16}
stem=${FEATURES%.*} suffix=.${FEATURES##*.}
shopt -s nullglob
parts=("$stem".shard*-of-"$shards""$suffix")
[ ${#parts[@]} -gt 0 ] || { echo "error: no shards $stem.shard<i>-of-$shards$suffix found" >&2; exit 2; }
# shellcheck disable=SC2086  # MERGE_ARGS is a list of options
hoitool cache merge "${parts[@]}" --out "$FEATURES" ${MERGE_ARGS:-}
