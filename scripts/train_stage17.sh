#!/usr/bin/env bash
# The "Stage 17" experiment of the model card: does photometric jitter (each training image given a random gamma,
# contrast, brightness and band gains: `d3rsmde train --photometric-jitter`) stop the coarse model reading height
# from how bright a tile is, and place real relief better? Stage 14's control exactly (from the shipped weights the
# coarse model continued 10 epochs at lr 1e-4 on the shipped renders + the world tiles, validated on the world tiles,
# weights averaged from epoch 4, seed 0), with the jitter at strength $STRENGTH; VAE and refiner kept. Then scored as
# stage 14's models were (scripts/scene_tile_eval.py: the three real pairs, 4 GLOBE and 2 world test scenes, coarse
# only and T = 6, tile 256) and paired against stage 14's control (its maps in $CONTROL) and the shipped weights'.
# Resumable: each step is skipped when its output exists.
set -euo pipefail
work=${WORK:-build/stage17}
base=${BASE:-build/default-weights}  # render2 and world of scripts/train_default_weights.sh
start=${START:-resources/weights/d3rsmde-lean.safetensors}
control=${CONTROL:-build/stage14/eval-control}  # scripts/train_stage14.sh, then scripts/stage14_eval.sh
shipped=${SHIPPED_EVAL:-build/stage14/eval-shipped}
strength=${STRENGTH:-1}
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
SECONDS=0
stem=$(d3rsmde data stem-weights | tail -n 1)
weights="$work/stage17-jitter.safetensors"
[ -f "$weights" ] || d3rsmde train lean "$base/render2,$base/world" "$weights" --init-weights "$start" \
  --work-dir "$work/run-jitter" --stem-weights "$stem" --val-data "$base/world" --coarse-lr 1e-4 \
  --coarse-epochs "${EPOCHS:-10}" --average-from 4 --vae-epochs 0 --refiner-epochs 0 --k 3 --batch-size 8 \
  --steps-per-epoch "${STEPS:-50}" --max-shard-mb 16 --seed "${SEED:-0}" --device "${DEVICE:-auto}" \
  --photometric-jitter "$strength"
log "training: ${SECONDS}s"
scenes=()
declare -A real_dem
while IFS=$'\t' read -r name image dem; do
  scenes+=(--scene "$name=$image,$dem"); real_dem[$name]=$dem
done < <(d3rsmde data pairs 2>/dev/null)
[ -f "$work/eval-jitter/results.json" ] || python scripts/scene_tile_eval.py --weights "$weights" --tiles 256 \
  --steps 0,6 --max-scenes 4 --world "${WORLD:-$base/world}" "${scenes[@]}" --out "$work/eval-jitter"
log "evaluation: ${SECONDS}s"
for pred in "$work"/eval-jitter/*-tile256-T*.tif; do
  file=$(basename "$pred"); scene=${file%-tile256-T*}
  dem=${real_dem[$scene]:-$work/eval-jitter/$scene-dem.tif}
  echo "== $file"
  for other in "$control" "$shipped"; do
    d3rsmde evaluate "$pred" "$dem" --whole-scene --versus "$other/$file" \
      | awk -v other="$other" '/^whole scene/ {on = 1} on && /\.tif \|/ && other ~ /control/ {print}
                               /minus/ {sub(/minus [^,]*,/, "minus " other ","); print}'
  done
done
