#!/usr/bin/env bash
# The "Stage 17" experiment of the model card: does photometric jitter (each training image given a random gamma,
# contrast, brightness and band gains: `d3rsmde train --photometric-jitter`) stop the model reading height from how
# bright a tile is, and place real relief better?
# 17a, the coarse model: stage 14's control exactly (from the shipped weights the coarse model continued 10 epochs at
# lr 1e-4 on the shipped renders + the world tiles, validated on the world tiles, weights averaged from epoch 4,
# seed 0), with the jitter at strength $STRENGTH; VAE and refiner kept.
# 17b, the refiner: stage 16's round (stage 4's recipe from the shipped weights on stage 12's fold maps, own inputs,
# 10 epochs averaged from epoch 3, one thread, seed $REFINER_SEED, default 42 as stage 12's) with the jitter; its
# control is stage 12's control round.
# scripts/stage17_eval.sh scores both. Resumable: each step is skipped when its output exists.
set -euo pipefail
work=${WORK:-build/stage17}
base=${BASE:-build/default-weights}  # render2, render3 and world of scripts/train_default_weights.sh
start=${START:-resources/weights/d3rsmde-lean.safetensors}
maps=${MAPS:-$base/run12-decoded/coarse}  # stage 12's fold maps (scripts/train_stage12.sh)
strength=${STRENGTH:-1}
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
SECONDS=0
stem=$(d3rsmde data stem-weights | tail -n 1)
[ -f "$work/stage17-jitter.safetensors" ] || d3rsmde train lean "$base/render2,$base/world" \
  "$work/stage17-jitter.safetensors" --init-weights "$start" --work-dir "$work/run-jitter" --stem-weights "$stem" \
  --val-data "$base/world" --coarse-lr 1e-4 --coarse-epochs "${EPOCHS:-10}" --average-from 4 --vae-epochs 0 \
  --refiner-epochs 0 --k 3 --batch-size 8 --steps-per-epoch "${STEPS:-50}" --max-shard-mb 16 --seed "${SEED:-0}" \
  --device "${DEVICE:-auto}" --photometric-jitter "$strength"
log "17a: ${SECONDS}s"
if [ ! -f "$work/refiner-jitter.safetensors" ]; then
  mkdir -p "$work/run-refiner-jitter/coarse"
  for f in coarse_maps.npy fold0 fold1 fold2; do ln -sfn "$(realpath "$maps/$f")" "$work/run-refiner-jitter/coarse/$f"; done
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 d3rsmde train lean "$base/render2,$base/render3,$base/world" \
    "$work/refiner-jitter.safetensors" --init-weights "$start" --work-dir "$work/run-refiner-jitter" \
    --stem-weights "$stem" --k 3 --fold-epochs 4 --vae-epochs 0 --coarse-epochs 0 --batch-size 8 \
    --steps-per-epoch "${STEPS:-50}" --refiner-lr 1e-4 --refiner-epochs 10 --average-from 3 \
    --refiner-own-inputs 1 --photometric-jitter "$strength" --seed "${REFINER_SEED:-42}"
fi
log "17b: ${SECONDS}s"
