"""A triangle rasteriser with a z-buffer in plain torch (CPU, CUDA, MPS): no compiled extension.

Used for per-camera depth maps (photo-texture visibility), for rendering a textured asset from the dataset
cameras (asset fidelity) and for rasterising UV triangles into texels.

How it works: each triangle's pixel-centre candidates inside its bounding box are enumerated at once, for a
batch of triangles at a time (about ``budget`` candidates per batch, so memory stays bounded and the work is
vectorised over triangles rather than pixels), tested with edge functions, and written into the z-buffer with a
single ``scatter_reduce(amin)`` on a packed (depth, face) integer key: the nearest face wins, ties go to the
lower face index, and no Python loop runs per pixel or per triangle. Barycentrics are then recomputed once per
covered pixel for the winning face, perspective-correct.

Pixel convention (as ``datasets.geometry``): integer ``(x, y)`` = (column, row) are pixel centres.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_FACE_BITS = 31
_EMPTY = torch.iinfo(torch.int64).max


@dataclass
class Fragments:
    """What the rasteriser found at each pixel.

    Attributes:
        face: (H, W) int64 index of the visible triangle, -1 where no triangle covers the pixel centre.
        bary: (H, W, 3) float32 perspective-correct barycentrics of the pixel centre in that triangle (0 elsewhere).
        depth: (H, W) float32 depth of the visible surface (``inf`` where empty).
    """

    face: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor

    @property
    def covered(self) -> torch.Tensor:
        """(H, W) bool: pixels covered by a triangle."""
        return self.face >= 0


def _edge_bary(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, area: torch.Tensor
               ) -> torch.Tensor:
    """Screen-space barycentrics of points p (M, 2) in triangles (a, b, c) (M, 2 each), area (M,) -> (M, 3)."""
    w1 = ((p[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (p[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])) / area
    w2 = ((b[:, 0] - a[:, 0]) * (p[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (p[:, 0] - a[:, 0])) / area
    return torch.stack([1.0 - w1 - w2, w1, w2], dim=1)


def rasterize(
    xy: torch.Tensor,
    depth: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    budget: int = 1 << 22,
    near: float = 1e-6,
    eps: float = 1e-6,
    cull_back: bool = False,
) -> Fragments:
    """Rasterises triangles given in pixel space, keeping the nearest one per pixel.

    Args:
        xy: (V, 2) float pixel coordinates of the vertices (x = column, y = row).
        depth: (V,) float view depth of the vertices (positive in front; constant for a flat UV layout).
            Depth is interpolated perspective-correctly (``1 / depth`` is linear in screen space).
        faces: (F, 3) int64 vertex indices; triangles with a vertex at depth <= ``near`` are skipped (no clipping:
            the cameras this is used with see the whole object in front of them).
        height, width: image size in pixels.
        budget: pixel candidates tested per batch (memory bound; about 40 bytes each).
        near: smallest accepted vertex depth.
        eps: tolerance of the inside test in barycentric units (closes cracks along shared edges).
        cull_back: skip triangles that wind clockwise on the screen (pixel y down), i.e. that face away from the
            camera in a mesh wound counter-clockwise seen from outside: half the work, and the same nearest
            surface wherever the mesh is closed.
    Returns:
        :class:`Fragments` on the device of ``xy``.
    """
    device = xy.device
    xy = xy.float()
    depth = depth.float()
    faces = faces.long().reshape(-1, 3)
    if len(faces) >= 1 << _FACE_BITS:
        raise ValueError(f"rasterize: at most 2^{_FACE_BITS} faces, got {len(faces)}")
    tri = xy[faces]  # (F, 3, 2)
    tri_z = depth[faces]  # (F, 3)
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    lo = torch.ceil(tri.amin(dim=1) - 1e-6).clamp(min=0)
    hi = torch.floor(tri.amax(dim=1) + 1e-6)
    hi[:, 0] = hi[:, 0].clamp(max=width - 1)
    hi[:, 1] = hi[:, 1].clamp(max=height - 1)
    lo, hi = lo.long(), hi.long()
    nx = (hi[:, 0] - lo[:, 0] + 1).clamp(min=0)
    ny = (hi[:, 1] - lo[:, 1] + 1).clamp(min=0)
    ok = (area.abs() > 1e-12) & (tri_z.amin(dim=1) > near) & torch.isfinite(tri).all(dim=(1, 2))
    if cull_back:
        ok &= area < 0
    counts = torch.where(ok, nx * ny, torch.zeros_like(nx))
    ids_all = torch.nonzero(counts > 0).squeeze(1)
    zbuf = torch.full((height * width,), _EMPTY, dtype=torch.int64, device=device)
    if len(ids_all):
        ends = torch.cumsum(counts[ids_all], 0).cpu()
        start = 0
        while start < len(ids_all):
            # The longest run of triangles whose candidates fit the budget (at least one triangle).
            base = int(ends[start - 1]) if start else 0
            stop = max(int(torch.searchsorted(ends, base + budget, right=True)), start + 1)
            _scatter_batch(ids_all[start:stop], counts, lo, nx, a, b, c, area, tri_z, width, eps, zbuf)
            start = stop
    return _resolve(zbuf, xy, depth, faces, height, width)


def _scatter_batch(ids, counts, lo, nx, a, b, c, area, tri_z, width, eps, zbuf) -> None:
    """Tests the bounding-box candidates of triangles ``ids`` and keeps the nearest per pixel in ``zbuf``."""
    n = counts[ids]
    rep = torch.repeat_interleave(ids, n)
    local = torch.arange(int(n.sum()), device=ids.device) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
    width_of = nx[rep]
    px = lo[rep, 0] + local % width_of
    py = lo[rep, 1] + local // width_of
    p = torch.stack([px, py], dim=1).float()
    bary = _edge_bary(p, a[rep], b[rep], c[rep], area[rep])
    inside = (bary >= -eps).all(dim=1)
    rep, px, py, bary = rep[inside], px[inside], py[inside], bary[inside]
    inv_z = (bary / tri_z[rep]).sum(dim=1)
    z = 1.0 / inv_z.clamp_min(1e-30)
    # Positive float32 bit patterns sort like the floats, so (depth bits, face) packs into one int64 key.
    key = (z.float().view(torch.int32).long() << _FACE_BITS) | rep
    zbuf.scatter_reduce_(0, py * width + px, key, reduce="amin")


def _resolve(zbuf, xy, depth, faces, height, width) -> Fragments:
    device = xy.device
    covered = zbuf != _EMPTY
    pix = torch.nonzero(covered).squeeze(1)
    face = torch.full((height * width,), -1, dtype=torch.int64, device=device)
    bary = torch.zeros((height * width, 3), dtype=torch.float32, device=device)
    zmap = torch.full((height * width,), float("inf"), dtype=torch.float32, device=device)
    if len(pix):
        f = zbuf[pix] & ((1 << _FACE_BITS) - 1)
        p = torch.stack([pix % width, pix // width], dim=1).float()
        tri = xy[faces[f]]
        a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
        area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        screen = _edge_bary(p, a, b, c, area).clamp_min(0)
        screen = screen / screen.sum(dim=1, keepdim=True).clamp_min(1e-12)
        w = screen / depth[faces[f]]
        z = 1.0 / w.sum(dim=1).clamp_min(1e-30)
        face[pix] = f
        bary[pix] = w * z[:, None]
        zmap[pix] = z
    return Fragments(face.view(height, width), bary.view(height, width, 3), zmap.view(height, width))


def project(points: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projects points into one camera (OpenCV pixels, OpenGL camera axes, as ``datasets.geometry``).

    Args:
        points: (P, 3); K: (3, 3) intrinsics; c2w: (3, 4) camera-to-world.
    Returns:
        xy (P, 2) pixel coordinates and depth (P,) along the viewing axis (positive in front).
    """
    K = K.to(points)
    c2w = c2w.to(points)
    cam = (points - c2w[:, 3]) @ c2w[:, :3]  # OpenGL camera coordinates
    cam = cam * cam.new_tensor([1.0, -1.0, -1.0])  # -> OpenCV (z forward)
    z = cam[:, 2]
    pix = cam @ K.T
    return pix[:, :2] / pix[:, 2:3].clamp_min(1e-12), z


def rasterize_view(
    vertices: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, height: int, width: int,
    budget: int = 1 << 22, cull_back: bool = False,
) -> Fragments:
    """Rasterises a mesh seen from a pinhole camera.

    Args:
        vertices: (V, 3) in the camera's frame; faces: (F, 3); K: (3, 3); c2w: (3, 4) (OpenGL axes).
        height, width: image size.
        cull_back: skip the faces turned away from the camera (faces wound counter-clockwise seen from outside,
            see :func:`outward_faces`).
    Returns:
        :class:`Fragments` (depth = distance along the viewing axis).
    """
    xy, z = project(vertices.float(), K, c2w)
    return rasterize(xy, z, faces, height, width, budget, cull_back=cull_back)


def outward_faces(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """``faces`` wound counter-clockwise seen from outside (as back-face culling expects): reversed when the mesh's
    signed volume is negative (a closed mesh wound the other way; an open one is judged by its larger part).

    Args:
        vertices: (V, 3); faces: (F, 3) int64.
    """
    a, b, c = vertices[faces[:, 0]].double(), vertices[faces[:, 1]].double(), vertices[faces[:, 2]].double()
    volume = (a * torch.linalg.cross(b, c)).sum()
    return faces if volume >= 0 else faces[:, [0, 2, 1]]


def rasterize_uv_layout(uvs: torch.Tensor, faces: torch.Tensor, size: int, budget: int = 1 << 22) -> Fragments:
    """Rasterises UV triangles into an ``size x size`` texture (row 0 = ``v = 1``, as OBJ/trimesh store images).

    Args:
        uvs: (V, 2) in [0, 1]; faces: (F, 3) indices into ``uvs``.
    Returns:
        :class:`Fragments` whose barycentrics are affine in UV space (constant depth 1).
    """
    uv = uvs.float()
    xy = torch.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5], dim=1)
    return rasterize(xy, torch.ones(len(uv), device=uv.device), faces, size, size, budget)


def interpolate(attr: torch.Tensor, faces: torch.Tensor, frags: Fragments) -> torch.Tensor:
    """Interpolates per-vertex attributes at covered pixels.

    Args:
        attr: (V, C) vertex attributes; faces: (F, 3); frags: from :func:`rasterize`.
    Returns:
        (H, W, C) attributes (0 where no triangle covers the pixel).
    """
    h, w = frags.face.shape
    out = torch.zeros((h, w, attr.shape[1]), dtype=attr.dtype, device=attr.device)
    cov = frags.covered
    f = frags.face[cov]
    out[cov] = torch.einsum("pk,pkc->pc", frags.bary[cov].to(attr.dtype), attr[faces[f]])
    return out


__all__ = ["Fragments", "interpolate", "outward_faces", "project", "rasterize", "rasterize_uv_layout", "rasterize_view"]
