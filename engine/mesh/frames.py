"""Between the normalized frame (where the engine trains and meshes) and the dataset's world frame.

``normalization.json`` is read by ``datasets.normalization_file`` (shared with the add-on); the engine writes it
here, atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from datasets.normalization_file import as_scale_mat, normalization_record

from ..atomic_files import atomic_write


def transform_vertices(vertices: Any, scale_mat: Any) -> np.ndarray:
    """Maps points with a 4x4 matrix (normalized -> world with ``scale_mat``): ``x' = M @ [x, 1]``.

    Args:
        vertices: (V, 3) points.
        scale_mat: (4, 4) matrix (affine; a projective last row is honoured by dividing by w).
    Returns:
        (V, 3) float64 transformed points (computed in float64 to keep world-frame precision).
    """
    m = as_scale_mat(scale_mat)
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    out = v @ m[:3, :3].T + m[:3, 3]
    w = v @ m[3, :3] + m[3, 3]
    if not np.allclose(w, 1.0):
        out = out / w[:, None]
    return out


def transform_mesh(vertices: Any, faces: Any, scale_mat: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`transform_vertices` plus a winding flip when the matrix mirrors (det < 0): normals stay outward.

    Returns:
        (V, 3) float64 vertices and (F, 3) int64 faces.
    """
    m = as_scale_mat(scale_mat)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if np.linalg.det(m[:3, :3]) < 0:
        f = f[:, [0, 2, 1]]
    return transform_vertices(vertices, m), f


def write_normalization_json(path: str | os.PathLike, scale_mat: Any, frame: str = "normalized",
                             **extra: Any) -> Path:
    """Writes ``{"scale_mat": 4x4 row-major list, "frame": frame, **extra}`` atomically (engine/PROTOCOL.md)."""
    record = normalization_record(scale_mat, frame, **extra)
    with atomic_write(path, "w") as fh:
        json.dump(record, fh, indent=2)
        fh.write("\n")
    return Path(path)


__all__ = ["transform_mesh", "transform_vertices", "write_normalization_json"]
