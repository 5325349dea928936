"""Training: each stage learns on synthetic terrain, the loop resumes exactly, the whole recipe and the region
fine-tuner produce loadable weights, cancelling leaves no output, and the CLI drives both. All tiny, all on CPU."""

import argparse
import copy
import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from synthetic import SyntheticTiles

from d3rsmde.checkpoint import describe_checkpoint
from d3rsmde.config import get_config
from d3rsmde.data import BuildOptions, build_dataset
from d3rsmde.defaults import FINETUNE_MIN_TILE
from d3rsmde.errors import Cancelled, InputError
from d3rsmde.gradient_loss import gradient_matching_loss
from d3rsmde.hdn_loss import hdn_loss
from d3rsmde.models import CoarseDepthModel
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.plbr import PLBRSchedule, refine_step
from d3rsmde.train import finetune_region, fit, train_coarse, train_pipeline, train_refiner, train_vae
from d3rsmde.cli.train import add_cli, train_config
from d3rsmde.train.coarse import COARSE_SETTINGS, CoarseLoss
from d3rsmde.train.augment import flip_rotate, photometric_jitter, random_crop
from d3rsmde.train.common import evaluate_loss
from d3rsmde.train.finetune import trained_own_inputs
from d3rsmde.train.refiner import REFINER_SETTINGS, RefinerLoss, WithCoarse
from d3rsmde.train.vae import (VAE_SETTINGS, Autoencoding, _gradient_l1, mirrored_border, train_depth_decoder,
                               vae_loss)
from d3rsmde.vae import minmax_per_tile

from conftest import REPO, SAMPLE_DEM, SAMPLE_RGB, blue_first_stack

CPU = torch.device("cpu")
QUICK = dict(batch_size=4, lr=1e-3, device="cpu")
coarse_loss = CoarseLoss()  # the paper's HDN loss alone
# Inside the sample DEM's footprint: about 240 x 220 image pixels, 42 tiles of 32 px.
REGION = (-105.88, 40.19, -105.52, 40.52)


@pytest.fixture(scope="module")
def tiles():
    return SyntheticTiles(n=8, size=64, seed=1, holes=0.02)


def blurred_maps(dataset, sigma=4.0) -> np.ndarray:
    """Stand-in coarse maps: the true relief, stretched to [0, 1] and blurred (what a ViT gets wrong)."""
    maps = []
    for item in dataset:
        d = item["depth"][0].numpy()
        d = (d - d.min()) / np.ptp(d)
        maps.append(gaussian_filter(d, sigma))
    return np.stack(maps).astype(np.float16)


def test_flip_rotate_moves_all_maps_together():
    image = torch.rand(3, 8, 8)
    item = {"image": image, "depth": image[:1].clone(), "mask": image[:1] > 0.5, "name": "x"}
    seen = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(64):
        out = flip_rotate(item, gen)
        assert torch.equal(out["depth"], out["image"][:1]) and torch.equal(out["mask"], out["image"][:1] > 0.5)
        assert out["name"] == "x"
        seen.add(out["image"].numpy().tobytes())
    assert len(seen) == 8  # the dihedral group: 4 turns x flip


def test_random_crop_cuts_one_window_from_all_maps():
    image = torch.arange(3 * 16 * 16, dtype=torch.float32).reshape(3, 16, 16)
    item = {"image": image, "depth": image[:1].clone(), "mask": image[:1] > 100, "name": "x"}
    gen = torch.Generator().manual_seed(0)
    corners = set()
    for _ in range(32):
        out = random_crop(item, 8, gen)
        assert out["image"].shape == (3, 8, 8) and out["name"] == "x"
        assert torch.equal(out["depth"], out["image"][:1]) and torch.equal(out["mask"], out["image"][:1] > 100)
        corners.add(int(out["image"][0, 0, 0]))
    assert len(corners) > 10  # the window moves
    assert random_crop(item, 16, gen)["image"] is image and random_crop(item, 32, gen)["image"] is image


def test_photometric_jitter_changes_the_image_alone_within_its_range():
    image = torch.rand(3, 16, 16)
    item = {"image": image, "depth": image[:1].clone(), "mask": image[:1] > 0.5, "name": "x"}
    assert photometric_jitter(item, 0.0) is item
    gen = torch.Generator().manual_seed(0)
    means, spreads = [], []
    for _ in range(200):
        out = photometric_jitter(item, 1.0, gen)
        assert out["depth"] is item["depth"] and out["mask"] is item["mask"] and out["name"] == "x"
        assert out["image"].shape == image.shape and 0 <= out["image"].min() and out["image"].max() <= 1
        means.append(float(out["image"].mean()))
        spreads.append(float(out["image"].std()))
    assert np.ptp(means) > 0.3 and np.ptp(spreads) > 0.1  # brightness and contrast both move
    again = photometric_jitter(item, 1.0, torch.Generator().manual_seed(0))["image"]
    assert torch.equal(again, photometric_jitter(item, 1.0, torch.Generator().manual_seed(0))["image"])


def test_vae_gradient_term_sees_lost_slopes_not_offsets():
    x = torch.linspace(-1, 1, 32).expand(1, 3, 32, 32)
    weight = torch.ones(1, 1, 32, 32)
    assert float(_gradient_l1(torch.full_like(x, 0.3), weight)) == 0.0  # a constant offset keeps every slope
    flat = torch.zeros_like(x)  # the same mean, slopes gone: what a blurry autoencoder returns
    assert float(_gradient_l1(flat - x, weight)) == pytest.approx(2 / 31, rel=1e-4)
    holes = weight.clone()
    holes[..., :, 16:] = 0  # pairs that touch nodata do not count
    assert float(_gradient_l1(torch.where(holes.bool(), 0.0, torch.randn_like(x)), holes)) == 0.0


def test_coarse_training_lowers_hdn_loss(tiles):
    torch.manual_seed(COARSE_SETTINGS.seed)  # the initialisation k-fold training uses
    model = CoarseDepthModel(get_config("tiny").coarse, img_size=64)
    settings = COARSE_SETTINGS.replace(**QUICK)
    before = evaluate_loss(model, coarse_loss, tiles, settings, CPU)
    history = train_coarse(model, tiles, epochs=12, **QUICK)
    after = evaluate_loss(model, coarse_loss, tiles, settings, CPU)
    assert len(history) == 12 and history[-1]["val_loss"] is None
    assert after < 0.7 * before, (before, after)


def test_coarse_loss_adds_the_weighted_gradient_loss(tiles):
    torch.manual_seed(0)
    model = CoarseDepthModel(get_config("tiny").coarse, img_size=64).eval()
    batch = {key: torch.stack([tiles[i][key] for i in range(2)]) for key in ("image", "depth", "mask")}
    with torch.no_grad():
        pred = model(batch["image"])
        hdn, grad = hdn_loss(pred, batch["depth"], batch["mask"]), gradient_matching_loss(pred, batch["depth"],
                                                                                           batch["mask"])
        assert float(coarse_loss(model, batch)) == pytest.approx(float(hdn), rel=1e-5)  # the paper's loss alone
        assert float(CoarseLoss(0.5)(model, batch)) == pytest.approx(float(hdn + 0.5 * grad), rel=1e-5)
    assert float(grad) > 0.01
    with pytest.raises(InputError, match="gradient loss weight"):
        CoarseLoss(-1.0)


def test_vae_training_lowers_reconstruction_loss(tiles):
    torch.manual_seed(0)
    pipe = D3Pipeline.from_config("tiny")
    vae = pipe.codec.vae
    settings = VAE_SETTINGS.replace(**QUICK)
    before = evaluate_loss(Autoencoding(vae), vae_loss, tiles, settings, CPU)
    train_vae(vae, tiles, epochs=8, **QUICK)
    after = evaluate_loss(Autoencoding(vae), vae_loss, tiles, settings, CPU)
    assert after < 0.8 * before, (before, after)
    assert not any(p.requires_grad for p in vae.parameters())  # frozen again for the refiner


def test_depth_decoder_is_distilled_and_replaces_only_the_decoder(tiles, tmp_path):
    """`train_depth_decoder`: a narrower decoder learns to draw what the pipeline's own decoder draws; every other
    weight (encoder, coarse model, refiner) stays, and the new config travels with the weights."""
    torch.manual_seed(0)
    teacher = D3Pipeline.from_config("tiny")
    x = torch.stack([tiles[i]["image"] for i in range(2)])
    wanted = teacher(x, refine_steps=2)
    kept = {k: v.clone() for k, v in teacher.state_dict().items() if ".decoder." not in k and "post_quant" not in k}
    gaps = {}
    for epochs in (0, 20):
        pipe = copy.deepcopy(teacher)
        torch.manual_seed(1)
        train_depth_decoder(pipe, tiles, channels=(4, 8, 8, 8), epochs=epochs, **QUICK)
        gaps[epochs] = (pipe(x, refine_steps=2) - wanted).abs().mean().item()
    assert gaps[20] < 0.7 * gaps[0], gaps  # a random teacher is hard to copy: 0.115 -> 0.062 here
    assert pipe.codec.vae.decoder.conv_out.in_channels == 4 and pipe.config.vae.depth_decoder_channels == (4, 8, 8, 8)
    state = pipe.state_dict()
    for key, value in kept.items():
        torch.testing.assert_close(state[key], value, msg=key)
    assert not any(p.requires_grad for p in pipe.codec.vae.parameters())
    path = pipe.save_pretrained(tmp_path / "slim.safetensors", dtype=None)
    again = D3Pipeline.from_pretrained(path, device="cpu")
    torch.testing.assert_close(again(x, refine_steps=2), pipe(x, refine_steps=2))
    with pytest.raises(InputError, match="already have a height-map decoder"):
        train_depth_decoder(again, tiles, channels=(4, 8, 8, 8), epochs=1, **QUICK)


def test_mirrored_border_is_the_engines_padding_of_an_overhanging_tile(tiles):
    """Distillation also shows the decoder tiles that overhang a raster's border: cut on one side and one end,
    mirrored back (what raster.tiles.Source.read does)."""
    batch = {k: torch.stack([tiles[i][k] for i in range(2)]) for k in ("image", "depth", "mask")}
    torch.manual_seed(3)
    out = mirrored_border(batch)
    for key in batch:
        assert out[key].shape == batch[key].shape and out[key].dtype == batch[key].dtype
    image, original = out["image"][0, 0].numpy(), batch["image"][0, 0].numpy()
    kept = [(r, c) for r in (slice(None, 16), slice(-16, None)) for c in (slice(None, 16), slice(-16, None))
            if np.array_equal(image[r, c], original[r, c])]
    assert len(kept) == 1  # the corner on the kept sides is untouched; the other three are mirrored
    (keep_rows, keep_cols), = kept
    for axis, (a, b) in enumerate(((image[:, keep_cols], original[:, keep_cols]),
                                   (image[keep_rows].T, original[keep_rows].T))):
        changed = np.flatnonzero(~np.isclose(a, b).all(axis=1))  # lines mirrored along this axis only
        cut, size = len(changed), image.shape[axis]
        assert 0 < cut < size // 2
        mirror = cut if changed[0] == 0 else size - cut - 1  # the last kept row/column: the mirror line
        j = np.arange(1, cut + 1)
        np.testing.assert_allclose(np.take(image, mirror - j, axis=axis), np.take(image, mirror + j, axis=axis))


def test_depth_decoder_config_is_checked():
    from d3rsmde.vae import build_vae

    vae = get_config("tiny").vae
    with pytest.raises(InputError, match="4 widths"):
        build_vae(dataclasses.replace(vae, depth_decoder_channels=(8, 8)))
    with pytest.raises(InputError, match="multiples of 4"):
        build_vae(dataclasses.replace(vae, depth_decoder_channels=(6, 8, 8, 8)))
    with pytest.raises(InputError, match="kind 'kl'"):
        build_vae(dataclasses.replace(vae, kind="tiny", block_out_channels=(8, 8, 8, 8),
                                      depth_decoder_channels=(4, 8, 8, 8)))


def test_refiner_training_lowers_latent_loss(tiles):
    torch.manual_seed(0)
    pipe = D3Pipeline.from_config("tiny")
    maps = blurred_maps(tiles)
    schedule = PLBRSchedule(6, 0.8)
    loss = RefinerLoss(pipe.codec, schedule)
    settings = REFINER_SETTINGS.replace(**QUICK)
    before = evaluate_loss(pipe.refiner, loss, WithCoarse(tiles, maps), settings, CPU)
    train_refiner(pipe.refiner, pipe.codec, tiles, maps, schedule, tiles, maps, epochs=12, **QUICK)
    after = evaluate_loss(pipe.refiner, loss, WithCoarse(tiles, maps), settings, CPU)
    assert after < 0.7 * before, (before, after)
    assert not any(p.requires_grad for p in pipe.codec.parameters())  # frozen: the decoded loss cannot move it
    with pytest.raises(InputError):
        train_refiner(pipe.refiner, pipe.codec, tiles, maps[:3], schedule, epochs=1, **QUICK)


def test_refiner_own_inputs_are_the_sampling_loops(tiles):
    """Own-input training feeds each step exactly what inference feeds it: one more step from the chain's input at
    t = 0 is the pipeline's final latent, and a share outside [0, 1] is refused."""
    torch.manual_seed(0)
    pipe = D3Pipeline.from_config("tiny").eval()
    schedule = PLBRSchedule(6, 0.8)
    batch = torch.utils.data.default_collate([tiles[i] for i in range(3)])
    coarse = torch.from_numpy(blurred_maps(tiles)[:3]).float()[:, None]
    image = batch["image"].float()
    z_x, z_c = pipe.codec.encode_image(image), pipe.codec.encode_depth(coarse)
    loss = RefinerLoss(pipe.codec, schedule, own_inputs=1.0)
    with torch.no_grad():
        inputs = loss.own_chain(pipe.refiner, z_x, z_c, torch.tensor([5, 2, 0]))
        last = refine_step(pipe.refiner, z_x[2:], inputs[2:], z_c[2:], 0, schedule)
    torch.testing.assert_close(inputs[0], z_c[0])  # the first step starts from the coarse map
    assert not torch.allclose(inputs[1], z_c[1])
    torch.testing.assert_close(last, pipe.refine_latents(image, coarse)[2:], rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="share"):
        RefinerLoss(pipe.codec, schedule, own_inputs=1.5)


def test_refiner_decoded_loss_reaches_the_refiner_not_the_codec(tiles, monkeypatch):
    """The decoded-map loss adds exactly weight x (L1 + gradient matching) of the decoded estimate to the latent L1,
    its gradient reaches the refiner through the decoder, and a negative weight is refused."""
    pipe = D3Pipeline.from_config("tiny")
    schedule = PLBRSchedule(6, 0.8)
    batch = torch.utils.data.default_collate([WithCoarse(tiles, blurred_maps(tiles))[i] for i in range(4)])
    torch.manual_seed(0)
    plain = RefinerLoss(pipe.codec, schedule)(pipe.refiner, batch)
    decoded, decode = [], pipe.codec.decode_depth
    monkeypatch.setattr(pipe.codec, "decode_depth", lambda z: decoded.append(decode(z)) or decoded[-1])
    torch.manual_seed(0)
    weighted = RefinerLoss(pipe.codec, schedule, decoded_weight=0.5)(pipe.refiner, batch)
    mask = batch["mask"]
    target = torch.where(mask, minmax_per_tile(batch["depth"], mask), batch["coarse"])
    extra = ((decoded[0] - target).abs() * mask).sum() / mask.sum() + gradient_matching_loss(decoded[0], target, mask)
    torch.testing.assert_close(weighted, plain + 0.5 * extra, rtol=1e-4, atol=1e-5)
    weighted.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in pipe.refiner.parameters())
    with pytest.raises(InputError, match="decoded_weight"):
        RefinerLoss(pipe.codec, schedule, decoded_weight=-1.0)


def test_resumed_training_matches_unbroken_run(tiles, tmp_path):
    settings = COARSE_SETTINGS.replace(epochs=3, **QUICK)

    def model():
        torch.manual_seed(0)
        return CoarseDepthModel(get_config("tiny").coarse, img_size=64)

    unbroken = model()
    fit(unbroken, coarse_loss, tiles, tiles, settings=settings, name="coarse")

    def after_two_epochs():
        log = tmp_path / "log.csv"
        return log.is_file() and len(log.read_text().splitlines()) == 3  # header + 2 epochs

    interrupted = model()
    with pytest.raises(Cancelled):
        fit(interrupted, coarse_loss, tiles, tiles, settings=settings, work_dir=tmp_path, cancel=after_two_epochs)
    assert (tmp_path / "last.pt").is_file() and not (tmp_path / "final.pt").exists()
    resumed = model()
    history = fit(resumed, coarse_loss, tiles, tiles, settings=settings, work_dir=tmp_path)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert (tmp_path / "final.pt").is_file() and not (tmp_path / "last.pt").exists()
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 4  # header + one row per epoch
    for a, b in zip(unbroken.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)
    # A finished stage is loaded, not retrained.
    again = model()
    assert fit(again, coarse_loss, tiles, settings=settings, work_dir=tmp_path) == history
    torch.testing.assert_close(again.state_dict(), resumed.state_dict())


def test_weight_averaging_keeps_the_mean_of_the_later_epochs(tiles, tmp_path):
    """average_from=2 over 3 epochs keeps (weights after epoch 2 + after epoch 3) / 2, also across a resume."""
    settings = COARSE_SETTINGS.replace(epochs=3, **QUICK)

    def model():
        torch.manual_seed(0)
        return CoarseDepthModel(get_config("tiny").coarse, img_size=64)

    after = {}
    for epochs in (2, 3):
        m = model()
        fit(m, coarse_loss, tiles, settings=settings.replace(epochs=epochs), name="coarse")
        after[epochs] = m.state_dict()
    averaged = model()
    with pytest.raises(Cancelled):
        fit(averaged, coarse_loss, tiles, settings=settings.replace(average_from=2), work_dir=tmp_path,
            cancel=lambda: len((tmp_path / "log.csv").read_text().splitlines()) == 3 if (tmp_path / "log.csv").is_file()
            else False)
    fit(averaged, coarse_loss, tiles, settings=settings.replace(average_from=2), work_dir=tmp_path)
    state = averaged.state_dict()
    assert any(not torch.equal(after[2][k], after[3][k]) for k in state)  # the epochs differ, so the mean is news
    for key, value in state.items():
        expected = (after[2][key] + after[3][key]) / 2 if value.is_floating_point() else after[3][key]
        torch.testing.assert_close(value, expected)


def test_train_pipeline_end_to_end_cancel_and_resume(tmp_path):
    train, val = SyntheticTiles(n=6, size=64, seed=2), SyntheticTiles(n=2, size=64, seed=3)
    out, work = tmp_path / "model.safetensors", tmp_path / "work"
    options = dict(work_dir=work, epochs={"vae": 2, "coarse": 2, "refiner": 2}, k=2, fold_epochs=1, device="cpu",
                   batch_size=3, data="synthetic hills", gsd_m=30.0)

    calls = iter(range(1000))
    with pytest.raises(Cancelled):  # vae done (4 steps), k-fold under way
        train_pipeline("tiny", train, val, out, cancel=lambda: next(calls) == 6, **options)
    assert not out.exists() and not list(tmp_path.glob("*.safetensors*"))
    assert (work / "vae" / "final.pt").is_file()

    fractions = []
    assert train_pipeline("tiny", train, val, out, progress=lambda f, m: fractions.append(f), **options) == out
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len((work / "vae" / "log.csv").read_text().splitlines()) == 3  # the VAE was not trained twice
    epochs_run = {d: len((work / "coarse" / d / "log.csv").read_text().splitlines()) - 1
                  for d in ("fold0", "fold1", "final")}
    assert epochs_run == {"fold0": 1, "fold1": 1, "final": 2}  # folds train shorter than the final model

    info = describe_checkpoint(out)
    assert info["data"] == "synthetic hills" and info["gsd_m"] == 30.0 and info["config"] == "tiny"
    pipe = D3Pipeline.from_pretrained(out, device="cpu")
    pred = pipe(torch.stack([val[0]["image"], val[1]["image"]]))
    assert pred.shape == (2, 1, 64, 64) and pred.dtype == torch.float32
    assert torch.isfinite(pred).all() and pred.min() >= 0 and pred.max() <= 1


def test_refiner_can_learn_from_the_final_coarse_models_maps(tmp_path, monkeypatch):
    """``refiner_maps="final"``: no fold model is trained, the refiner's training maps are the final coarse model's
    own (those of the saved weights), and the weights record where its maps came from."""
    from d3rsmde.train import recipe
    from d3rsmde.train.kfold import predict_coarse

    seen = {}
    original = recipe.train_refiner
    monkeypatch.setattr(recipe, "train_refiner", lambda *a, **kw: (seen.setdefault("maps", np.array(a[3])),
                                                                    original(*a, **kw))[1])
    train, val = SyntheticTiles(n=4, size=64, seed=2), SyntheticTiles(n=2, size=64, seed=3)
    out, work = tmp_path / "final-maps.safetensors", tmp_path / "work"
    train_pipeline("tiny", train, val, out, work_dir=work, epochs={"vae": 0, "coarse": 1, "refiner": 1}, k=2,
                   device="cpu", batch_size=2, refiner_maps="final", data="synthetic hills", gsd_m=30.0)
    assert sorted(d.name for d in (work / "coarse").iterdir()) == ["final"]  # no fold
    coarse = D3Pipeline.from_pretrained(out, device="cpu").coarse.float()
    expected = predict_coarse(coarse, train, np.empty((4, 64, 64), np.float16))
    np.testing.assert_allclose(seen["maps"], expected, atol=2e-3)
    assert json.loads(describe_checkpoint(out)["metadata"]["training"])["refiner_maps"] == "final"
    with pytest.raises(InputError, match="refiner_maps"):
        train_pipeline("tiny", train, val, tmp_path / "x.safetensors", work_dir=tmp_path / "w2", epochs=0,
                       refiner_maps="folds", device="cpu")


def test_refiner_switched_to_the_stem_condition_continues_from_vae_conditioned_weights(tmp_path):
    """The shipped weights (refiner conditioned on the VAE latent) continued with ``image_condition="stem"``: the
    U-Net starts from the shipped one and the new projection trains; the coarse model, VAE and refiner stay
    consistent (the saved file rebuilds and predicts), and the config records the condition."""
    shipped = REPO / "resources" / "weights" / "d3rsmde-lean.safetensors"
    config = get_config("lean", tile_size=64, refiner={"image_condition": "stem"})
    train, val = SyntheticTiles(n=4, size=64, seed=2), SyntheticTiles(n=2, size=64, seed=3)
    out = tmp_path / "stem.safetensors"
    train_pipeline(config, train, val, out, work_dir=tmp_path / "work", epochs={"vae": 0, "coarse": 0, "refiner": 1},
                   device="cpu", batch_size=2, refiner_maps="final", init_weights=shipped, data="synthetic hills",
                   gsd_m=30.0)
    after = D3Pipeline.from_pretrained(out, device="cpu")
    before = D3Pipeline.from_pretrained(shipped, device="cpu")
    assert after.config.refiner.image_condition == "stem" and after.refiner.image_proj is not None
    unet = [(before.refiner.state_dict()[k].flatten(), v.flatten()) for k, v in after.refiner.state_dict().items()
            if k.startswith("unet.") and v.numel() > 100]
    a, b = torch.cat([x for x, _ in unet]), torch.cat([y for _, y in unet])
    assert not torch.equal(a, b) and torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.99  # trained on from the shipped U-Net
    torch.testing.assert_close(after.coarse.state_dict()["head.3.weight"], before.coarse.state_dict()["head.3.weight"])
    assert after(torch.stack([val[0]["image"], val[1]["image"]])).shape == (2, 1, 64, 64)


def test_weights_continued_with_another_stem_keep_their_vae_and_refiner(tmp_path):
    """``init_weights`` of a coarse model with another CNN stem (``--coarse-stem``): the VAE and refiner come from
    the file, the coarse model is built afresh around the new stem."""
    shipped = REPO / "resources" / "weights" / "d3rsmde-lean.safetensors"
    config = get_config("lean", tile_size=64, coarse={"stem": "efficientnet_lite2"})
    out = tmp_path / "lite2.safetensors"
    train_pipeline(config, SyntheticTiles(n=4, size=64, seed=2), None, out, work_dir=tmp_path / "work", epochs=0,
                   device="cpu", init_weights=shipped, data="synthetic hills", gsd_m=30.0)
    after = D3Pipeline.from_pretrained(out, device="cpu")
    before = D3Pipeline.from_pretrained(shipped, device="cpu")
    assert after.config.coarse.stem == "efficientnet_lite2"
    for name in ("vae", "refiner"):
        for key, value in after.components[name].state_dict().items():
            torch.testing.assert_close(value, before.components[name].state_dict()[key], msg=key)
    assert after.coarse.stem.feature_info.channels() != before.coarse.stem.feature_info.channels()


def test_z0_refiner_continued_as_residual_starts_as_the_identity(tmp_path, tiny_weights):
    """``prediction="residual"`` from weights whose refiner predicts z0: the U-Net is kept but its last layer is
    zeroed (else it would add a whole map to z_t), and the weights record the new prediction."""
    train, val = SyntheticTiles(n=4, size=64, seed=2), SyntheticTiles(n=2, size=64, seed=3)
    out = tmp_path / "residual.safetensors"
    train_pipeline(get_config("tiny", refiner={"prediction": "residual"}), train, val, out, work_dir=tmp_path / "w",
                   epochs=0, device="cpu", init_weights=tiny_weights, data="synthetic hills", gsd_m=30.0)
    before = D3Pipeline.from_pretrained(tiny_weights, device="cpu").refiner.state_dict()
    after = D3Pipeline.from_pretrained(out, device="cpu")
    assert after.config.refiner.prediction == "residual"
    for key, value in after.refiner.state_dict().items():
        if key.startswith("unet.conv_out."):
            assert not before[key].eq(0).all() and value.eq(0).all(), key
        else:
            torch.testing.assert_close(value, before[key], msg=key)
    with pytest.raises(InputError, match="residual refiner"):  # its weights mean nothing to a z0 refiner
        train_pipeline("tiny", train, val, tmp_path / "z0.safetensors", work_dir=tmp_path / "w2", epochs=0,
                       device="cpu", init_weights=out)


def test_train_pipeline_continues_from_weights(tmp_path, tiny_weights):
    """``init_weights``: with no epochs to train, the VAE, final coarse model and refiner come out as they went in."""
    train, val = SyntheticTiles(n=4, size=64, seed=2), SyntheticTiles(n=2, size=64, seed=3)
    out = tmp_path / "more.safetensors"
    train_pipeline("tiny", train, val, out, work_dir=tmp_path / "work", epochs=0, k=2, device="cpu",
                   init_weights=tiny_weights, data="synthetic hills", gsd_m=30.0)
    before = D3Pipeline.from_pretrained(tiny_weights, device="cpu").state_dict()
    after = D3Pipeline.from_pretrained(out, device="cpu").state_dict()
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], msg=key)
    scratch = tmp_path / "scratch.safetensors"
    train_pipeline("tiny", train, val, scratch, work_dir=tmp_path / "work2", epochs=0, k=2, device="cpu",
                   data="synthetic hills", gsd_m=30.0)
    assert not torch.equal(D3Pipeline.from_pretrained(scratch, device="cpu").state_dict()["refiner.unet.conv_out.weight"],
                           before["refiner.unet.conv_out.weight"])
    with pytest.raises(InputError, match="tiny"):
        train_pipeline("lean", train, val, tmp_path / "x.safetensors", work_dir=tmp_path / "w3", epochs=0, k=2,
                       device="cpu", init_weights=tiny_weights)


def test_train_pipeline_continues_from_weights_with_a_distilled_decoder(tmp_path, tiles):
    """Shipped weights carry a narrower height-map decoder than their named config builds; training on from them
    keeps that decoder instead of failing to load it."""
    slim = D3Pipeline.from_config("tiny")
    train_depth_decoder(slim, tiles, channels=(4, 8, 8, 8), epochs=0, **QUICK)
    start = slim.save_pretrained(tmp_path / "slim.safetensors")
    out = tmp_path / "more.safetensors"
    train_pipeline("tiny", SyntheticTiles(n=4, size=64, seed=2), None, out, work_dir=tmp_path / "work", epochs=0,
                   k=2, device="cpu", init_weights=start, data="synthetic hills", gsd_m=30.0)
    after = D3Pipeline.from_pretrained(out, device="cpu")
    assert after.config.vae.depth_decoder_channels == (4, 8, 8, 8)
    before = D3Pipeline.from_pretrained(start, device="cpu").state_dict()
    for key, value in after.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)


def test_coarse_only_continuation_trains_no_folds(tmp_path, tiny_weights):
    """Refiner epochs 0: only the final coarse model trains (fold models would only feed the refiner); the
    gradient loss weight is recorded with the weights."""
    train, val = SyntheticTiles(n=4, size=64, seed=2), SyntheticTiles(n=2, size=64, seed=3)
    out = tmp_path / "coarse.safetensors"
    train_pipeline("tiny", train, val, out, work_dir=tmp_path / "work", epochs={"vae": 0, "coarse": 1, "refiner": 0},
                   k=2, device="cpu", init_weights=tiny_weights, batch_size=2, average_from=1, coarse_grad_weight=0.5)
    assert sorted(p.name for p in (tmp_path / "work" / "coarse").iterdir()) == ["final"]
    assert json.loads(describe_checkpoint(out)["metadata"]["training"])["coarse_grad_weight"] == 0.5
    before = D3Pipeline.from_pretrained(tiny_weights, device="cpu").state_dict()
    after = D3Pipeline.from_pretrained(out, device="cpu").state_dict()
    changed = {key.split(".")[0] for key in before if not torch.equal(before[key], after[key])}
    assert changed == {"coarse"}


def test_interpolate_cli_mixes_weights_and_keeps_its_inputs(tmp_path, tiny_weights):
    """`d3rsmde interpolate START TUNED OUT --alpha a`: (1 - a) * START + a * TUNED, network by network."""
    tuned = D3Pipeline.from_pretrained(tiny_weights, device="cpu")
    with torch.no_grad():
        for p in tuned.refiner.parameters():
            p.add_(1.0)
    tuned_path = tuned.save_pretrained(tmp_path / "tuned.safetensors", dtype=None)
    out = tmp_path / "mix.safetensors"
    args = parse(["interpolate", str(tiny_weights), str(tuned_path), str(out), "--alpha", "0.25"])
    assert args.func(args) == 0
    start = D3Pipeline.from_pretrained(tiny_weights, device="cpu").state_dict()
    mixed = D3Pipeline.from_pretrained(out, device="cpu").state_dict()
    for key in start:
        shift = 0.25 if key.startswith("refiner.") and start[key].is_floating_point() else 0.0
        torch.testing.assert_close(mixed[key], start[key] + shift, atol=2e-3, rtol=2e-3, msg=key)
    with pytest.raises(InputError, match="overwrite"):
        args = parse(["interpolate", str(tiny_weights), str(tuned_path), str(tuned_path)])
        args.func(args)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_weights):
    """`d3rsmde finetune` on the sample rasters, its image as a blue-first 6-band stack with bands 3,2,1 chosen;
    its tiles are kept for the train CLI test."""
    root = tmp_path_factory.mktemp("finetune")
    stack = blue_first_stack(SAMPLE_RGB, root / "stack.tif")
    args = parse(["finetune", str(stack), str(SAMPLE_DEM), str(root / "tuned.safetensors"), "--bands", "3,2,1",
                  "--weights", str(tiny_weights), "--extent=" + ",".join(map(str, REGION)), "--tile", "32",
                  "--epochs", "1", "--device", "cpu", "--work-dir", str(root / "work"),
                  "--json", str(root / "result.json")])
    digest = hashlib.sha256(tiny_weights.read_bytes()).hexdigest()
    assert args.func(args) == 0
    assert hashlib.sha256(tiny_weights.read_bytes()).hexdigest() == digest  # input weights untouched
    return root


def parse(argv):
    parser = argparse.ArgumentParser(prog="d3rsmde")
    add_cli(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_finetune_region_writes_new_weights(finetuned):
    result = json.loads((finetuned / "result.json").read_text())
    assert result["held_out"] in ("test", "val") and result["tiles"]["train"] > 0
    for key in ("before", "after"):
        assert result[key]["tiles"] > 0 and 0 <= result[key]["mae"] <= 255 and 0 <= result[key]["delta1"] <= 1
    for key in ("mae", "ssim", "grad_r"):  # the paired change over the same held-out tiles
        difference, error = result["change"][key]
        assert difference == pytest.approx(result["after"][key] - result["before"][key], abs=1e-9)
        assert error is None if result["after"]["tiles"] == 1 else error >= 0
    assert result["bands"] == [3, 2, 1] and result["warnings"] == []
    info = describe_checkpoint(finetuned / "tuned.safetensors")
    assert "fine-tuned on" in info["data"] and info["gsd_m"] == pytest.approx(130, rel=0.2)
    assert json.loads(info["metadata"]["finetune"])["tile"] == 32
    assert json.loads(info["metadata"]["finetune"])["bands"] == [3, 2, 1]
    assert json.loads(info["metadata"]["finetune"])["refiner_own_inputs"] == 0.0  # as the tiny weights were trained
    assert json.loads(info["metadata"]["finetune"])["refiner_epochs"] == 0


def test_finetuning_tunes_the_coarse_model_and_keeps_the_refiner_unless_asked(finetuned, tiny_weights, tmp_path):
    """By default only the coarse model changes; refiner_epochs > 0 tunes the refiner after it."""
    start = D3Pipeline.from_pretrained(tiny_weights, device="cpu")
    tuned = D3Pipeline.from_pretrained(finetuned / "tuned.safetensors", device="cpu")

    def changed(a, b, part):
        first, second = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        return any(not torch.equal(first[k], second[k]) for k in first)

    assert changed(start, tuned, "coarse") and not changed(start, tuned, "refiner")
    both = tmp_path / "both.safetensors"
    finetune_region(SAMPLE_RGB, SAMPLE_DEM, tiny_weights, both, extent=REGION, tile=32, epochs=1, refiner_epochs=1,
                    device="cpu")
    assert changed(start, D3Pipeline.from_pretrained(both, device="cpu"), "refiner")
    with pytest.raises(InputError, match="refiner epochs must be 0"):
        finetune_region(SAMPLE_RGB, SAMPLE_DEM, tiny_weights, both, refiner_epochs=-1)


def test_finetuning_trains_the_refiner_as_the_weights_were_trained(tmp_path):
    """The own-input share comes from the weights' metadata: a fine-tune's record wins over the training's."""
    pipe = D3Pipeline.from_config("tiny")
    plain, own, tuned = (tmp_path / f"{name}.safetensors" for name in ("plain", "own", "tuned"))
    pipe.save_pretrained(plain)
    pipe.save_pretrained(own, training={"epochs": {"refiner": 1}, "refiner_own_inputs": 1.0})
    pipe.save_pretrained(tuned, training={"refiner_own_inputs": 1.0}, finetune={"refiner_own_inputs": 0.5})
    assert [trained_own_inputs(w) for w in (plain, own, tuned, "")] == [0.0, 1.0, 0.5, 0.0]


def test_finetune_splits_a_small_region_finer_to_hold_some_out(tiny_weights, tmp_path):
    """100 x 100 px: 3 x 3 tiles of 32, one usual split block of 4 x 4 tiles, so nothing could be held out; the
    fine-tuner then splits in blocks of 2 x 2 tiles instead, and trains."""
    extent = (-105.85, 40.25, -105.70, 40.40)
    options = BuildOptions(tile_size=32)
    assert build_dataset(SAMPLE_RGB, SAMPLE_DEM, tmp_path / "usual", options, extent=extent)["counts"] == {
        "train": 9, "val": 0, "test": 0}
    result = finetune_region(SAMPLE_RGB, SAMPLE_DEM, tiny_weights, tmp_path / "small.safetensors", extent=extent,
                             tile=32, epochs=1, device="cpu", options=options)
    assert result["tiles"]["train"] > 0 and result["tiles"]["val"] + result["tiles"]["test"] > 0
    assert (tmp_path / "small.safetensors").is_file()


def test_finetune_cuts_a_region_too_small_for_the_models_tile_into_smaller_tiles(tmp_path):
    """The sample's DEM covers too little of it for training tiles and a held-out block of 256 px (the bundled
    model's tile): with no tile given, the tile is halved down to FINETUNE_MIN_TILE until they fit, and the result
    says so; a tile the user gave is kept, and then the region is refused as before."""
    weights = tmp_path / "tile256.safetensors"
    D3Pipeline.from_config(dataclasses.replace(get_config("tiny"), tile_size=256)).save_pretrained(weights)
    result = finetune_region(SAMPLE_RGB, SAMPLE_DEM, weights, tmp_path / "tuned.safetensors", epochs=1,
                             device="cpu")
    tile = json.loads(describe_checkpoint(tmp_path / "tuned.safetensors")["metadata"]["finetune"])["tile"]
    assert FINETUNE_MIN_TILE <= tile < 256 and result["tiles"]["train"] > 0
    assert any(f"it was cut into tiles of {tile} px" in w for w in result["warnings"])
    with pytest.raises(InputError, match="fine-tuning needs training tiles and a held-out block"):
        finetune_region(SAMPLE_RGB, SAMPLE_DEM, weights, tmp_path / "given.safetensors", tile=256, epochs=1,
                        device="cpu")


def test_finetune_refuses_to_overwrite_its_input(tiny_weights):
    with pytest.raises(InputError, match="overwrite"):
        finetune_region(SAMPLE_RGB, SAMPLE_DEM, tiny_weights, tiny_weights, epochs=1)


def test_train_cli_on_built_tiles(finetuned, tmp_path):
    out = tmp_path / "cli.safetensors"
    args = parse(["train", "tiny", str(finetuned / "work" / "tiles"), str(out), "--vae-epochs", "1",
                  "--coarse-epochs", "1", "--refiner-epochs", "1", "--k", "2", "--batch-size", "8",
                  "--steps-per-epoch", "1", "--device", "cpu", "--refiner-own-inputs", "1",
                  "--coarse-grad-weight", "0.25", "--refiner-decoded-weight", "0.5", "--seed", "7"])
    assert args.refiner_own_inputs == 1.0 and args.func(args) == 0
    info = describe_checkpoint(out)
    assert "stack.tif" in info["data"] and info["gsd_m"] > 100
    training = json.loads(info["metadata"]["training"])
    assert training["refiner_own_inputs"] == 1.0 and training["coarse_grad_weight"] == 0.25  # the flags arrived
    assert training["seed"] == 7 and training["refiner_decoded_weight"] == 0.5
    assert (tmp_path / "cli.work" / "refiner" / "final.pt").is_file()
    stem = parse(["train", "tiny", str(finetuned / "work" / "tiles"), str(tmp_path / "x.safetensors"),
                  "--refiner-image-condition", "stem", "--device", "cpu"])
    with pytest.raises(InputError, match="CNN stem"):  # tiny has no stem to condition on
        stem.func(stem)


def test_train_cli_architecture_options_reach_the_config():
    args = parse(["train", "lean", "data", "out.safetensors", "--coarse-stem", "efficientnet_lite2",
                  "--stem-weights", "lite2.pth", "--refiner-prediction", "residual"])
    config = train_config(args)
    assert (config.coarse.stem, config.coarse.stem_weights) == ("efficientnet_lite2", "lite2.pth")
    assert config.refiner.prediction == "residual" and config.refiner.image_condition == "vae"
    assert train_config(parse(["train", "lean", "data", "out.safetensors"])) == get_config("lean")
    with pytest.raises(SystemExit):  # a stem without a weights source is refused by the parser
        parse(["train", "lean", "data", "out.safetensors", "--coarse-stem", "resnet50"])


def test_train_decoder_cli_on_built_tiles(finetuned, tiny_weights, tmp_path):
    out = tmp_path / "slim.safetensors"
    args = parse(["train-decoder", str(tiny_weights), str(finetuned / "work" / "tiles"), str(out), "--channels",
                  "4,8,8,8", "--epochs", "1", "--steps-per-epoch", "1", "--device", "cpu"])
    assert args.func(args) == 0
    info = describe_checkpoint(out)
    assert info["metadata"]["depth_decoder_from"] == tiny_weights.name
    assert D3Pipeline.from_pretrained(out, device="cpu").config.vae.depth_decoder_channels == (4, 8, 8, 8)
    with pytest.raises(InputError, match="overwrite"):
        args = parse(["train-decoder", str(out), str(finetuned / "work" / "tiles"), str(out)])
        args.func(args)


DDP_SCRIPT = """
import os, sys, torch
from synthetic import SyntheticTiles
from d3rsmde.config import get_config
from d3rsmde.data import BuildOptions, build_dataset
from d3rsmde.defaults import FINETUNE_MIN_TILE
from d3rsmde.models import CoarseDepthModel
from d3rsmde.train import train_coarse
torch.manual_seed(0)
model = CoarseDepthModel(get_config("tiny").coarse, img_size=64)
history = train_coarse(model, SyntheticTiles(4, 64, seed=1), SyntheticTiles(2, 64, seed=2), epochs=2, batch_size=2,
                       lr=1e-3, device="cpu", seed=0, work_dir=sys.argv[1])
# One file per rank: the ranks share stdout, where their lines can interleave.
with open(os.path.join(sys.argv[2], "rank" + os.environ["RANK"]), "w") as f:
    f.write(repr([round(r["train_loss"], 5) for r in history]))
"""


def test_same_code_runs_under_torchrun(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(tmp_path / "work"), str(tmp_path)], env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    losses = [(tmp_path / f"rank{rank}").read_text() for rank in (0, 1)]
    assert losses[0] == losses[1]  # gradients were averaged: both ranks hold one model
    assert (tmp_path / "work" / "final.pt").is_file()
    assert len((tmp_path / "work" / "log.csv").read_text().splitlines()) == 3  # rank 0 alone logs
