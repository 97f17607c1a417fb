"""Rays through pixel centres and camera trajectories (numpy only; conventions in ``datasets.geometry``)."""

from __future__ import annotations

import numpy as np


def pixel_directions(K: np.ndarray, height: int, width: int, dtype=np.float32) -> np.ndarray:
    """Camera-frame directions through the pixel centres (OpenCV pixel (i, j) at u = i, v = j).

    Args:
        K: (3, 3) intrinsics.
        height, width: image size in pixels.
    Returns:
        (height, width, 3) directions in OpenGL camera axes (x right, y up), scaled so that z = -1.
    """
    K = np.asarray(K, dtype=np.float64)
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64), indexing="xy")
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    cam = pix @ np.linalg.inv(K).T  # OpenCV camera axes
    cam = cam / cam[..., 2:3]  # z = 1 even if K[2, 2] != 1
    return (cam * np.array([1.0, -1.0, -1.0])).astype(dtype, copy=False)


def camera_rays(
    K: np.ndarray, c2w: np.ndarray, height: int, width: int, normalize: bool = True, dtype=np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """World-frame rays through every pixel centre of one camera.

    Args:
        K: (3, 3) intrinsics; c2w: (3, 4) camera-to-world (OpenGL axes).
        normalize: unit directions; otherwise the camera-frame z = -1 scaling is kept (t is then depth).
    Returns:
        origins (height, width, 3) and directions (height, width, 3).
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    dirs = pixel_directions(K, height, width, dtype=np.float64) @ c2w[:3, :3].T
    if normalize:
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    origins = np.broadcast_to(c2w[:3, 3], dirs.shape).astype(dtype)
    return origins, dirs.astype(dtype, copy=False)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """(3, 4) c2w (OpenGL axes) of a camera at ``eye`` looking at ``target``, ``up`` up in the image."""
    eye = np.asarray(eye, dtype=np.float64)
    back = eye - np.asarray(target, dtype=np.float64)
    back /= np.linalg.norm(back)
    right = np.cross(np.asarray(up, dtype=np.float64), back)
    if np.linalg.norm(right) < 1e-9:  # looking along up: any right vector will do
        right = np.cross(_any_perpendicular(back), back)
    right /= np.linalg.norm(right)
    cam_up = np.cross(back, right)
    return np.stack([right, cam_up, back, eye], axis=1)


def _any_perpendicular(v: np.ndarray) -> np.ndarray:
    axis = np.eye(3)[int(np.argmin(np.abs(v)))]
    p = axis - np.dot(axis, v) * v
    return p / np.linalg.norm(p)


def spherical_trajectory(
    n_frames: int,
    radius: float,
    elevation_deg: float,
    up=(0.0, 0.0, 1.0),
    center=(0.0, 0.0, 0.0),
) -> np.ndarray:
    """Cameras on a circle of constant elevation around ``center``, all looking at it.

    Args:
        n_frames: number of cameras, evenly spaced in azimuth (the last one is not a repeat of the first).
        radius: distance of every camera to ``center``.
        elevation_deg: angle above the plane orthogonal to ``up``.
        up: (3,) world up direction (need not be unit).
        center: (3,) the point looked at.
    Returns:
        (n_frames, 3, 4) c2w, OpenGL camera axes; image up follows ``up``.
    """
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    center = np.asarray(center, dtype=np.float64)
    # A fixed in-plane basis so azimuth 0 is deterministic: world x projected on the plane
    # (y if x is along up).
    e1 = _any_perpendicular(up) if abs(up[0]) > 0.9 else np.array([1.0, 0.0, 0.0]) - up[0] * up
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    elev = np.deg2rad(elevation_deg)
    azimuth = 2.0 * np.pi * np.arange(n_frames) / max(n_frames, 1)
    out = np.empty((n_frames, 3, 4))
    for k, az in enumerate(azimuth):
        offset = np.cos(elev) * (np.cos(az) * e1 + np.sin(az) * e2) + np.sin(elev) * up
        out[k] = look_at(center + radius * offset, center, up)
    return out
