"""predict_raster / evaluate_rasters on small synthetic GeoTIFFs: georeferencing, seams, metres from a reference
DEM, flat memory, cancel and failure cleanup, masks, band handling, bad inputs.

An "oracle" pipeline returns each tile's true height min-max normalised on its own: the hard case the stitcher has
to undo. The real tiny D3Pipeline (random weights) runs the same code path end to end.
"""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import ColorInterp, Resampling
from rasterio.transform import from_origin
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, reproject
from rasterio.windows import Window

from d3rsmde.config import D3Config
from d3rsmde.defaults import OVERLAP_FRACTION
from d3rsmde.errors import Cancelled, InputError
from d3rsmde.evaluation import evaluate_rasters
from d3rsmde.raster import NODATA, height_profile, predict_raster
from d3rsmde.raster.output import GridSpec
from d3rsmde.raster.predict import batch_ranges
from d3rsmde.tiling import TileGrid
from conftest import SAMPLE_RGB
from synthetic import render

UTM = "EPSG:32633"
METRE_PIXELS = from_origin(500_000, 4_650_000, 1.0, 1.0)
TILE, OVERLAP = 64, 16


class Oracle:
    """Per-tile min-max of the first band: a perfect model up to the per-tile normalisation."""

    size_multiple = 16
    device = torch.device("cpu")
    provenance: dict = {}  # no weights file

    def __init__(self, gsd_m=None):
        self.config = D3Config(name="oracle", tile_size=TILE, num_steps=0, gsd_m=gsd_m)
        self.calls = 0

    def __call__(self, images, refine_steps=None):
        self.calls += 1
        h = images[:, :1]
        lo, hi = h.amin(dim=(2, 3), keepdim=True), h.amax(dim=(2, 3), keepdim=True)
        return (h - lo) / (hi - lo).clamp_min(1e-6)


def write(path, data, crs=UTM, transform=None, **profile):
    data = np.asarray(data)
    data = data[None] if data.ndim == 2 else data
    transform = transform or METRE_PIXELS
    with rasterio.open(
        path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
        dtype=data.dtype, crs=crs, transform=transform, **profile,
    ) as ds:
        ds.write(data)
    return path


def write_height(path, heights, **tags):
    """A height map written as predict_raster writes one (its profile), on :func:`write`'s grid, with ``tags``."""
    grid = GridSpec(UTM, METRE_PIXELS, heights.shape[1], heights.shape[0])
    with rasterio.open(path, "w", **height_profile(grid)) as ds:
        ds.write(heights.astype(np.float32), 1)
        ds.update_tags(**tags)
    return path


def terrain_m(height, width, detail=0.12):
    """Heights in metres: hills, ``detail`` x small hills a few 8 m pixels wide, two flat plateaus (>= 3% each).

    The plateaus put the 1st and 99th image percentiles exactly at the lowest and highest ground, so the
    percentile stretch clips nothing and the oracle sees the true heights.
    """
    y, x = np.mgrid[0:height, 0:width] / 100.0
    z = np.sin(1.3 * x) + np.cos(1.1 * y) + 0.4 * x * y + 0.25 * np.sin(3.1 * x + 2.3 * y)
    z += detail * np.sin(17 * x) * np.cos(13 * y)
    lo, hi = np.percentile(z, [3, 97])
    return 1000.0 + 100.0 * np.clip(z, lo, hi)


def height_image(truth):
    """uint16 image whose values are the height (what the oracle reads)."""
    return np.round(1000 + 60000 * (truth - truth.min()) / np.ptp(truth)).astype(np.uint16)


def seam_ratio(out, grid):
    """Mean |second difference| across tile borders over that inside tiles, along both axes.

    Border zone: every row/column of an overlap between tiles and within 2 px of a tile edge.
    """

    def zone(offsets, length):
        z = np.zeros(length, bool)
        for a, b in zip(offsets[:-1], offsets[1:]):
            z[b : a + grid.tile] = True
        for o in offsets:
            for edge in (o, o + grid.tile):
                z[max(edge - 2, 0) : edge + 3] = True
        return z[1:-1]  # second differences exist for 1..length-2

    d2x = np.abs(out[:, :-2] - 2 * out[:, 1:-1] + out[:, 2:])
    d2y = np.abs(out[:-2] - 2 * out[1:-1] + out[2:])
    zx, zy = zone(grid.col_offsets, out.shape[1]), zone(grid.row_offsets, out.shape[0])
    border = np.concatenate([d2x[:, zx].ravel(), d2y[zy].ravel()])
    inside = np.concatenate([d2x[:, ~zx].ravel(), d2y[~zy].ravel()])
    return border.mean() / inside.mean()


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize(
    "crs,transform",
    [(UTM, from_origin(500_000, 4_650_000, 10.0, 10.0)), ("EPSG:4326", from_origin(-105.7, 40.4, 0.0015, 0.0012))],
    ids=["utm", "geographic"],
)
def test_output_keeps_georeferencing_and_format(tmp_path, tiny, crs, transform):
    src = write(tmp_path / "in.tif", (render(terrain_m(100, 150)) * 255).astype(np.uint8), crs, transform)
    stats = predict_raster(src, tmp_path / "out.tif", tiny, refine_steps=2)
    with rasterio.open(src) as a, rasterio.open(tmp_path / "out.tif") as b:
        assert (b.crs, b.transform, b.width, b.height) == (a.crs, a.transform, a.width, a.height)
        assert b.dtypes == ("float32",) and b.nodata == NODATA
        assert b.block_shapes == [(256, 256)]
        assert b.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        assert b.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3"
        assert b.overviews(1) == [2]
        tags = b.tags()
        assert tags["units"] == "relative" and tags["model"] == "tiny" and tags["refine_steps"] == "2"
        assert tags["software"].startswith("d3rsmde ") and tags["tile_size"] == "64"
        assert "relative height" in b.descriptions[0]
        out = b.read(1)
    # Relative height spans exactly 0..1 over the raster.
    assert np.isfinite(out).all()
    assert out.min() == pytest.approx(0, abs=1e-6) and out.max() == pytest.approx(1, abs=1e-6)
    assert stats["tiles"] == 6 and stats["units"] == "relative" and stats["device"] == "cpu"
    assert stats["extent"] is None  # no extent given (0.5.2-0.5.4 reported one for every relative run)
    assert stats["megapixels"] == pytest.approx(0.015) and stats["seconds"] > 0


class FramedOracle(Oracle):
    """The oracle with a decoder-like bright frame: each tile's 2 outer pixels at 1, its inside in 0..0.8."""

    def __call__(self, images, refine_steps=None):
        out = super().__call__(images) * 0.8
        out[..., :2, :] = out[..., -2:, :] = out[..., :, :2] = out[..., :, -2:] = 1.0
        return out


def test_relative_output_spans_exactly_0_to_1_whatever_the_tiles_edges_hold(tmp_path):
    """The frame never reaches the output (tile edges get no weight, raster borders lie in padding), so it must
    not set the output's range either: before 0.5.4 the tiles' own maxima (the frame) did, and this map ended at
    0.90."""
    truth = terrain_m(150, 200)
    src = write(tmp_path / "in.tif", height_image(truth))
    stats = predict_raster(src, tmp_path / "out.tif", FramedOracle(), tile=TILE, overlap=OVERLAP)
    out = read(tmp_path / "out.tif")
    assert stats["tiles"] > 4 and out.min() == pytest.approx(0, abs=1e-6) and out.max() == pytest.approx(1, abs=1e-6)
    assert np.corrcoef(out.ravel(), truth.ravel())[0, 1] > 0.99  # the frame left no trace


def test_stitching_undoes_per_tile_normalisation_without_seams(tmp_path):
    truth = terrain_m(384, 512, detail=0.0)
    src = write(tmp_path / "in.tif", height_image(truth))
    predict_raster(src, tmp_path / "out.tif", Oracle(), tile=TILE, overlap=OVERLAP)
    out = read(tmp_path / "out.tif")
    grid = TileGrid(*truth.shape, TILE, OVERLAP)

    # One consistent surface: an affine map of the truth everywhere, spanning 0..1.
    coef = np.polyfit(truth.ravel(), out.ravel(), 1)
    assert np.abs(out - np.polyval(coef, truth)).max() < 1e-3
    assert out.min() == pytest.approx(0, abs=1e-4) and out.max() == pytest.approx(1, abs=1e-4)
    ratio = seam_ratio(out, grid)
    print(f"seam ratio (border / interior second difference): {ratio:.3f}")
    assert ratio <= 1.5

    # Control: the same tiles blended without the alignment show the grid plainly.
    naive_acc = np.zeros_like(truth)
    for i in range(len(grid)):
        b, (r, c) = grid.box(i), grid.origin(i)
        t = truth[b.row0 : b.row1, b.col0 : b.col1]
        w = grid.weights(i)[: b.row1 - r, : b.col1 - c]
        naive_acc[b.row0 : b.row1, b.col0 : b.col1] += w * (t - t.min()) / np.ptp(t)
    naive = seam_ratio(naive_acc, grid)
    print(f"seam ratio without alignment: {naive:.3f}")
    assert naive > 3.0


@pytest.mark.parametrize("contrast", [None, 0.0])
def test_calm_sea_is_flat_and_leaves_the_land_its_relief(tmp_path, monkeypatch, contrast):
    """The bundled model's coarse map of the sample with a calm sea (a few grey levels of noise) east of column
    200. A featureless tile used to be stretched to 0..1 like any other: the model's faint round bump on a uniform
    image became a mountain, and since such a tile agrees with its neighbours at any scale, the seam solve gave it
    the whole mean scale and flattened the land. Control: with the contrast test off (threshold 0) that comes back."""
    from d3rsmde.pipeline import D3Pipeline
    from d3rsmde.raster import predict
    from d3rsmde.weights import default_weights_path

    if contrast is not None:
        monkeypatch.setattr(predict, "FEATURELESS_CONTRAST", contrast)
    with rasterio.open(SAMPLE_RGB) as ds:
        image, profile = ds.read(), ds.profile
    noise = np.random.default_rng(0).integers(0, 3, image[:, :, 200:].shape)
    image[:, :, 200:] = np.array([20, 40, 70])[:, None, None] + noise
    with rasterio.open(tmp_path / "coast.tif", "w", **profile) as ds:
        ds.write(image)
    pipe = D3Pipeline.from_pretrained(default_weights_path(), device="cpu")
    stats = predict_raster(tmp_path / "coast.tif", tmp_path / "out.tif", pipe, refine_steps=0)
    out = read(tmp_path / "out.tif")
    land, open_sea = out[20:-20, 20:180], out[20:-20, 300:]  # open sea: no tile over it holds land
    if contrast is None:
        assert np.ptp(open_sea) < 0.02 and open_sea.mean() < land.mean()
        assert np.ptp(land) > 0.8
        assert any("show no contrast" in w for w in stats["warnings"])
    else:
        assert np.ptp(land) < 0.5 or np.ptp(open_sea) > 0.3
        assert not any("show no contrast" in w for w in stats["warnings"])


@pytest.mark.parametrize("find_collar", [True, False])
def test_an_undeclared_black_border_is_nodata(tmp_path, monkeypatch, find_collar):
    """The sample turned by 12 degrees inside a black border, with no nodata value (a rotated scene stacked without
    one): its map equals that of the same image with the border as an alpha band, with nodata over the border and
    a warning. Control: not looked for, the border is a plain in the map and the image's map changes."""
    from scipy import ndimage
    from d3rsmde.pipeline import D3Pipeline
    from d3rsmde.raster import masks
    from d3rsmde.weights import default_weights_path

    if not find_collar:
        monkeypatch.setattr(masks, "collar_value", lambda ds, indexes: None)
    with rasterio.open(SAMPLE_RGB) as ds:
        image, valid = ds.read(), ds.dataset_mask() > 0
    nearest = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    image = image[:, nearest[0], nearest[1]]  # the sample's own nodata border filled with image
    turned = np.stack([ndimage.rotate(band, 12, order=0) for band in image])
    inside = ndimage.rotate(np.ones(image.shape[1:], np.uint8), 12, order=0) > 0
    turned[:, ~inside] = 0
    bare = write(tmp_path / "bare.tif", turned)
    alpha = write(tmp_path / "alpha.tif", np.concatenate([turned, 255 * inside[None].astype(np.uint8)]),
                  photometric="RGB", alpha="YES")
    pipe = D3Pipeline.from_pretrained(default_weights_path(), device="cpu")
    stats = predict_raster(bare, tmp_path / "bare-map.tif", pipe, refine_steps=0)
    predict_raster(alpha, tmp_path / "alpha-map.tif", pipe, refine_steps=0)
    with rasterio.open(tmp_path / "bare-map.tif") as a, rasterio.open(tmp_path / "alpha-map.tif") as b:
        bare_map, alpha_map = a.read(1, masked=True), b.read(1, masked=True)
    assert np.array_equal(alpha_map.mask, ~inside)
    warned = any("a border of 0 in every band surrounds the image" in w for w in stats["warnings"])
    if find_collar:
        assert warned and np.array_equal(bare_map.mask, ~inside) and np.abs(bare_map - alpha_map).max() < 1e-6
    else:
        assert not warned and not bare_map.mask.any()
        assert np.median(np.abs(bare_map - alpha_map)[inside]) > 0.02  # 0.046 (coarse only)


def test_an_empty_or_bordered_extent_is_refused_by_the_file_name(tmp_path, tiny):
    """An all-white raster with no nodata value is told as showing no contrast (it is not all border), and an
    extent that lies in an undeclared border names the file, not the VRT that masks the border."""
    image = height_image(terrain_m(64, 64))
    white = write(tmp_path / "white.tif", np.full((3, 64, 64), 255, np.uint8))
    with pytest.raises(InputError, match="^white.tif shows no contrast"):
        predict_raster(white, tmp_path / "white-map.tif", tiny, refine_steps=0)
    bordered = image.copy()
    bordered[:, :32] = 0
    src = write(tmp_path / "bordered.tif", bordered)
    with rasterio.open(src) as ds:
        left, bottom, _, top = ds.bounds
        x_mid = ds.xy(0, 16)[0]
    with pytest.raises(InputError, match=r"^bordered.tif has no valid pixels in the chosen extent"):
        predict_raster(src, tmp_path / "map.tif", tiny, refine_steps=0, bounds=(left, bottom, x_mid, top))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bordered.tif", "white.tif"]


def test_collar_value_finds_fill_borders_only():
    from rasterio.io import MemoryFile
    from d3rsmde.raster.masks import collar_value

    image = np.random.default_rng(0).integers(1, 255, (3, 100, 100)).astype(np.uint8)
    cases = []
    black = image.copy(); black[:, :, :20] = 0; cases.append((black, {}, 0.0))
    white = image.copy(); white[:, -20:] = 255; cases.append((white, {}, 255.0))
    speck = image.copy(); speck[:, :5, :1] = 0; cases.append((speck, {}, None))  # 0.05 %: image
    shadow = image.copy(); shadow[:, 30:60, :10] = 0; cases.append((shadow, {}, None))  # at the edge, no corner
    lake = image.copy(); lake[:, 40:60, 40:60] = 0; cases.append((lake, {}, None))  # inside, away from the edge
    cases.append((black, {"nodata": 0}, None))  # declared: taken as the raster says
    cases.append((np.full_like(image, 255), {}, None))  # all white: an empty raster, not a border
    for data, profile, expected in cases:
        with MemoryFile() as mem:
            with mem.open(driver="GTiff", width=100, height=100, count=3, dtype="uint8", **profile) as ds:
                ds.write(data)
            with mem.open() as ds:
                assert collar_value(ds, [1, 2, 3]) == expected


def test_a_raster_inside_a_zip_is_read_and_a_container_is_refused_plainly(tmp_path, tiny):
    """GDAL names a raster inside a zip /vsizip//ABS/a.zip/inner.tif and a gzipped one /vsigzip//ABS/a.tif.gz;
    pathlib used to fold their double slash into a relative name that GDAL cannot find. A GeoPackage of two raster
    tables holds no bands itself: a clear error naming its subdatasets, not an IndexError."""
    import gzip
    import shutil
    import zipfile

    image = height_image(terrain_m(64, 64))
    src = write(tmp_path / "in.tif", image)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.write(src, "inner/in.tif")
    predict_raster(src, tmp_path / "plain.tif", tiny, refine_steps=0)
    predict_raster(f"/vsizip/{tmp_path}/a.zip/inner/in.tif", tmp_path / "zipped.tif", tiny, refine_steps=0)
    assert np.array_equal(read(tmp_path / "plain.tif"), read(tmp_path / "zipped.tif"))
    with open(src, "rb") as raw, gzip.open(tmp_path / "in.tif.gz", "wb") as packed:
        shutil.copyfileobj(raw, packed)
    predict_raster(f"/vsigzip/{tmp_path}/in.tif.gz", tmp_path / "gzipped.tif", tiny, refine_steps=0)
    assert np.array_equal(read(tmp_path / "plain.tif"), read(tmp_path / "gzipped.tif"))
    grey = np.repeat((image // 256).astype(np.uint8)[None], 3, axis=0)
    for table, extra in [("one", {}), ("two", {"APPEND_SUBDATASET": "YES"})]:
        with rasterio.open(tmp_path / "two.gpkg", "w", driver="GPKG", width=64, height=64, count=3, dtype="uint8",
                           crs=UTM, transform=METRE_PIXELS, RASTER_TABLE=table, TILE_FORMAT="PNG", **extra) as ds:
            ds.write(grey)
    with pytest.raises(InputError, match=r"two.gpkg holds no raster bands: open one of its 2 subdatasets, e.g. GPKG:"):
        predict_raster(tmp_path / "two.gpkg", tmp_path / "none.tif", tiny, refine_steps=0)
    assert not (tmp_path / "none.tif").exists()


def test_a_paletted_raster_is_read_as_its_colours(tmp_path):
    """One band of colour-table indexes (an 8-bit image saved with a palette) is read through its table: the map
    equals that of the same colours stored as RGB (resampled to the model's GSD: nearly). Before 0.5.8 the indexes were read
    as brightness; the palette here is shuffled, so that gives another map (the control)."""
    truth = terrain_m(128, 192)
    level = np.round(255 * (truth - truth.min()) / np.ptp(truth)).astype(np.uint8)
    colours = np.stack([np.arange(256), 255 - np.arange(256), np.arange(256) // 2], axis=1).astype(np.uint8)
    order = np.random.default_rng(0).permutation(256)  # palette entry i holds the colour of level order[i]
    index_of_level = np.argsort(order).astype(np.uint8)
    rgb = write(tmp_path / "rgb.tif", np.moveaxis(colours[level], -1, 0))
    paletted = write(tmp_path / "paletted.tif", index_of_level[level][None], photometric="palette")
    with rasterio.open(paletted, "r+") as ds:
        ds.write_colormap(1, {i: (*colours[order[i]], 255) for i in range(256)})
    with rasterio.open(paletted) as ds:
        assert ds.colorinterp[0] == ColorInterp.palette
    for resample in (False, True):
        maps = []
        for src in (rgb, paletted):
            out = tmp_path / f"{src.stem}-{resample}.tif"
            predict_raster(src, out, Oracle(gsd_m=2.0), tile=TILE, overlap=OVERLAP, resample_to_gsd=resample)
            maps.append(read(out))
        if resample:  # the RGB image is averaged down, the indexes are taken nearest: close, not equal
            assert np.corrcoef(maps[1].ravel(), maps[0].ravel())[0, 1] > 0.99
        else:
            np.testing.assert_allclose(maps[1], maps[0], atol=1e-5)
        assert np.corrcoef(maps[1].ravel(), truth.ravel())[0, 1] > 0.99
    with rasterio.open(paletted) as ds:  # control: the indexes themselves say nothing of the terrain
        assert abs(np.corrcoef(ds.read(1).ravel().astype(float), truth.ravel())[0, 1]) < 0.2


def test_an_image_without_contrast_is_an_input_error(tmp_path):
    src = write(tmp_path / "grey.tif", np.full((3, 100, 150), 128, np.uint8))
    with pytest.raises(InputError, match="shows no contrast"):
        predict_raster(src, tmp_path / "out.tif", Oracle(), tile=TILE, overlap=OVERLAP)
    assert not (tmp_path / "out.tif").exists()


def test_real_tiny_pipeline_stitches_without_seams(tmp_path, tiny):
    truth = terrain_m(256, 320)
    src = write(tmp_path / "in.tif", (render(truth) * 255).astype(np.uint8))
    stats = predict_raster(src, tmp_path / "out.tif", tiny, tile=TILE, overlap=OVERLAP, refine_steps=1)
    out = read(tmp_path / "out.tif")
    assert np.isfinite(out).all() and stats["tiles"] == len(TileGrid(256, 320, TILE, OVERLAP, OVERLAP // 4))
    assert seam_ratio(out, TileGrid(256, 320, TILE, OVERLAP)) <= 1.5


def test_batches_in_parallel_workers_give_the_output_of_one(tmp_path, tiny):
    """On a CPU two batches run at once by default, each on half of torch's threads: the same output."""
    src = write(tmp_path / "in.tif", (render(terrain_m(200, 260)) * 255).astype(np.uint8))
    one = predict_raster(src, tmp_path / "one.tif", tiny, tile=TILE, overlap=OVERLAP, batch_size=2, workers=1,
                         refine_steps=2)
    two = predict_raster(src, tmp_path / "two.tif", tiny, tile=TILE, overlap=OVERLAP, batch_size=2, refine_steps=2)
    assert (one["workers"], two["workers"]) == (1, 2 if torch.get_num_threads() >= 2 else 1)
    # float sums in another order on one thread than on two: agreement to 1e-4 of the 0..1 range
    np.testing.assert_allclose(read(tmp_path / "two.tif"), read(tmp_path / "one.tif"), atol=1e-4)
    with pytest.raises(InputError, match="workers must be at least 1"):
        predict_raster(src, tmp_path / "zero.tif", tiny, tile=TILE, workers=0)


def test_one_model_serves_parallel_runs(tmp_path):
    """QGIS runs algorithms in parallel threads and the plugin shares one loaded model (a hybrid one, whose CNN stem
    hands skip maps to the DPT head): each run gives the map it gives alone."""
    from concurrent.futures import ThreadPoolExecutor

    from d3rsmde.config import get_config
    from d3rsmde.pipeline import D3Pipeline

    torch.manual_seed(0)
    pipe = D3Pipeline.from_config(get_config("lean", tile_size=TILE))
    sources = [write(tmp_path / f"in{k}.tif", (render(terrain_m(150, 200) * (k + 1)) * 255).astype(np.uint8))
               for k in range(2)]

    def run(k, name):
        predict_raster(sources[k], tmp_path / f"{name}{k}.tif", pipe, tile=TILE, refine_steps=1, workers=1)
        return read(tmp_path / f"{name}{k}.tif")

    alone = [run(k, "alone") for k in range(2)]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda k: [run(k, f"together{i}-") for i in range(3)], range(2)))
    for k in range(2):
        for out in together[k]:
            np.testing.assert_allclose(out, alone[k], atol=1e-4)


@pytest.mark.parametrize("tiles,batch,workers",
                         [(25, 8, 2), (100, 8, 2), (81, 8, 2), (9, 8, 2), (1, 8, 2), (100, 16, 1)])
def test_batches_are_even_and_keep_every_worker_busy_to_the_end(tiles, batch, workers):
    ranges = batch_ranges(tiles, batch, workers)
    assert [i for r in ranges for i in r] == list(range(tiles))
    sizes = [len(r) for r in ranges]
    assert max(sizes) <= batch and max(sizes) - min(sizes) <= 1
    assert tiles < workers or len(ranges) % workers == 0


@pytest.mark.parametrize("ref_crs", [UTM, "EPSG:4326"])
def test_reference_dem_gives_metres(tmp_path, ref_crs):
    truth = terrain_m(384, 512)
    src = write(tmp_path / "in.tif", height_image(truth))
    # Reference: the truth averaged over 8 x 8 blocks (an 8 m DEM for a 1 m image), on its own grid and CRS.
    coarse = truth.reshape(48, 8, 64, 8).mean(axis=(1, 3)).astype(np.float32)
    ref = write(tmp_path / "ref.tif", coarse, transform=from_origin(500_000, 4_650_000, 8.0, 8.0))
    if ref_crs != UTM:
        with rasterio.open(ref) as r:
            transform, width, height = calculate_default_transform(r.crs, ref_crs, r.width, r.height, *r.bounds)
            geo = np.full((height, width), np.nan, np.float32)
            reproject(coarse, geo, src_transform=r.transform, src_crs=r.crs, dst_transform=transform,
                      dst_crs=ref_crs, resampling=Resampling.bilinear, dst_nodata=np.nan)
        ref = write(tmp_path / "ref-geo.tif", geo, crs=ref_crs, transform=transform, nodata=np.nan)
    stats = predict_raster(src, tmp_path / "out.tif", Oracle(), tile=TILE, overlap=OVERLAP, reference_dem=ref)
    with rasterio.open(tmp_path / "out.tif") as ds:
        out = ds.read(1)
        assert ds.tags()["units"] == "m" and ds.units == ("m",) and "height (m)" in ds.descriptions[0]
    with rasterio.open(ref) as r, WarpedVRT(
        r, crs=UTM, transform=METRE_PIXELS, width=512, height=384,
        resampling=Resampling.bilinear, nodata=np.nan, dtype="float32",
    ) as vrt:
        upsampled = vrt.read(1)
    inner = (slice(8, -8), slice(8, -8))  # bilinear has no neighbours to use at the very edge
    ref_mae = np.nanmean(np.abs(upsampled - truth)[inner])
    out_mae = np.abs(out - truth)[inner].mean()
    print(f"reference {ref_crs}: output MAE {out_mae:.3f} m, reference's own up-sampling MAE {ref_mae:.3f} m")
    assert stats["units"] == "m" and (out != NODATA).all()
    assert ref_mae > 1.0  # the reference alone misses the small hills and rounds the plateau edges
    # A perfect model adds the small hills: far better than the reference (whose reprojection to degrees, bilinear,
    # blurs what the output takes from it: 0.86 m there, 0.01 m on its own grid).
    assert out_mae < 0.5 * ref_mae, (out_mae, ref_mae)
    assert abs(np.mean(out - truth)) < 0.1  # no bias in metres


class WrongLows(Oracle):
    """The oracle's small hills under a false large-scale shape: each tile tilted by its relief."""

    def __call__(self, images, refine_steps=None):
        h = super().__call__(images, refine_steps)
        tilt = torch.linspace(0, 1, h.shape[-1]).expand_as(h)
        out = h + tilt
        lo, hi = out.amin(dim=(2, 3), keepdim=True), out.amax(dim=(2, 3), keepdim=True)
        return (out - lo) / (hi - lo)


def test_a_reference_dem_sets_the_large_scales_the_model_adds_the_rest(tmp_path):
    """A model wrong at large scales, a reference 8x coarser than the image: the output keeps the reference's
    heights at the reference's resolution, so it is better than the reference alone, not worse (fitting each
    tile's heights to the reference, as before 0.5.1, kept the false tilts: MAE 31.5 m against the reference's own
    1.48 m; now 1.29 m)."""
    truth = terrain_m(384, 512)
    src = write(tmp_path / "in.tif", height_image(truth))
    coarse = truth.reshape(48, 8, 64, 8).mean(axis=(1, 3)).astype(np.float32)
    ref = write(tmp_path / "ref.tif", coarse, transform=from_origin(500_000, 4_650_000, 8.0, 8.0))
    predict_raster(src, tmp_path / "out.tif", WrongLows(), tile=TILE, overlap=OVERLAP, reference_dem=ref)
    out = read(tmp_path / "out.tif")
    with rasterio.open(ref) as r, WarpedVRT(r, crs=UTM, transform=METRE_PIXELS, width=512, height=384,
                                            resampling=Resampling.bilinear) as vrt:
        upsampled = vrt.read(1)
    inner = (slice(8, -8), slice(8, -8))
    out_mae, ref_mae = np.abs(out - truth)[inner].mean(), np.abs(upsampled - truth)[inner].mean()
    print(f"wrong large scales: output MAE {out_mae:.3f} m, reference's own up-sampling MAE {ref_mae:.3f} m")
    assert out_mae < ref_mae, (out_mae, ref_mae)


def test_no_step_where_the_reference_ends(tmp_path):
    """A reference covering the left half only: past its edge the correction is diffused on, so the output does not
    jump there (it jumped by the whole correction when it stopped at the edge)."""
    truth = terrain_m(384, 512)
    src = write(tmp_path / "in.tif", height_image(truth))
    half = truth[:, :256].reshape(48, 8, 32, 8).mean(axis=(1, 3)).astype(np.float32)
    ref = write(tmp_path / "ref.tif", half, transform=from_origin(500_000, 4_650_000, 8.0, 8.0))
    predict_raster(src, tmp_path / "out.tif", WrongLows(), tile=TILE, overlap=OVERLAP, reference_dem=ref)
    out = read(tmp_path / "out.tif")
    steps = np.median(np.abs(np.diff(out, axis=1)), axis=0)  # per column pair, over the rows
    print(f"step at the reference's edge {steps[250:262].max():.3f} m, median {np.median(steps):.3f} m")
    assert steps[250:262].max() < 4 * np.median(steps)


@pytest.mark.parametrize("cells", [1, 2, 3, 5, 16])
def test_a_right_surface_is_left_as_it_is_by_a_reference_of_any_size(tmp_path, cells):
    """A reference holding exactly the surface's block means changes nothing, however few its pixels (GDAL 3.6
    averages wrongly onto grids under 4 pixels wide: a 2 x 2 one got its columns swapped)."""
    from d3rsmde.raster.output import VerifiedOutput
    from d3rsmde.raster.reference import keep_reference_lows

    truth = terrain_m(240, 240)
    surface = write_height(tmp_path / "surface.tif", truth)
    block = 240 // cells
    means = truth.reshape(cells, block, cells, block).mean(axis=(1, 3)).astype(np.float32)
    ref = write(tmp_path / "ref.tif", means, transform=from_origin(500_000, 4_650_000, block, block))
    with VerifiedOutput(tmp_path / "out.tif", GridSpec(UTM, METRE_PIXELS, 240, 240)) as out:
        keep_reference_lows(surface, ref, out, tmp_path)
    np.testing.assert_allclose(read(tmp_path / "out.tif"), truth, atol=1e-2)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from d3rsmde.config import D3Config
    from d3rsmde.raster import predict_raster

    def nbytes(field):  # from /proc: VmHWM (peak RSS), unlike ru_maxrss, does not inherit pytest's peak
        return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024

    class Fast:
        size_multiple = 16
        device = torch.device("cpu")
        provenance = {}
        config = D3Config(name="fast", tile_size=256, num_steps=0)
        def __call__(self, x, refine_steps=None):
            h = x.mean(1, keepdim=True)
            lo, hi = h.amin((2, 3), keepdim=True), h.amax((2, 3), keepdim=True)
            return (h - lo) / (hi - lo).clamp_min(1e-6)

    small, big, out = sys.argv[1:4]
    predict_raster(small, out + ".warm.tif", Fast(), batch_size=4)  # one-time costs: torch, GDAL drivers
    base = nbytes("VmRSS")
    stats = predict_raster(big, out, Fast(), batch_size=4)
    print(json.dumps({"growth": nbytes("VmHWM") - base, "tiles": stats["tiles"]}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
def test_memory_stays_flat_on_a_large_raster(tmp_path):
    n = 4000
    big = tmp_path / "big.tif"
    with rasterio.open(
        big, "w", driver="GTiff", width=n, height=n, count=3, dtype="uint8", crs=UTM,
        transform=METRE_PIXELS, tiled=True,
    ) as ds:
        for row in range(0, n, 500):
            y, x = np.mgrid[row : row + 500, 0:n]
            v = (127 + 100 * np.sin(x / 300.0) * np.cos(y / 250.0)).astype(np.uint8)
            ds.write(np.stack([v, v, v]), window=Window(0, row, n, 500))
    small = write(tmp_path / "small.tif", np.broadcast_to((np.arange(300) % 250).astype(np.uint8), (3, 300, 300)))
    # One malloc arena: glibc gives each thread (prefetch, GDAL, torch) its own, and what they keep after freeing
    # varied the peak from 73 to 124 MiB between identical runs (2-core Intel Xeon); with one arena, 66-70 MiB.
    # The test is about what the engine holds, not how the C allocator recycles it.
    env = {**os.environ, "GDAL_CACHEMAX": "16", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MALLOC_ARENA_MAX": "1"}
    run = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(small), str(big), str(tmp_path / "out.tif")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    full_raster = n * n * 4  # one float32 band of the whole raster: 61 MiB
    # A naive run holds the float32 input (3 bands), the output and a weight sum: 5 full-raster buffers, 305 MiB.
    # Here: GDAL block cache (16 MiB, set above) + one stitching band (256 rows x 4000 x 4 B x 3 arrays, 12 MiB)
    # + tiles in flight (3 batches x 4 tiles x 3 x 256^2 x 4 B, 9 MiB) + the decimated percentile sample
    # (<= 1024^2 x 3 bands) and allocator slack: well under 2 full-raster buffers.
    print(f"4000 x 4000: peak RSS growth {result['growth'] / 2**20:.0f} MiB (one float32 band: 61 MiB)")
    overlap = round(256 * OVERLAP_FRACTION)
    assert result["tiles"] == len(TileGrid(n, n, 256, overlap, overlap // 4)) == 324  # 18 x 18 at the defaults
    assert result["growth"] < 2 * full_raster, f"peak RSS grew {result['growth'] / 2**20:.0f} MiB"
    with rasterio.open(tmp_path / "out.tif") as ds:
        assert (ds.width, ds.height) == (n, n)
        assert np.isfinite(ds.read(1, window=Window(1000, 1000, 300, 300))).all()


def test_cancel_leaves_no_file_and_input_untouched(tmp_path):
    src = write(tmp_path / "in.tif", height_image(terrain_m(200, 260)))
    before = sha256(src)
    polls, seen = [], []

    def cancel():
        polls.append(1)
        return len(polls) >= 3

    with pytest.raises(Cancelled, match="^cancelled while predicting tiles$"):
        predict_raster(src, tmp_path / "out.tif", Oracle(), tile=TILE, batch_size=2, cancel=cancel,
                       progress=lambda f, m: seen.append(f))
    assert len(polls) == 3  # stopped at the first poll that said so: within one batch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
    assert sha256(src) == before
    assert seen and seen == sorted(seen) and seen[-1] < 0.9


def test_failure_leaves_no_file(tmp_path):
    src = write(tmp_path / "in.tif", height_image(terrain_m(200, 260)))

    class Broken(Oracle):
        def __call__(self, images, refine_steps=None):
            if self.calls == 2:
                raise RuntimeError("device lost (simulated)")
            return super().__call__(images, refine_steps)

    with pytest.raises(RuntimeError, match="simulated"):
        predict_raster(src, tmp_path / "out.tif", Broken(), tile=TILE, batch_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_nodata_and_alpha_areas_are_nodata(tmp_path):
    truth = terrain_m(160, 200)
    img = height_image(truth)
    img[20:60, 30:90] = 0
    src = write(tmp_path / "nodata.tif", img, nodata=0)
    predict_raster(src, tmp_path / "out1.tif", Oracle(), tile=TILE)
    out = read(tmp_path / "out1.tif")
    assert (out[20:60, 30:90] == NODATA).all()
    outside = np.ones_like(out, bool)
    outside[20:60, 30:90] = False
    assert (out[outside] != NODATA).all() and np.isfinite(out).all()

    # A nodata block covering whole tiles: those tiles are skipped, their neighbours still blend cleanly.
    img = height_image(truth)
    img[:, :100] = 0
    src = write(tmp_path / "nodata-tiles.tif", img, nodata=0)
    predict_raster(src, tmp_path / "out3.tif", Oracle(), tile=TILE)
    out = read(tmp_path / "out3.tif")
    assert (out[:, :100] == NODATA).all() and (out[:, 100:] >= 0).all() and (out[:, 100:] <= 1).all()

    rgba = np.concatenate([(render(truth) * 255).astype(np.uint8), np.full((1, 160, 200), 255, np.uint8)])
    rgba[3, 100:, :50] = 0
    src = write(tmp_path / "rgba.tif", rgba, photometric="RGB", alpha="YES")
    with rasterio.open(src) as ds:
        assert ds.colorinterp[3] == ColorInterp.alpha
    stats = predict_raster(src, tmp_path / "out2.tif", Oracle(), tile=TILE)
    out = read(tmp_path / "out2.tif")
    assert stats["bands"] == [1, 2, 3]
    assert (out[100:, :50] == NODATA).all() and (out[:100] != NODATA).all() and (out[:, 50:] != NODATA).all()


def saturated_rgb(truth):
    """8-bit RGB of ``truth`` declaring nodata 255, with a 255 collar along the top, enclosed holes of 255 of
    9, 10 (across the seam of the first two tile columns: tile 64, overlap 16) and 100 pixels, and one pixel
    saturated in one band only. Returns the image and the masks of the small holes and the large ones."""
    rgb = np.minimum((render(truth) * 255).astype(np.uint8), 250)
    small, large = np.zeros(truth.shape, bool), np.zeros(truth.shape, bool)
    small[80:83, 100:103] = small[40:42, 44:49] = small[120, 20] = True
    large[100:110, 150:160] = True
    large[:6] = True  # a collar: reaches the raster's edge
    rgb[:, small | large] = 255
    rgb[1, 120, 20] = 200  # saturated in red and blue only: still nodata in GDAL's eyes (any band)
    return rgb, small, large


def test_small_nodata_holes_inside_the_image_are_image_pixels(tmp_path):
    """Snow at 255 in an image whose nodata is 255: small enclosed holes get heights, large or open ones do not."""
    truth = terrain_m(160, 200)
    rgb, small, large = saturated_rgb(truth)
    src = write(tmp_path / "snow.tif", rgb, nodata=255, photometric="RGB")
    stats = predict_raster(src, tmp_path / "out.tif", Oracle(), tile=TILE, overlap=OVERLAP)
    out = read(tmp_path / "out.tif")
    assert (out[large] == NODATA).all()
    assert (out[~large] != NODATA).all() and (out[~large] >= 0).all() and (out[~large] <= 1).all()
    assert stats["nodata_holes_used"] == small.sum() == 20  # each pixel once, though the seam hole is in 2 tiles
    assert any("20 pixels of snow.tif equal its nodata value 255" in w for w in stats["warnings"])

    # The model saw the holes' own (bright) values, not the tile's mean colour.
    seen = Recorder()
    predict_raster(src, tmp_path / "seen.tif", seen, tile=208, overlap=0)  # one tile
    image = seen.seen[0][0, 0, :160, :200].numpy()
    assert (image[80:83, 100:103] == 1.0).all() and image[large & (np.arange(160)[:, None] > 6)].std() < 1e-6

    # Resampled to the model's GSD and back: the output is masked the same way.
    predict_raster(src, tmp_path / "gsd.tif", Oracle(gsd_m=2.0), tile=TILE, resample_to_gsd=True)
    assert np.array_equal(read(tmp_path / "gsd.tif") == NODATA, large)


def test_transparent_holes_stay_nodata(tmp_path):
    """An alpha band is the producer's explicit "no data here": its small holes are not filled."""
    truth = terrain_m(160, 200)
    rgb, small, large = saturated_rgb(truth)
    alpha = np.where(small | large, 0, 255).astype(np.uint8)[None]
    src = write(tmp_path / "rgba.tif", np.concatenate([rgb, alpha]), photometric="RGB", alpha="YES")
    stats = predict_raster(src, tmp_path / "out.tif", Oracle(), tile=TILE, overlap=OVERLAP)
    assert np.array_equal(read(tmp_path / "out.tif") == NODATA, small | large)
    assert stats["nodata_holes_used"] == 0 and not stats["warnings"]


def test_a_hole_is_judged_the_same_from_every_window(tmp_path):
    """image_mask on any window equals the whole raster's judgement cut to that window (tiles agree on holes)."""
    from scipy import ndimage

    from d3rsmde.raster.masks import SMALL_HOLE_PIXELS, image_mask

    rng = np.random.default_rng(3)
    holes = ndimage.binary_dilation(rng.random((300, 340)) < 0.002, iterations=int(rng.integers(1, 6)))
    holes |= ndimage.binary_dilation(rng.random((300, 340)) < 0.0005, iterations=6)  # some larger than 64 px
    data = np.where(holes, 0, 100).astype(np.uint8)
    src = write(tmp_path / "holes.tif", data, nodata=0)
    labels, _ = ndimage.label(holes, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel())
    edge = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    closable = (sizes <= SMALL_HOLE_PIXELS) & ~np.isin(np.arange(len(sizes)), edge)
    closable[0] = False
    expected = closable[labels]
    assert expected.any() and (holes & ~expected).any()
    with rasterio.open(src) as ds:
        for row0, col0, h, w in [(0, 0, 64, 64), (37, 101, 64, 64), (250, 290, 50, 50), (120, 0, 8, 340)]:
            valid, closed = image_mask(ds, [1], Window(col0, row0, w, h), close_holes=True)
            cut = np.s_[row0:row0 + h, col0:col0 + w]
            assert np.array_equal(closed, expected[cut]) and np.array_equal(valid, ~holes[cut] | expected[cut])


@pytest.mark.parametrize(
    "data,bands,used",
    [
        (np.random.default_rng(0).integers(0, 255, (3, 70, 90)).astype(np.uint8), None, [1, 2, 3]),
        (np.random.default_rng(1).normal(0, 1000, (70, 90)).astype(np.int16), None, [1, 1, 1]),
        (np.random.default_rng(2).random((70, 90)).astype(np.float32), None, [1, 1, 1]),
        (np.random.default_rng(3).integers(0, 4000, (6, 70, 90)).astype(np.uint16), [4, 3, 2], [4, 3, 2]),
        (np.random.default_rng(4).integers(0, 4000, (2, 70, 90)).astype(np.uint16), [2], [2, 2, 2]),
    ],
    ids=["uint8-rgb", "int16-1band", "float32-1band", "uint16-6band-chosen", "uint16-2band-one-chosen"],
)
def test_band_counts_and_dtypes(tmp_path, data, bands, used):
    src = write(tmp_path / "in.tif", data)
    stats = predict_raster(src, tmp_path / "out.tif", Oracle(), tile=TILE, bands=bands)
    out = read(tmp_path / "out.tif")
    assert stats["bands"] == used
    assert out.shape == (70, 90) and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


class Recorder(Oracle):
    """The oracle, keeping the image batches it was given."""

    def __init__(self, **preprocessing):
        super().__init__()
        self.config = dataclasses.replace(self.config, **preprocessing)
        self.seen = []

    def __call__(self, images, refine_steps=None):
        self.seen.append(images.clone())
        return super().__call__(images, refine_steps)


def test_the_weights_preprocessing_config_is_applied(tmp_path):
    """Band order and stretch percentiles come from the model's config (as timm applies its data config)."""
    rgb = np.random.default_rng(5).integers(0, 256, (3, 64, 64)).astype(np.uint8)
    src = write(tmp_path / "in.tif", rgb, photometric="RGB")

    def first_channel(**preprocessing):
        pipe = Recorder(**preprocessing)
        predict_raster(src, tmp_path / "out.tif", pipe, tile=TILE, overlap=0)
        return pipe.seen[0][0, 0, :64, :64].numpy()

    def corr(a, b):
        return np.corrcoef(a.ravel(), b.ravel().astype(float))[0, 1]

    default, reversed_ = first_channel(), first_channel(band_order=("blue", "green", "red"))
    assert corr(default, rgb[0]) > 0.99 and corr(reversed_, rgb[2]) > 0.99 and abs(corr(reversed_, rgb[0])) < 0.1
    wide = first_channel(stretch_percentiles=(10.0, 90.0))
    assert 0.07 < (wide == 1.0).mean() < 0.13 and (default == 1.0).mean() < 0.03  # clipped above the 90th


def test_float_nan_pixels_are_nodata(tmp_path):
    data = np.random.default_rng(0).random((80, 80)).astype(np.float32)
    data[:10] = np.nan
    src = write(tmp_path / "in.tif", data, nodata=np.nan)
    predict_raster(src, tmp_path / "out.tif", Oracle(), tile=TILE)
    out = read(tmp_path / "out.tif")
    assert (out[:10] == NODATA).all() and (out[10:] != NODATA).all()


def test_raster_smaller_than_a_tile(tmp_path, tiny):
    src = write(tmp_path / "in.tif", (render(terrain_m(40, 23)) * 255).astype(np.uint8))
    stats = predict_raster(src, tmp_path / "out.tif", tiny, refine_steps=0)
    out = read(tmp_path / "out.tif")
    assert stats["tiles"] == 1 and out.shape == (40, 23) and np.isfinite(out).all()


def test_resampling_to_the_model_gsd_and_back(tmp_path):
    truth = terrain_m(200, 240)
    src = write(tmp_path / "in.tif", height_image(truth))  # 1 m pixels
    model = Oracle(gsd_m=2.0)
    stats = predict_raster(src, tmp_path / "out.tif", model, tile=TILE, resample_to_gsd=True)
    assert stats["gsd_factor"] == pytest.approx(0.5)
    overlap = round(TILE * OVERLAP_FRACTION)  # the default
    assert stats["tiles"] == len(TileGrid(100, 120, TILE, overlap, overlap // 4))  # the model saw a 2 m grid
    with rasterio.open(src) as a, rasterio.open(tmp_path / "out.tif") as b:
        assert (b.crs, b.transform, b.width, b.height) == (a.crs, a.transform, a.width, a.height)
        out = b.read(1)
    inner = (slice(4, -4), slice(4, -4))
    coef = np.polyfit(truth[inner].ravel(), out[inner].ravel(), 1)
    assert np.abs(out[inner] - np.polyval(coef, truth[inner])).mean() < 0.01
    with pytest.raises(InputError, match="ground resolution"):
        predict_raster(src, tmp_path / "out2.tif", Oracle(), tile=TILE, resample_to_gsd=True)
    # With a reference DEM (8 m): its large scales are kept on the model's grid, then resampled back.
    ref = write(tmp_path / "ref.tif", truth.reshape(25, 8, 30, 8).mean(axis=(1, 3)).astype(np.float32),
                transform=from_origin(500_000, 4_650_000, 8.0, 8.0))
    predict_raster(src, tmp_path / "metres.tif", WrongLows(gsd_m=2.0), tile=TILE, resample_to_gsd=True,
                   reference_dem=ref)
    with rasterio.open(tmp_path / "metres.tif") as b:
        assert (b.transform, b.width, b.height, b.tags()["units"]) == (METRE_PIXELS, 240, 200, "m")
        metres = b.read(1)
    print(f"resampled, with a reference: MAE {np.abs(metres[inner] - truth[inner]).mean():.3f} m")
    assert np.abs(metres[inner] - truth[inner]).mean() < 1.5  # m; per-tile fits alone kept the tilts: 31.5 m above


def test_an_extent_limits_the_run_to_its_pixels(tmp_path):
    """``bounds`` in the raster's CRS: the output is the input's grid within them, the image stretched over them."""
    truth = terrain_m(160, 200)
    src = write(tmp_path / "in.tif", height_image(truth))  # 1 m pixels from (500000, 4650000)
    bounds = (500_040, 4_649_870, 500_150, 4_649_970)  # columns 40-149, rows 30-129
    stats = predict_raster(src, tmp_path / "part.tif", Oracle(), tile=TILE, bounds=bounds)
    with rasterio.open(tmp_path / "part.tif") as out:
        assert (out.crs, out.width, out.height) == (UTM, 110, 100)
        assert out.transform == from_origin(500_040, 4_649_970, 1.0, 1.0)
        part = out.read(1)
    assert np.corrcoef(part.ravel(), truth[30:130, 40:150].ravel())[0, 1] > 0.99
    assert part.min() == 0.0 and part.max() == 1.0  # relative over the extent, not over the whole raster
    assert stats["extent"] == list(bounds) and stats["megapixels"] == pytest.approx(110 * 100 / 1e6)
    assert stats["warnings"] == []

    # Reaching beyond the raster: the overlap, and a note. At the model's GSD: resampled back onto the extent.
    stats = predict_raster(src, tmp_path / "edge.tif", Oracle(), tile=TILE,
                           bounds=(500_100, 4_649_700, 500_400, 4_649_900))
    assert read(tmp_path / "edge.tif").shape == (60, 100) and "beyond" in stats["warnings"][0]
    predict_raster(src, tmp_path / "gsd.tif", Oracle(gsd_m=2.0), tile=TILE, resample_to_gsd=True, bounds=bounds)
    with rasterio.open(tmp_path / "gsd.tif") as out:
        assert (out.width, out.height, out.transform) == (110, 100, from_origin(500_040, 4_649_970, 1.0, 1.0))
        assert np.corrcoef(out.read(1).ravel(), truth[30:130, 40:150].ravel())[0, 1] > 0.99

    for wrong, message in [((0, 0, 10, 10), "does not overlap"), ((500_150, 4_649_870, 500_040, 4_649_970), "empty")]:
        with pytest.raises(InputError, match=message):
            predict_raster(src, tmp_path / "bad.tif", Oracle(), tile=TILE, bounds=wrong)
    plain = write(tmp_path / "plain.tif", height_image(truth), crs=None)  # coordinates, but in no known CRS
    with pytest.raises(InputError, match="no CRS"):
        predict_raster(plain, tmp_path / "bad.tif", Oracle(), tile=TILE, bounds=bounds)
    assert not (tmp_path / "bad.tif").exists()


def test_a_virtual_mosaic_of_tiles_gives_the_map_of_the_whole(tmp_path):
    """The advice for adjacent tiles (README, Estimate depth for folder): a VRT of them is one raster, and its map
    is the one of the file they were cut from, bit for bit."""
    gdal = pytest.importorskip("osgeo.gdal")
    truth = terrain_m(160, 200)
    whole = write(tmp_path / "whole.tif", height_image(truth))
    parts = []
    for name, window in (("west", Window(0, 0, 90, 160)), ("east", Window(90, 0, 110, 160))):
        with rasterio.open(whole) as src:
            parts.append(write(tmp_path / f"{name}.tif", src.read(window=window),
                               transform=src.window_transform(window)))
    mosaic = tmp_path / "mosaic.vrt"
    gdal.BuildVRT(str(mosaic), [str(p) for p in parts]).FlushCache()
    predict_raster(whole, tmp_path / "whole-h.tif", Oracle(), tile=TILE)
    predict_raster(mosaic, tmp_path / "mosaic-h.tif", Oracle(), tile=TILE)
    with rasterio.open(tmp_path / "whole-h.tif") as a, rasterio.open(tmp_path / "mosaic-h.tif") as b:
        assert (a.transform, a.shape) == (b.transform, b.shape)
        assert np.array_equal(a.read(1), b.read(1))


def test_bad_inputs_are_input_errors(tmp_path):
    good = write(tmp_path / "good.tif", np.arange(3 * 40 * 40).reshape(3, 40, 40).astype(np.uint8))
    two = write(tmp_path / "two.tif", np.zeros((2, 40, 40), np.uint8))
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "text.tif").write_text("this is not a raster\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (two, tmp_path / "o.tif", {"bands": "3"}, r"has 2 band\(s\)"),
        (tmp_path / "empty.tif", tmp_path / "o.tif", {}, "empty"),
        (tmp_path / "text.tif", tmp_path / "o.tif", {}, "not a raster"),
        (tmp_path / "missing.tif", tmp_path / "o.tif", {}, "does not exist"),
        (good, good, {}, "is the input"),
        (good, a_file / "o.tif", {}, "folder .* does not exist"),
        (good, tmp_path / "o.tif", {"tile": 50}, "multiple of 16"),
        (good, tmp_path / "o.tif", {"bands": [1, 9, 2]}, r"\[9\]"),
    ]
    for src, dst, kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            predict_raster(src, dst, Oracle(), **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "empty.tif", "good.tif", "text.tif", "two.tif"]


def test_unwritable_destination_is_an_input_error(tmp_path):
    src = write(tmp_path / "in.tif", np.arange(3 * 40 * 40).reshape(3, 40, 40).astype(np.uint8))
    if os.geteuid() == 0:  # root writes anywhere a permission bit allows nothing: use a filesystem that refuses
        dst = "/proc/d3rsmde-out.tif"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        dst = locked / "out.tif"
    with pytest.raises(InputError, match="cannot write to the output folder|is not writable"):
        predict_raster(src, dst, Oracle())


def test_evaluate_rasters(tmp_path):
    truth = terrain_m(130, 150).astype(np.float32)
    ref = write(tmp_path / "ref.tif", truth)
    pred = write_height(tmp_path / "pred.tif", truth + 3.0, tile_size=64, units="m")
    result = evaluate_rasters(pred, ref)
    assert result["tile"] == 64 and result["tiles"] == 9
    whole = result["whole"]
    assert whole["mae"] == pytest.approx(3.0, abs=1e-3) and whole["bias"] == pytest.approx(3.0, abs=1e-3)
    assert whole["rmse_after_affine"] < 1e-2 and whole["units"] == "m" and whole["pixels"] == 130 * 150
    assert result["per_tile"]["mae"] < 0.05 and result["per_tile"]["ssim"] > 0.99  # a shift is no error per tile

    # A mask raster on another grid (2 m pixels) keeps only its nonzero part; a wrong prediction scores worse.
    mask = np.zeros((65, 75), np.uint8)
    mask[:, :30] = 1
    mask_path = write(tmp_path / "mask.tif", mask, transform=from_origin(500_000, 4_650_000, 2.0, 2.0))
    bad = write(tmp_path / "bad.tif", truth[:, ::-1].copy())
    masked = evaluate_rasters(bad, ref, mask=mask_path, tile=32)
    assert masked["whole"]["pixels"] == 130 * 60 and masked["tile"] == 32
    assert masked["per_tile"]["mae"] > 10 * result["per_tile"]["mae"] + 1
