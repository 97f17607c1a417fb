"""Iso-surface extraction from an SDF (coarse-to-fine marching cubes), normals, clean-up and decimation.

The SDF is negative inside. Grid samples sit exactly on ``linspace(bound_min, bound_max, n)`` per axis, so a
marching-cubes vertex at index coordinate ``i`` maps to ``bound_min + i * step`` with no half-voxel shift.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from datasets.images import mask_is_foreground

from ..errors import EngineError

SdfFn = Callable[[torch.Tensor], torch.Tensor]


class MeshExtractionError(EngineError, RuntimeError):
    """No surface could be extracted (the SDF has no zero crossing in the bounds, or returned NaN/inf).

    A training outcome, not a bug: the command line reports it in one line (exit 1) without a traceback."""


class MeshDependencyError(ImportError):
    """An optional dependency needed by a mesh operation is not installed."""


# ----------------------------------------------------------------------------------------------------
# Grid evaluation and marching cubes
# ----------------------------------------------------------------------------------------------------


def _counts_for_resolution(extent: np.ndarray, resolution: int) -> np.ndarray:
    """Samples per axis: ``resolution`` along the longest side, near-cubic voxels elsewhere (at least 2)."""
    voxel = float(extent.max()) / (resolution - 1)
    return np.maximum(np.round(extent / voxel).astype(np.int64) + 1, 2)


@torch.no_grad()
def evaluate_sdf_grid(
    sdf_fn: SdfFn,
    bound_min: Any,
    bound_max: Any,
    counts: Any,
    chunk: int = 2**18,
    device: str | torch.device = "cpu",
    progress: Callable[[float], None] | None = None,
    as_tensor: bool = False,
) -> np.ndarray | torch.Tensor:
    """SDF on the grid ``linspace(bound_min[a], bound_max[a], counts[a])`` for each axis a.

    Points are generated chunk by chunk on ``device`` (never the whole (N, 3) grid at once).

    Args:
        sdf_fn: (M, 3) float32 -> (M,) signed distance.
        bound_min, bound_max: (3,) corners of the box.
        counts: (3,) samples per axis (>= 2).
        chunk: points per ``sdf_fn`` call.
        device: where the points are created and ``sdf_fn`` runs.
        progress: optional callback with the fraction done in [0, 1].
        as_tensor: return a float32 tensor on ``device`` instead of a numpy array (no copy to the host).
    Returns:
        (nx, ny, nz) float32 array (or tensor), axis 0 = x.
    Raises:
        MeshExtractionError: ``sdf_fn`` returned non-finite values or a wrong shape.
    """
    device = torch.device(device)
    bmin = np.asarray(bound_min, dtype=np.float64)
    bmax = np.asarray(bound_max, dtype=np.float64)
    nx, ny, nz = (int(c) for c in counts)
    axes = [
        torch.linspace(float(bmin[a]), float(bmax[a]), n, dtype=torch.float64, device=device).float()
        for a, n in enumerate((nx, ny, nz))
    ]
    total = nx * ny * nz
    out = torch.empty(total, dtype=torch.float32, device=device) if as_tensor else np.empty(total, dtype=np.float32)
    for start in range(0, total, chunk):
        idx = torch.arange(start, min(start + chunk, total), device=device)
        i, j, k = idx // (ny * nz), (idx // nz) % ny, idx % nz
        pts = torch.stack([axes[0][i], axes[1][j], axes[2][k]], dim=-1)
        sdf = sdf_fn(pts)
        sdf = sdf.reshape(-1)
        if sdf.shape[0] != pts.shape[0]:
            raise MeshExtractionError(f"sdf_fn returned {sdf.shape[0]} values for {pts.shape[0]} points")
        out[start : start + len(idx)] = sdf.float() if as_tensor else sdf.float().cpu().numpy()
        if progress is not None:
            progress(min(start + chunk, total) / total)
    n_bad = int((~torch.isfinite(out)).sum()) if as_tensor else int((~np.isfinite(out)).sum())
    if n_bad:
        raise MeshExtractionError(f"the SDF is NaN or infinite at {n_bad} grid points (diverged model?)")
    return out.reshape(nx, ny, nz)


def _surface_box(
    volume: np.ndarray, bmin: np.ndarray, step: np.ndarray, level: float, near: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """World box of the cells with a sign change; failing any, of the nodes with |sdf - level| < near (a
    surface thinner than a coarse voxel straddles no cell); None if neither exists."""
    inside = volume <= level
    any_in = np.zeros(np.array(volume.shape) - 1, dtype=bool)
    all_in = np.ones_like(any_in)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                s = inside[dx : dx + any_in.shape[0], dy : dy + any_in.shape[1], dz : dz + any_in.shape[2]]
                any_in |= s
                all_in &= s
    cells = np.argwhere(any_in & ~all_in)
    if len(cells):
        return bmin + cells.min(0) * step, bmin + (cells.max(0) + 1) * step
    nodes = np.argwhere(np.abs(volume - level) < near)
    if len(nodes):
        return bmin + nodes.min(0) * step, bmin + nodes.max(0) * step
    return None


def marching_cubes(
    volume: np.ndarray, bound_min: Any, bound_max: Any, level: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes on a sampled SDF, in world coordinates, faces wound so normals point along +grad sdf.

    Args:
        volume: (nx, ny, nz) SDF samples at ``linspace(bound_min, bound_max, n)`` per axis.
        bound_min, bound_max: (3,) corners of the sampled box.
        level: iso-value.
    Returns:
        vertices (V, 3) float32 and faces (F, 3) int64; both empty when the level is not crossed.
    """
    import mcubes

    volume = np.asarray(volume, dtype=np.float32)  # PyMCubes takes float32: no 2x copy of a 512^3 grid
    bmin = np.asarray(bound_min, dtype=np.float64)
    step = (np.asarray(bound_max, dtype=np.float64) - bmin) / (np.array(volume.shape) - 1)
    verts, faces = mcubes.marching_cubes(volume, float(level))
    if len(faces) == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    vertices = (bmin + verts * step).astype(np.float32)
    # PyMCubes winds triangles so normals point towards lower values; the SDF grows outward, so flip.
    faces = faces.astype(np.int64)[:, [0, 2, 1]]
    return vertices, faces


def extract_mesh(
    sdf_fn: SdfFn,
    bound_min: Any = (-1.0, -1.0, -1.0),
    bound_max: Any = (1.0, 1.0, 1.0),
    resolution: int = 512,
    chunk: int = 2**18,
    device: str | torch.device = "cpu",
    coarse_resolution: int | None = 128,
    margin: float | None = None,
    level: float = 0.0,
    progress: Callable[[float], None] | None = None,
    method: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Extracts the ``level`` iso-surface of an SDF: a coarse pass then a fine pass (NeuS / instant-nsr-pl).

    The coarse pass samples the whole box at ``coarse_resolution``; the fine pass samples the box around the
    found surface (plus ``margin``) with ``resolution`` samples along its longest side and near-cubic voxels,
    so the voxel is ``max_extent / (resolution - 1)`` of that tighter box.

    Args:
        sdf_fn: (M, 3) float32 tensor on ``device`` -> (M,) SDF, negative inside; called under no_grad.
        bound_min, bound_max: (3,) corners of the search box (normalized frame).
        resolution: fine-grid samples along the longest side of the surface's box.
        chunk: points per ``sdf_fn`` call.
        device: torch device for the queries.
        coarse_resolution: coarse-grid samples along the longest side of the full box; None (or >= resolution)
            skips the coarse pass and samples the full box at ``resolution``.
        margin: padding of the surface box, normalized units (default: two coarse voxels), clamped to bounds.
        level: iso-value.
        progress: optional callback with the overall fraction done in [0, 1].
        method: ``marching_cubes`` (PyMCubes, CPU), ``surface_nets`` (tensor ops on ``device``) or ``auto``:
            surface nets on CUDA, where the grid never leaves the GPU, marching cubes elsewhere.
    Returns:
        vertices (V, 3) float32 in the same frame as the bounds, faces (F, 3) int64 (outward normals).
    Raises:
        MeshExtractionError: no zero crossing (empty or full volume) or a non-finite SDF.
    """
    bmin = np.asarray(bound_min, dtype=np.float64).reshape(3)
    bmax = np.asarray(bound_max, dtype=np.float64).reshape(3)
    if not np.all(bmax > bmin):
        raise ValueError(f"bound_max {bmax.tolist()} must exceed bound_min {bmin.tolist()} on every axis")
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    fine_min, fine_max = bmin, bmax
    two_pass = coarse_resolution is not None and 2 <= coarse_resolution < resolution

    def report(lo: float, hi: float) -> Callable[[float], None] | None:
        return None if progress is None else (lambda f: progress(lo + (hi - lo) * f))

    if two_pass:
        counts = _counts_for_resolution(bmax - bmin, coarse_resolution)
        coarse = evaluate_sdf_grid(sdf_fn, bmin, bmax, counts, chunk, device, report(0.0, 0.1))
        step = (bmax - bmin) / (counts - 1)
        box = _surface_box(coarse, bmin, step, level, near=0.5 * float(np.linalg.norm(step)))
        if box is None:
            raise MeshExtractionError(_empty_message(coarse, level, bmin, bmax))
        pad = 2.0 * float(step.max()) if margin is None else float(margin)
        fine_min = np.maximum(box[0] - pad, bmin)
        fine_max = np.minimum(box[1] + pad, bmax)
        # A flat box (all nodes near the surface in one plane) still needs two samples per axis.
        fine_max = np.maximum(fine_max, np.minimum(fine_min + step, bmax))
        fine_min = np.minimum(fine_min, fine_max - step)
    counts = _counts_for_resolution(fine_max - fine_min, resolution)
    if method == "auto":
        method = "surface_nets" if torch.device(device).type == "cuda" else "marching_cubes"
    if method not in ("marching_cubes", "surface_nets"):
        raise ValueError(f"unknown meshing method {method!r}")
    volume = evaluate_sdf_grid(
        sdf_fn, fine_min, fine_max, counts, chunk, device, report(0.1 if two_pass else 0.0, 1.0),
        as_tensor=method == "surface_nets",
    )
    if method == "surface_nets":
        from .surface_nets import surface_nets

        vertices, faces = surface_nets(volume, fine_min, fine_max, level)
        volume = volume.cpu().numpy() if len(faces) == 0 else volume
    else:
        vertices, faces = marching_cubes(volume, fine_min, fine_max, level)
    if len(faces) == 0:
        raise MeshExtractionError(_empty_message(volume, level, fine_min, fine_max))
    return vertices, faces


def _empty_message(volume: np.ndarray, level: float, bmin: np.ndarray, bmax: np.ndarray) -> str:
    where = "inside" if np.all(volume <= level) else "outside"
    return (
        f"no surface found: the SDF is {where} the level {level:g} everywhere in the box "
        f"{np.round(bmin, 4).tolist()} .. {np.round(bmax, 4).tolist()} (min {volume.min():.4g}, "
        f"max {volume.max():.4g}); the model may not have converged or the bounds miss the object"
    )


# ----------------------------------------------------------------------------------------------------
# Normals
# ----------------------------------------------------------------------------------------------------


def _normalize(v: np.ndarray, fallback: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    out = np.where(n > 1e-12, v / np.maximum(n, 1e-12), np.asarray(fallback, dtype=v.dtype))
    return out.astype(np.float32)


def mesh_vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (V, 3) float32, unit length (isolated vertices get +z)."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # length = 2 * area
    acc = np.zeros_like(v)
    for c in range(3):
        for a in range(3):
            acc[:, a] += np.bincount(f[:, c], weights=fn[:, a], minlength=len(v))
    return _normalize(acc)


# ----------------------------------------------------------------------------------------------------
# Clean-up
# ----------------------------------------------------------------------------------------------------


def _compact(
    vertices: np.ndarray, faces: np.ndarray, keep_faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Keeps the selected faces and only the vertices they use (re-indexed)."""
    f = faces[keep_faces]
    used = np.zeros(len(vertices), dtype=bool)
    used[f.reshape(-1)] = True
    remap = np.cumsum(used) - 1
    return vertices[used], remap[f].astype(np.int64)


def face_components(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F,) int64 connected-component label of each face (faces sharing an edge are connected)."""
    import trimesh

    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False, validate=False)
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(faces))
    return np.asarray(labels, dtype=np.int64)


def outside_visual_hull(
    vertices: np.ndarray, K: Any, c2w: Any, masks: Any, view_fraction: float = 0.5, chunk: int = 2**16
) -> np.ndarray:
    """Which vertices land on background in more than ``view_fraction`` of the views that see them.

    Args:
        vertices: (V, 3) points in the cameras' frame.
        K: (N, 3, 3) intrinsics; c2w: (N, 3, 4) camera-to-world (OpenGL axes), see datasets/geometry.py.
        masks: (N, H, W) foreground masks (bool, uint8 0/255 or float in [0, 1]).
        view_fraction: a vertex projecting onto background in more than this fraction of the views
            where it is in the frame counts as outside.
        chunk: vertices per projection batch.
    Returns:
        (V,) bool; vertices in no camera's frame are never outside.
    """
    from datasets.geometry import project_points

    K = np.asarray(K.cpu() if torch.is_tensor(K) else K, dtype=np.float64).reshape(-1, 3, 3)
    c2w = np.asarray(c2w.cpu() if torch.is_tensor(c2w) else c2w, dtype=np.float64).reshape(-1, 3, 4)
    if torch.is_tensor(masks):
        masks = masks.cpu().numpy()
    if len(masks) != len(K) or len(c2w) != len(K):
        raise ValueError(f"got {len(K)} intrinsics, {len(c2w)} poses and {len(masks)} masks")
    v = np.asarray(vertices, dtype=np.float64)
    seen = np.zeros(len(v), dtype=np.int64)
    out = np.zeros(len(v), dtype=np.int64)
    for s in range(0, len(v), chunk):
        uv, depth = project_points(K, c2w, v[s : s + chunk])
        for n in range(len(K)):
            m = np.asarray(masks[n])
            h, w = m.shape[:2]
            col, row = np.round(uv[n, :, 0]).astype(np.int64), np.round(uv[n, :, 1]).astype(np.int64)
            inside = (depth[n] > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
            fg = mask_is_foreground(m[row[inside], col[inside]])
            seen[s : s + chunk] += inside
            bg = np.zeros(len(inside), dtype=bool)
            bg[inside] = ~fg
            out[s : s + chunk] += bg
    return (seen > 0) & (out > view_fraction * seen)


def clean_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    min_component_fraction: float = 0.001,
    keep_largest: bool = False,
    K: Any = None,
    c2w: Any = None,
    masks: Any = None,
    hull_view_fraction: float = 0.5,
    hull_vertex_fraction: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Drops disconnected floaters and pieces outside the visual hull of the masks.

    Args:
        vertices: (V, 3); faces: (F, 3).
        min_component_fraction: drop edge-connected pieces with less than this fraction of the total area. Small:
            a thin part whose foot marching cubes leaves open (an antenna standing free of its body) is a piece of a
            few tenths of a percent, and a real one; the crumbs this drops are hundredths.
        keep_largest: keep only the piece with the largest area.
        K, c2w, masks: (N, 3, 3), (N, 3, 4), (N, H, W): if all given, a piece is dropped when more than
            ``hull_vertex_fraction`` of its vertices lie outside the hull (:func:`outside_visual_hull`).
        hull_view_fraction: see :func:`outside_visual_hull`.
        hull_vertex_fraction: fraction of a piece's vertices outside the hull that condemns it.
    Returns:
        vertices (V', 3) float32 and faces (F', 3) int64, unused vertices removed.
    Raises:
        MeshExtractionError: nothing is left.
    """
    v = np.asarray(vertices, dtype=np.float32)
    f = np.asarray(faces, dtype=np.int64)
    if len(f) == 0:
        raise MeshExtractionError("clean_mesh: the mesh has no faces")
    labels = face_components(v, f)
    n_comp = int(labels.max()) + 1
    v64 = v.astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(v64[f[:, 1]] - v64[f[:, 0]], v64[f[:, 2]] - v64[f[:, 0]]), axis=1)
    comp_area = np.bincount(labels, weights=area, minlength=n_comp)
    keep = comp_area >= min_component_fraction * comp_area.sum()
    if masks is not None and K is not None and c2w is not None:
        bad = outside_visual_hull(v, K, c2w, masks, hull_view_fraction)
        used = np.zeros(len(v), dtype=bool)
        used[f.reshape(-1)] = True
        vlabel = np.zeros(len(v), dtype=np.int64)
        vlabel[f.reshape(-1)] = np.repeat(labels, 3)  # every vertex of a face shares its piece
        n_bad = np.bincount(vlabel[used], weights=bad[used], minlength=n_comp)
        n_all = np.bincount(vlabel[used], minlength=n_comp)
        keep &= n_bad <= hull_vertex_fraction * n_all
    if keep_largest:
        candidates = np.where(keep, comp_area, -1.0)
        largest = int(candidates.argmax())
        keep = np.zeros_like(keep)
        keep[largest] = candidates[largest] >= 0
    if not np.any(keep):
        raise MeshExtractionError(
            "clean_mesh removed every piece of the mesh (masks or thresholds too strict?)"
        )
    return _compact(v, f, keep[labels])


def decimate(
    vertices: np.ndarray, faces: np.ndarray, target_faces: int, aggression: float = 7.0
) -> tuple[np.ndarray, np.ndarray]:
    """Quadric edge-collapse decimation to about ``target_faces`` faces (needs ``fast-simplification``).

    Args:
        vertices: (V, 3); faces: (F, 3).
        target_faces: wanted face count; a mesh already at or below it is returned unchanged.
        aggression: 0 (best shape, slow) .. 10 (fast).
    Returns:
        vertices (V', 3) float32 and faces (F', 3) int64.
    Raises:
        MeshDependencyError: ``fast_simplification`` is not installed.
    """
    v = np.asarray(vertices, dtype=np.float32)
    f = np.asarray(faces, dtype=np.int64)
    if target_faces < 4:
        raise ValueError(f"target_faces must be >= 4, got {target_faces}")
    if len(f) <= target_faces:
        return v, f
    try:
        import fast_simplification
    except ImportError as e:
        raise MeshDependencyError(
            "mesh decimation needs the 'fast-simplification' package: pip install fast-simplification"
        ) from e
    out_v, out_f = fast_simplification.simplify(
        v.astype(np.float64), f.astype(np.int32), target_reduction=1.0 - target_faces / len(f), agg=aggression
    )
    out_f = np.asarray(out_f, dtype=np.int64).reshape(-1, 3)
    keep = (out_f[:, 0] != out_f[:, 1]) & (out_f[:, 1] != out_f[:, 2]) & (out_f[:, 0] != out_f[:, 2])
    return _compact(np.asarray(out_v, dtype=np.float32), out_f, keep)


__all__ = [
    "MeshDependencyError",
    "MeshExtractionError",
    "clean_mesh",
    "decimate",
    "evaluate_sdf_grid",
    "extract_mesh",
    "face_components",
    "marching_cubes",
    "mesh_vertex_normals",
    "outside_visual_hull",
]
