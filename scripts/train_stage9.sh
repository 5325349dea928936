#!/usr/bin/env bash
# The "Stage 9" experiment of the model card: do semi-arid renders (bright dry ground below the forests,
# `d3rsmde data render --dry-share`) stop the coarse model reading bright lowland as high ground?
# Two render pairs of the same crops (seeds 42 and 7, as stage 3), one as shipped (--dry-share 0) and one with 40 %
# dry scenes; from the shipped weights the coarse model is continued 12 epochs at lr 1e-4 on each pair + the world
# tiles (validated on the world tiles, weights averaged from epoch 4), with two training seeds each (SEEDS).
# VAE and refiner stay the shipped ones. Compare with
#   python scripts/scene_tile_eval.py --weights "$WORK/stage9-dry-seed0.safetensors" --tiles 256 --steps 0,6 \
#     --max-scenes 4 --world "$WORK/world" --scene rmnp=IMAGE,DEM --scene meuse=IMAGE,DEM
# Each run is one thread (two run side by side on a 2-core CPU, 28-41 min each there). Resumable.
set -euo pipefail
work=${WORK:-build/stage9}
start=${START:-resources/weights/d3rsmde-lean.safetensors}
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
SECONDS=0
[ -f "$work/world/index.json" ] || d3rsmde data world "$work/world" --tile 256 --stride 128
for kind in shipped dry; do
  share=0; [ "$kind" = dry ] && share=0.4
  for seed in 42 7; do
    [ -f "$work/$kind-$seed/index.json" ] || d3rsmde data render "$work/$kind-$seed" --tile 256 --tiles-per-dem 500 \
      --min-views 120 --seed "$seed" --dry-share "$share"
  done
done
log "renders: ${SECONDS}s"
stem=$(d3rsmde data stem-weights | tail -n 1)
for seed in ${SEEDS:-0 1}; do
  for kind in shipped dry; do
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 d3rsmde train lean "$work/$kind-42,$work/$kind-7,$work/world" \
      "$work/stage9-$kind-seed$seed.safetensors" --init-weights "$start" --work-dir "$work/run-$kind-seed$seed" \
      --stem-weights "$stem" --val-data "$work/world" --coarse-lr 1e-4 --coarse-epochs 12 --average-from 4 \
      --vae-epochs 0 --refiner-epochs 0 --k 3 --batch-size 8 --steps-per-epoch "${STEPS:-50}" --max-shard-mb 16 \
      --seed "$seed" --device "${DEVICE:-auto}" &
  done
  wait
  log "stage 9 seed $seed: ${SECONDS}s"
done
