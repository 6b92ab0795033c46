#!/usr/bin/env bash
# The GLIDN pipeline stage by stage on the built-in synthetic set (what `hoitool demo` runs for one seed).
set -euo pipefail
out=${1:-example-out}
hoitool prepare synthetic --out "$out/data"
hoitool extract boxes "$out/data" --out "$out/boxes.h5" --source dataset --frames 8 --top-k 2
hoitool extract features "$out/boxes.h5" --out "$out/features.zarr" --backbone resnet18 --weights random \
  --mode crop --set crop_size=64
hoitool cache info "$out/features.zarr"
for view in baseline global local; do
  hoitool train-teacher "$out/features.zarr" --view "$view" --out "$out/runs/$view" --preset demo
done
hoitool distill "$out/features.zarr" --teacher "$out/runs/global" --view local --out "$out/runs/global-to-local" --preset demo
hoitool distill "$out/features.zarr" --teacher "$out/runs/local" --view global --out "$out/runs/local-to-global" --preset demo
hoitool distill "$out/features.zarr" --dml --view local --out "$out/runs/dml" --preset demo
hoitool eval "$out/runs/global-to-local" --split test
hoitool report "$out"/runs/* "$out/runs/dml/peer" --out "$out/report"
