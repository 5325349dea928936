"""Dataset builder: reprojection onto the image grid, tile filters, block splits, GSD, TileDataset, CLI."""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_points

from d3rsmde.cli.data import add_cli
from d3rsmde.data import BuildOptions, build_dataset
from d3rsmde.datasets import SPLITS, TileDataset
from d3rsmde.geodesy import metres_per_degree, pixel_size_m
from d3rsmde.errors import Cancelled, InputError

SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "sample"
UTM13 = CRS.from_epsg(32613)


def write_raster(path, array, crs, transform, nodata=None):
    array = array[None] if array.ndim == 2 else array
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1],
                       count=array.shape[0], dtype=array.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(array)
    return path


def hillshade_rgb(height):
    """An 8-bit image that shows the terrain, so stretch statistics are non-degenerate."""
    gy, gx = np.gradient(height.astype(np.float64))
    shade = np.clip(128 + 2 * (gx - gy), 0, 254)
    return np.stack([shade, shade * 0.9, shade * 0.8]).astype(np.uint8)


def ramp_terrain(rows, cols, relief=300.0):
    y, x = np.mgrid[0:rows, 0:cols]
    return (500 + relief * np.sin(x / 9.0) * np.cos(y / 7.0)).astype(np.float32)


def test_dem_in_another_crs_lands_on_the_image_grid(tmp_path):
    # Image: UTM 13N, 30 m pixels. DEM: geographic, ~0.0005 deg pixels, with a peak at a known UTM point.
    x0, y0, size = 450_000.0, 4_450_000.0, 128
    image_transform = from_origin(x0, y0, 30.0, 30.0)
    peak_row, peak_col = 70, 41
    peak_x, peak_y = image_transform * (peak_col + 0.5, peak_row + 0.5)

    lon, lat = warp_points(UTM13, "EPSG:4326", [x0 - 600, x0 + size * 30 + 600], [y0 + 600, y0 - size * 30 - 600])
    dem_step = 0.0005
    dem_transform = from_origin(lon[0], lat[0], dem_step, dem_step)
    dem_shape = (math.ceil((lat[0] - lat[1]) / dem_step), math.ceil((lon[1] - lon[0]) / dem_step))
    rows, cols = np.mgrid[0:dem_shape[0], 0:dem_shape[1]]
    lons, lats = dem_transform * (cols + 0.5, rows + 0.5)
    xs, ys = warp_points("EPSG:4326", UTM13, lons.ravel(), lats.ravel())
    dist2 = (np.asarray(xs) - peak_x) ** 2 + (np.asarray(ys) - peak_y) ** 2
    dem = (1000 + 800 * np.exp(-dist2 / (2 * 300.0**2))).reshape(dem_shape).astype(np.float32)
    dem[:3] = -9999  # a nodata strip outside the image footprint must not leak in
    write_raster(tmp_path / "dem.tif", dem, "EPSG:4326", dem_transform, nodata=-9999)

    img_rows, img_cols = np.mgrid[0:size, 0:size]
    truth = 1000 + 800 * np.exp(-((img_rows - peak_row) ** 2 + (img_cols - peak_col) ** 2) * 900 / (2 * 300.0**2))
    write_raster(tmp_path / "img.tif", hillshade_rgb(truth * 0.2), UTM13, image_transform)

    result = build_dataset(tmp_path / "img.tif", tmp_path / "dem.tif", tmp_path / "ds", BuildOptions(tile_size=size, val_fraction=0, test_fraction=0, min_relief_m=1))
    assert result["counts"] == {"train": 1, "val": 0, "test": 0}
    item = TileDataset(tmp_path / "ds")[0]
    depth = item["depth"][0].numpy()
    assert item["mask"].all()
    assert np.unravel_index(depth.argmax(), depth.shape) == (peak_row, peak_col)
    assert np.abs(depth - truth).max() < 25  # bilinear from ~45 m DEM pixels onto 30 m pixels
    assert depth.max() == pytest.approx(1800, abs=15)


def filter_scene(tmp_path, tile=32):
    """4 tile columns: image nodata | sea | flat | relief; plus a coastal relief tile (25 % sea)."""
    rows, cols = 2 * tile, 5 * tile
    height = ramp_terrain(rows, cols)
    height[:, tile:2 * tile] = -200.0  # sea floor
    height[:, 2 * tile:3 * tile] = 100.0  # flat plain
    height[:, 4 * tile:4 * tile + tile // 4] = -50.0  # coast: a quarter of the last column is sea
    image = hillshade_rgb(height)
    image[:, :, :tile] = 255  # the image's nodata
    transform = from_origin(500_000, 4_000_000, 10, 10)
    write_raster(tmp_path / "img.tif", image, UTM13, transform, nodata=255)
    write_raster(tmp_path / "dem.tif", height, UTM13, transform)
    return tmp_path / "img.tif", tmp_path / "dem.tif"


def test_tile_filters_drop_nodata_sea_and_flat_tiles(tmp_path):
    image, dem = filter_scene(tmp_path)
    result = build_dataset(image, dem, tmp_path / "ds", BuildOptions(tile_size=32, block_size=512, val_fraction=0, test_fraction=0, min_relief_m=10, max_sea_fraction=0.5))
    assert result["dropped"] == {"nodata": 2, "sea": 2, "flat": 2, "straddling": 0}
    tiles = TileDataset(tmp_path / "ds").tiles
    assert sorted(t["col"] for t in tiles) == [96, 96, 128, 128]
    coast = [t for t in tiles if t["col"] == 128]
    assert all(t["sea_fraction"] == pytest.approx(0.25) for t in coast)
    item = TileDataset(tmp_path / "ds")[[t["col"] for t in tiles].index(128)]
    assert item["depth"].min() == 0.0  # the sea floor under the water is clamped to the sea surface

    strict = build_dataset(image, dem, tmp_path / "ds2", BuildOptions(tile_size=32, val_fraction=0, test_fraction=0, max_sea_fraction=0.1))
    assert strict["dropped"]["sea"] == 4 and strict["counts"]["train"] == 2


@pytest.mark.parametrize("find_collar", [True, False])
def test_an_undeclared_fill_border_is_nodata_to_training_too(tmp_path, monkeypatch, find_collar):
    """The scene above with its white fill column left undeclared (no nodata value): found as a collar, it drops
    the same tiles as declared nodata, with a warning. Control: not looked for, it is cut into training tiles."""
    from d3rsmde.raster import masks

    if not find_collar:
        monkeypatch.setattr(masks, "collar_value", lambda ds, bands: None)
    image, dem = filter_scene(tmp_path)
    with rasterio.open(image) as src:
        pixels, profile = src.read(), src.profile
    profile["nodata"] = None
    with rasterio.open(tmp_path / "undeclared.tif", "w", **profile) as dst:
        dst.write(pixels)
    result = build_dataset(tmp_path / "undeclared.tif", dem, tmp_path / "ds", BuildOptions(tile_size=32, block_size=512, val_fraction=0, test_fraction=0, min_relief_m=10, max_sea_fraction=0.5))
    warned = any("a border of 255 in every band" in w for w in result["warnings"])
    assert (result["dropped"]["nodata"], warned) == ((2, True) if find_collar else (0, False))


def test_areas_left_out_are_nodata_to_training(tmp_path):
    """The scene above with its relief column left out (a polygon over it) drops those tiles as nodata, and an
    8 x 8 cloud left out of a coastal tile is masked in it: no image, no height to learn from there."""
    image, dem = filter_scene(tmp_path)
    with rasterio.open(image) as src:
        pixel = src.transform

    def box(col0, row0, col1, row1):
        ring = [pixel * corner for corner in [(col0, row0), (col1, row0), (col1, row1), (col0, row1), (col0, row0)]]
        return {"type": "Polygon", "coordinates": [ring]}

    relief, cloud = box(96.2, 0.2, 127.8, 63.8), box(148.2, 4.2, 155.8, 11.8)  # a quarter pixel inside
    options = BuildOptions(tile_size=32, block_size=512, val_fraction=0, test_fraction=0, min_relief_m=10,
                           max_sea_fraction=0.5)
    result = build_dataset(image, dem, tmp_path / "ds", options, exclude=[relief, cloud])
    assert result["dropped"] == {"nodata": 4, "sea": 2, "flat": 2, "straddling": 0}
    data = TileDataset(tmp_path / "ds")
    assert sorted(t["col"] for t in data.tiles) == [128, 128]
    top = [t["row"] for t in data.tiles].index(0)
    with np.load(tmp_path / "ds" / data.tiles[top]["file"]) as tile:
        left_out = ~tile["mask"][0]
        assert left_out.sum() == 64 and left_out[4:12, 20:28].all()
        assert (tile["image"][:, left_out] == 0).all() and (tile["depth"][0][left_out] == 0).all()


def test_split_blocks_are_spatially_disjoint(tmp_path):
    size, tile, block = 512, 32, 128
    height = ramp_terrain(size, size)
    transform = from_origin(500_000, 4_000_000, 10, 10)
    write_raster(tmp_path / "img.tif", hillshade_rgb(height), UTM13, transform)
    write_raster(tmp_path / "dem.tif", height, UTM13, transform)

    result = build_dataset(tmp_path / "img.tif", tmp_path / "dem.tif", tmp_path / "ds", BuildOptions(tile_size=tile, block_size=block, val_fraction=0.2, test_fraction=0.2, seed=3))
    counts = result["counts"]
    assert sum(counts.values()) == (size // tile) ** 2
    assert all(counts[s] > 0 for s in SPLITS)
    assert counts["train"] == pytest.approx(0.6 * 256, abs=16)  # whole blocks of 16 tiles
    split_of_block = {}
    for t in json.loads(Path(result["index_path"]).read_text())["tiles"]:
        block_id = (t["row"] // block, t["col"] // block)
        assert split_of_block.setdefault(block_id, t["split"]) == t["split"]  # a block never mixes splits
    assert len(split_of_block) == 16

    again = build_dataset(tmp_path / "img.tif", tmp_path / "dem.tif", tmp_path / "ds", BuildOptions(tile_size=tile, block_size=block, val_fraction=0.2, test_fraction=0.2, seed=3))
    assert again["counts"] == counts  # rebuilt over the old one, same seed, same split


def test_overlapping_tiles_of_different_splits_are_dropped(tmp_path):
    size = 256
    height = ramp_terrain(size, size)
    transform = from_origin(500_000, 4_000_000, 10, 10)
    write_raster(tmp_path / "img.tif", hillshade_rgb(height), UTM13, transform)
    write_raster(tmp_path / "dem.tif", height, UTM13, transform)
    result = build_dataset(tmp_path / "img.tif", tmp_path / "dem.tif", tmp_path / "ds", BuildOptions(tile_size=32, stride=16, block_size=64, val_fraction=0.25, test_fraction=0.25))
    assert result["dropped"]["straddling"] > 0
    tiles = json.loads(Path(result["index_path"]).read_text())["tiles"]
    assert len(list((tmp_path / "ds" / "tiles").iterdir())) == len(tiles)
    for a in tiles:
        for b in tiles:
            overlap = abs(a["row"] - b["row"]) < 32 and abs(a["col"] - b["col"]) < 32
            assert not overlap or a["split"] == b["split"]


def test_gsd_in_metres_for_geographic_and_projected_crs():
    per_lon, per_lat = metres_per_degree(0.0)
    assert per_lon == pytest.approx(111_319.49, rel=1e-5)
    assert per_lat == pytest.approx(110_574.28, rel=1e-5)
    per_lon, per_lat = metres_per_degree(60.0)
    assert per_lon == pytest.approx(55_799.98, rel=1e-5)
    assert per_lat == pytest.approx(111_412.24, rel=1e-5)

    geo = from_origin(10.0, 61.0, 0.001, 0.001)
    x, y = pixel_size_m(geo, CRS.from_epsg(4326), row=999.5, col=0)  # row centre at 60 N
    assert (x, y) == (pytest.approx(55.79998, rel=1e-4), pytest.approx(111.41224, rel=1e-4))
    assert pixel_size_m(from_origin(0, 0, 30, 30), UTM13, 0, 0) == (30.0, 30.0)
    feet = pixel_size_m(from_origin(0, 0, 10, 10), CRS.from_epsg(2236), 0, 0)  # US survey feet
    assert feet[0] == pytest.approx(3.048006, rel=1e-6)


def test_geographic_sample_records_tile_gsd_and_metadata(tmp_path):
    result = build_dataset(SAMPLE / "rmnp-rgb.tif", SAMPLE / "rmnp-dem.tif", tmp_path / "ds", BuildOptions(tile_size=64, block_size=128))
    index = json.loads(Path(result["index_path"]).read_text())
    assert CRS.from_wkt(index["crs"]) == CRS.from_epsg(4326)
    assert index["tile_size"] == 64 and index["image_dtype"] == "uint8"
    for t in index["tiles"]:
        lat = (t["bounds"][1] + t["bounds"][3]) / 2
        per_lon, per_lat = metres_per_degree(lat)
        assert t["gsd_m"] == pytest.approx(math.sqrt(0.0015 * per_lon * 0.0015 * per_lat), rel=1e-3)
        assert 125 < t["gsd_m"] < 150  # ~0.0015 deg at 40 N
    assert not (tmp_path / "ds" / ".tmp").exists()


def test_chosen_bands_reach_the_tiles_and_blind_guesses_are_warned_about(tmp_path):
    """A blue-first 6-band stack: bands 3,2,1 give the very tiles of the RGB image; left automatic, bands 1-3 are
    taken (blue as red) and the result says so, as predict_raster does."""
    from conftest import blue_first_stack

    stack = blue_first_stack(SAMPLE / "rmnp-rgb.tif", tmp_path / "stack.tif")
    options = BuildOptions(tile_size=64, block_size=128)
    rgb = build_dataset(SAMPLE / "rmnp-rgb.tif", SAMPLE / "rmnp-dem.tif", tmp_path / "rgb", options)
    chosen = build_dataset(stack, SAMPLE / "rmnp-dem.tif", tmp_path / "chosen", options, bands=[3, 2, 1])
    guessed = build_dataset(stack, SAMPLE / "rmnp-dem.tif", tmp_path / "guessed", options)
    assert rgb["warnings"] == chosen["warnings"] == [] and rgb["bands"] == [1, 2, 3]
    assert chosen["bands"] == json.loads(Path(chosen["index_path"]).read_text())["bands"] == [3, 2, 1]
    assert guessed["bands"] == [1, 2, 3] and "3,2,1 for Landsat 4-7" in guessed["warnings"][0]
    for name in sorted(p.name for p in (tmp_path / "rgb" / "tiles").iterdir()):
        a, b, c = (np.load(tmp_path / ds / "tiles" / name)["image"] for ds in ("rgb", "chosen", "guessed"))
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a[::-1], c)  # blue read as red


def test_tile_dataset_items_follow_the_training_protocol(tmp_path):
    result = build_dataset(SAMPLE / "rmnp-rgb.tif", SAMPLE / "rmnp-dem.tif", tmp_path / "ds", BuildOptions(tile_size=64, block_size=128))
    ds = TileDataset(tmp_path / "ds", "train")
    assert len(ds) == result["counts"]["train"] > 0
    item = ds[0]
    assert set(item) == {"image", "depth", "mask"}
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["depth"].shape == (1, 64, 64) and item["depth"].dtype == torch.float32
    assert item["mask"].shape == (1, 64, 64) and item["mask"].dtype == torch.bool
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["image"].std() > 0.05
    heights = item["depth"][item["mask"]]
    assert 2281 <= heights.min() and heights.max() <= 4261  # the DEM's own range, in metres
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 64, 64)
    with pytest.raises(InputError, match="split"):
        TileDataset(tmp_path / "ds", "holdout")
    with pytest.raises(InputError, match="index.json"):
        TileDataset(tmp_path / "nothing")


def test_bad_inputs_and_cancel_leave_nothing_behind(tmp_path):
    height = ramp_terrain(48, 48)
    transform = from_origin(500_000, 4_000_000, 10, 10)
    write_raster(tmp_path / "two.tif", hillshade_rgb(height)[:2], UTM13, transform)
    write_raster(tmp_path / "img.tif", hillshade_rgb(height), UTM13, transform)
    write_raster(tmp_path / "dem.tif", height, UTM13, transform)
    with rasterio.open(tmp_path / "nocrs.tif", "w", driver="GTiff", width=48, height=48, count=1,
                       dtype="float32") as dst:
        dst.write(height[None])
    with pytest.raises(InputError, match=r"has 2 band\(s\)"):
        build_dataset(tmp_path / "two.tif", tmp_path / "dem.tif", tmp_path / "ds", BuildOptions(tile_size=16), bands=(3, 2, 1))
    with pytest.raises(InputError, match="smaller than one 64 px tile"):
        build_dataset(tmp_path / "img.tif", tmp_path / "dem.tif", tmp_path / "ds", BuildOptions(tile_size=64))
    with pytest.raises(InputError, match="no CRS"):
        build_dataset(tmp_path / "img.tif", tmp_path / "nocrs.tif", tmp_path / "ds", BuildOptions(tile_size=16))
    with pytest.raises(InputError, match="does not overlap"):
        build_dataset(tmp_path / "img.tif", tmp_path / "dem.tif", tmp_path / "ds", BuildOptions(tile_size=16), extent=(0, 0, 10, 10))
    calls = []
    with pytest.raises(Cancelled):
        build_dataset(tmp_path / "img.tif", tmp_path / "dem.tif", tmp_path / "ds", BuildOptions(tile_size=16), cancel=lambda: calls.append(1) or len(calls) > 2)
    assert list((tmp_path / "ds").iterdir()) == []


def test_a_second_build_into_a_folder_being_built_is_refused_and_spares_the_first(tmp_path):
    """Two builds into one folder at once: the second used to delete the first one's scratch tiles (which then
    failed with FileNotFoundError, seen with `d3rsmde data render`); now the second stops at once."""
    from d3rsmde.datasets import staged_tiles

    height = ramp_terrain(48, 48)
    transform = from_origin(500_000, 4_000_000, 10, 10)
    image = write_raster(tmp_path / "img.tif", hillshade_rgb(height), UTM13, transform)
    dem = write_raster(tmp_path / "dem.tif", height, UTM13, transform)
    with staged_tiles(tmp_path / "ds") as tmp:
        (tmp / "tiles" / "first.npz").write_bytes(b"a tile of the first build")
        with pytest.raises(InputError, match="another dataset build is writing into"):
            build_dataset(image, dem, tmp_path / "ds", BuildOptions(tile_size=16))
        assert (tmp / "tiles" / "first.npz").is_file()
    build_dataset(image, dem, tmp_path / "ds", BuildOptions(tile_size=16))  # once it has ended, a build runs
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["index.json", "tiles"]  # no lock left behind


def test_extent_and_cli_build(tmp_path):
    height = ramp_terrain(96, 96)
    transform = from_origin(500_000, 4_000_000, 10, 10)
    write_raster(tmp_path / "img.tif", hillshade_rgb(height), UTM13, transform)
    write_raster(tmp_path / "dem.tif", height, UTM13, transform)
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["data", "build", str(tmp_path / "img.tif"), str(tmp_path / "dem.tif"),
                              str(tmp_path / "ds"), "--tile", "16", "--val", "0", "--test", "0",
                              "--extent", "500000,3999520,500320,4000000"])
    assert args.func(args) == 0
    tiles = TileDataset(tmp_path / "ds").tiles
    assert len(tiles) == 2 * 3  # 320 m x 480 m = 32 x 48 px of 10 m
    assert {(t["row"], t["col"]) for t in tiles} == {(r, c) for r in (0, 16, 32) for c in (0, 16)}
