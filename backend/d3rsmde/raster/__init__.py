"""Height maps for whole georeferenced rasters: read in windows, infer in batches of tiles, stitch, write.

Memory is bounded by one batch of tiles, the prefetch queue and one band of output rows whatever the raster size:
tile predictions go to a scratch file next to the output and are blended from there in a second pass, after one
small sparse solve has put every tile on a common scale and shift (see :mod:`d3rsmde.tiling`).

Modules, by job: :mod:`.io` (opening, path checks, lining rasters up), :mod:`.output` (the height GeoTIFF: its
profile, verified writer, tags), :mod:`.tiles` (model input by window, prefetch, scratch store),
:mod:`.calibration` (one scale and shift per tile), :mod:`.predict` (``predict_raster``). Comparing maps with a
reference is :mod:`d3rsmde.evaluation`.
"""

from .io import GDAL_CACHE_BYTES, spare_inputs
from .output import NODATA, height_profile, is_height_output
from .predict import predict_raster

__all__ = ["GDAL_CACHE_BYTES", "NODATA", "height_profile", "is_height_output", "predict_raster", "spare_inputs"]
