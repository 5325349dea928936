"""Tiny synthetic terrain tiles for tests: smooth heights and an image that really shows them; and web map tiles
of a real image.

The image is a hypsometric tint (low green, high brown/white) times a hillshade, so both absolute height and relief
are visible in it, as in real imagery: a small model can learn the mapping in a few steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def terrain(size: int, rng: np.random.Generator) -> np.ndarray:
    """Heights in metres: a tilted plane plus a few Gaussian hills and valleys, ``size x size`` float32."""
    y, x = np.mgrid[0:size, 0:size] / size
    height = 200.0 + rng.uniform(-150, 150) * x + rng.uniform(-150, 150) * y
    for _ in range(rng.integers(2, 5)):
        cy, cx = rng.uniform(0, 1, 2)
        width = rng.uniform(0.1, 0.35)
        height += rng.uniform(-300, 600) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width**2))
    return height.astype(np.float32)


def hillshade(height: np.ndarray, azimuth: float = 315.0, altitude: float = 45.0, z: float = 0.02) -> np.ndarray:
    """Lambertian shading in [0, 1] for light from ``azimuth``/``altitude`` degrees (``z`` exaggerates relief)."""
    dy, dx = np.gradient(height * z)
    slope = np.arctan(np.hypot(dx, dy))
    aspect = np.arctan2(-dx, dy)
    az, alt = np.radians(360.0 - azimuth + 90.0), np.radians(altitude)
    shade = np.sin(alt) * np.cos(slope) + np.cos(alt) * np.sin(slope) * np.cos(az - aspect)
    return np.clip(shade, 0.0, 1.0)


def render(height: np.ndarray) -> np.ndarray:
    """RGB ``3 x H x W`` in [0, 1]: hypsometric tint of the tile's relative height, times a soft hillshade."""
    rel = (height - height.min()) / max(float(np.ptp(height)), 1e-6)
    tint = np.stack([0.25 + 0.6 * rel, 0.55 + 0.25 * rel - 0.3 * rel**2, 0.2 + 0.5 * rel**3])
    return np.clip(tint * (0.5 + 0.5 * hillshade(height)), 0.0, 1.0).astype(np.float32)


class SyntheticTiles(torch.utils.data.Dataset):
    """``n`` tiles as the training code expects them: ``{"image", "depth", "mask"}`` (``holes``: share masked)."""

    def __init__(self, n: int = 8, size: int = 64, seed: int = 0, holes: float = 0.0):
        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            height = terrain(size, rng)
            mask = rng.random((1, size, size)) >= holes
            self.items.append(
                {
                    "image": torch.from_numpy(render(height)),
                    "depth": torch.from_numpy(np.where(mask, height[None], 0.0).astype(np.float32)),
                    "mask": torch.from_numpy(mask),
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return dict(self.items[i])


def xyz_tiles(image: Path, folder: Path, zoom: int) -> str:
    """The image cut into web map tiles (EPSG:3857, 256 px, PNG, transparent outside the image) under
    ``folder/{z}/{x}/{y}.png``, as a satellite basemap serves them; returns the URI of QGIS's XYZ layer over it."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.transform import from_origin
    from rasterio.warp import Resampling, reproject, transform_bounds

    half = 20037508.342789244  # Web Mercator's half-width, metres
    span = 2 * half / 2**zoom
    with rasterio.open(image) as src:
        left, bottom, right, top = transform_bounds(src.crs, "EPSG:3857", *src.bounds)
        columns = range(int((left + half) // span), int((right + half) // span) + 1)
        rows = range(int((half - top) // span), int((half - bottom) // span) + 1)
        for x in columns:
            for y in rows:
                rgba = np.zeros((4, 256, 256), np.uint8)
                transform = from_origin(-half + x * span, half - y * span, span / 256, span / 256)
                for band in range(3):
                    reproject(rasterio.band(src, band + 1), rgba[band], dst_transform=transform, dst_crs="EPSG:3857",
                              resampling=Resampling.bilinear)
                valid = np.ones((256, 256), np.uint8)
                reproject(np.ones(src.shape, np.uint8), valid, src_transform=src.transform, src_crs=src.crs,
                          dst_transform=transform, dst_crs="EPSG:3857", dst_nodata=0, resampling=Resampling.nearest)
                rgba[3] = 255 * valid
                (folder / str(zoom) / str(x)).mkdir(parents=True, exist_ok=True)
                with warnings.catch_warnings():  # tiles need no georeferencing: their place is their name
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    with rasterio.open(folder / str(zoom) / str(x) / f"{y}.png", "w", driver="PNG", width=256,
                                       height=256, count=4, dtype="uint8") as dst:
                        dst.write(rgba)
    return f"type=xyz&url=file://{folder}/{{z}}/{{x}}/{{y}}.png&zmin={zoom}&zmax={zoom}"
