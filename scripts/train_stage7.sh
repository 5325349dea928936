#!/usr/bin/env bash
# The "Stage 7" experiment of the model card: does a larger ImageNet stem (EfficientNet-Lite2 instead of Lite0) give
# a coarse model that sees more relief on real scenes? Both coarse models are trained the same way from their
# ImageNet stems (the rest from scratch) on the recipe's stage 3 tile sets, validated on the world tiles, weights
# averaged from epoch 5; coarse only (no VAE or refiner training): compare them with
#   python scripts/scene_tile_eval.py --weights "$WORK/stage7-lite2.safetensors" --tiles 256 --steps 0 ...
# Needs the recipe's work folder (scripts/train_default_weights.sh: render2, render3, world). Resumable.
set -euo pipefail
work=${WORK:-build/default-weights}
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
SECONDS=0
for stem in efficientnet_lite2 efficientnet_lite0; do
  tag=${stem#efficientnet_}
  d3rsmde train lean "$work/render2,$work/render3,$work/world" "$work/stage7-$tag.safetensors" \
    --coarse-stem "$stem" --stem-weights "$(d3rsmde data stem-weights --stem "$stem" | tail -n 1)" \
    --batch-size 8 --steps-per-epoch "${STEPS:-50}" --max-shard-mb 16 --device "${DEVICE:-auto}" \
    --work-dir "$work/run7-$tag" --val-data "$work/world" --vae-epochs 0 --refiner-epochs 0 \
    --coarse-lr 2e-4 --coarse-epochs "${EPOCHS:-12}" --average-from 5
  log "stage 7 $tag: ${SECONDS}s"
done
