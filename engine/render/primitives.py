"""Functional volume-rendering primitives on *packed* samples.

Samples of all rays are stored flat, sorted by ray: ``t_starts (S,)``, ``t_ends (S,)`` and ``ray_indices (S,)``
(long, non-decreasing). Rays with no samples simply do not appear. Every function here is differentiable where it
makes sense and works on CPU, CUDA and MPS.

``sample_static`` produces the same layout in buffers of a fixed size: the unused tail points at a dummy ray ``R``
(pass ``n_rays = R + 1`` to the scans and accumulations, then drop the last row).
"""

from __future__ import annotations

from typing import NamedTuple

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
    """Index of the first sample of each ray (rays without samples get the next ray's start). (S,) -> (R,).

    A binary search on the sorted indices: unlike ``bincount`` (whose output size depends on the data, so CUDA
    reads the maximum back to the host) its shape is known up front, so it neither syncs nor breaks a compiled graph.
    """
    return torch.searchsorted(ray_indices, torch.arange(n_rays, device=ray_indices.device, dtype=ray_indices.dtype))


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


def neus_alpha(sdf: Tensor, normals: Tensor, dirs: Tensor, dists: Tensor, inv_s: Tensor,
               cos_anneal_ratio: float | Tensor) -> Tensor:
    """Opacity of a ray segment from the SDF at its midpoint (NeuS, Wang et al. 2021, eq. 13).

    The SDF at the segment's ends is estimated from the midpoint value and the (annealed) cosine between the ray
    and the normal; alpha is the relative drop of the logistic CDF across the segment.

    Args:
        sdf: (S,); normals: (S, 3) unit; dirs: (S, 3) unit ray directions; dists: (S,) segment lengths;
        inv_s: scalar tensor, the sharpness 1/s; cos_anneal_ratio: 0 at the start of training -> 1 (a number or
            a 0-d tensor).
    Returns:
        alpha: (S,) in [0, 1].
    """
    true_cos = (dirs * normals).sum(-1)
    # Early in training the cosine is relaxed towards -1/2 (1 - ratio) so that back faces still receive gradient.
    ratio = cos_anneal_ratio
    iter_cos = -(torch.relu(-true_cos * 0.5 + 0.5) * (1.0 - ratio) + torch.relu(-true_cos) * ratio)
    return neus_alpha_from_cos(sdf, iter_cos, dists, inv_s)


def neus_alpha_from_cos(sdf: Tensor, cos: Tensor | float, dists: Tensor | float, inv_s: Tensor | float) -> Tensor:
    """NeuS opacity of segments of length ``dists`` centred where the SDF is ``sdf``, crossed at cosine ``cos``
    to the normal (-1: head-on, as the occupancy grid assumes). Tensors broadcast to (S,); returns (S,) in [0, 1].
    """
    half = cos * dists * 0.5
    prev_cdf = torch.sigmoid((sdf - half) * inv_s)
    next_cdf = torch.sigmoid((sdf + half) * inv_s)
    return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)


def _candidates(near: Tensor, far: Tensor, step_size: float, n_steps: int, stratified: bool
                ) -> tuple[Tensor, Tensor]:
    """Candidate midpoints ``near + (k + offset) * step`` for k < n_steps: t_mid (R, K), inside [near, far) (R, K).

    The offset is 1/2, or with ``stratified`` one uniform draw per ray."""
    n_rays, dev = near.shape[0], near.device
    offset = torch.rand(n_rays, 1, device=dev) if stratified else torch.full((n_rays, 1), 0.5, device=dev)
    k = torch.arange(n_steps, device=dev, dtype=near.dtype)[None, :]
    t_mid = near[:, None] + (k + offset) * step_size
    return t_mid, t_mid < far[:, None]


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
    t_mid, valid = _candidates(near, far, step_size, n_steps, stratified)
    ray_i, step_i = valid.nonzero(as_tuple=True)
    tm = t_mid[ray_i, step_i]
    if occupied_fn is not None:
        keep = occupied_fn(origins[ray_i] + dirs[ray_i] * tm[:, None])
        ray_i, tm = ray_i[keep], tm[keep]
    half = 0.5 * step_size
    return tm - half, tm + half, ray_i


class StaticSamples(NamedTuple):
    """Output of ``sample_static`` for R rays and a budget of S samples."""

    t_starts: Tensor  # (S,) float; 0 in the padding
    t_ends: Tensor  # (S,) float; 0 in the padding (zero-length segments)
    ray_indices: Tensor  # (S,) long, non-decreasing; R (a dummy ray) in the padding
    valid: Tensor  # (S,) bool, False in the padding; the valid entries come first
    complete: Tensor  # (R,) bool: every candidate of this ray and of all earlier rays fit in the budget
    n_valid: Tensor  # () long: valid candidates before truncation (may exceed S)


def sample_static(
    origins: Tensor,
    dirs: Tensor,
    near: Tensor,
    far: Tensor,
    step_size: float,
    n_steps: int,
    budget: int,
    occupied_fn=None,
    stratified: bool = False,
) -> StaticSamples:
    """``sample_uniform_along_rays`` with shapes fixed by (R, T, S) alone: no host sync, no data-dependent shape.

    Marches ``n_steps`` (T) candidates per ray, keeps those inside ``[near, far)`` and in occupied space, and
    compacts them, in ray order, into ``budget`` (S) slots with a prefix sum and a scatter. With the same random
    offsets and a budget that is not exceeded, the valid entries equal ``sample_uniform_along_rays``'s output.

    When more than S candidates are valid, the ones past the budget are dropped. ``complete`` then marks the prefix
    of rays whose samples all fit: the ray that was cut and every later ray (even one with no candidates) are
    incomplete. Keeping a prefix of the (randomly drawn) rays keeps the rays used by the losses an unbiased subset;
    excluding only the cut rays would over-represent empty rays after the cut.

    Args:
        origins, dirs: (R, 3); near, far: (R,) (rays with far <= near get no samples);
        step_size: distance between samples; n_steps: T, candidates per ray (a Python int known up front);
        budget: S, the output size; occupied_fn: maps (M, 3) points to (M,) bool, or None to keep everything;
        stratified: jitter the first sample of each ray by a random fraction of a step.
    Returns:
        StaticSamples (see there for the shapes).
    """
    n_rays, dev = origins.shape[0], origins.device
    # The same candidates as sample_uniform_along_rays, so the two agree sample for sample.
    t_mid, valid = _candidates(near, far, step_size, n_steps, stratified)
    if occupied_fn is not None:
        pts = origins[:, None, :] + dirs[:, None, :] * t_mid[..., None]
        valid = valid & occupied_fn(pts.reshape(-1, 3)).reshape(n_rays, n_steps)
    counts = valid.sum(1)  # (R,)
    complete = torch.cumsum(counts, 0) <= budget
    flat = valid.reshape(-1)  # ray-major, so the compacted samples stay sorted by ray
    pos = torch.cumsum(flat, 0) - 1  # destination slot of each valid candidate
    n_valid = counts.sum()
    # Invalid and over-budget candidates all land in a scratch slot S that is cut off afterwards.
    dest = torch.where(flat & (pos < budget), pos, budget)
    ray_of = torch.arange(n_rays, device=dev)[:, None].expand(n_rays, n_steps).reshape(-1)
    t_buf = t_mid.new_zeros(budget + 1).scatter_(0, dest, t_mid.reshape(-1))[:budget]
    ray_buf = torch.full((budget + 1,), n_rays, dtype=torch.long, device=dev).scatter_(0, dest, ray_of)[:budget]
    slot_valid = torch.arange(budget, device=dev) < n_valid
    half = 0.5 * step_size
    zero = t_buf.new_zeros(())
    t_starts = torch.where(slot_valid, t_buf - half, zero)
    t_ends = torch.where(slot_valid, t_buf + half, zero)
    return StaticSamples(t_starts, t_ends, ray_buf, slot_valid, complete, n_valid)
