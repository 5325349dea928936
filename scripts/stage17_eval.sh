#!/usr/bin/env bash
# Scores the "Stage 17" weights (scripts/train_stage17.sh) as stage 14's were (scripts/scene_tile_eval.py: the three
# real pairs of `d3rsmde data pairs`, 4 GLOBE and 2 world test scenes, coarse only and T = 6, tile 256), with their
# controls (stage 14's control for the coarse model, stage 12's control for the refiner) and the shipped weights
# scored the same way, then prints each jitter model minus its control and minus the shipped weights per scene and T
# (MAE / SSIM / LPIPS / grad r, each +- its paired standard error), and scripts/cloud_probe.py for all five.
set -euo pipefail
work=${WORK:-build/stage17}
base=${BASE:-build/default-weights}
world=${WORLD:-$base/world}
declare -A weights=(
  [shipped]=${SHIPPED:-resources/weights/d3rsmde-lean.safetensors}
  [control14]=${CONTROL14:-build/stage14/stage14-control.safetensors}  # scripts/train_stage14.sh
  [control12]=${CONTROL12:-$base/stage12-control.safetensors}  # scripts/train_stage12.sh
  [jitter]=$work/stage17-jitter.safetensors
  [refiner-jitter]=$work/refiner-jitter.safetensors
)
scenes=()
declare -A real_dem
while IFS=$'\t' read -r name image dem; do
  scenes+=(--scene "$name=$image,$dem"); real_dem[$name]=$dem
done < <(d3rsmde data pairs 2>/dev/null)
for kind in shipped control14 control12 jitter refiner-jitter; do
  [ -f "$work/eval-$kind/results.json" ] || python scripts/scene_tile_eval.py --weights "${weights[$kind]}" \
    --tiles 256 --steps 0,6 --max-scenes 4 --world "$world" "${scenes[@]}" --out "$work/eval-$kind"
done
for pair in jitter:control14 refiner-jitter:control12; do
  model=${pair%:*}; control=${pair#*:}
  for pred in "$work/eval-$model"/*-tile256-T*.tif; do
    file=$(basename "$pred"); scene=${file%-tile256-T*}
    dem=${real_dem[$scene]:-$work/eval-$model/$scene-dem.tif}
    echo "== $model: $file"
    for other in "$control" shipped; do
      d3rsmde evaluate "$pred" "$dem" --whole-scene --versus "$work/eval-$other/$file" \
        | awk -v other="$other" '/^whole scene/ {on = 1} on && /\.tif \|/ && other != "shipped" {print}
                                 /minus/ {sub(/minus [^,]*,/, "minus " other ","); print}'
    done
  done
done
python scripts/cloud_probe.py --weights "${weights[shipped]}" "${weights[control14]}" "${weights[jitter]}" \
  "${weights[control12]}" "${weights[refiner-jitter]}"
