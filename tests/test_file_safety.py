"""Issue 14's hostile-input matrix, one regression test per defect (band parsing, defect 10, is the plugin's):
never lose an analyst's data, never write a silently wrong output, no traceback and no leftover file.

A full disk is a real one: a small tmpfs mounted for the test (skipped where mounting is not permitted).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.errors import NotGeoreferencedWarning
from rasterio.rpc import RPC
from rasterio.transform import from_origin

from d3rsmde.cli import main
from d3rsmde.errors import InputError, OutputError
from d3rsmde.evaluation import evaluate_rasters
from d3rsmde.files import folder_outputs, staged_output, sweep_stale_scratch
from d3rsmde.raster import predict_raster
from test_raster import UTM, Oracle, height_image, sha256, terrain_m, write, write_height

NOISE = np.random.default_rng(0).integers(0, 255, (3, 400, 400)).astype(np.uint8)


def scratch_folders(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".d3rsmde"))


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB file system that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def leave_free(disk, nbytes):
    with open(disk / "filler", "wb") as f:
        f.write(b"\1" * (shutil.disk_usage(disk).free - nbytes))


# 1 -- a full disk while the output is written: error, the previous output kept, nothing left.
def test_disk_full_while_writing_the_output_keeps_the_previous_one(tmp_path, small_disk):
    src = write(tmp_path / "in.tif", NOISE)
    dst = small_disk / "out.tif"
    dst.write_bytes(b"the previous, good output")
    leave_free(small_disk, (1 << 20) + (128 << 10))  # the 4 scratch tiles (1 MiB) fit, the output does not
    with pytest.raises(OutputError, match="out.tif was not written"):
        predict_raster(src, dst, Oracle(), tile=256)
    assert dst.read_bytes() == b"the previous, good output"
    assert sorted(os.listdir(small_disk)) == ["filler", "out.tif"]


# 1, 9 -- a full disk during the scratch pass: one error line from the CLI, no traceback, nothing left.
def test_disk_full_during_the_scratch_pass_is_one_error_line(tmp_path, small_disk, tiny_weights, capsys):
    src = write(tmp_path / "in.tif", NOISE)
    leave_free(small_disk, 256 << 10)
    code = main(["predict", str(src), str(small_disk / "out.tif"), "--weights", str(tiny_weights), "--tile", "64",
                 "--refine-steps", "0", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: out.tif was not written: no space left"), err
    assert sorted(os.listdir(small_disk)) == ["filler"]


def vrt(path, source, width, height, count=3):
    """A plain VRT of `source` (what gdalbuildvrt writes for one file)."""
    with rasterio.open(source) as ds:
        crs, gt = ds.crs.to_wkt(), ds.transform.to_gdal()
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="0">{source}'
        f"</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>" for b in range(1, count + 1))
    path.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{crs}</SRS>'
                    f"<GeoTransform>{', '.join(map(str, gt))}</GeoTransform>{bands}</VRTDataset>")
    return path


# 2 -- an output that is a file an input reads (VRT sources, through links) is refused; the source is unchanged.
def test_output_that_an_input_reads_is_refused(tmp_path):
    scene = write(tmp_path / "scene.tif", NOISE[:, :80, :80])
    inner = vrt(tmp_path / "scene.vrt", scene, 80, 80)
    outer = vrt(tmp_path / "outer.vrt", inner, 80, 80)
    os.link(scene, tmp_path / "hard.tif")
    (tmp_path / "soft.tif").symlink_to(scene)
    before = sha256(scene)
    for src, dst in [(inner, scene), (outer, scene), (inner, tmp_path / "hard.tif"), (outer, tmp_path / "soft.tif")]:
        with pytest.raises(InputError, match="is read by the input raster (scene|outer).vrt \\(as .*scene.tif\\)"):
            predict_raster(src, dst, Oracle())
    dem = write(tmp_path / "dem.tif", np.random.default_rng(1).random((20, 20)).astype(np.float32),
                transform=from_origin(500_000, 4_650_000, 4.0, 4.0))
    other = write(tmp_path / "other.tif", NOISE[:, :80, :80])
    with pytest.raises(InputError, match="is read by the reference DEM raster dem.vrt"):
        predict_raster(other, dem, Oracle(), reference_dem=vrt(tmp_path / "dem.vrt", dem, 20, 20, count=1))
    assert sha256(scene) == before and sha256(dem) != before
    assert scratch_folders(tmp_path) == []


def test_evaluate_report_that_is_an_input_is_refused(tmp_path, capsys):
    pred = write(tmp_path / "pred.tif", np.random.default_rng(4).random((32, 32)).astype(np.float32))
    dem = write(tmp_path / "dem.tif", np.random.default_rng(5).random((32, 32)).astype(np.float32))
    inner = vrt(tmp_path / "dem.vrt", dem, 32, 32, count=1)
    before = sha256(pred), sha256(dem)
    for report, message in [(pred, "is the prediction raster"), (dem, "is read by the reference raster dem.vrt")]:
        assert main(["evaluate", str(pred), str(inner), "--json", str(report)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert (sha256(pred), sha256(dem)) == before


# 3 -- folder outputs never collide and never replace an existing file.
def test_folder_outputs_are_unique_and_never_existing(tmp_path):
    (tmp_path / "a_depth.tif").write_text("the user's own file")
    images = [tmp_path / n for n in ("a.tif", "a_depth.tif", "scene.png", "scene.tif", "x.jpg")]
    outputs = folder_outputs(images, tmp_path, "_depth.tif")
    assert [p.name for p in outputs] == ["a_depth-2.tif", "a_depth_depth.tif", "scene_png_depth.tif",
                                         "scene_tif_depth.tif", "x_depth.tif"]
    src = write(tmp_path / "a.tif", NOISE[:, :64, :64])
    with pytest.raises(InputError, match="exists and is not to be overwritten"):
        predict_raster(src, tmp_path / "a_depth.tif", Oracle(), overwrite=False)
    assert (tmp_path / "a_depth.tif").read_text() == "the user's own file"


# 4 -- a reference DEM too coarse to scale the heights is refused; a coarse but usable one still gives relief.
def test_reference_dem_of_one_pixel_is_refused(tmp_path):
    truth = terrain_m(128, 128)
    src = write(tmp_path / "in.tif", height_image(truth))
    one = write(tmp_path / "one.tif", np.full((1, 1), 3000.0, np.float32),
                transform=from_origin(499_900, 4_650_100, 400.0, 400.0))
    with pytest.raises(InputError, match="one.tif is too coarse"):
        predict_raster(src, tmp_path / "out.tif", Oracle(), tile=64, reference_dem=one)
    four = write(tmp_path / "four.tif", truth.reshape(2, 64, 2, 64).mean(axis=(1, 3)).astype(np.float32),
                 transform=from_origin(500_000, 4_650_000, 64.0, 64.0))
    predict_raster(src, tmp_path / "out.tif", Oracle(), tile=64, reference_dem=four)
    with rasterio.open(tmp_path / "out.tif") as ds:
        out = ds.read(1)
    assert np.ptp(out) > 0.2 * np.ptp(truth) and np.corrcoef(out.ravel(), truth.ravel())[0, 1] > 0.99


# 5 -- ground control points and RPCs are carried to the output.
def test_gcps_and_rpcs_are_carried_to_the_output(tmp_path):
    gcps = [GroundControlPoint(r, c, 500_000 + 2 * c, 4_650_000 - 2 * r, id=f"p{r}{c}")
            for r, c in ((0, 0), (0, 90), (70, 0), (70, 90))]
    src = tmp_path / "gcp.tif"
    with rasterio.open(src, "w", driver="GTiff", width=90, height=70, count=3, dtype="uint8", gcps=gcps,
                       crs=UTM) as ds:
        ds.write(NOISE[:, :70, :90])
    stats = predict_raster(src, tmp_path / "out.tif", Oracle())
    with rasterio.open(tmp_path / "out.tif") as out:
        points, crs = out.gcps
    assert crs == UTM and [(p.row, p.col, p.x, p.y) for p in points] == [(p.row, p.col, p.x, p.y) for p in gcps]
    assert stats["warnings"] == []

    identity = [1.0] + [0.0] * 19
    rpcs = RPC(height_off=1000, height_scale=500, lat_off=40.0, lat_scale=0.01, line_off=35, line_scale=35,
               long_off=-105.0, long_scale=0.01, samp_off=45, samp_scale=45, line_den_coeff=identity,
               line_num_coeff=[0.0, 0.0, -1.0] + [0.0] * 17, samp_den_coeff=identity,
               samp_num_coeff=[0.0, 1.0] + [0.0] * 18)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(src, "w", driver="GTiff", width=90, height=70, count=3, dtype="uint8", rpcs=rpcs) as ds:
            ds.write(NOISE[:, :70, :90])
    predict_raster(src, tmp_path / "out.tif", Oracle())
    with rasterio.open(src) as ds, rasterio.open(tmp_path / "out.tif") as out:
        assert out.rpcs.to_dict() == ds.rpcs.to_dict() and out.rpcs.lat_off == 40.0


# 6 -- an output name that promises another format is refused, not filled with GeoTIFF bytes.
@pytest.mark.parametrize("name", ["out.png", "out.jpg", "out.JPEG", "out"])
def test_output_must_be_named_as_a_geotiff(tmp_path, name):
    src = write(tmp_path / "in.tif", NOISE[:, :64, :64])
    with pytest.raises(InputError, match="must end in .tif or .tiff"):
        predict_raster(src, tmp_path / name, Oracle())
    assert sorted(os.listdir(tmp_path)) == ["in.tif"]


# 7, 9 -- invalid numbers are refused, not replaced by a default or rounded; a giant tile is refused up front.
@pytest.mark.parametrize("option,value,message", [
    ("tile", 0, "tile size must be at least 16"), ("batch_size", 0, "batch size must be at least 1"),
    ("refine_steps", 2.5, "refinement steps must be a whole number"), ("overlap", -1, "overlap must be at least 0"),
    ("tile", 100_000, "tile size 100000 is larger than this 64 x 64 raster needs"),
    ("batch_size", True, "batch size must be a whole number"),
])
def test_invalid_numbers_are_refused(tmp_path, option, value, message):
    src = write(tmp_path / "in.tif", NOISE[:, :64, :64])
    with pytest.raises(InputError, match=message):
        predict_raster(src, tmp_path / "out.tif", Oracle(), **{option: value})
    assert sorted(os.listdir(tmp_path)) == ["in.tif"]


def test_cli_refuses_zero_and_giant_tiles_in_one_line(tmp_path, tiny_weights, capsys):
    src = write(tmp_path / "in.tif", NOISE[:, :64, :64])
    for argv, message in [(["--tile", "0"], "tile size must be at least"), (["--batch-size", "0"], "batch size"),
                          (["--tile", "100000"], "larger than")]:
        assert main(["predict", str(src), str(tmp_path / "o.tif"), "--weights", str(tiny_weights), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


# 9 -- running out of memory (numpy's MemoryError, torch's CPU and CUDA allocators) says what to change.
@pytest.mark.parametrize("error", [
    MemoryError("Unable to allocate 224. GiB for an array with shape (3, 100000, 100000)"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 240000000000 bytes"),
    RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"),
], ids=["numpy", "torch-cpu", "torch-cuda"])
def test_out_of_memory_is_an_input_error(tmp_path, error):
    class Hungry(Oracle):
        def __call__(self, images, refine_steps=None):
            raise error

    src = write(tmp_path / "in.tif", NOISE[:, :64, :64])
    with pytest.raises(InputError, match="not enough memory .* smaller tile size or batch size"):
        predict_raster(src, tmp_path / "out.tif", Hungry())
    assert sorted(os.listdir(tmp_path)) == ["in.tif"]


def start_predict(src, dst, weights):
    """The CLI in its own process, returned once its scratch file holds the first tiles."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "d3rsmde.cli", "predict", str(src), str(dst), "--weights", str(weights),
         "--tile", "64", "--batch-size", "1", "--refine-steps", "0", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        tiles = list(dst.parent.glob(".*.d3rsmde/tiles.f32"))
        if tiles and tiles[0].stat().st_size > 0:
            return proc
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"the run never started writing tiles: {proc.communicate()}")


# 8 -- SIGTERM removes the scratch folder; the scratch folder of a killed run is swept by the next run.
def test_sigterm_leaves_no_scratch_behind(tmp_path, tiny_weights):
    src = write(tmp_path / "in.tif", np.random.default_rng(2).integers(0, 255, (3, 800, 800)).astype(np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    proc = start_predict(src, out / "height.tif", tiny_weights)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "error: terminated", err
    assert "Traceback" not in err and list(out.iterdir()) == []


def test_scratch_of_a_killed_run_is_swept_by_the_next(tmp_path):
    holder = subprocess.Popen(  # a run inside its scratch folder, then SIGKILL: nothing of it can clean up
        [sys.executable, "-c", "import sys, time; from d3rsmde.files import staged_output\n"
         "with staged_output(sys.argv[1]):\n    print('in', flush=True); time.sleep(60)", str(tmp_path / "a.tif")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "in\n"
    assert len(scratch_folders(tmp_path)) == 1
    assert sweep_stale_scratch(tmp_path) == []  # its run is alive: kept
    holder.kill()
    holder.wait(timeout=30)
    assert len(scratch_folders(tmp_path)) == 1
    predict_raster(write(tmp_path / "small.tif", NOISE[:, :64, :64]), tmp_path / "other.tif", Oracle())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.tif", "small.tif"]


def test_only_unlocked_scratch_folders_are_swept(tmp_path):
    an_hour_ago = time.time() - 3600
    with staged_output(tmp_path / "live.tif") as live:
        stale = tmp_path / ".old.tif.abc12_yz.d3rsmde"  # a killed run's
        legacy = tmp_path / ".older.k3j4h5g6.d3rsmde"  # an earlier version's, without a lock file
        users = [tmp_path / ".notes.d3rsmde", tmp_path / ".mine.tif.abcd1234.d3rsmde"]  # not ours: kept
        for folder in [stale, legacy, *users]:
            folder.mkdir()
        (stale / "lock").write_text("12345\n")  # the process id its run wrote once it held the lock
        (legacy / "tiles.f32").touch()
        (users[0] / "lock").touch()
        (users[1] / "sub").mkdir()
        for folder in [legacy, *users]:
            os.utime(folder, (an_hour_ago, an_hour_ago))
        assert sorted(sweep_stale_scratch(tmp_path)) == sorted([legacy, stale])
        assert live.is_dir()  # its run holds the lock
    assert sorted(tmp_path.iterdir()) == sorted(users)


def test_a_scratch_folder_whose_run_is_about_to_lock_it_is_kept(tmp_path):
    """A run creates its lock file, then locks it: a sweep in between (another run starting in the same folder,
    as parallel QGIS runs do) must not take the folder, which once lost a run its tiles (FileNotFoundError)."""
    starting = tmp_path / ".new.tif.abc12_yz.d3rsmde"
    starting.mkdir()
    (starting / "lock").touch()
    assert sweep_stale_scratch(tmp_path) == [] and starting.is_dir()


# 11 -- evaluate names a missing CRS, and does not give metre errors of a relative prediction as "relative".
def test_evaluate_names_the_real_problem(tmp_path, capsys):
    heights = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    dem = write(tmp_path / "dem.tif", 3000 + 100 * heights)
    pred = write_height(tmp_path / "pred.tif", heights, units="relative", tile_size=32)
    result = evaluate_rasters(pred, dem)
    whole = result["whole"]
    assert whole["mae"] is None and whole["rmse"] is None and whole["bias"] is None
    assert whole["rmse_after_affine"] < 1e-3 and whole["units"] == ""
    assert main(["evaluate", str(pred), str(dem)]) == 0
    assert "n/a (relative prediction vs heights)" in capsys.readouterr().out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        bare = write(tmp_path / "bare.tif", heights, crs=None, transform=rasterio.Affine.identity())
        twin = write(tmp_path / "twin.tif", 3000 + heights, crs=None, transform=rasterio.Affine.identity())
    with pytest.raises(InputError, match="bare.tif has no CRS"):
        evaluate_rasters(bare, dem)
    assert main(["evaluate", str(bare), str(twin)]) == 0  # neither has a CRS: pixel for pixel, said once
    err = capsys.readouterr().err
    assert err.count("have no CRS: compared pixel for pixel") == 1 and "NotGeoreferenced" not in err, err
    far = write(tmp_path / "far.tif", 3000 + heights, transform=from_origin(600_000, 4_650_000, 1.0, 1.0))
    with pytest.raises(InputError, match="do not overlap"):
        evaluate_rasters(pred, far)


# 12 -- a raster without georeferencing: one plain warning, no NotGeoreferencedWarning spam.
def test_missing_georeferencing_is_said_once(tmp_path, tiny_weights, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = tmp_path / "plain.tif"
        with rasterio.open(src, "w", driver="GTiff", width=96, height=80, count=3, dtype="uint8") as ds:
            ds.write(NOISE[:, :80, :96])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = predict_raster(src, tmp_path / "out.tif", Oracle())
    assert [w for w in caught if issubclass(w.category, NotGeoreferencedWarning)] == []
    assert len(stats["warnings"]) == 1 and "no georeferencing" in stats["warnings"][0]
    assert main(["predict", str(src), str(tmp_path / "out2.tif"), "--weights", str(tiny_weights),
                 "--refine-steps", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: plain.tif has no georeferencing") == 1 and "NotGeoreferenced" not in err


def test_coordinates_without_a_crs_are_kept_and_said(tmp_path):
    """A transform without a CRS (a netCDF whose CRS is only an attribute): the output keeps the transform and
    the warning says how to place both on a map, rather than claiming there is no georeferencing at all."""
    src = tmp_path / "no-crs.tif"
    transform = rasterio.transform.from_origin(600_000, 4_700_020, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(src, "w", driver="GTiff", width=96, height=80, count=3, dtype="uint8",
                           transform=transform) as ds:
            ds.write(NOISE[:, :80, :96])
    stats = predict_raster(src, tmp_path / "out.tif", Oracle())
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.crs is None and out.transform == transform
    assert len(stats["warnings"]) == 1 and "has coordinates but no CRS" in stats["warnings"][0]


# Peak memory: GDAL's default block cache (5% of RAM) was most of the ~2 GB a 20000 x 20000 run held. Overviews and
# compression use every core (they run after the model).
def test_gdal_block_cache_is_bounded_and_threads_set_during_a_run(tmp_path, monkeypatch):
    gdal = pytest.importorskip("osgeo.gdal")
    from d3rsmde.raster import GDAL_CACHE_BYTES

    with rasterio.Env(GDAL_CACHEMAX=12_345_678):
        if gdal.GetCacheMax() != 12_345_678:
            pytest.skip("rasterio and osgeo.gdal load different GDAL libraries")
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    monkeypatch.delenv("GDAL_NUM_THREADS", raising=False)
    before = gdal.GetCacheMax()

    def settings_during(name):
        seen = []
        predict_raster(write(tmp_path / "in.tif", NOISE[:, :64, :64]), tmp_path / name, Oracle(), progress=lambda *_:
                       seen.append((gdal.GetCacheMax(), gdal.GetConfigOption("GDAL_NUM_THREADS"))))
        return seen[:-1]  # the last call, "done", comes after the run

    during = settings_during("out.tif")
    assert during and max(size for size, _ in during) <= GDAL_CACHE_BYTES
    assert {threads for _, threads in during} == {"ALL_CPUS"}
    assert gdal.GetCacheMax() == before and gdal.GetConfigOption("GDAL_NUM_THREADS") is None
    monkeypatch.setenv("GDAL_NUM_THREADS", "1")  # the user's choice wins
    assert {threads for _, threads in settings_during("out2.tif")} == {"1"}
