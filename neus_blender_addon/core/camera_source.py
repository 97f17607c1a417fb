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
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import AddonError, as_addon_error

ADDON_PACKAGE = __package__.rsplit(".", 1)[0]  # this module lives in <add-on>.core; the vendored copy in <add-on>

GENERIC_FOLDER_NAMES = {"data", "dataset", "images", "image", "input", "scene"}


def cameras_module() -> ModuleType:
    """The ``datasets.cameras`` module (vendored first).

    Raises:
        ImportError: with a message saying what is missing.
    """
    try:
        return importlib.import_module(f"{ADDON_PACKAGE}._vendor.datasets.cameras")
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith(f"{ADDON_PACKAGE}._vendor"):
            raise  # the vendored copy exists but is broken: say so rather than silently use another
    try:
        return importlib.import_module("datasets.cameras")
    except ModuleNotFoundError as e:
        if e.name not in ("datasets", "datasets.cameras"):
            raise
    root = Path(__file__).resolve().parents[2]  # <root>/neus_blender_addon/core/camera_source.py
    if (root / "datasets" / "cameras.py").is_file():
        if str(root) not in sys.path:
            sys.path.append(str(root))
        sys.modules.pop("datasets", None)  # drop a failed namespace lookup before retrying
        return importlib.import_module("datasets.cameras")
    raise ImportError(
        "the camera loader (datasets.cameras) is missing: install the add-on from the zip made by build_addon.py, "
        "or use it from a checkout of the project"
    )


def datasets_module(name: str) -> ModuleType:
    """``datasets.<name>`` from the same copy of ``datasets`` as the camera loader (vendored first). A module named
    here must be among build_addon.py's ``ENTRY_MODULES`` or what they import (tests/test_addon_build.py checks)."""
    package = cameras_module().__name__.rsplit(".", 1)[0]
    return importlib.import_module(f"{package}.{name}")


def load_camera_set(directory: str | Path, data_format: str = "auto", cameras_file: str | Path | None = None) -> Any:
    """``datasets.cameras.load_cameras(directory, format=data_format, cameras_file=...)`` at full resolution.

    Raises:
        AddonError: bad dataset (``datasets``' ``DatasetError``, message ``"<path>: <problem>"``), or the camera
            loader missing.
    """
    with as_addon_error(ValueError, ImportError):  # DatasetError is a ValueError
        return cameras_module().load_cameras(Path(directory), format=data_format, downscale=1,
                                             cameras_file=cameras_file)


def load_sparse_points(directory: str | Path) -> tuple[Any, Any] | None:
    """A COLMAP model's sparse points in the dataset's world frame: (P, 3) positions and (P, 3) uint8 colours, or
    None without a points3D file (``datasets.formats.colmap.read_sparse_points``).

    Raises:
        AddonError: a bad points3D file (``datasets``' ``DatasetError``).
    """
    with as_addon_error(ValueError):
        return datasets_module("formats.colmap").read_sparse_points(Path(directory))


@dataclass(frozen=True)
class DatasetFile:
    """What a file picked in File > Import (or dropped on the viewport) stands for."""

    root: Path  # the dataset folder
    data_format: str  # "auto", "dtu", "blender" or "colmap"
    cameras_file: Path | None = None  # a camera file other than the format's default, else None


COLMAP_MODEL_STEMS = ("cameras", "images", "points3D")


def dataset_from_path(path: str | Path) -> DatasetFile:
    """The dataset a picked path belongs to: a folder (format detected), a ``transforms*.json`` (NeRF-synthetic),
    a ``*.npz`` (DTU / NeuS), or a COLMAP model file (``sparse/0/cameras.bin`` ..., dataset = the folder above
    ``sparse``).

    Raises:
        AddonError: a file that is none of these, message ``"<path>: <problem>"``.
    """
    p = Path(path)
    if p.is_dir():
        return DatasetFile(p, "auto")
    suffix = p.suffix.lower()
    if suffix == ".json":
        default = p.name in ("transforms.json", "transforms_train.json")
        return DatasetFile(p.parent, "blender", None if default else p)
    if suffix == ".npz":
        return DatasetFile(p.parent, "dtu", None if p.name == "cameras_sphere.npz" else p)
    if suffix in (".bin", ".txt") and p.stem in COLMAP_MODEL_STEMS:
        model = p.parent
        root = model.parent.parent if model.parent.name == "sparse" else model.parent
        return DatasetFile(root, "colmap")
    raise AddonError(f"{p}: not a NeuS dataset file (expected transforms.json, cameras_sphere.npz, a COLMAP "
                     "cameras/images/points3D .bin or .txt, or a dataset folder)")


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
