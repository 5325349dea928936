"""Tile grid coverage, blending weights that sum to one, and the seam alignment solve (pure numpy, fast)."""

import numpy as np
import pytest

from d3rsmde.errors import InputError
from d3rsmde.tiling import TileGrid, fit_rows, pair_rows, solve_affines

SHAPES = [(300, 420, 64, 16, 0), (64, 64, 64, 16, 0), (40, 100, 64, 16, 0), (1000, 130, 128, 32, 0),
          (97, 97, 32, 0, 0), (300, 420, 64, 16, 4), (64, 64, 64, 16, 4), (40, 100, 64, 16, 7),
          (1000, 130, 128, 32, 8), (5, 300, 8, 4, 1)]


@pytest.mark.parametrize("height,width,tile,overlap,margin", SHAPES)
def test_grid_covers_raster_with_requested_overlap(height, width, tile, overlap, margin):
    grid = TileGrid(height, width, tile, overlap, margin)
    count = np.zeros((height, width), int)
    for i in range(len(grid)):
        b = grid.box(i)
        assert 0 <= b.row0 < b.row1 <= height and 0 <= b.col0 < b.col1 <= width
        count[b.row0 : b.row1, b.col0 : b.col1] += 1
    assert count.min() >= 1
    for offsets, length in ((grid.row_offsets, height), (grid.col_offsets, width)):
        assert offsets[0] == -margin
        if length + 2 * margin > tile:
            assert offsets[-1] == length + margin - tile
            assert (np.diff(offsets) <= tile - overlap).all()  # neighbours share >= overlap pixels
            assert (np.diff(offsets) > 0).all()


@pytest.mark.parametrize("height,width,tile,overlap,margin", SHAPES)
def test_weights_are_a_partition_of_unity(height, width, tile, overlap, margin):
    grid = TileGrid(height, width, tile, overlap, margin)
    total = np.zeros((height + 2 * tile, width + 2 * tile))  # raster at [tile, tile + height) x [tile, tile + width)
    for i in range(len(grid)):
        r, c = grid.origin(i)
        w = grid.weights(i)
        assert w.shape == (tile, tile) and (w >= 0).all()
        if not margin:
            b = grid.box(i)
            assert (w[: b.row1 - r, : b.col1 - c] > 0).all()  # every pixel a tile covers gets some weight
        total[tile + r : tile + r + tile, tile + c : tile + c + tile] += w
    inside = (slice(tile, tile + height), slice(tile, tile + width))
    np.testing.assert_allclose(total[inside], 1.0, atol=1e-6)
    total[inside] = 0
    assert np.abs(total).max() == 0  # padding weighs nothing


@pytest.mark.parametrize("height,width,tile,overlap,margin", [s for s in SHAPES if s[-1]])
def test_no_weight_within_margin_of_a_tile_edge(height, width, tile, overlap, margin):
    grid = TileGrid(height, width, tile, overlap, margin)
    inner = np.zeros((tile, tile), bool)
    inner[margin : tile - margin, margin : tile - margin] = True
    for i in range(len(grid)):
        assert (grid.weights(i)[~inner] == 0).all()


def test_weights_ramp_smoothly_across_overlap():
    grid = TileGrid(64, 200, 64, 16)
    row = grid.weights(1)[32]
    ramp = row[:20]
    assert (np.diff(ramp) > 0).all() and ramp[0] < 0.05 and row[32] == 1.0


@pytest.mark.parametrize("height,width,tile,overlap,margin", SHAPES)
def test_pairs_are_exactly_the_overlapping_tiles(height, width, tile, overlap, margin):
    grid = TileGrid(height, width, tile, overlap, margin)
    expected = {}
    for i in range(len(grid)):
        for j in range(i + 1, len(grid)):
            a, b = grid.box(i, margin), grid.box(j, margin)
            r0, r1, c0, c1 = max(a.row0, b.row0), min(a.row1, b.row1), max(a.col0, b.col0), min(a.col1, b.col1)
            if r0 < r1 and c0 < c1:
                expected[(i, j)] = (r0, r1, c0, c1)
    got = {(i, j): tuple(box) for i, j, box in grid.pairs()}
    assert got == expected


def test_tiles_in_rows():
    grid = TileGrid(300, 130, 64, 16)
    for row0, row1 in ((0, 10), (100, 256), (290, 300)):
        expected = [i for i in range(len(grid)) if grid.box(i).row0 < row1 and grid.box(i).row1 > row0]
        assert grid.tiles_in_rows(row0, row1) == expected


def test_bad_overlap_is_an_input_error():
    with pytest.raises(InputError, match="overlap 40 must be between 0 and half the tile size"):
        TileGrid(100, 100, 64, 40)
    with pytest.raises(InputError, match="edge margin 8 must be 0 or less than half the overlap"):
        TileGrid(100, 100, 64, 16, 8)


def _terrain(height, width):
    y, x = np.mgrid[0:height, 0:width] / 100.0
    return np.sin(1.3 * x) + np.cos(1.1 * y) + 0.4 * x * y + 0.2 * np.sin(3.1 * x + 2.3 * y)


def _normalised_tiles(grid, truth):
    """What a model that is perfect up to its per-tile normalisation returns: each tile min-max scaled."""
    tiles = []
    for i in range(len(grid)):
        b = grid.box(i)
        t = truth[b.row0 : b.row1, b.col0 : b.col1]
        tiles.append((t - t.min()) / (t.max() - t.min()))
    return tiles


def _pairs(grid, tiles):
    out = []
    for i, j, b in grid.pairs():
        (ri, ci), (rj, cj) = grid.origin(i), grid.origin(j)
        pi = tiles[i][b.row0 - ri : b.row1 - ri, b.col0 - ci : b.col1 - ci]
        pj = tiles[j][b.row0 - rj : b.row1 - rj, b.col0 - cj : b.col1 - cj]
        out.append((i, j, pair_rows(pi, pj)))
    return out


def _misfit(grid, tiles, truth, scale, shift):
    """Largest deviation of the aligned tiles from one global affine map of the truth, relative to its range."""
    aligned, true = [], []
    for i in range(len(grid)):
        b = grid.box(i)
        aligned.append((scale[i] * tiles[i] + shift[i]).ravel())
        true.append(truth[b.row0 : b.row1, b.col0 : b.col1].ravel())
    aligned, true = np.concatenate(aligned), np.concatenate(true)
    coef = np.polyfit(true, aligned, 1)
    return np.abs(aligned - np.polyval(coef, true)).max() / np.ptp(aligned)


def test_alignment_undoes_per_tile_normalisation():
    truth = _terrain(500, 700)
    grid = TileGrid(*truth.shape, 64, 16)
    tiles = _normalised_tiles(grid, truth)
    scale, shift = solve_affines(len(grid), _pairs(grid, tiles))
    assert _misfit(grid, tiles, truth, scale, shift) < 1e-4
    # The gauge: mean scale 1 and mean shift 0, and no tile collapsed to a constant.
    assert scale.mean() == pytest.approx(1.0, abs=1e-6) and shift.mean() == pytest.approx(0.0, abs=1e-6)
    assert scale.min() > 0
    # Control: without the solve the tiles disagree badly.
    ones = np.ones(len(grid))
    assert _misfit(grid, tiles, truth, ones, 0 * ones) > 0.1


def test_a_flat_tile_out_of_the_gauge_cannot_take_the_scale():
    """A tile whose map is a constant agrees with its neighbours at any scale. Here the tiles with relief also
    disagree a little with it at the seams (their maps are not flat there), so with every tile counted equally the
    cheapest solution gives the flat tile all the scale and the others none; given gauge weight 0 it cannot."""
    truth = _terrain(160, 220)
    grid = TileGrid(*truth.shape, 64, 16)
    tiles = _normalised_tiles(grid, truth)
    flat = len(grid) // 2
    tiles[flat] = np.full_like(tiles[flat], 0.5)
    weights = np.ones(len(grid))
    weights[flat] = 0.0
    scale, _ = solve_affines(len(grid), _pairs(grid, tiles), gauge_weights=weights)
    others = np.delete(scale, flat)
    assert others.mean() == pytest.approx(1.0, abs=0.01) and np.median(others) > 0.5
    plain, _ = solve_affines(len(grid), _pairs(grid, tiles))  # control: the flat tile takes the scale
    assert np.delete(plain, flat).max() < 0.1 < plain[flat]


def test_pair_rows_have_the_same_cost_as_all_pixels():
    rng = np.random.default_rng(1)
    p_i, p_j = rng.random((16, 64)), rng.random((16, 64))
    p_j[0, :5] = np.nan  # masked pixels are left out
    r = pair_rows(p_i, p_j)
    ok = np.isfinite(p_j)
    for x in rng.normal(size=(5, 4)):
        direct = np.sum((x[0] * p_i[ok] + x[1] - x[2] * p_j[ok] - x[3]) ** 2)
        assert np.sum((r @ x) ** 2) == pytest.approx(direct)
    assert pair_rows(p_i[:1, :3], p_j[:1, :3]) is None


def test_fit_rows_is_robust_to_outliers():
    rng = np.random.default_rng(2)
    p = rng.random(4000)
    y = 120.0 * p + 900.0 + rng.normal(0, 0.5, p.size)
    y[:400] += 300.0  # a building block, a reference artefact
    a, rhs = fit_rows(p, y)
    scale, shift = np.linalg.solve(a, rhs)
    assert scale == pytest.approx(120.0, rel=0.02) and shift == pytest.approx(900.0, abs=2.0)
    plain = np.polyfit(p, y, 1)  # control: least squares is pulled by the outliers
    assert abs(plain[1] - 900.0) > 10.0


def test_fits_set_the_gauge_and_overlaps_carry_it_to_uncovered_tiles():
    truth = 1000.0 + 200.0 * _terrain(300, 300)
    grid = TileGrid(*truth.shape, 64, 16)
    tiles = _normalised_tiles(grid, truth)
    covered = range(0, len(grid), 3)  # a reference over every third tile only
    fits = []
    for i in covered:
        b = grid.box(i)
        fits.append((i, *fit_rows(tiles[i], truth[b.row0 : b.row1, b.col0 : b.col1])))
    scale, shift = solve_affines(len(grid), _pairs(grid, tiles), fits)
    for i in range(len(grid)):
        b = grid.box(i)
        np.testing.assert_allclose(scale[i] * tiles[i] + shift[i], truth[b.row0 : b.row1, b.col0 : b.col1], atol=1e-3)
