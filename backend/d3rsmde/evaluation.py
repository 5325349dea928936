"""How well a height map matches its reference DEM: per tile and over the whole raster as the paper and the
``evaluate`` command score it (:func:`evaluate_rasters`), as one image of the scene (:func:`evaluate_scene`), and
as the mean over the tiles of a tile dataset (:func:`evaluate_tiles`, used by fine-tuning and the model card).

The paper scores 512 x 512 tiles, each stretched on its own. A user looks at one map of the whole scene, so for
the scene the prediction is averaged onto the reference DEM's grid (its pixels are usually larger), both maps are
min-max stretched to 0..255 over their common valid pixels as one image, and the paper's metrics are computed
once, with the gradient correlation that tells whether slopes lie where the terrain has them.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window
from torch.utils.data import DataLoader, Dataset

from .errors import InputError
from .metrics import PixelSums, depth_metrics
from .progress import Cancel, check_cancel
from .raster.io import dataset_path, height_units, onto_grid, open_raster, warp_onto


def evaluate_rasters(pred, reference, *, mask=None, tile: int | None = None) -> dict:
    """Compare a predicted height raster with a reference (any CRS/resolution, warped onto the prediction grid).

    ``per_tile``: :func:`d3rsmde.metrics.depth_metrics` averaged over ``tile``-sized tiles (default: the tile size
    recorded in the prediction, else 512), i.e. the paper's per-tile relative figures. ``whole``: MAE, RMSE and
    bias over all valid pixels when both rasters are in the same units (None for a relative prediction against
    heights), and the RMSE left after the best global scale and shift, in the reference's units.
    ``mask``: optional raster, nonzero where to evaluate. Rasters without a CRS are compared pixel for pixel, and
    only with a raster of the same size and no CRS either.
    """
    pred_path, ref_path = dataset_path(pred), dataset_path(reference)
    mask_path = None if mask is None else dataset_path(mask)
    with ExitStack() as stack:
        p_ds = stack.enter_context(open_raster(pred_path))
        tile = int(tile or p_ds.tags().get("tile_size", 512))
        g_ds = stack.enter_context(open_raster(ref_path))
        g_vrt = onto_grid(stack, g_ds, p_ds, Resampling.bilinear)
        m_vrt = None if mask_path is None else onto_grid(stack, stack.enter_context(open_raster(mask_path)), p_ds,
                                                         Resampling.nearest)
        sums = PixelSums()
        per_tile: dict[str, list[float]] = {}
        n_tiles = 0
        for row0 in range(0, p_ds.height, tile):
            for col0 in range(0, p_ds.width, tile):
                window = Window(col0, row0, min(tile, p_ds.width - col0), min(tile, p_ds.height - row0))
                p = p_ds.read(1, window=window, masked=True).astype(np.float64).filled(np.nan)
                g = g_vrt.read(1, window=window, masked=True).astype(np.float64).filled(np.nan)
                ok = np.isfinite(p) & np.isfinite(g)
                if m_vrt is not None:
                    ok &= m_vrt.read(1, window=window, masked=True).filled(0) != 0
                if ok.sum() < 2:
                    continue
                sums.add(p[ok], g[ok])
                n_tiles += 1
                for key, value in depth_metrics(p, g, ok).items():
                    if isinstance(value, (int, float)):
                        per_tile.setdefault(key, []).append(float(value))
        p_units, g_units, crs = height_units(p_ds), height_units(g_ds), p_ds.crs
    if sums.count == 0:
        raise InputError(f"{pred_path.name} and {ref_path.name} overlap but share no valid pixel "
                         "(one is nodata wherever the other has data)")
    comparable = (p_units == "relative") == (g_units == "relative")  # an unknown unit is taken as the other's
    errors = sums.errors()
    return {
        "tile": tile,
        "tiles": n_tiles,
        "per_tile": {k: float(np.mean(v)) for k, v in per_tile.items()},
        "whole": {
            **{key: errors[key] if comparable else None for key in ("mae", "rmse", "bias")},
            "rmse_after_affine": errors["rmse_after_affine"],
            "pixels": sums.count,
            "units": g_units or (p_units if comparable else ""),
        },
        "warnings": [] if crs else [f"{pred_path.name} and {ref_path.name} have no CRS: compared pixel for pixel"],
    }


def scene_on_reference_grid(pred, reference) -> tuple[np.ndarray, np.ndarray]:
    """(prediction averaged onto the reference's grid, reference), both float64 with NaN where invalid.

    Reads whole rasters: the reference DEM sets the size, and reference DEMs are coarse (a 10000 x 10000 DEM
    would take 1.6 GB here).
    """
    with ExitStack() as stack:
        ref = stack.enter_context(open_raster(dataset_path(reference)))
        src = stack.enter_context(open_raster(dataset_path(pred)))
        if ref.crs is None or src.crs is None:
            raise InputError("whole-scene evaluation needs both rasters georeferenced (a CRS): "
                             f"{'reference' if ref.crs is None else 'prediction'} has none")
        g = ref.read(1, masked=True).astype(np.float64).filled(np.nan)
        vrt = stack.enter_context(warp_onto(src, ref, Resampling.average))
        p = vrt.read(1).astype(np.float64)
    return p, g


def evaluate_scene(pred, reference) -> dict:
    """The paper's metrics (plus ``grad_r``) of a whole predicted scene against its reference DEM, both stretched
    to 0..255 as one image over their common valid pixels; ``pixels`` is how many reference pixels were scored."""
    return scene_report(pred, reference, errors=False)["scene"]


SCENE_FIGURES = ("mae", "ssim", "lpips", "grad_r")


def scene_jackknife(pred, reference, blocks: int = 3) -> dict[str, float | None]:
    """Jackknife standard error of :func:`evaluate_scene`'s MAE, SSIM, LPIPS and gradient r: the scene scored
    again with each of ``blocks`` x ``blocks`` equal parts of its valid area left out in turn.

    One scene's figures move with a few pixels, since both maps are min-max stretched (102 pixels of the Rocky
    Mountain sample moved its MAE by 3): this says by how much, so that two models are not told apart by noise.
    """
    return scene_report(pred, reference, blocks=blocks)["scene_standard_error"]


def scene_difference(pred, other, reference, blocks: int = 3) -> dict[str, tuple[float, float] | None]:
    """``(figure of pred - figure of other, its jackknife standard error)`` for MAE, SSIM, LPIPS and gradient r,
    both maps scored on the pixels valid in both with the same blocks left out: the error of the difference itself,
    which is smaller than the two maps' own where their errors are shared, and can be larger where each map's
    min-max stretch moves with the blocks in its own way (MAE on the Rocky Mountain sample)."""
    return scene_report(pred, reference, other, errors=False, blocks=blocks)["scene_minus_versus"]


def scene_report(pred, reference, versus=None, *, errors: bool = True, blocks: int = 3) -> dict:
    """What ``d3rsmde evaluate --whole-scene`` and the QGIS *Evaluate* algorithm report of a whole scene, each
    raster read and warped once: ``scene`` (:func:`evaluate_scene`), with ``errors`` ``scene_standard_error``
    (:func:`scene_jackknife`) and, given another prediction ``versus``, ``scene_minus_versus``
    (:func:`scene_difference`, paired)."""
    p, g = scene_on_reference_grid(pred, reference)
    valid = np.isfinite(p) & np.isfinite(g)
    if valid.sum() < 2:
        raise InputError(f"{Path(pred).name} and {Path(reference).name} overlap in fewer than 2 valid pixels of "
                         "the reference grid: do they cover the same place?")
    report = {"scene": {**depth_metrics(p, g, valid), "pixels": int(valid.sum())}}
    if errors:
        left_out = _left_out_figures([p], g, valid, blocks)[0]
        report["scene_standard_error"] = {key: _jackknife_error(values) for key, values in left_out.items()}
    if versus is not None:
        q, _ = scene_on_reference_grid(versus, reference)
        report["scene_minus_versus"] = _paired_difference(p, q, g, blocks)
    return report


def _paired_difference(p: np.ndarray, q: np.ndarray, g: np.ndarray,
                       blocks: int) -> dict[str, tuple[float, float] | None]:
    """:func:`scene_difference` on maps already on the reference's grid."""
    valid = np.isfinite(p) & np.isfinite(q) & np.isfinite(g)
    whole = [depth_metrics(np.where(valid, m, np.nan), np.where(valid, g, np.nan), valid) for m in (p, q)]
    left_out = _left_out_figures([p, q], g, valid, blocks)
    result = {}
    for key in SCENE_FIGURES:
        a, b = left_out[0][key], left_out[1][key]
        if whole[0][key] is None or whole[1][key] is None or None in (a, b):
            result[key] = None
        else:
            result[key] = (whole[0][key] - whole[1][key], _jackknife_error(np.subtract(a, b)))
    return result


def _left_out_figures(maps: list[np.ndarray], g: np.ndarray, valid: np.ndarray,
                      blocks: int) -> list[dict[str, list[float] | None]]:
    """For each map, each scene figure over ``valid`` with each of ``blocks`` x ``blocks`` equal parts of the
    valid area's bounding box left out in turn (None for a figure some part cannot give, e.g. LPIPS unavailable)."""
    rows, cols = np.nonzero(valid)
    if len(rows) < 2:
        raise InputError("the maps share fewer than 2 valid pixels with the reference")
    row_edges = np.linspace(rows.min(), rows.max() + 1, blocks + 1).round().astype(int)
    col_edges = np.linspace(cols.min(), cols.max() + 1, blocks + 1).round().astype(int)
    figures = [{key: [] for key in SCENE_FIGURES} for _ in maps]
    for r0, r1 in zip(row_edges[:-1], row_edges[1:]):
        for c0, c1 in zip(col_edges[:-1], col_edges[1:]):
            keep = valid.copy()
            keep[r0:r1, c0:c1] = False
            if keep.sum() < 2:
                continue
            for m, out in zip(maps, figures):
                scores = depth_metrics(np.where(keep, m, np.nan), np.where(keep, g, np.nan), keep)
                for key in SCENE_FIGURES:
                    out[key].append(scores[key])
    return [{key: None if None in values else values for key, values in out.items()} for out in figures]


def _jackknife_error(values) -> float | None:
    """The jackknife standard error from the leave-one-out estimates ``values``."""
    if values is None or len(values) < 2:
        return None
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    return float(np.sqrt((n - 1) / n * np.sum((values - values.mean()) ** 2)))


def evaluate_tiles(pipe: Callable[..., torch.Tensor], dataset: Dataset, *, batch_size: int = 4,
                   refine_steps: int | None = None, cancel: Cancel | None = None) -> dict:
    """Mean :func:`~d3rsmde.metrics.depth_metrics` of ``pipe`` over the tiles of ``dataset`` (plus ``tiles``).

    ``pipe``: a :class:`~d3rsmde.pipeline.D3Pipeline` or any callable ``pipe(images, refine_steps=...)`` returning
    ``N x 1 x H x W`` heights (the model card's baselines).
    """
    return mean_tile_metrics(tile_metrics(pipe, dataset, batch_size=batch_size, refine_steps=refine_steps,
                                          cancel=cancel))


@torch.no_grad()
def tile_metrics(pipe: Callable[..., torch.Tensor], dataset: Dataset, *, batch_size: int = 4,
                 refine_steps: int | None = None, cancel: Cancel | None = None) -> list[dict]:
    """:func:`~d3rsmde.metrics.depth_metrics` of ``pipe`` on each tile of ``dataset``, in order."""
    rows = []
    for batch in DataLoader(dataset, batch_size=batch_size):
        check_cancel(cancel, "evaluation")
        pred = pipe(batch["image"], refine_steps=refine_steps).cpu()
        rows += [depth_metrics(p, g, m) for p, g, m in zip(pred, batch["depth"], batch["mask"])]
    if not rows:
        raise InputError("no tiles to evaluate")
    return rows


def mean_tile_metrics(rows: list[dict]) -> dict:
    """The mean of each figure of :func:`tile_metrics`' rows (plus ``tiles``, their number)."""
    result = {}
    for key, value in rows[0].items():
        values = [r[key] for r in rows]
        if isinstance(value, float):
            result[key] = float(np.mean(values))
        elif value is None:
            result[key] = None
        else:  # lpips_status: the same reason for every tile
            result[key] = value
    result["tiles"] = len(rows)
    return result


def tile_difference(rows: list[dict], other: list[dict]) -> dict[str, tuple[float, float | None] | None]:
    """``(mean of rows' figure - other's, standard error of that mean)`` over the same tiles, paired tile by tile,
    for MAE, SSIM, LPIPS and gradient r (the error is None for a single tile, the pair None for a figure either
    side lacks): whether a change, such as fine-tuning, moved the held-out figures by more than their noise."""
    if len(rows) != len(other):
        raise InputError(f"paired tiles: {len(rows)} against {len(other)}; they must be the same tiles")
    result = {}
    for key in SCENE_FIGURES:
        pairs = [(a.get(key), b.get(key)) for a, b in zip(rows, other)]
        if not pairs or any(a is None or b is None for a, b in pairs):
            result[key] = None
            continue
        diff = np.array([a - b for a, b in pairs], dtype=np.float64)
        error = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None
        result[key] = (float(diff.mean()), error)
    return result
