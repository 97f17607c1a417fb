"""Binary PLY writing (the engine's ``mesh.ply``; read back by trimesh here and by the add-on's own reader)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import write_bytes_atomically
from .mesh_data import as_faces, as_vertices, vertex_colors


def ply_bytes(vertices: Any, faces: Any, *, colors: Any = None) -> bytes:
    """Binary little-endian PLY: float x, y, z, optional uchar red, green, blue; uchar-counted int faces.

    Args:
        vertices: (V, 3) positions.
        faces: (F, 3) vertex indices, or None for a point cloud (no face element is written then).
        colors: (V, 3) uint8 (or float in [0, 1]) per-vertex RGB, or None.
    """
    v = as_vertices(vertices)
    f = as_faces(faces, len(v))
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    header = ["ply", "format binary_little_endian 1.0", "comment written by neus-for-blender",
              f"element vertex {len(v)}", "property float x", "property float y", "property float z"]
    if colors is not None:
        c = vertex_colors(colors, len(v))
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    if faces is not None:
        header += [f"element face {len(f)}", "property list uchar int vertex_indices"]
    header.append("end_header")
    vert = np.empty(len(v), dtype=fields)
    vert["x"], vert["y"], vert["z"] = v[:, 0], v[:, 1], v[:, 2]
    if colors is not None:
        vert["red"], vert["green"], vert["blue"] = c[:, 0], c[:, 1], c[:, 2]
    parts = [("\n".join(header) + "\n").encode("ascii"), vert.tobytes()]
    if faces is not None:
        face = np.empty(len(f), dtype=[("n", "u1"), ("i", "<i4", (3,))])
        face["n"] = 3
        face["i"] = f
        parts.append(face.tobytes())
    return b"".join(parts)


def write_ply(path: str | os.PathLike, vertices: Any, faces: Any, *, colors: Any = None) -> Path:
    """Writes a binary little-endian PLY atomically (see :func:`ply_bytes`). Returns the path."""
    return write_bytes_atomically(path, ply_bytes(vertices, faces, colors=colors))


__all__ = ["ply_bytes", "write_ply"]
