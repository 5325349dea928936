"""Weight-space interpolation between a model and its fine-tuned version (WiSE-FT, Wortsman et al. 2022).

Fine-tuning on one distribution (here: renders) moves a model toward it and away from what it handled before;
the networks halfway between the start and the fine-tuned weights usually keep most of the gain and more of the
robustness to other distributions (measured for the default weights in the model card).
"""

from __future__ import annotations

import os

from ..errors import InputError
from ..pipeline import D3Pipeline


def interpolate_weights(start: str | os.PathLike, tuned: str | os.PathLike, alpha: float = 0.5) -> D3Pipeline:
    """``(1 - alpha) * start + alpha * tuned`` for every floating-point tensor of every component (integer
    buffers, e.g. batch-norm counters, come from ``tuned``); both files must hold the same config. The result
    carries ``tuned``'s config and provenance."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}")
    a = D3Pipeline.from_pretrained(start, device="cpu")
    b = D3Pipeline.from_pretrained(tuned, device="cpu")
    if a.config.name != b.config.name:
        raise InputError(f"{start} holds a {a.config.name!r} model and {tuned} a {b.config.name!r} one")
    for name, module in b.components.items():
        first = a.components[name].state_dict()
        module.load_state_dict({key: (1 - alpha) * first[key] + alpha * value if value.is_floating_point() else value
                                for key, value in module.state_dict().items()})
    return b
