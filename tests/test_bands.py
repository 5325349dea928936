"""Band lists and default RGB bands (d3rsmde.bands), shared by the CLI, the QGIS plugin and dataset building."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from d3rsmde.bands import default_bands, guessed_bands_warning, parse_bands, select_bands
from d3rsmde.errors import InputError

SENTINEL2_L1C = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]


@pytest.mark.parametrize("value, expected", [
    ("4,3,2", [4, 3, 2]), ("4;3;2", [4, 3, 2]), (" 4, 3 ;2 ", [4, 3, 2]), ("4 3 2", [4, 3, 2]), ("1", [1]),
    (4, [4]), ([4, 3, 2], [4, 3, 2]), ((1,), [1]), (None, None), ("", None), ([], None), (" ; ", None),
])
def test_parse_bands_accepts_commas_semicolons_and_lists(value, expected):
    assert parse_bands(value) == expected


@pytest.mark.parametrize("value", ["4,x,2", "4.5", "red"])
def test_parse_bands_refuses_what_is_not_a_band_number(value):
    with pytest.raises(InputError, match="separated by commas or semicolons"):
        parse_bands(value)


@pytest.mark.parametrize("count, colors, descriptions, expected", [
    (1, ["gray"], [None], [1]),
    (2, ["gray", "alpha"], [None, None], [1]),
    (2, ["gray", "undefined"], ["VV", "VH"], [1]),
    (3, ["gray", "undefined", "undefined"], [None] * 3, [1, 2, 3]),
    (4, ["red", "green", "blue", "alpha"], [None] * 4, [1, 2, 3]),
    (3, ["blue", "green", "red"], [None] * 3, [3, 2, 1]),
    (4, ["gray"] + ["undefined"] * 3, ["NIR", "Red", "Green", "Blue"], [2, 3, 4]),
    (5, ["gray"] + ["undefined"] * 4, ["Blue", "Green", "Red", "Red edge", "Near infrared"], [3, 2, 1]),
    (13, ["gray"] + ["undefined"] * 12, SENTINEL2_L1C, [4, 3, 2]),
    (12, ["gray"] + ["undefined"] * 11, [n for n in SENTINEL2_L1C if n != "B10"], [4, 3, 2]),
    (13, ["gray"] + ["undefined"] * 12, [f"B{n[1:]:0>2}, central wavelength" for n in SENTINEL2_L1C], [4, 3, 2]),
    (7, ["gray"] + ["undefined"] * 6, [f"SR_B{i}" for i in range(1, 8)], [1, 2, 3]),  # Landsat 5/7 or 8: unsure
    (8, ["gray"] + ["undefined"] * 7, [f"SR_B{i}" for i in range(1, 8)] + ["ST_B10"], [4, 3, 2]),  # Landsat 8/9
    (13, ["gray"] + ["undefined"] * 12, [None] * 13, [1, 2, 3]),
    (4, ["gray"] + ["undefined"] * 3, ["B2", "B3", "B4", "B8"], [3, 2, 1]),  # Sentinel-2's 10 m bands
    (4, ["gray"] + ["undefined"] * 3, ["B08", "B04", "B03", "B02"], [2, 3, 4]),
    (4, ["gray"] + ["undefined"] * 3, ["B1", "B2", "B3", "B4"], [1, 2, 3]),  # Landsat 4-7 or 8: unsure
])
def test_default_bands_from_what_the_raster_says(count, colors, descriptions, expected):
    assert default_bands(count, colors, descriptions) == expected


def write_raster(path, count, descriptions=None, colorinterp=None):
    data = np.random.default_rng(0).integers(0, 255, (count, 8, 8), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=count, dtype="uint8",
                       crs="EPSG:32613", transform=from_origin(0, 80, 10, 10)) as out:
        out.write(data)
        for index, text in enumerate(descriptions or [], start=1):
            out.set_band_description(index, text)
        if colorinterp:
            out.colorinterp = colorinterp
    return path


def test_select_bands_reads_descriptions_and_colour_interpretation_from_the_file(tmp_path):
    cases = [
        (write_raster(tmp_path / "pan.tif", 1), [1, 1, 1]),
        (write_raster(tmp_path / "two.tif", 2), [1, 1, 1]),
        (write_raster(tmp_path / "s2.tif", 13, SENTINEL2_L1C), [4, 3, 2]),
        (write_raster(tmp_path / "bgr.tif", 3, colorinterp=[ColorInterp.blue, ColorInterp.green, ColorInterp.red]),
         [3, 2, 1]),
    ]
    for path, expected in cases:
        with rasterio.open(path) as src:
            assert select_bands(src) == expected, path.name
    with rasterio.open(tmp_path / "s2.tif") as src:
        assert select_bands(src, "2;3;4") == select_bands(src, "2,3,4") == [2, 3, 4]
        assert select_bands(src, [8]) == [8, 8, 8]
        with pytest.raises(InputError, match=r"band\(s\) \[14\] do not exist"):
            select_bands(src, "4,3,14")
        with pytest.raises(InputError, match="1 or 3 bands"):
            select_bands(src, "4,3")


def test_bands_guessed_blindly_from_four_or_more_silent_bands_are_warned_about(tmp_path, tiny_weights):
    """A 6-band Landsat 7 stack without names (blue first) runs on bands 1-3 as before, and now says so: a 3-band
    image, chosen bands and bands that name their colours are not warned about."""
    from d3rsmde.pipeline import D3Pipeline
    from d3rsmde.raster import predict_raster

    landsat7 = write_raster(tmp_path / "l7.tif", 6)
    for path, bands, warned in [
        (landsat7, None, True), (landsat7, "3,2,1", False), (write_raster(tmp_path / "rgb.tif", 3), None, False),
        (write_raster(tmp_path / "s2.tif", 13, SENTINEL2_L1C), None, False),
        (write_raster(tmp_path / "s2-10m.tif", 4, ["B2", "B3", "B4", "B8"]), None, False),
        (write_raster(tmp_path / "rgba.tif", 4, colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                                                            ColorInterp.alpha]), None, False),
    ]:
        with rasterio.open(path) as src:
            notes = guessed_bands_warning(src, bands)
        assert bool(notes) == warned, (path.name, bands)
    with rasterio.open(landsat7) as src:
        assert "l7.tif has 6 bands that do not say which colour they are: bands 1, 2, 3" in guessed_bands_warning(src)[0]
    stats = predict_raster(landsat7, tmp_path / "h.tif", D3Pipeline.from_pretrained(tiny_weights), refine_steps=0)
    assert stats["bands"] == [1, 2, 3] and any("3,2,1 for Landsat 4-7" in w for w in stats["warnings"])


def test_cli_takes_the_same_band_syntax():
    from d3rsmde.cli import build_parser

    parser = build_parser()
    for text in ("4,3,2", "4;3;2"):
        assert parser.parse_args(["predict", "in.tif", "out.tif", "--bands", text]).bands == [4, 3, 2]
    assert parser.parse_args(["predict", "in.tif", "out.tif"]).bands is None
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "in.tif", "out.tif", "--bands", "4,x"])
