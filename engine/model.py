"""The NeuS model: SDF + radiance fields, occupancy-grid marching, learned background, and its losses."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fields.geometry import BackgroundField, RadianceField, SDFField
from .profiling import PhaseTimer
from .render.occupancy import OccupancyGrid
from .render.primitives import (
    accumulate_along_rays,
    exclusive_cumsum_per_ray,
    neus_alpha,
    ray_sphere_intersect,
    render_weights_from_alpha,
    render_weights_from_density,
    sample_static,
    sample_uniform_along_rays,
)


def scheduled(value, step: int) -> float:
    """A loss weight or other scalar that may follow a schedule.

    ``value`` is a number, or a mapping ``{start, end, start_step, end_step}`` interpolated linearly (held constant
    outside the range).
    """
    if isinstance(value, int | float):
        return float(value)
    if not hasattr(value, "get"):
        raise ValueError(f"a schedule must be a number or {{start, end, start_step, end_step}}, got {value!r}")
    start, end = float(value["start"]), float(value["end"])
    s0, s1 = int(value.get("start_step", 0)), int(value["end_step"])
    if step <= s0:
        return start
    if step >= s1:
        return end
    return start + (end - start) * (step - s0) / max(1, s1 - s0)


@dataclass
class RenderOutput:
    """Per-ray results (R rays) and per-sample tensors needed by the losses (S samples)."""

    rgb: Tensor  # (R, 3) composited with the background
    opacity: Tensor  # (R,) foreground opacity
    depth: Tensor  # (R,)
    normal: Tensor  # (R, 3) accumulated foreground normal
    n_samples: int | Tensor  # foreground samples S (static sampler: valid samples kept, a 0-d tensor)
    sdf: Tensor  # (S,)
    gradients: Tensor  # (S, 3)
    weights: Tensor  # (S,)
    t_mid: Tensor  # (S,)
    t_len: Tensor  # (S,)
    ray_indices: Tensor  # (S,)
    points: Tensor  # (S, 3)
    # Static sampler only (None otherwise); S is then the fixed budget, and ray_indices is R in the padding.
    complete: Tensor | None = None  # (R,) bool: rays whose samples all fit in the budget (the losses use these)
    valid: Tensor | None = None  # (S,) bool: False in the padding
    n_candidates: Tensor | None = None  # () valid candidates before truncation (the demand; may exceed S)


class NeuSModel(nn.Module):
    """NeuS with a hash-grid SDF (instant-nsr-pl style), all in PyTorch.

    ``cfg`` is the ``model`` section of the config (``ModelConfig`` in ``engine/config_schema.py``).
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.radius = float(cfg.radius)
        g = cfg.geometry
        self.geometry = SDFField(
            encoding=dict(g.encoding), mlp=dict(g.mlp), radius=self.radius, feature_dim=int(g.feature_dim),
            include_xyz=bool(g.include_xyz), grad_mode=str(g.grad_mode), fd_points=int(g.fd_points),
            fd_eps=scheduled(g.fd_eps, 0),
        )
        r = cfg.radiance
        self.radiance = RadianceField(int(g.feature_dim), dict(r.mlp), int(r.sh_degree), bool(r.use_view_dir),
                                      bool(r.use_normal))
        self.variance = nn.Parameter(torch.tensor(float(cfg.variance_init)))
        self.background = None
        if cfg.background.enabled:
            b = cfg.background
            self.background = BackgroundField(dict(b.encoding), dict(b.mlp), dict(b.color_mlp),
                                              use_view_dir=bool(b.use_view_dir))
        # Plain numbers, read once: compiled code must not reach into the (typed OmegaConf) config.
        self.bg_start_radius = float(cfg.background.start_radius) * self.radius
        self.bg_far = float(cfg.background.far)
        self.bg_n_samples = int(cfg.background.n_samples)
        self.sparsity_scale = float(cfg.sparsity_scale)
        occ = cfg.occupancy
        self.occupancy = OccupancyGrid(self.radius, int(occ.resolution), float(occ.threshold),
                                       margin=float(occ.margin)) if occ.enabled else None
        self.step_size = math.sqrt(3) * 2 * self.radius / float(cfg.num_samples_per_ray)
        self.max_steps = int(math.ceil(2 * self.radius / self.step_size)) + 1  # candidates per ray (any chord)
        self.sampler = str(cfg.sampler)
        # Samples per static render_rays call when none is given; training passes train.target_samples.
        self.static_budget = max(2**18, self.max_steps)
        self.register_buffer("cos_anneal_ratio", torch.tensor(1.0 if int(cfg.cos_anneal_end) <= 0 else 0.0))
        # Floor under the learned sharpness (a buffer, so compiled code reads it without recompiling).
        self.register_buffer("min_inv_s", torch.tensor(self.sharpness_floor(0)), persistent=False)
        self.timer = PhaseTimer()
        self.weights_from_alpha = render_weights_from_alpha
        if cfg.use_nerfacc:
            from .accel import nerfacc_weights

            self.weights_from_alpha = nerfacc_weights

    # ---------------------------------------------------------------- schedules
    def inv_s(self) -> Tensor:
        return torch.maximum(torch.exp(self.variance * 10.0).clamp(1e-6, 1e6), self.min_inv_s)

    def sharpness_floor(self, step: int) -> float:
        """``model.min_inv_s`` at ``step``."""
        return scheduled(self.cfg.min_inv_s, step)

    def update_step(self, step: int) -> None:
        """Applies the step-dependent schedules (progressive levels, cos annealing, occupancy refresh)."""
        cfg = self.cfg
        prog = cfg.geometry.progressive
        if prog.enabled:
            n_levels = int(prog.start_level) + max(0, step - int(prog.start_step)) // max(1, int(prog.update_steps))
            self.geometry.set_progress(n_levels)
        self.geometry.fd_eps = scheduled(cfg.geometry.fd_eps, step)  # optionally shrinking FD step
        end = int(cfg.cos_anneal_end)
        self.cos_anneal_ratio.fill_(1.0 if end <= 0 else min(1.0, step / end))
        self.min_inv_s.fill_(self.sharpness_floor(step))
        occ = cfg.occupancy
        if self.occupancy is not None and step >= int(occ.start_step) and step % int(occ.update_every) == 0:
            # Static sampler: inv_s stays on the device, so the refresh does not wait for the GPU either.
            inv_s = self.inv_s().detach() if self.sampler == "static" else float(self.inv_s().detach())
            self.occupancy.update(self.geometry.sdf, inv_s, self.step_size,
                                  fraction=float(occ.update_fraction))
        self.timer.mark("occupancy_update")

    # ---------------------------------------------------------------- rendering
    def render_rays(self, origins: Tensor, dirs: Tensor, bg_color: Tensor, stratified: bool = False,
                    budget: int | None = None) -> RenderOutput:
        """Renders rays.

        Args:
            origins, dirs: (R, 3) in the normalized frame, dirs unit length.
            bg_color: (R, 3) or (3,) colour behind the foreground when there is no learned background.
            stratified: jitter sample positions (training).
            budget: static sampler only: the fixed sample count S (default ``static_budget``); rays that do not
                fit are marked incomplete in ``RenderOutput.complete``.
        Returns:
            RenderOutput.
        """
        n_rays = origins.shape[0]
        near, far, hit = ray_sphere_intersect(origins, dirs, self.radius)
        far_fg = torch.where(hit, far, near)
        occupied = self.occupancy.query if self.occupancy is not None else None
        static = None
        if self.sampler == "static":
            budget = int(budget or self.static_budget)
            static = sample_static(origins, dirs, near, far_fg, self.step_size, self.max_steps, budget, occupied,
                                   stratified)
            t0, t1, ray_idx = static.t_starts, static.t_ends, static.ray_indices
        else:
            t0, t1, ray_idx = sample_uniform_along_rays(origins, dirs, near, far_fg, self.step_size, self.max_steps,
                                                        occupied, stratified)
        t_mid = 0.5 * (t0 + t1)
        t_len = t1 - t0
        if static is None:
            d = dirs[ray_idx]
            pts = origins[ray_idx] + d * t_mid[:, None]
        else:
            # Padding belongs to the dummy ray R: borrow a real ray's direction and park its points at the centre.
            ray_g = ray_idx.clamp_max(max(0, n_rays - 1))
            d = dirs[ray_g]
            pts = torch.where(static.valid[:, None], origins[ray_g] + d * t_mid[:, None], 0.0)
        self.timer.mark("marching")
        sdf, grad, feat = self.geometry(pts, with_grad=True)
        normals = F.normalize(grad, dim=-1)
        rgb_s = self.radiance(feat, d, normals)
        self.timer.mark("field_forward")
        n_acc = n_rays  # rays accumulated over; the static sampler adds the dummy ray R, dropped below
        if static is None:
            alpha = neus_alpha(sdf, normals, d, t_len, self.inv_s(), float(self.cos_anneal_ratio))
        else:
            # The annealing ratio stays a tensor (no host read); padding is forced transparent: zero weight.
            alpha = torch.where(static.valid,
                                neus_alpha(sdf, normals, d, t_len, self.inv_s(), self.cos_anneal_ratio), 0.0)
            n_acc = n_rays + 1
        weights, _ = self.weights_from_alpha(alpha, ray_idx, n_acc)
        opacity = accumulate_along_rays(weights, ray_idx, n_acc)[:n_rays, 0]
        rgb = accumulate_along_rays(weights, ray_idx, n_acc, rgb_s)[:n_rays]
        depth = accumulate_along_rays(weights, ray_idx, n_acc, t_mid[:, None])[:n_rays, 0]
        normal = accumulate_along_rays(weights, ray_idx, n_acc, normals)[:n_rays]

        if self.background is not None:
            # The background starts where the ray leaves the sphere of radius start_radius * radius.
            start_r = self.bg_start_radius
            near_bg, far_bg, hit_bg = ray_sphere_intersect(origins, dirs, start_r) if start_r != self.radius else (
                near, far, hit)
            bg = self._render_background(origins, dirs, torch.where(hit_bg, far_bg, near_bg), stratified)
        else:
            bg = bg_color.expand(n_rays, 3) if bg_color.dim() == 1 else bg_color
        rgb = rgb + (1.0 - opacity[:, None]) * bg
        self.timer.mark("rendering")
        if static is None:
            return RenderOutput(rgb, opacity, depth, normal, int(t_mid.shape[0]), sdf, grad, weights, t_mid, t_len,
                                ray_idx, pts)
        return RenderOutput(rgb, opacity, depth, normal, static.n_valid.clamp_max(budget), sdf, grad, weights, t_mid,
                            t_len, ray_idx, pts, static.complete, static.valid, static.n_valid)

    def _render_background(self, origins: Tensor, dirs: Tensor, t_start: Tensor, stratified: bool) -> Tensor:
        """Colour of the scene behind the foreground sphere: (R, 3).

        ``n_samples`` uniform in inverse depth from ``t_start`` (R,), where rays leave the sphere (or pass closest
        to it), to ``background.far``.
        """
        n_rays = origins.shape[0]
        edges = self._disparity_edges(t_start.clamp_min(1e-3), self.bg_far, self.bg_n_samples,
                                      stratified)  # (R, n+1)
        n = edges.shape[1] - 1
        mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
        ray_idx = torch.arange(n_rays, device=origins.device).repeat_interleave(n)
        pts = (origins[:, None, :] + dirs[:, None, :] * mid[..., None]).reshape(-1, 3)
        density, rgb_s = self.background(pts, dirs[ray_idx])
        weights, _, _ = render_weights_from_density(density, edges[:, :-1].reshape(-1), edges[:, 1:].reshape(-1),
                                                    ray_idx, n_rays)
        return accumulate_along_rays(weights, ray_idx, n_rays, rgb_s)

    def _disparity_edges(self, start: Tensor, t_far: float, n: int, stratified: bool) -> Tensor:
        """(R, n+1) segment edges from ``start`` (R,) to ``t_far``, sample midpoints uniform in disparity."""
        n_rays = start.shape[0]
        u = (torch.arange(n, device=start.device, dtype=start.dtype) + 0.5) / n
        if stratified:
            u = (u[None, :] + (torch.rand(n_rays, n, device=start.device) - 0.5) / n).clamp(0, 1 - 1e-4)
        else:
            u = u[None, :].expand(n_rays, n)
        s = start[:, None]
        t = 1.0 / (1.0 / s * (1 - u) + u / t_far)  # (R, n)
        return torch.cat([s, 0.5 * (t[:, 1:] + t[:, :-1]), torch.full_like(s, t_far)], 1)

    @torch.no_grad()
    def render_image(self, K: Tensor, c2w: Tensor, height: int, width: int, bg_color: Tensor, chunk: int = 8192
                     ) -> dict[str, Tensor]:
        """Renders a full view. K (3,3), c2w (3,4) -> rgb (H,W,3), opacity (H,W), depth (H,W), normal (H,W,3)."""
        from .rays import camera_rays

        origins, dirs = camera_rays(K, c2w, height, width)
        outs: dict[str, list[Tensor]] = {"rgb": [], "opacity": [], "depth": [], "normal": []}
        # Static sampler: about 32 samples per ray; the rays that did not fit (a suffix) go into the next call.
        budget = max(self.max_steps, 32 * chunk)
        s = 0
        while s < origins.shape[0]:
            out = self.render_rays(origins[s:s + chunk], dirs[s:s + chunk], bg_color, budget=budget)
            n_done = out.rgb.shape[0] if out.complete is None else int(out.complete.sum())  # >= 1: budget >= T
            for key in outs:
                outs[key].append(getattr(out, key)[:n_done])
            s += n_done
        result = {k: torch.cat(v) for k, v in outs.items()}
        return {k: v.reshape(height, width, -1).squeeze(-1) for k, v in result.items()}

    # ---------------------------------------------------------------- queries used by mesh export
    @torch.no_grad()
    def sdf(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N,) signed distance."""
        return self.geometry.sdf(points)

    @torch.no_grad()
    def albedo(self, points: Tensor, normals: Tensor) -> Tensor:
        """Colour seen head-on (view direction = -normal): (N, 3), (N, 3) -> (N, 3)."""
        _, _, feat = self.geometry(points, with_grad=False)
        n = F.normalize(normals, dim=-1)
        return self.radiance(feat, -n, n)


def distortion_loss(weights: Tensor, t_mid: Tensor, t_len: Tensor, ray_indices: Tensor, n_rays: int,
                    ray_weights: Tensor | None = None) -> Tensor:
    """Mip-NeRF 360 distortion loss on packed samples in O(S), (S,) tensors -> scalar (mean over rays).

    ``ray_weights`` (n_rays,): a weighted mean over rays instead (the static sampler: its completeness mask, with the
    dummy padding ray last).
    """
    wm = weights * t_mid
    w_before = exclusive_cumsum_per_ray(weights, ray_indices, n_rays)
    wm_before = exclusive_cumsum_per_ray(wm, ray_indices, n_rays)
    inter = 2.0 * weights * (t_mid * w_before - wm_before)
    intra = weights * weights * t_len / 3.0
    if ray_weights is None:
        return (inter + intra).sum() / max(1, n_rays)
    return ((inter + intra) * ray_weights[ray_indices]).sum() / ray_weights.sum().clamp_min(1.0)


def _masked_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """Mean of ``values`` over the leading dimension, weighted by ``weights`` (0/1) when given; shapes (N, ...)."""
    if weights is None:
        return values.mean()
    per_row = values.reshape(values.shape[0], -1).mean(1)
    return (per_row * weights).sum() / weights.sum().clamp_min(1.0)


def compute_losses(model: NeuSModel, out: RenderOutput, target_rgb: Tensor, target_mask: Tensor | None,
                   weights_cfg, step: int) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of the configured losses, and each term's value as a detached 0-d tensor (for logging)."""
    terms: dict[str, Tensor] = {}
    w = {k: scheduled(v, step) for k, v in weights_cfg.items()}
    n_rays = target_rgb.shape[0]
    # Static sampler: only complete rays count (a truncated ray's colour is biased) and padding samples never; no
    # test on the sample count, which would read it back to the host (the masked means handle zero samples).
    # The terms keep their order, so the packed path sums them exactly as before.
    static = out.complete is not None
    ray_w = out.complete.to(out.rgb.dtype) if static else None
    sample_w = out.valid.to(out.sdf.dtype) if static else None
    has_samples = static or out.n_samples > 0
    if w.get("rgb_l1", 0) > 0:
        terms["rgb_l1"] = (_masked_mean((out.rgb - target_rgb).abs(), ray_w) if static
                           else F.l1_loss(out.rgb, target_rgb))
    if w.get("rgb_mse", 0) > 0:
        terms["rgb_mse"] = (_masked_mean((out.rgb - target_rgb) ** 2, ray_w) if static
                            else F.mse_loss(out.rgb, target_rgb))
    if w.get("eikonal", 0) > 0 and has_samples:
        terms["eikonal"] = _masked_mean((out.gradients.norm(dim=-1) - 1.0) ** 2, sample_w)
    if target_mask is not None and w.get("mask", 0) > 0:
        op = out.opacity.clamp(1e-3, 1 - 1e-3)
        terms["mask"] = (_masked_mean(F.binary_cross_entropy(op, target_mask, reduction="none"), ray_w) if static
                         else F.binary_cross_entropy(op, target_mask))
    if w.get("opaque", 0) > 0:
        op = out.opacity.clamp(1e-3, 1 - 1e-3)
        terms["opaque"] = (_masked_mean(F.binary_cross_entropy(op, op.detach().round(), reduction="none"), ray_w)
                           if static else F.binary_cross_entropy(op, op.detach().round()))
    if w.get("sparsity", 0) > 0 and has_samples:
        terms["sparsity"] = _masked_mean(torch.exp(-model.sparsity_scale * out.sdf.abs()), sample_w)
    if w.get("curvature", 0) > 0 and has_samples:
        lap = model.geometry.laplacian(out.points, out.sdf, model.geometry.fd_eps * 4)
        terms["curvature"] = _masked_mean(lap.abs(), sample_w)
    if w.get("distortion", 0) > 0 and has_samples:
        if static:
            ray_wd = torch.cat([ray_w, ray_w.new_zeros(1)])  # the dummy padding ray has no weight
            terms["distortion"] = distortion_loss(out.weights, out.t_mid, out.t_len, out.ray_indices, n_rays + 1,
                                                  ray_wd)
        else:
            terms["distortion"] = distortion_loss(out.weights, out.t_mid, out.t_len, out.ray_indices, n_rays)
    total = sum(w[k] * v for k, v in terms.items())
    if not isinstance(total, Tensor):
        total = out.rgb.sum() * 0.0
    # Detached tensors, not floats: reading them forces a device sync, so callers do it only when reporting.
    return total, {k: v.detach() for k, v in terms.items()}
