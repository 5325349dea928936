"""The d3rsmde console script through main([...]): help and version, predict/evaluate/info on real files with a
tiny checkpoint, and one clean error line (exit 2) for problems the user can fix."""

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import SAMPLE_DEM
from d3rsmde import __version__
from d3rsmde.cli import build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"d3rsmde {__version__}"


def test_every_command_has_help(capsys):
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"predict", "evaluate", "info", "train", "finetune", "data"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert f"usage: d3rsmde {name}" in capsys.readouterr().out


def test_training_scripts_use_only_flags_the_cli_has():
    """The recipe scripts call `d3rsmde train` and friends with long options: each must exist (a renamed flag
    would otherwise surface an hour into a training run)."""
    import argparse
    import re

    from conftest import REPO

    def options(parser) -> set[str]:  # of the parser and of its subcommands, at any depth
        found = {o for action in parser._actions for o in action.option_strings}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found |= options(sub)
        return found

    known = options(build_parser())
    scripts = sorted((REPO / "scripts").glob("train_*.sh"))
    assert scripts
    for script in scripts:
        text = script.read_text()
        calls = re.findall(r"--[a-z][a-z0-9-]+", "\n".join(line.split("#")[0] for line in text.splitlines()))
        assert set(calls) - known == set(), script.name


def test_predict_evaluate_info(tmp_path, capsys, tiny_weights, small_rgb):
    out = tmp_path / "height.tif"
    args = ["predict", str(small_rgb), str(out), "--weights", str(tiny_weights), "--refine-steps", "1",
            "--tile", "64", "--overlap", "16", "--batch-size", "3", "--bands", "1,2,3", "--device", "cpu"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"wrote {out} (relative)" in captured.out and "predict" in captured.err  # the progress bar
    with rasterio.open(small_rgb) as a, rasterio.open(out) as b:
        assert (b.crs, b.transform, b.width, b.height) == (a.crs, a.transform, a.width, a.height)
        assert b.tags()["refine_steps"] == "1" and b.tags()["units"] == "relative"

    metres = tmp_path / "height-m.tif"
    assert main(["predict", str(small_rgb), str(metres), "--weights", str(tiny_weights), "--refine-steps", "0",
                 "--reference-dem", str(SAMPLE_DEM)]) == 0
    with rasterio.open(metres) as ds:
        values = ds.read(1, masked=True)
        assert ds.tags()["units"] == "m"
    assert 2000 < values.mean() < 4300  # Rocky Mountain heights, from the reference DEM
    capsys.readouterr()

    report = tmp_path / "metrics.json"
    assert main(["evaluate", str(metres), str(SAMPLE_DEM), "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "MAE" in printed and "rmse_after_affine" in printed
    result = json.loads(report.read_text())
    assert 0.9 * 96 * 80 < result["whole"]["pixels"] <= 96 * 80 and result["tiles"] == 4 and result["tile"] == 64
    assert 0 <= result["per_tile"]["mae"] <= 255 and result["whole"]["rmse"] > 0

    assert main(["info", str(tiny_weights)]) == 0
    printed = capsys.readouterr().out
    assert "tiny" in printed and "params" in printed and "total=" in printed


def test_predict_within_bounds(tmp_path, capsys, tiny_weights, small_rgb):
    """--bounds LEFT BOTTOM RIGHT TOP in the input's CRS: the output is the input's grid within them."""
    with rasterio.open(small_rgb) as src:
        left, bottom, right, top = src.bounds
        step_x, step_y = src.res
        transform = src.transform
    bounds = [left + 10 * step_x, bottom + 20 * step_y, right - 5 * step_x, top - 8 * step_y]
    out = tmp_path / "part.tif"
    assert main(["predict", str(small_rgb), str(out), "--weights", str(tiny_weights), "--refine-steps", "0",
                 "--bounds", *map(str, bounds)]) == 0
    with rasterio.open(out) as b:
        assert (b.width, b.height) == (96 - 15, 80 - 28)
        assert b.transform.almost_equals(transform * transform.translation(10, 8))
    assert main(["predict", str(small_rgb), str(tmp_path / "none.tif"), "--weights", str(tiny_weights),
                 "--bounds", "0", "0", "1", "1"]) == 2
    assert "does not overlap" in capsys.readouterr().err


def test_predict_leaves_out_the_classes_asked(tmp_path, capsys, tiny_weights, small_rgb):
    """--exclude a class raster with --exclude-values: only those classes are nodata; values alone are an error."""
    with rasterio.open(small_rgb) as src:
        profile = dict(src.profile, count=1, nodata=0)
    classes = np.full((80, 96), 4, np.uint8)  # vegetation, as Sentinel-2's scene classification codes it
    classes[10:30, 20:50] = 9  # cloud
    with rasterio.open(tmp_path / "scl.tif", "w", **profile) as ds:
        ds.write(classes, 1)
    out = tmp_path / "map.tif"
    assert main(["predict", str(small_rgb), str(out), "--weights", str(tiny_weights), "--refine-steps", "0",
                 "--exclude", str(tmp_path / "scl.tif"), "--exclude-values", "3,8,9,10"]) == 0
    with rasterio.open(out) as ds:
        assert np.array_equal(ds.read(1, masked=True).mask, classes == 9)
    assert main(["predict", str(small_rgb), str(tmp_path / "o.tif"), "--exclude-values", "9"]) == 2
    assert "--exclude-values needs --exclude" in capsys.readouterr().err


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, tiny_weights):
    two_bands = tmp_path / "two.tif"
    with rasterio.open(two_bands, "w", driver="GTiff", width=32, height=32, count=2, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500_000, 4_650_000, 1, 1)) as ds:
        ds.write(np.zeros((2, 32, 32), np.uint8))
    cases = [
        (["predict", str(two_bands), str(tmp_path / "o.tif"), "--weights", str(tiny_weights), "--bands", "3,2,1"],
         "has 2 band(s)"),
        (["predict", str(two_bands), str(tmp_path / "o.tif"), "--weights", str(tmp_path / "none.safetensors")],
         "none.safetensors"),
        (["evaluate", str(tmp_path / "missing.tif"), str(two_bands)], "missing.tif"),
        (["info", str(two_bands)], "two.tif"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.tif"]


def test_bad_band_list_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "a.tif", "b.tif", "--bands", "red,green"])
    assert exit_.value.code == 2
    assert "bands must be 1-based band numbers" in capsys.readouterr().err
