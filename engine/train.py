"""The ``fit`` job: load a scene, train with Lightning, extract and export the mesh, report progress."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

import datasets

from . import failpoints
from .atomic_files import atomic_path, keep_previous, remove_temporaries
from .cancel import REQUEST, CancelToken
from .config import export_settings, resolve_accelerators, resolve_auto
from .device import device_name, select_device
from .errors import Cancelled, DeviceError, Diverged, InputError
from .export import export_mesh, frame_matrix, silhouette_fields, write_preview_mesh
from .fit_setup import FitRequest, Prepared, load_request
from .guard import weights_finite
from .jobs import OTHER_RANK_DONE
from .memory import MemoryPlan, plan_fit_memory
from .protocol import PROTOCOL_VERSION, Emitter, done_timings
from .ranks import is_first_rank
from .run_dir import RunDir, config_errors_as_input, load_scene, load_weights, read_checkpoint, split_views
from .system import NeuSSystem, RaySource
from .validate import validation_metrics


def save_checkpoint(trainer: L.Trainer, run: RunDir) -> Path | None:
    """Writes ``checkpoints/last.ckpt`` atomically, keeping the one it replaces as ``prev.ckpt`` (a kill at any
    moment leaves both valid). Weights that are not finite are never saved: it returns None instead.

    Under DDP every rank must call it at the same step (Lightning's save ends in a barrier); only rank 0 writes.
    """
    path = run.checkpoint
    if not weights_finite(trainer.lightning_module):  # the same answer on every rank: DDP keeps the weights equal
        return None
    if not trainer.is_global_zero:
        trainer.save_checkpoint(path)  # Lightning writes nothing on this rank; it only joins the barrier
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        trainer.save_checkpoint(tmp)
        if path.is_file():
            keep_previous(path, run.previous_checkpoint)
            failpoints.maybe_kill("checkpoint_rotate")
    return path


def keep_own_sigterm(trainer: L.Trainer) -> None:
    """SIGTERM stays a stop request like SIGINT (engine.liveness.watch) for the whole of ``trainer.fit``.

    Lightning's fit otherwise puts its own SIGTERM handler first, which ends fit with SystemExit (exit 0, no
    checkpoint of the step, no ``cancelled``); putting ours back at ``on_train_start`` would still leave Lightning's
    flag set by a SIGTERM that came between the two. Its signal connector is only needed for SLURM requeueing.
    """
    connector = getattr(trainer, "_signal_connector", None)
    if connector is not None and hasattr(connector, "register_signal_handlers"):
        connector.register_signal_handlers = lambda: None


class ProgressCallback(L.Callback):
    """Reports progress, honours cancel requests within one step, writes periodic checkpoints and previews."""

    def __init__(self, emitter: Emitter, cancel: CancelToken, run: RunDir, cfg, total: int, start_step: int,
                 on_preview=None, on_validate=None) -> None:
        self.emitter, self.cancel, self.run, self.cfg = emitter, cancel, run, cfg
        self.total, self.start_step = total, start_step
        self.on_preview, self.on_validate = on_preview, on_validate
        self.t0 = time.monotonic()
        self.last_ckpt_time = time.monotonic()
        self.cancelled = False
        self.samples_total = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        failpoints.maybe_kill(step)
        stop, checkpoint_due, rollback = self._rank_zero_decisions(trainer, pl_module, step)
        if stop:
            self.cancelled = True
            trainer.should_stop = True
        if rollback:
            self._roll_back(trainer, pl_module, step)
        self._send_guard_events(pl_module)
        if trainer.is_global_zero:  # with DDP, only the first process reports and writes files
            self._report(trainer, pl_module, step)
        if self.cancelled:
            return
        if checkpoint_due and not rollback:
            if save_checkpoint(trainer, self.run) is None:  # the guard missed it (e.g. a bf16 overflow)
                self._roll_back(trainer, pl_module, step)
                self._send_guard_events(pl_module)
            self.last_ckpt_time = time.monotonic()
        if not trainer.is_global_zero:
            return
        t = self.cfg.train
        if self.on_preview is not None and t.preview_every > 0 and step % t.preview_every == 0:
            self.on_preview(step)
        if self.on_validate is not None and t.val_every > 0 and step % t.val_every == 0:
            try:
                self.on_validate(step)
            except Cancelled:  # stopped mid-validation: the next step boundary stops training, saving a checkpoint
                pass

    def _roll_back(self, trainer, pl_module, step: int) -> None:
        """Back to the last good checkpoint (engine.guard): ``last.ckpt`` only ever holds finite weights."""
        state = self.run.read_checkpoint(resume=True) if self.run.has_checkpoint() else None
        pl_module.guard.roll_back(pl_module, state, step, 0 if state is None else int(state["global_step"]))

    def _send_guard_events(self, pl_module) -> None:
        events, pl_module.guard.events = pl_module.guard.events, []
        for event in events:
            self.emitter.emit(**event)
            self.emitter.log(" ".join(f"{k}={v}" for k, v in event.items()))

    def _rank_zero_decisions(self, trainer, pl_module, step: int) -> tuple[bool, bool, bool]:
        """(stop now, write a checkpoint now, roll back now), as rank 0 sees them, for every rank.

        Under DDP rank 0's stop request and clock decide for all (one small broadcast a step, as Lightning's own
        timed checkpoints do): a rank that stopped, or skipped a checkpoint's collective save, while the others
        did not would leave them waiting in a collective forever.
        """
        t = self.cfg.train
        every_steps, every_s = t.checkpoint_every_steps, t.checkpoint_every_seconds
        stop = trainer.is_global_zero and self.cancel.is_set()
        due = step < self.total and ((every_steps > 0 and step % every_steps == 0)
                                     or (every_s > 0 and time.monotonic() - self.last_ckpt_time > every_s))
        rollback = pl_module.guard.rollback_due()
        if trainer.world_size > 1:
            stop, due, rollback = trainer.strategy.broadcast((stop, due, rollback), src=0)
        return stop, due, rollback

    def _report(self, trainer, pl_module, step: int) -> None:
        """A ``progress`` event when one is due (the last step always reports)."""
        samples = pl_module.last_stats.get("samples", 0)
        # A device tensor with the static sampler: summed on the device, read once at the end (no per-step sync).
        self.samples_total += samples.detach() if isinstance(samples, torch.Tensor) else int(samples)
        if self.emitter.progress_due(force=step >= self.total):
            stats = pl_module.stats()
            elapsed = time.monotonic() - self.t0
            eta = elapsed / max(1, step - self.start_step) * (self.total - step)
            self.emitter.progress(force=True, step=step, total=self.total, loss=stats.get("loss"),
                                  psnr=stats.get("psnr"), rays=stats.get("rays"), samples_per_step=stats.get("samples"),
                                  elapsed_s=round(elapsed, 2), eta_s=round(eta, 1), inv_s=stats.get("inv_s"))


def _trainer_kwargs(device: torch.device, cfg) -> dict:
    accel = {"cpu": "cpu", "cuda": "gpu", "mps": "mps"}[device.type]
    devices: int | list[int] = cfg.train.devices
    if device.type == "cuda" and devices == 1:
        devices = [device.index or 0]
    if device.type == "mps":  # one Apple GPU; on the CPU, devices > 1 means that many gloo processes
        devices = 1
    strategy = cfg.train.strategy
    if strategy == "auto" and isinstance(devices, int) and devices > 1:
        strategy = "ddp"
    return dict(accelerator=accel, devices=devices, strategy=strategy, precision=cfg.train.precision,
                max_steps=cfg.train.steps, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                limit_val_batches=0, log_every_n_steps=10**9, deterministic=False)


def plan_memory(req: FitRequest, cfg, cams: datasets.CameraSet, device: torch.device) -> MemoryPlan:
    """Raises ``cfg.data.downscale`` until the fit's memory estimate fits (``engine.memory``); exit 2 if none does."""
    n_train = len(split_views(cams.n_views, cfg.data.holdout_every)[0])
    has_masks = cams.mask_paths is not None
    try:
        plan = plan_fit_memory(cfg, cams.n_views, n_train, cams.width, cams.height, has_masks, device)
    except MemoryError as exc:
        raise InputError(f"{req.data_dir}: {exc}") from None
    cfg.data.downscale = plan.downscale  # recorded in config.yaml: export and render load the same size
    return plan


def run_fit(req: FitRequest, emitter: Emitter, cancel: CancelToken, prepared: Prepared | None = None) -> dict:
    """Runs the whole job. Returns the ``done`` (or ``cancelled``) event's fields; raises EngineError/Cancelled.
    ``prepared``: what :func:`engine.fit_setup.load_request` returned for ``req``, when the caller already ran it.

    In a DDP rank other than 0 (a copy of the command started by Lightning) it trains, joins the checkpoint saves and
    returns ``{"event": OTHER_RANK_DONE}``; the caller reports nothing for it.
    """
    t_start = time.monotonic()
    run = RunDir(req.run_dir)
    cfg, cams = prepared if prepared is not None else load_request(req, emitter)
    req.run_dir.mkdir(parents=True, exist_ok=True)
    if is_first_rank():  # what a killed run left half-written (the DDP copies start while rank 0 writes)
        for tmp in remove_temporaries(req.run_dir):
            emitter.log(f"removed {tmp}, left half-written by an earlier run that was killed")
    if cams is not None:  # export.frame=metres without a true scale (scale.json) is bad input, before any pixel
        frame_matrix(cfg.export.frame, cams)
    device = select_device(cfg.device)
    if not req.resume:
        resolve_auto(cfg, cams.mask_paths is not None, device.type)
        resolve_accelerators(cfg, device)
        plan = plan_memory(req, cfg, cams, device)
        emitter.emit("memory", **plan.event())
        if plan.downscale != plan.requested_downscale:
            w, h = plan.resolution
            emitter.emit("warning", message=f"images downscaled {plan.downscale}x to {w}x{h} so that the fit fits in "
                         f"memory ({plan.estimate_bytes / 2**30:.1f} of {plan.budget_bytes / 2**30:.1f} GB, "
                         f"{plan.where})", left_out=[])
    scene = load_scene(req.data_dir, cfg.data)
    for note in () if req.resume else scene.region_notes:  # the add-on shows these beside the region too
        emitter.emit("warning", message=f"automatic region uncertain: {note}", left_out=[], about="region")
    if cancel.is_set():
        raise Cancelled()
    train_idx, held_idx = split_views(scene.n_views, cfg.data.holdout_every)
    rays = RaySource(scene.images, scene.masks, scene.K, scene.c2w, views=train_idx)
    L.seed_everything(cfg.seed, verbose=False)
    # Nothing is written until the model, the checkpoint and the trainer are known to work with this config.
    with config_errors_as_input(run.config_file if req.resume else None):
        system = NeuSSystem(cfg, rays)
    for note in (system.attach_point_prior(req.data_dir, scene, train_idx), system.attach_photo_sweep()):
        if note is not None:
            emitter.log(note)
    start_step = 0
    ckpt = run.checkpoint if req.resume else None
    saved_state = None
    if ckpt is not None:
        saved_state = read_checkpoint(ckpt, resume=True)
        load_weights(system, saved_state["state_dict"], ckpt)
        start_step = int(saved_state["global_step"])
    total = cfg.train.steps
    t_load = time.monotonic() - t_start
    enc = cfg.model.geometry.encoding
    emitter.emit("start", version=PROTOCOL_VERSION, command="fit", data_dir=str(req.data_dir.resolve()),
                 run_dir=str(req.run_dir.resolve()), preset=cfg.preset, device=str(device),
                 device_name=device_name(device), cpu_threads=torch.get_num_threads(), total_steps=total,
                 start_step=start_step,
                 config={"format": scene.format, "n_images": scene.n_views, "n_train": int(len(train_idx)),
                         "resolution": [scene.width, scene.height], "masks": bool(cfg.data.use_mask),
                         "encoding": f"hashgrid {enc.n_levels}x{enc.n_features_per_level} 2^{enc.log2_hashmap_size}",
                         "grad_mode": cfg.model.geometry.grad_mode,
                         "samples_per_step": cfg.train.target_samples})

    def preview(step: int) -> None:
        path = write_preview_mesh(system.model, cfg, req.run_dir, step)
        if path is not None:
            emitter.emit("preview_mesh", step=step, path=str(path.resolve()))

    metrics: dict = {}

    def validate(step: int) -> None:
        if len(held_idx) and metrics.get("step") != step:
            metrics["step"] = step
            metrics.update(validation_metrics(system.model, scene, held_idx, cfg, emitter.emit))
            emitter.emit("validation", step=step, psnr=metrics["psnr"], mask_iou=metrics["mask_iou"],
                         n_views=int(min(len(held_idx), cfg.train.val_max_views)))

    callback = ProgressCallback(emitter, cancel, run, cfg, total, start_step, preview, validate)
    system.stage_hook = lambda stage: emitter.emit("stage", stage=stage)  # "compiling" around a compiled first step
    if req.profile and req.phase_timer:
        system.model.timer.enable(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        trainer = L.Trainer(callbacks=[callback], **_trainer_kwargs(device, cfg))
    except (ValueError, MisconfigurationException) as exc:  # e.g. train.strategy, which Lightning checks
        raise InputError(f"bad config: {str(exc).splitlines()[0]}") from exc
    keep_own_sigterm(trainer)
    if is_first_rank():  # not in the copies of this command that Lightning's DDP launcher starts
        run.save_config(cfg)
    emitter.emit("stage", stage="training")
    t_train0 = time.monotonic()
    if start_step < total:
        try:
            trainer.fit(system, ckpt_path=str(ckpt) if ckpt is not None else None)
        except DeviceError:  # out of memory even at the fewest rays: keep the last completed step
            save_checkpoint(trainer, run)
            raise
    t_train = time.monotonic() - t_train0
    step = max(int(trainer.global_step), start_step)
    ckpt_out = save_checkpoint(trainer, run) if start_step < total else run.checkpoint
    if ckpt_out is None:
        raise Diverged(f"training ended with non-finite weights at step {step}; the last good checkpoint "
                       f"{run.checkpoint} is kept; lower train.lr and train.lr_geometry_encoding")
    if not trainer.is_global_zero:  # DDP: rank 0 alone validates, exports and reports
        return {"event": OTHER_RANK_DONE, "step": step}
    model = system.model.to(device).eval()

    def cancelled(reason: str | None, export: str | None, mesh: Path | None = None) -> dict:
        return {"event": "cancelled", "step": step, "checkpoint": str(ckpt_out.resolve()),
                "mesh": None if mesh is None else str(mesh.resolve()), "reason": reason or REQUEST, "export": export}

    if callback.cancelled:
        reason = cancel.reason
        # Export on Cancel answers a user's request; a parent that is gone reads no mesh (`export` makes it later).
        if not (req.export_on_cancel and reason == REQUEST):
            return cancelled(reason, None)
        cancel.rearm()  # a second request stops the export (engine.liveness.tick)
        try:
            files = export_mesh(model, cfg, scene, req.run_dir, emitter, export_settings(cfg))
        except Cancelled as exc:
            emitter.emit("warning", message=f"export on cancel stopped by a second cancel ({cancel.reason}): "
                         "no new mesh", left_out=[])
            return cancelled(reason, "cancelled", getattr(exc, "files", {}).get("ply"))
        return cancelled(reason, "done", files.get("ply"))

    try:
        if len(held_idx):
            validate(step)
        files = export_mesh(model, cfg, scene, req.run_dir, emitter, export_settings(cfg),
                            timings := {})
    except Cancelled as exc:  # a stop during the final validation or export: the checkpoint is saved
        return cancelled(cancel.reason, "cancelled", getattr(exc, "files", {}).get("ply"))
    result = {"event": "done", "mesh": str(files["ply"].resolve()),
              "files": {k: str(v.resolve()) for k, v in files.items()},
              "steps": step,
              "timings": done_timings(timings, time.monotonic() - t_start, load_s=t_load, train_s=t_train)}
    if metrics:
        result["validation"] = {k: v for k, v in metrics.items() if k != "step"}
    if "silhouette" in timings:
        result.update(silhouette_fields(timings["silhouette"]))
    if "fidelity" in timings:
        result["fidelity"] = timings["fidelity"]
    if req.profile:
        result["profile_ms_per_step"] = system.model.timer.summary_ms()
        result["device"] = str(device)
        result["device_name"] = device_name(device)
        result["mean_samples_per_step"] = float(callback.samples_total) / max(1, step - start_step)
        if device.type == "cuda":
            result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return result
