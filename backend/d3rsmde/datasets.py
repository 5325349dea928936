"""Reading built tile datasets: one split of one folder (:class:`TileDataset`) or of several trained as one
(:class:`TileDatasets`). Folders come from :mod:`d3rsmde.data` (real image/DEM pairs) or :mod:`d3rsmde.render_tiles`
(renders of DEMs): ``tiles/*.npz`` plus ``index.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from . import __version__
from .errors import InputError
from .files import exclusive_folder

SPLITS = ("train", "val", "test")
INDEX_NAME = "index.json"
FORMAT = "d3rsmde-tiles/1"


@contextmanager
def staged_tiles(out_dir: Path) -> Iterator[Path]:
    """A fresh scratch folder ``out_dir/.tmp`` with an empty ``tiles/`` for a dataset being built, removed when the
    body fails; the body ends with :func:`publish_tiles`. A previous dataset in ``out_dir`` stays until then, and a
    second build into ``out_dir`` while this one runs is refused."""
    tmp = out_dir / ".tmp"
    with exclusive_folder(out_dir, "dataset build"):
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "tiles").mkdir(parents=True)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def publish_tiles(tmp: Path, out_dir: Path, index: dict) -> None:
    """Write ``index`` (headed by the format and the d3rsmde that wrote it) beside the finished ``tmp/tiles`` and
    swap both into ``out_dir``; the index goes last (and an old one first), so readers never see an index that
    names tiles not there."""
    index = {"format": FORMAT, "created_by": f"d3rsmde {__version__}", **index}
    (tmp / INDEX_NAME).write_text(json.dumps(index, indent=1))
    old = out_dir / "tiles"
    if old.exists():
        (out_dir / INDEX_NAME).unlink(missing_ok=True)
        shutil.rmtree(old)
    os.replace(tmp / "tiles", old)
    os.replace(tmp / INDEX_NAME, out_dir / INDEX_NAME)
    tmp.rmdir()


def load_index(root) -> dict:
    """The ``index.json`` of a dataset folder written by :func:`d3rsmde.data.build_dataset`."""
    path = Path(root) / INDEX_NAME
    if not path.is_file():
        raise InputError(f"{root} is not a tile dataset: {INDEX_NAME} is missing (build it with `d3rsmde data build`)")
    return json.loads(path.read_text())


class TileDataset(torch.utils.data.Dataset):
    """One split of a built dataset; items are ``{"image": 3xHxW [0, 1], "depth": 1xHxW metres, "mask": 1xHxW}``."""

    def __init__(self, root, split: str = "train"):
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.index = load_index(root)
        self.split = split
        self.tiles = [t for t in self.index["tiles"] if t["split"] == split]
        self._scale = float(np.iinfo(self.index["image_dtype"]).max)

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> dict:
        with np.load(self.root / self.tiles[i]["file"]) as tile:
            return {
                "image": torch.from_numpy(tile["image"].astype(np.float32) / self._scale),
                "depth": torch.from_numpy(tile["depth"]),
                "mask": torch.from_numpy(tile["mask"]),
            }


class TileDatasets(torch.utils.data.ConcatDataset):
    """One split of several tile datasets (e.g. renders and real pairs) trained as one, with a merged index:
    their common tile size, the median ground sampling distance and every source."""

    def __init__(self, roots: Sequence, split: str = "train"):
        parts = [TileDataset(root, split) for root in roots]
        if not parts:
            raise InputError("no tile dataset given")
        sizes = {p.index.get("tile_size") for p in parts}
        if len(sizes) > 1:
            raise InputError(f"tile datasets of different tile sizes {sorted(sizes)} cannot train together")
        super().__init__(parts)
        self.index = {
            "tile_size": sizes.pop(),
            "gsd_m": float(np.median([p.index["gsd_m"] for p in parts if p.index.get("gsd_m")] or [np.nan])),
            "sources": {k: v for p in parts for k, v in p.index.get("sources", {}).items()},
            "counts": {str(p.root): len(p) for p in parts},
        }
