"""Defaults that several layers offer the user (the library, the CLI, the QGIS plugin, the notebook), each written
once. Nothing here imports torch: the plugin reads them before it knows whether the backend can run.
"""

SEED = 42  # data splits, initialisation and batch order: runs repeat
TRAIN_BATCH_SIZE = 8  # tiles per training step of the full recipe
FINETUNE_EPOCHS = 10  # fine-tuning on one region: coarse model, then refiner
FINETUNE_BATCH_SIZE = 4  # one region's few tiles; fits a laptop's memory
