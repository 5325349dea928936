"""The shipped default stays within its compute budget (issue 12: <= 0.5 MFLOP per output pixel at T = 6)."""
from __future__ import annotations

from d3rsmde.config import get_config
from d3rsmde.flops import flops_per_pixel
from d3rsmde.weights import default_weights_path

BUDGET_FLOP_PER_PIXEL = 0.5e6


def test_default_config_fits_the_flop_budget():
    from d3rsmde.checkpoint import describe_checkpoint

    name = describe_checkpoint(default_weights_path())["config"]
    assert name == "lean"
    cost = flops_per_pixel(name)  # the config's own tile size and T
    assert cost["tile"] == get_config(name).tile_size and cost["refine_steps"] == 6
    assert cost["total"] <= BUDGET_FLOP_PER_PIXEL, cost
    assert flops_per_pixel(name, refine_steps=0)["total"] < cost["total"]  # refinement is counted, not skipped


def test_attention_is_counted_on_the_cpu():
    """torch's counter has no formula for the CPU attention kernel (it counted 0): the ViT's and the U-Nets'
    attention must be in the budget. Q K^T and the weighted sum of V: 2 x (2 N^2 d) per head."""
    import torch
    import torch.nn.functional as F

    from d3rsmde.flops import count_flops

    heads, tokens, dim = 3, 256, 64
    q = torch.rand(1, heads, tokens, dim)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == heads * 4 * tokens**2 * dim
