"""Per-point colours from the learned radiance field.

Photo colours (depth-map visibility, view blending) live in :mod:`engine.mesh.photo`. Inputs are numpy arrays or
tensors; outputs numpy float32 RGB in [0, 1]; the network queries run in torch on ``device``, chunked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..liveness import tick

ColorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# A colour source for texture baking: (P, 3) points, (P, 3) unit normals (numpy float32) -> (P, 3) RGB.
ColorSource = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _np32(x: Any, name: str, cols: int = 3) -> np.ndarray:
    a = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] != cols:
        raise ValueError(f"{name} must have shape (P, {cols}), got {a.shape}")
    return a


@torch.no_grad()
def vertex_colors_from_field(
    vertices: Any, normals: Any, color_fn: ColorFn, chunk: int = 2**16, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Colours from the radiance field ("albedo" style: each point seen head-on, view direction = -normal).

    Args:
        vertices: (P, 3) points (normalized frame).
        normals: (P, 3) unit outward normals.
        color_fn: ((M, 3) points, (M, 3) normals) tensors on ``device`` -> (M, 3) RGB in [0, 1]. Called under
            ``torch.no_grad`` (wrap the inside in ``torch.enable_grad`` if it needs SDF gradients).
        chunk: points per call.
        device: torch device for the queries.
    Returns:
        (P, 3) float32 RGB clipped to [0, 1].
    """
    device = torch.device(device)
    v = _np32(vertices, "vertices")
    n = _np32(normals, "normals")
    if len(v) != len(n):
        raise ValueError(f"{len(v)} vertices but {len(n)} normals")
    out = np.empty((len(v), 3), dtype=np.float32)
    for s in range(0, len(v), chunk):
        rgb = color_fn(
            torch.from_numpy(v[s : s + chunk]).to(device), torch.from_numpy(n[s : s + chunk]).to(device)
        )
        rgb = rgb.reshape(-1, 3)
        if rgb.shape[0] != min(chunk, len(v) - s):
            raise ValueError(f"color_fn returned {rgb.shape[0]} colours for {min(chunk, len(v) - s)} points")
        out[s : s + chunk] = rgb.float().cpu().numpy()
        tick("colouring", min(s + chunk, len(v)), len(v), "points")  # progress and cancel (engine.liveness)
    return np.clip(np.nan_to_num(out, nan=0.5), 0.0, 1.0)


def field_color_source(
    color_fn: ColorFn, chunk: int = 2**16, device: str | torch.device = "cpu"
) -> ColorSource:
    """A numpy colour source (for :func:`engine.mesh.texture.bake_texture`) from the radiance field."""

    def source(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        return vertex_colors_from_field(points, normals, color_fn, chunk, device)

    return source


__all__ = [
    "ColorFn",
    "ColorSource",
    "field_color_source",
    "vertex_colors_from_field",
]
