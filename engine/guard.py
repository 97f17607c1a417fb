"""Training faults that must not lose work: non-finite steps and device out-of-memory (PROTOCOL.md, Faults).

- A step whose loss or gradient is not finite is skipped: no weight update and no Adam moment update. With the
  fused AdamW (CPU and CUDA at 32-bit precision) the skip happens on the device: the finite flag goes to the
  optimizer as ``found_inf``, the same hook ``torch.amp.GradScaler`` uses, so no step waits for the host. The count
  of bad steps in a row is read back asynchronously and acted on a step or two later on CUDA.
- ``train.guard.bad_steps`` bad steps in a row roll the weights and optimizer back to the last good checkpoint (the
  starting weights before the first one) and multiply the learning rates by ``lr_factor``; more than
  ``max_rollbacks`` rollbacks stop the run (``engine.errors.Diverged``).
- Out of memory during a step halves the rays per step (and the sample budget) and skips the step; at
  ``train.min_rays`` it ends the run with a hint (``DeviceError``, exit 1). Out of memory in chunked evaluation
  (extraction, validation) halves the chunk and starts that evaluation again (``with_memory_backoff``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor
from torch.nn.utils import get_total_norm

from . import failpoints
from .errors import DeviceError, Diverged

T = TypeVar("T")


@dataclass
class _Readback:
    """A device integer copied to the host without waiting; reused (pinned memory is slow to allocate)."""

    host: Tensor | None = None
    event: object = None
    pending: bool = False

    def start(self, value: Tensor) -> None:
        if value.device.type != "cuda":
            self.host, self.pending = value.detach().to("cpu"), True
            return
        if self.host is None:
            self.host = torch.zeros((), dtype=value.dtype, pin_memory=True)
            self.event = torch.cuda.Event()
        self.host.copy_(value.detach(), non_blocking=True)
        self.event.record()
        self.pending = True

    def poll(self) -> int | None:
        if not self.pending or (self.event is not None and not self.event.query()):
            return None
        self.pending = False
        return int(self.host)


@dataclass
class StepGuard:
    """The fault state of one training run, driven by ``NeuSSystem``'s hooks and ``train.ProgressCallback``."""

    cfg: object  # the run config (train.guard, train.min_rays, ...)
    bad_run: Tensor | None = None  # () int64 on the device: non-finite steps in a row
    readback: _Readback = field(default_factory=_Readback)
    seen_bad_run: int = 0  # the last value of bad_run that reached the host
    skip_step: bool = False  # this step's update is dropped (out of memory in backward)
    loss: Tensor | None = None  # this step's loss
    rollbacks: int = 0
    lr_scale: float = 1.0
    initial_state: dict | None = None  # the starting weights: the rollback target before the first checkpoint
    events: list[dict] = field(default_factory=list)  # protocol events for the reporter to send

    # ----------------------------------------------------------------------------------------- in the step
    def training_step(self, system, batch, batch_idx: int) -> Tensor | None:
        """``system._train_step`` with the failpoints and the out-of-memory back-off; None skips the step."""
        step = int(system.global_step) + 1  # as the progress events count: the step this call completes
        self.skip_step = False
        if self.initial_state is None:
            self.initial_state = {k: v.detach().to("cpu", copy=True) for k, v in system.state_dict().items()}
        try:
            failpoints.maybe_oom(step)
            loss = system._train_step(batch, batch_idx)
        except torch.OutOfMemoryError:
            self.back_off_memory(system, step, "the forward pass")
            self.loss = None
            return None
        self.loss = failpoints.nan_loss(loss, step)
        if self.loss is not loss:
            system.last_stats["loss"] = self.loss.detach()
        return self.loss

    def backward(self, system, loss: Tensor, *args, **kwargs) -> None:
        try:
            loss.backward(*args, **kwargs)
        except torch.OutOfMemoryError:
            system.zero_grad(set_to_none=True)  # no gradient: the optimizer leaves every weight and moment alone
            self.skip_step = True
            self.back_off_memory(system, int(system.global_step) + 1, "the backward pass")

    def after_backward(self, system) -> None:
        """Checks the loss and the gradients; a non-finite step's update is dropped (see the module docstring)."""
        grads = [p.grad for p in system.parameters() if p.grad is not None]
        if not grads or self.loss is None:
            return
        bad = ~torch.isfinite(self.loss.detach())
        if "16-mixed" not in str(system.trainer.precision):  # fp16's GradScaler handles its own overflowing grads
            bad = bad | ~torch.isfinite(get_total_norm(grads))
        optimizer = system.trainer.optimizers[0]
        if optimizer.defaults.get("fused"):
            optimizer.found_inf = bad.float()  # fused AdamW skips params, moments and its step count when 1
        elif bad.item():  # other optimizers / precisions: decide on the host (no grads: no update)
            system.zero_grad(set_to_none=True)
        self.count(bad)

    def count(self, bad: Tensor) -> None:
        """Adds a step's non-finite flag (a () bool on the device) to the run of bad steps, read back lagged."""
        self.bad_run = bad.long() if self.bad_run is None else (self.bad_run + 1) * bad
        if not self.readback.pending:
            self.readback.start(self.bad_run)

    # ----------------------------------------------------------------------------------------- between steps
    def non_finite_run(self) -> int:
        """Bad steps in a row, as last seen on the host (it lags a step or two on CUDA)."""
        value = self.readback.poll()
        if value is not None:
            self.seen_bad_run = value
        return self.seen_bad_run

    def rollback_due(self) -> bool:
        return self.non_finite_run() >= int(self.cfg.train.guard.bad_steps)

    def roll_back(self, system, state: dict | None, step: int, ckpt_step: int) -> None:
        """Restores the weights and optimizer moments of ``state`` (a checkpoint; None: the starting weights) and
        lowers the learning rates. Raises Diverged once the rollbacks are used up."""
        g = self.cfg.train.guard
        self.rollbacks += 1
        if self.rollbacks > g.max_rollbacks:
            raise Diverged(f"training diverged: non-finite loss or gradients again after {g.max_rollbacks} "
                           f"rollbacks (step {step}); the last good checkpoint (step {ckpt_step}) is kept; lower "
                           "train.lr and train.lr_geometry_encoding, or check the data")
        trainer = system.trainer
        optimizer = trainer.optimizers[0]
        lrs = [group["lr"] for group in optimizer.param_groups]
        if state is None:
            system.load_state_dict(self.initial_state)
            optimizer.state.clear()
        else:
            system.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer_states"][0])
        factor = g.lr_factor
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr * factor
        for config in trainer.lr_scheduler_configs:  # LambdaLR: lr = base_lr * schedule(step)
            config.scheduler.base_lrs = [lr * factor for lr in config.scheduler.base_lrs]
        self.lr_scale *= factor
        self.bad_run = None
        self.seen_bad_run = 0
        self.readback = _Readback()
        if hasattr(optimizer, "found_inf"):
            del optimizer.found_inf
        self.events.append({"event": "rollback", "step": step, "to_step": ckpt_step, "rollbacks": self.rollbacks,
                            "lr_scale": self.lr_scale, "bad_steps": g.bad_steps})

    def back_off_memory(self, system, step: int, where: str) -> None:
        """Halves the rays per step (and the sample budget they aim at); at ``train.min_rays`` gives up."""
        t = self.cfg.train
        floor = t.min_rays
        if system.n_rays <= floor:
            raise DeviceError(f"out of memory on {system.device} in {where} of step {step} even with "
                              f"{system.n_rays} rays per step (train.min_rays); lower train.min_rays, "
                              "model.num_samples_per_ray or model.geometry.encoding.log2_hashmap_size, or use "
                              "--device cpu", exit_code=1)
        system.zero_grad(set_to_none=True)
        if system.device.type == "cuda":
            torch.cuda.empty_cache()
        old = system.n_rays
        system.n_rays = max(floor, old // 2)
        t.max_rays = max(floor, min(t.max_rays, system.n_rays))
        t.target_samples = max(1, t.target_samples // 2)
        self.events.append({"event": "memory_backoff", "step": step, "rays": system.n_rays, "from_rays": old,
                            "target_samples": t.target_samples, "setting": "train.target_samples"})

    def state(self) -> dict:
        return {"rollbacks": self.rollbacks, "lr_scale": self.lr_scale}

    def load(self, saved: dict | None) -> None:
        if saved:
            self.rollbacks, self.lr_scale = int(saved["rollbacks"]), float(saved["lr_scale"])


def with_memory_backoff(run: Callable[[int], T], chunk: int, setting: str, where: str,
                        emit: Callable[..., None] | None = None, floor: int = 1024, hint: str | None = None) -> T:
    """``run(chunk)``; when the device runs out of memory, halves ``chunk`` and runs it again from the start (a
    ``memory_backoff`` event each time); at ``floor`` ends with DeviceError (exit 1) naming ``setting`` (``hint``:
    what to do, default "lower <setting>").

    For chunked evaluation (mesh extraction, validation renders): fewer points per call, same result.
    """
    while True:
        try:
            failpoints.maybe_oom(where)
            return run(chunk)
        except torch.OutOfMemoryError:
            if chunk <= floor:
                raise DeviceError(f"out of memory on the device in {where} even with chunks of {chunk}; "
                                  f"{hint or 'lower ' + setting} or use --device cpu", exit_code=1) from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            chunk = max(floor, chunk // 2)
            if emit is not None:
                emit("memory_backoff", stage=where, chunk=chunk, setting=setting)


def weights_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter and buffer is finite (one device sync)."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True
