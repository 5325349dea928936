"""Gradient-matching loss: invariance to scale and shift, what it punishes, masking, and its place in training."""

import pytest
import torch

from d3rsmde.errors import InputError
from d3rsmde.gradient_loss import gradient_matching_loss
from d3rsmde.hdn_loss import hdn_loss


@pytest.fixture
def terrain():
    """Ridges with sharp valley walls on a 64 x 64 grid, two samples."""
    y, x = torch.meshgrid(torch.linspace(0, 6, 64), torch.linspace(0, 6, 64), indexing="ij")
    ridges = (torch.sin(x * 2) + torch.sin(y * 1.3 + x * 0.4)).abs()
    return torch.stack([ridges, ridges.flip(-1) * 3 + 10])[:, None]


@pytest.mark.parametrize("scale,shift", [(1.0, 0.0), (4.0, -7.0), (0.02, 3.0)])
def test_zero_for_an_affine_copy(terrain, scale, shift):
    assert gradient_matching_loss(terrain * scale + shift, terrain).item() == pytest.approx(0.0, abs=1e-3)  # float32


def test_punishes_lost_and_displaced_slopes_more_than_heights_do(terrain):
    """A blurred map keeps most of the heights (HDN) but loses the valley walls; shifted ridges put slopes in
    the wrong place. Relative to the HDN loss, the gradient loss weighs both more than a mild global tilt."""
    blurred = torch.nn.functional.avg_pool2d(terrain, 7, 1, 3, count_include_pad=False)
    shifted = terrain.roll(3, dims=-1)
    tilt = terrain + torch.linspace(0, 0.3, 64) * terrain.std()  # heights off a little, slopes nearly kept
    ratio = {name: gradient_matching_loss(p, terrain).item() / hdn_loss(p, terrain).item()
             for name, p in (("blurred", blurred), ("shifted", shifted), ("tilt", tilt))}
    assert gradient_matching_loss(blurred, terrain) > 0.1
    assert ratio["blurred"] > 2 * ratio["tilt"] and ratio["shifted"] > 2 * ratio["tilt"], ratio


def test_masked_pixels_reach_neither_value_nor_gradient(terrain):
    mask = torch.ones_like(terrain, dtype=torch.bool)
    mask[..., 20:30, 10:50] = False
    gt = terrain.clone()
    gt[..., 0, 0] = float("nan")  # non-finite reference pixels are ignored too
    pred = torch.rand_like(terrain).requires_grad_()
    loss = gradient_matching_loss(pred, gt, mask)
    loss.backward()
    outside = ~mask | ~torch.isfinite(gt)
    assert torch.isfinite(loss) and pred.grad[outside].abs().max() == 0
    spoilt = torch.where(outside, torch.full_like(pred, 1e6), pred.detach())
    assert gradient_matching_loss(spoilt, gt, mask).item() == pytest.approx(loss.item(), rel=1e-5)


def test_three_dimensional_maps_and_bad_shapes(terrain):
    assert gradient_matching_loss(terrain[:, 0], terrain[:, 0] * 2).item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(InputError, match="differ in shape"):
        gradient_matching_loss(terrain, terrain[:1])
    with pytest.raises(InputError, match="mask"):
        gradient_matching_loss(terrain, terrain, torch.ones(3, 3))
