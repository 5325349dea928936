"""Tile grid, blending windows and seam alignment for rasters larger than the model's tile (numpy, scipy.sparse).

The model normalises every tile on its own, so two neighbouring tiles describe the same ground with different
scales and shifts. Blending alone would smear those steps into ramps that a hillshade shows as a grid; instead each
tile gets one scale and shift, solved for all tiles at once so that they agree wherever they overlap, and only the
small remaining disagreement is blended away with raised-cosine weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, NamedTuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import lsqr

from .errors import InputError


class Box(NamedTuple):
    """Half-open pixel box ``[row0, row1) x [col0, col1)`` in raster coordinates."""

    row0: int
    row1: int
    col0: int
    col1: int


def _offsets(length: int, tile: int, overlap: int, margin: int) -> np.ndarray:
    """Fewest tile origins covering ``length`` pixels plus ``margin`` on both sides with at least ``overlap``
    shared pixels, evenly spread; the first is at ``-margin``."""
    span = length + 2 * margin
    if span <= tile:
        return np.full(1, -margin, dtype=np.int64)
    count = math.ceil((span - overlap) / (tile - overlap))
    return np.round(np.linspace(0, span - tile, count)).astype(np.int64) - margin


def _ramp(n: int, margin: int = 0) -> np.ndarray:
    """``n`` pixels: 0 over the first ``margin``, a raised cosine rising over the middle, 1 over the last
    ``margin``; it and its mirror image sum to exactly 1."""
    m = n - 2 * margin
    rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
    return np.concatenate([np.zeros(margin), rise, np.ones(margin)])


def _profile(offsets: np.ndarray, k: int, tile: int, length: int, margin: int) -> np.ndarray:
    """1-D blending weights of tile ``k``: ramps where it overlaps its neighbours, 0 within ``margin`` of an edge
    it shares and outside the raster."""
    w = np.ones(tile)
    if k > 0:
        n = int(offsets[k - 1] + tile - offsets[k])
        w[:n] = np.minimum(w[:n], _ramp(n, margin))
    if k < len(offsets) - 1:
        n = int(offsets[k] + tile - offsets[k + 1])
        w[tile - n :] = np.minimum(w[tile - n :], _ramp(n, margin)[::-1])
    start = int(offsets[k])
    w[: max(-start, 0)] = 0.0
    w[max(length - start, 0) :] = 0.0
    return w


@dataclass(frozen=True)
class TileGrid:
    """``tile`` x ``tile`` tiles covering a ``height`` x ``width`` raster, numbered row-major.

    Neighbours share at least ``overlap`` pixels; a raster smaller than a tile gets one tile whose part outside
    the raster is padding (its blending weight is 0 there).

    ``margin``: no raster pixel takes its value from within ``margin`` pixels of a tile edge, where models
    leave artefacts (a decoder's bright frame). Between tiles the weights are 0 there; at the raster's border the
    tiles reach ``margin`` pixels beyond it (origins can be negative), into padding that is read, never written.
    """

    height: int
    width: int
    tile: int
    overlap: int
    margin: int = 0

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise InputError(f"raster of {self.height} x {self.width} pixels has nothing to tile")
        if self.tile < 1 or not 0 <= self.overlap <= self.tile // 2:
            raise InputError(
                f"overlap {self.overlap} must be between 0 and half the tile size ({self.tile} // 2 = {self.tile // 2})"
            )
        if self.margin < 0 or (self.margin and 2 * self.margin >= self.overlap):
            raise InputError(f"edge margin {self.margin} must be 0 or less than half the overlap ({self.overlap})")

    @cached_property
    def row_offsets(self) -> np.ndarray:
        return _offsets(self.height, self.tile, self.overlap, self.margin)

    @cached_property
    def col_offsets(self) -> np.ndarray:
        return _offsets(self.width, self.tile, self.overlap, self.margin)

    @property
    def shape(self) -> tuple[int, int]:
        """Tiles per column and per row."""
        return len(self.row_offsets), len(self.col_offsets)

    def __len__(self) -> int:
        return len(self.row_offsets) * len(self.col_offsets)

    def origin(self, i: int) -> tuple[int, int]:
        """Raster (row, col) of tile ``i``'s top-left pixel."""
        r, c = divmod(i, len(self.col_offsets))
        return int(self.row_offsets[r]), int(self.col_offsets[c])

    def box(self, i: int, margin: int = 0) -> Box:
        """The part of tile ``i`` that lies inside the raster, less ``margin`` pixels along each tile edge."""
        r, c = self.origin(i)
        t, m = self.tile, margin
        return Box(max(r + m, 0), min(r + t - m, self.height), max(c + m, 0), min(c + t - m, self.width))

    def weights(self, i: int) -> np.ndarray:
        """``tile x tile`` blending weights of tile ``i``; over the raster the weights of all tiles sum to 1."""
        r, c = divmod(i, len(self.col_offsets))
        wy = _profile(self.row_offsets, r, self.tile, self.height, self.margin)
        wx = _profile(self.col_offsets, c, self.tile, self.width, self.margin)
        return np.outer(wy, wx).astype(np.float32)

    def pairs(self) -> list[tuple[int, int, Box]]:
        """Every pair of overlapping tiles ``(i, j)`` with ``i < j`` and their shared box in raster pixels, less
        the margin along each tile's edges: the pixels both tiles are trusted with."""
        rows, cols = self._overlapping(self.row_offsets), self._overlapping(self.col_offsets)
        ncols = len(self.col_offsets)
        out = []
        for r, row_partners in enumerate(rows):
            for c, col_partners in enumerate(cols):
                i = r * ncols + c
                for r2 in row_partners:
                    if r2 < r:
                        continue
                    for c2 in col_partners:
                        j = r2 * ncols + c2
                        if j > i:
                            a, b = self.box(i, self.margin), self.box(j, self.margin)
                            shared = Box(max(a.row0, b.row0), min(a.row1, b.row1),
                                         max(a.col0, b.col0), min(a.col1, b.col1))
                            if shared.row0 < shared.row1 and shared.col0 < shared.col1:
                                out.append((i, j, shared))
        return out

    def tiles_in_rows(self, row0: int, row1: int) -> list[int]:
        """Tiles that touch raster rows ``[row0, row1)``."""
        ncols = len(self.col_offsets)
        return [
            r * ncols + c
            for r, off in enumerate(self.row_offsets)
            if off < row1 and off + self.tile > row0
            for c in range(ncols)
        ]

    def _overlapping(self, offsets: np.ndarray) -> list[list[int]]:
        return [[m for m, o in enumerate(offsets) if abs(int(o) - int(k)) < self.tile] for k in offsets]


def pair_rows(p_i: np.ndarray, p_j: np.ndarray) -> np.ndarray | None:
    """Overlap equations ``a_i p_i + b_i = a_j p_j + b_j`` over the pixels finite in both maps, compressed.

    Returns the ``R`` (at most 4 x 4, acting on ``[a_i, b_i, a_j, b_j]``) of a QR factorisation: it has the same
    least-squares cost as one row per pixel, so the global system stays tiny whatever the tile size.
    None when fewer than 4 pixels are shared.
    """
    ok = np.isfinite(p_i) & np.isfinite(p_j)
    if ok.sum() < 4:
        return None
    x = np.stack([p_i[ok], np.ones(ok.sum()), -p_j[ok], -np.ones(ok.sum())], axis=1).astype(np.float64)
    return np.linalg.qr(x, mode="r")


def fit_rows(p: np.ndarray, y: np.ndarray, iterations: int = 4) -> tuple[np.ndarray, np.ndarray] | None:
    """Robust equations ``a p + b = y`` of one tile against a target (a reference DEM), compressed to 2 rows.

    Huber weights from a few reweighting rounds keep buildings, trees or reference artefacts from pulling the fit.
    Returns ``(A, rhs)`` with ``A`` 2 x 2 acting on ``[a, b]``; None with fewer than 3 finite pixel pairs.
    """
    ok = np.isfinite(p) & np.isfinite(y)
    if ok.sum() < 3:
        return None
    x = np.stack([p[ok], np.ones(ok.sum())], axis=1).astype(np.float64)
    t = y[ok].astype(np.float64)
    w = np.ones_like(t)
    for _ in range(iterations):
        coef = np.linalg.lstsq(x * w[:, None], t * w, rcond=None)[0]
        res = t - x @ coef
        sigma = 1.4826 * np.median(np.abs(res - np.median(res)))
        if sigma <= 1e-12:
            break
        w = np.sqrt(np.minimum(1.0, 1.345 * sigma / np.maximum(np.abs(res), 1e-12)))
    r = np.linalg.qr(np.column_stack([x, t]) * w[:, None], mode="r")
    return r[:2, :2], r[:2, 2]


def solve_affines(
    n_tiles: int,
    pairs: Iterable[tuple[int, int, np.ndarray]],
    fits: Iterable[tuple[int, np.ndarray, np.ndarray]] = (),
    *,
    initial_scale: np.ndarray | float = 1.0,
    initial_shift: np.ndarray | float = 0.0,
    gauge_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile ``(scale, shift)`` that make overlapping tiles agree and, given ``fits``, match their targets.

    ``pairs``: ``(i, j, R)`` from :func:`pair_rows`; ``fits``: ``(i, A, rhs)`` from :func:`fit_rows`.
    Overlaps alone are met by any common scale and shift, scale 0 included, so without fits two extra equations
    hold the mean scale and shift at those of the initial values, each tile counted by its ``gauge_weights``
    (default: equally). A flat tile (its map a constant) matches its neighbours at any scale: counted like the
    others, it could take the whole mean scale and leave the tiles with relief flat; given weight 0, it cannot.
    One sparse least-squares problem solved with
    LSQR for the correction to the initial values: what the equations leave open (a tile with no overlap or
    target) keeps its initial value.
    """
    rows, cols, vals, rhs = [], [], [], []
    n_rows = 0

    def add(block: np.ndarray, columns: np.ndarray, target: np.ndarray) -> None:
        nonlocal n_rows
        k = block.shape[0]
        rows.append(np.repeat(np.arange(n_rows, n_rows + k), block.shape[1]))
        cols.append(np.tile(columns, k))
        vals.append(block.ravel())
        rhs.append(target)
        n_rows += k

    energy = 0.0
    for i, j, r in pairs:
        add(r, np.array([2 * i, 2 * i + 1, 2 * j, 2 * j + 1]), np.zeros(r.shape[0]))
        energy += float(np.sum(r * r))
    n_fits = 0
    for i, a, b in fits:
        add(a, np.array([2 * i, 2 * i + 1]), b)
        n_fits += 1
    x0 = np.empty(2 * n_tiles)
    x0[0::2] = np.broadcast_to(initial_scale, n_tiles)
    x0[1::2] = np.broadcast_to(initial_shift, n_tiles)
    if not n_fits:
        # Weighted like all overlap pixels together, so the gauge holds without fighting the data.
        share = np.full(n_tiles, 1.0 / n_tiles)
        if gauge_weights is not None and np.sum(gauge_weights) > 0:
            share = np.asarray(gauge_weights, dtype=np.float64) / np.sum(gauge_weights)
        gauge = math.sqrt(max(energy, 1.0)) * share[None, :]
        add(gauge, np.arange(0, 2 * n_tiles, 2), gauge @ x0[0::2])
        add(gauge, np.arange(1, 2 * n_tiles, 2), gauge @ x0[1::2])

    a = coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows, 2 * n_tiles)
    ).tocsr()
    delta = lsqr(a, np.concatenate(rhs) - a @ x0, atol=1e-10, btol=1e-10, iter_lim=10 * n_tiles + 1000)[0]
    x = x0 + delta
    return x[0::2], x[1::2]
