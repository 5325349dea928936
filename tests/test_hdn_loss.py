"""HDN loss: scale-and-shift invariance, masking, gradients, and agreement with a literal per-context loop."""

import pytest
import torch

from d3rsmde.errors import InputError
from d3rsmde.hdn_loss import hdn_loss


def reference_hdn(pred, gt, mask):
    """The method's definition written out context by context (slow, float64): the oracle."""
    losses = []
    for p, g, m in zip(pred[:, 0].double(), gt[:, 0].double(), mask[:, 0]):
        height, width = g.shape
        rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        idx = torch.nonzero(m.reshape(-1)).squeeze(1)
        gv, pv = g.reshape(-1)[idx], p.reshape(-1)[idx]
        rank = torch.empty_like(idx)
        rank[torch.argsort(gv)] = torch.arange(len(gv))
        unit = (gv - gv.min()) / (gv.max() - gv.min())
        strategies = {"range": [], "quantile": [], "grid": []}
        for k in (1, 2, 4):
            strategies["range"].append((unit * k).long().clamp(0, k - 1))
            strategies["quantile"].append((rank * k // len(gv)).clamp(max=k - 1))
            cell = (rows * k // height) * k + cols * k // width
            strategies["grid"].append(cell.reshape(-1)[idx])
        total = 0.0
        for levels in strategies.values():
            err, hits = torch.zeros_like(gv), torch.zeros_like(gv)
            for labels in levels:
                for c in labels.unique():
                    sel = labels == c

                    def norm(d):
                        dev = d[sel] - d[sel].median()
                        return dev / dev.abs().mean().clamp(min=1e-6)

                    err[sel] += (norm(gv) - norm(pv)).abs()
                    hits[sel] += 1
            total += (err / hits).mean() / 3
        losses.append(total)
    return torch.stack(losses).mean()


@pytest.fixture
def maps():
    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 1, 13, 18, generator=gen).cumsum(-1)  # ramps with noise: not a flat field
    pred = torch.rand(2, 1, 13, 18, generator=gen)
    mask = torch.rand(2, 1, 13, 18, generator=gen) > 0.25
    return pred, gt, mask


def test_matches_literal_definition(maps):
    pred, gt, mask = maps
    assert hdn_loss(pred, gt, mask).item() == pytest.approx(reference_hdn(pred, gt, mask).item(), rel=1e-5)


@pytest.mark.parametrize("scale,shift", [(1.0, 0.0), (3.5, -2.0), (0.05, 2.0)])
def test_zero_for_positive_affine_prediction(maps, scale, shift):
    _, gt, mask = maps
    assert hdn_loss(scale * gt + shift, gt).item() < 1e-5
    assert hdn_loss(scale * gt + shift, gt, mask).item() < 1e-5


def test_positive_for_wrong_prediction(maps):
    pred, gt, _ = maps
    assert hdn_loss(pred, gt).item() > 0.1
    assert hdn_loss(-gt, gt).item() > 0.5  # inverted relief is not an affine match with a > 0
    assert hdn_loss(gt + 0.3 * gt**2, gt).item() > 1e-3  # non-linear distortion is penalised


def test_mask_respected(maps):
    pred, gt, mask = maps
    base = hdn_loss(pred, gt, mask)
    garbage_pred, garbage_gt = pred.clone(), gt.clone()
    garbage_pred[~mask] = float("nan")
    garbage_gt[~mask] = 1e6
    assert hdn_loss(garbage_pred, garbage_gt, mask).item() == pytest.approx(base.item(), rel=1e-6)
    assert hdn_loss(pred, gt).item() != pytest.approx(base.item(), rel=1e-3)


def test_gradient_flows_only_to_valid_pixels(maps):
    pred, gt, mask = maps
    pred = pred.clone().requires_grad_(True)
    hdn_loss(pred, gt, mask).backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[mask].abs().sum() > 0
    assert pred.grad[~mask].abs().sum() == 0


def test_batch_is_mean_of_samples(maps):
    pred, gt, mask = maps
    each = [hdn_loss(pred[i : i + 1], gt[i : i + 1], mask[i : i + 1]) for i in range(2)]
    assert hdn_loss(pred, gt, mask).item() == pytest.approx(sum(each).item() / 2, rel=1e-6)


def test_empty_mask_and_bad_shapes(maps):
    pred, gt, mask = maps
    pred = pred.clone().requires_grad_(True)
    loss = hdn_loss(pred, gt, torch.zeros_like(mask))
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(InputError):
        hdn_loss(pred, gt[..., :-1])
    with pytest.raises(InputError):
        hdn_loss(pred.expand(2, 3, 13, 18), gt.expand(2, 3, 13, 18))
