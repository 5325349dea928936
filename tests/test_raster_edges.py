"""No frame along tile edges, interior seams or the raster's own border: a model whose tiles carry a bright frame
(as the VAE decoder's do) must leave no line of the output rougher than the rest.
"""

import numpy as np
import pytest

from d3rsmde.raster import predict_raster
from test_raster import TILE, Oracle, read, write

# Pixels of each tile edge the framed model spoils: predict_raster's default edge margin at TILE (a quarter of the
# default overlap, TILE // 8). The real model's frame at its defaults is measured by benchmarks/edges.py.
FRAME = TILE // 32


class FramedOracle(Oracle):
    """The oracle plus a bright frame on every tile's outer ``FRAME`` pixels: a tile-edge artefact."""

    def __call__(self, images, refine_steps=None):
        out = super().__call__(images, refine_steps).clone()
        out[..., :FRAME, :] += 0.1
        out[..., -FRAME:, :] += 0.1
        out[..., FRAME:-FRAME, :FRAME] += 0.1
        out[..., FRAME:-FRAME, -FRAME:] += 0.1
        return out


def waves(height: int, width: int, wavelength: float = 48.0) -> np.ndarray:
    """A smooth float32 surface whose every row and column is equally curved: one diagonal sine wave.

    The 1st/99th percentile stretch flattens every crest and trough alike, so no line is singled out by it.
    """
    y, x = np.mgrid[0:height, 0:width]
    return np.sin(2 * np.pi * (x + y) / wavelength).astype(np.float32)


def line_roughness(out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean |second difference| across each column (along rows) and across each row (along columns).

    A seam or frame along column j shows as a large value at j; index k is line k + 1 (line 0 and the last have
    no centred second difference).
    """
    columns = np.abs(np.diff(out, 2, axis=1)).mean(axis=0)
    rows = np.abs(np.diff(out, 2, axis=0)).mean(axis=1)
    return columns, rows


@pytest.mark.parametrize("shape", [(300, 410), (40, 50)], ids=["many-tiles", "smaller-than-a-tile"])
def test_no_frame_at_tile_seams_or_raster_border(tmp_path, shape):
    src = write(tmp_path / "in.tif", waves(*shape))
    predict_raster(src, tmp_path / "out.tif", FramedOracle(), tile=TILE)
    columns, rows = line_roughness(read(tmp_path / "out.tif"))
    median = np.median(np.concatenate([columns, rows]))
    edge = slice(None, FRAME + 1), slice(-FRAME - 1, None)
    border = np.concatenate([line[s] for line in (columns, rows) for s in edge])
    interior = np.concatenate([columns[FRAME + 1 : -FRAME - 1], rows[FRAME + 1 : -FRAME - 1]])
    print(f"worst line / median: raster border {border.max() / median:.2f}, interior {interior.max() / median:.2f}")
    assert border.max() <= 3 * median
    assert interior.max() <= 3 * median
