"""Functional volume-rendering primitives on *packed* samples.

Samples of all rays are stored flat, sorted by ray: ``t_starts (S,)``, ``t_ends (S,)`` and ``ray_indices (S,)``
(long, non-decreasing). Rays with no samples simply do not appear. Every function here is differentiable where it
makes sense and works on CPU, CUDA and MPS.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ray_sphere_intersect(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """Entry and exit distances of rays through a sphere centred at the origin.

    Args:
        origins: (R, 3); dirs: (R, 3) unit directions; radius: sphere radius.
    Returns:
        near: (R,) clamped to >= 0; far: (R,); hit: (R,) bool, rays that cross the sphere in front of the origin.
    """
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius * radius
    disc = b * b - c
    sq = disc.clamp_min(0).sqrt()
    near = (-b - sq).clamp_min(0.0)
    far = -b + sq
    hit = (disc > 0) & (far > near)
    return near, far, hit


def exclusive_cumsum_per_ray(values: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Exclusive prefix sum of ``values`` within each ray's segment.

    Args:
        values: (S,) float; ray_indices: (S,) long, sorted; n_rays: number of rays R.
    Returns:
        (S,) where entry i is the sum of the earlier samples of the same ray.
    """
    if values.numel() == 0:
        return values
    if values.device.type == "mps":  # no float64 on MPS: scan a padded (R, max_count) layout instead
        return _exclusive_cumsum_padded(values, ray_indices, n_rays)
    # A global scan in float64 minus the scan at each segment's start; float64 keeps long scans exact enough.
    v64 = values.double()
    incl = torch.cumsum(v64, 0)
    excl = incl - v64
    first = segment_first_index(ray_indices, n_rays)  # (R,)
    return (excl - excl[first[ray_indices]]).to(values.dtype)


def _exclusive_cumsum_padded(values: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    first = segment_first_index(ray_indices, n_rays)
    pos = torch.arange(values.numel(), device=values.device) - first[ray_indices]
    width = int(pos.max().item()) + 1
    dense = values.new_zeros(n_rays, width)
    dense = dense.index_put((ray_indices, pos), values)
    scan = torch.cumsum(dense, 1) - dense
    return scan[ray_indices, pos]


def segment_first_index(ray_indices: Tensor, n_rays: int) -> Tensor:
    """Index of the first sample of each ray (rays without samples get a harmless 0). (S,) -> (R,)."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    return torch.cumsum(counts, 0) - counts


def render_weights_from_alpha(alphas: Tensor, ray_indices: Tensor, n_rays: int) -> tuple[Tensor, Tensor]:
    """Volume-rendering weights ``w_i = alpha_i * prod_{j<i} (1 - alpha_j)``.

    Args:
        alphas: (S,) in [0, 1]; ray_indices: (S,) sorted; n_rays: R.
    Returns:
        weights: (S,); transmittance: (S,) light reaching each sample.
    """
    log_trans = exclusive_cumsum_per_ray(torch.log(torch.clamp(1.0 - alphas, min=1e-10)), ray_indices, n_rays)
    trans = torch.exp(log_trans)
    return alphas * trans, trans


def render_weights_from_density(
    density: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, n_rays: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Weights from densities: ``alpha = 1 - exp(-sigma * delta)``. All inputs (S,). Returns weights, trans, alphas."""
    alphas = 1.0 - torch.exp(-density * (t_ends - t_starts))
    weights, trans = render_weights_from_alpha(alphas, ray_indices, n_rays)
    return weights, trans, alphas


def accumulate_along_rays(weights: Tensor, ray_indices: Tensor, n_rays: int, values: Tensor | None = None) -> Tensor:
    """Weighted sum per ray.

    Args:
        weights: (S,); ray_indices: (S,); n_rays: R; values: (S, D) or None (then sums the weights).
    Returns:
        (R, D), or (R, 1) when ``values`` is None.
    """
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


def neus_alpha(sdf: Tensor, normals: Tensor, dirs: Tensor, dists: Tensor, inv_s: Tensor, cos_anneal_ratio: float
               ) -> Tensor:
    """Opacity of a ray segment from the SDF at its midpoint (NeuS, Wang et al. 2021, eq. 13).

    The SDF at the segment's ends is estimated from the midpoint value and the (annealed) cosine between the ray
    and the normal; alpha is the relative drop of the logistic CDF across the segment.

    Args:
        sdf: (S,); normals: (S, 3) unit; dirs: (S, 3) unit ray directions; dists: (S,) segment lengths;
        inv_s: scalar tensor, the sharpness 1/s; cos_anneal_ratio: 0 at the start of training -> 1.
    Returns:
        alpha: (S,) in [0, 1].
    """
    true_cos = (dirs * normals).sum(-1)
    # Early in training the cosine is relaxed towards -1/2 (1 - ratio) so that back faces still receive gradient.
    ratio = cos_anneal_ratio
    iter_cos = -(torch.relu(-true_cos * 0.5 + 0.5) * (1.0 - ratio) + torch.relu(-true_cos) * ratio)
    half = iter_cos * dists * 0.5
    prev_cdf = torch.sigmoid((sdf - half) * inv_s)
    next_cdf = torch.sigmoid((sdf + half) * inv_s)
    return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)


def sample_uniform_along_rays(
    origins: Tensor,
    dirs: Tensor,
    near: Tensor,
    far: Tensor,
    step_size: float,
    max_samples: int,
    occupied_fn=None,
    stratified: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Marches rays with a fixed step between ``near`` and ``far``, keeping samples in occupied space.

    Args:
        origins, dirs: (R, 3); near, far: (R,) (rays with far <= near get no samples);
        step_size: distance between samples; max_samples: cap on candidates per ray;
        occupied_fn: maps (M, 3) points to (M,) bool, or None to keep everything;
        stratified: jitter the first sample of each ray by a random fraction of a step.
    Returns:
        t_starts (S,), t_ends (S,), ray_indices (S,) long, sorted by ray.
    """
    n_rays = origins.shape[0]
    n_steps = min(max_samples, max(1, int(torch.ceil((far - near).max() / step_size).item()) if n_rays else 1))
    offset = torch.rand(n_rays, 1, device=origins.device) if stratified else torch.full((n_rays, 1), 0.5,
                                                                                        device=origins.device)
    k = torch.arange(n_steps, device=origins.device, dtype=origins.dtype)[None, :]
    t_mid = near[:, None] + (k + offset) * step_size  # (R, K)
    valid = t_mid < far[:, None]
    if occupied_fn is not None:
        ray_i, step_i = valid.nonzero(as_tuple=True)
        tm = t_mid[ray_i, step_i]
        pts = origins[ray_i] + dirs[ray_i] * tm[:, None]
        keep = occupied_fn(pts)
        ray_i, tm = ray_i[keep], tm[keep]
    else:
        ray_i, step_i = valid.nonzero(as_tuple=True)
        tm = t_mid[ray_i, step_i]
    half = 0.5 * step_size
    return tm - half, tm + half, ray_i
