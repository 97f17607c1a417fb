"""Reading meshes (PLY, OBJ, glTF and whatever else trimesh reads) into :class:`MeshData`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .mesh_data import MeshData, MeshFileError, yup_to_zup


def read_mesh(path: str | os.PathLike, yup: bool = False) -> MeshData:
    """Reads a mesh or point cloud with trimesh.

    Args:
        path: the file.
        yup: the file stores ``(x, z, -y)`` (written with ``yup=True``); convert back.
    Returns:
        :class:`MeshData` (scenes with several meshes are concatenated; polygons arrive triangulated).
    Raises:
        MeshFileError: missing, unreadable or malformed file, or a file with no vertices.
    """
    path = Path(path)
    if not path.is_file():
        raise MeshFileError(path, "file not found")
    try:
        mesh = _read_with_trimesh(path)
    except Exception as e:  # any parser failure is a bad file, reported as one line
        raise MeshFileError(path, f"cannot read mesh ({type(e).__name__}: {' '.join(str(e).split())})") from e
    if len(mesh.vertices) == 0:
        raise MeshFileError(path, "contains no vertices")
    if not np.all(np.isfinite(mesh.vertices)):
        raise MeshFileError(path, "contains non-finite vertex coordinates")
    if yup:
        mesh.vertices = yup_to_zup(mesh.vertices).astype(np.float32)
    return mesh


def _part(g) -> MeshData:
    v = np.asarray(g.vertices, dtype=np.float32).reshape(-1, 3)
    faces = np.asarray(getattr(g, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    colors = uvs = texture = None
    visual = getattr(g, "visual", None)
    if visual is not None and visual.kind == "texture":
        if visual.uv is not None and len(visual.uv) == len(v):
            uvs = np.asarray(visual.uv, dtype=np.float32)[:, :2]
        mat = visual.material
        img = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
        if img is not None:
            texture = np.asarray(img.convert("RGB"), dtype=np.uint8)
    elif visual is not None and visual.kind == "vertex":
        rgba = np.asarray(visual.vertex_colors)  # (V, 4); empty for a point cloud without colours
        if rgba.ndim == 2 and len(rgba) == len(v):
            colors = rgba.astype(np.uint8)[:, :3]
    return MeshData(v, faces, colors, uvs, texture)


def _read_with_trimesh(path: Path) -> MeshData:
    import trimesh

    loaded = trimesh.load(str(path), process=False)
    parts = [_part(g) for g in (loaded.dump() if isinstance(loaded, trimesh.Scene) else [loaded])]
    if not parts:  # trimesh reads a file with no vertices as an empty scene
        return MeshData(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64))
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    return MeshData(
        vertices=np.concatenate([p.vertices for p in parts]),
        faces=np.concatenate([p.faces + o for p, o in zip(parts, offsets, strict=True)]),
        colors=np.concatenate([p.colors for p in parts]) if all(p.colors is not None for p in parts) else None,
    )


__all__ = ["read_mesh"]
