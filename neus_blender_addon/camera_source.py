"""Camera loading through the project's ``datasets`` package (the one parser; no second one here). No bpy.

Where ``datasets`` comes from, first match wins:

1. ``neus_blender_addon._vendor.datasets``: the numpy-only camera modules that ``build_addon.py`` copies into
   the extension zip (Blender bundles numpy, not Pillow or torch);
2. a top-level ``datasets`` package already importable (tests, the engine's venv, a dev checkout on sys.path);
3. the repository the add-on folder lives in (a dev install that symlinks ``neus_blender_addon`` into Blender's
   add-on folder): its root is appended to ``sys.path``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

GENERIC_FOLDER_NAMES = {"data", "dataset", "images", "image", "input", "scene"}


def cameras_module() -> ModuleType:
    """The ``datasets.cameras`` module (vendored first).

    Raises:
        ImportError: with a message saying what is missing.
    """
    try:
        return importlib.import_module(f"{__package__}._vendor.datasets.cameras")
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith(f"{__package__}._vendor"):
            raise  # the vendored copy exists but is broken: say so rather than silently use another
    try:
        return importlib.import_module("datasets.cameras")
    except ModuleNotFoundError as e:
        if e.name not in ("datasets", "datasets.cameras"):
            raise
    root = Path(__file__).resolve().parent.parent
    if (root / "datasets" / "cameras.py").is_file():
        if str(root) not in sys.path:
            sys.path.append(str(root))
        sys.modules.pop("datasets", None)  # drop a failed namespace lookup before retrying
        return importlib.import_module("datasets.cameras")
    raise ImportError(
        "the camera loader (datasets.cameras) is missing: install the add-on from the zip made by build_addon.py, "
        "or use it from a checkout of the project"
    )


def load_camera_set(directory: str | Path, data_format: str = "auto") -> Any:
    """``datasets.cameras.load_cameras(directory, format=data_format)`` at full resolution.

    Raises:
        ValueError: (``DatasetError``) bad dataset, message ``"<path>: <problem>"``.
    """
    return cameras_module().load_cameras(Path(directory), format=data_format, downscale=1)


def dataset_name(directory: str | Path) -> str:
    """A display name for a dataset folder: its name, or its parent's when the name is generic (``.../scan/data``)."""
    p = Path(directory).resolve()
    if p.name.lower() in GENERIC_FOLDER_NAMES and p.parent.name:
        return p.parent.name
    return p.name or "dataset"


def view_names(names: list[str]) -> list[str]:
    """Camera names from image names: file stems when unique (``000000``), else the names with ``/`` -> ``_``."""
    stems = [Path(n).stem for n in names]
    if len(set(stems)) == len(stems):
        return stems
    return [str(n).replace("/", "_").replace("\\", "_") for n in names]
