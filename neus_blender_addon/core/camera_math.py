"""Pinhole cameras (OpenCV intrinsics + OpenGL c2w) -> Blender camera parameters. numpy only, no bpy.

Blender's perspective camera (``BKE_camera_params_compute_viewplane``), for a render of ``W x H`` pixels with
pixel aspect ``(ax, ay)``:

- ``ycor = ay / ax``; the sensor fit is horizontal or vertical (AUTO picks horizontal when ``ax*W >= ay*H``, and
  then always uses ``sensor_width``, even for a vertical fit);
- ``viewfac = W`` (horizontal fit) or ``ycor * H`` (vertical fit); at unit depth one "view-plane unit" is
  ``sensor / (lens * viewfac)``; the frame spans ``[-W/2, W/2] x ycor*[-H/2, H/2]`` view-plane units, moved by
  ``shift * viewfac`` in both axes.

Matching that against OpenCV, where integer pixel coordinates are pixel *centres* and the image spans
``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` (see ``datasets/geometry.py``), gives

    fx = lens * viewfac / sensor          fy = fx / ycor
    cx = W/2 - 0.5 - shift_x * viewfac    cy = H/2 - 0.5 + shift_y * viewfac / ycor

so the shift is measured in units of the fitted image side (the larger of ``ax*W`` and ``ay*H`` for AUTO).
Pixel aspect is a *scene* setting in Blender, so one ``fy / fx`` ratio is chosen for all cameras (the median);
each camera's focal length is then a least-squares compromise, and :func:`max_reprojection_error` says how far
that (and any skew, which Blender cannot represent) moves pixels. For DTU the residual is ~1e-4 px.

Extrinsics: ``c2w`` already uses OpenGL camera axes (x right, y up, looking down -z), which are Blender's camera
axes, so ``matrix_world = [c2w; 0 0 0 1]`` with no flip. (An OpenCV ``c2w`` would need its y and z columns
negated: ``R_gl = R_cv @ diag(1, -1, -1)``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AddonError

# Full-frame width in millimetres: the fitted sensor side. Only lens/sensor matters for the projection.
DEFAULT_SENSOR_MM = 36.0


@dataclass(frozen=True)
class RenderSettings:
    """Scene-level render settings shared by all cameras of a set."""

    resolution_x: int
    resolution_y: int
    pixel_aspect_x: float
    pixel_aspect_y: float

    @property
    def ycor(self) -> float:
        return self.pixel_aspect_y / self.pixel_aspect_x

    @property
    def sensor_fit(self) -> str:
        """The fit AUTO would pick; we set it explicitly so later resolution edits keep the same field of view."""
        wide = self.pixel_aspect_x * self.resolution_x >= self.pixel_aspect_y * self.resolution_y
        return "HORIZONTAL" if wide else "VERTICAL"


@dataclass(frozen=True)
class BlenderLens:
    """Per-camera data-block settings (``bpy.types.Camera``)."""

    lens: float  # focal length, mm
    sensor_width: float  # mm
    sensor_height: float  # mm
    sensor_fit: str  # "HORIZONTAL" | "VERTICAL" | "AUTO"
    shift_x: float  # in units of the fitted image side
    shift_y: float


@dataclass(frozen=True)
class BlenderCamera:
    """One camera of a set, ready to be turned into a Blender object."""

    name: str
    image_path: str | None
    lens: BlenderLens
    matrix_world: np.ndarray  # (4, 4) camera-to-frame, Blender camera axes
    max_error_px: float  # worst pixel displacement of the Blender camera vs. the original K


@dataclass(frozen=True)
class SceneCameras:
    """All cameras of a dataset converted for Blender."""

    render: RenderSettings
    cameras: list[BlenderCamera]
    scale_mat: np.ndarray  # (4, 4) normalized -> world
    clip_start: float  # in normalized-frame units
    clip_end: float


def render_settings(K: np.ndarray, width: int, height: int) -> RenderSettings:
    """Resolution and pixel aspect for a camera set.

    Args:
        K: (N, 3, 3) or (3, 3) intrinsics.
        width, height: image size in pixels.
    """
    K = np.asarray(K, dtype=np.float64).reshape(-1, 3, 3)
    ratio = float(np.median(K[:, 1, 1] / K[:, 0, 0]))  # fy / fx = ax / ay in Blender
    if not np.isfinite(ratio) or ratio <= 0:
        raise AddonError(f"invalid focal lengths in K (fy/fx = {ratio})")
    if abs(ratio - 1.0) < 1e-9:
        ratio = 1.0
    # Blender clamps each pixel aspect to >= 1, so the larger side carries the ratio.
    ax, ay = (ratio, 1.0) if ratio >= 1.0 else (1.0, 1.0 / ratio)
    return RenderSettings(int(width), int(height), ax, ay)


def intrinsics_to_blender(
    K: np.ndarray, render: RenderSettings, sensor_mm: float = DEFAULT_SENSOR_MM
) -> BlenderLens:
    """OpenCV intrinsics -> Blender lens, sensor and shift for the given render settings.

    Args:
        K: (3, 3) intrinsics (OpenCV pixel convention). Skew is ignored (Blender has none).
        render: scene resolution and pixel aspect (see :func:`render_settings`).
        sensor_mm: size of the fitted sensor side.
    """
    K = np.asarray(K, dtype=np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if not (fx > 0 and fy > 0):
        raise AddonError(f"focal lengths must be positive, got fx={fx}, fy={fy}")
    W, H = render.resolution_x, render.resolution_y
    ycor = render.ycor
    # Blender realizes fx_b = F and fy_b = F / ycor. Choose F minimizing the squared pixel error at the image
    # edges: (F - fx) * wx and (F / ycor - fy) * wy, with w* the half extents in normalized image coordinates.
    wx2 = (W / (2.0 * fx)) ** 2
    wy2 = (H / (2.0 * fy)) ** 2
    F = (fx * wx2 + fy * wy2 / ycor) / (wx2 + wy2 / ycor**2)

    fit = render.sensor_fit
    if fit == "HORIZONTAL":
        viewfac = float(W)
        sensor_w = sensor_mm
        sensor_h = sensor_mm * (render.pixel_aspect_y * H) / (render.pixel_aspect_x * W)
        lens = F * sensor_w / viewfac
    else:
        viewfac = ycor * H
        sensor_h = sensor_mm
        sensor_w = sensor_mm * (render.pixel_aspect_x * W) / (render.pixel_aspect_y * H)
        lens = F * sensor_h / viewfac
    shift_x = (W / 2.0 - 0.5 - cx) / viewfac
    shift_y = ycor * (cy - H / 2.0 + 0.5) / viewfac
    return BlenderLens(float(lens), float(sensor_w), float(sensor_h), fit, float(shift_x), float(shift_y))


def blender_to_intrinsics(lens: BlenderLens, render: RenderSettings) -> np.ndarray:
    """The OpenCV intrinsics a Blender camera realizes (``datasets.geometry.blender_view_intrinsics``, the model
    of Blender's view plane shared with the sample scene's render script).

    Returns:
        (3, 3) K.
    """
    from .camera_source import datasets_module

    return datasets_module("geometry").blender_view_intrinsics(
        render.resolution_x, render.resolution_y, render.pixel_aspect_x, render.pixel_aspect_y, lens.lens,
        lens.sensor_width, lens.sensor_height, lens.sensor_fit, lens.shift_x, lens.shift_y)


def max_reprojection_error(K_true: np.ndarray, K_approx: np.ndarray, width: int, height: int) -> float:
    """Largest pixel displacement between two intrinsics over a grid spanning the whole image.

    A ray through pixel ``p`` under ``K_true`` lands at ``K_approx @ K_true^-1 @ p``.
    """
    us = np.linspace(-0.5, width - 0.5, 9)
    vs = np.linspace(-0.5, height - 0.5, 9)
    uu, vv = np.meshgrid(us, vs)
    pix = np.stack([uu.ravel(), vv.ravel(), np.ones(uu.size)], axis=0)  # (3, P)
    mapped = np.asarray(K_approx, np.float64) @ np.linalg.solve(np.asarray(K_true, np.float64), pix)
    mapped = mapped[:2] / mapped[2:3]
    return float(np.max(np.linalg.norm(mapped - pix[:2], axis=0)))


def c2w_to_matrix_world(c2w: np.ndarray) -> np.ndarray:
    """(3, 4) camera-to-world with OpenGL axes -> (4, 4) Blender ``matrix_world`` (rotation re-orthonormalized).

    Blender decomposes object matrices into location/rotation/scale, so a rotation that is orthonormal only to
    float precision is snapped to the nearest rotation (polar decomposition) rather than gaining a tiny scale.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape not in ((3, 4), (4, 4)) or not np.all(np.isfinite(c2w)):
        raise AddonError(f"c2w must be a finite (3, 4) matrix, got shape {c2w.shape}")
    U, _, Vt = np.linalg.svd(c2w[:3, :3])
    R = U @ Vt
    if np.linalg.det(R) < 0:
        raise AddonError("c2w rotation is a reflection (determinant < 0)")
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = c2w[:3, 3]
    return M


def opencv_c2w_to_blender(c2w_cv: np.ndarray) -> np.ndarray:
    """(3, 4) camera-to-world with OpenCV axes (y down, z forward) -> (4, 4) Blender ``matrix_world``."""
    c2w_cv = np.asarray(c2w_cv, dtype=np.float64)
    gl = c2w_cv[:3, :4].copy()
    gl[:, 1:3] *= -1.0  # R_gl = R_cv @ diag(1, -1, -1)
    return c2w_to_matrix_world(gl)


def check_scale_mat(scale_mat: np.ndarray) -> np.ndarray:
    """Validates a normalized->world (4, 4) matrix usable as a Blender object matrix (no shear/projection)."""
    M = np.asarray(scale_mat, dtype=np.float64)
    if M.shape != (4, 4) or not np.all(np.isfinite(M)):
        raise AddonError(f"scale_mat must be a finite 4x4 matrix, got shape {M.shape}")
    if not np.allclose(M[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise AddonError(f"scale_mat bottom row must be [0, 0, 0, 1], got {M[3].tolist()}")
    A = M[:3, :3]
    gram = A.T @ A
    if abs(np.linalg.det(A)) < 1e-12:
        raise AddonError("scale_mat is singular")
    # Blender object matrices hold rotation * (axis-aligned) scale; A^T A must then be diagonal.
    off = gram - np.diag(np.diag(gram))
    if np.max(np.abs(off)) > 1e-6 * np.max(np.abs(gram)):
        raise AddonError("scale_mat has shear, which a Blender object matrix cannot hold")
    return M


def frame_scale(scale_mat: np.ndarray) -> float:
    """Mean linear scale of a normalized->world matrix (radius of the unit sphere in world units)."""
    return float(abs(np.linalg.det(np.asarray(scale_mat, np.float64)[:3, :3])) ** (1.0 / 3.0))


def _single_size(value: Any, what: str) -> int:
    arr = np.unique(np.asarray(value).reshape(-1))
    if arr.size != 1:
        raise AddonError(f"cameras have different image {what}s {arr.tolist()}; Blender has one render size")
    return int(arr[0])


def convert_cameras(
    K: np.ndarray,
    c2w: np.ndarray,
    width: int,
    height: int,
    names: Sequence[str],
    image_paths: Sequence[str | None] | None = None,
    scale_mat: np.ndarray | None = None,
    sensor_mm: float = DEFAULT_SENSOR_MM,
) -> SceneCameras:
    """Converts a whole camera set.

    Args:
        K: (N, 3, 3) intrinsics, OpenCV pixel convention.
        c2w: (N, 3, 4) camera-to-frame, OpenGL axes, normalized frame.
        width, height: image size (one size for all views).
        names: N camera names.
        image_paths: N photo paths (or None).
        scale_mat: (4, 4) normalized -> world; identity if None.
    """
    K = np.asarray(K, dtype=np.float64).reshape(-1, 3, 3)
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 3, 4)
    n = K.shape[0]
    if c2w.shape[0] != n or len(names) != n:
        raise AddonError(f"camera count mismatch: {n} K, {c2w.shape[0]} c2w, {len(names)} names")
    paths = list(image_paths) if image_paths is not None else [None] * n
    render = render_settings(K, width, height)
    cams: list[BlenderCamera] = []
    for i in range(n):
        lens = intrinsics_to_blender(K[i], render, sensor_mm)
        err = max_reprojection_error(K[i], blender_to_intrinsics(lens, render), render.resolution_x,
                                     render.resolution_y)
        cams.append(BlenderCamera(str(names[i]), None if paths[i] is None else str(paths[i]), lens,
                                  c2w_to_matrix_world(c2w[i]), err))
    S = check_scale_mat(np.eye(4) if scale_mat is None else scale_mat)
    far = float(np.max(np.linalg.norm(c2w[:, :, 3], axis=1))) if n else 1.0
    return SceneCameras(render, cams, S, clip_start=0.01, clip_end=max(100.0, 10.0 * far))


def convert_camera_set(cams: Any, sensor_mm: float = DEFAULT_SENSOR_MM) -> SceneCameras:
    """Converts a ``datasets.cameras.CameraSet`` (fields names, image_paths, K, c2w, scale_mat, width, height)."""
    raw_names = getattr(cams, "names", None)
    names = [] if raw_names is None else [str(x) for x in raw_names]
    raw_paths = getattr(cams, "image_paths", None)
    n = np.asarray(cams.K).reshape(-1, 3, 3).shape[0]
    paths = [None] * n if raw_paths is None else [None if p is None else str(p) for p in raw_paths]
    if not names:
        names = [Path(p).stem if p else f"view_{i:03d}" for i, p in enumerate(paths)]
    return convert_cameras(
        cams.K, cams.c2w, _single_size(cams.width, "width"), _single_size(cams.height, "height"),
        names, paths, getattr(cams, "scale_mat", None), sensor_mm,
    )


# -- scene layout: upright parent, result placement, view selection, image planes ------------------------------
def upright_rotation(up: np.ndarray) -> np.ndarray:
    """(3, 3) the smallest rotation taking the direction ``up`` (3,) onto +Z (a half turn about X when ``up`` is
    -Z). Rotating the whole scene by it keeps every relative pose, so the engine's frames are untouched."""
    u = np.asarray(up, dtype=np.float64).reshape(3)
    norm = float(np.linalg.norm(u))
    if not np.isfinite(norm) or norm < 1e-12:
        return np.eye(3)
    u = u / norm
    z = np.array([0.0, 0.0, 1.0])
    c = float(np.dot(u, z))
    if c < -1.0 + 1e-12:
        return np.diag([1.0, -1.0, -1.0])
    v = np.cross(u, z)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)  # Rodrigues for unit vectors u -> z


def frame_matrix(scale_mat: np.ndarray, frame: str) -> np.ndarray:
    """(4, 4) the normalized -> shown frame: identity for ``"normalized"``, ``scale_mat`` for ``"world"``."""
    if frame not in ("normalized", "world"):
        raise AddonError(f"unknown frame '{frame}' (expected normalized or world)")
    return check_scale_mat(scale_mat) if frame == "world" else np.eye(4)


def metric_factor(scale_mat: np.ndarray, frame: str, metres_per_unit: float | None) -> float:
    """Uniform scale taking the shown frame (``frame_matrix``) to metres: ``metres_per_unit`` (metres per world
    unit, from the dataset's known distance) for the world frame, times the unit sphere's world radius for the
    normalized frame; 1 without a known distance."""
    if metres_per_unit is None:
        return 1.0
    if not (np.isfinite(metres_per_unit) and metres_per_unit > 0):
        raise AddonError(f"metres per unit must be a positive number, got {metres_per_unit!r}")
    return float(metres_per_unit) * (1.0 if frame == "world" else frame_scale(check_scale_mat(scale_mat)))


def parent_matrix(scale_mat: np.ndarray, frame: str, up: np.ndarray,
                  metres_per_unit: float | None = None) -> np.ndarray:
    """(4, 4) ``matrix_world`` of the dataset's parent empty: the upright rotation after the frame matrix, scaled to
    metres when the dataset has a known distance (``metric_factor``).

    Children are placed in the cameras' normalized frame, so ``up`` (3,) is the cameras' mean up there
    (``CameraSet.up``); the frame matrix turns it before the rotation brings it onto +Z.
    """
    F = frame_matrix(scale_mat, frame)
    R = np.eye(4)
    R[:3, :3] = upright_rotation(F[:3, :3] @ np.asarray(up, dtype=np.float64).reshape(3))
    M = np.diag([*[metric_factor(scale_mat, frame, metres_per_unit)] * 3, 1.0])
    return M @ R @ F


def result_matrix(camera_scale_mat: np.ndarray, run_scale_mat: np.ndarray) -> np.ndarray:
    """(4, 4) local matrix, under the dataset's parent, of a mesh in a run's normalized frame.

    Both matrices map a normalized frame to the same dataset world; they differ when the run chose its own
    region (``data.region``), so the mesh goes world-ward with the run's and back with the cameras'.
    """
    return np.linalg.inv(check_scale_mat(camera_scale_mat)) @ check_scale_mat(run_scale_mat)


def select_views(n: int, every: int = 1, subset: str = "") -> list[int]:
    """Indices of the views to import: every ``every``-th view of ``subset`` (all views when empty).

    ``subset`` lists 0-based indices and ranges, e.g. ``"0-9, 12, 20-"`` (a range's end is included; an open
    end runs to the last view). Raises AddonError for text it cannot read or an index outside ``0..n-1``.
    """
    if every < 1:
        raise AddonError(f"every k-th view needs k >= 1, got {every}")
    picked: list[int] = []
    text = subset.strip()
    if not text:
        picked = list(range(n))
    for item in (p.strip() for p in text.replace(";", ",").split(",") if text):
        if not item:
            continue
        first, dash, last = item.partition("-")
        try:
            lo = int(first) if first.strip() else 0
            hi = (int(last) if last.strip() else n - 1) if dash else lo
        except ValueError:
            raise AddonError(f"view subset: '{item}' is not an index or a range like 3-7") from None
        if not (0 <= lo <= hi < n):
            raise AddonError(f"view subset: '{item}' is outside the views 0-{n - 1}")
        picked.extend(i for i in range(lo, hi + 1) if i not in picked)
    return picked[::every]


def image_plane_corners(K: np.ndarray, width: int, height: int, depth: float) -> np.ndarray:
    """(4, 3) corners of the image rectangle at ``depth`` in front of an OpenGL camera (looking down -z), in the
    order top-left, top-right, bottom-right, bottom-left of the photo (UV (0,1), (1,1), (1,0), (0,0))."""
    K = np.asarray(K, dtype=np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    us = np.array([-0.5, width - 0.5, width - 0.5, -0.5])  # OpenCV: the image spans [-0.5, W - 0.5]
    vs = np.array([-0.5, -0.5, height - 0.5, height - 0.5])
    x = (us - cx) / fx * depth
    y = -(vs - cy) / fy * depth  # OpenCV y points down, OpenGL y up
    return np.stack([x, y, np.full(4, -float(depth))], axis=1)
