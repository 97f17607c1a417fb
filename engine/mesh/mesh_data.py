"""The mesh record read from files, the file error, and the array checks every writer shares."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np


class MeshFileError(ValueError):
    """A mesh file is missing, unreadable, malformed or empty. The message names the file."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class MeshData:
    """A mesh as read from disk (arrays in the file's own frame).

    Attributes:
        vertices: (V, 3) float32.
        faces: (F, 3) int64; (0, 3) for a point cloud.
        colors: (V, 3) uint8 per-vertex RGB, or None.
        uvs: (V, 2) float32 texture coordinates (OBJ convention: v = 0 at the image bottom), or None.
        texture: (H, W, 3) uint8 diffuse texture, or None.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None
    uvs: np.ndarray | None = None
    texture: np.ndarray | None = None


def as_vertices(vertices: Any) -> np.ndarray:
    """(V, 3) contiguous float32 positions; ValueError for any other shape."""
    v = np.asarray(vertices, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {v.shape}")
    return np.ascontiguousarray(v)


def as_faces(faces: Any, n_vertices: int) -> np.ndarray:
    """(F, 3) int64 triangle indices into ``n_vertices`` vertices ((0, 3) for None or empty)."""
    if faces is None:
        return np.zeros((0, 3), dtype=np.int64)
    f = np.asarray(faces, dtype=np.int64)
    if f.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {f.shape}")
    if f.min() < 0 or f.max() >= n_vertices:
        raise ValueError(f"face indices must lie in [0, {n_vertices}), got [{f.min()}, {f.max()}]")
    return f


def to_uint8(values: Any) -> np.ndarray:
    """Colour channels of any shape as uint8, the one conversion for vertex colours and texture images.

    uint8 passes through; other integers are read as 0..255 and clipped; floats are read as [0, 1], clipped and
    rounded. NaN becomes 0 and infinities go to the nearer end: a diverged colour writes black, never the
    platform-dependent value of casting NaN to an integer.
    """
    v = np.asarray(values)
    if v.dtype == np.uint8:
        return v
    if np.issubdtype(v.dtype, np.integer):
        return np.clip(v, 0, 255).astype(np.uint8)
    v = np.nan_to_num(v.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)


def colors_to_uint8(colors: Any) -> np.ndarray:
    """(V, 3) colours as uint8 (:func:`to_uint8`); a fourth (alpha) column is dropped."""
    c = np.asarray(colors)
    if c.ndim != 2 or c.shape[1] not in (3, 4):
        raise ValueError(f"colors must have shape (V, 3), got {c.shape}")
    return np.ascontiguousarray(to_uint8(c[:, :3]))


def vertex_colors(colors: Any, n_vertices: int) -> np.ndarray:
    """:func:`colors_to_uint8`, checked to hold one row per vertex."""
    c = colors_to_uint8(colors)
    if len(c) != n_vertices:
        raise ValueError(f"colors has {len(c)} rows for {n_vertices} vertices")
    return c


def vertex_uvs(uvs: Any, n_vertices: int) -> np.ndarray:
    """(V, 2) float64 texture coordinates, one per vertex."""
    uv = np.asarray(uvs, dtype=np.float64)
    if uv.shape != (n_vertices, 2):
        raise ValueError(f"uvs must have shape ({n_vertices}, 2), got {uv.shape}")
    return uv


def as_texture(texture: Any) -> np.ndarray:
    """(H, W, 3) uint8 image (:func:`to_uint8`); an alpha channel is dropped."""
    t = np.asarray(texture)
    if t.ndim != 3 or t.shape[2] not in (3, 4):
        raise ValueError(f"texture must have shape (H, W, 3), got {t.shape}")
    return np.ascontiguousarray(to_uint8(t[..., :3]))


def zup_to_yup(v: np.ndarray) -> np.ndarray:
    """(V, 3) ``(x, y, z)`` -> ``(x, z, -y)``, which +Y-up importers (glTF, Blender's OBJ) turn back into xyz."""
    return np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)


def yup_to_zup(v: np.ndarray) -> np.ndarray:
    """The inverse of :func:`zup_to_yup`."""
    return np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)
