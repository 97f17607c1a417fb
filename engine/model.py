"""The NeuS model: SDF + radiance fields, occupancy-grid marching, learned background, and its losses."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fields.geometry import BackgroundField, RadianceField, SDFField
from .profiling import PhaseTimer
from .render.occupancy import OccupancyGrid
from .render.primitives import exclusive_cumsum_per_ray, neus_alpha, ray_sphere_intersect, render_weights_from_alpha
from .render.rendering import MARCHERS, accumulate, rendering


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
    """Per-ray results (R rays) and the per-sample tensors the losses need (S samples, padding included).

    Both samplers fill every field; the packed sampler's samples are all valid and its rays all complete.
    """

    rgb: Tensor  # (R, 3) composited with the background
    opacity: Tensor  # (R,) foreground opacity
    depth: Tensor  # (R,)
    normal: Tensor  # (R, 3) accumulated foreground normal
    n_samples: int | Tensor  # valid foreground samples (static sampler: a 0-d device tensor)
    sdf: Tensor  # (S,)
    gradients: Tensor  # (S, 3)
    weights: Tensor  # (S,) 0 in the padding
    t_mid: Tensor  # (S,)
    t_len: Tensor  # (S,)
    ray_indices: Tensor  # (S,) R (a dummy ray) in the padding
    points: Tensor  # (S, 3)
    complete: Tensor  # (R,) bool: rays whose samples all fit in the budget (the losses use only these)
    valid: Tensor  # (S,) bool: False in the padding
    n_candidates: int | Tensor  # valid candidates before the budget cut (the demand; may exceed S)


class NeuSModel(nn.Module):
    """NeuS with a hash-grid SDF (instant-nsr-pl style), all in PyTorch.

    ``cfg`` is the ``model`` section of the config (``ModelConfig`` in ``engine/config_schema.py``).
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.radius = cfg.radius
        g = cfg.geometry
        self.geometry = SDFField(
            encoding=dict(g.encoding), mlp=dict(g.mlp), radius=self.radius, feature_dim=g.feature_dim,
            include_xyz=g.include_xyz, grad_mode=g.grad_mode, fd_points=g.fd_points,
            fd_eps=scheduled(g.fd_eps, 0),
        )
        r = cfg.radiance
        self.radiance = RadianceField(g.feature_dim, dict(r.mlp), r.sh_degree, r.use_view_dir,
                                      r.use_normal)
        self.variance = nn.Parameter(torch.tensor(cfg.variance_init))
        self.background = None
        if cfg.background.enabled:
            b = cfg.background
            self.background = BackgroundField(dict(b.encoding), dict(b.mlp), dict(b.color_mlp),
                                              use_view_dir=b.use_view_dir, radius=self.radius)
        # Plain numbers, read once: compiled code must not reach into the (typed OmegaConf) config.
        self.bg_start_radius = cfg.background.start_radius * self.radius
        self.bg_far = cfg.background.far
        self.bg_n_samples = cfg.background.n_samples
        self.sparsity_scale = cfg.sparsity_scale
        occ = cfg.occupancy
        self.occupancy = OccupancyGrid(self.radius, occ.resolution, occ.threshold,
                                       margin=occ.margin) if occ.enabled else None
        self.step_size = math.sqrt(3) * 2 * self.radius / cfg.num_samples_per_ray
        self.max_steps = int(math.ceil(2 * self.radius / self.step_size)) + 1  # candidates per ray (any chord)
        self.sampler = cfg.sampler
        self.march = MARCHERS[self.sampler]
        # Samples per static render_rays call when none is given; training passes train.target_samples.
        self.static_budget = max(2**18, self.max_steps)
        self.register_buffer("cos_anneal_ratio", torch.tensor(1.0 if cfg.cos_anneal_end <= 0 else 0.0))
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

    def update_step(self, step: int) -> bool:
        """Applies the step-dependent schedules (progressive levels, cos annealing, occupancy refresh).

        Returns whether the occupancy grid was refreshed."""
        cfg = self.cfg
        prog = cfg.geometry.progressive
        if prog.enabled:
            n_levels = prog.start_level + max(0, step - prog.start_step) // max(1, prog.update_steps)
            self.geometry.set_progress(n_levels)
        self.geometry.fd_eps = scheduled(cfg.geometry.fd_eps, step)  # optionally shrinking FD step
        end = cfg.cos_anneal_end
        self.cos_anneal_ratio.fill_(1.0 if end <= 0 else min(1.0, step / end))
        self.min_inv_s.fill_(self.sharpness_floor(step))
        occ = cfg.occupancy
        refresh = self.occupancy is not None and step >= occ.start_step and step % occ.update_every == 0
        if refresh:
            # inv_s stays on the device, so the refresh does not wait for the GPU.
            self.occupancy.update(self.geometry.sdf, self.inv_s().detach(), self.step_size,
                                  fraction=occ.update_fraction)
        self.timer.mark("occupancy_update")
        return refresh

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
        occupied = self.occupancy.query if self.occupancy is not None else None
        s = self.march(origins, dirs, near, torch.where(hit, far, near), self.step_size, self.max_steps,
                       int(budget or self.static_budget), occupied, stratified)
        self.timer.mark("marching")

        def rgb_alpha(t0: Tensor, t1: Tensor, ray_idx: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
            # Padding belongs to the dummy ray R: borrow a real ray's direction and park its points at the centre.
            ray_g = ray_idx.clamp_max(max(0, n_rays - 1))
            d = dirs[ray_g]
            pts = torch.where(s.valid[:, None], origins[ray_g] + d * (0.5 * (t0 + t1))[:, None], 0.0)
            sdf, grad, feat = self.geometry(pts, with_grad=True)
            normals = F.normalize(grad, dim=-1)
            rgbs = self.radiance(feat, d, normals)
            self.timer.mark("field_forward")
            # The annealing ratio stays a tensor: no host read.
            alpha = neus_alpha(sdf, normals, d, t1 - t0, self.inv_s(), self.cos_anneal_ratio)
            return rgbs, alpha, {"sdf": sdf, "gradients": grad, "normals": normals, "points": pts}

        if self.background is not None:
            # The background starts where the ray leaves the sphere of radius start_radius * radius.
            start_r = self.bg_start_radius
            near_bg, far_bg, hit_bg = ray_sphere_intersect(origins, dirs, start_r) if start_r != self.radius else (
                near, far, hit)
            bg = self._render_background(origins, dirs, torch.where(hit_bg, far_bg, near_bg), stratified, bg_color)
            self.timer.mark("background")
        else:
            bg = bg_color
        fg = rendering(s.t_starts, s.t_ends, s.ray_indices, s.valid, n_rays, rgb_alpha, render_bkgd=bg,
                       weights_fn=self.weights_from_alpha)
        x = fg.extras
        normal = accumulate(fg.weights, s.ray_indices, n_rays, x["normals"])
        self.timer.mark("rendering")
        return RenderOutput(fg.rgb, fg.opacity, fg.depth, normal, s.n_samples, x["sdf"], x["gradients"], fg.weights,
                            0.5 * (s.t_starts + s.t_ends), s.t_ends - s.t_starts, s.ray_indices, x["points"],
                            s.complete, s.valid, s.n_candidates)

    def _render_background(self, origins: Tensor, dirs: Tensor, t_start: Tensor, stratified: bool,
                           bg_color: Tensor) -> Tensor:
        """Colour of the scene behind the foreground sphere: (R, 3).

        ``n_samples`` uniform in inverse depth from ``t_start`` (R,), where rays leave the sphere (or pass closest
        to it), to ``background.far``. What the learned background leaves transparent shows ``bg_color`` ((R, 3) or
        (3,)), as behind the foreground without a learned background (black before, which training could use as
        a free dark colour).
        """
        n_rays = origins.shape[0]
        edges = self._disparity_edges(t_start.clamp_min(1e-3), self.bg_far, self.bg_n_samples,
                                      stratified)  # (R, n+1)
        n = edges.shape[1] - 1
        ray_idx = torch.arange(n_rays, device=origins.device).repeat_interleave(n)

        def rgb_alpha(t0: Tensor, t1: Tensor, ray_idx: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
            pts = origins[ray_idx] + dirs[ray_idx] * (0.5 * (t0 + t1))[:, None]
            density, rgbs = self.background(pts, dirs[ray_idx])
            return rgbs, 1.0 - torch.exp(-density * (t1 - t0)), {}

        valid = torch.ones_like(ray_idx, dtype=torch.bool)
        return rendering(edges[:, :-1].reshape(-1), edges[:, 1:].reshape(-1), ray_idx, valid, n_rays, rgb_alpha,
                         render_bkgd=bg_color).rgb

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
            n_done = int(out.complete.sum())  # a prefix of the rays, >= 1 (budget >= T)
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

    def surface_sdf(self, points: Tensor) -> Tensor:
        """The SDF meshes are extracted from, (N, 3) -> (N,): the field intersected with the foreground sphere.

        Rendering marches the foreground only inside the sphere of ``radius``, so the field is never trained
        outside it; the mesh grid spans the bounding cube, whose corners would otherwise turn untrained values
        into stray surfaces. A surface cut by the sphere is closed along it, as the renders see it.
        """
        return torch.maximum(self.geometry.sdf(points), points.norm(dim=-1) - self.radius)

    @torch.no_grad()
    def albedo(self, points: Tensor, normals: Tensor) -> Tensor:
        """Colour seen head-on (view direction = -normal): (N, 3), (N, 3) -> (N, 3)."""
        _, _, feat = self.geometry(points, with_grad=False)
        n = F.normalize(normals, dim=-1)
        return self.radiance(feat, -n, n)


def distortion_loss(weights: Tensor, t_mid: Tensor, t_len: Tensor, ray_indices: Tensor, n_rays: int,
                    ray_weights: Tensor) -> Tensor:
    """Mip-NeRF 360 distortion loss on packed samples in O(S): (S,) tensors -> scalar, the mean over the rays
    weighted by ``ray_weights`` (n_rays,) (0/1: complete rays; the dummy padding ray last, at 0)."""
    wm = weights * t_mid
    w_before = exclusive_cumsum_per_ray(weights, ray_indices, n_rays)
    wm_before = exclusive_cumsum_per_ray(wm, ray_indices, n_rays)
    inter = 2.0 * weights * (t_mid * w_before - wm_before)
    intra = weights * weights * t_len / 3.0
    return ((inter + intra) * ray_weights[ray_indices]).sum() / ray_weights.sum().clamp_min(1.0)


def _masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Mean of ``values`` (N, ...) over the rows whose weight (N,) is 1 (0 when none is, or N is 0: a step whose
    rays found no foreground sample, e.g. once pruning emptied the occupancy grid)."""
    per_row = values.reshape(values.shape[0], math.prod(values.shape[1:])).mean(1)
    return (per_row * weights).sum() / weights.sum().clamp_min(1.0)


def _binary_cross_entropy(opacity: Tensor, target: Tensor) -> Tensor:
    """Per-ray BCE, opacity clamped away from 0 and 1 (its log would be infinite): (R,), (R,) -> (R,)."""
    return F.binary_cross_entropy(opacity.clamp(1e-3, 1 - 1e-3), target, reduction="none")


def point_prior_loss(out: RenderOutput, floor: float = 0.5) -> Tensor:
    """How far the foreground opacity of the complete rays of ``out`` falls short of ``floor`` (rays through
    sparse points: engine/point_prior.py) -> (). A hinge, not a push to 1: a ray with a surface on it is left alone,
    so points a little off the surface (their noise) do not inflate it; a part missing altogether is pulled in."""
    opacity = out.opacity
    return _masked_mean(torch.relu(floor - opacity), out.complete.to(opacity.dtype))


def eikonal_loss(gradients: Tensor, sample_w: Tensor) -> Tensor:
    """(|grad sdf| - 1)^2 over the valid samples: gradients (S, 3), sample_w (S,) 0/1 -> scalar."""
    return _masked_mean((gradients.norm(dim=-1) - 1.0) ** 2, sample_w)


def opaque_loss(opacity: Tensor, ray_w: Tensor) -> Tensor:
    """Pushes each ray's opacity to the nearer of 0 and 1 (BCE against its rounded self): (R,), (R,) -> scalar."""
    return _masked_mean(_binary_cross_entropy(opacity, opacity.detach().round()), ray_w)


def sparsity_loss(sdf: Tensor, scale: float, sample_w: Tensor) -> Tensor:
    """exp(-scale |sdf|) over the valid samples (penalises surface where the samples are): (S,), (S,) -> scalar."""
    return _masked_mean(torch.exp(-scale * sdf.abs()), sample_w)


def curvature_loss(laplacian: Tensor, sample_w: Tensor) -> Tensor:
    """|Laplacian of the sdf| over the valid samples: (S,), (S,) -> scalar."""
    return _masked_mean(laplacian.abs(), sample_w)


def _loss_terms(model: NeuSModel, out: RenderOutput, rgb: Tensor, mask: Tensor | None, ray_w: Tensor,
                sample_w: Tensor) -> dict[str, Callable[[], Tensor]]:
    """Each loss by its config name (``train.loss.*``), evaluated only when its weight is positive."""
    return {
        "rgb_l1": lambda: _masked_mean((out.rgb - rgb).abs(), ray_w),
        "rgb_mse": lambda: _masked_mean((out.rgb - rgb) ** 2, ray_w),
        "eikonal": lambda: eikonal_loss(out.gradients, sample_w),
        "mask": lambda: _masked_mean(_binary_cross_entropy(out.opacity, mask), ray_w),
        "opaque": lambda: opaque_loss(out.opacity, ray_w),
        "sparsity": lambda: sparsity_loss(out.sdf, model.sparsity_scale, sample_w),
        "curvature": lambda: curvature_loss(
            model.geometry.laplacian(out.points, out.sdf, model.geometry.fd_eps * 4), sample_w),
        # The dummy padding ray (index R) has no weight.
        "distortion": lambda: distortion_loss(out.weights, out.t_mid, out.t_len, out.ray_indices, rgb.shape[0] + 1,
                                              torch.cat([ray_w, ray_w.new_zeros(1)])),
    }


def compute_losses(model: NeuSModel, out: RenderOutput, target_rgb: Tensor, target_mask: Tensor | None,
                   weights_cfg, step: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the losses and each term as a detached 0-d tensor (for logging).

    ``weights_cfg`` maps loss names (``train.loss``) to weights, schedules or 0-d tensors; unnamed and zero-weight
    losses are skipped, and so are ``mask`` without ``target_mask`` and ``points`` (the system's, on rays of its
    own). Only complete rays and valid samples count (the static sampler's truncated rays and padding; the packed
    sampler has neither), and nothing here reads a value back to the host, so the static sampler's step stays
    sync-free.
    """
    ray_w = out.complete.to(out.rgb.dtype)  # (R,)
    sample_w = out.valid.to(out.sdf.dtype)  # (S,)
    losses = _loss_terms(model, out, target_rgb, target_mask, ray_w, sample_w)
    # A 0-d tensor weight (the fused step's, set on the host each step) always counts: comparing it would sync.
    weights = {k: v if isinstance(v, Tensor) else scheduled(v, step) for k, v in weights_cfg.items()}
    wanted = [name for name, w in weights.items()
              if name in losses and (isinstance(w, Tensor) or w > 0) and (name != "mask" or target_mask is not None)]
    terms = {name: losses[name]() for name in wanted}
    total = sum(weights[k] * v for k, v in terms.items())
    if not isinstance(total, Tensor):
        total = out.rgb.sum() * 0.0
    # Detached tensors, not floats: reading them forces a device sync, so callers do it only when reporting.
    return total, {k: v.detach() for k, v in terms.items()}
