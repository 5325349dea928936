#!/usr/bin/env python3
"""Build the zip that QGIS's "Install from ZIP" accepts: one top folder d3rsmde_qgis/ holding the plugin code,
metadata.txt, icons, styles, the default weights (if trained), the d3rsmde backend under libs/ without its
training-data builders (the plugin adds it to sys.path when no installed d3rsmde is found), LICENSE and README.
torch/timm/diffusers are not bundled: too big, and platform-specific; the plugin installs them or says how.
tests/test_packaging.py checks the zip against the QGIS plugin repository's upload rules.

    python scripts/package_plugin.py --out dist/d3rsmde_qgis.zip
"""
from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path

from d3rsmde.files import atomic_file

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "d3rsmde_qgis"
RESOURCES = {"icons": "d3rsmde.*", "styles": "*.qml", "weights": "*.safetensors"}
DOCS = ("LICENSE", "README.md")
# Training-data builders (downloads of DEMs and imagery, DEM rendering): the plugin never runs them, and the
# plugin repository asks that a plugin not fetch code or data it does not need.
TRAINING_DATA_MODULES = ("sources.py", "pairs.py", "lpips_alexnet.py", "dems.py", "render*.py")


def tree_files(folder: Path) -> list[Path]:
    """Regular files under `folder`, without caches or symlinks (the in-repo plugin links metadata/resources)."""
    found = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not (Path(current) / d).is_symlink())
        found += [Path(current) / f for f in sorted(files)
                  if not f.endswith(".pyc") and not (Path(current) / f).is_symlink()]
    return found


def plugin_files(root: Path = ROOT) -> dict[str, Path]:
    """Archive name -> source file, for everything the plugin zip contains."""
    plugin_dir = root / PLUGIN
    files = {f"{PLUGIN}/{path.relative_to(plugin_dir).as_posix()}": path for path in tree_files(plugin_dir)}
    files[f"{PLUGIN}/metadata.txt"] = root / "metadata.txt"
    for kind, pattern in RESOURCES.items():
        for path in sorted((root / "resources" / kind).glob(pattern)):
            files[f"{PLUGIN}/resources/{kind}/{path.name}"] = path
    backend = root / "backend" / "d3rsmde"
    for path in tree_files(backend):
        if path.parent == backend and any(path.match(pattern) for pattern in TRAINING_DATA_MODULES):
            continue
        files[f"{PLUGIN}/libs/d3rsmde/{path.relative_to(backend).as_posix()}"] = path
    for name in DOCS:
        if (root / name).is_file():
            files[f"{PLUGIN}/{name}"] = root / name
        else:
            print(f"warning: {root / name} is missing; the zip will not contain it", file=sys.stderr)
    return files


def build_zip(out: Path, root: Path = ROOT) -> Path:
    """Write the plugin zip to `out` atomically (a failed build never leaves a truncated zip behind)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, path in sorted(plugin_files(root).items()):
            archive.write(path, name)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / f"{PLUGIN}.zip", help="zip file to write")
    out = build_zip(parser.parse_args(argv).out)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
