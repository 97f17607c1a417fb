"""Memory plan of a fit: an estimate of its peak from the photo count and size and the model, before any pixel is
loaded, and the smallest extra downscale that fits the machine (host RAM on the CPU, device memory on CUDA).

What grows with the photos is counted exactly (uint8 RGB + bool mask per pixel, ``datasets.scene.pixel_bytes``);
the photo colouring's per-pixel maps and the per-sample working memory of a training step are measured factors
(see ``engine/BENCHMARKS.md``, 2026-12-02 "fit memory"): both are upper bounds of what was measured on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from datasets.cameras import downscaled_size
from datasets.scene import pixel_bytes

from .config_schema import RunConfig
from .rss import current_rss_bytes

# Measured factors (2026-12-02, CPU, real DTU scan 65 subsets, see BENCHMARKS.md), rounded up:
PHOTO_COLOUR_BYTES_PER_PIXEL = 20
"""Photo colouring (``engine.mesh.photo.prepare_views``): depth, feather and coverage maps of each colouring view
(``export.color_views`` at most); measured 16, then 14 (2026-12-04) bytes per view pixel beyond the photos; an upper
bound for photos over ``VISIBILITY_MAX_PIXELS``, whose maps are made smaller."""
PHOTO_COLOUR_FIXED_BYTES = 320 * 2**20
"""Photo colouring's part that does not grow with the colouring views (rasteriser and texture buffers, one view's
transients); 256 MiB fell 21 MiB short of a fit colouring one 1600x1200 view (2026-12-04)."""
FIT_OVERHEAD_BYTES = 160 * 2**20
"""What a fit holds beyond the process at planning time, the photos, the model and its larger phase (the trainer,
validation); measured ~110 MiB."""
STEP_BYTES_PER_SAMPLE = 8192
"""Working memory of one training step (forward and backward of the fields) per ray sample (``train.target_samples``);
measured 7.4 KB on the CPU with the ``fast`` preset."""
EXTRACT_BYTES_PER_CELL = 12
"""Marching cubes over ``export.resolution``^3 cells: the SDF grid (float32) and the chunks evaluated into it."""
BYTES_PER_PARAMETER = 16
"""A float32 weight, its gradient and Adam's two moments."""
BUDGET_SHARE = 0.85
"""Share of the available memory a fit may plan to use (the rest is headroom for the estimate's error)."""
MIN_SIDE_PX = 64
"""The automatic downscale stops before the shorter image side falls below this."""


@dataclass(frozen=True)
class MemoryPlan:
    """The ``memory`` event's fields: the chosen downscale and what it is expected to need."""

    downscale: int
    requested_downscale: int
    resolution: tuple[int, int]
    estimate_bytes: int
    budget_bytes: int
    where: str  # "host" (the CPU's RAM) or "device" (CUDA memory)

    def event(self) -> dict:
        return {"downscale": self.downscale, "requested_downscale": self.requested_downscale,
                "resolution": list(self.resolution), "estimate_bytes": self.estimate_bytes,
                "budget_bytes": self.budget_bytes, "where": self.where}


def _cgroup_free_bytes() -> int | None:
    """Room left under a cgroup v2 memory limit (containers), None when unlimited or unknown."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def host_available_bytes() -> int:
    """Memory the system can give this process without swapping: MemAvailable (Linux), capped by a cgroup limit;
    elsewhere half the physical memory."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    cgroup = _cgroup_free_bytes()
    return avail if cgroup is None else min(avail, cgroup)


def model_parameter_count(cfg_model) -> int:
    """Parameters of the model a config builds, counted on the meta device (nothing allocated)."""
    from .model import NeuSModel

    with torch.device("meta"):
        model = NeuSModel(cfg_model)
    return sum(p.numel() for p in model.parameters())


def fit_estimate(cfg: RunConfig, n_views: int, n_train: int, width: int, height: int, has_masks: bool, n_params: int,
                 on_device: bool, base_bytes: int) -> int:
    """Peak bytes of a fit at this image size: host RAM (``on_device`` False) or CUDA memory (True).

    Host: the process now (``base_bytes``) + a fixed overhead + every view's pixels + the model's training state +
    the larger of a training step's working memory and the export (marching cubes, then photo colours over the
    training views, which run after training). Device: the training views' pixels instead of all, no ``base_bytes``.
    """
    photos = pixel_bytes(n_train if on_device else n_views, width, height, has_masks)
    step = cfg.train.target_samples * STEP_BYTES_PER_SAMPLE
    export = cfg.export.resolution ** 3 * EXTRACT_BYTES_PER_CELL
    if cfg.export.color == "photos":
        colouring = min(n_train, cfg.export.color_views)
        export = max(export, PHOTO_COLOUR_FIXED_BYTES + colouring * width * height * PHOTO_COLOUR_BYTES_PER_PIXEL)
    fixed = 0 if on_device else base_bytes + FIT_OVERHEAD_BYTES
    return fixed + photos + n_params * BYTES_PER_PARAMETER + max(step, export)


def plan_fit_memory(cfg: RunConfig, n_views: int, n_train: int, width: int, height: int, has_masks: bool,
                    device: torch.device) -> MemoryPlan:
    """The smallest downscale (from ``cfg.data.downscale`` up) whose estimate fits the budget.

    Budget: ``data.memory_budget_gb`` when set, else ``BUDGET_SHARE`` of what is available (host RAM, or free CUDA
    memory on a CUDA device, where the host must also hold every view's pixels).

    Raises:
        MemoryError: the one-line reason, when even the smallest size does not fit.
    """
    on_device = device.type == "cuda"
    base = current_rss_bytes()
    n_params = model_parameter_count(cfg.model)
    given = cfg.data.memory_budget_gb
    if given > 0:
        budget = int(given * 2**30)
    elif on_device:
        budget = int(BUDGET_SHARE * torch.cuda.mem_get_info(device)[0])
    else:
        budget = int(BUDGET_SHARE * host_available_bytes()) + base
    host_budget = int(BUDGET_SHARE * host_available_bytes()) + base
    requested = cfg.data.downscale
    factor = requested
    while True:
        w, h = downscaled_size(width, height, factor)
        need = fit_estimate(cfg, n_views, n_train, w, h, has_masks, n_params, on_device, base)
        host_need = need if not on_device else base + pixel_bytes(n_views, w, h, has_masks)
        if need <= budget and host_need <= host_budget:
            return MemoryPlan(factor, requested, (w, h), need, budget, "device" if on_device else "host")
        if min(downscaled_size(width, height, factor + 1)) < MIN_SIDE_PX:
            raise MemoryError(
                f"{n_views} photos of {width}x{height} do not fit in memory even at downscale {factor} "
                f"({w}x{h}): the fit needs {need / 2**30:.1f} GB, {budget / 2**30:.1f} GB available "
                f"{'on the device' if on_device else 'in RAM'}; use fewer photos or a machine with more memory")
        factor += 1
