#!/usr/bin/env bash
# Scores the "Stage 14" weights (scripts/train_stage14.sh) on whole scenes never trained on, paired against their
# control: the three real pairs (`d3rsmde data pairs`), 4 GLOBE test scenes and 2 world test scenes
# (scripts/scene_tile_eval.py), coarse only and T = 6, tile 256. Prints one line per scene and T:
# settled minus control, MAE / SSIM / LPIPS / grad r, each +- its paired standard error.
set -euo pipefail
work=${WORK:-build/stage14}
world=${WORLD:-build/default-weights/world}
scenes=()
while IFS=$'\t' read -r name image dem; do scenes+=(--scene "$name=$image,$dem"); done < <(d3rsmde data pairs 2>/dev/null)
for kind in control settled; do
  [ -f "$work/eval-$kind/results.json" ] || python scripts/scene_tile_eval.py --weights "$work/stage14-$kind.safetensors" \
    --tiles 256 --steps 0,6 --max-scenes 4 --world "$world" "${scenes[@]}" --out "$work/eval-$kind"
done
declare -A real_dem
while IFS=$'\t' read -r name image dem; do real_dem[$name]=$dem; done < <(d3rsmde data pairs 2>/dev/null)
for pred in "$work"/eval-settled/*-tile256-T*.tif; do
  file=$(basename "$pred"); scene=${file%-tile256-T*}
  dem=${real_dem[$scene]:-$work/eval-settled/$scene-dem.tif}
  echo "== $file"
  d3rsmde evaluate "$pred" "$dem" --whole-scene --versus "$work/eval-control/$file" \
    | awk '/^whole scene/ {on = 1} on && /\.tif \|/ {print} /minus/ {print}'
done
