"""Coarse height model: a timm ViT with a DPT head (Ranftl et al. 2021), trained with the HDN loss.

The ViT sees the whole tile at once (global context decides what is high); the DPT head reassembles four
intermediate token maps into a 1/4..1/32 pyramid and fuses it back up so the map keeps sharp edges.
"""

from __future__ import annotations

import functools
import math
import threading

import timm
import torch
from timm.layers import HybridEmbed, resample_abs_pos_embed
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import CoarseConfig
from ..errors import InputError
from .stem import build_stem, load_stem_weights


def _hybrid_embed(stem: nn.Module, **kwargs) -> HybridEmbed:
    """timm's ViT builds its patch embedding through this: the stem, then a 1x1 projection of its 1/16 map."""
    kwargs.update(patch_size=1, feature_ratio=16)
    kwargs.pop("dynamic_img_pad", None)
    return HybridEmbed(backbone=stem, **kwargs)


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """RefineNet-style fusion: add the (refined) skip level, refine, upsample to the next level's size."""

    def __init__(self, features: int, with_skip: bool = True):
        super().__init__()
        self.skip_unit = ResidualConvUnit(features) if with_skip else None  # the coarsest level has no skip
        self.unit = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: Tensor, skip: Tensor | None, size: tuple[int, int]) -> Tensor:
        if self.skip_unit is not None:
            x = x + self.skip_unit(skip)
        x = F.interpolate(self.unit(x), size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


def _resample(channels: int, factor: float) -> nn.Module:
    """Move a 1/patch token map to another scale: transposed conv up, strided conv down."""
    if factor > 1:
        k = int(factor)
        return nn.ConvTranspose2d(channels, channels, k, stride=k)
    if factor < 1:
        s = int(round(1 / factor))
        return nn.Conv2d(channels, channels, 3, stride=s, padding=1)
    return nn.Identity()


class CoarseDepthModel(nn.Module):
    """Images ``B x 3 x H x W`` in [0, 1] -> non-negative relative height ``B x 1 x H x W``.

    H and W must be multiples of the patch size; position embeddings are resampled for any such size.
    """

    def __init__(self, cfg: CoarseConfig, img_size: int = 512):
        super().__init__()
        levels_from_vit = 2 if cfg.stem else 4
        if len(cfg.hooks) != levels_from_vit or len(cfg.reassemble_channels) != 4:
            raise InputError(f"CoarseConfig needs {levels_from_vit} hooks ({'hybrid' if cfg.stem else 'plain'} "
                             "ViT) and 4 reassemble_channels (DPT levels 1/4..1/32)")
        self.cfg = cfg
        sizes = {k: v for k, v in (("embed_dim", cfg.embed_dim), ("depth", cfg.depth), ("num_heads", cfg.num_heads))
                 if v is not None}
        # The stem's 1/4 and 1/8 maps between its hook and forward(), per calling thread: one model may serve
        # several threads at once (QGIS runs algorithms in parallel and the plugin shares its loaded model).
        self._skips: dict[int, list[Tensor]] = {}
        if cfg.stem:
            stem = build_stem(cfg.stem)
            if cfg.stem_weights:
                load_stem_weights(stem, cfg.stem_weights)
            # The ViT embeds the stem's 1/16 map with a 1x1 projection; a hook keeps the 1/4 and 1/8 maps.
            stem.register_forward_hook(lambda _m, _i, feats: self._skips.__setitem__(threading.get_ident(), feats[:2]))
            sizes["embed_layer"] = functools.partial(_hybrid_embed, stem)
        try:
            self.backbone = timm.create_model(
                cfg.backbone,
                pretrained=cfg.pretrained_backbone,
                num_classes=0,
                dynamic_img_size=True,
                img_size=img_size,
                **sizes,
            )
        except (OSError, RuntimeError) as e:
            if not cfg.pretrained_backbone:
                raise
            raise InputError(
                f"cannot get pretrained weights for timm backbone {cfg.backbone!r} (they must be in timm's cache "
                f"or downloadable); set pretrained_backbone=False to start from random weights: {e}"
            ) from e
        # Blocks after the last hook and the final norm would be dead weight (and unused parameters under DDP).
        self.backbone.prune_intermediate_layers(list(cfg.hooks), prune_norm=True, prune_head=True)
        # Normalise with the statistics the first pretrained layers expect (the stem's when there is one).
        pcfg = self.stem.pretrained_cfg if self.stem is not None else self.backbone.pretrained_cfg
        mean = pcfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN)
        std = pcfg.get("std", timm.data.IMAGENET_DEFAULT_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

        width = self.backbone.embed_dim
        p, f = cfg.patch_size, cfg.features
        inputs = [width] * 4
        if self.stem is not None:
            inputs[:2] = self.stem.feature_info.channels()[:2]
        self.reassemble = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, c, 1),
                          nn.Identity() if self.stem is not None and i < 2 else _resample(c, p / (4 * 2**i)))
            for i, (cin, c) in enumerate(zip(inputs, cfg.reassemble_channels))
        )
        self.project = nn.ModuleList(nn.Conv2d(c, f, 3, padding=1, bias=False) for c in cfg.reassemble_channels)
        self.fusion = nn.ModuleList(FusionBlock(f, with_skip=i < 3) for i in range(4))
        self.head = nn.Sequential(
            nn.Conv2d(f, f // 2, 3, padding=1),
            nn.Conv2d(f // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 1),
        )
        # Start the output well above zero: with the final ReLU, a head that starts negative everywhere has no
        # gradient and never learns (seen for several seeds, 42 among them).
        nn.init.constant_(self.head[-1].bias, 1.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Weights trained at another tile size carry another grid of position embeddings: resample it (as timm
        does for its own checkpoints), so a model can be fine-tuned or rebuilt at a new tile size."""
        key = prefix + "backbone.pos_embed"
        stored, own = state_dict.get(key), self.backbone.pos_embed
        if stored is not None and stored.shape != own.shape:
            prefix_tokens = 0 if self.backbone.no_embed_class else self.backbone.num_prefix_tokens
            side = math.isqrt(stored.shape[1] - prefix_tokens)
            if side * side + prefix_tokens != stored.shape[1] or stored.shape[2] != own.shape[2]:
                raise InputError(f"position embeddings of shape {tuple(stored.shape)} do not fit this model "
                                 f"({tuple(own.shape)})")
            state_dict[key] = resample_abs_pos_embed(stored, list(self.backbone.patch_embed.grid_size), [side, side],
                                                     num_prefix_tokens=prefix_tokens)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def stem(self) -> nn.Module | None:
        """The CNN stem of a hybrid model; it lives (and is saved) inside the ViT's patch embedding."""
        return self.backbone.patch_embed.backbone if self.cfg.stem else None

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    @property
    def latent_feature_channels(self) -> int | None:
        """Channels of :meth:`latent_features` (None without a CNN stem)."""
        return self.stem.feature_info.channels()[1] if self.stem is not None else None

    def latent_features(self, images: Tensor) -> Tensor:
        """The stem's 1/8 map of ``images`` (the VAE latent's scale): ImageNet-pretrained features of the image
        for a refiner conditioned on them (``RefinerConfig.image_condition`` "stem")."""
        if self.stem is None:
            raise InputError("this coarse model has no CNN stem")
        features = self.stem((images - self.mean.to(images.dtype)) / self.std.to(images.dtype))
        self._skips.pop(threading.get_ident(), None)
        return features[1]

    def forward(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise InputError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        tokens = self.backbone.forward_intermediates(
            x, indices=list(self.cfg.hooks), output_fmt="NCHW", intermediates_only=True
        )
        if self.stem is not None:
            tokens = [*self._skips.pop(threading.get_ident()), *tokens]
        levels = [proj(re(t)) for t, re, proj in zip(tokens, self.reassemble, self.project)]  # 1/4 .. 1/32
        # Fuse from the coarsest level up; block i upsamples to level i-1's size, block 0 to half resolution.
        up_to = [(h // 2, w // 2)] + [tuple(lvl.shape[-2:]) for lvl in levels[:3]]
        out = self.fusion[3](levels[3], None, up_to[3])
        for i in (2, 1, 0):
            out = self.fusion[i](out, levels[i], up_to[i])
        out = F.interpolate(self.head(out), size=(h, w), mode="bilinear", align_corners=True)
        return F.relu(out)
