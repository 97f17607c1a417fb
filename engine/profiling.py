"""Per-phase wall-clock profile of training steps (used by the benchmark; off in normal runs).

When disabled, ``mark`` does nothing, so normal runs pay no device synchronisation.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch


class PhaseTimer:
    def __init__(self) -> None:
        self.enabled = False
        self.device: torch.device | None = None
        self.totals: dict[str, float] = defaultdict(float)
        self.steps = 0
        self._t = 0.0

    def enable(self, device: torch.device) -> None:
        self.enabled, self.device = True, device

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device is not None and self.device.type == "mps":
            torch.mps.synchronize()

    def start(self) -> None:
        if self.enabled:
            self._sync()
            self._t = time.perf_counter()

    def mark(self, phase: str) -> None:
        """Charges the time since the previous mark to ``phase``."""
        if self.enabled:
            self._sync()
            now = time.perf_counter()
            self.totals[phase] += now - self._t
            self._t = now

    def summary_ms(self) -> dict[str, float]:
        """Mean milliseconds per step for each phase."""
        n = max(1, self.steps)
        return {k: round(v / n * 1000, 3) for k, v in self.totals.items()}


# Called after every training step (NeuSSystem.on_train_batch_end): lets the benchmark step a profiler schedule.
STEP_LISTENERS: list = []


class OpCounter:
    """Counts the operators one training step runs, a proxy for launch overhead (each eager aten op is at least one
    kernel launch on a GPU; a compiled graph shows up as a few fused kernels instead).

    Profiles ``steps`` steps after ``skip`` steps (compilation and warm-up) with torch.profiler. Results per step:
    ``aten_ops`` (every ``aten::`` call, nested ones included), ``top_level_aten_ops`` (the calls made by Python or
    by a compiled graph, not by another aten op) and, on CUDA, ``cuda_launches`` (kernel launches seen by the
    CUDA runtime).
    """

    def __init__(self, skip: int = 20, steps: int = 5, cuda: bool = False) -> None:
        from torch.profiler import ProfilerActivity, profile, schedule

        self.steps = steps
        self.result: dict[str, float] = {}
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self.profiler = profile(activities=activities, schedule=schedule(wait=skip, warmup=1, active=steps),
                                on_trace_ready=self._count)

    def _count(self, prof) -> None:
        events = list(prof.events())
        aten = [e for e in events if e.name.startswith("aten::")]
        top = [e for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
        launches = [e for e in events if e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")]
        self.result = {"aten_ops": round(len(aten) / self.steps, 1),
                       "top_level_aten_ops": round(len(top) / self.steps, 1)}
        if launches:
            self.result["cuda_launches"] = round(len(launches) / self.steps, 1)

    def __enter__(self) -> OpCounter:
        self.profiler.__enter__()
        STEP_LISTENERS.append(self.profiler.step)
        return self

    def __exit__(self, *exc) -> None:
        STEP_LISTENERS.remove(self.profiler.step)
        self.profiler.__exit__(*exc)
