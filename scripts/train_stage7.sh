#!/usr/bin/env bash
# The "Stage 7" experiment of the model card: does a larger ImageNet stem (EfficientNet-Lite2 instead of Lite0) give
# a coarse model that sees more relief on real scenes? Both coarse models are trained the same way from their
# ImageNet stems (the rest from scratch) on the recipe's stage 3 tile sets, validated on the world tiles, weights
# averaged from epoch 5; coarse only (no VAE or refiner training): compare them with
#   python scripts/scene_tile_eval.py --weights "$WORK/stage7-lite2.safetensors" --tiles 256 --steps 0 ...
# Then 7b builds a whole model around the Lite2 coarse model (below). Needs the recipe's work folder
# (scripts/train_default_weights.sh: render2, render3, world). Resumable; 7c runs after 7b.
# Wall time on the 2-core EPYC: Lite2 16 min, Lite0 15 min, 7b 34 min, 7c 59 min; replicates 15 and 14 min.
set -euo pipefail
work=${WORK:-build/default-weights}
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
stem_file() { d3rsmde data stem-weights --stem "$1" | tail -n 1; }  # the stem's ImageNet weights, fetched once
SECONDS=0
# REPLICATE=1 trains both again with another seed (--seed 1: initialisation and batch order), for the spread.
seed=42
[ "${REPLICATE:-0}" = 1 ] && seed=1
for stem in efficientnet_lite2 efficientnet_lite0; do
  tag=${stem#efficientnet_}
  [ "$seed" = 42 ] || tag="$tag-seed$seed"
  d3rsmde train lean "$work/render2,$work/render3,$work/world" "$work/stage7-$tag.safetensors" --seed "$seed" \
    --coarse-stem "$stem" --stem-weights "$(stem_file "$stem")" \
    --batch-size 8 --steps-per-epoch "${STEPS:-50}" --max-shard-mb 16 --device "${DEVICE:-auto}" \
    --work-dir "$work/run7-$tag" --val-data "$work/world" --vae-epochs 0 --refiner-epochs 0 \
    --coarse-lr 2e-4 --coarse-epochs "${EPOCHS:-12}" --average-from 5
  log "stage 7 $tag: ${SECONDS}s"
done
[ "$seed" = 42 ] || exit 0
# 7b and 7c: a whole model around 7's Lite2 coarse model (linked): the shipped VAE and refiner (--init-weights),
# k = 3 fold models for the refiner's maps, then the refiner continued as in stage 4 (10 epochs on its own
# sampling-loop inputs). 7b: folds of 4 epochs, averaged from epoch 3. 7c: folds trained exactly as the final one
# (12 epochs, validated on the world tiles, averaged from epoch 5), so that the refiner learns from maps as good as
# the ones it meets at inference; its refiner is averaged from epoch 5 too.
start=${START:-resources/weights/d3rsmde-lean.safetensors}
whole_lite2() {  # whole_lite2 TAG OPTIONS...
  local tag=$1
  shift
  mkdir -p "$work/run$tag-lite2/coarse"
  ln -sfn "$(realpath "$work/run7-lite2/coarse/final")" "$work/run$tag-lite2/coarse/final"
  d3rsmde train lean "$work/render2,$work/render3,$work/world" "$work/stage$tag-lite2.safetensors" \
    --coarse-stem efficientnet_lite2 --stem-weights "$(stem_file efficientnet_lite2)" \
    --batch-size 8 --steps-per-epoch "${STEPS:-50}" --max-shard-mb 16 --device "${DEVICE:-auto}" \
    --work-dir "$work/run$tag-lite2" --init-weights "$start" --vae-epochs 0 \
    --coarse-lr 2e-4 --coarse-epochs "${EPOCHS:-12}" \
    --k 3 --refiner-lr 1e-4 --refiner-epochs 10 --refiner-own-inputs 1 "$@"
  log "stage $tag: ${SECONDS}s"
}
whole_lite2 7b --fold-epochs 4 --average-from 3
whole_lite2 7c --val-data "$work/world" --average-from 5
