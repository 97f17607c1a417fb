"""Texel optimisation: the baked texture refined so the asset, rendered as stored, reproduces the training photos.

The blend (:mod:`.photo`) averages photos that disagree by a pixel or two where the surface is slightly off, so
thin features blur. Here the textured mesh itself is rasterised from every training camera (once: the geometry is
fixed), which gives each foreground pixel the UVs it shows; the texture is then fitted by Adam so that bilinear
lookups at those UVs, averaged over ``supersample`` x ``supersample`` points of the pixel's footprint (a photo
pixel integrates its whole footprint, several texels wide at a 2048 texture), equal the photo's colour. A
smoothness term ties neighbouring texels of the same chart (pairs across a chart border are left free: they are
not neighbours on the surface) and decides the texels no pixel constrains alone. It starts from the blend, so a
handful of steps within a time budget is enough, and a texel no training pixel sees keeps its blended colour.

Only pixels whose whole footprint the mesh covers, inside the eroded mask, are fitted: silhouette pixels mix in
the background.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..liveness import tick
from .raster import interpolate, rasterize_uv_layout, rasterize_view


@dataclass
class RefineOptions:
    """Controls of the texel optimisation (``export.texture_refine*`` in the config)."""

    steps: int = 60
    """Adam steps at most."""
    time_budget_s: float = 20.0
    """Stop after this many seconds of optimisation (the steps done so far are kept)."""
    lr: float = 0.02
    """Adam learning rate (colour units in [0, 1])."""
    supersample: int = 2
    """Lookups per pixel side: each pixel compares the mean of ``supersample**2`` texture lookups over its
    footprint with the photo."""
    smoothness: float = 0.2
    """Weight of the squared difference of neighbouring texels of a chart, relative to the mean photo error."""
    erode_px: int = 1
    """Mask erosion in pixels before choosing the fitted pixels."""
    batch_pixels: int = 1 << 19
    """Pixels per step (a random subset when there are more)."""
    seed: int = 0


@dataclass
class PixelSet:
    """The fitted pixels of all training views.

    Attributes:
        grid: (N, s*s, 2) float32 ``grid_sample`` coordinates of each pixel's footprint lookups.
        target: (N, 3) uint8 photo colours.
        per_view: number of pixels of each view.
    """

    grid: torch.Tensor
    target: torch.Tensor
    per_view: list[int] = field(default_factory=list)


def _upscaled_intrinsics(K: torch.Tensor, s: int) -> torch.Tensor:
    """(3, 3) intrinsics of the image rendered ``s`` times larger (pixel centres at integers: x' = s x + (s-1)/2)."""
    out = K.clone().float()
    out[:2, :] *= s
    out[0, 2] += (s - 1) / 2.0
    out[1, 2] += (s - 1) / 2.0
    return out


def foreground_mask(x: Any) -> torch.Tensor:
    """A mask as (H, W) bool: bool as is, uint8 above 127, float above 0.5; an (H, W, C) one by its largest channel."""
    t = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim == 3:
        t = t.amax(dim=-1)
    return t if t.dtype == torch.bool else t > (127 if t.dtype == torch.uint8 else 0.5)


def gather_pixels(
    vertices: torch.Tensor, faces: torch.Tensor, uvs: torch.Tensor, K: Any, c2w: Any, images: Any, masks: Any,
    supersample: int = 2, erode_px: int = 1,
) -> PixelSet:
    """Rasterises the textured mesh from each camera and keeps the pixels its surface fills.

    Args:
        vertices: (V, 3); faces: (F, 3); uvs: (V, 2) (v = 0 at the image bottom), all on one device.
        K: (N, 3, 3); c2w: (N, 3, 4) OpenGL axes; images: N of (H, W, 3) uint8 or float in [0, 1];
        masks: N of (H, W) foreground masks, or None (every covered pixel counts).
        supersample: lookups per pixel side.
    """
    device = vertices.device
    s = int(supersample)
    grids, targets, counts = [], [], []
    for i in range(len(K)):
        img = images[i] if torch.is_tensor(images[i]) else torch.from_numpy(np.ascontiguousarray(images[i]))
        img = img[..., :3]
        h, w = img.shape[:2]
        Ki = torch.as_tensor(np.asarray(K[i], np.float32), device=device)
        ci = torch.as_tensor(np.asarray(c2w[i], np.float32), device=device)
        frags = rasterize_view(vertices, faces, _upscaled_intrinsics(Ki, s), ci, h * s, w * s)
        uv = interpolate(uvs, faces, frags)  # (hs, ws, 2)
        full = frags.covered.view(h, s, w, s).all(dim=3).all(dim=1)  # (h, w): the whole footprint on the mesh
        if masks is not None:
            fg = foreground_mask(masks[i]).to(device)
            if erode_px > 0:
                k = 2 * int(erode_px) + 1
                fg = -F.max_pool2d(-fg.float()[None, None], k, 1, int(erode_px))[0, 0] > 0.5
            full &= fg
        rows, cols = torch.nonzero(full, as_tuple=True)
        sub = uv.view(h, s, w, s, 2).permute(0, 2, 1, 3, 4).reshape(h, w, s * s, 2)[rows, cols]  # (n, s*s, 2)
        # grid_sample: x = -1 at the left edge (u = 0), y = -1 at the top edge (v = 1).
        grids.append(torch.stack([sub[..., 0] * 2 - 1, (1 - sub[..., 1]) * 2 - 1], dim=-1))
        pix = img.to(device)[rows.to(img.device) if img.device != device else rows,
                             cols.to(img.device) if img.device != device else cols]
        targets.append(pix if pix.dtype == torch.uint8 else (pix.float().clamp(0, 1) * 255).round().to(torch.uint8))
        counts.append(len(rows))
        tick("texturing", i + 1, len(K), "views")  # progress and cancel (engine.liveness), a view each
    if not grids:
        return PixelSet(torch.zeros((0, s * s, 2), device=device), torch.zeros((0, 3), torch.uint8, device=device))
    return PixelSet(torch.cat(grids), torch.cat(targets), counts)


def render_pixels(texture: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Mean of the bilinear lookups of each pixel: texture (1, 3, S, S), grid (N, k, 2) -> (N, 3)."""
    n, k = grid.shape[:2]
    out = F.grid_sample(texture, grid.reshape(1, n * k, 1, 2), mode="bilinear", padding_mode="border",
                        align_corners=False)  # (1, 3, n*k, 1)
    return out.view(3, n, k).mean(dim=2).T


def photometric_mse(texture: torch.Tensor, pixels: PixelSet, chunk: int = 1 << 20) -> float:
    """Mean squared error of the rendered pixels against the photos; texture (1, 3, S, S) in [0, 1]."""
    total, count = 0.0, 0
    with torch.no_grad():
        for a in range(0, len(pixels.target), chunk):
            pred = render_pixels(texture, pixels.grid[a:a + chunk])
            diff = pred - pixels.target[a:a + chunk].float() / 255.0
            total += float((diff * diff).sum())
            count += diff.numel()
    return total / max(count, 1)


def _neighbour_pairs(inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, S) bool texels in a chart -> float masks of horizontal (S, S-1) and vertical (S-1, S) neighbour pairs
    with both texels in a chart (xatlas leaves padding between charts, so such pairs share a chart)."""
    return ((inside[:, 1:] & inside[:, :-1]).float(), (inside[1:, :] & inside[:-1, :]).float())


def refine_texture(
    vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, texture: np.ndarray, K: Any, c2w: Any, images: Any,
    masks: Any = None, options: RefineOptions | None = None, device: str | torch.device = "cpu",
    stats: dict | None = None,
) -> np.ndarray:
    """Fits the texture of a UV-mapped mesh to the photos (see the module docstring).

    Args:
        vertices: (V, 3) in the cameras' frame; faces: (F, 3); uvs: (V, 2) in [0, 1] (one per vertex);
        texture: (S, S, 3) uint8, the starting point (row 0 = top, i.e. v = 1).
        K, c2w, images, masks: the training views (see :func:`gather_pixels`).
        stats: filled with ``pixels``, ``steps``, ``mse_before`` / ``mse_after`` (photometric MSE on all fitted
            pixels), ``gather_s``, ``optimise_s``.
    Returns:
        (S, S, 3) uint8 texture; texels outside the charts are dilated from the nearest chart texel.
    """
    from .texture import dilate_texture

    opts = options or RefineOptions()
    stats = {} if stats is None else stats
    device = torch.device(device)
    t0 = time.monotonic()
    v = torch.as_tensor(np.asarray(vertices, np.float32), device=device)
    f = torch.as_tensor(np.asarray(faces, np.int64), device=device)
    uv = torch.as_tensor(np.asarray(uvs, np.float32), device=device)
    pixels = gather_pixels(v, f, uv, K, c2w, images, masks, opts.supersample, opts.erode_px)
    size = texture.shape[0]
    inside = rasterize_uv_layout(uv, f, size).covered
    # Texels a bilinear lookup inside a chart may touch: the charts grown by one texel.
    touched = F.max_pool2d(inside.float()[None, None], 3, 1, 1)[0, 0] > 0
    pair_x, pair_y = _neighbour_pairs(touched)
    pair_count = float(pair_x.sum() + pair_y.sum())
    stats.update(pixels=len(pixels.target), gather_s=time.monotonic() - t0, steps=0)
    start = torch.from_numpy(np.asarray(texture, np.float32) / 255.0).to(device).permute(2, 0, 1)[None].contiguous()
    if len(pixels.target) == 0 or opts.steps <= 0:
        stats.update(mse_before=None, mse_after=None, optimise_s=0.0)
        return np.asarray(texture, np.uint8).copy()
    param = start.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([param], lr=opts.lr)
    gen = torch.Generator(device="cpu").manual_seed(opts.seed)
    n = len(pixels.target)
    t1 = time.monotonic()
    stats["mse_before"] = photometric_mse(start, pixels)
    for step in range(opts.steps):
        if step and time.monotonic() - t1 > opts.time_budget_s:
            break
        if n > opts.batch_pixels:
            pick = torch.randint(0, n, (opts.batch_pixels,), generator=gen).to(device)
            grid, target = pixels.grid[pick], pixels.target[pick]
        else:
            grid, target = pixels.grid, pixels.target
        optimiser.zero_grad(set_to_none=True)
        pred = render_pixels(param, grid)
        data = F.mse_loss(pred, target.float() / 255.0)
        dx = param[..., :, 1:] - param[..., :, :-1]
        dy = param[..., 1:, :] - param[..., :-1, :]
        smooth = ((dx * dx).sum(1)[0] * pair_x).sum() + ((dy * dy).sum(1)[0] * pair_y).sum()
        loss = data + opts.smoothness * smooth / max(pair_count, 1.0)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            param.clamp_(0.0, 1.0)
        stats["steps"] = step + 1
        tick("texturing", step + 1, opts.steps, "steps")  # between steps: a cancel keeps nothing half done
    fitted = param.detach()
    stats["mse_after"] = photometric_mse(fitted, pixels)
    stats["optimise_s"] = time.monotonic() - t1
    out = (fitted[0].permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return dilate_texture(out, touched.cpu().numpy())


__all__ = ["PixelSet", "RefineOptions", "foreground_mask", "gather_pixels", "photometric_mse", "refine_texture",
           "render_pixels"]
