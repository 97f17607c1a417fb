"""One functional rendering entry for both samplers (the shape of nerfacc's ``rendering``).

Samples of R rays are packed flat and sorted by ray, with a ``valid`` mask: the packed sampler's samples are all
valid, the static sampler pads a fixed-size buffer with invalid samples that belong to a dummy ray ``R``. Every
function here accumulates over ``R + 1`` rays and drops the dummy row, so the two samplers run the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .primitives import accumulate_along_rays, render_weights_from_alpha, sample_static, sample_uniform_along_rays

# (t_starts (S,), t_ends (S,), ray_indices (S,)) -> (rgbs (S, 3), alphas (S,), extras: per-sample tensors)
RgbAlphaFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, dict[str, Tensor]]]
WeightsFn = Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]]


class Samples(NamedTuple):
    """Packed samples of R rays."""

    t_starts: Tensor  # (S,) segment starts along the ray
    t_ends: Tensor  # (S,) segment ends (t_starts == t_ends in the padding)
    ray_indices: Tensor  # (S,) long, non-decreasing; R (a dummy ray) in the padding
    valid: Tensor  # (S,) bool: False in the padding
    complete: Tensor  # (R,) bool: the ray's samples are all here (the losses use only these rays)
    n_samples: Tensor | int  # valid samples kept (a device tensor for the static sampler: no host read)
    n_candidates: Tensor | int  # valid samples before the budget cut (the demand; may exceed S)


def march_packed(origins: Tensor, dirs: Tensor, near: Tensor, far: Tensor, step_size: float, max_steps: int,
                 budget: int, occupied_fn=None, stratified: bool = False) -> Samples:
    """Exactly the occupied samples (``sample_uniform_along_rays``): all valid, every ray complete; ``budget`` is
    ignored. Shapes depend on the data (host syncs on GPUs)."""
    t0, t1, ray_idx = sample_uniform_along_rays(origins, dirs, near, far, step_size, max_steps, occupied_fn,
                                                stratified)
    n = int(t0.shape[0])
    return Samples(t0, t1, ray_idx, torch.ones_like(ray_idx, dtype=torch.bool),
                   torch.ones(origins.shape[0], dtype=torch.bool, device=origins.device), n, n)


def march_static(origins: Tensor, dirs: Tensor, near: Tensor, far: Tensor, step_size: float, max_steps: int,
                 budget: int, occupied_fn=None, stratified: bool = False) -> Samples:
    """The same samples compacted into ``budget`` slots (``sample_static``): shapes fixed by (R, budget), no sync."""
    s = sample_static(origins, dirs, near, far, step_size, max_steps, budget, occupied_fn, stratified)
    return Samples(s.t_starts, s.t_ends, s.ray_indices, s.valid, s.complete, s.n_valid.clamp_max(budget), s.n_valid)


MARCHERS: dict[str, Callable[..., Samples]] = {"packed": march_packed, "static": march_static}


class Rendered(NamedTuple):
    """Output of ``rendering`` for R rays and S samples."""

    rgb: Tensor  # (R, 3) composited over the background when one was given
    opacity: Tensor  # (R,) accumulated opacity
    depth: Tensor  # (R,) expected distance along the ray
    weights: Tensor  # (S,) rendering weights, 0 for invalid samples
    extras: dict[str, Tensor]  # what rgb_alpha_fn handed back, per sample, unchanged


def accumulate(weights: Tensor, ray_indices: Tensor, n_rays: int, values: Tensor | None = None) -> Tensor:
    """Weighted per-ray sum of ``values`` (S, D) -> (R, D) (or of the weights alone -> (R, 1)), dummy ray dropped."""
    return accumulate_along_rays(weights, ray_indices, n_rays + 1, values)[:n_rays]


def rendering(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, valid: Tensor, n_rays: int,
              rgb_alpha_fn: RgbAlphaFn, render_bkgd: Tensor | None = None,
              weights_fn: WeightsFn = render_weights_from_alpha) -> Rendered:
    """Volume rendering of packed samples.

    Args:
        t_starts, t_ends: (S,) segment bounds; ray_indices: (S,) long, sorted, R for padding; valid: (S,) bool.
        n_rays: R.
        rgb_alpha_fn: evaluates the samples: ``(t_starts, t_ends, ray_indices) -> (rgbs (S, 3), alphas (S,),
            extras)``; invalid samples may return anything finite: their alpha is forced to 0.
        render_bkgd: (R, 3) or (3,) colour filling what the samples leave transparent, or None (black).
        weights_fn: ``(alphas, ray_indices, n_rays) -> (weights, transmittance)`` (PyTorch scan or nerfacc's).
    Returns:
        Rendered: rgb (R, 3), opacity (R,), depth (R,), weights (S,), extras.
    """
    rgbs, alphas, extras = rgb_alpha_fn(t_starts, t_ends, ray_indices)
    alphas = torch.where(valid, alphas, 0.0)
    weights, _ = weights_fn(alphas, ray_indices, n_rays + 1)
    opacity = accumulate(weights, ray_indices, n_rays)[:, 0]
    rgb = accumulate(weights, ray_indices, n_rays, rgbs)
    depth = accumulate(weights, ray_indices, n_rays, (0.5 * (t_starts + t_ends))[:, None])[:, 0]
    if render_bkgd is not None:
        rgb = rgb + (1.0 - opacity[:, None]) * render_bkgd
    return Rendered(rgb, opacity, depth, weights, extras)
