"""Game-ready assets: a tangent-space normal map that carries a full-resolution surface's detail on a low-poly mesh.

Convention (glTF, Blender, OpenGL): ``rgb = 0.5 * (x, y, z) + 0.5`` in the frame (tangent = +u, bitangent = +v,
normal); +v points up the image (green up). Tangents are per-vertex, from the UV derivatives of the adjacent
faces, orthogonalized against the vertex normal (the MikkTSpace construction up to its tie-breaking), so viewers
that derive tangents from the UVs themselves decode the map the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .extract import mesh_vertex_normals
from .texture import dilate_texture, rasterize_uv

# (P, 3) points on the low-poly surface, (P, 3) its unit normals -> (P, 3) unit normals of the detailed surface.
NormalSource = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def vertex_tangents(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, normals: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex tangent frames from UV derivatives.

    Args:
        vertices: (V, 3); faces: (F, 3); uvs: (V, 2); normals: (V, 3) unit.
    Returns:
        tangent (V, 3) unit, orthogonal to the normal, along +u; sign (V,) +-1 so that
        ``bitangent = sign * cross(normal, tangent)`` points along +v.
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    uv = np.asarray(uvs, np.float64)
    e1, e2 = v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]
    d1, d2 = uv[f[:, 1]] - uv[f[:, 0]], uv[f[:, 2]] - uv[f[:, 0]]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    r = np.where(np.abs(det) > 1e-20, 1.0 / np.where(det == 0, 1.0, det), 0.0)[:, None]
    t_face = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * r  # dP/du
    b_face = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * r  # dP/dv
    t = np.zeros_like(v)
    b = np.zeros_like(v)
    for k in range(3):
        np.add.at(t, f[:, k], t_face)
        np.add.at(b, f[:, k], b_face)
    n = np.asarray(normals, np.float64)
    t = t - n * (t * n).sum(1, keepdims=True)
    # Degenerate UVs: any direction orthogonal to the normal.
    bad = np.linalg.norm(t, axis=1) < 1e-12
    if bad.any():
        helper = np.where(np.abs(n[bad, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
        t[bad] = np.cross(n[bad], helper)
    t = _unit(t)
    sign = np.where((np.cross(n, t) * b).sum(1) < 0, -1.0, 1.0)
    return t.astype(np.float32), sign.astype(np.float32)


def bake_normal_map(
    vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, normal_source: NormalSource, size: int = 2048,
    normals: np.ndarray | None = None, device: str | torch.device = "cpu",
) -> np.ndarray:
    """Bakes the detailed surface's normals into the low-poly mesh's tangent space.

    Args:
        vertices: (V, 3) low-poly mesh (split along UV seams, as from xatlas); faces: (F, 3); uvs: (V, 2).
        normal_source: see :data:`NormalSource` (e.g. :func:`nearest_normals` of the full-resolution mesh).
        size: texture side S.
        normals: (V, 3) low-poly vertex normals (None: area-weighted). Seam-split vertices should carry the
            normals of the welded mesh, so shading is continuous across UV seams.
    Returns:
        (S, S, 3) uint8 normal map (row 0 = v = 1), dilated so filtering never fetches the flat background.
    """
    v = np.asarray(vertices, np.float32)
    f = np.asarray(faces, np.int64)
    n = mesh_vertex_normals(v, f) if normals is None else _unit(np.asarray(normals, np.float32))
    t, sign = vertex_tangents(v, f, uvs, n)
    tri, bary = rasterize_uv(uvs, f, size, device=device)
    rows, cols = np.nonzero(tri >= 0)
    corners = f[tri[rows, cols]]
    w = bary[rows, cols]
    pts = np.einsum("pk,pkc->pc", w, v[corners])
    nl = _unit(np.einsum("pk,pkc->pc", w, n[corners]))
    tl = np.einsum("pk,pkc->pc", w, t[corners])
    tl = _unit(tl - nl * (tl * nl).sum(1, keepdims=True))
    sl = np.sign(np.einsum("pk,pk->p", w, sign[corners]))
    bl = np.cross(nl, tl) * np.where(sl == 0, 1.0, sl)[:, None]
    detail = _unit(np.asarray(normal_source(pts.astype(np.float32), nl.astype(np.float32)), np.float64))
    local = np.stack([(detail * tl).sum(1), (detail * bl).sum(1), (detail * nl).sum(1)], axis=1)
    local[:, 2] = np.maximum(local[:, 2], 0.0)  # a normal facing into the surface is an unfitted area: flatten
    local = _unit(local + np.where(np.linalg.norm(local, axis=1, keepdims=True) < 1e-6, [[0, 0, 1.0]], 0))
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 2] = 255  # flat (0, 0, 1) where nothing was baked
    image[..., :2] = 128
    image[rows, cols] = np.round((local * 0.5 + 0.5) * 255).clip(0, 255).astype(np.uint8)
    return dilate_texture(image, tri >= 0)


def nearest_normals(vertices: np.ndarray, normals: np.ndarray, k: int = 4) -> NormalSource:
    """A normal source from a dense mesh: inverse-distance blend of the ``k`` nearest vertices' normals.

    Args:
        vertices: (V, 3) full-resolution mesh vertices; normals: (V, 3) their unit normals.
    """
    from scipy.spatial import cKDTree

    tree = cKDTree(np.asarray(vertices, np.float64))
    nrm = np.asarray(normals, np.float64)

    def source(points: np.ndarray, low_normals: np.ndarray) -> np.ndarray:
        dist, idx = tree.query(np.asarray(points, np.float64), k=k, workers=-1)
        w = 1.0 / np.maximum(dist, 1e-9)
        cand = nrm[idx]  # (P, k, 3)
        # Nearest vertices from the far side of a thin part point the other way: ignore them.
        w = w * ((cand * np.asarray(low_normals, np.float64)[:, None]).sum(-1) > 0)
        out = (cand * w[..., None]).sum(1)
        fallback = np.asarray(low_normals, np.float64)
        return np.where(w.sum(1, keepdims=True) > 0, _unit(out), fallback).astype(np.float32)

    return source


def decode_normal_map(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Tangent-space normals (P, 3) stored at texels ``(rows, cols)`` of a uint8 normal map."""
    return _unit(np.asarray(image, np.float64)[rows, cols] / 255.0 * 2.0 - 1.0)


__all__ = ["NormalSource", "bake_normal_map", "decode_normal_map", "nearest_normals", "vertex_tangents"]
