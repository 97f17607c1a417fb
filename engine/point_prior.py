"""Sparse points as a foreground prior for captures without masks.

Without masks the learned background competes with the surface for every pixel, and it wins where the surface has
not grown yet: a thin part outside the initial SDF sphere (an ear, a handle) gets painted into the background and
never forms (engine/BENCHMARKS.md, 2026-12-04). The structure-from-motion points of a solved capture say where the
surface is: every ray from a camera through a point that lies on the object hits the object, at that point or in
front of it (an occluder is foreground too), so its foreground opacity is 1. That holds in every view, seen or not,
which needs no visibility test. :class:`PointRays` draws such rays; the ``points`` loss (``train.loss.points``,
``model.point_prior_loss``) lifts their opacity to at least 0.5, and the occupancy grid keeps the cells holding a
point. Only that much, and only early in the run (configs/no_mask.yaml): pushing to 1 all run long let the points'
noise hold the surface outward (BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# Points inside this fraction of the foreground radius count: farther ones may be background the region reaches.
INSIDE_FRACTION = 0.98
MIN_POINTS = 20  # fewer points make no prior (a handful of outliers would only add fog)


def foreground_points(data_dir: Path, scale_mat: np.ndarray, radius: float) -> np.ndarray | None:
    """(P, 3) float32 sparse points of a COLMAP-layout capture in the normalized frame, those inside the
    foreground sphere; None when the capture has no points file or too few points inside."""
    from datasets.formats.colmap import find_sparse_folder, read_sparse_points

    if find_sparse_folder(Path(data_dir)) is None:
        return None
    found = read_sparse_points(Path(data_dir))
    if found is None:
        return None
    world = found[0]
    normalized = (world - scale_mat[:3, 3]) @ np.linalg.inv(scale_mat[:3, :3]).T
    inside = normalized[np.linalg.norm(normalized, axis=1) < INSIDE_FRACTION * radius]
    return inside.astype(np.float32) if len(inside) >= MIN_POINTS else None


class PointRays:
    """Rays from the training cameras through the sparse points (see the module docstring).

    Args:
        points: (P, 3) normalized frame; K: (N, 3, 3); c2w: (N, 3, 4) OpenGL axes, the training views;
        width, height: image size.
    """

    def __init__(self, points: np.ndarray, K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> None:
        self.points = torch.as_tensor(points, dtype=torch.float32)
        self.K = torch.as_tensor(K, dtype=torch.float32)
        self.c2w = torch.as_tensor(c2w, dtype=torch.float32)
        self.width, self.height = width, height

    def to(self, device: torch.device) -> PointRays:
        self.points, self.K, self.c2w = (t.to(device) for t in (self.points, self.K, self.c2w))
        return self

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` random (point, view) pairs whose point projects into the view: origins (the camera centres) and
        unit directions towards the points, (M, 3) each, M <= n."""
        device = self.points.device
        pick = torch.randint(len(self.points), (2 * n,), device=device)
        view = torch.randint(len(self.K), (2 * n,), device=device)
        K, c2w, p = self.K[view], self.c2w[view], self.points[pick]
        cam = torch.einsum("rji,rj->ri", c2w[:, :3, :3], p - c2w[:, :3, 3])  # OpenGL: x right, y up, looking down -z
        depth = -cam[:, 2]
        front = depth > 1e-6
        x, y = cam[:, 0] / depth.clamp_min(1e-6), -cam[:, 1] / depth.clamp_min(1e-6)  # OpenCV image plane
        u = K[:, 0, 0] * x + K[:, 0, 1] * y + K[:, 0, 2]
        v = K[:, 1, 1] * y + K[:, 1, 2]
        keep = front & (u >= -0.5) & (u <= self.width - 0.5) & (v >= -0.5) & (v <= self.height - 0.5)
        keep = torch.nonzero(keep).squeeze(1)[:n]
        origins = c2w[keep, :3, 3]
        return origins, F.normalize(p[keep] - origins, dim=-1)


__all__ = ["PointRays", "foreground_points"]
