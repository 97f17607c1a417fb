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
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.errors import DatasetError
from datasets.geometry import decompose_projection

__all__ = ["CameraSet", "FORMATS", "decompose_projection", "detect_format", "load_cameras"]

FORMATS = ("dtu", "blender", "colmap")
SPLITS = ("train", "val", "test", "all")


@dataclass
class CameraSet:
    """Cameras of one dataset, without pixels.

    Attributes:
        names: N image names (file names; relative paths where the format has sub-folders).
        image_paths: N image files.
        mask_paths: N mask files, or None. A mask file with an alpha channel (NeRF-synthetic RGBA renders,
            where mask_paths == image_paths) is read from its alpha, and so is a separate mask file whose alpha
            is not opaque everywhere; others from their grey level, thresholded at half range.
        K: (N, 3, 3) float64 intrinsics at the loaded resolution (OpenCV pixel convention).
        c2w: (N, 3, 4) float64 camera-to-world, OpenGL camera axes, normalized frame.
        scale_mat: (4, 4) float64, normalized -> dataset world frame.
        width, height: image size in pixels at the loaded resolution.
        format: "dtu", "blender" or "colmap".
        root: the dataset folder.
        up: (3,) float64 unit average camera up direction in the normalized frame.
        downscale: the factor the images are loaded at (1 = full size).
        region_notes: why the automatic region is uncertain (``datasets.auto_region``), one line each; empty when
            it is not, when the format gives its region (DTU, NeRF-synthetic) or for a user region.
        metres_per_unit: metres per world unit from the dataset's known distance (``scale.json``,
            ``datasets.scale_file``), or None when none is given.
    """

    names: list[str]
    image_paths: list[Path]
    mask_paths: list[Path] | None
    K: np.ndarray
    c2w: np.ndarray
    scale_mat: np.ndarray
    width: int
    height: int
    format: str
    root: Path
    up: np.ndarray
    downscale: float
    # keyword-only with defaults, so Scene (a subclass) may add fields without defaults
    region_notes: tuple[str, ...] = dataclasses.field(default=(), kw_only=True)
    metres_per_unit: float | None = dataclasses.field(default=None, kw_only=True)

    @property
    def n_views(self) -> int:
        return len(self.names)

    def subset(self, indices: Sequence[int]):
        """A copy with only the views ``indices`` (same type: a Scene stays a Scene)."""
        idx = [int(i) for i in indices]
        changes = {
            "names": [self.names[i] for i in idx],
            "image_paths": [self.image_paths[i] for i in idx],
            "mask_paths": None if self.mask_paths is None else [self.mask_paths[i] for i in idx],
            "K": self.K[idx],
            "c2w": self.c2w[idx],
        }
        for name in ("images", "masks"):  # Scene fields
            value = getattr(self, name, None)
            if value is not None:
                changes[name] = value[idx]
        return dataclasses.replace(self, **changes)


def check_downscale(root: Path, downscale: float) -> float:
    """Validates a downscale factor (a real number >= 1)."""
    try:
        factor = float(downscale)
    except (TypeError, ValueError):
        raise DatasetError(root, f"downscale must be a number >= 1, got {downscale!r}") from None
    if not math.isfinite(factor) or factor < 1.0:
        raise DatasetError(root, f"downscale must be a number >= 1, got {downscale!r}")
    return factor


def downscaled_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """Image size after downscaling by ``factor``: floor sizes (the epsilon absorbs 1600 / 1.6 round-off)."""
    return int(math.floor(width / factor + 1e-9)), int(math.floor(height / factor + 1e-9))


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
    from datasets.formats.colmap import find_sparse_folder  # here: the format modules import this one

    if find_sparse_folder(root) is not None:
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
    from datasets.scale_file import with_known_scale  # here: it imports this module

    return apply_region(with_known_scale(_load_format(root, fmt, factor, cam_file, split)), region)


def _load_format(root: Path, fmt: str, factor: float, cam_file: Path | None, split: str) -> CameraSet:
    # Imported here: the format modules build CameraSet objects from this module.
    if fmt == "dtu":
        from datasets.formats import dtu

        return dtu.load(root, factor, cam_file)
    if fmt == "blender":
        from datasets.formats import blender

        return blender.load(root, factor, cam_file, split)
    if cam_file is not None:
        raise DatasetError(cam_file, "cameras_file is not used by the COLMAP format (it reads sparse/0/)")
    from datasets.formats import colmap

    return colmap.load(root, factor)


def apply_region(cams: CameraSet, region: dict | None) -> CameraSet:
    """The cameras re-normalized so that the unit sphere is the user's region (unchanged for ``auto``/None).

    Everything outside the region is then background (or ignored with masks), so clutter around the object does
    not become geometry. Every camera must stay outside the region: ray marching starts outside the unit sphere.
    """
    from datasets.normalization import mean_up, region_scale_mat, renormalize_c2w

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
