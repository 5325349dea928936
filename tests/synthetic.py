"""Tiny synthetic terrain tiles for tests: smooth heights and an image that really shows them.

The image is a hypsometric tint (low green, high brown/white) times a hillshade, so both absolute height and relief
are visible in it, as in real imagery: a small model can learn the mapping in a few steps.
"""

from __future__ import annotations

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
