"""Tile metrics computed the way the paper's code does, so our numbers compare with its tables.

The task is relative height per tile, so ground truth and prediction are EACH min-max stretched to 0..255 and
rounded before anything is measured: a prediction off by any positive scale and shift scores perfectly.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from .defaults import sources_cache
from .errors import InputError

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # 11 x 11 window: scipy keeps int(truncate * sigma + 0.5) pixels on each side.
LPIPS_MIN_SIZE = 31  # AlexNet's five feature stages need at least this many pixels per side.

COLUMNS = (
    ("mae", "MAE ↓", "{:.2f}"),
    ("rmse", "RMSE ↓", "{:.2f}"),
    ("delta1", "δ1 ↑", "{:.3f}"),
    ("delta2", "δ2 ↑", "{:.3f}"),
    ("delta3", "δ3 ↑", "{:.3f}"),
    ("psnr", "PSNR ↑", "{:.2f}"),
    ("ssim", "SSIM ↑", "{:.3f}"),
    ("lpips", "LPIPS ↓", "{:.3f}"),
    ("grad_r", "∇r ↑", "{:.3f}"),
)

ALEXNET_CONVS = (0, 3, 6, 8, 10)  # torchvision ``alexnet().features`` indices of the five convolutions LPIPS taps


def depth_metrics(pred, gt, mask=None) -> dict:
    """MAE, RMSE, delta1..3, PSNR, SSIM, LPIPS and gradient correlation of one ``H x W`` prediction against its reference.

    ``pred``/``gt``: arrays or tensors (singleton leading dims allowed); ``mask``: True where ``gt`` is valid.
    Non-finite pixels of either map are invalid too; they are 0 in both stretched maps, so SSIM windows and LPIPS
    (which need whole images) see them as identical flat ground, and only valid pixels are averaged.
    ``lpips`` (LPIPS v0.1, AlexNet) is None, with ``lpips_status`` saying why, when its weights are not on this
    machine (never downloaded here: ``d3rsmde data lpips-weights`` fetches them once) or the tile is too small.
    """
    p, g = _as_map(pred, "pred"), _as_map(gt, "gt")
    if p.shape != g.shape:
        raise InputError(f"depth_metrics: pred {p.shape} and gt {g.shape} differ in shape")
    valid = np.isfinite(p) & np.isfinite(g)
    if mask is not None:
        m = _as_map(mask, "mask")
        if m.shape != g.shape:
            raise InputError(f"depth_metrics: mask {m.shape} does not match the maps {g.shape}")
        valid &= m.astype(bool)
    if not valid.any():
        raise InputError("depth_metrics: no valid pixel to compare (mask empty or maps all NaN)")
    p, g = _to_255(p, valid), _to_255(g, valid)

    diff = (p - g)[valid]
    mse = float(np.mean(diff**2))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(g / p, p / g)[valid]  # 0/0 is NaN and x/0 is inf: both fail every threshold.
    result = {
        "mae": float(np.mean(np.abs(diff))),
        "rmse": math.sqrt(mse),
        **{f"delta{k}": float(np.mean(ratio < 1.25**k)) for k in (1, 2, 3)},
        "psnr": 10.0 * math.log10(255.0**2 / mse) if mse > 0 else math.inf,
        "ssim": ssim(p, g, valid),
        "grad_r": gradient_correlation(p, g, valid),
    }
    result["lpips"], status = _lpips(p, g)
    if status:
        result["lpips_status"] = status
    return result


class PixelSums:
    """Running sums over pixel pairs, added window by window, that give whole-raster error figures in one pass:
    MAE, RMSE and bias (meaningful when both maps are in the same units) and the RMSE left after the best affine
    fit of the reference on the prediction (meaningful always)."""

    def __init__(self) -> None:
        self._sums = np.zeros(8)  # n, sum p, sum g, sum p^2, sum g^2, sum p*g, sum |p-g|, sum (p-g)^2

    def add(self, p: np.ndarray, g: np.ndarray) -> None:
        """Add paired valid pixels (1-D float64 arrays of equal length)."""
        d = p - g
        self._sums += [len(p), p.sum(), g.sum(), p @ p, g @ g, p @ g, np.abs(d).sum(), d @ d]

    @property
    def count(self) -> int:
        return int(self._sums[0])

    def errors(self) -> dict:
        """``mae``, ``rmse``, ``bias`` (prediction minus reference) and ``rmse_after_affine``: the residual of the
        least-squares fit g ~ s*p + o, from the same sums."""
        n, sp, sg, spp, sgg, spg, sad, ssd = self._sums
        var_p, var_g, cov = spp / n - (sp / n) ** 2, sgg / n - (sg / n) ** 2, spg / n - sp * sg / n**2
        residual = max(var_g - (cov * cov / var_p if var_p > 0 else 0.0), 0.0)
        return {"mae": sad / n, "rmse": math.sqrt(ssd / n), "bias": (sp - sg) / n,
                "rmse_after_affine": math.sqrt(residual)}


def ssim(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None, data_range: float = 255.0) -> float:
    """Gaussian-window SSIM (Wang et al. 2004: 11x11, sigma 1.5, K1 0.01, K2 0.03, population covariances).

    Same map as scikit-image's ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``
    with reflected edges; its mean drops a 5-pixel border the same way when the tile is large enough, and is taken
    over ``valid`` pixels only.
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    blur = functools.partial(gaussian_filter, sigma=SSIM_SIGMA, truncate=SSIM_RADIUS / SSIM_SIGMA, mode="reflect")
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    keep = np.ones(a.shape, bool) if valid is None else valid.copy()
    if min(a.shape) > 2 * SSIM_RADIUS:
        inner = np.zeros_like(keep)
        inner[SSIM_RADIUS:-SSIM_RADIUS, SSIM_RADIUS:-SSIM_RADIUS] = True
        if (keep & inner).any():
            keep &= inner
    return float(ssim_map[keep].mean())


def gradient_correlation(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> float | None:
    """Pearson r of the gradient magnitudes of two maps: does the prediction put slopes where the terrain has
    them? Invariant to scale and shift, unlike MAE; 0 for a map with no relief. Pixels whose central differences
    touch an invalid pixel are left out; None when fewer than 3 remain."""
    keep = np.ones(a.shape, bool) if valid is None else valid.astype(bool)
    if min(a.shape) < 3:
        return None
    inner = keep.copy()
    inner[1:-1, 1:-1] &= keep[:-2, 1:-1] & keep[2:, 1:-1] & keep[1:-1, :-2] & keep[1:-1, 2:]
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    if inner.sum() < 3:
        return None
    ga, gb = (np.hypot(*np.gradient(x.astype(np.float64)))[inner] for x in (a, b))
    if ga.std() == 0 or gb.std() == 0:
        return 0.0
    return float(np.corrcoef(ga, gb)[0, 1])


def format_metrics_table(rows: dict[str, dict], label: str = "model") -> str:
    """Markdown table, one row per entry of ``rows`` (name -> depth_metrics-like dict); missing values show n/a."""
    lines = [
        "| " + " | ".join([label] + [title for _, title, _ in COLUMNS]) + " |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for name, values in rows.items():
        cells = [name]
        for key, _, fmt in COLUMNS:
            value = values.get(key)
            cells.append("n/a" if value is None else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_differences(differences: dict[str, tuple[float, float | None] | None]) -> str:
    """``mae -4.62 +- 9.6, ssim ...``: paired differences (difference, standard error) on one line."""
    def one(key, pair):
        if pair is None:
            return f"{key} n/a"
        value, error = pair
        return f"{key} {value:+.3g}" + ("" if error is None else f" +- {error:.2g}")

    return ", ".join(one(key, pair) for key, pair in differences.items())


def alexnet_weights_path() -> Path:
    """Where torchvision would cache the AlexNet weights LPIPS needs (``$TORCH_HOME/hub/checkpoints/...``): a user's
    own copy there is used when the converted file of :func:`lpips_weights_path` is absent."""
    from torchvision.models import AlexNet_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(AlexNet_Weights.IMAGENET1K_V1.url).name


def lpips_weights_path(cache: str | os.PathLike | None = None) -> Path:
    """The LPIPS AlexNet v0.1 state dict that ``d3rsmde data lpips-weights`` (:mod:`d3rsmde.lpips_alexnet`) writes
    into the sources cache (:func:`d3rsmde.defaults.sources_cache`)."""
    return sources_cache(cache) / "lpips" / "alexnet-lpips-v0.1.pth"


def _as_map(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    while x.ndim > 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise InputError(f"depth_metrics: {name} must be one H x W map, got shape {x.shape}")
    return x.astype(np.float64) if x.dtype != bool else x


def _to_255(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Min-max stretch of the valid pixels to 0..255, rounded; invalid pixels become 0 (never measured)."""
    low, high = x[valid].min(), x[valid].max()
    scaled = (x - low) / (high - low) * 255.0 if high > low else np.zeros_like(x)
    return np.where(valid, np.round(scaled), 0.0)


def _lpips(p: np.ndarray, g: np.ndarray) -> tuple[float | None, str | None]:
    if min(p.shape) < LPIPS_MIN_SIZE:
        return None, f"unavailable: tile {p.shape[1]}x{p.shape[0]} is smaller than AlexNet's {LPIPS_MIN_SIZE} px"
    converted, hub = lpips_weights_path(), alexnet_weights_path()
    weights = next((path for path in (converted, hub) if path.is_file()), None)
    if weights is None:  # checked on every call (not cached), so weights fetched later in a session are used
        return None, (
            f"unavailable: LPIPS weights not found at {converted} (never downloaded while measuring; run "
            f"`d3rsmde data lpips-weights` once to fetch and convert them, or copy torchvision's "
            f"alexnet-owt-7be5be79.pth to {hub})"
        )
    model, status = _lpips_model(str(weights), weights == converted, weights.stat().st_mtime_ns)
    if model is None:
        return None, status

    def as_input(x):  # 0..255 -> [-1, 1], one map replicated to the 3 channels AlexNet expects
        return torch.from_numpy(x / 127.5 - 1.0).float().expand(1, 3, *x.shape)

    with torch.no_grad():
        return float(model(as_input(p), as_input(g)).item()), None


def lpips_model_from_state(weights: str):
    """``lpips.LPIPS(net="alex")`` with every weight from the converted file ``weights`` (AlexNet features and the
    v0.1 linear layers); nothing is downloaded. Raises if a layer is missing or of the wrong shape."""
    import lpips

    state = torch.load(weights, map_location="cpu", weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation notes about lpips's `pretrained=` call
        model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    slices = {index: f"slice{k}" for k, index in enumerate(ALEXNET_CONVS, start=1)}  # lpips's split of the features
    mapped = {}
    for key, value in state.items():
        layer, index, name = key.split(".", 2)
        if layer == "features" and int(index) in slices:
            mapped[f"net.{slices[int(index)]}.{index}.{name}"] = value
        elif layer.startswith("lin") and layer[3:].isdigit():
            mapped[key] = mapped[f"lins.{layer[3:]}.{index}.{name}"] = value
        else:
            raise KeyError(f"unexpected entry {key}")
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.startswith("scaling_layer.")]  # constants, not learned
    if missing or unexpected:
        raise KeyError(f"missing {missing}, unexpected {unexpected}")
    return model.eval()


@functools.lru_cache(maxsize=2)
def _lpips_model(weights: str, converted: bool, mtime_ns: int):
    """The LPIPS (AlexNet) model, or None and the reason; only ever loads weights already on disk: the converted
    file, or torchvision's AlexNet in the torch hub cache (with the lpips package's own linear layers)."""
    try:
        import lpips
    except ImportError:
        return None, "unavailable: the lpips package is not installed (pip install lpips)"
    try:
        if converted:
            return lpips_model_from_state(weights), None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecation notes about lpips's `pretrained=` call
            model = lpips.LPIPS(net="alex", verbose=False).eval()
    except Exception as err:  # a truncated or foreign file: report it, metrics stay usable
        return None, f"unavailable: could not load LPIPS weights from {weights}: {err}"
    return model, None
