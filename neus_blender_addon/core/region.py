"""The editable region object -> the engine's user region (``data.region``, agreed interface). No bpy.

The region object is an empty under the dataset's parent, placed in the cameras' normalized frame: a sphere
empty of display size 1 with an identity local matrix is exactly the automatic region (the unit sphere). The
engine takes the region in the dataset's WORLD frame: ``data.region.type=sphere|box``, ``data.region.center``,
``data.region.radius`` (sphere) or ``data.region.half_size`` (box, axis-aligned in the world frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import AddonError

SHAPES = {"SPHERE": "sphere", "CUBE": "box"}  # Blender empty display type -> engine region type
# A local matrix this close to the identity is the untouched automatic region (float32 object matrices).
UNTOUCHED_TOL = 1e-5


@dataclass(frozen=True)
class Region:
    """A user region in the dataset's world frame."""

    type: str  # "sphere" or "box"
    center: tuple[float, float, float]  # world units
    radius: float | None = None  # sphere only
    half_size: tuple[float, float, float] | None = None  # box only: half extents along the world axes

    def settings(self) -> list[str]:
        """The engine ``--set`` overrides for this region."""
        out = [f"data.region.type={self.type}", f"data.region.center={_vec(self.center)}"]
        if self.type == "sphere":
            out.append(f"data.region.radius={self.radius:.7g}")
        else:
            out.append(f"data.region.half_size={_vec(self.half_size)}")
        return out


def _vec(v) -> str:
    return "[" + ",".join(f"{float(x):.7g}" for x in v) + "]"  # float32 object matrices


def shape_of(display_type: str) -> str:
    """Engine region type of a Blender empty display type; AddonError for shapes the engine has no region for."""
    if display_type not in SHAPES:
        raise AddonError(f"the region object must be a Sphere or Cube empty, not {display_type.title()}")
    return SHAPES[display_type]


def is_automatic(display_type: str, local: np.ndarray, display_size: float = 1.0) -> bool:
    """True for the untouched region object: a unit sphere at the normalized frame's origin."""
    M = np.asarray(local, dtype=np.float64)
    return (display_type == "SPHERE" and abs(display_size - 1.0) < UNTOUCHED_TOL
            and bool(np.allclose(M, np.eye(4), atol=UNTOUCHED_TOL)))


def region_in_world(display_type: str, local: np.ndarray, scale_mat: np.ndarray,
                    display_size: float = 1.0) -> Region:
    """The region object's shape in the dataset's world frame.

    Args:
        display_type: the empty's ``empty_display_type`` ("SPHERE" or "CUBE").
        local: (4, 4) the object's matrix relative to the dataset's parent (cameras' normalized frame).
        scale_mat: (4, 4) normalized -> world of the cameras.
        display_size: the empty's ``empty_display_size`` (a sphere's radius, a cube's half side).

    A scaled or rotated sphere becomes the sphere enclosing it (largest axis); a rotated box the world-axis box
    enclosing it.
    """
    kind = shape_of(display_type)
    M = np.asarray(scale_mat, dtype=np.float64) @ np.asarray(local, dtype=np.float64)
    A = M[:3, :3] * float(display_size)
    if abs(np.linalg.det(A)) < 1e-12:
        raise AddonError("the region object is scaled to nothing along some axis")
    center = tuple(float(x) for x in M[:3, 3])
    if kind == "sphere":
        return Region("sphere", center, radius=float(np.linalg.svd(A, compute_uv=False)[0]))
    return Region("box", center, half_size=tuple(float(x) for x in np.abs(A).sum(axis=1)))
