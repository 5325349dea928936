#!/usr/bin/env bash
# The 512-pixel-tile experiment of the model card ("Stage 5, not shipped"): the shipped weights continued at 512.
# Needs the recipe's work folder (scripts/train_default_weights.sh: its stage 3b fold models). Resumable.
#   5a: the refiner, 10 epochs at 512 on stage 3b's fold models' maps of the new tiles (own inputs);
#   5b: the coarse model, 8 epochs at 512, validated on the world tiles;
#   5c: the refiner, 10 more epochs on the 5b coarse model's own maps (--refiner-maps final; the measured 5c ran
#       before that option, through fold folders that each held the 5b coarse model: the same maps);
#   5d: as 5c for 6 epochs, with 500 more tiles rendered from the user-scale DEMs interpolated twice finer.
# Then: python scripts/scene_tile_eval.py --weights "$WORK/stage5b.safetensors" --tiles 512 --steps 0,1,6 ...
# Wall time on the 2-core EPYC: renders 3.3 + 3 min, 5a 34 min, 5b 19 min, 5c 35 min, 5d 21 min.
set -euo pipefail
work=${WORK:-build/default-weights}
start=${START:-resources/weights/d3rsmde-lean.safetensors}
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
stem=$(d3rsmde data stem-weights | tail -n 1)
common=(--stem-weights "$stem" --k 3 --batch-size 4 --steps-per-epoch "${STEPS:-50}" --max-shard-mb 16
        --device "${DEVICE:-auto}" --vae-epochs 0 --average-from 3)
SECONDS=0
# 512-pixel tiles: the same DEMs where a 512 crop fits (GLOBE, Fuji), split by the 1024-px blocks of the 256 sets
# so the held-out terrain stays held out, and the world pair at 512.
[ -f "$work/render512/index.json" ] || d3rsmde data render "$work/render512" --tile 512 --tiles-per-dem 250 \
  --min-views 60 --split-block 1024 --seed 11
[ -f "$work/world512/index.json" ] || d3rsmde data world "$work/world512" --tile 512 --stride 128 --block 1024 \
  --max-sea 0.35
data="$work/render512,$work/world512"
# 5a: stage 3b's fold models linked, not retrained.
mkdir -p "$work/run5a/coarse"
for f in fold0 fold1 fold2; do ln -sfn "$(realpath "$work/run3b/coarse/$f")" "$work/run5a/coarse/$f"; done
d3rsmde train lean "$data" "$work/stage5a.safetensors" "${common[@]}" --init-weights "$start" \
  --work-dir "$work/run5a" --fold-epochs 4 --coarse-epochs 0 --refiner-lr 1e-4 --refiner-epochs 10 \
  --refiner-own-inputs 1
log "5a: ${SECONDS}s"
d3rsmde train lean "$data" "$work/stage5b.safetensors" "${common[@]}" --init-weights "$work/stage5a.safetensors" \
  --work-dir "$work/run5b" --val-data "$work/world512" --coarse-lr 1e-4 --coarse-epochs 8 --refiner-epochs 0
log "5b: ${SECONDS}s"
d3rsmde train lean "$data" "$work/stage5c.safetensors" "${common[@]}" --init-weights "$work/stage5b.safetensors" \
  --work-dir "$work/run5c" --refiner-maps final --coarse-epochs 0 --refiner-lr 1e-4 --refiner-epochs 10 \
  --refiner-own-inputs 1
log "5c: ${SECONDS}s"
[ -f "$work/small512/index.json" ] || d3rsmde data render "$work/small512" --tile 512 --scales 0.5 \
  --dems jacksboro,fuji,st-helens,terrarium,lidar-1m --tiles-per-dem 150 --min-views 100 --split-block 1024 --seed 13
d3rsmde train lean "$work/render512,$work/small512,$work/world512" "$work/stage5d.safetensors" "${common[@]}" \
  --init-weights "$work/stage5b.safetensors" --work-dir "$work/run5d" --refiner-maps final --coarse-epochs 0 \
  --refiner-lr 1e-4 --refiner-epochs 6 --refiner-own-inputs 1
log "5d: ${SECONDS}s"
