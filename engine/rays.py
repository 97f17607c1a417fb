"""Camera rays in torch (the numpy versions for loaders live in ``datasets.rays``; these run on the device)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def directions_from_pixels(K: Tensor, c2w: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """World rays through pixel coordinates (OpenCV convention: integer = pixel centre).

    Args:
        K: (R, 3, 3) or (3, 3); c2w: (R, 3, 4) or (3, 4) with OpenGL camera axes; u, v: (R,) pixel coordinates.
    Returns:
        origins (R, 3), unit directions (R, 3).
    """
    if K.dim() == 2:
        K = K.expand(u.shape[0], 3, 3)
        c2w = c2w.expand(u.shape[0], 3, 4)
    y = (v - K[:, 1, 2]) / K[:, 1, 1]
    x = (u - K[:, 0, 2] - K[:, 0, 1] * y) / K[:, 0, 0]  # K[0, 1] is the (usually tiny) skew
    cam = torch.stack([x, -y, -torch.ones_like(x)], -1)  # OpenCV -> OpenGL: flip y and z
    dirs = F.normalize(torch.einsum("rij,rj->ri", c2w[:, :3, :3], cam), dim=-1)
    return c2w[:, :3, 3], dirs


def camera_rays(K: Tensor, c2w: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """All pixel-centre rays of one view, row-major: K (3,3), c2w (3,4) -> origins (H*W, 3), dirs (H*W, 3)."""
    v, u = torch.meshgrid(torch.arange(height, device=K.device, dtype=K.dtype),
                          torch.arange(width, device=K.device, dtype=K.dtype), indexing="ij")
    return directions_from_pixels(K, c2w, u.reshape(-1), v.reshape(-1))
