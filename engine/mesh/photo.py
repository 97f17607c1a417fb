"""Photo colours for a mesh the way texture-mapping tools do it: depth-map visibility, best-view blending,
colour levelling between views, and the field's colour where no photo sees the surface.

1. Each camera gets a depth map of the mesh from :mod:`.raster` (one z-buffer pass instead of marching the SDF
   for every point and camera pair), and a *feather* map: the distance in pixels to the nearest mask edge,
   depth discontinuity or image border, so a view fades out smoothly where its coverage ends (no hard seams).
2. A point takes a camera when it lies in front of it, inside the eroded foreground mask, on the visible
   surface (its depth matches the depth map within a pixel's footprint), and faces it (``cos > min_cos``,
   which drops grazing views).
3. Views are blended with ``weight = (cos * resolution * sharpness) ** power * feather``: ``resolution`` is
   the view's pixels per unit length at the point (near views win), ``sharpness`` the image's Laplacian
   energy inside the mask relative to the sharpest image. A high ``power`` lets the best views dominate (sharp)
   while the feather keeps transitions continuous. The default power is low (1): a diffuse texture is seen from
   every direction, and on a real capture with view-dependent shading (DTU) a near-average of the views matches
   unseen views best, while a synthetic scene loses nothing (engine/BENCHMARKS.md).
4. Points no view passes those rules for get a relaxed pass (grazing views, the un-eroded mask); what is still
   unseen takes the field's colour, mapped onto the photos' colours by a per-channel affine fit.
5. Optional colour levelling (off by default: on DTU it cost 0.3 dB, as the gains soak up real view-dependent
   shading): a gain per view and channel (least squares against the blend on a subsample of points, normalized
   to a geometric mean of 1) for captures whose exposure varies between photos.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datasets.geometry import scale_intrinsics

from ..liveness import tick
from .raster import outward_faces, project, rasterize_view

ColorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PhotoOptions:
    """Controls of the photo blend."""

    min_cos: float = 0.25
    """Smallest cosine between the surface normal and the direction to a camera (grazing views are dropped)."""
    power: float = 1.0
    """Exponent on the view quality: higher lets the best view dominate (sharper, more seam-prone, and further
    from how other directions see the surface); 0 is a plain feathered average."""
    feather_px: float = 6.0
    """Width in pixels of the fade at a view's mask edges, depth discontinuities and image border."""
    erode_px: int = 1
    """Mask erosion in pixels (drops the anti-aliased silhouette, which mixes in background colour)."""
    depth_tol_px: float = 2.0
    """Visibility tolerance in pixel footprints (``depth / focal / cos``) plus ``depth_tol``."""
    depth_tol: float = 2e-3
    """Absolute visibility tolerance (normalized units)."""
    level_colors: bool = False
    """Estimate a per-view, per-channel gain so that views agree (colour levelling; for photos whose exposure
    varies)."""
    level_samples: int = 50_000
    """Points used to estimate the gains."""
    relaxed_fill: bool = True
    """Points no view passes the rules above for get a second, relaxed pass (views down to ``relaxed_min_cos``,
    the un-eroded mask, no feather) before the field's colour is used."""
    relaxed_min_cos: float = 0.05
    """Smallest cosine of the relaxed pass."""
    level_fallback: bool = True
    """Map the fallback (field) colours onto the photos' with a per-channel affine fit on points both colour, so
    surfaces no photo sees match their surroundings' exposure and white balance."""


VISIBILITY_MAX_PIXELS = 2_000_000
"""Depth, feather and coverage maps of a larger photo are made at an integer fraction of its size (a 12 MP photo's
at 1/3): the rasteriser's time grows with the pixels (5 s a view at 1551x2096 on 2 cores, shared), visibility needs
no finer map, and colours are still sampled from the full photo. DTU's 1600x1200 keeps full-size maps."""


@dataclass
class _View:
    K: torch.Tensor  # (3, 3) of the photo
    c2w: torch.Tensor  # (3, 4)
    image: torch.Tensor  # (H, W, 3) uint8 (the scene's own pixels on the CPU) or float in [0, 1]
    scale: int  # photo pixels per map pixel (each way)
    map_K: torch.Tensor  # (3, 3) of the maps (K when scale is 1)
    depth: torch.Tensor  # (h, w) visible depth (inf empty), h = H // scale
    feather: torch.Tensor  # (h, w) in [0, 1], 0 outside usable pixels
    loose: torch.Tensor  # (h, w) bool: every foreground pixel the mesh covers (relaxed pass)
    sharpness: float
    gain: torch.Tensor  # (3,)


def map_scale(height: int, width: int) -> int:
    """The smallest integer factor that brings a ``height x width`` photo's maps within VISIBILITY_MAX_PIXELS."""
    s = 1
    while (height // s) * (width // s) > VISIBILITY_MAX_PIXELS:
        s += 1
    return s


def _block_pool(mask: torch.Tensor, s: int, every: bool) -> torch.Tensor:
    """(H, W) bool -> (H // s, W // s): a block is set when every (``every``) or any of its pixels is."""
    if s == 1:
        return mask
    h, w = mask.shape[0] // s, mask.shape[1] // s
    x = mask[: h * s, : w * s].float()[None, None]
    pooled = -F.max_pool2d(-x, s) if every else F.max_pool2d(x, s)
    return pooled[0, 0] > 0.5


def _as_image(x: Any, device: torch.device) -> torch.Tensor:
    t = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
    t = t[..., :3].to(device)
    return t if t.dtype == torch.uint8 else t.float()  # uint8 stays uint8: only sampled pixels become float


def _unit_float(t: torch.Tensor) -> torch.Tensor:
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


def _as_mask(x: Any, device: torch.device) -> torch.Tensor:
    t = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
    t = t.to(device)
    if t.ndim == 3:
        t = t.amax(dim=-1)
    if t.dtype == torch.bool:
        return t
    return t > (127 if t.dtype == torch.uint8 else 0.5)


def _feather(usable: torch.Tensor, width: float) -> torch.Tensor:
    """(H, W) bool -> (H, W) float: distance to the nearest unusable pixel or the border, / width, clipped at 1."""
    from scipy.ndimage import distance_transform_edt

    pad = np.pad(usable.cpu().numpy(), 1, constant_values=False)
    dist = distance_transform_edt(pad)[1:-1, 1:-1]
    return torch.from_numpy(np.clip(dist / max(width, 1e-6), 0.0, 1.0).astype(np.float32)).to(usable.device)


def _sharpness(image: torch.Tensor, usable: torch.Tensor) -> float:
    """Mean squared Laplacian of the grey image over usable pixels (a focus / motion-blur measure)."""
    grey = _unit_float(image).mean(dim=-1)[None, None]
    lap = F.conv2d(grey, grey.new_tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]])[None, None], padding=1)[0, 0]
    sel = usable & torch.isfinite(lap)
    return float((lap[sel] ** 2).mean()) if bool(sel.any()) else 0.0


def _depth_edges(depth: torch.Tensor, K: torch.Tensor, tol_px: float) -> torch.Tensor:
    """(H, W) bool: pixels next to a depth jump larger than a few pixel footprints (occlusion boundaries)."""
    finite = torch.isfinite(depth)
    d = torch.where(finite, depth, torch.zeros_like(depth))
    hi = F.max_pool2d(d[None, None], 3, 1, 1)[0, 0]
    lo = -F.max_pool2d(torch.where(finite, -depth, torch.full_like(depth, -1e30))[None, None], 3, 1, 1)[0, 0]
    footprint = d / float(K[0, 0])
    return finite & (hi - lo > 4.0 * tol_px * footprint + 1e-3)


def spread_views(centres: Any, count: int) -> np.ndarray:
    """Indices (sorted) of ``count`` cameras spread evenly over the directions they see the object from.

    Farthest-point sampling of the unit vectors from the origin (the object's centre in the normalized frame) to
    the camera centres: first the camera nearest the mean direction, then each time the camera at the largest
    angle from every camera chosen so far. A cluster of near-identical views (a pause in a video, repeated
    photos) yields one view, and every direction the capture covers keeps one.

    Args:
        centres: (N, 3) camera centres; count: how many to keep (all when ``count >= N``).
    """
    d = np.asarray(centres, np.float64).reshape(-1, 3)
    n = len(d)
    if count >= n:
        return np.arange(n)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    chosen = [int(np.argmax(d @ d.mean(0)))]
    nearest = d @ d[chosen[0]]  # per camera: cosine to the nearest chosen direction (inf once chosen)
    nearest[chosen[0]] = np.inf
    while len(chosen) < count:
        k = int(np.argmin(nearest))
        chosen.append(k)
        nearest = np.maximum(nearest, d @ d[k])
        nearest[k] = np.inf
    return np.sort(np.asarray(chosen))


def prepare_views(
    vertices: torch.Tensor, faces: torch.Tensor, K: Any, c2w: Any, images: Any, masks: Any = None,
    options: PhotoOptions | None = None, device: str | torch.device = "cpu",
) -> list[_View]:
    """Depth maps, feather maps and sharpness of every camera (the per-view work, done once); the maps of a photo
    over VISIBILITY_MAX_PIXELS at an integer fraction of its size (:func:`map_scale`).

    Args:
        vertices: (V, 3) mesh in the cameras' frame; faces: (F, 3).
        K: (N, 3, 3); c2w: (N, 3, 4) OpenGL axes; images: (N, H, W, 3) float [0, 1] or uint8;
        masks: (N, H, W) foreground masks or None.
    """
    opts = options or PhotoOptions()
    device = torch.device(device)
    v = torch.as_tensor(np.asarray(vertices, np.float32), device=device)
    f = torch.as_tensor(np.asarray(faces, np.int64), device=device)
    Ks = torch.as_tensor(np.asarray(K, np.float32).reshape(-1, 3, 3), device=device)
    c2ws = torch.as_tensor(np.asarray(c2w, np.float32).reshape(-1, 3, 4), device=device)
    f = outward_faces(v, f)  # only the faces turned to a camera can be its nearest surface: cull the others
    tick("colouring", 0, len(Ks), "views")  # the phase starts now: its first count is due one view later
    views = []
    for i in range(len(Ks)):
        img = _as_image(images[i], device)
        h, w = img.shape[:2]
        s = map_scale(h, w)
        map_K = Ks[i] if s == 1 else torch.as_tensor(scale_intrinsics(Ks[i].cpu().numpy(), s), dtype=torch.float32,
                                                     device=device)
        depth = rasterize_view(v, f, map_K, c2ws[i], h // s, w // s, cull_back=True).depth
        usable = torch.isfinite(depth) & ~_depth_edges(depth, map_K, opts.depth_tol_px)
        loose = torch.isfinite(depth)
        if masks is not None:
            fg = _as_mask(masks[i], device)
            loose &= _block_pool(fg, s, every=False)
            fg = _block_pool(fg, s, every=True)
            if opts.erode_px > 0:
                k = 2 * opts.erode_px + 1
                fg = -F.max_pool2d(-fg.float()[None, None], k, 1, opts.erode_px)[0, 0] > 0.5
            usable &= fg
        sharp_px = usable if s == 1 else F.pad(usable.repeat_interleave(s, 0).repeat_interleave(s, 1),
                                                (0, w - usable.shape[1] * s, 0, h - usable.shape[0] * s))
        views.append(_View(Ks[i], c2ws[i], img, s, map_K, depth, _feather(usable, opts.feather_px / s), loose,
                           _sharpness(img, sharp_px), torch.ones(3, device=device)))
        tick("colouring", i + 1, len(Ks), "views")  # progress and cancel (engine.liveness), a depth map each
    top = max((vw.sharpness for vw in views), default=0.0)
    for vw in views:
        vw.sharpness = vw.sharpness / top if top > 0 else 1.0
    return views


def _sample(image: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of (H, W, C) (uint8 -> [0, 1]) at pixel coords (M, 2) (integers = centres, clamped to the
    border) -> (M, C) float. Gathers the four neighbours, so a uint8 image is never converted whole."""
    h, w = image.shape[:2]
    x = xy[:, 0].clamp(0, w - 1)
    y = xy[:, 1].clamp(0, h - 1)
    x0, y0 = x.floor().long(), y.floor().long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = _unit_float(image[y0, x0]) * (1 - fx) + _unit_float(image[y0, x1]) * fx
    bottom = _unit_float(image[y1, x0]) * (1 - fx) + _unit_float(image[y1, x1]) * fx
    return top * (1 - fy) + bottom * fy


def _nearest(image: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    h, w = image.shape[:2]
    col = xy[:, 0].round().long().clamp(0, w - 1)
    row = xy[:, 1].round().long().clamp(0, h - 1)
    return image[row, col]


def depth_visible(depth: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, points: torch.Tensor, cos: torch.Tensor,
                  opts: PhotoOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Depth-map visibility of surface points in one camera.

    Args:
        depth: (H, W) depth map of the mesh the points lie on; K: (3, 3); c2w: (3, 4);
        points: (M, 3); cos: (M,) cosine between each point's normal and its direction to the camera.
    Returns:
        visible (M,) bool (in front, inside the image, and not behind the depth map by more than a pixel's
        footprint ``depth / focal / cos`` times ``depth_tol_px`` plus ``depth_tol``), pixel xy (M, 2), depth z (M,).
    """
    xy, z = project(points, K, c2w)
    h, w = depth.shape
    inside = (z > 0) & (xy[:, 0] >= -0.5) & (xy[:, 0] <= w - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= h - 0.5)
    tol = opts.depth_tol + opts.depth_tol_px * z.abs() / float(K[0, 0]) / cos.clamp_min(1e-3)
    return inside & (z <= _nearest(depth, xy) + tol), xy, z


def _view_samples(view: _View, pts: torch.Tensor, nrm: torch.Tensor, opts: PhotoOptions, relaxed: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which points this view sees: idx (M,), rgb (M, 3) (gain applied), quality (M,), feather (M,) in (0, 1].

    ``relaxed``: the fill pass for points no view sees under the normal rules (``relaxed_min_cos``, the
    un-eroded mask, no feather).
    """
    centre = view.c2w[:, 3]
    to_cam = centre - pts
    dist = to_cam.norm(dim=1).clamp_min(1e-9)
    cos = (to_cam * nrm).sum(dim=1) / dist
    idx = torch.nonzero(cos > (opts.relaxed_min_cos if relaxed else opts.min_cos)).squeeze(1)
    visible, xy, z = depth_visible(view.depth, view.map_K, view.c2w, pts[idx], cos[idx], opts)
    idx, xy, c, footprint = idx[visible], xy[visible], cos[idx][visible], z[visible] / float(view.K[0, 0])
    if relaxed:
        feather = _nearest(view.loose[..., None], xy)[:, 0].float()
    else:
        feather = _sample(view.feather[..., None], xy)[:, 0]
    keep = feather > 0
    idx, xy, c, footprint, feather = idx[keep], xy[keep], c[keep], footprint[keep], feather[keep]
    quality = c * view.sharpness / footprint  # pixels per unit length across the surface, times focus
    photo_xy = xy if view.scale == 1 else (xy + 0.5) * view.scale - 0.5  # map pixel -> photo pixel (centres)
    rgb = _sample(view.image, photo_xy) * view.gain
    return idx, rgb, quality, feather


def blend_views(views: list[_View], points: torch.Tensor, normals: torch.Tensor, opts: PhotoOptions,
                relaxed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Blends every view's colour at the points.

    Args:
        views: from :func:`prepare_views`; points, normals: (P, 3) tensors on the views' device.
        relaxed: use the relaxed fill rules (see :func:`_view_samples`).
    Returns:
        rgb (P, 3) (0 where unseen) and weight sum (P,) (0 where no view sees the point).
    """
    samples = [_view_samples(vw, points, normals, opts, relaxed) for vw in views]
    # Quality is relative to the best view of each point, so the power sharpens the choice, not the scale.
    best = torch.zeros(len(points), device=points.device)
    for idx, _, q, _ in samples:
        best.scatter_reduce_(0, idx, q, reduce="amax")
    acc = torch.zeros((len(points), 3), device=points.device)
    wsum = torch.zeros(len(points), device=points.device)
    for idx, rgb, q, feather in samples:
        wt = (q / best[idx].clamp_min(1e-12)) ** opts.power * feather
        acc.index_add_(0, idx, rgb * wt[:, None])
        wsum.index_add_(0, idx, wt)
    return acc / wsum.clamp_min(1e-12)[:, None], wsum


def level_views(views: list[_View], points: torch.Tensor, normals: torch.Tensor, opts: PhotoOptions,
                iterations: int = 2) -> None:
    """Sets each view's per-channel gain so its colours match the blend in least squares (geometric mean 1)."""
    for _ in range(iterations):
        blend, wsum = blend_views(views, points, normals, opts)
        gains = []
        for vw in views:
            idx, rgb, _, feather = _view_samples(vw, points, normals, opts)
            seen = wsum[idx] > 0
            target, mine, wt = blend[idx][seen], rgb[seen] / vw.gain, feather[seen][:, None]
            if len(target) < 100:
                gains.append(vw.gain)
                continue
            g = (wt * target * mine).sum(0) / (wt * mine * mine).sum(0).clamp_min(1e-12)
            gains.append(g.clamp(0.5, 2.0))
        log_mean = torch.stack(gains).clamp_min(1e-6).log().mean(0)
        for vw, g in zip(views, gains, strict=True):
            vw.gain = g / log_mean.exp()


def fit_fallback_levels(views: list[_View], points: torch.Tensor, normals: torch.Tensor, fallback: ColorFn,
                        opts: PhotoOptions) -> ColorFn:
    """The fallback mapped onto the photos' colours: ``scale * fallback + offset`` per channel, least squares on
    the points that both colour (a field learned under other lighting or exposure would otherwise show as
    differently coloured patches where no photo sees the surface).

    Args:
        points, normals: (P, 3) tensors on the views' device (a sample of the surface).
    """
    blend, wsum = blend_views(views, points, normals, opts)
    seen = torch.nonzero(wsum > 0).squeeze(1)
    if len(seen) < 100:
        return fallback
    x = fallback(points[seen], normals[seen]).reshape(-1, 3).float()
    y = blend[seen]
    mx, my = x.mean(0), y.mean(0)
    scale = (((x - mx) * (y - my)).mean(0) / ((x - mx) ** 2).mean(0).clamp_min(1e-8)).clamp(0.0, 4.0)
    offset = my - scale * mx

    def levelled(p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return fallback(p, n).reshape(-1, 3).float() * scale + offset

    return levelled


@torch.no_grad()
def photo_colors(
    views: list[_View], points: Any, normals: Any, fallback: ColorFn | None = None,
    options: PhotoOptions | None = None, chunk: int = 1 << 19,
) -> tuple[np.ndarray, np.ndarray]:
    """Photo colours at surface points, the field's colour (or grey) where no photo sees them.

    Args:
        views: from :func:`prepare_views` (gains set by :func:`level_views` if levelling is wanted).
        points, normals: (P, 3) numpy float32 (unit outward normals).
        fallback: ((M, 3) points, (M, 3) normals) tensors -> (M, 3) RGB for unseen points; None: mid grey.
    Returns:
        rgb (P, 3) float32 in [0, 1] and seen (P,) bool.
    """
    opts = options or PhotoOptions()
    device = views[0].image.device if views else torch.device("cpu")
    pts_all = np.asarray(points, np.float32)
    nrm_all = np.asarray(normals, np.float32)
    out = np.empty((len(pts_all), 3), np.float32)
    seen = np.zeros(len(pts_all), bool)
    for s in range(0, len(pts_all), chunk):
        pts = torch.from_numpy(pts_all[s:s + chunk]).to(device)
        nrm = torch.from_numpy(nrm_all[s:s + chunk]).to(device)
        rgb, wsum = blend_views(views, pts, nrm, opts)
        ok = wsum > 0
        if opts.relaxed_fill and not bool(ok.all()):
            miss = torch.nonzero(~ok).squeeze(1)
            rgb_fill, w_fill = blend_views(views, pts[miss], nrm[miss], opts, relaxed=True)
            got = w_fill > 0
            rgb[miss[got]] = rgb_fill[got]
            ok[miss[got]] = True
        if not bool(ok.all()):
            miss = torch.nonzero(~ok).squeeze(1)
            if fallback is not None:
                rgb[miss] = fallback(pts[miss], nrm[miss]).reshape(-1, 3).float()
            else:
                rgb[miss] = 0.5
        out[s:s + chunk] = rgb.clamp(0, 1).cpu().numpy()
        seen[s:s + chunk] = ok.cpu().numpy()
        tick("colouring", min(s + chunk, len(pts_all)), len(pts_all), "points")
    return out, seen


def photo_source(
    vertices: Any, faces: Any, K: Any, c2w: Any, images: Any, masks: Any = None, fallback: ColorFn | None = None,
    options: PhotoOptions | None = None, device: str | torch.device = "cpu",
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A colour source (points, normals) -> RGB for :func:`engine.mesh.texture.bake_texture`, from the photos.

    The mesh given here is the one whose depth maps decide visibility: pass the mesh being textured.
    Levelling gains are estimated on the first call's points (a random subsample) and kept.
    """
    opts = options or PhotoOptions()
    views = prepare_views(vertices, faces, K, c2w, images, masks, opts, device)
    state: dict[str, Any] = {"levelled": False, "fallback": fallback}

    @torch.no_grad()
    def source(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        if not state["levelled"] and len(points) and views:
            rng = np.random.default_rng(0)
            pick = rng.choice(len(points), size=min(opts.level_samples, len(points)), replace=False)
            dev = views[0].image.device
            pts = torch.from_numpy(np.asarray(points, np.float32)[pick]).to(dev)
            nrm = torch.from_numpy(np.asarray(normals, np.float32)[pick]).to(dev)
            if opts.level_colors:
                level_views(views, pts, nrm, opts)
            if opts.level_fallback and fallback is not None:
                state["fallback"] = fit_fallback_levels(views, pts, nrm, fallback, opts)
            state["levelled"] = True
        return photo_colors(views, points, normals, state["fallback"], opts)[0]

    return source


__all__ = [
    "PhotoOptions", "blend_views", "depth_visible", "fit_fallback_levels", "level_views", "photo_colors",
    "photo_source", "prepare_views", "spread_views",
]
