"""Defaults that several layers offer the user (the library, the CLI, the QGIS plugin, the notebook), each written
once. Nothing here imports torch: the plugin reads them before it knows whether the backend can run.
"""

from __future__ import annotations

import os
from pathlib import Path

SEED = 42  # data splits, initialisation and batch order: runs repeat
TRAIN_BATCH_SIZE = 8  # tiles per training step of the full recipe
FINETUNE_EPOCHS = 30  # fine-tuning on one region: the coarse model's epochs (10, 30, 60 measured: model card)
# ... and the refiner's: 0 keeps it. Tuned on one region's few tiles it made the region's unseen half worse more
# often than better; the coarse model alone did better (scripts/finetune_transfer_eval.py, model card).
FINETUNE_REFINER_EPOCHS = 0
FINETUNE_BATCH_SIZE = 4  # one region's few tiles; fits a laptop's memory
# A region too small for training tiles and a held-out block at the model's tile is cut at half and a quarter of it,
# down to this (the tile of the fine-tuning measurements in the README and the model card).
FINETUNE_MIN_TILE = 64
SOURCES_CACHE_ENV = "D3RSMDE_SOURCES"
# Tiles overlap by this share of the tile size unless the user says otherwise: 32 px at the default 256 infers
# 1.3 instead of 2.0 pixels per output pixel (overlap 64), and the seams stay under 3x the median roughness
# (benchmarks/edges.py, README).
OVERLAP_FRACTION = 1 / 8


def sources_cache(cache: str | os.PathLike | None = None) -> Path:
    """Where downloaded packages and the files made from them are kept: ``cache`` if given, else
    ``$D3RSMDE_SOURCES``, else ``~/.cache/d3rsmde/sources``. Here rather than in :mod:`d3rsmde.sources` because
    the LPIPS metric looks its weights up there, and the plugin ships without the download modules."""
    if cache is not None:
        return Path(cache)
    return Path(os.environ.get(SOURCES_CACHE_ENV) or Path.home() / ".cache" / "d3rsmde" / "sources").expanduser()
