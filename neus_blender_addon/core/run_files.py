"""Files in an engine run directory (``engine/PROTOCOL.md``, "Files in RUN_DIR"). No bpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .camera_source import datasets_module
from .errors import AddonError, as_addon_error

MESH_PLY = "mesh.ply"
MESH_SUFFIXES = (".ply", ".obj", ".glb", ".gltf")
# OBJ first: it holds plain coordinates, while glTF importers convert axes (see blender_mesh).
TEXTURED_SUFFIXES = (".obj", ".glb", ".gltf")


def read_normalization(path: str | Path) -> np.ndarray:
    """``scale_mat`` (4, 4) normalized -> world from ``normalization.json`` (a file or its run directory), read by
    the project's one reader (``datasets.normalization_file``).

    Raises:
        AddonError: missing file, bad JSON, or a ``scale_mat`` that is not a finite invertible 4x4 matrix; the
            message is ``"<file>: <problem>"`` (``datasets``' ``DatasetError``).
    """
    with as_addon_error(ValueError):
        return datasets_module("normalization_file").read_normalization_json(path)[0]


def read_metres_per_unit(path: str | Path) -> float | None:
    """The run's true scale (metres per world unit) from ``normalization.json``, or None without one.

    Raises:
        AddonError: as :func:`read_normalization`, or a ``metres_per_unit`` that is not a positive number.
    """
    with as_addon_error(ValueError):
        return datasets_module("normalization_file").read_metres_per_unit(path)


def mesh_format(path: str | Path) -> str:
    """``"ply" | "obj" | "gltf"`` from a mesh file's suffix; AddonError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix == ".ply":
        return "ply"
    if suffix == ".obj":
        return "obj"
    if suffix in (".glb", ".gltf"):
        return "gltf"
    raise AddonError(f"{path}: unsupported mesh format '{suffix}' (expected .ply, .obj, .glb or .gltf)")


def textured_mesh_from(files: dict[str, str]) -> str | None:
    """A textured mesh (OBJ first, then glTF) among a ``done`` event's ``files``, if any."""
    for suffix in TEXTURED_SUFFIXES:
        for path in files.values():
            if str(path).lower().endswith(suffix):
                return str(path)
    return None


def newest_mesh(run_dir: str | Path, suffixes: tuple[str, ...] = TEXTURED_SUFFIXES, since: float = 0.0) -> str | None:
    """The most recently written mesh with one of ``suffixes`` directly in ``run_dir`` (modified after
    ``since``, seconds since the epoch)."""
    best: tuple[float, str] | None = None
    root = Path(run_dir)
    if not root.is_dir():
        return None
    for p in root.iterdir():
        if p.is_file() and p.suffix.lower() in suffixes:
            mtime = p.stat().st_mtime
            if mtime >= since and (best is None or mtime > best[0]):
                best = (mtime, str(p))
    return best[1] if best else None


RUN_PREFIX = "run_"


def next_run_dir(parent: str | Path) -> Path:
    """``parent/run_NNN`` with NNN one above the highest existing number (``run_001`` in a new folder): every
    run gets its own folder, so a new run never overwrites an earlier run's checkpoint or meshes."""
    parent = Path(parent)
    highest = 0
    if parent.is_dir():
        for p in parent.iterdir():
            number = p.name[len(RUN_PREFIX):]
            if p.name.startswith(RUN_PREFIX) and number.isdigit():
                highest = max(highest, int(number))
    return parent / f"{RUN_PREFIX}{highest + 1:03d}"
