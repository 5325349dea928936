"""The fine-tuning notebook runs end to end on the RMNP sample and writes weights the plugin can load."""

from pathlib import Path

import nbformat
import rasterio
from nbclient import NotebookClient

from d3rsmde.pipeline import D3Pipeline

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "backend" / "notebooks" / "finetune_region.ipynb"
SAMPLE = REPO / "resources" / "sample"


def with_parameters(nb, **values):
    """Replace the cell tagged "parameters", as papermill would inject them."""
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    cells[0].source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    return nb


def test_finetune_notebook_end_to_end(tmp_path, d3_provider, small_rgb):
    base = tmp_path / "tiny.safetensors"
    D3Pipeline.from_config("tiny").save_pretrained(base)
    out = tmp_path / "tuned.safetensors"
    nb = with_parameters(nbformat.read(NOTEBOOK, as_version=4), IMAGE=str(SAMPLE / "rmnp-rgb.tif"),
                         DEM=str(SAMPLE / "rmnp-dem.tif"), WEIGHTS=str(base), OUT_WEIGHTS=str(out), EPOCHS=1,
                         TILE=64, DEVICE="cpu", EXTENT=None)
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    tuned = D3Pipeline.from_pretrained(out, device="cpu")
    assert tuned.config.name == "tiny"
    assert "fine-tuned on" in tuned.config.data
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "| before |" in text and "| after |" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # the split map and the comparison

    import processing  # the QGIS plugin's "Estimate depth" accepts the notebook's weights

    depth = tmp_path / "depth.tif"
    processing.run("d3rsmde:estimatedepth", {"INPUT": str(small_rgb), "WEIGHTS": str(out), "DEVICE": 1,
                                             "OUTPUT": str(depth)})
    with rasterio.open(small_rgb) as src, rasterio.open(depth) as result:
        assert (result.crs, result.transform, result.shape) == (src.crs, src.transform, src.shape)
        assert result.tags()["model"] == "tiny"
