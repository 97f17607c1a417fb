"""Held-out-view metrics: PSNR of renders and silhouette IoU against masks."""

from __future__ import annotations

import math

import numpy as np
import torch

from datasets.geometry import scale_intrinsics

from .config_schema import RunConfig
from .guard import with_memory_backoff
from .liveness import tick
from .model import NeuSModel


@torch.no_grad()
def render_views(model: NeuSModel, scene, indices, downscale: int, bg: str = "white", chunk: int = 8192):
    """Renders views at 1/downscale resolution. Yields (index, rgb (h,w,3), opacity (h,w), target (h,w,3), mask)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bg_color = torch.full((3,), 1.0 if bg == "white" else 0.0, device=device)
    try:
        for k, i in enumerate(indices):
            K = torch.from_numpy(scale_intrinsics(scene.K[i], downscale)).float().to(device)
            c2w = torch.from_numpy(scene.c2w[i]).float().to(device)
            h, w = scene.height // downscale, scene.width // downscale
            out = model.render_image(K, c2w, h, w, bg_color, chunk)
            target = scene.images[i][: h * downscale, : w * downscale]  # uint8: only this view becomes float
            target = target.reshape(h, downscale, w, downscale, 3).mean((1, 3), dtype=np.float32) / 255.0
            mask = None
            if scene.masks is not None:
                m = scene.masks[i][: h * downscale, : w * downscale]
                mask = m.reshape(h, downscale, w, downscale).mean((1, 3), dtype=np.float32) > 0.5
            tick("validating", k + 1, len(indices), "views")  # progress and cancel (engine.liveness)
            yield i, out["rgb"].cpu().numpy(), out["opacity"].cpu().numpy(), target, mask
    finally:
        model.train(was_training)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def validation_metrics(model: NeuSModel, scene, indices, cfg: RunConfig, emit=None) -> dict[str, float | None]:
    """Mean PSNR over held-out views (background composited like training when masks are used) and mask IoU.
    Out of memory halves the rays per render call (``emit``: reports it)."""
    return with_memory_backoff(lambda chunk: _metrics(model, scene, indices, cfg, chunk), 8192,
                               "train.val_downscale", "validate", emit, hint="raise train.val_downscale")


def _metrics(model: NeuSModel, scene, indices, cfg: RunConfig, chunk: int) -> dict[str, float | None]:
    indices = list(indices)[: cfg.train.val_max_views]
    use_mask = bool(cfg.data.use_mask) and scene.masks is not None
    psnrs, ious = [], []
    for _, rgb, opacity, target, mask in render_views(model, scene, indices, cfg.train.val_downscale,
                                                      chunk=chunk):
        if use_mask and mask is not None:
            target = target * mask[..., None] + (1.0 - mask[..., None])  # white background, as rendered
        psnrs.append(psnr(rgb, target))
        if mask is not None:
            pred = opacity > 0.5
            union = np.logical_or(pred, mask).sum()
            ious.append(float(np.logical_and(pred, mask).sum() / union) if union else 1.0)
    return {"psnr": float(np.mean(psnrs)) if psnrs else None, "mask_iou": float(np.mean(ious)) if ious else None}

