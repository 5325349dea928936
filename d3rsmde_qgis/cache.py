"""Keep the last loaded model between runs and batch rows: loading weights costs more than a small raster."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def pipeline_for(path: str, mtime_ns: int, device: str):
    """The model for one (weights file, its modification time, device); a rewritten file is reloaded."""
    from d3rsmde.pipeline import D3Pipeline

    return D3Pipeline.from_pretrained(path, device=device)


def load_pipeline(weights: Path, device: str):
    """A D3Pipeline for these weights on this device ("auto", "cpu" or "cuda"), reusing the cached one."""
    path = Path(weights).resolve()
    return pipeline_for(str(path), path.stat().st_mtime_ns, device)
