"""Benchmarks of D3-RSMDE and its peers (see the README's Performance section)."""

import d3rsmde  # noqa: F401  before torch: its OpenMP wait policy applies to every benchmark process
