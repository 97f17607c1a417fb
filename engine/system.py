"""Training with PyTorch Lightning: ray sampling from device-resident images, losses, optimizers, schedules."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from . import failpoints
from .compile_cache import enable_compile_cache
from .fullstep import TRACES_AUTOGRAD, FusedStep, configure_dynamo
from .guard import StepGuard
from .model import NeuSModel, RenderOutput, compute_losses, point_prior_loss, scheduled
from .photo_sweep import TargetMemory, sweep_targets
from .point_prior import PointRays, foreground_points
from .profiling import STEP_LISTENERS
from .rays import directions_from_pixels


def compile_with_fallback(fn, name: str, mode: str | None = None, fullgraph: bool = False):
    """``torch.compile(fn)``, except that a failure to compile (which surfaces at the first call) switches
    that function back to eager for the rest of the run instead of ending it.

    With ``mode="reduce-overhead"`` (CUDA graphs) dynamic shapes are left to torch.compile's default: a graph is
    recorded per input shape anyway."""
    if mode is None:
        compiled = torch.compile(fn, dynamic=True, fullgraph=fullgraph)
    else:
        compiled = torch.compile(fn, mode=mode, fullgraph=fullgraph)
    use_compiled = [True]

    def call(*args, **kwargs):
        if use_compiled[0]:
            try:
                return compiled(*args, **kwargs)
            except Exception as exc:  # compiler support varies by platform and version; eager always works
                use_compiled[0] = False
                print(f"torch.compile failed for {name} ({type(exc).__name__}: {str(exc)[:200]}); running eager",
                      file=sys.stderr, flush=True)
        return fn(*args, **kwargs)

    return call


def next_ray_count(n_rays: int, n_samples: int | float, target_samples: int, min_rays: int, max_rays: int) -> int:
    """Packed sampler: the next step's ray count, moved 30 % of the way towards the count that would have given
    ``target_samples`` samples this step (a smoothed proportional update), clamped to [min_rays, max_rays]."""
    wanted = n_rays * float(target_samples) / max(1.0, float(n_samples))
    return int(min(max_rays, max(min_rays, 0.7 * n_rays + 0.3 * wanted)))


def bucket_rays(n: float, lo: int, hi: int) -> int:
    """Rounds a ray count to the nearest of 8 sizes per octave (m * 2^k, m = 8..15), clamped to [lo, hi].

    The static sampler's shapes depend on the ray count only, so few distinct counts mean few distinct shapes
    (few CUDA graphs, few recompilations) while the count still tracks the wanted samples within ~6 %.
    """
    n = min(max(float(n), lo), hi)
    q = 2 ** max(0, math.floor(math.log2(n)) - 3)
    return int(min(max(round(n / q) * q, lo), hi))


def _may_be_positive(weight) -> bool:
    """A loss weight (number or schedule {start, end, ...}) that is positive at some step."""
    if isinstance(weight, int | float):
        return weight > 0
    return float(weight["start"]) > 0 or float(weight["end"]) > 0


class _HostReadback:
    """Copies a device scalar to the host without waiting for it; ``poll`` gives the value once it has landed."""

    def __init__(self, value: Tensor) -> None:
        self.event = None
        if value.device.type == "cuda":
            self.host = torch.empty((), dtype=value.dtype, pin_memory=True)
            self.host.copy_(value.detach(), non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = value.detach().to("cpu")  # CPU: already there; MPS: this waits, which is fine there

    def poll(self) -> float | None:
        if self.event is not None and not self.event.query():
            return None
        return float(self.host)


class _Steps(IterableDataset):
    """Lightning wants a data loader; the rays are sampled on the device inside ``training_step`` instead."""

    def __iter__(self):
        while True:
            yield 0


class RaySource:
    """Training views kept on the training device; samples random pixels of random views (batch-image sampling).

    images: (N, H, W, 3) uint8, masks: (N, H, W) bool or None, K: (N, 3, 3), c2w: (N, 3, 4); views: (V,) indices
    of the training views (default all). On the CPU the scene's own arrays are used as they are (no copy); on an
    accelerator only the training views are copied over, uint8. Only the sampled pixels become float.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray | None, K: np.ndarray, c2w: np.ndarray,
                 views: np.ndarray | None = None) -> None:
        if images.dtype != np.uint8 or (masks is not None and masks.dtype != np.bool_):
            raise TypeError(f"RaySource takes uint8 images and bool masks, got {images.dtype} / "
                            f"{None if masks is None else masks.dtype}")
        self.images = torch.from_numpy(images)  # shares the scene's memory
        self.masks = None if masks is None else torch.from_numpy(masks)
        self.views = torch.arange(len(images)) if views is None else torch.as_tensor(np.asarray(views, np.int64))
        self.K = torch.from_numpy(K).float()
        self.c2w = torch.from_numpy(c2w).float()

    def to(self, device: torch.device) -> RaySource:
        if self.images.device == device:
            return self
        # One view at a time: the host never holds a second copy of the training images.
        self.images = _gather_views(self.images, self.views, device)
        self.masks = None if self.masks is None else _gather_views(self.masks, self.views, device)
        self.K, self.c2w = self.K[self.views].to(device), self.c2w[self.views].to(device)
        self.views = torch.arange(len(self.views), device=device)
        return self

    def sample(self, n_rays: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """-> origins (R,3), dirs (R,3), rgb (R,3) float in [0,1], mask (R,) float or None."""
        _, h, w, _ = self.images.shape
        dev = self.images.device
        view = self.views[torch.randint(0, len(self.views), (n_rays,), device=dev)]
        x = torch.randint(0, w, (n_rays,), device=dev)
        y = torch.randint(0, h, (n_rays,), device=dev)
        origins, dirs = directions_from_pixels(self.K[view], self.c2w[view], x.float(), y.float())
        rgb = self.images[view, y, x].float() / 255.0
        mask = None if self.masks is None else self.masks[view, y, x].float()
        return origins, dirs, rgb, mask


def _gather_views(arr: Tensor, views: Tensor, device: torch.device) -> Tensor:
    """``arr[views]`` on ``device``, copied view by view (no host-side gather)."""
    out = torch.empty((len(views), *arr.shape[1:]), dtype=arr.dtype, device=device)
    for j, i in enumerate(views.tolist()):
        out[j].copy_(arr[i], non_blocking=False)
    return out


class NeuSSystem(L.LightningModule):
    """Lightning wrapper: one training step = sample rays, render, losses, adapt the ray count."""

    def __init__(self, cfg, rays: RaySource | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = NeuSModel(cfg.model)
        self.rays = rays
        self.point_rays: PointRays | None = None  # attach_point_prior
        self.photo_sweep: dict | None = None  # train.sweep as plain values, read once (attach_photo_sweep)
        self.sweep_memory: TargetMemory | None = None  # its targets kept across steps (not checkpointed: it refills)
        self.n_rays = cfg.train.init_rays
        self.last_stats: dict[str, Tensor | int] = {}
        # Plain values, read once: compiled code must not reach into the (typed OmegaConf) config.
        self.background_mode = cfg.data.background
        self.use_mask = bool(cfg.data.use_mask)
        self._compiled = False
        # Static sampler: fixed sample budget; the ray count follows the candidates per ray, read back lagged.
        self.static = self.model.sampler == "static"
        self.cuda_graphs = False
        self._step = self.forward_step  # compiled with CUDA graphs by _compile when configured
        self.guard = StepGuard(cfg)
        # The whole step as one function (engine/fullstep.py), built at the first step once the optimizer exists.
        self.fused: FusedStep | None = None
        self._fused_call = None
        self.stage_hook: Callable[[str], None] | None = None  # reports the "compiling" stage (train.run_fit)
        self._first_step_done = False
        if self.static:
            t = cfg.train
            self.n_rays = bucket_rays(self.n_rays, t.min_rays, t.max_rays)
            self.model.static_budget = max(t.target_samples, self.model.max_steps)
            self._demand_ema: Tensor | None = None  # candidates per ray, on the device
            self._demand: float | None = None  # the last value that reached the host
            self._readback: _HostReadback | None = None
            self._readback_step = -(10**9)

    # Lightning hooks -------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.rays is not None:
            self.rays.to(self.device)
        if self.point_rays is not None:
            self.point_rays.to(self.device)
        if self.trainer.world_size > 1:
            # DDP: every process was seeded alike and would draw the same rays, so each rank would compute the same
            # batch. Each rank draws its own rays; the grids, refreshed from each rank's own random cells, are
            # shared from rank 0 after every refresh (share_occupancy), and DDP keeps the weights identical.
            torch.manual_seed(int(self.cfg.seed) + self.trainer.global_rank)
        t = self.cfg.train
        # The fused step drives AdamW itself (manual optimization; Lightning still counts steps and saves the
        # optimizer's state). Under DDP the gradients need DDP's hooks, so more than one process keeps the usual step.
        self.automatic_optimization = not (self.static and t.fused_step and self.trainer.world_size == 1
                                           and str(t.precision) in ("32", "32-true"))
        if bool(t.compile) and not self._compiled and self.device.type == "cuda":
            self._compile()

    def _compile(self) -> None:
        """Compiles the field forwards (dynamic sample counts); each falls back to eager if compilation fails.

        With the static sampler and ``train.cuda_graphs``, the whole ``forward_step`` (render + losses) is
        compiled instead, with CUDA graphs (``mode="reduce-overhead"``): one graph per ray-count bucket, replayed
        every step; the fields stay eager for export and validation. Compilation errors fall back to eager; errors
        while replaying graphs are not caught.
        """
        enable_compile_cache(self.device)  # a second run loads the compiled code instead of compiling again
        encoding = self.model.geometry.encoding
        if hasattr(encoding, "static_levels"):
            encoding.static_levels = True  # progressive levels by masking: no recompilation as levels unlock
        self.cuda_graphs = self.static and bool(self.cfg.train.cuda_graphs)
        if not self.automatic_optimization:
            pass  # the fused step is compiled when it is built (_fused_training_step)
        elif self.cuda_graphs:
            self._step = compile_with_fallback(self.forward_step, "forward_step", "reduce-overhead")
        else:
            for module in (self.model.geometry, self.model.radiance):
                module.forward = compile_with_fallback(module.forward, type(module).__name__)
        self._compiled = True

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(), batch_size=None)

    def background_color(self, n: int) -> Tensor:
        mode = self.background_mode
        if mode == "random":
            return torch.rand(n, 3, device=self.device)
        value = 1.0 if mode == "white" else 0.0
        return torch.full((n, 3), value, device=self.device)

    def training_step(self, batch, batch_idx: int) -> Tensor | None:
        """One step, guarded (engine.guard): out of memory halves the rays and skips it (None); a non-finite loss or
        gradient drops its update."""
        return self.guard.training_step(self, batch, batch_idx)

    def backward(self, loss: Tensor, *args, **kwargs) -> None:
        self.guard.backward(self, loss, *args, **kwargs)

    def draw_rays(self, n_rays: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
        """Random training rays -> origins, dirs, target rgb (composited on the background where masks are used),
        mask or None (R,), background colour, all (R, 3) but the mask."""
        origins, dirs, rgb, mask = self.rays.sample(n_rays)
        bg = self.background_color(n_rays)
        if not self.use_mask or mask is None:
            return origins, dirs, rgb, None, bg
        return origins, dirs, rgb * mask[:, None] + bg * (1.0 - mask[:, None]), mask, bg

    def _train_step(self, batch, batch_idx: int) -> Tensor:
        if self.stage_hook is not None and self._compiled and not self._first_step_done:
            self.stage_hook("compiling")  # the first step compiles (or loads the compile cache)
            loss = self._training_step()
            self.stage_hook("training")
        else:
            loss = self._training_step()
        self._first_step_done = True
        return loss

    def _training_step(self) -> Tensor:
        if not self.automatic_optimization:
            return self._fused_training_step()
        step = int(self.global_step)
        timer = self.model.timer
        self._step_begin(step)
        origins, dirs, rgb, mask, bg = self.draw_rays(self.n_rays)
        timer.mark("data")
        t = self.cfg.train
        weights = {k: scheduled(v, step) for k, v in t.loss.items()}
        outputs = self._keep(self._step(origins, dirs, rgb, mask, bg, weights))
        timer.mark("losses")
        if self.point_rays is not None and weights.get("points", 0) > 0:
            outputs = self._with_point_prior(outputs, weights["points"])
            timer.mark("point_prior")
        self._record_step(*outputs, n_rays=origins.shape[0])
        if not self.static:  # the packed sampler knows its sample count on the host already
            self.n_rays = next_ray_count(self.n_rays, outputs[2], t.target_samples, t.min_rays,
                                         t.max_rays)
        return outputs[0]

    def _with_point_prior(self, outputs: tuple, weight: float) -> tuple:
        """``outputs`` of ``forward_step`` with the ``points`` loss added (engine/point_prior.py): rays through the
        sparse points, the shortfall of their foreground opacity below 0.5."""
        origins, dirs = self.point_rays.sample(int(self.cfg.train.point_rays))
        if origins.shape[0] == 0:
            return outputs
        out = self.model.render_rays(origins, dirs, self.background_color(origins.shape[0]), stratified=True)
        term = point_prior_loss(out)
        loss, terms, *rest = outputs
        return (loss + weight * term, {**terms, "points": term.detach()}, *rest)

    def _photo_sweep_term(self, out: RenderOutput, origins: Tensor, dirs: Tensor, rgb: Tensor) -> Tensor:
        """The ``sweep`` loss of a step (engine/photo_sweep.py): of the step's rays (R, 3 each), those rendered wrong
        and nearly transparent in ``out`` are swept through the photos, with ``scout`` random pixels; |sdf| where the
        photos place the wrong rays and at the confirmed kept targets, summed and divided by R -> ()."""
        c = self.photo_sweep
        with torch.no_grad():
            wrong = ((out.rgb - rgb).abs().mean(-1) > c["error"]) & (out.opacity < c["max_opacity"])
            pick = torch.nonzero(wrong).squeeze(1)[:c["rays"]]
            swept = (origins[pick], dirs[pick], rgb[pick])
            if c["scout"] > 0:
                scouts = self.rays.sample(c["scout"])[:3]
                swept = tuple(torch.cat([a, b]) for a, b in zip(swept, scouts, strict=True))
            found, rays = sweep_targets(*swept, self.rays, self.model.radius, c["depths"], c["views"],
                                        c["tolerance"], c["min_agreement"], c["peak_width"])
            targets = found[rays < len(pick)]  # the scouts' targets are pulled once others confirm them
            if self.sweep_memory is not None:
                self.sweep_memory.add(found)
                targets = torch.cat([targets, self.sweep_memory.confirmed(c["recall"])])
        return self.model.geometry.sdf(targets).abs().sum() / origins.shape[0]  # model.sdf is gradient-free

    def attach_photo_sweep(self) -> str | None:
        """Turns the ``sweep`` loss on when it is wanted (training without masks; engine/photo_sweep.py). Returns a
        line for the log, or None when the loss is not wanted."""
        if not _may_be_positive(self.cfg.train.loss.sweep) or self.use_mask:
            return None
        if self.static:
            return ("the photo-consistency sweep (train.loss.sweep) needs the packed sampler: off with "
                    "model.sampler=static")
        c = self.photo_sweep = OmegaConf.to_container(self.cfg.train.sweep, resolve=True)
        if c["memory"] > 0:
            self.sweep_memory = TargetMemory(c["memory"], c["confirm_radius"], c["confirm_neighbours"])
        else:
            c["scout"] = 0  # the scouts' targets only feed the kept ones
        return (f"photo-consistency sweep: up to {c['rays']} wrong rays and {c['scout']} random pixels a step, "
                f"{c['memory']} targets kept, pull the surface")

    def attach_point_prior(self, data_dir, scene, train_idx: np.ndarray) -> str | None:
        """Turns the ``points`` loss on when it is wanted and the capture has sparse points (engine/point_prior.py),
        and keeps their occupancy cells. Returns a line for the log, or None when the loss is not wanted."""
        if not _may_be_positive(self.cfg.train.loss.points) or self.use_mask:
            return None
        if self.static:
            return "the sparse-point prior (train.loss.points) needs the packed sampler: off with model.sampler=static"
        # A damaged points file never gets here: loading the capture reads it and refuses it (exit 2).
        points = foreground_points(data_dir, scene.scale_mat, float(self.cfg.model.radius))
        if points is None:
            return "no sparse points inside the region: the sparse-point prior is off"
        point_rays = PointRays(points, scene.K[train_idx], scene.c2w[train_idx], scene.width, scene.height)
        self.point_rays = point_rays
        if self.model.occupancy is not None:
            self.model.occupancy.pin(point_rays.points)
        return f"sparse-point prior: {len(points)} points inside the region hold the foreground"

    def _step_begin(self, step: int) -> None:
        """The host's part before a step: ray count (static sampler), schedules, occupancy refresh."""
        self.model.timer.start()
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: earlier graph outputs may be overwritten
        if self.static:
            self._adapt_static_rays(step)
        if self.model.update_step(step):
            self.share_occupancy()

    def _fused_training_step(self) -> Tensor:
        """The static sampler's step as one compiled graph (engine/fullstep.py): the host-side schedules here, then
        the step, which updates the weights itself; ``optimizer.step()`` then only counts the step for Lightning
        (no gradients are left on the parameters, so AdamW changes nothing)."""
        step = int(self.global_step)
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        if self.fused is None:
            t = self.cfg.train
            names = [k for k, v in t.loss.items() if _may_be_positive(v)]
            self.fused = FusedStep(self, optimizer.optimizer, names)
            self._fused_call = self.fused
            if self._compiled:
                configure_dynamo()
                self._fused_call = compile_with_fallback(self.fused, "fused training step",
                                                         "reduce-overhead" if self.cuda_graphs else None,
                                                         fullgraph=TRACES_AUTOGRAD)
        self._step_begin(step)
        self.fused.ensure_state()  # after a rollback to the starting weights
        self.fused.set_schedules({k: scheduled(v, step) for k, v in self.cfg.train.loss.items()})
        self.fused.loss_factor.fill_(failpoints.nan_loss(1.0, step + 1))  # the step the guard reports
        *outputs, bad = self._keep(self._fused_call(self.n_rays))
        self.model.timer.mark("step")
        self.guard.count(bad)
        optimizer.step()
        scheduler.step()
        self._record_step(*outputs, n_rays=self.n_rays)
        return outputs[0]

    def _keep(self, outputs: tuple) -> tuple:
        """With CUDA graphs the next replay overwrites a graph's outputs: copies of what outlives the step."""
        if not self.cuda_graphs:
            return outputs
        loss, terms, *counts = outputs
        return (loss.clone(), {k: v.clone() for k, v in terms.items()}, *(c.clone() for c in counts))

    def _record_step(self, loss: Tensor, terms: dict[str, Tensor], n_samples: Tensor | int, per_ray: Tensor | float,
                     mse: Tensor, n_rays: int) -> None:
        """The step's statistics, kept as tensors: converting them every step would stall the GPU; the reporter
        converts when it reports. Static sampler: also the candidates-per-ray EMA, on the device (the host reads it
        only now and then, see _adapt_static_rays)."""
        if self.static:
            with torch.no_grad():
                self._demand_ema = per_ray if self._demand_ema is None else 0.8 * self._demand_ema + 0.2 * per_ray
        self.last_stats = {"loss": loss.detach(), "psnr": -10.0 * torch.log10(mse.clamp_min(1e-10)),
                           "rays": n_rays, "samples": n_samples, "inv_s": self.model.inv_s().detach(), **terms}

    def share_occupancy(self) -> None:
        """Under DDP, every rank takes rank 0's occupancy grid after a refresh, so all ranks march the same space
        (each rank refreshed its own grid from its own random cells and jitter). Nothing to do in one process."""
        grid = self.model.occupancy
        if grid is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        dist.broadcast(grid.density, src=0)
        occupied = grid.occupied.to(torch.uint8)  # bool is not a collective type on every backend (gloo)
        dist.broadcast(occupied, src=0)
        grid.occupied.copy_(occupied.bool())

    def forward_step(self, origins: Tensor, dirs: Tensor, rgb: Tensor, mask: Tensor | None, bg: Tensor,
                     weights: dict[str, float]) -> tuple[Tensor, dict[str, Tensor], Tensor | int, Tensor | float,
                                                         Tensor]:
        """Render, losses and step statistics, for either sampler. With the static sampler the shapes are fixed by
        (R, budget) and nothing syncs with the host, so that it compiles to one graph (one CUDA graph with
        ``train.cuda_graphs``).

        Args:
            origins, dirs, rgb, bg: (R, 3); mask: (R,) or None; weights: loss weights for this step (numbers: a
                change recompiles, so scheduled weights and CUDA graphs do not mix well).
        Returns:
            loss, detached terms, samples kept, candidates per ray, squared error over complete rays () (the
            counts are 0-d tensors with the static sampler, Python numbers with the packed one).
        """
        out = self.model.render_rays(origins, dirs, bg, stratified=True)
        loss, terms = compute_losses(self.model, out, rgb, mask, weights, 0)
        # Never under the static sampler (attach_photo_sweep), whose forward_step may be compiled.
        if self.photo_sweep is not None and weights.get("sweep", 0) > 0:
            term = self._photo_sweep_term(out, origins, dirs, rgb)
            loss, terms = loss + weights["sweep"] * term, {**terms, "sweep": term.detach()}
        with torch.no_grad():
            c = out.complete.float()
            mse = (((out.rgb - rgb) ** 2).mean(-1) * c).sum() / c.sum().clamp_min(1.0)
        return loss, terms, out.n_samples, out.n_candidates / origins.shape[0], mse

    def _adapt_static_rays(self, step: int) -> None:
        """Static sampler: picks the ray count for a budget of ``target_samples`` without syncing every step.

        Every ``train.static_adapt_every`` steps the candidates-per-ray EMA is copied to the host asynchronously;
        once the copy has landed (a step or two later on CUDA), the ray count moves to the bucket that fills
        ``static_fill`` of the budget. Changes under 10 % are ignored, so the shapes settle.
        """
        t = self.cfg.train
        if self._readback is not None:
            value = self._readback.poll()
            if value is None:
                return
            self._readback = None
            self._demand = max(value, 1e-3)
            self._set_static_rays(self._demand)
        if self._demand_ema is not None and step - self._readback_step >= t.static_adapt_every:
            self._readback = _HostReadback(self._demand_ema)
            self._readback_step = step

    def _set_static_rays(self, demand: float) -> None:
        t = self.cfg.train
        wanted = t.static_fill * t.target_samples / demand
        wanted = min(max(wanted, 0.25 * self.n_rays), 4.0 * self.n_rays)  # one noisy estimate cannot swing it far
        new = bucket_rays(wanted, t.min_rays, t.max_rays)
        if abs(new - self.n_rays) > 0.1 * self.n_rays:
            self.n_rays = new

    def stats(self) -> dict[str, float | int]:
        """The last step's statistics as Python numbers (one device sync)."""
        return {k: v.item() if isinstance(v, Tensor) else v for k, v in self.last_stats.items()}

    # Phase profile (benchmark only): backward and the optimizer run outside training_step.
    def on_before_backward(self, loss: Tensor) -> None:
        self.model.timer.mark("other")

    def on_after_backward(self) -> None:
        self.guard.after_backward(self)
        self.model.timer.mark("backward")

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        timer = self.model.timer
        if timer.enabled:
            timer.mark("optimizer")
            timer.steps += 1
        for listener in STEP_LISTENERS:  # the benchmark's operator count (engine/profiling.py)
            listener()

    def configure_optimizers(self):
        t = self.cfg.train
        m = self.model
        groups = [
            {"params": list(m.geometry.encoding.parameters()), "lr": t.lr_geometry_encoding},
            {"params": list(m.geometry.mlp.parameters()) + list(m.radiance.parameters()), "lr": t.lr},
            {"params": [m.variance], "lr": t.lr_variance},
        ]
        if m.background is not None:
            groups.append({"params": list(m.background.parameters()), "lr": t.lr_background})
        # The fused kernel (CPU and CUDA) updates the large hash table in one pass instead of several.
        fused = self.device.type in ("cpu", "cuda") and t.precision == 32
        opt = torch.optim.AdamW(groups, betas=(0.9, 0.99), eps=1e-15, weight_decay=t.weight_decay, fused=fused)
        total, warmup, final = t.steps, t.warmup_steps, t.final_lr_factor

        def factor(step: int) -> float:
            ramp = min(1.0, (step + 1) / max(1, warmup))
            return ramp * math.pow(final, min(1.0, step / max(1, total)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["n_rays"] = self.n_rays
        checkpoint["guard"] = self.guard.state()
        if self.static and self._demand is not None:
            checkpoint["static_demand"] = self._demand  # candidates per ray, as last read back

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.n_rays = int(checkpoint.get("n_rays", self.n_rays))
        self.guard.load(checkpoint.get("guard"))
        if self.static:
            t = self.cfg.train
            self.n_rays = bucket_rays(self.n_rays, t.min_rays, t.max_rays)  # e.g. saved by a packed run
            self._demand = checkpoint.get("static_demand")
