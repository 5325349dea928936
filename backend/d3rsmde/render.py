"""Plausible optical images rendered from real DEMs, so the coarse model can learn relief from millions of
terrain pixels although co-registered image/DEM pairs at user scales are scarce.

One call, :func:`render_dem`, turns a height map into an RGB image on the same grid, the way a sensor would
see it: sun from a direction drawn like real acquisitions (mid-morning sun-synchronous passes, both
hemispheres, all seasons), Lambertian direct light with cast shadows plus sky light, land cover whose albedo
follows elevation, slope, aspect and wetness (water, fields, grass, steppe, forest, rock, snow, each with
texture; in dry climates a lower tree line with bright bare ground below it; in settled lowlands towns and
fields on the flats and forest on the hills), optional cloud, haze, sensor noise,
colour and gamma jitter. Everything is drawn from one seed, so a render is reproducible. The heights themselves
are never changed: the image is made to fit the terrain, not the reverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import InputError

# Land-cover classes and their base reflectance (linear RGB, roughly Sentinel-2/Landsat true colour).
CLASSES = ("water", "fields", "grass", "steppe", "forest", "rock", "snow", "urban")
ALBEDO = {
    "water": (0.03, 0.05, 0.07),
    "fields": (0.16, 0.17, 0.09),
    "grass": (0.10, 0.13, 0.06),
    "steppe": (0.21, 0.17, 0.12),  # dry grass and bare soil: as bright as rock
    "forest": (0.04, 0.07, 0.035),
    "rock": (0.20, 0.18, 0.16),
    "snow": (0.80, 0.82, 0.86),
    "urban": (0.15, 0.14, 0.14),  # roofs, streets and yards: grey, brighter than fields
}


@dataclass(frozen=True)
class Sun:
    """Sun direction: azimuth in degrees clockwise from north (towards the sun), elevation above the horizon."""

    azimuth: float
    elevation: float

    def vector(self) -> np.ndarray:
        """Unit vector towards the sun in (east, north, up)."""
        az, el = math.radians(self.azimuth), math.radians(self.elevation)
        return np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)])


def draw_sun(rng: np.random.Generator) -> Sun:
    """A sun as a mid-morning (about 10:30 local) sun-synchronous pass sees it: from the south-east in the
    northern hemisphere, the north-east in the southern one, 20-65 degrees up depending on season and latitude."""
    north = rng.random() < 0.7  # most land, and most users, are in the northern hemisphere
    azimuth = rng.uniform(115.0, 165.0) if north else rng.uniform(15.0, 65.0)
    return Sun(azimuth=float(azimuth), elevation=float(rng.uniform(20.0, 65.0)))


def surface_normals(dem: np.ndarray, gsd_m: float) -> np.ndarray:
    """Unit normals (east, north, up) of ``dem`` (rows north to south) with ``gsd_m`` metre pixels: 3 x H x W."""
    dz_drow, dz_dcol = np.gradient(dem.astype(np.float64), gsd_m)
    east, north = dz_dcol, -dz_drow  # rows grow southward
    n = np.stack([-east, -north, np.ones_like(east)])
    return n / np.linalg.norm(n, axis=0, keepdims=True)


def hillshade(dem: np.ndarray, gsd_m: float, sun: Sun) -> np.ndarray:
    """Lambertian cosine of the incidence angle, clipped at 0 (self-shadowed slopes)."""
    return np.clip(np.tensordot(sun.vector(), surface_normals(dem, gsd_m), axes=1), 0.0, 1.0)


def cast_shadows(dem: np.ndarray, gsd_m: float, sun: Sun, max_steps: int = 96) -> np.ndarray:
    """True where terrain between a pixel and the sun rises above the sun ray (shadow cast by another slope).

    Marches towards the sun one pixel at a time: a pixel is shaded when some pixel ``k`` steps sunward is higher
    than the ray climbing ``k * step * tan(elevation)`` from it. Outside the map counts as no obstacle.
    """
    h, w = dem.shape
    v = sun.vector()
    dx, dy = v[0], -v[1]  # towards the sun in (column, row) units
    norm = max(abs(dx), abs(dy))
    dx, dy = dx / norm, dy / norm
    rise = math.tan(math.radians(sun.elevation)) * gsd_m * math.hypot(dx, dy)
    relief = float(dem.max() - dem.min())
    steps = int(min(max_steps, math.ceil(relief / max(rise, 1e-9)) + 1))
    shade = np.zeros((h, w), bool)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    for k in range(1, steps + 1):
        r, c = rows + k * dy, cols + k * dx
        ahead = ndimage.map_coordinates(dem, [r, c], order=1, mode="constant", cval=-np.inf)
        shade |= ahead > dem + k * rise
    return shade


def smooth_noise(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    """Gaussian-filtered white noise with features about ``scale`` pixels across, standardised to mean 0, sd 1."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), max(scale, 0.5), mode="wrap")
    return (noise - noise.mean()) / max(noise.std(), 1e-9)


def land_cover(dem: np.ndarray, gsd_m: float, rng: np.random.Generator, sun: Sun,
               water_level: float | None = None, dry: bool = False, settled: bool = False) -> np.ndarray:
    """Class index (into :data:`CLASSES`) per pixel from elevation, slope, aspect and wetness.

    Snow and rock take the heights above a tree line and snow line drawn inside the scene's own height range;
    steep slopes are rock; forest fills the mid slopes (more on shaded, wetter slopes); valley floors and flats
    are fields or grass; flat ground at or below ``water_level`` (sea) and in flat depressions is water.
    A ``dry`` (semi-arid) scene also has a lower tree line: below it, steppe (higher up on slopes facing the sun).
    A ``settled`` lowland has towns and fields on its low flats and forest on the hills above them, as round
    coastal and river cities: there the bright ground is the low ground.
    """
    h, w = dem.shape
    normals = surface_normals(dem, gsd_m)
    slope = np.degrees(np.arccos(np.clip(normals[2], -1, 1)))
    lo, hi = np.percentile(dem, (1, 99))
    span = max(hi - lo, 1e-6)
    rel = (dem - lo) / span
    # Wetness: concavity (lower than the neighbourhood) on gentle slopes.
    concave = ndimage.gaussian_filter(dem, 4.0) - dem
    wet = concave / (np.abs(concave).std() + 1e-9) - slope / 15.0
    # Poleward-facing (shaded) slopes keep snow and forest lower down.
    sunward = np.tensordot(sun.vector()[:2], normals[:2], axes=1) / (np.linalg.norm(sun.vector()[:2]) + 1e-9)
    wobble = 0.06 * smooth_noise((h, w), rng, 6) - 0.04 * sunward
    treeline = rng.uniform(0.55, 1.2)  # >1: no tree line in this scene
    snowline = treeline + rng.uniform(0.1, 0.7)  # often above the summits: most scenes have little snow
    cls = np.full((h, w), CLASSES.index("grass"), np.uint8)
    # Forest edges follow the terrain (wet hollows, shaded slopes) more than chance: large random blobs would
    # teach the model brightness patches that say nothing about height.
    horizontal = normals[:2] / (np.linalg.norm(normals[:2], axis=0, keepdims=True) + 1e-9)
    facing_sun = np.tensordot(sun.vector()[:2] / (np.linalg.norm(sun.vector()[:2]) + 1e-9), horizontal, axes=1)
    forest_score = 0.5 * smooth_noise((h, w), rng, 3) + 0.8 * np.clip(wet, -2, 2) - 0.4 * facing_sun
    forest = (rel + wobble < treeline) & (slope < 38) & (forest_score > rng.uniform(-0.8, 0.2))
    cls[forest] = CLASSES.index("forest")
    if dry:
        lower_treeline = rng.uniform(0.15, 0.6) * min(treeline, 1.0)
        cls[rel + wobble - 0.1 * facing_sun < lower_treeline] = CLASSES.index("steppe")
    flat_low = (slope < 4) & (rel < 0.5)
    fields = flat_low & (smooth_noise((h, w), rng, 20) > rng.uniform(-1.0, 1.0))
    cls[fields] = CLASSES.index("fields")
    if settled:
        plain = (slope < rng.uniform(4.0, 10.0)) & (rel + wobble < rng.uniform(0.2, 0.45))
        cls[~plain & (slope < 38) & (rel + wobble < treeline)] = CLASSES.index("forest")
        cls[plain] = CLASSES.index("fields")
        cls[plain & (smooth_noise((h, w), rng, 15) > rng.uniform(0.0, 1.2))] = CLASSES.index("urban")
    cls[(slope > 38) | (rel + wobble > treeline + 0.05)] = CLASSES.index("rock")
    cls[(rel + wobble > snowline) & (slope < 50)] = CLASSES.index("snow")
    water = np.zeros((h, w), bool)
    if water_level is not None:
        water |= dem <= water_level
    if rng.random() < 0.3:  # a lake in a flat depression
        water |= (slope < 1.0) & (wet > 1.5) & (rel < 0.2)
    cls[water] = CLASSES.index("water")
    return cls


def albedo_image(cls: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel reflectance (3 x H x W) from classes: jittered class colours plus texture at several scales."""
    h, w = cls.shape
    image = np.zeros((3, h, w))
    for i, name in enumerate(CLASSES):
        where = cls == i
        if not where.any():
            continue
        base = np.asarray(ALBEDO[name]) * rng.uniform(0.7, 1.3) * rng.uniform(0.88, 1.12, 3)
        image[:, where] = base[:, None]
    texture = 1.0 + 0.12 * smooth_noise((h, w), rng, 1.0) + 0.10 * smooth_noise((h, w), rng, 5.0)
    patches = np.floor(smooth_noise((h, w), rng, 12.0) * 2.0)  # field parcels: piecewise-constant brightness
    texture *= np.where(cls == CLASSES.index("fields"), 1.0 + 0.15 * np.sin(3.1 * patches), 1.0)
    steppe = cls == CLASSES.index("steppe")
    if steppe.any():  # open woodland: scattered dark crowns
        texture *= np.where(steppe & (smooth_noise((h, w), rng, 0.7) > rng.uniform(0.8, 2.0)), 0.4, 1.0)
    urban = cls == CLASSES.index("urban")
    if urban.any():  # blocks of roofs, streets and trees at the pixel scale
        texture *= np.where(urban, np.clip(1.0 + 0.35 * smooth_noise((h, w), rng, 0.6), 0.3, 2.0), 1.0)
    texture = np.where(cls == CLASSES.index("water"), 1.0 + 0.03 * smooth_noise((h, w), rng, 3.0), texture)
    return image * texture[None]


def relief_exaggeration(dem: np.ndarray, gsd_m: float, rng: np.random.Generator) -> float:
    """Vertical exaggeration for the shading only, drawn so the scene's median slope looks 8-25 degrees steep.

    A coarse DEM is a smoothed version of steeper terrain: a 1 km grid of the Himalaya has median slopes of a few
    degrees, yet a real image at that scale shows the shading of the true slopes under each pixel. Normalising the
    apparent slope makes shading the cue it is in real images at every scale; nearly flat scenes stay flat-looking
    (at most 10x), and terrain already steep is never flattened (at least 1x).
    """
    dz_drow, dz_dcol = np.gradient(dem, gsd_m)
    median_slope = float(np.median(np.hypot(dz_drow, dz_dcol)))
    target = math.tan(math.radians(rng.uniform(8.0, 25.0)))
    return float(np.clip(target / max(median_slope, 1e-6), 1.0, 10.0))


def render_dem(dem: np.ndarray, gsd_m: float, seed: int, *, water_level: float | None = None,
               sun: Sun | None = None, clouds: bool | None = None, dry_share: float = 0.0,
               settled_share: float = 0.0) -> tuple[np.ndarray, dict]:
    """An 8-bit RGB image (3 x H x W) of ``dem`` (metres, H x W, north up, ``gsd_m`` metre pixels).

    ``seed`` fixes every random choice; ``sun`` and ``clouds`` override the drawn ones (tests). ``dry_share``: the
    chance that the scene is semi-arid, with bright dry ground below its forests (much of GLOBE tile G, the
    Rockies, the Andes); at 0 no draw is made, so renders stay those of releases before it; ``settled_share``
    likewise, the chance of a settled lowland (towns and fields on the flats). Also returns what was
    drawn (sun, exaggeration, haze...), so a dataset can record it.
    """
    dem = np.asarray(dem, dtype=np.float64)
    if dem.ndim != 2 or min(dem.shape) < 4:
        raise InputError(f"render_dem needs an H x W height map of at least 4 x 4 pixels, got shape {dem.shape}")
    if not np.isfinite(dem).all():
        raise InputError("render_dem: the height map has NaN/inf pixels; fill or crop them first")
    if not gsd_m > 0:
        raise InputError(f"render_dem: gsd_m must be positive, got {gsd_m}")
    rng = np.random.default_rng(seed)
    sun = sun or draw_sun(rng)
    exaggeration = relief_exaggeration(dem, gsd_m, rng)
    shaded_dem = dem * exaggeration
    # Land cover follows the terrain as it looks (the exaggerated slopes); water_level scales with the heights.
    drew_dry = dry_share > 0 and bool(rng.random() < dry_share)
    drew_settled = settled_share > 0 and bool(rng.random() < settled_share)
    cls = land_cover(shaded_dem, gsd_m, rng, sun, None if water_level is None else water_level * exaggeration,
                     dry=drew_dry, settled=drew_settled)
    albedo = albedo_image(cls, rng)
    direct = hillshade(shaded_dem, gsd_m, sun) * ~cast_shadows(shaded_dem, gsd_m, sun)
    sky_view = (1.0 + surface_normals(shaded_dem, gsd_m)[2]) / 2.0
    sky = rng.uniform(0.15, 0.35)
    water = cls == CLASSES.index("water")
    direct = np.where(water, 0.6, direct)  # water is flat and looks the same whatever the slope under it
    light = (1.0 - sky) * direct / max(math.sin(math.radians(sun.elevation)), 0.3) + sky * sky_view
    radiance = albedo * light[None]
    drew_clouds = bool(rng.random() < 0.15) if clouds is None else clouds
    if drew_clouds:
        cover = np.clip(smooth_noise(dem.shape, rng, 15.0) - rng.uniform(0.8, 1.8), 0.0, None)
        cover = np.clip(cover * rng.uniform(0.6, 1.2), 0.0, 1.0)[None]
        radiance = radiance * (1 - cover) + 0.7 * cover
    haze = rng.uniform(0.0, 0.08)
    radiance = radiance * (1 - haze) + haze * np.array([0.55, 0.65, 0.85])[:, None, None]
    radiance *= rng.uniform(0.85, 1.15, 3)[:, None, None]  # white balance
    radiance += rng.normal(0.0, rng.uniform(0.002, 0.01), radiance.shape)  # sensor noise
    gain = rng.uniform(1.5, 3.0)
    gamma = rng.uniform(1.8, 2.6)
    image = np.clip(radiance * gain, 0.0, 1.0) ** (1.0 / gamma)
    info = {"sun_azimuth": sun.azimuth, "sun_elevation": sun.elevation, "exaggeration": exaggeration,
            "haze": haze, "clouds": drew_clouds, "dry": drew_dry, "settled": drew_settled, "gamma": gamma}
    return np.round(image * 255).astype(np.uint8), info
