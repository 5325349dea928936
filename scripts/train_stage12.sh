#!/usr/bin/env bash
# The "Stage 12" experiment of the model card: does a loss on the decoded map (L1 and gradient matching through the
# frozen decoder, `--refiner-decoded-weight`) give the refiner the slopes that latent L1 alone blurs away? From the
# shipped weights, one more stage-4 round (fresh k = 3 fold models of 4 epochs for the maps, then the refiner 10
# epochs on its own sampling-loop inputs, averaged from epoch 3) twice, on the same fold maps: 12a with the decoded
# loss (weight W, default 0.25: about as large as the latent L1 at the start) and 12b, the control, without it.
# Compare with
#   python scripts/scene_tile_eval.py --weights "$WORK/stage12-decoded.safetensors" --tiles 256 --steps 0,6 ...
# Needs render2, render3 and world in WORK (scripts/train_default_weights.sh makes them). Resumable.
set -euo pipefail
work=${WORK:-build/default-weights}
start=${START:-resources/weights/d3rsmde-lean.safetensors}
weight=${W:-0.25}
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
SECONDS=0
run() {  # NAME WEIGHT: one stage-4 round into $work/run12-NAME
  d3rsmde train lean "$work/render2,$work/render3,$work/world" "$work/stage12-$1.safetensors" \
    --init-weights "$start" --work-dir "$work/run12-$1" --refiner-decoded-weight "$2" \
    --stem-weights "$(d3rsmde data stem-weights | tail -n 1)" --k 3 --fold-epochs 4 --vae-epochs 0 --coarse-epochs 0 \
    --batch-size 8 --steps-per-epoch "${STEPS:-50}" --max-shard-mb 16 --device "${DEVICE:-auto}" \
    --refiner-lr 1e-4 --refiner-epochs 10 --average-from 3 --refiner-own-inputs 1
}
run decoded "$weight"  # trains the fold models, then its refiner
log "stage 12 decoded: ${SECONDS}s"
maps=$work/run12-decoded/coarse
mkdir -p "$work/run12-control/coarse"
for f in fold0 fold1 fold2 coarse_maps.npy; do  # the control uses the same fold maps
  ln -sfn "$(realpath "$maps/$f")" "$work/run12-control/coarse/$f"
done
run control 0
log "stage 12 control: ${SECONDS}s"
