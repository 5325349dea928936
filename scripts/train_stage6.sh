#!/usr/bin/env bash
# The "Stage 6" experiments of the model card: three changes aimed at the slopes on real scenes, each one run.
# Needs the recipe's work folder (scripts/train_default_weights.sh: its stage 3 tile sets and stage 3b fold models)
# and the 512 experiment's files (scripts/train_tile512.sh: render512, small512, world512, stage5.safetensors,
# stage5b.safetensors, stage5d.safetensors). Resumable: each run skips what its work folder holds.
#   6a: 5b with a gradient-matching loss added to the coarse model's HDN loss (--coarse-grad-weight 0.5);
#   6b: 5d with the refiner conditioned on the coarse model's pretrained stem (--refiner-image-condition stem);
#   6c: 5d's refiner continued as a residual refiner (--refiner-prediction residual; starts as the identity);
#   6d: the shipped 0.5.0 (tile 256) continued the same way, one stage-4 round on stage 3b's fold maps;
#   6e: as 6c on stage 5a's fold-model maps (render512 + world512 only, the tiles those maps cover);
#   6f: 6c continued 6 more epochs.
# Then: python scripts/scene_tile_eval.py --weights "$WORK/stage6c.safetensors" --tiles 512 --steps 1,6 ...
# Wall time on the 2-core EPYC: 6a 20 min, 6b 20 min, 6c 22 min, 6d 17 min, 6e 21 min, 6f 21 min.
set -euo pipefail
work=${WORK:-build/default-weights}
start=${START:-resources/weights/d3rsmde-lean.safetensors}
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
stem=$(d3rsmde data stem-weights | tail -n 1)
at512=(--stem-weights "$stem" --batch-size 4 --steps-per-epoch "${STEPS:-50}" --max-shard-mb 16
       --device "${DEVICE:-auto}" --vae-epochs 0 --average-from 3)
data="$work/render512,$work/small512,$work/world512"
SECONDS=0
d3rsmde train lean "$work/render512,$work/world512" "$work/stage6a.safetensors" "${at512[@]}" --k 3 \
  --init-weights "$work/stage5.safetensors" --work-dir "$work/run6a" --val-data "$work/world512" \
  --coarse-lr 1e-4 --coarse-epochs 8 --refiner-epochs 0 --coarse-grad-weight 0.5
log "6a: ${SECONDS}s"
refiner=(--refiner-maps final --coarse-epochs 0 --refiner-lr 1e-4 --refiner-epochs 6 --refiner-own-inputs 1)
d3rsmde train lean "$data" "$work/stage6b.safetensors" "${at512[@]}" "${refiner[@]}" \
  --init-weights "$work/stage5b.safetensors" --work-dir "$work/run6b" --refiner-image-condition stem
log "6b: ${SECONDS}s"
d3rsmde train lean "$data" "$work/stage6c.safetensors" "${at512[@]}" "${refiner[@]}" \
  --init-weights "$work/stage5d.safetensors" --work-dir "$work/run6c" --refiner-prediction residual
log "6c: ${SECONDS}s"
# 6d: as stage 4 of the recipe (its fold maps linked, not retrained), from the shipped file.
mkdir -p "$work/run6d/coarse"
for f in fold0 fold1 fold2 coarse_maps.npy; do ln -sfn "$(realpath "$work/run3b/coarse/$f")" "$work/run6d/coarse/$f"; done
d3rsmde train lean "$work/render2,$work/render3,$work/world" "$work/stage6d.safetensors" --stem-weights "$stem" \
  --k 3 --fold-epochs 4 --batch-size 8 --steps-per-epoch "${STEPS:-50}" --max-shard-mb 16 --device "${DEVICE:-auto}" \
  --init-weights "$start" --work-dir "$work/run6d" --average-from 3 --vae-epochs 0 --coarse-epochs 0 \
  --refiner-lr 1e-4 --refiner-epochs 10 --refiner-own-inputs 1 --refiner-prediction residual
log "6d: ${SECONDS}s"
mkdir -p "$work/run6e/coarse"
for f in fold0 fold1 fold2 coarse_maps.npy; do ln -sfn "$(realpath "$work/run5a/coarse/$f")" "$work/run6e/coarse/$f"; done
d3rsmde train lean "$work/render512,$work/world512" "$work/stage6e.safetensors" "${at512[@]}" --k 3 --fold-epochs 4 \
  --init-weights "$work/stage5d.safetensors" --work-dir "$work/run6e" --coarse-epochs 0 --refiner-lr 1e-4 \
  --refiner-epochs 6 --refiner-own-inputs 1 --refiner-prediction residual
log "6e: ${SECONDS}s"
d3rsmde train lean "$data" "$work/stage6f.safetensors" "${at512[@]}" "${refiner[@]}" \
  --init-weights "$work/stage6c.safetensors" --work-dir "$work/run6f" --refiner-prediction residual
log "6f: ${SECONDS}s"
