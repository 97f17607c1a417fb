"""Asset fidelity: how well a textured mesh, rendered as stored (emission only), matches the photos.

The asset is rasterised with :mod:`.raster` from a dataset camera, its texture sampled bilinearly at the
interpolated UVs (what an emission shader shows in Blender), and compared with the photo over the foreground mask
(masked PSNR), so benchmarks need no Blender.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .raster import interpolate, rasterize_view

# Mask pixels this close to the mask's edge are left out of ``psnr_interior`` (measured on the bundled scene: the
# outermost ring of mask pixels scores ~15.5 dB, the next ~22.5, the interior ~25.7).
INTERIOR_PX = 2


@torch.no_grad()
def render_textured(
    vertices: torch.Tensor, faces: torch.Tensor, uvs: torch.Tensor, texture: torch.Tensor, K: torch.Tensor,
    c2w: torch.Tensor, height: int, width: int, background: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Renders a textured mesh with no lighting.

    Args:
        vertices: (V, 3) in the cameras' frame; faces: (F, 3); uvs: (V, 2) (v = 0 at the image bottom);
        texture: (T, T, 3) float in [0, 1] (row 0 = top); K: (3, 3); c2w: (3, 4) OpenGL axes.
        background: grey level of pixels the mesh does not cover.
    Returns:
        rgb (H, W, 3) float32 and covered (H, W) bool.
    """
    frags = rasterize_view(vertices, faces, K, c2w, height, width)
    uv = interpolate(uvs.float(), faces, frags)  # (H, W, 2)
    # grid_sample: x = -1 at the left edge, y = -1 at the top edge (v = 1).
    grid = torch.stack([uv[..., 0] * 2 - 1, (1 - uv[..., 1]) * 2 - 1], dim=-1)
    rgb = F.grid_sample(texture.permute(2, 0, 1)[None].float(), grid[None], mode="bilinear",
                        padding_mode="border", align_corners=False)[0].permute(1, 2, 0)
    covered = frags.covered
    rgb = torch.where(covered[..., None], rgb, torch.full_like(rgb, background))
    return rgb, covered


def masked_psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None) -> float:
    """PSNR over the mask's pixels (all pixels when None): pred, target (H, W, 3) in [0, 1]; mask (H, W) bool."""
    diff = (np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2
    if mask is not None:
        diff = diff[np.asarray(mask, bool)]
    mse = float(diff.mean()) if diff.size else 0.0
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Box-filters (H, W, ...) by an integer factor, as the held-out validation does."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    x = image[: h * factor, : w * factor]
    return x.reshape(h, factor, w, factor, *x.shape[2:]).mean((1, 3))


def fidelity_views(n_views: int, holdout_every: int) -> tuple[list[int], bool]:
    """The views to judge an asset on: the run's held-out views, else every 8th view (then not held out)."""
    from ..run_dir import split_views

    held = split_views(n_views, int(holdout_every))[1]
    if len(held):
        return [int(i) for i in held], True
    return [int(i) for i in split_views(n_views, 8)[1]], False


def asset_fidelity(
    vertices: Any, faces: Any, uvs: Any, texture: Any, scene: Any, indices: Any, downscale: int = 1,
    device: str | torch.device = "cpu", progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Masked PSNR of a textured asset against the photos of the given views.

    Args:
        vertices: (V, 3) in the scene's normalized frame; faces: (F, 3); uvs: (V, 2); texture: (T, T, 3) uint8.
        scene: a ``datasets`` scene (K, c2w, images, masks).
        indices: views to compare.
        downscale: integer factor applied to the photos, masks and intrinsics.
        progress: called with (views done, views) after each view.
    Returns:
        ``{"psnr": mean over views, "per_view": [psnr, ...], "psnr_covered": the same over the mask pixels the
        asset covers (texture error without silhouette error), "psnr_interior": the same over the mask pixels
        at least ``INTERIOR_PX`` from its edge (the texture's own error: a photo's edge pixels blend the object
        with what lies behind it, which no asset shows; None without masks), "views": [index, ...],
        "coverage": mean fraction of mask pixels the asset covers}``.
    """
    from scipy.ndimage import binary_erosion

    from datasets.geometry import scale_intrinsics

    device = torch.device(device)
    v = torch.as_tensor(np.asarray(vertices, np.float32), device=device)
    f = torch.as_tensor(np.asarray(faces, np.int64), device=device)
    uv = torch.as_tensor(np.asarray(uvs, np.float32), device=device)
    tex = torch.from_numpy(np.array(texture, np.uint8)).to(device).float() / 255.0
    per_view, per_view_covered, per_view_interior, coverage = [], [], [], []
    for i in indices:
        i = int(i)
        photo = np.asarray(scene.images[i])[..., :3]
        photo = _downsample(photo.astype(np.float32) / (255.0 if photo.dtype == np.uint8 else 1.0), downscale)
        h, w = photo.shape[:2]
        mask = None
        if scene.masks is not None:
            mask = _downsample(np.asarray(scene.masks[i], np.float32), downscale) > 0.5
        K = torch.as_tensor(scale_intrinsics(scene.K[i], downscale), dtype=torch.float32)
        rgb, covered = render_textured(v, f, uv, tex, K, torch.as_tensor(scene.c2w[i], dtype=torch.float32), h, w)
        cov, rendered = covered.cpu().numpy(), rgb.cpu().numpy()
        per_view.append(masked_psnr(rendered, photo, mask))
        both = cov if mask is None else cov & mask
        per_view_covered.append(masked_psnr(rendered, photo, both))
        if mask is not None:
            per_view_interior.append(masked_psnr(rendered, photo, binary_erosion(mask, iterations=INTERIOR_PX)))
        coverage.append(float(cov[mask].mean()) if mask is not None and mask.any() else float(cov.mean()))
        if progress is not None:
            progress(len(per_view), len(indices))
    return {"psnr": float(np.mean(per_view)) if per_view else None, "per_view": per_view,
            "psnr_covered": float(np.mean(per_view_covered)) if per_view_covered else None,
            "psnr_interior": float(np.mean(per_view_interior)) if per_view_interior else None,
            "views": [int(i) for i in indices], "coverage": float(np.mean(coverage)) if coverage else None}


FIDELITY_FILE = "fidelity.json"


def export_fidelity(vertices: Any, faces: Any, uvs: Any, texture: Any, scene: Any, holdout_every: int,
                    device: str | torch.device = "cpu", progress: Callable[[int, int], None] | None = None,
                    ) -> dict[str, Any]:
    """What an export reports of its own asset (``done``'s ``fidelity``, ``fidelity.json``): :func:`asset_fidelity`
    at full resolution on the run's held-out views, else on every 8th view (``held_out`` false: views it was
    textured from). A few rasterised views: seconds, no neural render (``engine fidelity`` adds that)."""
    views, held_out = fidelity_views(scene.n_views, holdout_every)
    result = asset_fidelity(vertices, faces, uvs, texture, scene, views, 1, device, progress)
    return {"psnr": _rounded(result["psnr"]), "psnr_covered": _rounded(result["psnr_covered"]),
            "psnr_interior": _rounded(result["psnr_interior"]),
            "coverage": _rounded(result["coverage"], 5), "per_view": [_rounded(v) for v in result["per_view"]],
            "views": result["views"], "held_out": held_out, "masked": scene.masks is not None}


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def write_fidelity_json(path: str | Path, fidelity: dict[str, Any]) -> Path:
    """``fidelity.json`` beside the textured mesh, atomically."""
    from ..atomic_files import write_bytes_atomically

    return write_bytes_atomically(Path(path), (json.dumps(fidelity, indent=2) + "\n").encode())


__all__ = ["FIDELITY_FILE", "asset_fidelity", "export_fidelity", "fidelity_views", "masked_psnr", "render_textured",
           "write_fidelity_json"]
