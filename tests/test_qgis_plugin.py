"""The QGIS plugin against the real, headless QGIS: in-process processing.run, qgis_process and a dialog."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import REPO, SAMPLE_DEM, SAMPLE_RGB, blue_first_stack, crop_raster
from qgis.core import (QgsApplication, QgsProcessingException, QgsProcessingFeedback,
                       QgsProcessingParameterDefinition, QgsRectangle)

pytestmark = pytest.mark.qgis

ALGORITHM_IDS = ["d3rsmde:estimatedepth", "d3rsmde:estimatedepthfolder", "d3rsmde:evaluate", "d3rsmde:finetune"]
CPU = 1  # DEVICE enum index


def run(algorithm: str, parameters: dict, feedback=None) -> dict:
    import processing

    return processing.run(algorithm, parameters, feedback=feedback)


class RecordingFeedback(QgsProcessingFeedback):
    """Keeps what the algorithm reported."""

    def __init__(self):
        super().__init__()
        self.infos, self.errors, self.warnings = [], [], []

    def pushInfo(self, info):  # noqa: N802 - QGIS API
        self.infos.append(info)

    def pushWarning(self, warning):  # noqa: N802 - QGIS API
        self.warnings.append(warning)

    def reportError(self, error, fatalError=False):  # noqa: N802,N803 - QGIS API
        self.errors.append(error)


def test_provider_registers_four_documented_algorithms(d3_provider):
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("d3rsmde")
    assert provider is d3_provider and provider.name() == "D3-RSMDE"
    assert not provider.icon().isNull()
    assert sorted(alg.id() for alg in provider.algorithms()) == ALGORITHM_IDS
    for alg in provider.algorithms():
        assert len(alg.shortHelpString()) > 100, alg.id()
    depth = registry.algorithmById("d3rsmde:estimatedepth")
    names = [p.name() for p in depth.parameterDefinitions()]
    assert names == ["INPUT", "BANDS", "EXTENT", "PIXEL_SIZE", "EXCLUDE", "EXCLUDE_VALUES", "WEIGHTS", "REFINE_STEPS",
                     "TILE", "OVERLAP", "BATCH_SIZE", "DEVICE", "REFERENCE_DEM", "HILLSHADE", "OUTPUT"]
    for optional in ["EXTENT", "EXCLUDE", "EXCLUDE_VALUES"]:
        assert depth.parameterDefinition(optional).flags() & QgsProcessingParameterDefinition.FlagOptional
    assert depth.parameterDefinition("BANDS").allowMultiple()
    assert depth.parameterDefinition("BANDS").defaultValue() is None  # automatic, per layer (d3rsmde.bands)
    assert depth.parameterDefinition("OUTPUT").supportedOutputRasterLayerExtensions() == ["tif"]


def test_algorithms_feel_native(d3_provider):
    """Found by what users type, a real refinement default, help one click away."""
    from d3rsmde.config import D3Config
    from d3rsmde_qgis.paths import metadata
    from qgis.gui import QgsProcessingToolboxModel, QgsProcessingToolboxProxyModel

    registry = QgsApplication.processingRegistry()
    for alg in d3_provider.algorithms():
        assert {"height", "elevation", "DEM", "DSM", "terrain", "depth"} <= set(alg.tags()), alg.id()
        assert alg.helpUrl() == metadata("homepage") and alg.helpUrl().startswith("https://")
    steps = registry.algorithmById("d3rsmde:estimatedepth").parameterDefinition("REFINE_STEPS")
    assert steps.defaultValue() == D3Config.num_steps == 6 and steps.minimum() == 0
    assert "0 = coarse" in steps.description() and "-1" not in steps.description()
    toolbox = QgsProcessingToolboxProxyModel(None, registry)
    for word in ("height", "elevation", "DEM", "DSM", "terrain"):
        toolbox.setFilterString(word)
        found = {toolbox.data(index, QgsProcessingToolboxModel.RoleAlgorithmId) for index in _tree(toolbox)}
        assert "d3rsmde:estimatedepth" in found, (word, found)


def _tree(model, parent=None):
    """Every index of a Qt item model, depth first."""
    from qgis.PyQt.QtCore import QModelIndex

    parent = parent or QModelIndex()
    for row in range(model.rowCount(parent)):
        index = model.index(row, 0, parent)
        yield index
        yield from _tree(model, index)


def test_estimate_depth_keeps_grid_and_writes_nodata(d3_provider, tiny_weights, small_rgb, tmp_path):
    output = tmp_path / "depth.tif"
    feedback = RecordingFeedback()
    result = run("d3rsmde:estimatedepth", {"INPUT": str(small_rgb), "WEIGHTS": str(tiny_weights),
                                           "REFINE_STEPS": 2, "DEVICE": CPU, "OUTPUT": str(output)}, feedback)
    assert result["OUTPUT"] == str(output)
    with rasterio.open(small_rgb) as src, rasterio.open(output) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        assert out.nodata == -9999.0 and out.dtypes[0] == "float32"
        height = out.read(1, masked=True)
        tags = out.tags()
    assert 0.0 <= height.min() < height.max() <= 1.0
    digest = hashlib.sha256(tiny_weights.read_bytes()).hexdigest()
    assert (tags["weights"], tags["weights_sha256"]) == (tiny_weights.name, digest)  # which model made it
    log = "\n".join(feedback.infos)
    assert "Device: CPU" in log and "tiles: 4" in log and "seconds:" in log and "refine_steps: 2" in log
    assert f"sha256 {digest}" in log


def test_estimate_depth_within_an_extent(d3_provider, tiny_weights, small_rgb, tmp_path):
    """An extent in another CRS (Web Mercator, as a canvas might be): reprojected to the layer's, the output
    covers the image's pixels within it."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject, QgsRectangle

    with rasterio.open(small_rgb) as src:
        left, bottom, right, top = src.bounds
        step_x, step_y = src.res
    inner = QgsRectangle(left + 10.2 * step_x, bottom + 20.2 * step_y, right - 5.2 * step_x, top - 8.2 * step_y)
    mercator = QgsCoordinateReferenceSystem("EPSG:3857")
    to_mercator = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), mercator, QgsProject.instance())
    box = to_mercator.transformBoundingBox(inner)
    output = tmp_path / "part.tif"
    run("d3rsmde:estimatedepth", {"INPUT": str(small_rgb), "WEIGHTS": str(tiny_weights), "REFINE_STEPS": 0,
                                  "DEVICE": CPU, "OUTPUT": str(output),
                                  "EXTENT": f"{box.xMinimum()},{box.xMaximum()},{box.yMinimum()},{box.yMaximum()} "
                                            "[EPSG:3857]"})
    with rasterio.open(output) as out:
        assert 60 <= out.width <= 96 - 15 + 2 and 40 <= out.height <= 80 - 28 + 2  # the box back in degrees
        assert out.width < 96 and out.height < 80 and out.crs == "EPSG:4326"


def test_estimate_depth_warns_of_the_saturated_pixels_it_read_as_image(d3_provider, tiny_weights, tmp_path):
    """The sample's nodata is 255, which its snow reaches: the holes get heights and the log says so."""
    output = tmp_path / "depth.tif"
    feedback = RecordingFeedback()
    run("d3rsmde:estimatedepth", {"INPUT": str(SAMPLE_RGB), "WEIGHTS": str(tiny_weights), "REFINE_STEPS": 0,
                                  "DEVICE": CPU, "OUTPUT": str(output)}, feedback)
    assert feedback.warnings == ["102 pixels of rmnp-rgb.tif equal its nodata value 255 in holes of at most 64 "
                                 "pixels inside the image (saturated snow or cloud, or the darkest shadow, when "
                                 "nodata is also a brightness): they were read as image pixels, so the height map "
                                 "has no holes there; larger nodata areas stay nodata"]
    with rasterio.open(SAMPLE_RGB) as src, rasterio.open(output) as out:
        nodata_in = (src.read_masks() == 0).any(axis=0)
        assert ((out.read(1) == out.nodata) != nodata_in).sum() == 102


def test_estimate_depth_with_a_reference_dem_gives_its_metres(d3_provider, tiny_weights, small_rgb, tmp_path):
    """The sample DEM (235 m pixels) as the reference of a 96 x 80 crop of the image (150 m): heights in metres
    that follow it, whatever the random tiny model draws."""
    output = tmp_path / "metres.tif"
    run("d3rsmde:estimatedepth", {"INPUT": str(small_rgb), "WEIGHTS": str(tiny_weights), "REFINE_STEPS": 1,
                                  "DEVICE": CPU, "REFERENCE_DEM": str(SAMPLE_DEM), "OUTPUT": str(output)})
    from d3rsmde.evaluation import scene_on_reference_grid

    with rasterio.open(output) as out:
        assert out.tags()["units"] == "m" and out.units == ("m",)
    p, g = scene_on_reference_grid(output, SAMPLE_DEM)
    valid = np.isfinite(p) & np.isfinite(g)
    assert valid.sum() > 100 and np.corrcoef(p[valid], g[valid])[0, 1] > 0.9
    assert abs(np.mean(p[valid] - g[valid])) < 50  # metres, on ground 2,500-3,900 m high


def test_loaded_result_gets_terrain_style_and_hillshade(d3_provider, tiny_weights, small_rgb, tmp_path,
                                                        qgis_new_project):
    import processing
    from qgis.PyQt.QtGui import QColor, QPainter

    output = tmp_path / "styled.tif"
    processing.runAndLoadResults("d3rsmde:estimatedepth", {
        "INPUT": str(small_rgb), "WEIGHTS": str(tiny_weights), "DEVICE": CPU, "HILLSHADE": True,
        "OUTPUT": str(output)})
    layers = {layer.name(): layer for layer in qgis_new_project.mapLayers().values()}
    assert sorted(layers) == ["rmnp-small height", "rmnp-small height hillshade"]  # named after the input
    depth, shade = layers["rmnp-small height"], layers["rmnp-small height hillshade"]
    assert Path(depth.source()) == output
    renderer = depth.renderer()
    assert renderer.type() == "singlebandpseudocolor"
    with rasterio.open(output) as out:
        values = out.read(1, masked=True)
    assert renderer.classificationMin() == pytest.approx(values.min(), abs=1e-6)
    assert renderer.classificationMax() == pytest.approx(values.max(), abs=1e-6)
    items = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert [item.color for item in (items[0], items[-1])] == [QColor("#2b6e3f"), QColor("#ffffff")]
    assert items[0].value == pytest.approx(values.min(), abs=1e-6)
    assert depth.dataProvider().sourceHasNoDataValue(1) and depth.dataProvider().sourceNoDataValue(1) == -9999.0
    assert shade.renderer().type() == "hillshade" and shade.blendMode() == QPainter.CompositionMode_Multiply


def test_hillshade_layer_shades_a_resampled_surface_not_repeated_pixels(tmp_path):
    """At a zoom other than 1:1 QGIS shades the block it reads at the screen's resolution; read nearest-neighbour,
    repeated rows and columns were drawn as a grid of stripes over the whole map (desktop QGIS, every result).
    A smooth hill rendered at 1.37 screen pixels per raster pixel must shade smoothly (before: |second difference|
    of the grey levels 4-5 in the median, 15 at the 95th percentile; now 0 and 1)."""
    from qgis.core import QgsMapRendererSequentialJob, QgsMapSettings, QgsRasterLayer
    from qgis.PyQt.QtCore import QSize

    from d3rsmde_qgis.styling import hillshade_layer

    rows, cols = np.mgrid[0:120, 0:160]
    hill = np.exp(-((rows - 60) ** 2 + (cols - 80) ** 2) / (2 * 30.0**2)).astype(np.float32)
    path = tmp_path / "hill.tif"
    with rasterio.open(path, "w", driver="GTiff", width=160, height=120, count=1, dtype="float32",
                       crs="EPSG:32613", transform=rasterio.transform.from_origin(500_000, 4_650_000, 10, 10)) as out:
        out.write(hill, 1)
    layer = QgsRasterLayer(str(path), "hill")
    settings = QgsMapSettings()
    shade = hillshade_layer(layer)  # held: the map settings do not keep the layer alive
    settings.setLayers([shade])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(layer.extent())
    settings.setOutputSize(QSize(round(160 * 1.37), round(120 * 1.37)))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    bits = image.constBits()
    bits.setsize(image.sizeInBytes())
    grey = np.frombuffer(bits, np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)[:, :image.width(), :3]
    grey = grey.mean(axis=2)[10:-10, 10:-10]  # away from the hill's clipped edges
    assert np.ptp(grey) > 50  # the hill is drawn, lit on one side and shaded on the other
    for axis in (0, 1):
        roughness = np.abs(np.diff(grey, 2, axis=axis))
        assert np.median(roughness) <= 1 and np.percentile(roughness, 95) <= 3


SENTINEL2_L1C = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]


@pytest.fixture(scope="module")
def band_layers(small_rgb, tmp_path_factory) -> dict[str, Path]:
    """The RGB crop as a 13-band Sentinel-2-like stack (B4, B3, B2 = its red, green, blue; band descriptions
    named as GDAL's Sentinel-2 products name them), as a 1-band and as a 2-band (grey + alpha) layer."""
    folder = tmp_path_factory.mktemp("bands")
    with rasterio.open(small_rgb) as src:
        rgb, profile = src.read(), src.profile
    stack = np.full((13, *rgb.shape[1:]), profile["nodata"], rgb.dtype)  # other bands: keep the RGB's mask
    stack[[3, 2, 1]] = rgb
    alpha = np.full(rgb.shape[1:], 255, rgb.dtype)
    layers = {"sentinel2": (stack, SENTINEL2_L1C), "pan": (rgb[:1], None),
              "grey_alpha": (np.stack([rgb[0], alpha]), None)}
    for name, (data, descriptions) in layers.items():
        with rasterio.open(folder / f"{name}.tif", "w", **{**profile, "count": len(data)}) as out:
            out.write(data)
            for index, text in enumerate(descriptions or [], start=1):
                out.set_band_description(index, text)
    return {name: folder / f"{name}.tif" for name in layers}


def test_band_defaults_fit_the_layer(d3_provider, tiny_weights, small_rgb, band_layers, tmp_path):
    """No BANDS given: Sentinel-2 runs on B4, B3, B2 (same result as the RGB crop), 1- and 2-band layers on grey."""
    def estimate(source, name, **extra):
        feedback = RecordingFeedback()
        run("d3rsmde:estimatedepth", {"INPUT": str(source), "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
                                      "REFINE_STEPS": 0, "OUTPUT": str(tmp_path / name), **extra}, feedback)
        with rasterio.open(tmp_path / name) as out:
            return next(line for line in feedback.infos if line.startswith("bands: ")), out.read(1)

    rgb_bands, rgb_height = estimate(small_rgb, "rgb.tif")
    s2_bands, s2_height = estimate(band_layers["sentinel2"], "s2.tif")
    assert s2_bands == "bands: [4, 3, 2]" and np.array_equal(s2_height, rgb_height)
    assert estimate(band_layers["pan"], "pan.tif")[0] == "bands: [1, 1, 1]"
    assert estimate(band_layers["grey_alpha"], "grey_alpha.tif")[0] == "bands: [1, 1, 1]"
    for text in ("4,3,2", "4;3;2"):  # as text, as qgis_process passes it (the dialog passes a list)
        assert estimate(band_layers["sentinel2"], "chosen.tif", BANDS=text)[0] == "bands: [4, 3, 2]", text
    with pytest.raises(QgsProcessingException, match=r"band\(s\) \[14\] do not exist"):
        estimate(band_layers["sentinel2"], "bad.tif", BANDS="4,3,14")


def test_batch_rows_reuse_one_model_load(d3_provider, tiny_weights, small_rgb, tmp_path):
    from d3rsmde_qgis.cache import pipeline_for

    pipeline_for.cache_clear()
    for row in range(2):
        run("d3rsmde:estimatedepth", {"INPUT": str(small_rgb), "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
                                      "REFINE_STEPS": 0, "OUTPUT": str(tmp_path / f"row{row}.tif")})
    assert pipeline_for.cache_info().misses == 1 and pipeline_for.cache_info().hits == 1
    stat = tiny_weights.stat()  # rewritten weights (new mtime) must be reloaded, not served stale
    os.utime(tiny_weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    run("d3rsmde:estimatedepth", {"INPUT": str(small_rgb), "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
                                  "REFINE_STEPS": 0, "OUTPUT": str(tmp_path / "row2.tif")})
    assert pipeline_for.cache_info().misses == 2
    assert all((tmp_path / f"row{row}.tif").is_file() for row in range(3))


def test_cancel_during_run_leaves_no_output(d3_provider, tiny_weights, small_rgb, tmp_path):
    feedback = QgsProcessingFeedback()
    progress = []
    feedback.progressChanged.connect(lambda value: (progress.append(value), feedback.cancel()))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run("d3rsmde:estimatedepth", {"INPUT": str(small_rgb), "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
                                      "BATCH_SIZE": 1, "OUTPUT": str(out_dir / "depth.tif")}, feedback)
    assert progress and progress[0] < 100  # it was cancelled mid-run, after the first batch
    assert list(out_dir.iterdir()) == []  # neither the output nor a scratch file


def test_rasters_inside_zips_and_geopackages_are_read_as_qgis_shows_them(d3_provider, tiny_weights, small_rgb,
                                                                          tmp_path):
    """QGIS names a raster inside a zip /vsizip/ZIP/INNER and a GeoPackage raster table GPKG:FILE:TABLE; both used
    to reach the engine as the bare zip (no raster) or GeoPackage (its first table, here another image)."""
    import zipfile

    from qgis.core import QgsRasterLayer

    with zipfile.ZipFile(tmp_path / "scene.zip", "w") as archive:
        archive.write(small_rgb, "inner/scene.tif")
    with rasterio.open(small_rgb) as src:
        image, crs, transform = src.read(), src.crs, src.transform
    for table, data, extra in [("other", image[:, ::-1].copy(), {}), ("rgb", image, {"APPEND_SUBDATASET": "YES"})]:
        with rasterio.open(tmp_path / "scenes.gpkg", "w", driver="GPKG", width=image.shape[2], height=image.shape[1],
                           count=3, dtype="uint8", crs=crs, transform=transform, RASTER_TABLE=table,
                           TILE_FORMAT="PNG", **extra) as dst:
            dst.write(data)
    options = {"WEIGHTS": str(tiny_weights), "DEVICE": CPU, "REFINE_STEPS": 0}
    run("d3rsmde:estimatedepth", {**options, "INPUT": str(small_rgb), "OUTPUT": str(tmp_path / "plain.tif")})
    with rasterio.open(tmp_path / "plain.tif") as ds:
        plain = ds.read(1)
    for name, uri in [("zip", f"/vsizip/{tmp_path}/scene.zip/inner/scene.tif"),
                      ("gpkg", f"GPKG:{tmp_path}/scenes.gpkg:rgb")]:
        layer = QgsRasterLayer(uri, name, "gdal")
        assert layer.isValid(), uri
        run("d3rsmde:estimatedepth", {**options, "INPUT": layer, "OUTPUT": str(tmp_path / f"{name}.tif")})
        with rasterio.open(tmp_path / f"{name}.tif") as ds:
            assert ds.transform.almost_equals(transform)
            assert np.corrcoef(ds.read(1).ravel(), plain.ravel())[0, 1] > 0.999, name


def test_areas_to_leave_out_as_a_polygon_layer_or_a_mask_raster(d3_provider, tiny_weights, small_rgb, tmp_path):
    """Clouds drawn as polygons in another CRS (a memory layer, EPSG:3857 over an EPSG:4326 image) and the same
    area as a mask raster both come out nodata, as the backend leaves out those polygons; a point layer is
    refused."""
    from qgis.core import QgsFeature, QgsGeometry, QgsRasterLayer, QgsVectorLayer
    from rasterio.warp import transform_geom

    from d3rsmde.pipeline import D3Pipeline
    from d3rsmde.raster import predict_raster

    with rasterio.open(small_rgb) as ds:
        profile, (left, bottom, right, top) = ds.profile, ds.bounds
    middle = (left + right) / 2
    box = {"type": "Polygon", "coordinates": [[[left, bottom], [middle, bottom], [middle, top], [left, top],
                                               [left, bottom]]]}
    clouds = QgsVectorLayer("Polygon?crs=EPSG:3857", "clouds", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromWkt("POLYGON(({}))".format(", ".join(
        f"{x!r} {y!r}" for x, y in transform_geom(profile["crs"], "EPSG:3857", box)["coordinates"][0]))))
    assert clouds.dataProvider().addFeatures([feature])
    predict_raster(small_rgb, tmp_path / "backend.tif", D3Pipeline.from_pretrained(tiny_weights, device="cpu"),
                   refine_steps=0, exclude=[box])
    with rasterio.open(tmp_path / "backend.tif") as ds:
        expected = ds.read(1, masked=True).mask
    assert 0.4 < expected.mean() < 0.6
    profile.update(count=1)
    with rasterio.open(tmp_path / "mask.tif", "w", **profile) as ds:
        ds.write(expected.astype(np.uint8), 1)
    with rasterio.open(tmp_path / "classes.tif", "w", **profile) as ds:  # vegetation 4, cloud 9
        ds.write(np.where(expected, 9, 4).astype(np.uint8), 1)
    options = {"INPUT": str(small_rgb), "WEIGHTS": str(tiny_weights), "DEVICE": CPU, "REFINE_STEPS": 0}
    for name, layer, values in [("polygons", clouds, ""), ("raster", QgsRasterLayer(str(tmp_path / "mask.tif")), ""),
                                ("classes", QgsRasterLayer(str(tmp_path / "classes.tif")), "3;8;9;10")]:
        run("d3rsmde:estimatedepth", {**options, "EXCLUDE": layer, "EXCLUDE_VALUES": values,
                                      "OUTPUT": str(tmp_path / f"{name}-map.tif")})
        with rasterio.open(tmp_path / f"{name}-map.tif") as ds:
            assert np.array_equal(ds.read(1, masked=True).mask, expected), name
    # A raster layer object still held by this frame when the error below is raised (its traceback keeps the frame
    # to the end) is destroyed after QGIS has exited, and the test process crashes on exit: let go of it first.
    del layer, clouds
    (tmp_path / "points.geojson").write_text(json.dumps({"type": "Point", "coordinates": [left, top]}))
    with pytest.raises(QgsProcessingException, match="Layer 'points' holds no polygons"):
        run("d3rsmde:estimatedepth", {**options, "EXCLUDE": str(tmp_path / "points.geojson"),
                                      "OUTPUT": str(tmp_path / "points.tif")})
    assert not (tmp_path / "points.tif").exists()


@pytest.fixture
def web_maps(tmp_path):
    """Satellite basemaps of images as analysts add them (XYZ tiles in EPSG:3857, here served from files at zoom 10,
    about 117 m per pixel at this latitude), owned by the project as layers added in QGIS are."""
    from qgis.core import QgsProject, QgsRasterLayer
    from synthetic import xyz_tiles

    layers = []

    def web_map(image: Path) -> QgsRasterLayer:
        uri = xyz_tiles(image, tmp_path / f"tiles-{len(layers)}", zoom=10)
        layers.append(QgsRasterLayer(uri, "Satellite basemap", "wms"))
        assert layers[-1].isValid() and layers[-1].providerType() == "wms"
        QgsProject.instance().addMapLayer(layers[-1], False)
        return layers[-1]

    yield web_map
    for layer in layers:
        QgsProject.instance().removeMapLayer(layer.id())


@pytest.fixture
def web_map(web_maps, small_rgb):
    return web_maps(small_rgb)


def test_a_web_map_is_fetched_over_the_extent_on_its_own_crs(d3_provider, web_map, small_rgb, tmp_path):
    """Fetched at a ground pixel size (Web Mercator's map units are 1/cos(latitude) ground metres), the image
    lies where the source image lies, and the temporary file is gone afterwards."""
    from qgis.core import QgsProcessingContext, QgsProject
    from rasterio.warp import Resampling, reproject, transform_bounds

    from d3rsmde_qgis.algorithms.fetch import fetched_layer

    with rasterio.open(small_rgb) as src:
        box = transform_bounds(src.crs, "EPSG:3857", *src.bounds)
        latitude = (src.bounds.bottom + src.bounds.top) / 2
    extent = QgsRectangle(box[0] - 3000, box[1] - 2000, box[2] + 1000, box[3] + 500)  # some sky around it
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = RecordingFeedback()
    with fetched_layer(web_map, extent, 150.0, context, feedback) as path, rasterio.open(path) as ds:
        assert path.name == "Satellite_basemap.tif" and ds.crs == "EPSG:3857" and ds.count == 4
        assert ds.res[0] == pytest.approx(150.0 / np.cos(np.radians(latitude)), rel=2e-3)
        assert ds.bounds.left == pytest.approx(extent.xMinimum()) and ds.bounds.top == pytest.approx(
            extent.yMaximum())
        assert 0 <= extent.xMaximum() - ds.bounds.right < ds.res[0]  # whole pixels within the extent
        assert 0 <= ds.bounds.bottom - extent.yMinimum() < ds.res[1]
        fetched = ds.read()
        expected = np.zeros((3, ds.height, ds.width), np.float32)
        with rasterio.open(small_rgb) as src:
            for band in range(3):
                reproject(rasterio.band(src, band + 1), expected[band], dst_transform=ds.transform,
                          dst_crs=ds.crs, dst_nodata=np.nan, resampling=Resampling.average)
    inside, opaque = ~np.isnan(expected[0]), fetched[3] > 0
    assert (inside & opaque).sum() / (inside | opaque).sum() > 0.9  # the footprint in the right place
    difference = np.abs(fetched[:3].astype(np.float32) - expected)[:, inside & opaque]
    assert np.median(difference) < 12  # the same pixels, through two resamplings
    shifted = np.abs(fetched[:3, :, 2:].astype(np.float32) - expected[:, :, :-2])
    assert np.nanmedian(shifted[:, (inside & opaque)[:, 2:]]) > 2 * np.median(difference)  # a test that can fail
    assert not path.exists()
    assert "Fetched layer 'Satellite basemap' (wms, not a file)" in feedback.infos[0]


def test_cancel_while_fetching_a_web_map_leaves_nothing(d3_provider, tiny_weights, web_map, small_rgb, tmp_path):
    """Cancel reaches the fetch (3,000 x 3,000 pixels here, written block by block): no output, no fetched file."""
    from qgis.core import QgsProcessingUtils

    with rasterio.open(small_rgb) as src:
        left, bottom, right, top = src.bounds
    feedback = QgsProcessingFeedback()
    progress = []
    feedback.progressChanged.connect(lambda value: (progress.append(value), feedback.cancel()))
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run("d3rsmde:estimatedepth", {"INPUT": web_map.id(), "EXTENT": f"{left},{right},{bottom},{top} [EPSG:4326]",
                                      "PIXEL_SIZE": 4, "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
                                      "OUTPUT": str(tmp_path / "map.tif")}, feedback)
    assert progress and progress[0] < 100
    assert not (tmp_path / "map.tif").exists()
    assert not list(Path(QgsProcessingUtils.tempFolder()).rglob("Satellite_basemap.tif"))


def test_estimate_depth_on_a_web_map(d3_provider, tiny_weights, web_map, small_rgb, tmp_path):
    """A basemap layer is not a file: its Extent is fetched at the pixel size, and the map has that grid; without
    an Extent (the whole world), from a server that is down or with Bands it is refused with a reason."""
    from qgis.core import QgsProcessingUtils, QgsProject, QgsRasterLayer

    with rasterio.open(small_rgb) as src:
        left, bottom, right, top = src.bounds
    extent = f"{left + 0.01},{right - 0.01},{bottom + 0.01},{top - 0.01} [EPSG:4326]"
    options = {"INPUT": web_map.id(), "WEIGHTS": str(tiny_weights), "DEVICE": CPU, "REFINE_STEPS": 0}
    feedback = RecordingFeedback()
    run("d3rsmde:estimatedepth", {**options, "EXTENT": extent, "PIXEL_SIZE": 100,
                                  "OUTPUT": str(tmp_path / "map.tif")}, feedback)
    with rasterio.open(tmp_path / "map.tif") as ds:
        height = ds.read(1, masked=True)
        assert ds.crs == "EPSG:3857" and ds.tags()["source"] == "Satellite_basemap.tif"
        assert ds.res[0] == pytest.approx(100 / np.cos(np.radians((bottom + top) / 2)), rel=2e-3)
    assert height.count() > 0.95 * height.size and 0 <= height.min() < height.max() <= 1
    assert any(line.startswith("Fetched layer 'Satellite basemap'") for line in feedback.infos)
    assert not list(Path(QgsProcessingUtils.tempFolder()).rglob("Satellite_basemap.tif"))
    with pytest.raises(QgsProcessingException, match=r"fetched over the extent at 30 m per pixel, which would be "
                                                     r"1,3\d\d,\d\d\d x 1,3\d\d,\d\d\d pixels"):
        run("d3rsmde:estimatedepth", {**options, "OUTPUT": str(tmp_path / "world.tif")})
    offline = QgsRasterLayer(web_map.source().replace("tiles", "no-tiles"), "Offline basemap", "wms")  # server down
    QgsProject.instance().addMapLayer(offline, False)
    with pytest.raises(QgsProcessingException, match="Layer 'Offline basemap' gave no pixels over the extent"):
        run("d3rsmde:estimatedepth", {**options, "INPUT": offline.id(), "EXTENT": extent,
                                      "OUTPUT": str(tmp_path / "offline.tif")})
    QgsProject.instance().removeMapLayer(offline.id())
    with pytest.raises(QgsProcessingException, match="is a web map: it is fetched as red, green and blue"):
        run("d3rsmde:estimatedepth", {**options, "EXTENT": extent, "BANDS": [1],
                                      "OUTPUT": str(tmp_path / "bands.tif")})
    assert not any((tmp_path / name).exists() for name in ("world.tif", "bands.tif", "offline.tif"))


@pytest.fixture
def virtual_dem():
    """The sample DEM as a virtual raster (QGIS's on-the-fly raster calculator: a provider that serves data, like
    WCS or a database raster, and is not a file), owned by the project."""
    from qgis.core import QgsProject, QgsRasterDataProvider, QgsRasterLayer

    dem = QgsRasterLayer(str(SAMPLE_DEM), "dem")
    virtual = QgsRasterDataProvider.VirtualRasterParameters()
    virtual.crs, virtual.extent, virtual.width, virtual.height = dem.crs(), dem.extent(), dem.width(), dem.height()
    virtual.formula = '"dem@1" * 1.0'
    source = QgsRasterDataProvider.VirtualRasterInputLayers()
    source.name, source.uri, source.provider = "dem", dem.source(), "gdal"
    virtual.rInputLayers = [source]
    del dem
    layer = QgsRasterLayer(QgsRasterDataProvider.encodeVirtualRasterProviderUri(virtual), "Heights", "virtualraster")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer, False)
    yield layer
    QgsProject.instance().removeMapLayer(layer.id())


def test_a_reference_dem_that_is_not_a_file_is_fetched_as_heights(d3_provider, tiny_weights, small_rgb, virtual_dem,
                                                                   tmp_path):
    """Fetched over the image as heights, not colours, square on the ground, only where the layer has data, a
    virtual raster as the reference DEM gives the map the file's metres."""
    from qgis.core import QgsProcessingContext, QgsProject

    from d3rsmde.geodesy import metres_per_degree
    from d3rsmde_qgis.algorithms.fetch import fetched_layer

    options = {"INPUT": str(small_rgb), "WEIGHTS": str(tiny_weights), "DEVICE": CPU, "REFINE_STEPS": 0}
    feedback = RecordingFeedback()
    run("d3rsmde:estimatedepth", {**options, "REFERENCE_DEM": virtual_dem.id(), "PIXEL_SIZE": 60,
                                  "OUTPUT": str(tmp_path / "virtual.tif")}, feedback)
    run("d3rsmde:estimatedepth", {**options, "REFERENCE_DEM": str(SAMPLE_DEM), "OUTPUT": str(tmp_path / "file.tif")})
    assert any(line.startswith("Fetched layer 'Heights' (virtualraster") for line in feedback.infos)
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    with fetched_layer(virtual_dem, virtual_dem.extent(), 100.0, context, RecordingFeedback()) as path, \
            rasterio.open(path) as ds:
        latitude = (ds.bounds.bottom + ds.bounds.top) / 2  # square on the ground, not in degrees
        assert ds.crs == "EPSG:4326" and ds.dtypes[0] == "float64"
        assert ds.res[0] == pytest.approx(100 / metres_per_degree(latitude)[0], rel=3e-3)
        assert ds.res[1] == pytest.approx(100 / metres_per_degree(latitude)[1], rel=3e-3)
        heights = ds.read(1, masked=True)
        assert 2200 < heights.min() and heights.max() < 4300  # heights, not colours nor fill
    with rasterio.open(tmp_path / "virtual.tif") as a, rasterio.open(tmp_path / "file.tif") as b:
        fetched, direct = a.read(1, masked=True), b.read(1, masked=True)
        assert a.tags()["units"] == b.tags()["units"] == "m"
    assert 2500 < fetched.mean() < 4000  # metres of the Rocky Mountains, not colours
    assert abs(fetched.mean() - direct.mean()) < 5 and np.ma.corrcoef(fetched.ravel(), direct.ravel())[0, 1] > 0.995


def test_finetune_on_a_dem_that_is_not_a_file(d3_provider, tiny_weights, virtual_dem, tmp_path):
    """A DEM to train on that is not a file is fetched over the image (here without an Extent: all of it)."""
    feedback = RecordingFeedback()
    with rasterio.open(SAMPLE_RGB) as src:
        row, col = src.index(-105.85, 40.50)
    image = crop_raster(SAMPLE_RGB, tmp_path / "image.tif", col, row, 200, 150)  # 0.3 x 0.225 degrees, in the DEM
    run("d3rsmde:finetune", {"IMAGE": str(image), "DEM": virtual_dem.id(), "PIXEL_SIZE": 100, "EPOCHS": 1,
                             "TILE": 32, "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
                             "OUTPUT": str(tmp_path / "tuned.safetensors")}, feedback)
    fetched = next(line for line in feedback.infos if line.startswith("Fetched layer 'Heights' (virtualraster"))
    columns = int(fetched.split(": ")[1].split(" x ")[0])
    assert columns == pytest.approx(1.2 * 0.3 * 84_800 / 100, rel=0.02), fetched  # the image and a tenth each side
    assert (tmp_path / "tuned.safetensors").is_file()


def test_folder_with_a_reference_dem_that_is_not_a_file(d3_provider, tiny_weights, small_rgb, virtual_dem, tmp_path):
    """Each image gets the reference fetched over it; an image the layer does not reach is reported and skipped."""
    import shutil

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(small_rgb, images / "a.tif")
    with rasterio.open(small_rgb) as a:
        profile = dict(a.profile, transform=a.transform * a.transform.translation(0, 10_000))  # far south
        data = a.read()
    with rasterio.open(images / "c.tif", "w", **profile) as c:
        c.write(data)
    feedback = RecordingFeedback()
    result = run("d3rsmde:estimatedepthfolder", {
        "INPUT_FOLDER": str(images), "PATTERN": "*.tif", "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
        "REFINE_STEPS": 0, "REFERENCE_DEM": virtual_dem.id(), "PIXEL_SIZE": 100,
        "OUTPUT_FOLDER": str(tmp_path / "metres")}, feedback)
    assert (result["PROCESSED"], result["FAILED"]) == (1, 1)
    with rasterio.open(result["OUTPUTS"][0]) as out:
        assert out.tags()["units"] == "m" and 2000 < out.read(1, masked=True).mean() < 4500
    assert sum(line.startswith("Fetched layer 'Heights' (virtualraster") for line in feedback.infos) == 1
    assert len(feedback.errors) == 1 and feedback.errors[0].startswith("c.tif: Layer 'Heights' has nothing to fetch")


def test_folder_patterns_match_in_any_case(tmp_path):
    """Landsat names its bands .TIF: the default pattern takes them, once each, and nothing else."""
    from d3rsmde_qgis.algorithms.estimate_depth_folder import DEFAULT_PATTERN, matching_files

    for name in ["LC09_SR_B4.TIF", "scene.tif", "tile.JPG", "notes.txt", "scene.tif.aux.xml"]:
        (tmp_path / name).write_text("x")
    (tmp_path / "sub.tif").mkdir()
    assert [p.name for p in matching_files(tmp_path, DEFAULT_PATTERN)] == ["LC09_SR_B4.TIF", "scene.tif", "tile.JPG"]
    assert [p.name for p in matching_files(tmp_path, "*.tif;*.TIF")] == ["LC09_SR_B4.TIF", "scene.tif"]


def test_folder_loads_once_and_skips_bad_files(d3_provider, tiny_weights, small_rgb, tmp_path):
    from d3rsmde_qgis.cache import pipeline_for

    images = tmp_path / "images"
    images.mkdir()
    crop_raster(small_rgb, images / "a.tif", 0, 0, 64, 64)
    crop_raster(small_rgb, images / "b.tif", 16, 8, 80, 64)
    (images / "broken.tif").write_bytes(b"not a raster")
    (images / "notes.txt").write_text("ignored: does not match the pattern")
    pipeline_for.cache_clear()
    feedback = RecordingFeedback()
    result = run("d3rsmde:estimatedepthfolder", {
        "INPUT_FOLDER": str(images), "WEIGHTS": str(tiny_weights), "DEVICE": CPU, "REFINE_STEPS": 1,
        "BANDS": "3;2;1",  # the separator Estimate depth's band list uses; commas work too
        "OUTPUT_FOLDER": str(tmp_path / "depth")}, feedback)
    assert (result["PROCESSED"], result["FAILED"]) == (2, 1)
    assert [Path(p).name for p in result["OUTPUTS"]] == ["a_depth.tif", "b_depth.tif"]
    for name, output in zip("ab", result["OUTPUTS"]):
        with rasterio.open(images / f"{name}.tif") as src, rasterio.open(output) as out:
            assert (out.transform, out.shape) == (src.transform, src.shape)
    assert len(feedback.errors) == 1 and feedback.errors[0].startswith("broken.tif:")
    assert pipeline_for.cache_info().misses == 1
    # With a reference DEM every output is in metres; an image it does not cover is reported and skipped.
    far = images / "c.tif"
    with rasterio.open(images / "a.tif") as a:
        profile = dict(a.profile, transform=a.transform * a.transform.translation(0, 10_000))  # far south
        data = a.read()
    with rasterio.open(far, "w", **profile) as c:
        c.write(data)
    feedback = RecordingFeedback()
    result = run("d3rsmde:estimatedepthfolder", {
        "INPUT_FOLDER": str(images), "PATTERN": "a.tif;c.tif", "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
        "REFINE_STEPS": 1, "REFERENCE_DEM": str(SAMPLE_DEM), "OUTPUT_FOLDER": str(tmp_path / "metres")}, feedback)
    assert (result["PROCESSED"], result["FAILED"]) == (1, 1)
    with rasterio.open(result["OUTPUTS"][0]) as out:
        assert out.tags()["units"] == "m" and 2000 < out.read(1, masked=True).mean() < 4500
    assert len(feedback.errors) == 1 and feedback.errors[0].startswith("c.tif:")
    # A lake drawn over part of a.tif is left out of a.tif only: c.tif, far from it, runs as before, unwarned.
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    with rasterio.open(images / "a.tif") as a:
        (left, bottom, right, top), shape = a.bounds, a.shape
    lake = QgsVectorLayer(f"Polygon?crs={profile['crs'].to_string()}", "lake", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(left, bottom, (left + right) / 2, top)))
    assert lake.dataProvider().addFeatures([feature])
    feedback = RecordingFeedback()
    result = run("d3rsmde:estimatedepthfolder", {
        "INPUT_FOLDER": str(images), "PATTERN": "a.tif;c.tif", "EXCLUDE": lake, "WEIGHTS": str(tiny_weights),
        "DEVICE": CPU, "REFINE_STEPS": 0, "OUTPUT_FOLDER": str(tmp_path / "lake")}, feedback)
    assert result["PROCESSED"] == 2 and not any("leave out" in w for w in feedback.warnings), feedback.warnings
    for output, left_out in zip(result["OUTPUTS"], [shape[1] // 2, 0]):
        with rasterio.open(output) as out:
            assert out.read(1, masked=True).mask.sum(axis=1).tolist() == [left_out] * shape[0], output


def test_evaluate_returns_metrics_and_html(d3_provider, tiny_weights, small_rgb, tmp_path):
    depth = tmp_path / "depth.tif"
    run("d3rsmde:estimatedepth", {"INPUT": str(small_rgb), "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
                                  "OUTPUT": str(depth)})
    same = run("d3rsmde:evaluate", {"PREDICTION": str(depth), "REFERENCE": str(depth),
                                    "OUTPUT_HTML": str(tmp_path / "same.html")})
    assert same["MAE"] == pytest.approx(0.0) and same["WHOLE_RMSE"] == pytest.approx(0.0, abs=1e-6)
    assert same["SSIM"] == pytest.approx(1.0)
    real = run("d3rsmde:evaluate", {"PREDICTION": str(depth), "REFERENCE": str(SAMPLE_DEM),
                                    "OUTPUT_HTML": str(tmp_path / "dem.html")})
    assert real["MAE"] > 0 and 0 <= real["DELTA1"] <= real["DELTA2"] <= real["DELTA3"] <= 1
    page = Path(real["OUTPUT_HTML"]).read_text(encoding="utf-8")
    assert "MAE" in page and f"{real['MAE']:.2f}" in page and "rmnp-dem.tif" in page
    assert real["SCENE_MAE"] is None and "Whole scene" not in page  # opt-in


def test_evaluate_whole_scene_and_paired_difference(d3_provider, tiny_weights, tmp_path):
    """The whole-scene figures of the model card with standard errors, and a paired comparison of two predictions
    of the sample (1 and 0 refinement steps) whose difference is exactly the difference of their own figures."""
    maps = {}
    for steps in (1, 0):
        maps[steps] = tmp_path / f"T{steps}.tif"
        run("d3rsmde:estimatedepth", {"INPUT": str(SAMPLE_RGB), "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
                                      "REFINE_STEPS": steps, "OUTPUT": str(maps[steps])})
    alone = {steps: run("d3rsmde:evaluate", {"PREDICTION": str(path), "REFERENCE": str(SAMPLE_DEM),
                                             "WHOLE_SCENE": True, "OUTPUT_HTML": str(tmp_path / f"{steps}.html")})
             for steps, path in maps.items()}
    for result in alone.values():
        assert 0 < result["SCENE_MAE"] < 255 and result["SCENE_MAE_SE"] > 0 and -1 <= result["SCENE_GRAD_R"] <= 1
        assert result["VERSUS_MAE_DIFF"] is None
    paired = run("d3rsmde:evaluate", {"PREDICTION": str(maps[1]), "REFERENCE": str(SAMPLE_DEM),
                                      "VERSUS": str(maps[0]), "OUTPUT_HTML": str(tmp_path / "paired.html")})
    for key in ("MAE", "SSIM", "GRAD_R"):
        expected = alone[1][f"SCENE_{key}"] - alone[0][f"SCENE_{key}"]
        assert paired[f"VERSUS_{key}_DIFF"] == pytest.approx(expected, abs=1e-9)
        assert paired[f"VERSUS_{key}_DIFF_SE"] > 0
    page = Path(paired["OUTPUT_HTML"]).read_text(encoding="utf-8")
    assert "Whole scene" in page and "Minus T0.tif" in page and f"{paired['VERSUS_MAE_DIFF']:+.4g}" in page
    with pytest.raises(Exception, match="other prediction"):  # the report may not overwrite an input
        run("d3rsmde:evaluate", {"PREDICTION": str(maps[1]), "REFERENCE": str(SAMPLE_DEM), "VERSUS": str(maps[0]),
                                 "OUTPUT_HTML": str(maps[0])})


def test_finetune_writes_loadable_weights(d3_provider, tiny_weights, tmp_path):
    from d3rsmde.checkpoint import describe_checkpoint
    from d3rsmde.pipeline import D3Pipeline

    output = tmp_path / "tuned.safetensors"
    feedback = RecordingFeedback()
    stack = blue_first_stack(SAMPLE_RGB, tmp_path / "stack.tif")  # 6 bands naming no colour, blue first
    result = run("d3rsmde:finetune", {  # ~250 x 160 px of the sample inside the DEM: 2 x 2 split blocks
        "IMAGE": str(stack), "BANDS": "3,2,1", "DEM": str(SAMPLE_DEM),
        "EXTENT": "-105.90,-105.52,40.30,40.54 [EPSG:4326]",
        "EPOCHS": 1, "TILE": 32, "WEIGHTS": str(tiny_weights), "DEVICE": CPU, "OUTPUT": str(output)}, feedback)
    assert result["OUTPUT"] == str(output)
    tuned = D3Pipeline.from_pretrained(output, device="cpu")
    assert tuned.config.name == "tiny"
    assert "bands: [3, 2, 1]" in feedback.infos and not feedback.warnings, (feedback.infos, feedback.warnings)
    guessed = RecordingFeedback()  # the bands left automatic: blue taken as red, and the log says so
    guessed_result = run("d3rsmde:finetune", {
        "IMAGE": str(stack), "DEM": str(SAMPLE_DEM), "EXTENT": "-105.90,-105.52,40.30,40.54 [EPSG:4326]",
        "EPOCHS": 1, "REFINER_EPOCHS": 1, "TILE": 32, "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
        "OUTPUT": "TEMPORARY_OUTPUT"}, guessed)
    assert "bands: [1, 2, 3]" in guessed.infos and any("3,2,1 for Landsat 4-7" in w for w in guessed.warnings)
    assert any("temporary folder" in w for w in guessed.warnings)  # QGIS deletes it on exit: the user is told
    epochs = [json.loads(describe_checkpoint(path)["metadata"]["finetune"])["refiner_epochs"]
              for path in (output, guessed_result["OUTPUT"])]
    assert epochs == [0, 1]  # the refiner is kept unless Refiner epochs (advanced) asks
    assert any(line.startswith("after: mae ") for line in feedback.infos), feedback.infos
    change = next(line for line in feedback.infos if line.startswith("change: "))  # after minus before, paired
    assert change.startswith("change: mae +") or change.startswith("change: mae -"), change
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    clouds = QgsVectorLayer("Polygon?crs=EPSG:4326", "clouds over all of it", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromWkt("POLYGON((-106.1 40, -105.2 40, -105.2 40.7, -106.1 40.7, -106.1 40))"))
    assert clouds.dataProvider().addFeatures([feature])
    with pytest.raises(QgsProcessingException, match=r"no valid pixels in the chosen extent \(all nodata, masked or"):
        run("d3rsmde:finetune", {"IMAGE": str(SAMPLE_RGB), "DEM": str(SAMPLE_DEM), "EXCLUDE": clouds, "EPOCHS": 1,
                                 "TILE": 32, "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
                                 "OUTPUT": str(tmp_path / "none.safetensors")})
    assert not (tmp_path / "none.safetensors").exists()


def test_finetune_on_a_web_map_fetches_it_where_the_dem_is(d3_provider, tiny_weights, web_maps, tmp_path):
    """An image that is not a file is fetched over the training Extent, or without one over the DEM's extent."""
    layer = web_maps(SAMPLE_RGB)
    for name, extent in [("extent", "-105.90,-105.52,40.30,40.54 [EPSG:4326]"), ("dem", None)]:
        feedback = RecordingFeedback()
        run("d3rsmde:finetune", {"IMAGE": layer.id(), "DEM": str(SAMPLE_DEM), "EXTENT": extent, "PIXEL_SIZE": 150,
                                 "EPOCHS": 1, "TILE": 32, "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
                                 "OUTPUT": str(tmp_path / f"{name}.safetensors")}, feedback)
        fetched = next(line for line in feedback.infos if line.startswith("Fetched layer 'Satellite basemap'"))
        columns, rows = (int(n) for n in fetched.split(": ")[1].split(" pixels")[0].split(" x "))
        with rasterio.open(SAMPLE_DEM) as dem:  # about 0.0029 degrees of longitude per DEM pixel
            expected = 0.38 if extent else dem.bounds.right - dem.bounds.left
        assert columns == pytest.approx(expected * 85_200 / 150, rel=0.03), fetched  # 85.2 km per degree at 40.1 N
        assert (tmp_path / f"{name}.safetensors").is_file()


# -- qgis_process and the desktop dialog, in subprocesses ------------------------------------------------------


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    """One isolated QGIS profile for the qgis_process calls (scripts/qgis_env.sh enables the plugin once)."""
    return tmp_path_factory.mktemp("qgis-profile")


def test_qgis_process_lists_the_algorithms(profile):
    from demo import qgis_process

    listing = qgis_process(["list"], profile, capture_output=True, text=True, check=True).stdout
    assert all(f"\t{alg_id}\t" in listing for alg_id in ALGORITHM_IDS), listing


def test_demo_runs_estimatedepth_through_qgis_process(tiny_weights, small_rgb, tmp_path):
    """scripts/demo.py = `qgis_process.bin run d3rsmde:estimatedepth -- INPUT=... OUTPUT=...` + a preview."""
    from demo import main
    from matplotlib.image import imread

    main(["--out", str(tmp_path), "--weights", str(tiny_weights), "--input", str(small_rgb)])
    with rasterio.open(small_rgb) as src, rasterio.open(tmp_path / "rmnp-small-depth.tif") as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
    preview = imread(tmp_path / "rmnp-small-preview.png")
    assert preview.shape[1] > 2 * preview.shape[0] and preview[..., :3].std() > 0.05


def test_qgis_process_reads_comma_separated_bands(profile, tiny_weights, band_layers, tmp_path):
    """`BANDS=4,3,2` on the command line (text with commas) selects bands 4, 3, 2, as `4;3;2` does."""
    from demo import qgis_process

    output = tmp_path / "s2.tif"
    result = qgis_process(["run", "d3rsmde:estimatedepth", "--", f"INPUT={band_layers['sentinel2']}", "BANDS=4,3,2",
                           f"WEIGHTS={tiny_weights}", "REFINE_STEPS=0", f"OUTPUT={output}"], profile,
                          capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bands: [4, 3, 2]" in result.stdout and output.is_file()


def test_qgis_process_reads_a_web_map_by_provider_and_source(profile, tiny_weights, small_rgb, tmp_path):
    """`INPUT=wms://type=xyz&url=...` on the command line: a web map named as the README shows, fetched."""
    from demo import qgis_process
    from synthetic import xyz_tiles

    uri = xyz_tiles(small_rgb, tmp_path / "tiles", zoom=10)
    with rasterio.open(small_rgb) as src:
        left, bottom, right, top = src.bounds
    output = tmp_path / "web.tif"
    result = qgis_process(["run", "d3rsmde:estimatedepth", "--", f"INPUT=wms://{uri}", "PIXEL_SIZE=150",
                           f"EXTENT={left},{right},{bottom},{top} [EPSG:4326]", f"WEIGHTS={tiny_weights}",
                           "REFINE_STEPS=0", f"OUTPUT={output}"], profile, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Fetched layer 'wms layer' (wms, not a file)" in result.stdout, result.stdout  # not '{y}' (3.40)
    with rasterio.open(output) as ds:
        assert ds.crs == "EPSG:3857" and ds.read(1, masked=True).count() > 0


def test_missing_torch_is_explained(profile, small_rgb, tmp_path):
    """A Python where `import torch` fails: the provider still loads and the run names what to install."""
    from demo import qgis_process

    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class BlockTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, BlockTorch())\n")
    env = {"PYTHONPATH": str(blocker)}
    listing = qgis_process(["list"], profile, env, capture_output=True, text=True).stdout
    assert "d3rsmde:estimatedepth" in listing
    output = tmp_path / "depth.tif"
    result = qgis_process(["run", "d3rsmde:estimatedepth", "--", f"INPUT={small_rgb}", f"OUTPUT={output}"],
                          profile, env, capture_output=True, text=True)
    message = result.stdout + result.stderr
    assert result.returncode != 0 and not output.exists()
    assert "cannot import:\n  - torch (No module named 'torch')" in message
    assert 'pip install "torch==2.14.1"' in message and "make setup" in message
    assert "OSGeo4W Shell" in message and "Install Python packages" in message
    assert "- timm" not in message  # timm is installed; it only failed because of torch


DESKTOP_PROBE = """
import sys
import torch
import qgis.utils
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QTimer
provider = QgsApplication.processingRegistry().providerById("d3rsmde")
with open({report!r}, "w") as report:
    print(sys.prefix, torch.__version__, "d3rsmde_qgis" in qgis.utils.active_plugins,
          provider is not None and len(provider.algorithms()), file=report)
QTimer.singleShot(0, QgsApplication.instance().quit)
"""


def test_run_qgis_sh_gives_desktop_qgis_the_venv(tmp_path):
    """The documented desktop launcher: QGIS's Python is the venv (torch importable) and the plugin starts."""
    venv_bin = str(Path(sys.executable).parent)
    profile = tmp_path / "profile"
    ini = profile / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\nd3rsmde_qgis=true\n")
    probe, report = tmp_path / "probe.py", tmp_path / "report.txt"
    probe.write_text(DESKTOP_PROBE.format(report=str(report)))
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env = {**os.environ, "PATH": path, "QT_QPA_PLATFORM": "xcb", "XDG_RUNTIME_DIR": str(tmp_path),
           "QGIS_CUSTOM_CONFIG_PATH": str(profile), "QGIS_PLUGINPATH": str(REPO)}
    subprocess.run(["xvfb-run", "-a", str(REPO / "scripts" / "run_qgis.sh"), "--nologo", "--code", str(probe)],
                   env=env, check=True, timeout=120, capture_output=True)
    prefix, torch_version, plugin_active, algorithms = report.read_text().split()
    assert Path(prefix) == Path(venv_bin).parent and torch_version
    assert (plugin_active, algorithms) == ("True", "4")


DIALOG_SNAPSHOT = """
import sys
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QSize
app = QgsApplication([], True)
app.initQgis()
sys.path.append(QgsApplication.pkgDataPath() + "/python/plugins")
from processing.core.Processing import Processing
from processing.gui.AlgorithmDialog import AlgorithmDialog
Processing.initialize()
import d3rsmde_qgis
plugin = d3rsmde_qgis.classFactory(None)  # keep a reference: the provider's Python side must outlive the dialog
plugin.initProcessing()
dialog = AlgorithmDialog(QgsApplication.processingRegistry().createAlgorithmById("d3rsmde:estimatedepth"), False, None)
dialog.resize(QSize(900, 650))
dialog.show()
for _ in range(20):
    app.processEvents()
assert dialog.grab().save(sys.argv[1])
"""


def test_algorithm_dialog_renders_under_xvfb(tmp_path):
    from qgis.PyQt.QtGui import QImage

    shot = REPO / "tests" / "artifacts" / "estimatedepth-dialog.png"
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb", "XDG_RUNTIME_DIR": str(tmp_path),
           "QGIS_CUSTOM_CONFIG_PATH": str(tmp_path / "profile"), "PYTHONPATH": str(REPO)}
    subprocess.run(["xvfb-run", "-a", sys.executable, "-c", DIALOG_SNAPSHOT, str(shot)],
                   env=env, check=True, timeout=120)
    image = QImage(str(shot))
    assert image.width() >= 800 and image.height() >= 600
    pixels = np.array([image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)])
    assert len(np.unique(pixels)) > 20  # text, widgets and the help panel, not a blank window
