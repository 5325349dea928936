"""The DEM renderer: deterministic and physically sane, and the tiles it writes train like real ones."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from d3rsmde.errors import InputError
from d3rsmde.render import (CLASSES, Sun, albedo_image, cast_shadows, hillshade, land_cover, relief_exaggeration,
                            render_dem)


def ridge(size: int = 64, height: float = 400.0) -> np.ndarray:
    """A north-south ridge: the east flank faces east, the west flank west."""
    x = np.linspace(-1, 1, size)
    return np.tile(height * np.clip(1 - np.abs(x), 0, None), (size, 1))


def test_same_seed_same_image_other_seed_other_image():
    dem = ridge()
    a, info = render_dem(dem, 30.0, seed=3)
    b, _ = render_dem(dem, 30.0, seed=3)
    c, _ = render_dem(dem, 30.0, seed=4)
    assert a.dtype == np.uint8 and a.shape == (3, 64, 64)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0 < info["sun_elevation"] < 90


def test_slope_facing_the_sun_is_brighter():
    dem = ridge()
    east_sun = Sun(azimuth=90.0, elevation=35.0)
    shade = hillshade(dem, 30.0, east_sun)
    assert shade[:, 40:60].mean() > shade[:, 4:24].mean() + 0.2
    image, _ = render_dem(dem, 30.0, seed=0, sun=east_sun, clouds=False)
    luminance = image.astype(float).mean(axis=0)
    assert luminance[:, 40:60].mean() > luminance[:, 4:24].mean()
    west, _ = render_dem(dem, 30.0, seed=0, sun=Sun(azimuth=270.0, elevation=35.0), clouds=False)
    assert west.astype(float).mean(axis=0)[:, 4:24].mean() > west.astype(float).mean(axis=0)[:, 40:60].mean()


def test_cast_shadows_fall_away_from_the_sun():
    dem = np.zeros((64, 64))
    dem[:, 40:44] = 50.0  # a wall running north-south
    shadow = cast_shadows(dem, 10.0, Sun(azimuth=90.0, elevation=20.0))  # sun in the east: 14 px shadow
    assert shadow[5:-5, 30:40].all() and not shadow[:, 44:].any() and not shadow[:, :20].any()
    low_sun = cast_shadows(dem, 10.0, Sun(azimuth=90.0, elevation=10.0))
    assert low_sun.sum() > shadow.sum()  # a lower sun casts longer shadows


def test_land_cover_respects_its_classes():
    rng = np.random.default_rng(0)
    y = np.linspace(0, 1, 96)[:, None] * np.ones((1, 96))
    dem = 4000.0 * (1 - y)  # a gentle ramp from sea level (south) to high mountains (north), facing the sun
    cls = land_cover(dem, 1000.0, rng, Sun(135.0, 45.0), water_level=100.0)
    assert (cls[dem <= 100.0] == CLASSES.index("water")).all()
    top = cls[:5]
    assert not np.isin(top, [CLASSES.index(c) for c in ("water", "fields")]).any()
    image, _ = render_dem(dem, 1000.0, seed=1, water_level=100.0, clouds=False)
    lum = image.astype(float).mean(axis=0)
    assert lum[dem <= 100.0].mean() < lum[dem > 500.0].mean()  # water is darker than land


def test_dry_scenes_have_bright_ground_below_their_forest():
    """A semi-arid scene: steppe (as bright as rock) only on the low ground, forest above it; a wet scene has none."""
    y = np.linspace(0, 1, 128)[:, None] * np.ones((1, 128))
    dem = 3000.0 * (1 - y) + 40.0 * np.sin(np.arange(128) / 3.0)[None]  # a ramp up to the north, with ribs
    wet = land_cover(dem, 200.0, np.random.default_rng(0), Sun(135.0, 45.0))  # the default
    assert not (wet == CLASSES.index("steppe")).any()
    for seed in range(4):
        cls = land_cover(dem, 200.0, np.random.default_rng(seed), Sun(135.0, 45.0), dry=True)
        steppe, forest = cls == CLASSES.index("steppe"), cls == CLASSES.index("forest")
        assert steppe.mean() > 0.05
        assert np.median(dem[steppe]) < np.median(dem[forest | (cls == CLASSES.index("rock"))])
    albedo = albedo_image(cls, np.random.default_rng(0)).mean(axis=0)
    assert albedo[steppe].mean() > 1.5 * albedo[forest].mean()  # bright low ground: brightness is not height
    assert render_dem(dem, 200.0, seed=2, dry_share=1.0)[1]["dry"] is True
    assert not any(render_dem(dem, 200.0, seed=s)[1]["dry"] for s in range(8))  # the default share is 0


def test_settled_lowlands_have_towns_on_the_flats_and_forest_on_the_hills():
    """A settled scene: towns (brighter than forest) only on the low flats, forest on the hills above them; the
    default renders have no towns and are the same as before the option existed (no extra draw)."""
    y, x = np.mgrid[0:128, 0:128] / 128
    dem = np.where(y < 0.5, 600.0 * np.sin(np.pi * y) ** 2 * (1 + 0.3 * np.sin(20 * x)), 0.0)  # hills, then a plain
    dem += 0.5 * np.sin(7 * x)  # the plain is not perfectly flat
    assert not (land_cover(dem, 30.0, np.random.default_rng(0), Sun(135.0, 45.0)) == CLASSES.index("urban")).any()
    for seed in range(4):
        cls = land_cover(dem, 30.0, np.random.default_rng(seed), Sun(135.0, 45.0), settled=True)
        urban, forest = cls == CLASSES.index("urban"), cls == CLASSES.index("forest")
        assert urban.mean() > 0.02 and (dem[urban] < 0.5 * dem.max()).all()
        assert forest[:64].mean() > 0.5 and np.median(dem[forest]) > 200.0
    albedo = albedo_image(cls, np.random.default_rng(0)).mean(axis=0)
    assert albedo[urban].mean() > 1.5 * albedo[forest].mean()  # bright low ground: brightness is not height
    assert render_dem(dem, 30.0, seed=2, settled_share=1.0)[1]["settled"] is True
    assert not any(render_dem(dem, 30.0, seed=s)[1]["settled"] for s in range(8))  # the default share is 0
    assert np.array_equal(render_dem(dem, 30.0, seed=5)[0], render_dem(dem, 30.0, seed=5, settled_share=0.0)[0])


@pytest.mark.parametrize("dem, gsd", [(np.zeros((2, 2)), 1.0), (np.full((8, 8), np.nan), 1.0),
                                      (np.zeros((8, 8)), 0.0)])
def test_bad_input_is_refused(dem, gsd):
    with pytest.raises(InputError):
        render_dem(dem, gsd, seed=0)


def test_render_dataset_trains_like_real_tiles(tmp_path, monkeypatch):
    """`d3rsmde data render` on a stand-in DEM: tiles in the TileDataset format, stretched as inference does."""
    from d3rsmde import dems
    from d3rsmde.datasets import TileDataset
    from d3rsmde.render_tiles import build_render_dataset

    y, x = np.mgrid[0:96, 0:96] / 96
    hills = dems.DEM("hills", (800 * np.sin(5 * x) * np.cos(3 * y) + 1000).astype(np.float32), 30.0, "a test")
    monkeypatch.setitem(dems.READERS, "hills", lambda cache, progress: hills)
    result = build_render_dataset(tmp_path / "r", dems=["hills"], tile_size=32, scales=[1, 2], tiles_per_dem=6,
                                  min_views=6, workers=1)
    assert sum(result["counts"].values()) == 12
    item = TileDataset(tmp_path / "r", "train")[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].all()
    assert item["image"].min() == 0 and item["image"].max() == 1  # the 1-99 % stretch reaches both ends
    assert item["depth"].min() >= 200 and item["depth"].max() <= 1800  # heights untouched, metres
    dry = build_render_dataset(tmp_path / "dry", dems=["hills"], tile_size=32, scales=[1], tiles_per_dem=6,
                               min_views=6, workers=1, dry_share=1.0)
    index = json.loads(Path(dry["index_path"]).read_text())
    assert index["render"]["dry_share"] == 1.0 and all(t["dry"] for t in index["tiles"])
    with pytest.raises(InputError, match="dry_share"):
        build_render_dataset(tmp_path / "bad", dems=["hills"], tile_size=32, dry_share=1.5)
    with pytest.raises(InputError, match="settled_share"):
        build_render_dataset(tmp_path / "bad", dems=["hills"], tile_size=32, settled_share=-0.1)


def test_render_sets_of_two_tile_sizes_hold_out_the_same_terrain(tmp_path, monkeypatch):
    """With ``split_block`` a set of larger tiles keeps the held-out blocks of a smaller-tile set: no tile of one
    set's training split lies in a block the other set holds out."""
    from d3rsmde import dems
    from d3rsmde.datasets import TileDataset
    from d3rsmde.render_tiles import build_render_dataset

    y, x = np.mgrid[0:512, 0:512] / 512
    hills = dems.DEM("hills", (800 * np.sin(9 * x) * np.cos(7 * y) + 1000).astype(np.float32), 30.0, "a test")
    monkeypatch.setitem(dems.READERS, "hills", lambda cache, progress: hills)
    blocks = {}
    for tile in (16, 32):
        build_render_dataset(tmp_path / f"t{tile}", dems=["hills"], tile_size=tile, scales=[1], tiles_per_dem=200,
                             split_block=64, val_fraction=0.3, test_fraction=0.3, workers=1)
        index = TileDataset(tmp_path / f"t{tile}", "train").index
        assert index["render"]["split_block"] == 64
        for t in index["tiles"]:
            r, c = (int(part[1:]) for part in t["file"].split("_")[2:4])
            assert (r // 64 == (r + tile - 1) // 64) and (c // 64 == (c + tile - 1) // 64)  # inside one block
            blocks.setdefault((r // 64, c // 64), set()).add(t["split"])
    assert len(blocks) > 8 and all(len(splits) == 1 for splits in blocks.values())
    with pytest.raises(InputError, match="cannot hold"):
        build_render_dataset(tmp_path / "bad", dems=["hills"], tile_size=32, split_block=16, workers=1)


def test_half_scale_interpolates_a_small_dem_into_tiles():
    """Scale 0.5 doubles the grid (cubic: the heights' level and range are kept), so a DEM
    smaller than the tile still gives tiles; fractional scales split with seeds no integer scale uses."""
    from d3rsmde.render_tiles import at_scale, split_seed

    y, x = np.mgrid[0:40, 0:48] / 40
    height = 800 * np.sin(5 * x) * np.cos(3 * y) + 1000
    finer = at_scale(height, 0.5)
    assert finer.shape == (80, 96)
    assert abs(finer.mean() - height.mean()) < 5
    assert abs(finer.max() - height.max()) < 20 and abs(finer.min() - height.min()) < 20
    assert at_scale(height, 2).shape == (20, 24)
    assert len({split_seed(0, f) for f in (0.5, 0.25, 1, 2, 4)} | {split_seed(1, 1)}) == 6
    with pytest.raises(InputError, match="1/n"):
        at_scale(height, 0.4)


def test_relief_exaggeration_gives_every_scale_visible_slopes():
    """A 1 km grid of mountains has gentle slopes; its render must show them as a finer image would (8-25 degrees
    median), while terrain already steep is never flattened and a flat plain is not made alpine."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:64, 0:64]
    hills = 300.0 * np.sin(x / 6.0) * np.cos(y / 9.0)
    for gsd in (300.0, 1000.0):
        k = relief_exaggeration(hills, gsd, rng)
        dz_dr, dz_dc = np.gradient(hills * k, gsd)
        median_deg = np.degrees(np.arctan(np.median(np.hypot(dz_dr, dz_dc))))
        assert 7.9 <= median_deg <= 25.1
    assert relief_exaggeration(hills, 10.0, rng) == 1.0  # already steeper than 25 degrees
    assert relief_exaggeration(0.01 * hills, 1000.0, rng) == 10.0  # nearly flat: capped
