"""PLBR schedule: blending weights, the training forward process and the sampling step the pipeline loops over."""

import pytest
import torch

from d3rsmde.errors import InputError
from d3rsmde.plbr import PLBRSchedule


class ConstantModel:
    """Predicts a fixed z0 and records what it was called with."""

    def __init__(self, z0):
        self.z0 = z0
        self.calls = []

    def __call__(self, x, t):
        self.calls.append((x.clone(), t.clone()))
        return self.z0


def test_alpha_bar_matches_paper_schedule():
    s = PLBRSchedule()
    torch.testing.assert_close(s.alpha_bar, torch.tensor([0.8, 0.64, 0.48, 0.32, 0.16, 0.0]))
    assert s.alpha_bar.dtype == torch.float32
    assert s.timesteps.tolist() == [5, 4, 3, 2, 1, 0]
    assert s.timesteps.dtype == torch.int64


@pytest.mark.parametrize("T, eps, expected", [(1, 0.8, [0.0]), (2, 0.8, [0.8, 0.0]), (3, 0.5, [0.5, 0.25, 0.0])])
def test_alpha_bar_other_lengths(T, eps, expected):
    torch.testing.assert_close(PLBRSchedule(T, eps).alpha_bar, torch.tensor(expected))


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_rejects_bad_step_counts(bad):
    with pytest.raises(InputError, match="step"):
        PLBRSchedule(bad)


def test_q_sample_blends_per_sample():
    s = PLBRSchedule(6, 0.8)
    z0 = torch.full((3, 4, 2, 2), 10.0)
    zc = torch.full((3, 4, 2, 2), 0.0)
    zt = s.q_sample(z0, zc, torch.tensor([0, 2, 5]))
    assert zt.shape == z0.shape
    # alpha_bar 0.8, 0.48, 0.0 of the way from z_c to z_0, each sample with its own t
    torch.testing.assert_close(zt[:, 0, 0, 0], torch.tensor([8.0, 4.8, 0.0]))
    # the last step is the coarse latent itself, whatever z0 is
    zc = torch.full((2, 4, 3, 3), 1.5)
    torch.testing.assert_close(s.q_sample(torch.randn(2, 4, 3, 3), zc, torch.tensor([5, 5])), zc)


def run_loop(s: PLBRSchedule, model, z_x, z_c):
    """The loop D3Pipeline.refine owns, with ``model(cat([z_x, z_t]), t)`` for the refiner."""
    z_t = z_c
    for t in s.timesteps.tolist():
        z0_hat = model(torch.cat([z_x, z_t], dim=1), torch.full((len(z_c),), t, dtype=torch.int64))
        z_t = s.step(z0_hat, t, z_c)
    return z_t


def test_step_blends_with_the_previous_alpha_and_ends_on_the_estimate():
    s = PLBRSchedule(3, 0.8)  # alpha_bar = [0.8, 0.4, 0.0]
    z0, zc = torch.full((1, 1, 1, 1), 10.0), torch.zeros(1, 1, 1, 1)
    assert float(s.step(z0, 2, zc)) == pytest.approx(4.0)  # alpha_bar_1 = 0.4 of the way to the estimate
    assert float(s.step(z0, 1, zc)) == pytest.approx(8.0)
    assert s.step(z0, 0, zc) is z0  # alpha_bar_{-1} = 1: the last estimate is the result


def test_loop_with_a_perfect_predictor_walks_the_training_inputs():
    """With a perfect z0 predictor every intermediate z_t is exactly the training input q_sample(z0, z_c, t)."""
    s = PLBRSchedule(6, 0.8)
    z_x, z_c, z0 = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    model = ConstantModel(z0)
    out = run_loop(s, model, z_x, z_c)
    assert [c[1].tolist() for c in model.calls] == [[t] for t in range(5, -1, -1)]
    for x, t in model.calls:
        torch.testing.assert_close(x[:, 4:], s.q_sample(z0, z_c, t))
    torch.testing.assert_close(model.calls[0][0][:, 4:], z_c)  # the first step starts from the coarse latent
    torch.testing.assert_close(out, z0)


def test_loop_blending_uses_previous_alpha():
    """A model returning (z_t + 1): the next z_t moves alpha_bar_{t-1} of the way to that prediction."""
    s = PLBRSchedule(3, 0.8)  # alpha_bar = [0.8, 0.4, 0.0]
    seen = []

    def model(x, t):
        seen.append(float(x[0, 1]))
        return x[:, 1:] + 1

    out = run_loop(s, model, torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))
    # t=2: z=0 -> pred 1 -> z = 0.4*1 = 0.4; t=1: pred 1.4 -> z = 0.8*1.4 = 1.12; t=0: pred 2.12 returned
    assert seen == pytest.approx([0.0, 0.4, 1.12])
    assert float(out) == pytest.approx(2.12)
