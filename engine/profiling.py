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
