"""Reference geometry for tests: SDF normals by autograd or central differences, and sphere tracing.

Independent of the engine's own closed-form normals and depth-map visibility, which the tests compare against
these; the engine does not use them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

SdfFn = Callable[[torch.Tensor], torch.Tensor]


def _normalize(v: np.ndarray) -> np.ndarray:
    """Unit rows, (N, 3) float32; a zero row becomes +Z."""
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(n > 1e-12, v / np.maximum(n, 1e-12), np.float32([0.0, 0.0, 1.0])).astype(np.float32)


def sdf_normals(
    sdf_fn: SdfFn,
    points: Any,
    chunk: int = 2**16,
    device: str | torch.device = "cpu",
    eps: float | None = None,
) -> np.ndarray:
    """Unit SDF gradients at points: autograd, or central differences of step ``eps`` if given (or if
    ``sdf_fn`` is not differentiable).

    Args:
        sdf_fn: (M, 3) -> (M,) SDF.
        points: (P, 3) array or tensor.
        chunk, device: query batching.
        eps: finite-difference step in normalized units; None tries autograd first.
    Returns:
        (P, 3) float32 unit normals (outward).
    """
    device = torch.device(device)
    pts = torch.as_tensor(np.asarray(points, dtype=np.float32) if not torch.is_tensor(points) else points)
    pts = pts.float().reshape(-1, 3)
    out = np.empty((len(pts), 3), dtype=np.float32)
    use_fd = eps is not None
    for s in range(0, len(pts), chunk):
        x = pts[s : s + chunk].to(device)
        g = None
        if not use_fd:
            try:
                with torch.enable_grad():
                    x_req = x.detach().requires_grad_(True)
                    y = sdf_fn(x_req).reshape(-1)
                    (g,) = torch.autograd.grad(y.sum(), x_req)
            except RuntimeError:
                use_fd = True  # not differentiable (e.g. computed under no_grad): fall back for every chunk
        if use_fd:
            h = 1e-3 if eps is None else float(eps)
            offs = torch.eye(3, device=device) * h
            with torch.no_grad():
                q = torch.cat([x[:, None, :] + offs, x[:, None, :] - offs], dim=1).reshape(-1, 3)
                d = sdf_fn(q).reshape(-1, 6)
            g = (d[:, :3] - d[:, 3:]) / (2 * h)
        out[s : s + len(x)] = g.detach().float().cpu().numpy()
    return _normalize(out)


def segment_occluded(
    sdf_fn: SdfFn,
    starts: torch.Tensor,
    ends: torch.Tensor,
    bound_radius: float = 1.0,
    max_steps: int = 128,
    min_step: float = 2e-3,
    step_scale: float = 0.9,
) -> torch.Tensor:
    """Whether the SDF goes negative on each segment (sphere tracing from ``starts`` towards ``ends``).

    Marching stops at the end point or where the ray leaves the sphere of ``bound_radius`` (the SDF is only
    meaningful inside it). A ray still undecided after ``max_steps`` counts as not occluded.

    Args:
        sdf_fn: (M, 3) -> (M,) SDF.
        starts, ends: (M, 3) tensors on the device of ``sdf_fn`` (starts already offset off the surface).
        bound_radius: radius of the region where the SDF is trusted.
        max_steps, min_step, step_scale: marching controls (``step = max(step_scale * sdf, min_step)``).
    Returns:
        (M,) bool.
    """
    d = ends - starts
    length = d.norm(dim=-1).clamp_min(1e-12)
    d = d / length[:, None]
    # Exit distance from the trusted sphere: |p + t d| = R.
    b = (starts * d).sum(-1)
    c = (starts * starts).sum(-1) - bound_radius**2
    disc = (b * b - c).clamp_min(0)
    t_exit = torch.where(c < 0, -b + disc.sqrt(), torch.zeros_like(b))
    t_max = torch.minimum(length, t_exit)
    t = torch.zeros_like(length)
    occluded = torch.zeros_like(length, dtype=torch.bool)
    active = torch.nonzero(t < t_max).squeeze(1)
    for _ in range(max_steps):
        if active.numel() == 0:
            break
        sdf = sdf_fn(starts[active] + t[active, None] * d[active]).reshape(-1).float()
        hit = sdf < 0
        occluded[active[hit]] = True
        t[active] += torch.clamp(step_scale * sdf, min=min_step)
        active = active[~hit & (t[active] < t_max[active])]
    return occluded
