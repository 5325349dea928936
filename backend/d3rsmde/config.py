"""Model configurations: plain dataclasses that round-trip through JSON, so a checkpoint carries its own architecture.

Four named configs: "tiny" (tests, milliseconds on a CPU), "small" (< 40 MB in fp16), "lean" (the shipped default:
a pretrained CNN stem, <= 0.5 MFLOP per output pixel, < 18 MB in fp16) and "base" (the paper's DPT-Hybrid coarse
model, SD-size VAE and the authors' refiner U-Net).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .bands import RGB
from .errors import InputError

STRETCH_PERCENTILES = (1.0, 99.0)  # each band from its 1st to its 99th percentile over the raster -> [0, 1]
LEGACY_INPUT_NORM = "percentile-1-99"  # how checkpoints of format 1 before 0.2 named the same stretch


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of its imagery, as timm's data config: which colour each input channel shows, the
    percentiles each band is stretched between, the tile size and ground resolution it was trained at.

    It lives once in the checkpoint (in the :class:`D3Config`, whose fields and defaults it reads: see
    :attr:`D3Config.preprocessing`) and the raster engine applies it.
    """

    band_order: tuple[str, ...]
    stretch_percentiles: tuple[float, float]
    tile_size: int
    gsd_m: float | None


@dataclass
class CoarseConfig:
    """Coarse model: a timm ViT (built by name, with size overrides) under a DPT reassemble/fusion head.

    With ``stem`` (a timm CNN name, e.g. "efficientnet_lite0") the model is hybrid, as the paper's DPT-Hybrid: the
    CNN's 1/4 and 1/8 features are the first two DPT levels, its 1/16 features the ViT's tokens, and ``hooks``
    names the two ViT blocks for the 1/16 and 1/32 levels. ``stem_weights`` is a local ImageNet state dict.
    """

    backbone: str = "vit_small_patch16_224"
    embed_dim: int | None = None  # None keeps the timm model's own size (needed for hybrid / pretrained backbones)
    depth: int | None = None
    num_heads: int | None = None
    patch_size: int = 16
    hooks: tuple[int, ...] = (2, 5, 8, 11)  # transformer blocks whose outputs feed the four DPT levels
    reassemble_channels: tuple[int, ...] = (96, 192, 384, 768)  # widths at 1/4, 1/8, 1/16, 1/32
    features: int = 256
    pretrained_backbone: bool = False
    stem: str | None = None
    stem_weights: str | None = None


@dataclass
class VAEConfig:
    """Frozen latent codec: diffusers AutoencoderKL ("kl") or AutoencoderTiny ("tiny"), f = 2**(levels-1)."""

    kind: str = "kl"
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    pretrained_path: str | None = None  # local diffusers folder (e.g. an SD VAE) to start from
    # A narrower decoder ("kl" only), distilled from the VAE's own for height maps alone (train.vae.
    # train_depth_decoder): inference never decodes an image, and the decoder is a quarter of a tile's CPU time.
    depth_decoder_channels: tuple[int, ...] | None = None
    depth_decoder_layers_per_block: int = 0

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class RefinerConfig:
    """PLBR refiner: diffusers UNet2DModel predicting z0 from [z_x, z_t].

    ``timestep_mode`` "alpha" feeds 1000 * alpha_bar to the sinusoidal time embedding, so a model trained with one
    number of steps runs with any other; "learned" is the paper's embedding table with ``num_train_steps`` entries.
    ``image_condition``: z_x is the VAE latent of the image ("vae", the paper's, whose VAE was pretrained on real
    photographs), or the coarse model's pretrained CNN stem map at the latent's scale through a learnt 1 x 1
    projection ("stem": an image encoder that has seen real images when the VAE was trained on renders only), or
    nothing ("none", an ablation: the U-Net's image channels get zeros, so it refines the coarse map as a prior on
    terrain alone and no image cue learnt on renders can mislead it on real scenes).
    ``prediction``: the U-Net outputs z0 itself ("z0", the paper's) or a correction added to its input z_t
    ("residual": a refiner that is unsure changes little, and one whose last layer is zero returns the coarse map).
    """

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    attention: tuple[bool, ...] = (True, True, True, True)  # self-attention per level (mid block always has it)
    attention_head_dim: int = 32
    norm_num_groups: int = 32
    timestep_mode: str = "alpha"
    num_train_steps: int = 6
    image_condition: str = "vae"
    prediction: str = "z0"

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class D3Config:
    name: str = "custom"
    coarse: CoarseConfig = field(default_factory=CoarseConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    tile_size: int = 512
    num_steps: int = 6
    eps: float = 0.8
    gsd_m: float | None = None
    data: str = ""
    band_order: tuple[str, ...] = RGB
    stretch_percentiles: tuple[float, float] = STRETCH_PERCENTILES

    @property
    def preprocessing(self) -> Preprocessing:
        """The imagery preprocessing this model was trained with (the raster engine applies it)."""
        return Preprocessing(self.band_order, self.stretch_percentiles, self.tile_size, self.gsd_m)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists, exactly what a checkpoint's metadata holds)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "D3Config":
        """Inverse of :meth:`to_dict`; unknown keys raise InputError rather than being silently dropped."""
        d = dict(d)
        legacy = d.pop("input_norm", LEGACY_INPUT_NORM)  # checkpoints written before the preprocessing fields
        if legacy != LEGACY_INPUT_NORM:
            raise InputError(f"unknown input normalisation {legacy!r}; this d3rsmde knows {LEGACY_INPUT_NORM!r}")
        subs = {"coarse": CoarseConfig, "vae": VAEConfig, "refiner": RefinerConfig}
        for key, sub_cls in subs.items():
            if key in d:
                d[key] = _build(sub_cls, d[key])
        return _build(cls, d)


def _build(cls, d: dict[str, Any]):
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise InputError(f"{cls.__name__}: expected a mapping, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise InputError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
    # JSON turns tuples into lists; the dataclasses declare tuples.
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


_NAMED: dict[str, D3Config] = {
    "tiny": D3Config(
        name="tiny",
        coarse=CoarseConfig(
            backbone="vit_small_patch16_224",
            embed_dim=32,
            depth=4,
            num_heads=2,
            hooks=(0, 1, 2, 3),
            reassemble_channels=(8, 16, 32, 32),
            features=16,
        ),
        vae=VAEConfig(
            block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4, scaling_factor=1.0
        ),
        refiner=RefinerConfig(
            block_out_channels=(16, 32),
            layers_per_block=1,
            attention=(False, True),
            attention_head_dim=8,
            norm_num_groups=4,
        ),
        tile_size=64,
    ),
    "small": D3Config(
        name="small",
        coarse=CoarseConfig(
            backbone="vit_small_patch16_224",
            embed_dim=256,
            depth=8,
            num_heads=4,
            hooks=(1, 3, 5, 7),
            reassemble_channels=(32, 64, 128, 128),
            features=64,
        ),
        vae=VAEConfig(
            block_out_channels=(32, 64, 128, 128), layers_per_block=1, norm_num_groups=16, scaling_factor=1.0
        ),
        refiner=RefinerConfig(
            block_out_channels=(64, 128, 128),
            layers_per_block=2,
            attention=(False, True, True),
            attention_head_dim=32,
            norm_num_groups=32,
        ),
        tile_size=256,
    ),
    # The shipped default: a pretrained EfficientNet-Lite0 stem under a small ViT (DPT-Hybrid shape), a slim VAE and
    # refiner, sized to <= 0.5 MFLOP per output pixel at T = 6 (tests/test_flops.py) and < 18 MB in fp16.
    "lean": D3Config(
        name="lean",
        coarse=CoarseConfig(
            backbone="vit_small_patch16_224",
            embed_dim=192,
            depth=6,
            num_heads=3,
            hooks=(2, 5),
            reassemble_channels=(32, 48, 96, 128),
            features=64,
            stem="efficientnet_lite0",
        ),
        vae=VAEConfig(
            block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8, scaling_factor=1.0
        ),
        refiner=RefinerConfig(
            block_out_channels=(48, 96, 96),
            layers_per_block=1,
            attention=(False, True, True),
            attention_head_dim=24,
            norm_num_groups=24,
        ),
        tile_size=256,
    ),
    "base": D3Config(
        name="base",
        coarse=CoarseConfig(
            backbone="vit_base_r50_s16_384",
            hooks=(2, 5, 8, 11),
            reassemble_channels=(256, 512, 768, 768),
            features=256,
        ),
        vae=VAEConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, scaling_factor=0.18215),
        # Paper: base 128, mults (1, 2, 4, 4), 2 res blocks, attention everywhere, 4 heads (32-dim heads at 128 ch;
        # diffusers takes one head width for all levels).
        refiner=RefinerConfig(
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            attention=(True, True, True, True),
            attention_head_dim=32,
        ),
        tile_size=512,
    ),
}


def config_names() -> list[str]:
    return sorted(_NAMED)


def get_config(name: str, **overrides: Any) -> D3Config:
    """A fresh copy of a named config. Overrides set top-level fields; sub-configs take a dict merged into them,
    e.g. ``get_config("tiny", num_steps=3, refiner={"timestep_mode": "learned"})``."""
    if name not in _NAMED:
        raise InputError(f"unknown config {name!r}; choose one of {config_names()}")
    d = _NAMED[name].to_dict()
    for key, value in overrides.items():
        if key not in d:
            raise InputError(f"unknown config field {key!r}; known: {sorted(d)}")
        if isinstance(d[key], dict) and isinstance(value, dict):
            d[key] = {**d[key], **value}
        elif dataclasses.is_dataclass(value):
            d[key] = dataclasses.asdict(value)
        else:
            d[key] = value
    return D3Config.from_dict(d)
