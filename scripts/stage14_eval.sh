#!/usr/bin/env bash
# Scores the "Stage 14" weights (scripts/train_stage14.sh) on whole scenes never trained on, paired against their
# control and the shipped weights: the three real pairs (`d3rsmde data pairs`), 4 GLOBE test scenes and 2 world test
# scenes (scripts/scene_tile_eval.py), coarse only and T = 6, tile 256. Prints, per scene and T, the settled
# model's figures and settled minus control, then settled minus shipped (MAE / SSIM / LPIPS / grad r, each +- its
# paired standard error). Tables per model: $WORK/eval-{shipped,control,settled,halfway}/results.md.
set -euo pipefail
work=${WORK:-build/stage14}
world=${WORLD:-build/default-weights/world}
scenes=()
declare -A real_dem
while IFS=$'\t' read -r name image dem; do
  scenes+=(--scene "$name=$image,$dem"); real_dem[$name]=$dem
done < <(d3rsmde data pairs 2>/dev/null)
for kind in shipped control settled halfway; do  # halfway: shipped and settled weights averaged, if made
  weights="$work/stage14-$kind.safetensors"; [ "$kind" = shipped ] && weights=${SHIPPED:-resources/weights/d3rsmde-lean.safetensors}
  [ -f "$weights" ] || continue
  [ -f "$work/eval-$kind/results.json" ] || python scripts/scene_tile_eval.py --weights "$weights" \
    --tiles 256 --steps 0,6 --max-scenes 4 --world "$world" "${scenes[@]}" --out "$work/eval-$kind"
done
for pred in "$work"/eval-settled/*-tile256-T*.tif; do
  file=$(basename "$pred"); scene=${file%-tile256-T*}
  dem=${real_dem[$scene]:-$work/eval-settled/$scene-dem.tif}
  echo "== $file"
  for other in control shipped; do
    d3rsmde evaluate "$pred" "$dem" --whole-scene --versus "$work/eval-$other/$file" \
      | awk -v other="$other" '/^whole scene/ {on = 1} on && /\.tif \|/ && other == "control" {print}
                               /minus/ {sub(/minus [^,]*,/, "minus " other ","); print}'
  done
done
