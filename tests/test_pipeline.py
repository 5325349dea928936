"""D3Pipeline end to end on the "tiny" config: shapes, ranges, step counts and input validation."""

import pytest
import torch

from d3rsmde.errors import Cancelled, InputError
from d3rsmde.pipeline import D3Pipeline


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return D3Pipeline.from_config("tiny")


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(2, 3, 64, 64)


class CallCounter:
    def __init__(self, module):
        self.n = 0
        module.register_forward_hook(self)

    def __call__(self, module, args, out):
        self.n += 1


@pytest.mark.parametrize("steps", [0, 3, 6, None])
def test_output_contract(pipe, images, steps):
    out = pipe(images, refine_steps=steps)
    assert out.shape == (2, 1, 64, 64)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert not out.requires_grad


def test_coarse_only_is_stretched_per_tile(pipe, images):
    out = pipe(images, refine_steps=0)
    assert out.flatten(1).amin(1).tolist() == [0.0, 0.0]
    assert out.flatten(1).amax(1).tolist() == pytest.approx([1.0, 1.0])
    torch.testing.assert_close(out, pipe.coarse_depth(images))


@pytest.mark.parametrize("steps", [1, 2, 6, 9])
def test_refiner_runs_once_per_step_any_T(pipe, images, steps):
    counter = CallCounter(pipe.refiner)
    out = pipe(images, refine_steps=steps)
    assert counter.n == steps  # T other than the trained 6 works with the alpha-conditioned refiner
    assert out.shape == (2, 1, 64, 64) and torch.isfinite(out).all()
    assert not torch.allclose(out, pipe(images, refine_steps=0))


def test_each_refinement_step_is_reported_and_can_stop_the_run(pipe, images):
    seen = []
    pipe(images, refine_steps=4, on_step=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]

    def stop_after_two(done, total):
        if done == 2:
            raise Cancelled("stop")

    counter = CallCounter(pipe.refiner)
    with pytest.raises(Cancelled):
        pipe(images, refine_steps=6, on_step=stop_after_two)
    assert counter.n == 2


def test_default_steps_come_from_config(pipe, images):
    counter = CallCounter(pipe.refiner)
    pipe(images)
    assert counter.n == pipe.config.num_steps == 6


def test_deterministic_and_non_square(pipe):
    x = torch.rand(1, 3, 64, 128)
    a, b = pipe(x, refine_steps=2), pipe(x, refine_steps=2)
    assert a.shape == (1, 1, 64, 128)
    assert torch.equal(a, b)


def test_batch_items_are_independent(pipe, images):
    both = pipe(images, refine_steps=2)
    torch.testing.assert_close(pipe(images[1:], refine_steps=2), both[1:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.rand(3, 64, 64), "B x 3 x H x W"),
        (torch.rand(1, 4, 64, 64), "B x 3 x H x W"),
        (torch.rand(1, 3, 60, 64), "multiple of 16"),
        (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), "floats in \\[0, 1\\]"),
        (torch.rand(1, 3, 64, 64) * 255, "must lie in \\[0, 1\\]"),
        (torch.full((1, 3, 64, 64), float("nan")), "must lie in \\[0, 1\\]"),
    ],
)
def test_bad_inputs_name_the_problem(pipe, bad, message):
    with pytest.raises(InputError, match=message):
        pipe(bad)


@pytest.mark.parametrize("steps", [-1, 1.5])
def test_bad_step_counts(pipe, images, steps):
    with pytest.raises(InputError, match="refine_steps"):
        pipe(images, refine_steps=steps)


def test_size_multiple_follows_config():
    assert D3Pipeline.from_config("tiny").size_multiple == 16  # patch 16, VAE f8 x 2-level U-Net


def test_channels_last_placement_changes_layout_not_results(images, tmp_path):
    torch.manual_seed(0)
    plain = D3Pipeline.from_config("tiny")  # as built: NCHW weights
    path = plain.save_pretrained(tmp_path / "tiny.safetensors", dtype=None)
    placed = D3Pipeline.from_pretrained(path, device="cpu")  # goes through .to(): channels-last
    conv = placed.codec.vae.encoder.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.codec.vae.encoder.conv_in.weight.is_contiguous()
    for steps in (0, 3):
        torch.testing.assert_close(placed(images, refine_steps=steps), plain(images, refine_steps=steps),
                                   atol=1e-4, rtol=0)
    again = D3Pipeline.from_pretrained(placed.save_pretrained(tmp_path / "again.safetensors", dtype=None))
    torch.testing.assert_close(again(images), placed(images), atol=1e-5, rtol=0)
