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
