"""Naive surface nets: an iso-surface mesher made of plain tensor ops, so it runs on the GPU.

Marching cubes (PyMCubes) is CPU-only and, at 512^3, takes longer than evaluating the SDF grid on a GPU. Surface
nets needs no case tables: every grid cell the surface crosses gets one vertex (the mean of the crossing points on
its edges), and every grid edge the surface crosses becomes a quad joining the four cells around that edge. The
result is watertight wherever the surface stays inside the grid, with vertices within a cell of the true surface.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

# The 12 edges of a cell as pairs of corner offsets (corner c = (c & 1, c >> 1 & 1, c >> 2 & 1)).
_CORNER_OFFSETS = torch.tensor([[c & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)])
_EDGES = torch.tensor([[a, b] for a in range(8) for b in range(a + 1, 8)
                       if int((_CORNER_OFFSETS[a] - _CORNER_OFFSETS[b]).abs().sum()) == 1])


@torch.no_grad()
def surface_nets(volume: Tensor, bound_min: Any, bound_max: Any, level: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Meshes the ``level`` set of a sampled SDF.

    Args:
        volume: (nx, ny, nz) SDF samples at ``linspace(bound_min[a], bound_max[a], n_a)``, on any device.
        bound_min, bound_max: (3,) corners of the sampled box.
        level: iso-value.
    Returns:
        vertices (V, 3) float32 and faces (F, 3) int64 (normals along +grad sdf); empty if the level is not crossed.
    """
    dev = volume.device
    f = volume.float() - level
    shape = torch.tensor(f.shape, device=dev)
    inside = f < 0
    # Cells (nx-1, ny-1, nz-1): active when their 8 corners disagree about the sign.
    corners = torch.stack([inside[ox:ox + f.shape[0] - 1, oy:oy + f.shape[1] - 1, oz:oz + f.shape[2] - 1]
                           for ox, oy, oz in _CORNER_OFFSETS.tolist()], -1)
    n_in = corners.sum(-1)
    active = (n_in > 0) & (n_in < 8)
    cells = active.nonzero()  # (C, 3)
    if cells.shape[0] == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)

    # Vertex of each active cell: mean of the edge crossings, in index coordinates.
    offs = _CORNER_OFFSETS.to(dev)
    corner_idx = cells[:, None, :] + offs  # (C, 8, 3)
    vals = f[corner_idx[..., 0], corner_idx[..., 1], corner_idx[..., 2]]  # (C, 8)
    edges = _EDGES.to(dev)
    va, vb = vals[:, edges[:, 0]], vals[:, edges[:, 1]]  # (C, 12)
    crossing = (va < 0) != (vb < 0)
    t = (va / (va - vb).where(crossing, torch.ones_like(va))).clamp(0, 1)
    pa, pb = offs[edges[:, 0]].float(), offs[edges[:, 1]].float()  # (12, 3)
    points = pa + t[..., None] * (pb - pa)  # (C, 12, 3)
    w = crossing.float()[..., None]
    local = (points * w).sum(1) / w.sum(1).clamp_min(1)
    vertices_idx = cells.float() + local

    # Cell id -> vertex id lookup over the cell grid.
    lookup = torch.full(active.shape, -1, dtype=torch.long, device=dev)
    lookup[cells[:, 0], cells[:, 1], cells[:, 2]] = torch.arange(cells.shape[0], device=dev)

    faces = []
    for axis in range(3):
        u, v = (axis + 1) % 3, (axis + 2) % 3
        # Grid edges along `axis` from node p to p + e_axis, away from the border in u and v.
        lo = [0, 0, 0]
        hi = [int(s) for s in shape.tolist()]
        hi[axis] -= 1
        lo[u], lo[v] = 1, 1
        hi[u], hi[v] = hi[u] - 1, hi[v] - 1
        if hi[u] <= lo[u] or hi[v] <= lo[v] or hi[axis] <= 0:
            continue
        a = inside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        step = [0, 0, 0]
        step[axis] = 1
        b = inside[lo[0] + step[0]:hi[0] + step[0], lo[1] + step[1]:hi[1] + step[1], lo[2] + step[2]:hi[2] + step[2]]
        sel = (a != b).nonzero() + torch.tensor(lo, device=dev)  # (E, 3) node p of each crossing edge
        if sel.shape[0] == 0:
            continue
        starts_inside = inside[sel[:, 0], sel[:, 1], sel[:, 2]]
        # The four cells around the edge, counter-clockwise seen from +axis: (u-1,v-1), (u,v-1), (u,v), (u-1,v).
        quad = []
        for du, dv in ((-1, -1), (0, -1), (0, 0), (-1, 0)):
            c = sel.clone()
            c[:, u] += du
            c[:, v] += dv
            quad.append(lookup[c[:, 0], c[:, 1], c[:, 2]])
        quad = torch.stack(quad, 1)  # (E, 4)
        # Inside -> outside along +axis means the outward normal is +axis: keep the order, else reverse it.
        quad = torch.where(starts_inside[:, None], quad, quad.flip(1))
        quad = quad[(quad >= 0).all(1)]
        faces.append(torch.cat([quad[:, [0, 1, 2]], quad[:, [0, 2, 3]]]))
    if not faces:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    faces_t = torch.cat(faces)

    bmin = torch.as_tensor(np.asarray(bound_min, dtype=np.float64), device=dev)
    bmax = torch.as_tensor(np.asarray(bound_max, dtype=np.float64), device=dev)
    step_size = (bmax - bmin) / (shape.double() - 1)
    vertices = (bmin + vertices_idx.double() * step_size).float()
    return vertices.cpu().numpy(), faces_t.cpu().numpy().astype(np.int64)
