#!/usr/bin/env bash
# The "Stage 8" ablation of the model card: is the refiner's image condition what makes refinement hurt real
# scenes? From the shipped weights, one more stage-4 round (10 epochs on stage 3b's fold maps, own sampling-loop
# inputs, averaged from epoch 3) twice: 8a with the refiner blind to the image (`--refiner-image-condition none`:
# its image channels get zeros, so it refines the coarse map as a terrain prior; the DEMs behind the renders are
# real, their images are not) and 8b, the control, the same round with the image (the VAE latent, as shipped).
# Compare with `python scripts/scene_tile_eval.py --weights "$WORK/stage8-none.safetensors" --tiles 256 --steps 1,6`.
# Needs the recipe's work folder (scripts/train_default_weights.sh: render2, render3, world, run3b). Resumable.
set -euo pipefail
work=${WORK:-build/default-weights}
maps=${MAPS:-$work/run3b/coarse}  # stage 3b's fold models and their maps
start=${START:-resources/weights/d3rsmde-lean.safetensors}
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
SECONDS=0
for condition in none vae; do
  mkdir -p "$work/run8-$condition/coarse"
  for f in fold0 fold1 fold2 coarse_maps.npy; do
    ln -sfn "$(realpath "$maps/$f")" "$work/run8-$condition/coarse/$f"
  done
  d3rsmde train lean "$work/render2,$work/render3,$work/world" "$work/stage8-$condition.safetensors" \
    --init-weights "$start" --work-dir "$work/run8-$condition" --refiner-image-condition "$condition" \
    --stem-weights "$(d3rsmde data stem-weights | tail -n 1)" --k 3 --fold-epochs 4 --vae-epochs 0 --coarse-epochs 0 \
    --batch-size 8 --steps-per-epoch "${STEPS:-50}" --max-shard-mb 16 --device "${DEVICE:-auto}" \
    --refiner-lr 1e-4 --refiner-epochs 10 --average-from 3 --refiner-own-inputs 1
  log "stage 8 $condition: ${SECONDS}s"
done
