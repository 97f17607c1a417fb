"""Choosing the normalized frame (object inside the unit sphere) for formats that lack one (numpy only).

DTU / IDR scenes come with ``scale_mat``; NeRF-synthetic and COLMAP scenes get one from their cameras:

- centre: the least-squares point closest to every camera's optical axis (where the cameras look), when the
  axes spread enough to define it and it lies in front of most cameras;
- radius: format specific (see ``datasets.formats.blender`` and ``datasets.formats.colmap``), always small
  enough that every camera stays outside the unit sphere, which ray marching inside the sphere relies on.
"""

from __future__ import annotations

import numpy as np

# Below this mean "spread" (smallest eigenvalue of sum(I - d d^T) / N, about sin^2 of the angular
# spread of the axes, here ~6 degrees) the optical axes are too close to parallel to intersect
# (forward-facing capture).
_MIN_AXIS_SPREAD = 0.01


def look_at_center(c2w: np.ndarray) -> np.ndarray | None:
    """Least-squares point closest to all optical axes, or None when it is ill-defined.

    Args:
        c2w: (N, 3, 4) cameras (OpenGL axes: the optical axis is -z).
    Returns:
        (3,) the point, or None if the axes are nearly parallel or the point is behind most cameras.
    """
    origins = c2w[:, :, 3]
    dirs = -c2w[:, :, 2]
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    proj = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]  # (N,3,3) projectors orthogonal to each axis
    A = proj.sum(axis=0)
    b = np.einsum("nij,nj->i", proj, origins)
    if np.linalg.eigvalsh(A)[0] < _MIN_AXIS_SPREAD * len(c2w):
        return None
    center = np.linalg.solve(A, b)
    in_front = np.einsum("ni,ni->n", center[None] - origins, dirs) > 0
    if in_front.mean() < 0.5:
        return None
    return center


def view_radius(K: np.ndarray, c2w: np.ndarray, width: int, height: int, center: np.ndarray) -> float:
    """Radius of a sphere around ``center`` that spans the longer side of every image (a size estimate).

    Per camera: ``distance * tan(half of the wider field of view, less the centre's off-axis angle)``; the
    minimum over cameras. For NeRF-synthetic (40 degrees, distance 4.03) this gives 1.45, close to the 1.5 those
    objects fit in; for DTU scan 65 it encloses the object, which fills the views.

    Args:
        K: (N, 3, 3) intrinsics; c2w: (N, 3, 4) cameras; width, height: image size in pixels.
        center: (3,) sphere centre in the frame of ``c2w``.
    """
    radii = []
    for Ki, cam in zip(K, c2w, strict=True):
        fx, fy, cx, cy = Ki[0, 0], Ki[1, 1], Ki[0, 2], Ki[1, 2]
        # Half fields of view measured from the optical axis to the nearer border, horizontally and vertically.
        half_x = np.arctan(min(cx + 0.5, width - 0.5 - cx) / fx)
        half_y = np.arctan(min(cy + 0.5, height - 0.5 - cy) / fy)
        wide = max(half_x, half_y)
        to_center = center - cam[:, 3]
        dist = float(np.linalg.norm(to_center))
        cos_off = float(np.dot(to_center, -cam[:, 2])) / max(dist, 1e-12)
        off_axis = np.arccos(np.clip(cos_off, -1.0, 1.0))
        radii.append(dist * np.tan(max(wide - off_axis, 0.05 * wide)))
    return float(min(radii))


def camera_distances(c2w: np.ndarray, center: np.ndarray) -> np.ndarray:
    """(N,) distances of the camera centres of ``c2w`` (N, 3, 4) to ``center`` (3,)."""
    return np.linalg.norm(c2w[:, :, 3] - center[None], axis=1)


def scale_matrix(center: np.ndarray, radius: float) -> np.ndarray:
    """(4, 4) ``scale_mat``, normalized frame -> world: ``x_world = radius * x_norm + center``."""
    mat = np.eye(4)
    mat[:3, :3] *= radius
    mat[:3, 3] = center
    return mat


def normalize_c2w(c2w: np.ndarray, scale_mat: np.ndarray) -> np.ndarray:
    """World-frame cameras (N, 3, 4) -> normalized frame, for a similarity ``scale_mat`` (4, 4).

    The rotation part of a similarity is ``s * R``; camera axes turn with ``R`` and centres map through the
    inverse.
    """
    scale = np.cbrt(np.linalg.det(scale_mat[:3, :3]))
    rot = scale_mat[:3, :3] / scale
    out = np.empty_like(c2w, dtype=np.float64)
    out[:, :, :3] = np.einsum("ji,njk->nik", rot, c2w[:, :, :3])
    out[:, :, 3] = np.einsum("ji,nj->ni", rot, c2w[:, :, 3] - scale_mat[None, :3, 3]) / scale
    return out


def mean_up(c2w: np.ndarray) -> np.ndarray:
    """(3,) unit average of the cameras' up (+y, OpenGL) axes; +z if they cancel out (e.g. random roll)."""
    up = c2w[:, :, 1].mean(axis=0)
    norm = np.linalg.norm(up)
    if norm < 1e-6:
        return np.array([0.0, 0.0, 1.0])
    return up / norm


# --- user region -------------------------------------------------------------------------------------------

REGION_TYPES = ("auto", "sphere", "box")


def _vector(value, name: str) -> np.ndarray:
    try:
        vec = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        vec = np.zeros(0)
    if vec.shape != (3,) or not np.all(np.isfinite(vec)):
        raise ValueError(f"data.region.{name} must be three numbers [x, y, z], got {value!r}")
    return vec


def region_scale_mat(region: dict) -> np.ndarray | None:
    """``scale_mat`` (4, 4) whose unit sphere is the user's region, or None for ``auto``.

    ``region``: ``type`` (auto | sphere | box), ``center`` [x, y, z] in the dataset's world frame, ``radius``
    (sphere) or ``half_size`` [hx, hy, hz] (axis-aligned box; the unit sphere is then the box's circumscribed
    sphere, and meshes are cropped to the box). Raises ValueError naming the key that is wrong.
    """
    kind = region.get("type") or "auto"
    if kind not in REGION_TYPES:
        raise ValueError(f"data.region.type must be one of {', '.join(REGION_TYPES)}, got {kind!r}")
    if kind == "auto":
        return None
    center = _vector(region.get("center"), "center")
    if kind == "sphere":
        radius = region.get("radius")
        if not isinstance(radius, int | float) or isinstance(radius, bool) or not np.isfinite(radius) or radius <= 0:
            raise ValueError(f"data.region.radius must be a positive number for a sphere, got {radius!r}")
        return scale_matrix(center, float(radius))
    half = _vector(region.get("half_size"), "half_size")
    if np.any(half <= 0):
        raise ValueError(f"data.region.half_size must be positive, got {half.tolist()}")
    return scale_matrix(center, float(np.linalg.norm(half)))


def renormalize_c2w(c2w: np.ndarray, old_scale_mat: np.ndarray, new_scale_mat: np.ndarray) -> np.ndarray:
    """(N, 3, 4) cameras in the frame of ``old_scale_mat`` -> the frame of ``new_scale_mat`` (both similarities)."""
    scale = np.cbrt(np.linalg.det(old_scale_mat[:3, :3]))
    world = np.empty_like(c2w, dtype=np.float64)
    world[:, :, :3] = np.einsum("ij,njk->nik", old_scale_mat[:3, :3] / scale, c2w[:, :, :3])
    world[:, :, 3] = c2w[:, :, 3] @ old_scale_mat[:3, :3].T + old_scale_mat[:3, 3]
    return normalize_c2w(world, new_scale_mat)


def region_record(region: dict | None, scale_mat: np.ndarray) -> dict:
    """What ``normalization.json`` records under ``region``: the user's region, or the one derived (``auto``)."""
    kind = (region or {}).get("type") or "auto"
    scale = float(np.cbrt(np.linalg.det(scale_mat[:3, :3])))
    record = {"type": kind, "center": [float(v) for v in scale_mat[:3, 3]], "radius": scale}
    if kind == "box":
        record["half_size"] = [float(v) for v in _vector(region.get("half_size"), "half_size")]
    return record


def box_half_size_normalized(region: dict | None, scale_mat: np.ndarray) -> np.ndarray | None:
    """(3,) half size of a user box in the normalized frame, None for other regions."""
    if not region or region.get("type") != "box":
        return None
    scale = float(np.cbrt(np.linalg.det(scale_mat[:3, :3])))
    return _vector(region.get("half_size"), "half_size") / scale
