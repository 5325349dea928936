"""Areas left out of a prediction (clouds, water): nodata for the stretch, the model and the output, exactly as the
raster's own nodata is, whether they come as a mask raster on any grid or as polygons in any CRS."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform_geom

from d3rsmde.errors import InputError
from d3rsmde.raster import predict_raster
from test_raster import METRE_PIXELS, UTM, height_image, terrain_m, write

CLOUD = np.s_[40:80, 60:120]  # rows, columns of the white cloud


@pytest.fixture
def scene(tmp_path):
    """An 8-bit RGB image with a saturated white cloud and no nodata (bare.tif), the same image with the cloud
    transparent (alpha.tif), and the cloud as a mask raster on the image's grid (mask.tif)."""
    image = np.repeat((height_image(terrain_m(160, 200)) // 256).astype(np.uint8)[None], 3, axis=0)
    image[(slice(None), *CLOUD)] = 255
    cloud = np.zeros(image.shape[1:], bool)
    cloud[CLOUD] = True
    write(tmp_path / "bare.tif", image)
    write(tmp_path / "alpha.tif", np.concatenate([image, 255 * (~cloud)[None].astype(np.uint8)]),
          photometric="RGB", alpha="YES")
    write(tmp_path / "mask.tif", cloud.astype(np.uint8))
    return tmp_path, cloud


def height(path) -> np.ma.MaskedArray:
    with rasterio.open(path) as ds:
        return ds.read(1, masked=True)


def cloud_polygon(inset: float = 0.25) -> dict:
    """The cloud's pixels as a polygon in the image's CRS, drawn ``inset`` pixels inside their outline."""
    (r0, r1), (c0, c1) = (CLOUD[0].start, CLOUD[0].stop), (CLOUD[1].start, CLOUD[1].stop)
    corners = [(c0 + inset, r0 + inset), (c1 - inset, r0 + inset), (c1 - inset, r1 - inset), (c0 + inset, r1 - inset)]
    ring = [METRE_PIXELS * corner for corner in corners]
    return {"type": "Polygon", "coordinates": [ring + ring[:1]]}


def test_left_out_areas_are_nodata_exactly_as_the_rasters_own(scene, tiny):
    """A mask raster, polygons given in the image's CRS, a GeoJSON file in WGS 84 and one naming its CRS all give
    the map of the image whose cloud is transparent, bit for bit; the cloud no longer sets the stretch."""
    folder, cloud = scene
    run = dict(refine_steps=0)
    alpha = predict_raster(folder / "alpha.tif", folder / "alpha-map.tif", tiny, **run)
    bare = predict_raster(folder / "bare.tif", folder / "bare-map.tif", tiny, **run)
    reference = height(folder / "alpha-map.tif")
    assert np.array_equal(reference.mask, cloud)
    assert not height(folder / "bare-map.tif").mask.any()
    wgs84 = transform_geom(UTM, "EPSG:4326", cloud_polygon())
    (folder / "wgs84.geojson").write_text(json.dumps(
        {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": wgs84}]}))
    (folder / "utm.json").write_text(json.dumps(
        {"type": "Feature", "geometry": cloud_polygon(), "crs": {"type": "name", "properties": {"name": UTM}}}))
    for name, exclude in [("mask", folder / "mask.tif"), ("polygons", [cloud_polygon()]),
                          ("wgs84", str(folder / "wgs84.geojson")), ("utm", folder / "utm.json")]:
        stats = predict_raster(folder / "bare.tif", folder / f"{name}-map.tif", tiny, exclude=exclude, **run)
        left_out = height(folder / f"{name}-map.tif")
        assert np.array_equal(left_out.mask, cloud), name
        assert np.array_equal(left_out, reference), name
        assert stats["stretch"] == alpha["stretch"], name
        assert not any("leave out" in w for w in stats["warnings"]), name
    assert max(bare["stretch"]["high"]) == 255 > max(alpha["stretch"]["high"])  # the cloud set the stretch's top


def test_a_coarse_mask_in_another_crs_covers_the_cloud(scene, tiny):
    """A cloud mask in WGS 84 at about 3 m (the image: 1 m UTM), drawn over the cloud grown by half a metre, leaves
    out every image pixel it touches: the whole cloud and a rim of a few pixels."""
    folder, cloud = scene
    with rasterio.open(folder / "bare.tif") as ds:
        west, south, east, north = rasterio.warp.transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    step = 3 / 111_000  # degrees: about 3 m
    rows, cols = int((north - south) / step) + 1, int((east - west) / step) + 1
    transform = from_origin(west, north, step, step)
    mask = np.zeros((rows, cols), np.uint8)
    polygon = transform_geom(UTM, "EPSG:4326", cloud_polygon(inset=-0.5))
    mask[rasterio.features.geometry_mask([polygon], (rows, cols), transform, invert=True, all_touched=True)] = 1
    write(folder / "coarse.tif", mask, crs="EPSG:4326", transform=transform)
    predict_raster(folder / "bare.tif", folder / "map.tif", tiny, refine_steps=0, exclude=folder / "coarse.tif")
    left_out = height(folder / "map.tif").mask
    assert left_out[cloud].all()
    assert cloud.sum() < left_out.sum() < 1.6 * cloud.sum()


def test_bad_areas_to_leave_out_are_refused_or_warned_about(scene, tiny):
    folder, _ = scene
    run = dict(refine_steps=0)
    (folder / "points.geojson").write_text(json.dumps({"type": "Point", "coordinates": [15.0, 42.0]}))
    with pytest.raises(InputError, match=r"^points.geojson must hold polygons \(areas\), not Point$"):
        predict_raster(folder / "bare.tif", folder / "out.tif", tiny, exclude=folder / "points.geojson", **run)
    with pytest.raises(InputError, match="^cannot read the areas to leave out from missing.geojson"):
        predict_raster(folder / "bare.tif", folder / "out.tif", tiny, exclude=folder / "missing.geojson", **run)
    (folder / "list.json").write_text("[1, 2]")
    with pytest.raises(InputError, match=r"^list.json is no GeoJSON object"):
        predict_raster(folder / "bare.tif", folder / "out.tif", tiny, exclude=folder / "list.json", **run)
    for shape in [(10, 10), (160, 200)]:  # a mask without a CRS on an image with one: not placed, whatever its size
        write(folder / "bare-mask.tif", np.ones(shape, np.uint8), crs=None)
        with pytest.raises(InputError, match="^the mask bare-mask.tif cannot be placed on bare.tif"):
            predict_raster(folder / "bare.tif", folder / "out.tif", tiny, exclude=folder / "bare-mask.tif", **run)
    with pytest.raises(InputError, match="mask.tif is the exclusion mask raster; choose another output path"):
        predict_raster(folder / "bare.tif", folder / "mask.tif", tiny, exclude=folder / "mask.tif", **run)
    assert not (folder / "out.tif").exists()
    far = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}  # 4,650 km away, in UTM metres
    stats = predict_raster(folder / "bare.tif", folder / "out.tif", tiny, exclude=[far], **run)
    assert any("the areas to leave out (1 polygon(s)) cover none of bare.tif" in w for w in stats["warnings"])
    assert not height(folder / "out.tif").mask.any()


def test_without_a_crs_a_mask_of_the_same_size_is_read_pixel_for_pixel(scene, tiny):
    folder, cloud = scene
    with rasterio.open(folder / "bare.tif") as ds:
        write(folder / "no-crs.tif", ds.read(), crs=None)
    write(folder / "no-crs-mask.tif", cloud.astype(np.uint8), crs=None)
    predict_raster(folder / "no-crs.tif", folder / "map.tif", tiny, refine_steps=0, exclude=folder / "no-crs-mask.tif")
    assert np.array_equal(height(folder / "map.tif").mask, cloud)
    with pytest.raises(InputError, match="^no-crs.tif has no CRS, so the polygons of clouds.geojson cannot be placed"):
        (folder / "clouds.geojson").write_text(json.dumps(cloud_polygon()))
        predict_raster(folder / "no-crs.tif", folder / "out.tif", tiny, exclude=folder / "clouds.geojson")


def test_a_class_raster_leaves_out_the_given_classes(scene, tiny):
    """A scene classification at 2 m in another CRS (vegetation 4, cloud 9, cloud shadow 3), as Sentinel-2 L2A's
    SCL band is: values 3, 8, 9, 10 leave out the cloud and its shadow, and nothing else; read as a plain mask
    (any nonzero value) it leaves out everything, which is refused; a GeoJSON file takes no values."""
    from d3rsmde.raster.exclusion import MaskRaster

    folder, cloud = scene
    shadow = np.zeros_like(cloud)
    shadow[100:120, 20:40] = True
    with rasterio.open(folder / "bare.tif") as ds:
        west, south, east, north = rasterio.warp.transform_bounds(ds.crs, "EPSG:3857", *ds.bounds)
    step = 2.0 * 1.38  # EPSG:3857 metres at 42 N: about 2 m on the ground
    transform = from_origin(west, north, step, step)
    rows, cols = int((north - south) / step) + 1, int((east - west) / step) + 1
    classes = np.full((rows, cols), 4, np.uint8)
    for area, code in [(cloud, 9), (shadow, 3)]:
        (r0, r1), (c0, c1) = [(int(i.min()), int(i.max()) + 1) for i in np.nonzero(area)]
        ring = [METRE_PIXELS * corner for corner in [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)]]
        polygon = transform_geom(UTM, "EPSG:3857", {"type": "Polygon", "coordinates": [ring]})
        classes[rasterio.features.geometry_mask([polygon], classes.shape, transform, invert=True,
                                                all_touched=True)] = code
    write(folder / "scl.tif", classes, crs="EPSG:3857", transform=transform, nodata=0)
    predict_raster(folder / "bare.tif", folder / "map.tif", tiny, refine_steps=0,
                   exclude=MaskRaster(folder / "scl.tif", values=(3, 8, 9, 10)))
    left_out = height(folder / "map.tif").mask
    assert left_out[cloud].all() and left_out[shadow].all()
    assert left_out.sum() < 1.3 * (cloud.sum() + shadow.sum())
    with pytest.raises(InputError, match="^bare.tif has no valid pixels"):
        predict_raster(folder / "bare.tif", folder / "out.tif", tiny, refine_steps=0, exclude=folder / "scl.tif")
    (folder / "clouds.geojson").write_text(json.dumps(transform_geom(UTM, "EPSG:4326", cloud_polygon())))
    with pytest.raises(InputError, match="^clouds.geojson holds polygons: values to leave out apply to a mask"):
        predict_raster(folder / "bare.tif", folder / "out.tif", tiny,
                       exclude=MaskRaster(folder / "clouds.geojson", values=(9,)))
    with pytest.raises(InputError, match="scl.tif is the exclusion mask raster"):
        predict_raster(folder / "bare.tif", folder / "scl.tif", tiny, exclude=MaskRaster(folder / "scl.tif", (9,)))
    far = from_origin(west + 10_000, north, step, step)  # a mask 10 km east: a warning, nothing left out
    write(folder / "far.tif", classes, crs="EPSG:3857", transform=far, nodata=0)
    stats = predict_raster(folder / "bare.tif", folder / "far-map.tif", tiny, refine_steps=0,
                           exclude=folder / "far.tif")
    assert any("the areas to leave out (far.tif) cover none of bare.tif" in w for w in stats["warnings"])
    assert not height(folder / "far-map.tif").mask.any()


def test_many_polygons_are_each_left_out_wherever_tiles_cut_them(scene, tiny):
    """200 small polygons over the scene (each tile rasterizes only those whose bounds reach it): the map leaves
    out exactly what rasterizing them all over the whole grid gives, across every tile edge."""
    folder, _ = scene
    rng = np.random.default_rng(0)
    angles = np.linspace(0, 2 * np.pi, 17)
    polygons = []
    for x, y, r in zip(rng.uniform(0, 200, 200), rng.uniform(0, 160, 200), rng.uniform(0.5, 4, 200)):
        ring = [METRE_PIXELS * (x + r * np.cos(a), y + r * np.sin(a)) for a in angles]
        polygons.append({"type": "Polygon", "coordinates": [ring]})
    predict_raster(folder / "bare.tif", folder / "map.tif", tiny, refine_steps=0, exclude=polygons)
    whole = rasterio.features.geometry_mask(polygons, (160, 200), METRE_PIXELS, invert=True, all_touched=True)
    assert np.array_equal(height(folder / "map.tif").mask, whole)


def test_a_mask_raster_is_opened_once_per_pass_not_per_tile(scene, tiny, monkeypatch):
    from d3rsmde.raster import exclusion

    folder, cloud = scene
    opened = []

    def counting_open(path):
        opened.append(path)
        return open_raster(path)

    open_raster = exclusion.open_raster
    monkeypatch.setattr(exclusion, "open_raster", counting_open)
    stats = predict_raster(folder / "bare.tif", folder / "map.tif", tiny, refine_steps=0, exclude=folder / "mask.tif")
    assert np.array_equal(height(folder / "map.tif").mask, cloud)
    assert stats["tiles"] >= 9 and len(opened) <= 4, (stats["tiles"], len(opened))  # checks, stretch, warning, pass
