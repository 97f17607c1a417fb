"""The static sampler's whole training step as one function of device tensors (issue 21).

Ray draw, marching, both fields, rendering, losses, gradients and the AdamW update run in ``FusedStep.__call__``
without one host sync or data-dependent shape, so ``torch.compile(fullgraph=True)`` turns the step into one graph
(forward, backward and optimizer together) and ``mode="reduce-overhead"`` replays it as one CUDA graph. What needs
the host stays outside, in ``NeuSSystem.training_step``: the occupancy refresh and level schedule (in-place buffer
updates every N steps), the ray-count adaptation (read back asynchronously), the learning rates and loss weights
(copied into device tensors, so a new value is not a new graph), logging and checkpoints.

The step works on the parameters and the optimizer state in place: the Lightning optimizer (AdamW) keeps owning
its state, so checkpoints and resumes are unchanged; its own ``step`` then finds no gradients and does nothing
(Lightning only counts the step). One process only: under DDP the gradients would need DDP's all-reduce hooks,
which this step bypasses, so DDP keeps the ordinary step.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils import get_total_norm

# Whether dynamo can trace torch.autograd.grad into the step's graph (torch 2.13 can; without it the step is
# compiled in pieces around the backward, which gives the same numbers).
TRACES_AUTOGRAD = hasattr(torch._dynamo.config, "trace_autograd_ops")


def configure_dynamo() -> None:
    """Process-wide torch.compile settings for the fused step: trace the backward into the graph, and keep Python
    floats as constants (every float the step sees is fixed for the run: learning rates and loss weights are
    tensors), which saves dynamo a second trace of the whole step (measured on the CPU: one trace instead of two)."""
    if TRACES_AUTOGRAD:
        torch._dynamo.config.trace_autograd_ops = True
    torch._dynamo.config.specialize_float = True


class FusedStep:
    """One training step of a ``NeuSSystem`` with the static sampler, as a callable that only touches tensors.

    ``optimizer``: the system's ``torch.optim.AdamW``; its groups' learning rates are read on the host every step
    (``set_schedules``) into a device tensor, and its per-parameter state (step, exp_avg, exp_avg_sq) is created
    here in the layout of AdamW's fused kernel (the step count a float32 on the device), which the step uses too.
    """

    def __init__(self, system, optimizer: torch.optim.Optimizer, loss_names: list[str]) -> None:
        self.system = system
        self.optimizer = optimizer
        dev = system.device
        self.groups = [[p for p in g["params"] if p.requires_grad] for g in optimizer.param_groups]
        self.params = [p for g in self.groups for p in g]
        self.ensure_state()
        self.lrs = torch.zeros(len(self.groups), device=dev)
        self.loss_weights = {name: torch.zeros((), device=dev) for name in loss_names}
        self.loss_factor = torch.ones((), device=dev)  # NaN under the nan_loss failpoint (engine/failpoints.py)

    def ensure_state(self) -> None:
        """AdamW's state for every parameter (new, or cleared by a rollback to the starting weights), with the step
        count on the device as the fused kernel keeps it (a checkpoint saved by another path may hold it on the
        CPU)."""
        for p in self.params:
            state = self.optimizer.state[p]
            if not state:
                state.update(step=torch.zeros((), dtype=torch.float32, device=p.device),
                             exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            elif state["step"].device != p.device or state["step"].dtype != torch.float32:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)

    def set_schedules(self, weights: dict[str, float]) -> None:
        """Copies this step's learning rates and loss weights into the step's device tensors (no sync: host to
        device copies of numbers)."""
        self.lrs.copy_(torch.tensor([float(g["lr"]) for g in self.optimizer.param_groups]))
        for name, buf in self.loss_weights.items():
            buf.fill_(weights.get(name, 0.0))

    def __call__(self, n_rays: int) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor, Tensor, Tensor]:
        """Draws ``n_rays`` rays, renders, back-propagates and updates the parameters in place, unless the loss or
        a gradient is not finite (then nothing changes: the finite-step guard of engine/guard.py, on the device).

        Returns (detached 0-d device tensors): loss, loss terms {name: value}, valid samples, candidates per ray,
        squared error over the complete rays, and whether the step was non-finite (bool).
        """
        system = self.system
        origins, dirs, rgb, mask, bg = system.draw_rays(n_rays)
        loss, terms, n_samples, per_ray, mse = system.forward_step(origins, dirs, rgb, mask, bg, self.loss_weights)
        loss = loss * self.loss_factor
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params, strict=True)]
        bad = ~torch.isfinite(loss.detach()) | ~torch.isfinite(get_total_norm(grads))
        self._adamw(grads, bad)
        return loss.detach(), terms, n_samples, per_ray, mse, bad

    @torch.no_grad()
    def _adamw(self, grads: list[Tensor], skip: Tensor) -> None:
        """AdamW (decoupled weight decay, bias-corrected) on every group, as ``torch.optim.AdamW`` computes it, on
        its state. Written out because none of torch's AdamW paths traces into one graph everywhere: ``step``
        inserts graph breaks on purpose, the fused kernel is hidden from dynamo (and has no fake kernel for a
        tensor learning rate), and the capturable foreach path refuses CPU tensors outside compiled code. With the
        learning rate a device tensor the update is pure tensor arithmetic, which inductor fuses. ``skip`` (a () bool)
        leaves weights, moments and step counts as they are, as ``found_inf`` does for the fused kernel."""
        i = 0
        for k, (group, params) in enumerate(zip(self.optimizer.param_groups, self.groups, strict=True)):
            lr, (beta1, beta2) = self.lrs[k], group["betas"]
            weight_decay, eps = float(group["weight_decay"]), float(group["eps"])
            for p, g in zip(params, grads[i:i + len(params)], strict=True):
                state = self.optimizer.state[p]
                step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
                step.add_((~skip).float())
                avg = exp_avg.lerp(g, 1 - beta1)
                avg_sq = (exp_avg_sq * beta2).addcmul_(g, g, value=1 - beta2)
                denom = (avg_sq.sqrt() / (1 - beta2**step).sqrt()).add_(eps)
                new = p * (1 - lr * weight_decay) if weight_decay != 0 else p
                new = new - lr / (1 - beta1**step) * avg / denom
                for old, value in ((exp_avg, avg), (exp_avg_sq, avg_sq), (p, new)):
                    old.copy_(torch.where(skip, old, value))
            i += len(params)
