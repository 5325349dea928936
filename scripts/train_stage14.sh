#!/usr/bin/env bash
# The "Stage 14" experiment of the model card: do settled-lowland renders (towns and fields on the low flats,
# forest on the hills: `d3rsmde data render --settled-share`) stop the coarse model reading bright low ground
# (cities, farmland, the Olinda and Meuse scenes) as high ground?
# One render set of the shipped recipe's crops (seed 42, as render2) with 40 % settled scenes; from the shipped
# weights the coarse model is continued 10 epochs at lr 1e-4 on it + the world tiles (validated on the world tiles,
# weights averaged from epoch 4), and, as the control, the same on the shipped renders (render2) + the world tiles.
# VAE and refiner stay the shipped ones; the halfway file averages the shipped and the settled weights. Then
# scripts/stage14_eval.sh scores them all on whole scenes never trained on, paired. Each run is one thread (two side
# by side on a 2-core CPU, 21 min here); SEED=1 WORK=build/stage14-seed1 repeats it with another training seed.
# Resumable.
set -euo pipefail
work=${WORK:-build/stage14}
base=${BASE:-build/default-weights}  # render2 and world of scripts/train_default_weights.sh
start=${START:-resources/weights/d3rsmde-lean.safetensors}
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
SECONDS=0
[ -f "$base/world/index.json" ] || d3rsmde data world "$base/world" --tile 256 --stride 128
[ -f "$base/render2/index.json" ] || d3rsmde data render "$base/render2" --tile 256 --tiles-per-dem 500 --min-views 120
[ -f "$work/settled-42/index.json" ] || d3rsmde data render "$work/settled-42" --tile 256 --tiles-per-dem 500 \
  --min-views 120 --seed 42 --settled-share 0.4
log "renders: ${SECONDS}s"
stem=$(d3rsmde data stem-weights | tail -n 1)
for kind in control settled; do
  renders="$base/render2"; [ "$kind" = settled ] && renders="$work/settled-42"
  [ -f "$work/stage14-$kind.safetensors" ] || OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 d3rsmde train lean \
    "$renders,$base/world" "$work/stage14-$kind.safetensors" --init-weights "$start" --work-dir "$work/run-$kind" \
    --stem-weights "$stem" --val-data "$base/world" --coarse-lr 1e-4 --coarse-epochs "${EPOCHS:-10}" \
    --average-from 4 --vae-epochs 0 --refiner-epochs 0 --k 3 --batch-size 8 --steps-per-epoch "${STEPS:-50}" \
    --max-shard-mb 16 --seed "${SEED:-0}" --device "${DEVICE:-auto}" &
done
wait
# Every weight halfway between the shipped and the settled model (WiSE-FT, as stage 3c).
[ -f "$work/stage14-halfway.safetensors" ] || d3rsmde interpolate "$start" "$work/stage14-settled.safetensors" \
  "$work/stage14-halfway.safetensors" --alpha 0.5
log "stage 14: ${SECONDS}s"
