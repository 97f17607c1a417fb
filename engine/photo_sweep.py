"""A per-ray photo-consistency sweep that pulls the surface onto thin parts when training without masks.

Without masks the learned background competes with the surface for every pixel. A part a few pixels wide (an
antenna, a handle) gets painted into the background before the surface grows into it; from then on the render is
right on every photo and nothing pulls the surface there (engine/BENCHMARKS.md, fifth session). Its SfM points do not
survive matching either, so the sparse-point prior (engine/point_prior.py) cannot hold it.

The photos still say where such a part is. A training ray whose render is wrong and nearly transparent is followed
through the foreground sphere at many depths (``train.sweep.depths``); each depth is projected into a few training
photos drawn for that ray, and the depth whose pixels there have the ray's colour in most of them is where the ray
meets the scene, when that agreement is a single clear peak (a grazing ray or a flat colour agrees at many depths
and is skipped). The ``sweep`` loss (``train.loss.sweep``) is |sdf| at those depths: unlike an opacity target it has
a gradient however far the field still is from a surface there. Without masks the surroundings inside the region
that the photos agree on become surface too (a table, a backdrop; engine/BENCHMARKS.md, sixth session).

A step places a few targets at most, and a part a few pixels wide is rarely among them: alone they pulled the
antenna of the thin benchmark scene into shape but never its handle. So targets are kept across steps
(:class:`TargetMemory`), and each step also sweeps a few random pixels whatever their render (``train.sweep.scout``):
the kept targets grow into a dense photo-consistent point set over everything the photos agree on, and each step
pulls a batch of them. A kept target counts only where others agree with it (neighbours within a small distance,
from other rays): a chance match lies alone.

This is plane-sweep stereo for single rays, on the fly, on any device; no library of the field offers that (pycolmap's
PatchMatch stereo needs CUDA and works on whole images offline), hence the few lines of tensor code here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from .render.primitives import ray_sphere_intersect


class Photos(Protocol):
    """The training photos the sweep projects into (``engine.system.RaySource`` is one): images (N, H, W, 3) uint8,
    K (N, 3, 3), c2w (N, 3, 4) OpenGL axes, views (V,) the indices of the training views among them."""

    images: Tensor
    K: Tensor
    c2w: Tensor
    views: Tensor


def project_rays(origins: Tensor, dirs: Tensor, t: Tensor, K: Tensor, c2w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel coordinates of the points ``origins + t * dirs`` in cameras: origins, dirs (M, 3); t (M, D) depths
    along each ray; K (M, V, 3, 3), c2w (M, V, 3, 4) OpenGL axes -> u, v, depth, each (M, D, V) (depth <= 0:
    behind the camera). A point's camera coordinates are affine in t, so only the ray's two ends are rotated."""
    R, centre = c2w[..., :3, :3], c2w[..., :3, 3]  # (M, V, 3, 3), (M, V, 3)
    start = torch.einsum("mvji,mvj->mvi", R, origins[:, None] - centre)  # world -> camera: R^T (p - c)
    step = torch.einsum("mvji,mj->mvi", R, dirs)
    cam = start[:, None] + t[..., None, None] * step[:, None]  # (M, D, V, 3)
    depth = -cam[..., 2]
    inv = 1.0 / depth.clamp_min(1e-6)
    x, y = cam[..., 0] * inv, -cam[..., 1] * inv  # OpenGL y up -> OpenCV y down
    K = K[:, None]
    u = K[..., 0, 0] * x + K[..., 0, 1] * y + K[..., 0, 2]
    v = K[..., 1, 1] * y + K[..., 1, 2]
    return u, v, depth


def sweep_targets(origins: Tensor, dirs: Tensor, colours: Tensor, photos: Photos, radius: float, depths: int,
                  views: int, tolerance: float, min_agreement: float, peak_width: int) -> tuple[Tensor, Tensor]:
    """Where each ray meets the scene by photo-consistency, for the rays where that is clear.

    Args:
        origins, dirs: (M, 3) rays in the normalized frame, dirs unit length; colours: (M, 3) their pixels in [0, 1].
        photos: the training views; radius: the foreground sphere's.
        depths: jittered depths per ray between its sphere entry and exit; views: training photos drawn per ray (its
            own may be among them: it agrees at every depth, so it moves no peak).
        tolerance: a projected pixel agrees when its mean absolute channel difference is below this.
        min_agreement: the best depth needs at least this share of the views it projects into to agree (it must
            project into at least half of them), and 0.3 more than the ray's median depth.
        peak_width: and at most this many depths may come within 0.15 of its share (a single clear peak).
    Returns:
        points (T, 3), T <= M: the best depth of each ray that passed; rays (T,): their indices among the M.
    """
    m = origins.shape[0]
    device = origins.device
    if m == 0:
        return origins.new_zeros((0, 3)), torch.zeros(0, dtype=torch.long, device=device)
    near, far, _ = ray_sphere_intersect(origins, dirs, radius)
    far = far.clamp_min(0)  # a sphere behind the camera: near == far == 0, no depth to sweep
    slots = torch.arange(depths, device=device) + torch.rand(m, depths, device=device)
    t = near[:, None] + (far - near)[:, None] * slots / depths  # (M, D)
    pick = photos.views[torch.randint(0, len(photos.views), (m, views), device=device)]  # (M, V)
    u, v, depth = project_rays(origins, dirs, t, photos.K[pick], photos.c2w[pick])
    _, h, w, _ = photos.images.shape
    ui, vi = u.round().long(), v.round().long()
    inside = (depth > 1e-6) & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    # One flat index_select: ~3x faster on a CPU than indexing (view, row, column) with three tensors.
    flat = (pick[:, None] * h + vi.clamp(0, h - 1)) * w + ui.clamp(0, w - 1)  # (M, D, V)
    seen = photos.images.view(-1, 3).index_select(0, flat.reshape(-1)).view(*flat.shape, 3).float() / 255.0
    agree = ((seen - colours[:, None, None]).abs().mean(-1) < tolerance) & inside  # (M, D, V)
    seen_by = inside.float().sum(-1)
    # A depth that few of the views see agrees by chance too easily (one view that agrees is a share of 1).
    share = torch.where(seen_by >= views / 2, agree.float().sum(-1) / seen_by.clamp_min(1.0), 0.0)  # (M, D)
    best, at = share.max(1)
    clear = (best >= min_agreement) & (best >= share.median(1).values + 0.3)
    clear &= (share >= best[:, None] - 0.15).sum(1) <= peak_width
    rays = torch.nonzero(clear).squeeze(1)
    return origins[rays] + dirs[rays] * t[rays, at[rays]][:, None], rays


class TargetMemory:
    """The last ``capacity`` sweep targets, kept across steps (a ring: the oldest make room).

    Args:
        capacity: targets kept; radius, neighbours: a kept target is confirmed when at least ``neighbours`` others
            lie within ``radius`` of it.
    """

    def __init__(self, capacity: int, radius: float, neighbours: int) -> None:
        self.capacity, self.radius, self.neighbours = capacity, radius, neighbours
        self.points = torch.zeros((0, 3))
        self._next = 0  # where the next target goes once the ring is full

    def __len__(self) -> int:
        return self.points.shape[0]

    def add(self, points: Tensor) -> None:
        """Keeps ``points`` (T, 3), in place of the oldest once full."""
        points = points.detach()[-self.capacity:]
        self.points = self.points.to(points.device)  # the ring lives where the targets are made
        room = self.capacity - len(self)
        if room > 0:
            self.points = torch.cat([self.points, points[:room]])
            points = points[room:]
        if len(points):
            slots = (self._next + torch.arange(len(points), device=points.device)) % self.capacity
            self.points[slots] = points
            self._next = int(slots[-1] + 1) % self.capacity

    def confirmed(self, n: int) -> Tensor:
        """Up to ``n`` kept targets drawn at random, those confirmed by their neighbours -> (C, 3), C <= n."""
        if len(self) <= self.neighbours:
            return self.points[:0]
        pick = self.points[torch.randint(0, len(self), (min(n, len(self)),), device=self.points.device)]
        # Each drawn target is within the radius of itself: it needs ``neighbours`` more.
        near = (torch.cdist(pick, self.points) < self.radius).sum(1) - 1
        return pick[near >= self.neighbours]


@torch.no_grad()
def photo_surface_level(sdf: Callable[[Tensor], Tensor], photos: Photos, radius: float, sweep: dict, rays: int = 16384,
                        band: float = 0.02, min_targets: int = 100, chunk: int = 4096,
                        progress: Callable[[int, int], None] | None = None) -> tuple[float, int] | None:
    """The SDF level at which the photos place the surface: the median of ``sdf`` at the photo-consistent depths of
    ``rays`` random training pixels, over those within ``band`` of the field's zero level.

    A trained field's zero level set sits a few thousandths of the radius inside or outside where the photos agree
    (a fraction of a pixel; which way and how far changes from one training run to the next, masks or not:
    engine/BENCHMARKS.md, tenth session); extracting the mesh at this level instead of 0 puts it back where the
    photos place it. The sweep's own depths scatter about the surface symmetrically (no bias on calibrated cameras),
    so their median is the offset; the band keeps out targets on parts the field does not hold at all.

    Args:
        sdf: (M, 3) points in the normalized frame -> (M,) on the field's device; photos: the training views (on the
            CPU: the sweep gathers pixels from them); radius: the foreground sphere's; sweep: ``train.sweep`` as plain
            values (depths, views, tolerance, min_agreement, peak_width); rays, chunk: pixels swept, per call.
        progress: called with (rays swept, rays) after each chunk.
    Returns:
        (level, targets within the band), or None when fewer than ``min_targets`` are (too little texture to say).
        Deterministic: the pixels and depths come from a fixed seed, the global random state is left as it was.
    """
    keys = ("depths", "views", "tolerance", "min_agreement", "peak_width")
    values = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for start in range(0, rays, chunk):
            n = min(chunk, rays - start)
            origins, dirs, colours, _ = photos.sample(n)
            targets, _ = sweep_targets(origins, dirs, colours, photos, radius, **{k: sweep[k] for k in keys})
            if len(targets):
                values.append(sdf(targets).float().cpu())
            if progress is not None:
                progress(start + n, rays)
    f = torch.cat(values) if values else torch.zeros(0)
    near = f[f.abs() < band]
    if len(near) < min_targets:
        return None
    return float(near.median()), len(near)
