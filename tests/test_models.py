"""Config round trips, device choice, coarse ViT/DPT model, refiner U-Net and the latent codec (tiny configs)."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from d3rsmde.config import D3Config, get_config
from d3rsmde.device import autocast_dtype, describe_device, resolve_device
from d3rsmde.errors import InputError
from d3rsmde.models import CoarseDepthModel, Refiner
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.plbr import PLBRSchedule
from d3rsmde.vae import LatentCodec, build_vae, minmax_per_tile, remove_checkerboard

TINY = get_config("tiny")


@pytest.fixture(scope="module")
def coarse():
    torch.manual_seed(0)
    return CoarseDepthModel(TINY.coarse, img_size=TINY.tile_size).eval()


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    return LatentCodec(build_vae(TINY.vae), TINY.vae.scaling_factor)


# ---- config / device ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_config_json_round_trip(name):
    cfg = get_config(name)
    back = D3Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert isinstance(back.refiner.block_out_channels, tuple)


def test_get_config_overrides_and_errors():
    cfg = get_config("tiny", num_steps=3, gsd_m=0.5, refiner={"timestep_mode": "learned"})
    assert (cfg.num_steps, cfg.gsd_m, cfg.refiner.timestep_mode) == (3, 0.5, "learned")
    assert cfg.refiner.block_out_channels == TINY.refiner.block_out_channels  # merged, not replaced
    assert get_config("tiny").num_steps == 6  # named configs are not mutated
    with pytest.raises(InputError, match="unknown config 'huge'"):
        get_config("huge")
    with pytest.raises(InputError, match="unknown config field"):
        get_config("tiny", steps=3)
    with pytest.raises(InputError, match="unknown field"):
        get_config("tiny", coarse={"width": 3})


def test_small_config_fits_the_size_budget():
    from d3rsmde.pipeline import D3Pipeline

    pipe = D3Pipeline.from_config("small")
    total = sum(p.numel() for m in pipe.components.values() for p in m.parameters())
    assert total <= 18.5e6  # < 40 MB as fp16
    assert pipe.size_multiple == 32 and pipe.config.tile_size % 32 == 0


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert autocast_dtype(torch.device("cpu")) is None
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            resolve_device("cuda")
        assert describe_device("auto").startswith("CPU")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")


# ---- coarse ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("h, w", [(64, 64), (64, 128), (48, 80)])
def test_coarse_shape_and_non_negative(coarse, h, w):
    with torch.no_grad():
        out = coarse(torch.rand(2, 3, h, w))
    assert out.shape == (2, 1, h, w)
    assert torch.isfinite(out).all() and (out >= 0).all()


def test_coarse_depends_on_input_and_trains(coarse):
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(coarse(x), coarse(x.flip(-1)))
    model = CoarseDepthModel(TINY.coarse, img_size=64)
    model(x).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []  # no dead weights: DDP-safe


def test_coarse_weights_load_at_another_tile_size(coarse):
    """Weights of a model built for 64-px tiles load into one built for 128 (fine-tuning at a larger tile): the
    stored position grid is resampled, and the new model predicts as the old one does on 128-px input."""
    bigger = CoarseDepthModel(TINY.coarse, img_size=128).eval()
    assert bigger.backbone.pos_embed.shape != coarse.backbone.pos_embed.shape
    bigger.load_state_dict(coarse.state_dict())
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(bigger(x), coarse(x), rtol=1e-4, atol=1e-4)
    wrong = {**coarse.state_dict(), "backbone.pos_embed": torch.zeros(1, 7, coarse.backbone.embed_dim)}
    with pytest.raises(InputError, match="position embeddings"):
        bigger.load_state_dict(wrong)


def test_hybrid_coarse_model_serves_several_threads_at_once():
    """QGIS runs algorithms in parallel threads and the plugin shares one loaded model: the stem's 1/4 and 1/8
    maps of one call must never reach another call's DPT head (they lived in one attribute: wrong maps)."""
    torch.manual_seed(0)
    model = CoarseDepthModel(get_config("lean").coarse, img_size=64).eval()
    inputs = [torch.rand(2, 3, 64, 64) for _ in range(2)]
    with torch.no_grad():
        expected = [model(x) for x in inputs]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda x: [model(x) for _ in range(30)], inputs))
    for want, got in zip(expected, results):
        for out in got:
            torch.testing.assert_close(out, want)
    assert model._skips == {}


def test_coarse_rejects_non_patch_multiple(coarse):
    with pytest.raises(InputError, match="multiple of the patch size 16"):
        coarse(torch.rand(1, 3, 60, 64))


# ---- refiner --------------------------------------------------------------------------------------------------
def test_refiner_alpha_conditioning():
    torch.manual_seed(0)
    ref = Refiner(TINY.refiner, latent_channels=4, sample_size=8).eval()
    x = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)  # image latent, blended latent
    s6, s3 = PLBRSchedule(6), PLBRSchedule(3)
    t = torch.tensor([5, 0])
    cond = ref.conditioning(s6, t)
    torch.testing.assert_close(cond, torch.tensor([0.0, 0.8]))
    with torch.no_grad():
        out = ref(*x, cond)
        assert out.shape == (2, 4, 8, 8)
        # same alpha_bar -> same output, whatever T the schedule has (t=0 of T=3 and of T=6 are both 0.8)
        torch.testing.assert_close(ref(*x, ref.conditioning(s3, torch.tensor([2, 0]))), out)
        assert not torch.allclose(ref(*x, torch.tensor([0.4, 0.4])), out)


def test_refiner_has_no_unused_parameters():
    ref = Refiner(TINY.refiner, latent_channels=4, sample_size=8)
    ref(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([0.8, 0.0])).square().mean().backward()
    assert [n for n, p in ref.named_parameters() if p.grad is None] == []


def test_refiner_learned_mode_needs_trained_T():
    cfg = get_config("tiny", refiner={"timestep_mode": "learned", "num_train_steps": 6}).refiner
    ref = Refiner(cfg, latent_channels=4, sample_size=8).eval()
    t = torch.tensor([5, 1])
    cond = ref.conditioning(PLBRSchedule(6), t)
    assert cond.dtype == torch.int64 and cond.tolist() == [5, 1]
    with torch.no_grad():
        assert ref(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), cond).shape == (2, 4, 8, 8)
    with pytest.raises(InputError, match="6-step"):
        ref.conditioning(PLBRSchedule(4), t)


def test_refiner_rejects_bad_config():
    with pytest.raises(InputError, match="timestep_mode"):
        Refiner(get_config("tiny", refiner={"timestep_mode": "fourier"}).refiner)
    with pytest.raises(InputError, match="image_condition"):
        Refiner(get_config("tiny", refiner={"image_condition": "clip"}).refiner)
    with pytest.raises(InputError, match="CNN stem"):
        Refiner(get_config("tiny", refiner={"image_condition": "stem"}).refiner)


def test_residual_refiner_starts_as_the_identity_and_learns_corrections():
    """prediction "residual": z0_hat = z_t + U-Net output, with the last layer zeroed, so a fresh residual
    refiner's T-step output is the VAE round trip of the coarse map; its last layer still gets gradients."""
    torch.manual_seed(0)
    pipe = D3Pipeline.from_config(get_config("tiny", refiner={"prediction": "residual"}))
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        coarse = pipe.coarse_depth(images)
        round_trip = pipe.codec.decode_depth(pipe.codec.encode_depth(coarse))
        torch.testing.assert_close(pipe(images), round_trip, atol=1e-5, rtol=0)
    z_t = torch.randn(2, 4, 8, 8)
    out = pipe.refiner(torch.randn(2, 4, 8, 8), z_t, torch.tensor([0.8, 0.0]))
    torch.testing.assert_close(out, z_t)
    (out - 1).square().mean().backward()
    assert pipe.refiner.unet.conv_out.weight.grad.abs().sum() > 0
    z0 = D3Pipeline.from_config(get_config("tiny"))  # the paper's refiner predicts z0 itself: not the identity
    assert not torch.allclose(z0.refiner(torch.randn(2, 4, 8, 8), z_t, torch.tensor([0.8, 0.0])), z_t)
    with pytest.raises(InputError, match="prediction"):
        Refiner(get_config("tiny", refiner={"prediction": "epsilon"}).refiner)


def test_refiner_conditioned_on_the_stem_sees_its_features_not_the_vae():
    """image_condition "stem": z_x is a learnt projection of the coarse model's stem map at the latent's scale;
    the VAE's image encoder is not used, and the projection trains with the U-Net."""
    cfg = get_config("lean", refiner={"image_condition": "stem"}, tile_size=64)
    pipe = D3Pipeline.from_config(cfg)
    images = torch.rand(2, 3, 64, 64)
    features = pipe.refiner.image_features(images, pipe.coarse, codec=None)  # no VAE needed
    assert features.shape == (2, pipe.coarse.latent_feature_channels, 8, 8)  # the latent grid: 64 / 8
    assert pipe.coarse._skips == {}  # the DPT's hook state is left clean
    torch.testing.assert_close(features, pipe.coarse.stem((images - pipe.coarse.mean) / pipe.coarse.std)[1])
    z_t = torch.randn(2, 4, 8, 8)
    out = pipe.refiner(features, z_t, torch.tensor([0.8, 0.0]))
    out.square().mean().backward()
    assert pipe.refiner.image_proj.weight.grad.abs().sum() > 0
    other = pipe.refiner(pipe.refiner.image_features(images.flip(-1), pipe.coarse, None), z_t, torch.tensor([0.8, 0.0]))
    assert not torch.allclose(other, out)  # the image reaches the output
    assert pipe(images).shape == (2, 1, 64, 64)


def test_refiner_without_the_image_ignores_it():
    """image_condition "none" (an ablation): no encoder runs for the image, and the output does not depend on it."""
    cfg = get_config("tiny", refiner={"image_condition": "none"})
    pipe = D3Pipeline.from_config(cfg)
    size = cfg.tile_size
    images = torch.rand(2, 3, size, size)
    assert pipe.refiner.image_features(images, pipe.coarse, codec=None).numel() == 0  # nothing encoded
    coarse = pipe.coarse_depth(images)
    torch.testing.assert_close(pipe.refine(images, coarse), pipe.refine(images.flip(-1), coarse))
    vae = D3Pipeline.from_config(get_config("tiny"))  # the paper's refiner, same weights: the image matters
    vae.refiner.load_state_dict(pipe.refiner.state_dict())
    vae.codec, vae.coarse = pipe.codec, pipe.coarse
    assert not torch.allclose(vae.refine(images, coarse), vae.refine(images.flip(-1), coarse))


# ---- VAE / codec ----------------------------------------------------------------------------------------------
def test_minmax_per_tile():
    x = torch.stack([torch.linspace(2, 4, 12).view(3, 2, 2), torch.full((3, 2, 2), 7.0)])
    out = minmax_per_tile(x)
    assert float(out[0].min()) == 0.0 and float(out[0].max()) == 1.0
    assert torch.equal(out[1], torch.zeros(3, 2, 2))  # flat tile: no division by zero


def test_codec_shapes_ranges_and_frozen(codec):
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        z_x = codec.encode_image(x)
        z_d = codec.encode_depth(torch.rand(2, 1, 64, 128))
        d = codec.decode_depth(z_d)
    assert z_x.shape == z_d.shape == (2, 4, 8, 16)
    assert d.shape == (2, 1, 64, 128) and d.min() >= 0 and d.max() <= 1
    assert not any(p.requires_grad for p in codec.parameters())
    codec.train()
    assert not codec.training and not codec.vae.training


def test_decoded_heights_lose_the_checkerboard_and_keep_the_relief(codec, monkeypatch):
    """A 2-pixel checkerboard (what the decoder's upsampling leaves, drawn as hatching by a hillshade) is removed;
    a plane and an 8-pixel wave are kept (exactly inside, and 85 % of the wave)."""
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    plane = (0.2 + 0.01 * rows + 0.005 * cols).view(1, 1, 32, 32)
    checker = 0.05 * (-1.0) ** (rows + cols).view(1, 1, 32, 32)
    wave = 0.1 * torch.cos(2 * torch.pi * cols / 8).view(1, 1, 32, 32)
    inside = (..., slice(1, -1), slice(1, -1))
    torch.testing.assert_close(remove_checkerboard(plane + checker)[inside], plane[inside])
    assert float((remove_checkerboard(wave)[inside] / wave[inside]).nanmedian()) == pytest.approx(0.854, abs=0.01)
    # and decode_depth applies it: a decoder that returns the checkerboard gives the plane back
    decoded = (plane + checker) * 2 - 1
    monkeypatch.setattr(codec.vae, "decode", lambda z: type("Out", (), {"sample": decoded.expand(-1, 3, -1, -1)}))
    torch.testing.assert_close(codec.decode_depth(torch.zeros(1, 4, 4, 4))[inside], plane[inside])


def test_codec_normalises_image_per_tile(codec):
    """Posterior mean of a per-tile stretched image: affine changes of brightness give the same latent."""
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(codec.encode_image(x), codec.encode_image(0.5 * x + 0.2), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(codec.encode_image(x), codec.encode_image(x))  # deterministic (mean, no sample)


def test_codec_depth_is_three_band_grey(codec):
    d = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(codec.encode_depth(d), codec._encode(d.repeat(1, 3, 1, 1) * 2 - 1))


def test_tiny_autoencoder_kind():
    cfg = get_config("tiny", vae={"kind": "tiny", "block_out_channels": (16, 16, 16, 16)})
    codec = LatentCodec(build_vae(cfg.vae))
    with torch.no_grad():
        z = codec.encode_image(torch.rand(1, 3, 64, 64))
        assert z.shape == (1, 4, 8, 8)
        assert codec.decode_depth(z).shape == (1, 1, 64, 64)
    with pytest.raises(InputError, match="one width"):
        build_vae(get_config("tiny", vae={"kind": "tiny"}).vae)


def test_vae_pretrained_path_errors(tmp_path):
    with pytest.raises(InputError, match="cannot load"):
        build_vae(get_config("tiny", vae={"pretrained_path": str(tmp_path / "nothing")}).vae)
    # a saved diffusers folder of another shape is refused with both shapes named
    build_vae(get_config("tiny").vae).save_pretrained(tmp_path / "vae")
    ok = build_vae(get_config("tiny", vae={"pretrained_path": str(tmp_path / "vae")}).vae)
    assert tuple(ok.config.block_out_channels) == TINY.vae.block_out_channels
    with pytest.raises(InputError, match="widths"):
        build_vae(get_config("tiny", vae={"pretrained_path": str(tmp_path / "vae"),
                                          "block_out_channels": (8, 16, 16, 32)}).vae)
