"""Ground distances on the WGS84 ellipsoid: how many metres a pixel spans, in any CRS."""

from __future__ import annotations

import math

# WGS84, for metres per degree at a latitude.
_WGS84_A = 6378137.0
_WGS84_E2 = 6.69437999014e-3


def metres_per_degree(lat: float) -> tuple[float, float]:
    """Metres per degree of longitude and of latitude at ``lat`` on the WGS84 ellipsoid."""
    phi = math.radians(lat)
    w = 1.0 - _WGS84_E2 * math.sin(phi) ** 2
    prime_vertical = _WGS84_A / math.sqrt(w)
    meridional = _WGS84_A * (1.0 - _WGS84_E2) / w**1.5
    rad = math.pi / 180.0
    return prime_vertical * math.cos(phi) * rad, meridional * rad


def pixel_size_m(transform, crs, row: float, col: float) -> tuple[float, float]:
    """Ground size (x, y) in metres of the pixel at (row, col): geographic CRSs use that pixel's latitude."""
    size_x = math.hypot(transform.a, transform.d)
    size_y = math.hypot(transform.b, transform.e)
    if crs.is_geographic:
        _, lat = transform * (col, row)
        per_lon, per_lat = metres_per_degree(lat)
        return size_x * per_lon, size_y * per_lat
    factor = crs.linear_units_factor[1]
    return size_x * factor, size_y * factor
