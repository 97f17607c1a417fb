"""UV unwrapping (xatlas) and diffuse-texture baking by rasterizing the UV triangles.

UV convention (OBJ, and trimesh's): ``v = 0`` is the bottom row of the image. Texel ``(row r, column c)`` of
an ``S x S`` texture is centred at ``u = (c + 0.5) / S``, ``v = 1 - (r + 0.5) / S``.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np
import torch

from ..liveness import interruptible, tick
from .color import ColorSource
from .extract import mesh_vertex_normals
from .raster import rasterize_uv_layout


def unwrap_uv(
    vertices: np.ndarray,
    faces: np.ndarray,
    texture_size: int = 2048,
    padding: int = 2,
    max_chart_faces: int | None = 20000,
    max_cost: float = 2.0,
    stats: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parametrizes the mesh into charts packed in one ``texture_size`` atlas.

    xatlas splits vertices along chart seams, so the result indexes a new vertex list. Its chart growing is
    super-linear in the chart size (an unbounded 200k-face mesh took ~10 min on 2 cores), so charts are capped
    at about ``max_chart_faces`` faces' worth of area and boundary; ``max_cost`` (xatlas' default 2) is how much
    curvature a chart may grow over. Feed it a decimated mesh (as the export does): a dense
    marching-cubes mesh falls apart into thousands of few-face charts whatever the options (6059 charts for the
    bundled scene's 200k faces, 353 once decimated to 50k, with the 20000-face cap that packed best; higher
    ``max_cost``, more iterations or other weights gave more charts; BENCHMARKS.md). xatlas scales every chart by
    one texels-per-unit factor, so texel density is even up to the stretch inside charts.

    Args:
        vertices: (V, 3); faces: (F, 3).
        texture_size: atlas resolution the packing targets (texels).
        padding: texels between charts (room for dilation and bilinear filtering).
        max_chart_faces: chart size bound in average faces (None: xatlas defaults, unbounded).
        max_cost: xatlas' chart growing cost limit (higher: fewer, larger, more curved charts).
        stats: if given, filled with ``charts`` (count), ``utilization`` (fraction of the atlas covered) and
            ``density_spread`` (:func:`texel_density_spread`).
    Returns:
        vmapping (V',) int64 index of each new vertex in ``vertices``, faces (F, 3) int64 into the new
        vertices, uvs (V', 2) float32 in [0, 1].
    """
    import xatlas

    v = np.ascontiguousarray(vertices, dtype=np.float32)
    f = np.ascontiguousarray(faces, dtype=np.uint32)
    if len(f) == 0:
        raise ValueError("unwrap_uv: the mesh has no faces")
    chart = xatlas.ChartOptions()
    chart.max_cost = float(max_cost)
    if max_chart_faces is not None and len(f) > max_chart_faces:
        tri = v[f].astype(np.float64)
        area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
        chart_area = float(area) * max_chart_faces / len(f)
        chart.max_chart_area = chart_area
        chart.max_boundary_length = 4.0 * chart_area**0.5  # the perimeter of a square of that area
    for resolution in (int(texture_size), 0):
        atlas = xatlas.Atlas()
        atlas.add_mesh(v, f)
        pack = xatlas.PackOptions()
        pack.resolution = resolution
        pack.padding = int(padding)
        pack.bilinear = True
        atlas.generate(chart, pack)
        # Charts that overflow one atlas go to a second one with overlapping UVs: repack auto-sized instead.
        if atlas.atlas_count == 1:
            break
    vmapping, new_faces, uvs = atlas[0]
    uvs = np.clip(np.asarray(uvs, dtype=np.float32), 0.0, 1.0)
    vmapping, new_faces = vmapping.astype(np.int64), new_faces.astype(np.int64).reshape(-1, 3)
    if stats is not None:
        stats.update(charts=int(atlas.chart_count), utilization=float(np.mean(atlas.utilization)),
                     density_spread=texel_density_spread(v[vmapping], new_faces, uvs))
    return vmapping, new_faces, uvs


def texel_density_spread(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray) -> float:
    """How uneven the texel density is: the area-weighted coefficient of variation, over faces, of the texels
    per unit length (``sqrt(UV area / 3D area)``). 0 for a perfectly uniform atlas; stretch inside charts and
    differently scaled charts both raise it.

    Args:
        vertices: (V, 3); faces: (F, 3); uvs: (V, 2) (one UV per vertex, as from xatlas).
    """
    tri = np.asarray(vertices, np.float64)[faces]
    uv = np.asarray(uvs, np.float64)[faces]
    area3 = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    area2 = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    keep = area3 > 0
    if not keep.any():
        return 0.0
    density = np.sqrt(area2[keep] / area3[keep])
    w = area3[keep] / area3[keep].sum()
    mean = float((w * density).sum())
    return float(np.sqrt((w * (density - mean) ** 2).sum()) / mean) if mean > 0 else 0.0


def rasterize_uv(
    uvs: np.ndarray, faces: np.ndarray, size: int, budget: int = 1 << 22, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Finds, for every texel centre, the UV triangle containing it and its barycentric coordinates.

    Runs the torch rasteriser (:func:`engine.mesh.raster.rasterize_uv_layout`) on ``device``.

    Args:
        uvs: (V, 2) in [0, 1]; faces: (F, 3) indices into ``uvs``.
        size: texture side S.
        budget: candidate texels per batch (memory bound).
    Returns:
        tri (S, S) int64 triangle index per texel (-1 outside every triangle) and bary (S, S, 3) float32.
    """
    frags = rasterize_uv_layout(torch.as_tensor(np.asarray(uvs, np.float32), device=device),
                                torch.as_tensor(np.asarray(faces, np.int64), device=device), size, budget)
    return frags.face.cpu().numpy(), frags.bary.cpu().numpy()


def dilate_texture(
    texture: np.ndarray, filled: np.ndarray, padding: int | None = None, background: Any = (0, 0, 0)
) -> np.ndarray:
    """Copies each chart's edge colours outward so bilinear filtering and mipmaps never fetch background.

    Args:
        texture: (S, S, C) texture; filled: (S, S) bool texels that hold real colours.
        padding: fill only texels within this many texels of a chart; None fills every texel (nearest chart).
        background: colour of texels left unfilled.
    Returns:
        (S, S, C) texture of the same dtype.
    """
    from scipy.ndimage import distance_transform_edt

    if filled.all() or not filled.any():
        return texture.copy()
    dist, (iy, ix) = distance_transform_edt(~filled, return_indices=True)
    out = texture[iy, ix]
    if padding is not None:
        far = dist > padding
        out[far] = np.asarray(background, dtype=texture.dtype)
    return out


def bake_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    color_source: ColorSource,
    normals: np.ndarray | None = None,
    size: int = 2048,
    padding: int | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Bakes a diffuse texture: each texel inside a UV triangle gets the colour of its 3D point.

    Args:
        vertices: (V, 3) positions; faces: (F, 3); uvs: (V, 2) in [0, 1] (one UV per vertex, as from xatlas).
        color_source: ((P, 3) points, (P, 3) unit normals) numpy float32 -> (P, 3) RGB in [0, 1]
            (see :func:`engine.mesh.color.field_color_source` / :func:`engine.mesh.photo.photo_source`).
        normals: (V, 3) vertex normals interpolated per texel; None uses area-weighted mesh normals.
        size: texture side S.
        padding: dilation in texels (None: fill the whole background with the nearest chart colour).
        device: where the UV triangles are rasterised (the colour source picks its own).
    Returns:
        (S, S, 3) uint8 texture (row 0 = top, i.e. v = 1).
    """
    v = np.asarray(vertices, dtype=np.float32)
    f = np.asarray(faces, dtype=np.int64)
    nrm = mesh_vertex_normals(v, f) if normals is None else np.asarray(normals, dtype=np.float32)
    tri, bary = rasterize_uv(uvs, f, size, device=device)
    filled = tri >= 0
    rows, cols = np.nonzero(filled)
    t = tri[rows, cols]
    w = bary[rows, cols]  # (P, 3)
    corners = f[t]  # (P, 3)
    pts = np.einsum("pk,pkc->pc", w, v[corners]).astype(np.float32)
    n = np.einsum("pk,pkc->pc", w, nrm[corners])
    n = (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    rgb = np.asarray(color_source(pts, n), dtype=np.float32).reshape(-1, 3) if len(pts) else np.zeros((0, 3))
    texture = np.zeros((size, size, 3), dtype=np.uint8)
    texture[rows, cols] = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    return dilate_texture(texture, filled, padding)


def detail_color_source(color_source: ColorSource, vertices: np.ndarray, normals: np.ndarray,
                        k: int = 4, chunk: int = 1 << 19) -> ColorSource:
    """Wraps a colour source so it samples the full-detail surface instead of a decimated mesh's.

    Each point moves onto the tangent plane of its nearest detail vertex (among the ``k`` nearest, the first
    whose normal faces the same way, so a thin part's far side is never taken) and gets the detail normals'
    inverse-distance blend; points with no such vertex keep their own position and normal.

    Args:
        color_source: see :func:`bake_texture`.
        vertices: (V, 3) full-detail vertices; normals: (V, 3) their unit normals (e.g. SDF gradients).
        k: nearest vertices considered per point; chunk: points snapped at a time (memory bound).
    """
    from scipy.spatial import cKDTree

    tree = cKDTree(np.asarray(vertices, np.float64))
    pos = np.asarray(vertices, np.float32)
    nrm = np.asarray(normals, np.float32)

    def snap(p: np.ndarray, n_low: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dist, idx = tree.query(p, k=k, workers=-1)  # (P, k)
        cand = nrm[idx]  # (P, k, 3)
        facing = (cand * n_low[:, None]).sum(-1) > 0
        w = (facing / np.maximum(dist, 1e-9)).astype(np.float32)
        n = (cand * w[..., None]).sum(1)
        n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        anchor = pos[idx[np.arange(len(p)), np.argmax(facing, axis=1)]]
        snapped = p - ((p - anchor) * n).sum(1, keepdims=True) * n
        ok = facing.any(1)[:, None]
        return np.where(ok, snapped, p).astype(np.float32), np.where(ok, n, n_low).astype(np.float32)

    def source(points: np.ndarray, low_normals: np.ndarray) -> np.ndarray:
        p = np.asarray(points, np.float32)
        n_low = np.asarray(low_normals, np.float32)
        # In chunks: the (P, k, 3) candidates of a 4096 x 4096 texture would take gigabytes at once.
        parts = []
        for s in range(0, len(p), chunk):
            parts.append(snap(p[s:s + chunk], n_low[s:s + chunk]))
            tick("texturing", min(s + chunk, len(p)), len(p), "texels")  # progress and cancel (engine.liveness)
        if not parts:
            return color_source(p, n_low)
        return color_source(np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts]))

    return source


class TexturedMesh(NamedTuple):
    """A UV-unwrapped mesh and its baked texture (:func:`texture_mesh`).

    Attributes:
        vertices: (V', 3) float32, split along the UV seams; faces: (F, 3) int64 into them;
        uvs: (V', 2) float32 in [0, 1]; texture: (T, T, 3) uint8;
        source_index: (V',) int64, the input vertex each vertex copies (xatlas' vertex mapping).
    """

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    texture: np.ndarray
    source_index: np.ndarray


def texture_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    color_source: ColorSource,
    normals: np.ndarray | None = None,
    texture_size: int = 2048,
    padding: int | None = None,
    atlas_padding: int = 2,
    max_chart_faces: int | None = 20000,
    detail: tuple[np.ndarray, np.ndarray] | None = None,
    stats: dict | None = None,
    device: str | torch.device = "cpu",
) -> TexturedMesh:
    """UV-unwraps a mesh and bakes its diffuse texture.

    The returned geometry is the textured mesh (split along UV seams): export it, not the input. Give it a
    decimated mesh and the full surface as ``detail``: a decimated mesh unwraps into far fewer, larger charts, and
    faster (xatlas splits the dense marching-cubes mesh into thousands of few-face pieces: BENCHMARKS.md), while
    its colours still come from the full surface (:func:`detail_color_source`); the export does so
    (``engine.export.decimate_stage``).

    Args:
        vertices: (V, 3); faces: (F, 3).
        color_source: see :func:`bake_texture`.
        normals: (V, 3) normals of the input vertices (e.g. SDF gradients), or None for mesh normals.
        texture_size: texture side (texels).
        padding: texture dilation (see :func:`dilate_texture`).
        atlas_padding: texels between charts in the atlas.
        max_chart_faces: chart size bound for xatlas (see :func:`unwrap_uv`).
        detail: (vertices (D, 3), unit normals (D, 3)) of the surface the colours are sampled from (texel
            points snapped onto it); None: the mesh itself.
        stats: filled by :func:`unwrap_uv` (charts, utilization) and with ``unwrap_s`` / ``bake_s`` seconds.
        device: where the UV triangles are rasterised.
    """
    v = np.asarray(vertices, dtype=np.float32)
    f = np.asarray(faces, dtype=np.int64)
    if detail is not None:
        color_source = detail_color_source(color_source, *detail)
    stats = {} if stats is None else stats
    t0 = time.monotonic()
    # xatlas holds the interpreter lock for seconds: run so that a cancel still ends it (engine.liveness)
    vmapping, new_faces, uvs = interruptible(unwrap_uv, v, f, texture_size, atlas_padding, max_chart_faces,
                                             stats=stats)
    t1 = time.monotonic()
    nrm = mesh_vertex_normals(v, f) if normals is None else np.asarray(normals, dtype=np.float32)
    new_v = v[vmapping]
    texture = bake_texture(new_v, new_faces, uvs, color_source, nrm[vmapping], texture_size, padding, device)
    stats.update(unwrap_s=t1 - t0, bake_s=time.monotonic() - t1)
    return TexturedMesh(new_v, new_faces, uvs, texture, vmapping)


__all__ = ["TexturedMesh", "bake_texture", "detail_color_source", "dilate_texture", "rasterize_uv",
           "texel_density_spread", "texture_mesh", "unwrap_uv"]
