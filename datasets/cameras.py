"""Camera sets of the supported dataset formats, numpy + stdlib only (the Blender add-on vendors this module).

Formats (``format=`` names):

- ``"dtu"``: DTU / IDR / NeuS layout: ``cameras_sphere.npz`` + ``image/`` (+ ``mask/``). See
  ``formats/dtu.py``.
- ``"blender"``: NeRF-synthetic ``transforms_{train,val,test}.json`` or ``transforms.json``. See
  ``formats/blender.py``.
- ``"colmap"``: ``sparse/0/`` (or ``sparse/``) text or binary model + ``images/``. See ``formats/colmap.py``.

All of them return the conventions of ``datasets.geometry``: OpenCV-pixel ``K`` at the loaded resolution,
``c2w`` with OpenGL camera axes in the normalized frame (object inside the unit sphere), ``scale_mat``
normalized -> world.

Downscaling by ``s`` (any real ``s >= 1``) gives images of ``floor(W / s) x floor(H / s)`` pixels: the loader
box-filters the top-left ``(floor(W / s) * s) x (floor(H / s) * s)`` region of each image (right / bottom
rows that do not fill a whole output pixel are dropped), so the pixel map is exactly
``u' = (u + 0.5) / s - 0.5`` and ``K = scale_intrinsics(K_full, s)`` whether or not ``s`` divides the size.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from datasets.camera_set import CameraSet, check_downscale, downscaled_size
from datasets.errors import DatasetError
from datasets.formats import blender, colmap, dtu
from datasets.geometry import decompose_projection
from datasets.normalization import mean_up, region_scale_mat, renormalize_c2w
from datasets.scale_file import with_known_scale

__all__ = ["CameraSet", "FORMATS", "check_downscale", "decompose_projection", "detect_format", "downscaled_size",
           "load_cameras"]

FORMATS = ("dtu", "blender", "colmap")
SPLITS = ("train", "val", "test", "all")


def detect_format(path: str | Path) -> str:
    """Guesses the format of a dataset folder from the files it holds.

    Returns:
        "dtu" (a ``cameras*.npz``), "blender" (``transforms*.json``) or "colmap" (``sparse/``).
    Raises:
        DatasetError: the folder does not exist, is empty, or matches no format.
    """
    root = Path(path)
    if not root.exists():
        raise DatasetError(root, "dataset folder does not exist")
    if not root.is_dir():
        raise DatasetError(root, "not a folder")
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise DatasetError(root, "empty folder")
    if (root / "cameras_sphere.npz").is_file() or any(root.glob("cameras*.npz")):
        return "dtu"
    if any((root / f"transforms{suffix}.json").is_file() for suffix in ("", "_train", "_val", "_test")):
        return "blender"
    if colmap.find_sparse_folder(root) is not None:
        return "colmap"
    raise DatasetError(
        root,
        "unknown dataset format: expected cameras_sphere.npz (DTU/NeuS), transforms_train.json or "
        "transforms.json (NeRF-synthetic) or sparse/0/cameras.bin|txt (COLMAP)",
    )


def load_cameras(
    path: str | Path,
    format: str = "auto",
    downscale: float = 1,
    cameras_file: str | Path | None = None,
    split: str = "train",
    region: dict | None = None,
) -> CameraSet:
    """Loads the cameras of a dataset folder (reads image headers only, never pixels).

    Args:
        path: the dataset folder.
        format: "auto", "dtu", "blender" or "colmap".
        downscale: load at ``1 / downscale`` resolution (real number >= 1; see the module docstring).
        cameras_file: DTU: the npz to use instead of ``cameras_sphere.npz``; NeRF-synthetic: the JSON file to
            use instead of the split's. Relative paths are relative to ``path``.
        split: NeRF-synthetic only: "train", "val", "test" or "all" (the other formats have one split).
        region: a user region (``type`` auto | sphere | box, ``center``, ``radius``, ``half_size``, in the
            dataset's world frame) that replaces the format's normalization: see ``apply_region``.
    Raises:
        DatasetError: bad or inconsistent input; the message names the file and the problem.
    """
    root = Path(os.path.abspath(path))  # absolute, '..' folded: clearer messages
    if not root.is_dir():
        raise DatasetError(root, "dataset folder does not exist" if not root.exists() else "not a folder")
    factor = check_downscale(root, downscale)
    if split not in SPLITS:
        raise DatasetError(root, f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    fmt = format.lower() if isinstance(format, str) else format
    if fmt == "auto":
        suffix = Path(cameras_file).suffix.lower() if cameras_file is not None else ""
        fmt = {".npz": "dtu", ".json": "blender"}.get(suffix) or detect_format(root)
    if fmt not in FORMATS:
        raise DatasetError(root, f"unknown format {format!r}: expected auto, {', '.join(FORMATS)}")
    cam_file = None if cameras_file is None else _resolve(root, cameras_file)
    return apply_region(with_known_scale(_load_format(root, fmt, factor, cam_file, split)), region)


def _load_format(root: Path, fmt: str, factor: float, cam_file: Path | None, split: str) -> CameraSet:
    if fmt == "dtu":
        return dtu.load(root, factor, cam_file)
    if fmt == "blender":
        return blender.load(root, factor, cam_file, split)
    if cam_file is not None:
        raise DatasetError(cam_file, "cameras_file is not used by the COLMAP format (it reads sparse/0/)")
    return colmap.load(root, factor)


def apply_region(cams: CameraSet, region: dict | None) -> CameraSet:
    """The cameras re-normalized so that the unit sphere is the user's region (unchanged for ``auto``/None).

    Everything outside the region is then background (or ignored with masks), so clutter around the object does
    not become geometry. Every camera must stay outside the region: ray marching starts outside the unit sphere.
    """
    if not region:
        return cams
    try:
        scale_mat = region_scale_mat(region)
    except ValueError as exc:
        raise DatasetError(cams.root, str(exc)) from None
    if scale_mat is None:
        return cams
    c2w = renormalize_c2w(cams.c2w, cams.scale_mat, scale_mat)
    inside = [cams.names[i] for i in np.nonzero(np.linalg.norm(c2w[:, :, 3], axis=1) <= 1.0)[0]]
    if inside:
        raise DatasetError(cams.root, f"data.region contains {len(inside)} camera(s) (e.g. {inside[0]}); the region "
                           "must enclose the object only, with every camera outside it")
    return dataclasses.replace(cams, c2w=c2w, scale_mat=scale_mat, up=mean_up(c2w), region_notes=())


def _resolve(root: Path, name: str | Path) -> Path:
    p = Path(name)
    return p if p.is_absolute() else root / p
