"""Per-point colours for export: from the learned radiance field, or projected from the training photos.

Both functions take numpy arrays or tensors and return numpy float32 RGB in [0, 1]; the heavy parts (network
queries, SDF ray marching for occlusion, image sampling) run in torch on ``device``, chunked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from datasets.images import mask_is_foreground

ColorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SdfFn = Callable[[torch.Tensor], torch.Tensor]
# A colour source for texture baking: (P, 3) points, (P, 3) unit normals (numpy float32) -> (P, 3) RGB.
ColorSource = Callable[[np.ndarray, np.ndarray], np.ndarray]

GREY = (0.5, 0.5, 0.5)


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
    return np.clip(np.nan_to_num(out, nan=0.5), 0.0, 1.0)


def _bilinear(image: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Samples (H, W, C) at pixel coords (u = column, v = row; integers are pixel centres) -> (M, C)."""
    h, w = image.shape[:2]
    u = u.clamp(0, w - 1)
    v = v.clamp(0, h - 1)
    # Truncation is floor for these non-negative coordinates (and, unlike floor, fast on multi-threaded CPU).
    u0 = u.long().clamp(max=max(w - 2, 0))
    v0 = v.long().clamp(max=max(h - 2, 0))
    u1 = (u0 + 1).clamp(max=w - 1)
    v1 = (v0 + 1).clamp(max=h - 1)
    fu = (u - u0.to(u.dtype))[:, None]
    fv = (v - v0.to(v.dtype))[:, None]
    flat = image.reshape(h * w, -1)
    top = flat[v0 * w + u0] * (1 - fu) + flat[v0 * w + u1] * fu
    bot = flat[v1 * w + u0] * (1 - fu) + flat[v1 * w + u1] * fu
    return top * (1 - fv) + bot * fv


def _image_tensor(image: Any, device: torch.device) -> torch.Tensor:
    t = image if torch.is_tensor(image) else torch.from_numpy(np.ascontiguousarray(image))
    t = t.to(device)
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    return t.float()


@torch.no_grad()
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


def vertex_colors_from_photos(
    vertices: Any,
    normals: Any,
    K: Any,
    c2w: Any,
    images: Any,
    sdf_fn: SdfFn | None = None,
    masks: Any = None,
    fallback: ColorFn | np.ndarray | tuple[float, float, float] | None = None,
    min_cos: float = 0.2,
    max_views: int | None = 8,
    cos_power: float = 1.0,
    occlusion_offset: float = 1e-2,
    bound_radius: float = 1.0,
    chunk: int = 2**15,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Colours each point from the training photos that see it, weighted by the cosine of the viewing angle.

    A camera contributes to a point when the point is in front of it and inside the image, faces it
    (``normal . view_dir > min_cos``), lies on the foreground mask (if masks are given), and, when ``sdf_fn``
    is given, the segment from the point (offset by ``occlusion_offset`` along the normal) to the camera
    centre never enters the surface. Of the eligible cameras the ``max_views`` best-facing ones are used.

    Args:
        vertices: (P, 3) points in the cameras' (normalized) frame; normals: (P, 3) unit outward normals.
        K: (N, 3, 3) intrinsics; c2w: (N, 3, 4) camera-to-world, OpenGL axes (see datasets/geometry.py).
        images: (N, H, W, 3) float in [0, 1] or uint8 (numpy or torch; each moved to ``device`` once).
        sdf_fn: (M, 3) -> (M,) SDF for the occlusion test; None skips it (every facing camera counts).
        masks: (N, H, W) foreground masks (bool, uint8 or float), or None.
        fallback: colour of points no camera sees: a ``color_fn`` (as in :func:`vertex_colors_from_field`),
            a (P, 3) array, an RGB triple, or None for mid grey.
        min_cos: minimum cosine between normal and direction to the camera.
        max_views: cameras used per point (the best-facing eligible ones); None uses all.
        cos_power: weight = cos ** cos_power.
        occlusion_offset: start of the occlusion ray above the surface, normalized units.
        bound_radius: radius of the sphere where the SDF is trusted (occlusion marching stops at it).
        chunk: points per projection / marching batch.
        device: torch device for marching and sampling.
    Returns:
        colours (P, 3) float32 in [0, 1], and n_views (P,) int64: cameras that contributed to each point.
    """
    from datasets.geometry import project_points

    device = torch.device(device)
    v = _np32(vertices, "vertices")
    nrm = _np32(normals, "normals")
    K = np.asarray(K.cpu() if torch.is_tensor(K) else K, dtype=np.float64).reshape(-1, 3, 3)
    c2w = np.asarray(c2w.cpu() if torch.is_tensor(c2w) else c2w, dtype=np.float64).reshape(-1, 3, 4)
    n_cams = len(K)
    if len(c2w) != n_cams or len(images) != n_cams or (masks is not None and len(masks) != n_cams):
        raise ValueError(
            f"got {n_cams} intrinsics, {len(c2w)} poses, {len(images)} images"
            + ("" if masks is None else f", {len(masks)} masks")
        )
    if torch.is_tensor(masks):
        masks = masks.cpu().numpy()
    hw = np.array([[images[n].shape[0], images[n].shape[1]] for n in range(n_cams)], dtype=np.int64)
    h, w = hw[:, 0:1], hw[:, 1:2]  # (N, 1): cameras may differ in size
    centres = c2w[:, :, 3]
    k = n_cams if max_views is None else max(1, min(max_views, n_cams))

    # Pass 1 (per point chunk): eligible (point, camera) pairs with their pixel and weight.
    pair_pt, pair_cam, pair_uv, pair_w = [], [], [], []
    for s in range(0, len(v), chunk):
        pts = v[s : s + chunk].astype(np.float64)
        uv, depth = project_points(K, c2w, pts)  # (N, P, 2), (N, P)
        to_cam = centres[:, None, :] - pts[None]
        cos = np.einsum("npc,pc->np", to_cam, nrm[s : s + chunk]) / np.maximum(
            np.linalg.norm(to_cam, axis=-1), 1e-12
        )
        ok = (depth > 0) & (cos > min_cos)
        ok &= (uv[..., 0] >= -0.5) & (uv[..., 0] <= w - 0.5) & (uv[..., 1] >= -0.5) & (uv[..., 1] <= h - 0.5)
        if masks is not None:
            for n in range(n_cams):
                idx = np.nonzero(ok[n])[0]
                col = np.clip(np.round(uv[n, idx, 0]).astype(np.int64), 0, w[n, 0] - 1)
                row = np.clip(np.round(uv[n, idx, 1]).astype(np.int64), 0, h[n, 0] - 1)
                ok[n, idx] = mask_is_foreground(np.asarray(masks[n])[row, col])
        score = np.where(ok, cos, -np.inf)  # (N, P)
        if k < n_cams:
            cams = np.argpartition(-score, k - 1, axis=0)[:k]  # (k, P) best-facing cameras
        else:
            cams = np.broadcast_to(np.arange(n_cams)[:, None], score.shape)
        cols = np.broadcast_to(np.arange(score.shape[1])[None], cams.shape)
        sel = np.isfinite(score[cams, cols])
        c_sel, p_sel = cams[sel], cols[sel]
        pair_pt.append(p_sel + s)
        pair_cam.append(c_sel)
        pair_uv.append(uv[c_sel, p_sel].astype(np.float32))
        pair_w.append((cos[c_sel, p_sel] ** cos_power).astype(np.float32))
    p_idx = np.concatenate(pair_pt) if pair_pt else np.zeros(0, np.int64)
    c_idx = np.concatenate(pair_cam) if pair_cam else np.zeros(0, np.int64)
    uvs = np.concatenate(pair_uv) if pair_uv else np.zeros((0, 2), np.float32)
    wts = np.concatenate(pair_w) if pair_w else np.zeros(0, np.float32)

    # Pass 2: drop pairs whose line of sight enters the surface.
    if sdf_fn is not None and len(p_idx):
        keep = np.ones(len(p_idx), dtype=bool)
        for s in range(0, len(p_idx), chunk):
            pi, ci = p_idx[s : s + chunk], c_idx[s : s + chunk]
            start = torch.from_numpy(v[pi] + occlusion_offset * nrm[pi]).to(device)
            end = torch.from_numpy(centres[ci].astype(np.float32)).to(device)
            keep[s : s + chunk] = ~segment_occluded(sdf_fn, start, end, bound_radius).cpu().numpy()
        p_idx, c_idx, uvs, wts = p_idx[keep], c_idx[keep], uvs[keep], wts[keep]

    # Pass 3 (per camera, image moved once): weighted sum of bilinear samples.
    acc = torch.zeros((len(v), 3), dtype=torch.float32, device=device)
    wsum = torch.zeros(len(v), dtype=torch.float32, device=device)
    count = np.bincount(p_idx, minlength=len(v)).astype(np.int64)
    for n in np.unique(c_idx):
        sel = np.nonzero(c_idx == n)[0]
        img = _image_tensor(images[int(n)], device)[..., :3]
        uv_t = torch.from_numpy(uvs[sel]).to(device)
        rgb = _bilinear(img, uv_t[:, 0], uv_t[:, 1])
        pi = torch.from_numpy(p_idx[sel]).to(device)
        wt = torch.from_numpy(wts[sel]).to(device)
        acc.index_add_(0, pi, rgb * wt[:, None])
        wsum.index_add_(0, pi, wt)
    seen = (wsum > 0).cpu().numpy()
    colors = (acc / wsum.clamp_min(1e-12)[:, None]).cpu().numpy().astype(np.float32)
    if not seen.all():
        colors[~seen] = _fallback_colors(fallback, v[~seen], nrm[~seen], ~seen, chunk, device)
    count[~seen] = 0
    return np.clip(colors, 0.0, 1.0), count


def _fallback_colors(
    fallback: Any, pts: np.ndarray, nrm: np.ndarray, unseen: np.ndarray, chunk: int, device: torch.device
) -> np.ndarray:
    if fallback is None:
        return np.broadcast_to(np.asarray(GREY, np.float32), pts.shape)
    if callable(fallback):
        return vertex_colors_from_field(pts, nrm, fallback, chunk, device) if len(pts) else pts
    arr = np.asarray(fallback, dtype=np.float32)
    if arr.shape == (3,):
        return np.broadcast_to(arr, pts.shape)
    if arr.ndim == 2 and arr.shape[1] == 3 and len(arr) == len(unseen):
        return arr[unseen]
    raise ValueError(f"fallback must be a color_fn, an RGB triple or a (P, 3) array, got shape {arr.shape}")


def field_color_source(
    color_fn: ColorFn, chunk: int = 2**16, device: str | torch.device = "cpu"
) -> ColorSource:
    """A numpy colour source (for :func:`engine.mesh.texture.bake_texture`) from the radiance field."""

    def source(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        return vertex_colors_from_field(points, normals, color_fn, chunk, device)

    return source


def photo_color_source(K: Any, c2w: Any, images: Any, **kwargs: Any) -> ColorSource:
    """A numpy colour source projecting the photos (keywords as in :func:`vertex_colors_from_photos`)."""

    def source(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        return vertex_colors_from_photos(points, normals, K, c2w, images, **kwargs)[0]

    return source


__all__ = [
    "ColorFn",
    "ColorSource",
    "field_color_source",
    "photo_color_source",
    "segment_occluded",
    "vertex_colors_from_field",
    "vertex_colors_from_photos",
]
