"""How d3rsmde treats the user's files: outputs appear whole or not at all, scratch data never outlives its run, and
a run never writes over a file it depends on or, when asked, any file it did not create.

Every output goes through :func:`staged_output`: it is written in a private scratch folder beside its final path,
checked by the caller, flushed to disk and only then renamed into place. A scratch folder holds an advisory lock
for as long as its run lives; the next run in that folder removes scratch folders whose lock nobody holds (a run
killed by SIGKILL or a power cut), so nothing is left behind for long.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import InputError, OutputError

try:  # POSIX: a lock dies with its process, so a stale scratch folder is recognised at once
    import fcntl
except ImportError:  # Windows: stale folders are recognised by age alone
    fcntl = None

SCRATCH_SUFFIX = ".d3rsmde"
SCRATCH_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.d3rsmde")  # what mkdtemp makes of our prefix and suffix
LOCK = "lock"
STALE_AFTER_S = 24 * 3600  # Windows, where locks are not checked: a scratch folder is stale after a day
UNLOCKED_AFTER_S = 60  # POSIX, a scratch folder without a lock file


@contextmanager
def staged_output(dst: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """A private scratch folder beside ``dst``, removed on exit; ``folder / dst.name``, when the body has written it
    and returns without error, is flushed and renamed to ``dst``. Until then a previous ``dst`` is untouched.

    ``overwrite=False``: an existing ``dst`` is an error, also one that appears while the body runs.
    """
    dst = Path(dst)
    sweep_stale_scratch(dst.parent)
    try:
        folder = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=SCRATCH_SUFFIX))
    except OSError as exc:
        raise InputError(f"cannot write to the output folder {dst.parent}: {exc.strerror or exc}") from exc
    try:
        with _held_lock(folder / LOCK):
            yield folder
            staged = folder / dst.name
            if staged.exists():
                _publish(staged, dst, overwrite)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def atomic_file(path: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """A path to write ``path``'s new content to: when the body returns without error, the file written there is
    flushed and renamed to ``path``; otherwise it is removed and a previous ``path`` stays as it was. The one way
    d3rsmde writes a file anyone else reads (outputs, weights, caches, reports)."""
    path = Path(path)
    with staged_output(path, overwrite=overwrite) as folder:
        staged = folder / path.name
        yield staged
        if staged.exists():  # some writers (safetensors, mkstemp) make private files; others must read ours
            os.chmod(staged, _created_file_mode())


def _created_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under this process's umask (0o644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file (JSON, HTML) so that readers see the previous file or the whole new one."""
    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(describe_write_error(path, exc)) from exc


def describe_write_error(path: Path, exc: OSError) -> str:
    """One line for a failed write that says what the user can do and that nothing of theirs was lost."""
    path = Path(path)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = f"no space left on the disk holding {path.parent}; free some space or choose another folder"
    else:
        reason = exc.strerror or str(exc)
    return f"{path.name} was not written: {reason}. A previous file of that name, if any, is unchanged"


def sweep_stale_scratch(folder: Path) -> list[Path]:
    """Remove the scratch folders in ``folder`` left by runs that were killed; returns what was removed."""
    removed = []
    for path in Path(folder).glob(f".*{SCRATCH_SUFFIX}"):
        if _is_scratch(path) and _is_stale(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def check_not_an_input(dst: Path, what: str, path: Path, files: Iterable[str]) -> None:
    """Refuse an output that is (or links to) any file an input raster reads: itself, VRT sources, sidecars.

    ``files``: every file GDAL reads for the raster at ``path`` (see :func:`d3rsmde.raster.io.raster_files`).
    """
    target = _identity(dst)
    if _identity(path) == target:
        raise InputError(f"the output {dst} is the {what} raster; choose another output path")
    for name in files:
        if _identity(Path(name)) == target:
            raise InputError(f"the output {dst} is read by the {what} raster {Path(path).name} (as {name}); "
                             "choose another output path")


def folder_outputs(images: Sequence[Path], out_folder: Path, suffix: str) -> list[Path]:
    """One output path per image: ``stem + suffix``, never an existing file and never the same for two images.

    Images sharing a stem (scene.tif, scene.png) get their extension in the name (scene_tif_depth.tif); a name
    already taken in ``out_folder`` gets -2, -3... before the suffix's extension.
    """
    stems = [image.stem for image in images]
    taken: set[Path] = set()
    outputs = []
    for image, stem in zip(images, stems):
        if stems.count(stem) > 1:
            stem = f"{stem}_{image.suffix.lstrip('.')}"
        base, ext = os.path.splitext(f"{stem}{suffix}")
        candidate, n = Path(out_folder) / f"{base}{ext}", 1
        while candidate in taken or os.path.lexists(candidate):
            n += 1
            candidate = Path(out_folder) / f"{base}-{n}{ext}"
        taken.add(candidate)
        outputs.append(candidate)
    return outputs


def _publish(staged: Path, dst: Path, overwrite: bool) -> None:
    """Flush ``staged`` to disk, then rename it to ``dst`` (``overwrite=False``: atomically refuse an existing one)."""
    with open(staged, "rb+") as f:
        os.fsync(f.fileno())
    if overwrite:
        os.replace(staged, dst)
        return
    appeared = OutputError(f"{dst} appeared while this run was writing it; it was left as it is")
    try:
        os.link(staged, dst)  # fails if dst exists, with no window between the check and the rename
    except FileExistsError:
        raise appeared from None
    except OSError:  # a file system without hard links: check, then rename
        if os.path.lexists(dst):
            raise appeared from None
        os.replace(staged, dst)


@contextmanager
def _held_lock(path: Path) -> Iterator[None]:
    """Locks ``path`` for the body, then writes this process's id into it: an empty, unlocked lock file is one a
    run has created and not yet locked (:func:`_is_stale`)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


@contextmanager
def exclusive_folder(folder: Path, what: str) -> Iterator[None]:
    """Holds ``folder/.lock`` for the body, so that a second run building into the same folder stops with a clear
    error instead of deleting the first one's scratch files (and failing later). Without fcntl (Windows) nothing is
    checked."""
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    lock = folder / ".lock"
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another {what} is writing into {folder}: wait for it to end or choose another "
                             "folder") from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _is_scratch(path: Path) -> bool:
    """Named and filled as a scratch folder is (files only), so that no folder of the user's is ever taken for one."""
    try:
        return (SCRATCH_NAME.fullmatch(path.name) is not None and path.is_dir() and not path.is_symlink()
                and all(entry.is_file(follow_symlinks=False) for entry in os.scandir(path)))
    except OSError:
        return False


def _is_stale(folder: Path) -> bool:
    """No live run holds the folder's lock, and the lock was taken once (it holds a process id). Without fcntl
    (Windows), without a lock file (an older version's folder, or one created this instant) or with an empty one
    (a run between creating and locking it: swept then, it lost its scratch files in parallel QGIS runs), its age
    decides."""
    if fcntl is None:
        return _age_s(folder) > STALE_AFTER_S
    try:
        fd = os.open(folder / LOCK, os.O_RDWR)
    except FileNotFoundError:
        return _age_s(folder) > UNLOCKED_AFTER_S
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live run holds it
    else:  # unlocked: a killed run's, or, still empty, one created this instant by a run about to lock it
        return os.fstat(fd).st_size > 0 or _age_s(folder) > UNLOCKED_AFTER_S
    finally:
        os.close(fd)


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _identity(path: Path) -> tuple:
    """What makes two names the same file: device and inode when it exists, else the resolved path."""
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except OSError:
        return (os.path.realpath(path),)
