"""Atomic file writes: the bytes land in a temporary file in the destination folder and are renamed into place.

A reader (the Blender add-on polling for preview meshes, a user opening ``config.yaml``) never sees half a file, and
a failure leaves the previous file untouched and no temporary behind. Used by training (checkpoints, config),
commands (renders) and the mesh writers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from . import failpoints

# errno values of a full disk or quota.
DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})

# Temporary files start with this prefix (the repository's .gitignore ignores it).
TMP_PREFIX = ".neus_tmp"

# mkstemp creates 0600 files; give the final file the mode a plain open() would (read once: os.umask sets it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _replace(src: Path, dst: Path, tries: int = 20) -> None:
    """os.replace, retried briefly: on Windows it fails while another process (Blender) has ``dst`` open."""
    for attempt in range(tries):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if os.name != "nt" or attempt == tries - 1:
                raise
            time.sleep(0.05)


def write_kind(path: Path) -> str | None:
    """What a write is, for the failpoints ``disk_full@<kind>`` and ``kill@<kind>_write``: ``checkpoint``,
    ``config``, ``preview`` (training's preview meshes) or ``export`` (the mesh files); None for anything else."""
    if path.suffix == ".ckpt":
        return "checkpoint"
    if path.name == "config.yaml":
        return "config"
    if path.parent.name == "preview":
        return "preview"
    return "export" if path.name.startswith("mesh") else None


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Deletes the temporaries that a killed process left in ``folder`` and below (``TMP_PREFIX`` names). Returns
    them. Only for a folder that no other process is writing to (a run folder, at the start of a command)."""
    removed = []
    for tmp in Path(folder).rglob(f"{TMP_PREFIX}.*"):
        with contextlib.suppress(OSError):
            if tmp.is_file():
                tmp.unlink()
                removed.append(tmp)
    return removed


def keep_previous(path: Path, previous: Path) -> None:
    """Makes ``previous`` a copy of ``path`` (a hard link where the file system has them), atomically: ``path`` stays
    in place throughout, so a kill at any moment leaves both names valid. Writers only ever rename onto ``path``,
    never write into it, so the link keeps the old contents."""
    if previous.exists() and os.path.samefile(path, previous):
        return  # already linked (a run killed before it renamed the new file onto ``path``); rename would no-op
    tmp = previous.parent / f"{TMP_PREFIX}.{previous.stem}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        try:
            os.link(path, tmp)
        except OSError:  # no hard links here (FAT, some network shares)
            import shutil

            shutil.copyfile(path, tmp)
        _replace(tmp, previous)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = True) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; renames it onto ``path`` if the block succeeds.

    For libraries that write by file name. The temporary is a hidden file named ``.neus_tmp.<name>.<random>``
    ending in ``path``'s suffix (``keep_suffix``, for writers that pick the format from the extension) or in
    ``.tmp``. On an exception the temporary is removed and ``path`` is untouched.
    """
    path = Path(path)
    suffix = path.suffix if keep_suffix else ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}.{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        failpoints.maybe_fail_write(write_kind(path), tmp_path)
        with contextlib.suppress(OSError):
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        _replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:  # name the file meant, not its temporary
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Opens a temporary file next to ``path`` for writing; renames it onto ``path`` if the block succeeds.

    Args:
        path: destination file (its folder must exist).
        mode: ``"wb"`` (binary) or ``"w"`` (text).
        encoding: text encoding (defaults to UTF-8 in text mode).
    Yields:
        the open file object. The data are flushed and fsync'ed before the rename, so a crash never leaves a
        truncated file under the final name. On an exception nothing is renamed and the temporary is deleted.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    # A ".tmp" ending: a folder watcher globbing "*.ply" never picks up a file still being written.
    with atomic_path(path, keep_suffix=False) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """``path.write_bytes(data)``, atomically. Returns the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


__all__ = ["DISK_FULL", "TMP_PREFIX", "atomic_path", "atomic_write", "keep_previous", "remove_temporaries",
           "write_bytes_atomically", "write_kind"]
