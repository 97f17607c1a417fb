"""The textured mesh's outline brought onto the masks' edges.

Marching cubes' zero level sits a fraction of a pixel inside the masks' edges, more so where the surface is thin or
curves fast, and a decimated mesh's flat triangles cut inside curved parts; a mask pixel the asset misses shows the
background, the largest error an asset makes. Two steps, both on the training views (held-out views stay unseen):

- :func:`silhouette_offset`: one offset along the normals for the whole mesh, judged by the asset's own masked PSNR.
- :func:`refine_silhouette`: then each vertex on an outline moves on its own, so a missed ear is covered without
  growing everything else. For each view the mesh is rasterised; a vertex lies on the view's outline when its normal
  is nearly perpendicular to the ray and it projects next to the edge of the rendered coverage. There the mask's
  signed distance to its edge less the coverage's own (pixels) is the gap between the two outlines: the vertex is
  asked to move that far along its normal, converted to scene units by its depth and the focal length. The asks of
  all views are averaged per vertex, carried to the neighbours that no view asked (so the surface moves as a sheet,
  not as spikes), capped and applied; this repeats a few rounds, as a moved outline changes what each view sees.
- :func:`best_refinement`: the cap is chosen like the offset, by the asset's masked PSNR on training views (none
  when no cap helps): fine periodic patterns gain least from moving, since any move shifts the texture baked on
  the unmoved surface.

Measured on held-out views, the outline is not all the refinement fixes: thin parts and the rims of curved ones
line up with the photos inside the masks too (BENCHMARKS.md, 2026-12-04 fourth session).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datasets.geometry import scale_intrinsics

from ..liveness import tick
from .photo import map_scale
from .raster import project, rasterize_view
from .texture_refine import foreground_mask


def median_footprint(K: list[torch.Tensor], c2w: list[torch.Tensor], centre: torch.Tensor) -> float:
    """Median size of a pixel at ``centre`` (3,) over the views (K (3, 3), c2w (3, 4) each): distance / focal."""
    return float(np.median([float((c[:, 3] - centre.to(c)).norm()) / float(k[0, 0])
                            for k, c in zip(K, c2w, strict=True)]))


class AssetJudge:
    """The textured asset's masked PSNR on a few training views (a mask pixel the asset misses counting as white:
    what ``engine fidelity`` judges on held-out views), for any placement of its vertices.

    Args:
        faces: (F, 3); uvs: (V, 2); texture: (T, T, 3) uint8 of the asset (seam-split).
        K: (N, 3, 3); c2w: (N, 3, 4); images: N of (H, W, 3) uint8; masks: N of (H, W).
        max_views: views judged (evenly spaced over the N).
    """

    def __init__(self, faces: np.ndarray, uvs: np.ndarray, texture: np.ndarray, K: Any, c2w: Any, images: Any,
                 masks: Any, max_views: int = 8, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.faces = torch.as_tensor(np.asarray(faces, np.int64), device=self.device)
        self.uvs = torch.as_tensor(np.asarray(uvs, np.float32), device=self.device)
        self.texture = torch.as_tensor(np.asarray(texture, np.uint8), device=self.device).float() / 255.0
        pick = np.unique(np.linspace(0, len(K) - 1, min(max_views, len(K))).round().astype(int))
        self.K = [torch.as_tensor(np.asarray(K[i], np.float32), device=self.device) for i in pick]
        self.c2w = [torch.as_tensor(np.asarray(c2w[i], np.float32), device=self.device) for i in pick]
        self.masks = [foreground_mask(masks[i]).to(self.device) for i in pick]
        self.photos = [torch.as_tensor(np.asarray(images[i])[..., :3], device=self.device) for i in pick]  # uint8
        self.renders = 0

    def __call__(self, vertices: Any, done: int = 0, total: int = 0) -> float:
        """Mean masked PSNR of the asset with these (V, 3) vertices; ticks (``done`` + views rendered, ``total``)."""
        from .fidelity import render_textured

        v = torch.as_tensor(np.asarray(vertices, np.float32), device=self.device)
        values = []
        for k, c, m, photo in zip(self.K, self.c2w, self.masks, self.photos, strict=True):
            rgb, _ = render_textured(v, self.faces, self.uvs, self.texture, k, c, m.shape[0], m.shape[1])
            mse = float(((rgb[m] - photo[m].float() / 255.0) ** 2).mean())
            values.append(-10.0 * np.log10(max(mse, 1e-12)))
            self.renders += 1
            tick("texturing", done + len(values), max(total, done + len(values)), "views")  # progress and cancel
        return float(np.mean(values))


def silhouette_offset(
    vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, uvs: np.ndarray, texture: np.ndarray, K: Any,
    c2w: Any, images: Any, masks: Any, step_px: float = 0.25, max_px: float = 3.0, max_views: int = 8,
    device: str | torch.device = "cpu", judge: AssetJudge | None = None,
) -> tuple[float, dict[float, float]]:
    """The offset along the normals (normalized units) at which the textured asset best reproduces the photos
    inside their masks (:class:`AssetJudge`), on the given (training) views.

    Marching cubes' zero level sits a fraction of a pixel inside the masks' edges (and a decimated mesh's flat
    triangles cut inside curved parts): the missed rim costs more than any texel. Silhouette IoU is the wrong
    criterion for that (it counts a pixel of mesh outside the mask as much as a missed mask pixel, and moved the
    bundled run's mesh inwards, -1.8 dB held out: BENCHMARKS.md); the photos' own error weighs the rim gained
    against the texture shifted. Offsets are multiples of ``step_px`` median pixel footprints (depth / focal): 0,
    one step out (else in), then further that way while the PSNR rises, at most ``max_px``.

    Args:
        vertices: (V, 3); faces: (F, 3); normals: (V, 3) unit normals (welded: seam copies share them);
        uvs: (V, 2); texture: (T, T, 3) uint8.
        K: (N, 3, 3); c2w: (N, 3, 4); images: N of (H, W, 3) uint8; masks: N of (H, W).
        max_views: views judged (evenly spaced).
        judge: the asset's judge when the caller made one already (it judges the refinement after this too);
            ``faces`` to ``masks``, ``max_views`` and ``device`` are then its own.
    Returns:
        the chosen offset and {offset: mean masked PSNR} of every offset tried.
    """
    judge = judge or AssetJudge(faces, uvs, texture, K, c2w, images, masks, max_views, device)
    v = torch.as_tensor(np.asarray(vertices, np.float32), device=judge.device)
    n = torch.as_tensor(np.asarray(normals, np.float32), device=judge.device)
    footprint = median_footprint(judge.K, judge.c2w, v.mean(0))
    scores: dict[float, float] = {}

    def psnr(steps: int) -> float:
        offset = steps * step_px * footprint
        if offset not in scores:
            # Views rendered so far, of those of the offsets tried including this one (how many follow is not
            # known); a stop request waits one view, not one offset.
            scores[offset] = judge(v + offset * n, judge.renders, judge.renders + len(judge.K))
        return scores[offset]

    limit = int(round(max_px / step_px))
    best = 0
    direction = 1 if psnr(1) > psnr(0) else -1
    while abs(best) < limit and psnr(best + direction) > psnr(best):
        best += direction
    return best * step_px * footprint, scores


@dataclass
class SilhouetteOptions:
    """Controls of the per-vertex outline refinement (:func:`refine_silhouette`)."""

    rounds: int = 3
    """Rasterise-measure-move rounds."""
    margin_px: float = 0.25
    """How far past the mask's edge the outline is asked to go, in pixels: the outlines are compared at pixel
    centres, so an outline right on the edge still misses some of the last mask pixels."""
    max_px: float = 1.5
    """Largest move of a vertex, in median pixel footprints (depth / focal length at the mesh's centre)."""
    grazing: float = 0.2
    """A vertex is on a view's outline when ``|normal . ray|`` is below this (and it is next to the coverage's
    edge); its ask is weighted by how much below."""
    spread_rounds: int = 6
    """Rounds of neighbour averaging that carry the outline's asks into the surface behind it."""
    max_views: int = 32
    """Views measured at most (evenly spaced over the ones given): more views, more outlines constrained."""
    pixel_budget: int = 16_000_000
    """Mask pixels rasterised per round at most: fewer views (at least 8) for big photos, whose masks are also
    measured at an integer fraction of their size above ``engine.mesh.photo.VISIBILITY_MAX_PIXELS``."""


def _signed_mask_distance(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) float32 distance in pixels to the mask's edge, positive inside (the centre of a pixel
    next to the edge lies half a pixel from it)."""
    from scipy.ndimage import distance_transform_edt

    if mask.all() or not mask.any():  # no edge in the frame: it lies beyond the frame, past any cap
        return np.full(mask.shape, float(sum(mask.shape)) * (1 if mask.all() else -1), np.float32)
    inside = distance_transform_edt(mask) - 0.5
    outside = distance_transform_edt(~mask) - 0.5
    return np.where(mask, inside, -outside).astype(np.float32)


def _bilinear(image: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Samples (H, W) at (P, 2) pixel coordinates (x = column), clamped to the image -> (P,)."""
    h, w = image.shape
    x = xy[:, 0].clamp(0, w - 1)
    y = xy[:, 1].clamp(0, h - 1)
    x0 = x.floor().clamp(max=w - 2).long()
    y0 = y.floor().clamp(max=h - 2).long()
    fx, fy = x - x0, y - y0
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _neighbour_mean(values: torch.Tensor, weights: torch.Tensor, edges: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean of each vertex's neighbours' values and the weights' sum: values, weights (V,); edges (E, 2)
    listed in both directions."""
    n = len(values)
    num = torch.zeros(n, dtype=values.dtype).index_add_(0, edges[:, 0], values[edges[:, 1]] * weights[edges[:, 1]])
    den = torch.zeros(n, dtype=values.dtype).index_add_(0, edges[:, 0], weights[edges[:, 1]])
    return num / den.clamp_min(1e-12), den


@dataclass
class _MaskView:
    K: torch.Tensor  # (3, 3) of the mask as measured (scaled down for big photos)
    c2w: torch.Tensor  # (3, 4)
    mask: torch.Tensor  # (h, w) bool
    distance: torch.Tensor  # (h, w) float32 signed distance to the mask's edge, pixels


def _mask_view(K: Any, c2w: Any, mask: Any) -> _MaskView:
    m = foreground_mask(mask)
    s = map_scale(*m.shape)
    k = np.asarray(K, np.float64)
    if s > 1:  # a block is foreground when most of it is
        h, w = m.shape[0] // s, m.shape[1] // s
        m = F.avg_pool2d(m[: h * s, : w * s].float()[None, None], s)[0, 0] > 0.5
        k = scale_intrinsics(k, s)
    m_np = m.numpy()
    return _MaskView(torch.as_tensor(k, dtype=torch.float32), torch.as_tensor(np.asarray(c2w, np.float32)), m,
                     torch.from_numpy(_signed_mask_distance(m_np)))


def refine_silhouette(
    vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, K: Any, c2w: Any, masks: Any,
    options: SilhouetteOptions | None = None, stats: dict | None = None, first_round: dict | None = None,
) -> np.ndarray:
    """Moves the mesh's outline onto the masks' edges, vertex by vertex (see the module docstring). On the CPU:
    a few rasterisations of each view (progress and cancel through ``engine.liveness``, a view each).

    Args:
        vertices: (V, 3); faces: (F, 3) of a welded mesh (neighbouring faces share vertices);
        normals: (V, 3) outward normals.
        K: (N, 3, 3); c2w: (N, 3, 4) OpenGL axes; masks: N of (H, W) foreground masks.
        stats: filled with ``views`` (measured), ``missed`` (mask pixels the mesh missed, summed over those views,
            before each round) and ``moved_px`` (median and largest move of the vertices that
            moved, in median pixel footprints).
        first_round: the first round's measurement (which does not depend on ``max_px``), kept here by the first
            call and reused by later calls given the same dict and the same mesh, views and options otherwise.
    Returns:
        (V, 3) float32 moved vertices.
    """
    opts = options or SilhouetteOptions()
    v0 = torch.as_tensor(np.asarray(vertices, np.float32))
    f = torch.as_tensor(np.asarray(faces, np.int64))
    n = F.normalize(torch.as_tensor(np.asarray(normals, np.float32)), dim=1)
    edges = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    edges = torch.unique(torch.cat([edges, edges.flip(1)]), dim=0)
    if len(K) == 0 or len(v0) == 0:
        return v0.numpy().copy()
    first = tuple(masks[0].shape[:2])
    s = map_scale(*first)
    per_view = (first[0] // s) * (first[1] // s)
    count = min(opts.max_views, len(K), max(8, opts.pixel_budget // max(per_view, 1)))
    pick = np.unique(np.linspace(0, len(K) - 1, count).round().astype(int))
    views = [_mask_view(K[i], c2w[i], masks[i]) for i in pick]
    centre = v0.mean(0)
    footprint = median_footprint([mv.K for mv in views], [mv.c2w for mv in views], centre)
    limit = opts.max_px * footprint
    offset = torch.zeros(len(v0))
    missed: list[int] = []
    total = opts.rounds * len(views)

    def measure(v: torch.Tensor, r: int, ask: torch.Tensor, weight: torch.Tensor) -> int:
        lost = 0
        for j, mv in enumerate(views):
            h, w = mv.mask.shape
            cov = rasterize_view(v, f, mv.K, mv.c2w, h, w).covered
            lost += int((mv.mask & ~cov).sum())
            tick("texturing", r * len(views) + j + 1, total, "views")  # progress and cancel (engine.liveness)
            xy, depth = project(v, mv.K, mv.c2w)
            cos = (n * F.normalize(v - mv.c2w[:, 3], dim=1)).sum(1)
            px = xy.round().long()
            on = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h) & (depth > 0)
            on &= cos.abs() < opts.grazing
            idx = torch.nonzero(on).squeeze(1)
            own = torch.from_numpy(_signed_mask_distance(cov.numpy()))
            idx = idx[own[px[idx, 1], px[idx, 0]].abs() <= 1.5]
            if not len(idx):
                continue
            c = cos[idx]
            # The gap between the two outlines where the vertex projects: the mask's edge distance less the mesh's
            # own (a vertex a little off the outline sees both further in, by the same amount).
            gap = _bilinear(mv.distance, xy[idx]) - _bilinear(own, xy[idx])
            # Moving d along the normal moves the outline by d * sin(normal, ray) * focal / depth pixels.
            sin = (1 - c * c).clamp_min(1e-6).sqrt()
            step = (gap + opts.margin_px) * depth[idx] / mv.K[0, 0] / sin
            wgt = 1.0 - c.abs() / opts.grazing
            ask.index_add_(0, idx, step * wgt)
            weight.index_add_(0, idx, wgt)
        return lost

    for r in range(opts.rounds):
        v = v0 + offset[:, None] * n
        if r == 0 and first_round:
            ask, weight = first_round["ask"], first_round["weight"]
            missed.append(first_round["missed"])
        else:
            ask, weight = torch.zeros(len(v0)), torch.zeros(len(v0))
            missed.append(measure(v, r, ask, weight))
            if r == 0 and first_round is not None:
                first_round.update(ask=ask, weight=weight, missed=missed[0])
        asked = weight > 0
        if not asked.any():
            break
        move = torch.where(asked, ask / weight.clamp_min(1e-12), torch.zeros_like(ask))
        # Carried into the vertices nobody asked (the asked keep theirs), then smoothed once.
        known = asked.float()
        for _ in range(opts.spread_rounds):
            mean, den = _neighbour_mean(move, known, edges)
            fill = ~asked & (den > 0)
            move = torch.where(fill, mean, move)
            known = torch.where(fill, known.clamp_min(0.5), known)
        mean, den = _neighbour_mean(move, torch.ones_like(move), edges)
        move = torch.where(den > 0, 0.5 * (move + mean), move)
        offset = (offset + move).clamp(-limit, limit)
    out = v0 + offset[:, None] * n
    if stats is not None:
        moved = offset.abs() > 0
        stats.update(views=len(views), missed=missed,
                     moved_px=[round(float(offset[moved].abs().median()) / footprint, 3),
                               round(float(offset.abs().max()) / footprint, 3)] if moved.any() else [0.0, 0.0])
    return out.numpy().astype(np.float32)


REFINE_CAPS_PX = (0.75, 1.5)
"""Caps tried by :func:`best_refinement` (pixels): on held-out views the bundled and thin scenes gained most at 1.5,
a scene of fine checkers and stripes at 0.75 (BENCHMARKS.md); the training views' PSNR ranked them the same way."""


def best_refinement(
    vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, seams: np.ndarray, judge: AssetJudge, K: Any,
    c2w: Any, masks: Any, caps: tuple[float, ...] = REFINE_CAPS_PX, stats: dict | None = None,
    unmoved_psnr: float | None = None,
) -> np.ndarray:
    """:func:`refine_silhouette` with each cap of ``caps``, keeping the result (or the unmoved mesh) whose asset
    ``judge`` scores best.

    Args:
        vertices: (V, 3); faces: (F, 3); normals: (V, 3) of the welded mesh.
        seams: (V',) int64 welded vertex of each of the judged asset's (seam-split) vertices.
        judge: the asset's :class:`AssetJudge` (its faces, UVs and texture).
        K, c2w, masks: the views to refine on (see :func:`refine_silhouette`).
        stats: filled with the chosen refinement's figures (:func:`refine_silhouette`), ``cap_px`` (None: unmoved)
            and ``psnr`` ({cap or 0: judged PSNR}).
        unmoved_psnr: ``judge``'s score of ``vertices`` when known already (the offset's search judged them).
    Returns:
        (V, 3) float32 welded vertices.
    """
    seams = np.asarray(seams, np.int64)
    best = np.asarray(vertices, np.float32)
    scores = {0.0: judge(best[seams]) if unmoved_psnr is None else unmoved_psnr}
    chosen: dict = {"cap_px": None}
    first_round: dict = {}
    for cap in caps:
        found: dict = {}
        moved = refine_silhouette(vertices, faces, normals, K, c2w, masks, SilhouetteOptions(max_px=cap), found,
                                  first_round)
        scores[cap] = judge(moved[seams])
        if scores[cap] > max(v for k, v in scores.items() if k != cap):
            best, chosen = moved, {**found, "cap_px": cap}
    if stats is not None:
        stats.update(chosen, psnr={k: round(v, 3) for k, v in scores.items()})
    return best


__all__ = ["REFINE_CAPS_PX", "AssetJudge", "SilhouetteOptions", "best_refinement", "median_footprint",
           "refine_silhouette", "silhouette_offset"]
