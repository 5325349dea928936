"""Checkpoints: one safetensors file holding every component ("coarse.", "vae.", "refiner." keys) and, in its
metadata, the config that rebuilds the architecture plus what a user needs to judge the weights (data, GSD, tile).

A checkpoint may be split into shards (``max_shard_bytes``: git hosts and upload forms cap file sizes). The file
the user names is still the checkpoint: it holds the metadata, the first shard's tensors and the list of sibling
shard files, which are loaded with it and refuse to load on their own.

safetensors rather than pickle: loading weights someone sent you must not run their code.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from . import __version__
from .config import D3Config
from .errors import CheckpointError, InputError
from .files import atomic_file

FORMAT = "d3rsmde-pipeline"
SHARD_FORMAT = "d3rsmde-shard"
FORMAT_VERSION = 1
COMPONENTS = ("coarse", "vae", "refiner")
_STANDARD_KEYS = ("format", "format_version", "config", "d3rsmde_version", "created", "shards")
# Copies of config fields that files written before 0.2 also carry at the top level; read from the config only.
_LEGACY_KEYS = ("tile_size", "input_norm", "gsd_m", "data")


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, Tensor], config: D3Config,
                    metadata: dict[str, Any] | None = None, *, max_shard_bytes: int | None = None) -> Path:
    """Write ``tensors`` and ``config`` atomically (temp files in the same folder, then renames, ``path`` last).

    Extra ``metadata`` values are stored as strings (non-strings JSON-encoded); the standard keys come from the
    config and cannot be overridden here. With ``max_shard_bytes``, tensors beyond that size go to sibling files
    ``<stem>.shard2.safetensors``... listed in ``path``'s metadata.
    """
    path = Path(path)
    extra = dict(metadata or {})
    clash = sorted(set(extra) & {*_STANDARD_KEYS, *_LEGACY_KEYS})
    if clash:
        raise InputError(f"metadata keys {clash} are written from the config; set them there instead")
    groups = _split(tensors, max_shard_bytes) if max_shard_bytes else [tensors]
    shard_names = [f"{path.stem}.shard{i}{path.suffix}" for i in range(2, len(groups) + 1)]
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(config.to_dict()),
        "d3rsmde_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **({"shards": json.dumps(shard_names)} if shard_names else {}),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [(path.parent / name, group, {"format": SHARD_FORMAT, "shard_of": path.name})
             for name, group in zip(shard_names, groups[1:])] + [(path, groups[0], meta)]
    # Every file is complete before any is renamed into place, so a failure leaves no stray shard; the files are
    # published in the reverse order of entry: the shards first, the main file (entered first) last.
    with ExitStack() as stack:
        for target, group, group_meta in reversed(parts):
            tmp = stack.enter_context(atomic_file(target))
            save_file({k: v.detach().contiguous().cpu() for k, v in group.items()}, str(tmp), metadata=group_meta)
    return path


def _split(tensors: dict[str, Tensor], max_bytes: int) -> list[dict[str, Tensor]]:
    """Tensors in key order, packed greedily into groups of at most ``max_bytes`` (a bigger tensor goes alone)."""
    groups: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if groups[-1] and size + nbytes > max_bytes:
            groups.append({})
            size = 0
        groups[-1][key] = tensor
        size += nbytes
    return groups


def _read_metadata(path: Path) -> dict[str, str]:
    """Header-only read with the format checks; shared by load and describe."""
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (corrupt, truncated or another format): {e}"
        ) from e
    if meta.get("format") == SHARD_FORMAT:
        raise CheckpointError(f"{path} is one shard of the checkpoint {meta.get('shard_of')}; load that file "
                              "(with its shards beside it)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a d3rsmde checkpoint (no '{FORMAT}' format tag)")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path}: unreadable format_version {meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this d3rsmde ({__version__}) reads versions up to "
            f"{FORMAT_VERSION}. Update d3rsmde to use these weights."
        )
    return meta


def _parse_config(path: Path, meta: dict[str, str]) -> D3Config:
    try:
        return D3Config.from_dict(json.loads(meta["config"]))
    except (KeyError, json.JSONDecodeError, InputError, TypeError) as e:
        raise CheckpointError(f"{path}: the model config stored in the checkpoint is missing or unusable: {e}") from e


def checkpoint_config(path: str | os.PathLike) -> D3Config:
    """The model config stored in the checkpoint at ``path``, read from its header alone."""
    path = Path(path)
    return _parse_config(path, _read_metadata(path))


def _checkpoint_files(path: Path, meta: dict[str, str]) -> list[Path]:
    """The checkpoint's files: ``path`` then the shards its ``meta`` lists, each checked to exist and to belong
    to ``path``."""
    try:
        names = json.loads(meta.get("shards", "[]"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: unreadable shard list {meta['shards']!r}") from None
    files = [path]
    for name in names:
        shard = path.parent / name
        try:
            with safe_open(str(shard), framework="pt", device="cpu") as f:
                owner = (f.metadata() or {}).get("shard_of")
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: its shard {name} is missing or unreadable (keep the checkpoint's "
                                  f"files together): {e}") from e
        if owner != path.name:
            raise CheckpointError(f"{path}: {name} is not one of its shards (it belongs to {owner!r})")
        files.append(shard)
    return files


def checkpoint_provenance(path: str | os.PathLike, meta: dict[str, str]) -> dict[str, str]:
    """What names a checkpoint in the rasters made with it (``sha256sum`` can check it): the file's name and
    sha256, and each shard's name and sha256."""
    files = _checkpoint_files(Path(path), meta)
    digests = [_sha256(file) for file in files]
    provenance = {"weights": files[0].name, "weights_sha256": digests[0]}
    if len(files) > 1:
        provenance["weights_shards_sha256"] = " ".join(f"{f.name}:{d}" for f, d in zip(files[1:], digests[1:]))
    return provenance


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], D3Config, dict[str, str]]:
    """``(tensors, config, metadata)`` from a checkpoint written by :func:`save_checkpoint` (all its shards);
    CheckpointError otherwise."""
    path = Path(path)
    meta = _read_metadata(path)
    config = _parse_config(path, meta)
    tensors: dict[str, Tensor] = {}
    for file in _checkpoint_files(path, meta):
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                tensors.update({k: f.get_tensor(k) for k in f.keys()})
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: tensor data unreadable (corrupt or truncated): {e}") from e
    return tensors, config, meta


def load_component(module: nn.Module, tensors: dict[str, Tensor], prefix: str, source: str = "checkpoint") -> None:
    """Load ``prefix.*`` tensors into ``module``, reporting missing, unexpected and mis-shaped keys by name."""
    expected = module.state_dict()
    got = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    problems = []
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(expected) & set(got) if expected[k].shape != got[k].shape)
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            detail = ", ".join(
                f"{k} {tuple(got[k].shape)} vs {tuple(expected[k].shape)}" if label == "shape mismatch" else k
                for k in keys[:5]
            )
            problems.append(f"{len(keys)} {label} ({detail}{', ...' if len(keys) > 5 else ''})")
    if problems:
        raise CheckpointError(
            f"{source}: '{prefix}' weights do not match the model its config describes: " + "; ".join(problems)
        )
    module.load_state_dict(got, strict=True)


def describe_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """What ``d3rsmde info`` prints: config, training data, GSD, tile, parameters per component, dtype, size.
    Reads only the header, so it is instant even for large files."""
    path = Path(path)
    meta = _read_metadata(path)
    config = _parse_config(path, meta)
    params = dict.fromkeys(COMPONENTS, 0)
    dtypes: set[str] = set()
    files = _checkpoint_files(path, meta)
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                component = key.split(".", 1)[0]
                params[component] = params.get(component, 0) + int(torch.Size(sl.get_shape()).numel())
                dtypes.add(sl.get_dtype())
    extra = {k: v for k, v in meta.items() if k not in _STANDARD_KEYS and k not in _LEGACY_KEYS}
    return {
        "path": str(path),
        "files": [file.name for file in files],
        "size_bytes": sum(file.stat().st_size for file in files),
        "config": config.name,
        "data": config.data,
        "gsd_m": config.gsd_m,
        "tile_size": config.tile_size,
        "band_order": ",".join(config.band_order),
        "stretch_percentiles": list(config.stretch_percentiles),
        "num_steps": config.num_steps,
        "params": {**params, "total": sum(params.values())},
        "dtype": ",".join(sorted(dtypes)),
        "format_version": int(meta["format_version"]),
        "d3rsmde_version": meta.get("d3rsmde_version", ""),
        "created": meta.get("created", ""),
        "metadata": extra,
    }
