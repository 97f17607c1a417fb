"""``CameraSet`` (a dataset's cameras without pixels) and the downscale arithmetic, numpy + stdlib only.

The format readers (``datasets.formats``) build ``CameraSet`` objects from this module; the registry that picks a
reader (``datasets.cameras``) imports them, never the other way round.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.errors import DatasetError


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
