"""Photos or a video that still need their cameras solved: the one rule the engine's ``fit``/``solve`` and the
Blender add-on share (stdlib + the numpy-only camera loader, so the add-on zip carries it)."""

from __future__ import annotations

from pathlib import Path

from datasets.cameras import detect_format
from datasets.errors import DatasetError
from datasets.imageinfo import natural_key

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mts")


def list_photos(folder: Path) -> list[Path]:
    """Photos at the top of ``folder`` (hidden files skipped), in name order."""
    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def has_cameras(folder: Path) -> bool:
    """A dataset format (camera file) is detected in ``folder``."""
    try:
        detect_format(folder)
    except DatasetError:
        return False
    return True


def needs_solving(source: str | Path) -> bool:
    """Whether ``fit SOURCE`` must solve cameras first: a video file, or a folder with photos at its top and no
    dataset format."""
    source = Path(source)
    if source.is_file():
        return source.suffix.lower() in VIDEO_SUFFIXES
    if not source.is_dir() or has_cameras(source):
        return False
    return bool(list_photos(source))
