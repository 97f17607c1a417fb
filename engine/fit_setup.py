"""What a fit is asked for, and its config and cameras, checked before anything heavy loads.

Kept apart from ``engine.train`` so that a bad request (a missing folder, a bad ``--set``, unreadable cameras) is
answered before Lightning is imported, which alone takes seconds of CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import datasets

from .config import build_config
from .errors import InputError
from .protocol import Emitter
from .run_dir import RunDir, config_errors_as_input

Prepared = tuple  # (resolved config, the cameras at full size or None on --resume)


@dataclass
class FitRequest:
    """``engine fit``'s settings (the command line's flags; bench.py builds one too)."""

    data_dir: Path
    run_dir: Path
    format: str = "auto"
    preset: str = "auto"
    steps: int | None = None
    device: str = "auto"
    config_file: str | None = None
    overrides: list[str] = field(default_factory=list)
    resume: bool = False
    export_on_cancel: bool = False
    profile: bool = False  # benchmark figures in the result, with per-phase timings unless phase_timer is off
    phase_timer: bool = True  # the per-phase timer synchronises the device at every phase: off to time sync-free runs


def load_request(req: FitRequest, emitter: Emitter) -> Prepared:
    """The ``loading`` stage's first part: the request checked and its config resolved (:func:`prepare`)."""
    emitter.emit("stage", stage="loading")
    return prepare(req)


def prepare(req: FitRequest) -> Prepared:
    """Builds the resolved config (or the saved one on ``--resume``); also returns the cameras at full size (None on
    ``--resume``), which size the memory plan before any pixel is loaded."""
    if not req.data_dir.is_dir():
        raise InputError(f"{req.data_dir}: " + ("not a folder" if req.data_dir.exists() else "data folder not found"))
    if req.steps is not None and req.steps <= 0:
        raise InputError(f"--steps must be positive, got {req.steps}")
    run = RunDir(req.run_dir)
    if req.resume:
        if not run.has_checkpoint() or not run.config_file.is_file():
            raise InputError(f"{req.run_dir}: nothing to resume (no checkpoints/last.ckpt and config.yaml)")
        cfg = run.load_config()
        if req.steps is not None:
            cfg.train.steps = int(req.steps)
        return cfg, None
    overrides = list(req.overrides)
    if req.preset == "auto":  # sized for the device: laptops get preview, CUDA gets fast
        from .device import select_device  # torch: only where the device decides

        req.preset = "fast" if select_device(req.device).type == "cuda" else "preview"
    if req.format != "auto":
        overrides.append(f"data.format={req.format}")
    with config_errors_as_input():
        # Format defaults depend on the scene; read its cameras first (cheap), then the images.
        probe = build_config(req.preset, None, False, req.config_file, overrides)
        try:
            cams = datasets.load_cameras(req.data_dir, format=probe.data.format, cameras_file=probe.data.cameras_file)
        except datasets.DatasetError as exc:
            raise InputError(str(exc)) from exc
        cfg = build_config(req.preset, cams.format, cams.mask_paths is not None, req.config_file, overrides)
    if req.steps is not None:
        cfg.train.steps = int(req.steps)
    cfg.device = req.device if req.device != "auto" else cfg.device
    cfg.data.path = str(req.data_dir.resolve())
    try:
        cfg.data.path.encode("utf-8")
    except UnicodeEncodeError:  # Linux names are bytes; config.yaml, which records the path, is UTF-8
        shown = cfg.data.path.encode("utf-8", "backslashreplace").decode()
        raise InputError(f"{shown}: the folder's path is not valid UTF-8 (rename it)") from None
    return cfg, cams
