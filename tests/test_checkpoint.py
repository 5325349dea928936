"""Checkpoint files: round trips, metadata, every way a weights file can be wrong, and the default location."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

import d3rsmde
from d3rsmde.checkpoint import FORMAT, describe_checkpoint, load_checkpoint, save_checkpoint
from d3rsmde.config import D3Config, Preprocessing, get_config
from d3rsmde.errors import CheckpointError, InputError
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.weights import DEFAULT_NAME, default_weights_path

from conftest import REPO


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return D3Pipeline.from_config(get_config("tiny", data="unit test", gsd_m=0.5)).to("cpu")  # as loaded


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    """fp32 and fp16 copies of the same pipeline."""
    folder = tmp_path_factory.mktemp("ckpt")
    return {
        "fp32": pipe.save_pretrained(folder / "tiny32.safetensors", dtype=None, note="first run", epochs=3),
        "fp16": pipe.save_pretrained(folder / "tiny16.safetensors"),
    }


def test_round_trip_gives_identical_outputs(pipe, saved):
    loaded = D3Pipeline.from_pretrained(saved["fp32"], device="cpu")
    assert loaded.config == pipe.config
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(loaded(x, refine_steps=3), pipe(x, refine_steps=3))
    assert torch.equal(loaded(x, refine_steps=0), pipe(x, refine_steps=0))


def test_fp16_file_is_half_size_and_loads_as_float32(pipe, saved):
    assert os.path.getsize(saved["fp16"]) < 0.6 * os.path.getsize(saved["fp32"])
    loaded = D3Pipeline.from_pretrained(saved["fp16"], device="cpu")
    assert loaded.dtype == torch.float32
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x, refine_steps=0), pipe(x, refine_steps=0), atol=2e-2, rtol=0)


def test_metadata_and_description(pipe, saved):
    tensors, cfg, meta = load_checkpoint(saved["fp32"])
    assert meta["format"] == FORMAT and meta["format_version"] == "1"
    assert json.loads(meta["config"]) == cfg.to_dict() == pipe.config.to_dict()
    assert not {"data", "gsd_m", "tile_size", "input_norm"} & set(meta)  # once, in the config
    assert (cfg.data, cfg.gsd_m, cfg.tile_size) == ("unit test", 0.5, 64)
    assert cfg.preprocessing == Preprocessing(("red", "green", "blue"), (1.0, 99.0), 64, 0.5)
    assert meta["d3rsmde_version"] == d3rsmde.__version__ and meta["created"].endswith("+00:00")
    assert meta["note"] == "first run" and meta["epochs"] == "3"
    assert {k.split(".")[0] for k in tensors} == {"coarse", "vae", "refiner"}

    info = describe_checkpoint(saved["fp16"])
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in pipe.components.items()}
    assert info["params"] == {**counts, "total": sum(counts.values())}
    assert info["dtype"] == "F16" and info["size_bytes"] == os.path.getsize(saved["fp16"])
    assert (info["config"], info["data"], info["gsd_m"], info["tile_size"]) == ("tiny", "unit test", 0.5, 64)


def test_checkpoints_written_before_the_preprocessing_config_still_load():
    """tests/data/golden-tiny.safetensors was written by d3rsmde 0.1 (``input_norm`` in its config, copies of
    data/gsd/tile at the top level)."""
    old = REPO / "tests" / "data" / "golden-tiny.safetensors"
    _, cfg, meta = load_checkpoint(old)
    assert meta["input_norm"] == "percentile-1-99" and "input_norm" in json.loads(meta["config"])
    assert cfg.stretch_percentiles == (1.0, 99.0) and cfg.band_order == ("red", "green", "blue")
    info = describe_checkpoint(old)
    assert "input_norm" not in info["metadata"] and info["stretch_percentiles"] == [1.0, 99.0]
    with pytest.raises(InputError, match="normalisation"):
        D3Config.from_dict({**json.loads(meta["config"]), "input_norm": "zscore"})


def test_saved_weights_are_readable_by_others(pipe, tmp_path):
    """safetensors writes 0600 files; weights shared on a server or in a plugin folder must be readable."""
    target = pipe.save_pretrained(tmp_path / "w.safetensors", max_shard_bytes=2**20)
    mask = os.umask(0)
    os.umask(mask)
    for file in [target, *tmp_path.glob("w.shard*.safetensors")]:
        assert os.stat(file).st_mode & 0o777 == 0o666 & ~mask, file


def test_save_is_atomic_and_leaves_no_temp_files(pipe, tmp_path):
    target = tmp_path / "w.safetensors"
    pipe.save_pretrained(target)
    first = target.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(target, {"coarse.x": "not a tensor"}, pipe.config)
    assert target.read_bytes() == first  # a failed save keeps the old file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    with pytest.raises(InputError, match="config"):
        save_checkpoint(tmp_path / "x.safetensors", {}, pipe.config, {"gsd_m": 1.0})


def test_saved_config_forgets_pretrained_sources(pipe, tmp_path):
    cfg = get_config("tiny", vae={"pretrained_path": "/somewhere/sd-vae"})
    p = D3Pipeline(pipe.coarse, pipe.codec, pipe.refiner, cfg)
    _, saved_cfg, _ = load_checkpoint(p.save_pretrained(tmp_path / "w.safetensors"))
    assert saved_cfg.vae.pretrained_path is None and not saved_cfg.coarse.pretrained_backbone


def _error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        D3Pipeline.from_pretrained(path, device="cpu")
    return str(info.value)


def test_missing_file(tmp_path):
    assert "not found" in _error(tmp_path / "nope.safetensors")


def test_random_bytes(tmp_path):
    path = tmp_path / "random.safetensors"
    path.write_bytes(os.urandom(4096))
    assert "not a readable safetensors file" in _error(path)


def test_truncated(saved, tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(saved["fp16"].read_bytes()[:-1000])
    assert "not a readable safetensors file" in _error(path)


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path), metadata={"format": "pt"})
    assert "not a d3rsmde checkpoint" in _error(path)
    with pytest.raises(CheckpointError, match="not a d3rsmde checkpoint"):
        describe_checkpoint(path)


def _resave(source, target, tensors=None, d3config=None, **meta_changes):
    """Rewrite a checkpoint with edited tensors / config / metadata, bypassing save_checkpoint's guards."""
    t, cfg, meta = load_checkpoint(source)
    meta = {**meta, **meta_changes}
    if d3config is not None:
        meta["config"] = json.dumps(d3config.to_dict())
    save_file(tensors if tensors is not None else t, str(target), metadata=meta)
    return target


def test_newer_format_version(saved, tmp_path):
    msg = _error(_resave(saved["fp16"], tmp_path / "v99.safetensors", format_version="99"))
    assert "format version 99" in msg and "Update d3rsmde" in msg


def test_broken_config(saved, tmp_path):
    assert "config" in _error(_resave(saved["fp16"], tmp_path / "c.safetensors", config="{not json"))


def test_config_that_does_not_match_the_weights(saved, tmp_path):
    other = get_config("tiny", coarse={"features": 24})
    msg = _error(_resave(saved["fp16"], tmp_path / "mismatch.safetensors", d3config=other))
    assert "'coarse' weights do not match" in msg and "shape mismatch" in msg


def test_missing_and_unexpected_keys(saved, tmp_path):
    tensors, _, _ = load_checkpoint(saved["fp16"])
    key = next(k for k in tensors if k.startswith("refiner."))
    fewer = {k: v for k, v in tensors.items() if k != key}
    msg = _error(_resave(saved["fp16"], tmp_path / "fewer.safetensors", tensors=fewer))
    assert "1 missing" in msg and key.split(".", 1)[1] in msg
    more = {**tensors, "refiner.extra.weight": torch.zeros(1), "ema.w": torch.zeros(1)}
    msg = _error(_resave(saved["fp16"], tmp_path / "more.safetensors", tensors=more))
    assert "unexpected" in msg and "extra.weight" in msg
    msg = _error(_resave(saved["fp16"], tmp_path / "stray.safetensors", tensors={**tensors, "ema.w": torch.zeros(1)}))
    assert "'ema'" in msg and "unexpected" in msg


def test_default_weights_path(saved, monkeypatch, tmp_path):
    monkeypatch.setenv("D3RSMDE_WEIGHTS", str(saved["fp16"]))
    assert default_weights_path() == saved["fp16"]
    monkeypatch.setenv("D3RSMDE_WEIGHTS", str(tmp_path / "absent.safetensors"))
    with pytest.raises(CheckpointError, match="D3RSMDE_WEIGHTS"):
        default_weights_path()
    monkeypatch.delenv("D3RSMDE_WEIGHTS")
    expected = os.path.join("resources", "weights", DEFAULT_NAME)
    try:
        assert str(default_weights_path()).endswith(expected)
    except CheckpointError as e:
        assert expected in str(e)


def test_sharded_checkpoint_loads_as_one(pipe, saved, tmp_path):
    path = pipe.save_pretrained(tmp_path / "big.safetensors", dtype=None, max_shard_bytes=100_000, note="sharded")
    files = sorted(p.name for p in tmp_path.iterdir())
    sizes = [shard_tensor_bytes(tmp_path / f) for f in files]
    assert len(files) > 2 and all(total <= 100_000 or count == 1 for total, count in sizes)
    assert sum(total for total, _ in sizes) == sum(v.numel() * v.element_size() for v in pipe.state_dict().values())
    assert "big.shard2.safetensors" in files and not [f for f in files if f.endswith(".tmp")]
    loaded = D3Pipeline.from_pretrained(path, device="cpu")
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(loaded(x, refine_steps=2), pipe(x, refine_steps=2))
    whole, sharded = describe_checkpoint(saved["fp32"]), describe_checkpoint(path)
    assert sharded["params"] == whole["params"] and sharded["metadata"]["note"] == "sharded"
    assert sharded["files"][0] == "big.safetensors" and len(sharded["files"]) == len(files)
    assert sharded["size_bytes"] == sum(os.path.getsize(tmp_path / f) for f in files)

    with pytest.raises(CheckpointError, match="one shard of the checkpoint big.safetensors"):
        D3Pipeline.from_pretrained(tmp_path / "big.shard2.safetensors")
    other = pipe.save_pretrained(tmp_path / "other.safetensors", dtype=None, max_shard_bytes=100_000)
    os.replace(other.with_name("other.shard2.safetensors"), tmp_path / "big.shard2.safetensors")
    with pytest.raises(CheckpointError, match="not one of its shards"):
        D3Pipeline.from_pretrained(path)
    (tmp_path / "big.shard2.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard big.shard2.safetensors is missing"):
        load_checkpoint(path)


def shard_tensor_bytes(file) -> tuple[int, int]:
    """(tensor bytes, tensor count) of one file."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        tensors = [f.get_tensor(k) for k in f.keys()]
    return sum(t.numel() * t.element_size() for t in tensors), len(tensors)
