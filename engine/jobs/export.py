"""``export RUN_DIR``: re-extracts the mesh (and, on request, the textured asset) from a run's checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..cancel import REQUEST, CancelToken
from ..config_schema import ExportConfig
from ..errors import Cancelled, InputError
from ..protocol import Emitter, done_timings
from ..run_dir import RunDir

# export stops at the next chunk on a request (engine.liveness.tick) and writes nothing after it.
WATCHES_STOP = True


@dataclass
class ExportRequest:
    """``export``'s command-line settings; None: the run's ``export`` config decides."""

    run_dir: Path
    resolution: int | None = None
    texture: bool = False
    formats: list[str] | None = None
    frame: str | None = None
    color: str | None = None
    texture_size: int | None = None
    faces: int | None = None
    texture_fit: bool | None = None
    device: str = "auto"


def request_from_args(args) -> ExportRequest:
    return ExportRequest(run_dir=args.run_dir, resolution=args.resolution, texture=args.texture,
                         formats=args.formats, frame=args.frame, color=args.color, texture_size=args.texture_size,
                         faces=args.faces, texture_fit=getattr(args, "texture_fit", None), device=args.device)


@contextlib.contextmanager
def run_folder(req: ExportRequest, emitter: Emitter) -> Iterator[RunDir]:
    yield RunDir(req.run_dir)


def run(req: ExportRequest, run_dir: RunDir, emitter: Emitter, cancel: CancelToken) -> dict:
    from ..export import ExportOptions, export_mesh

    _check_range("--resolution", req.resolution, "resolution")
    _check_range("--texture-size", req.texture_size, "texture_size")
    _check_range("--faces", req.faces, "texture_faces")  # a face count as ``texture_faces``: 0 (off) is not one
    cfg, model = run_dir.load_model(req.device)
    run_dir.require_writable()
    emitter.emit("stage", stage="loading")
    scene = run_dir.load_scene(cfg)
    opts = ExportOptions.from_config(cfg.export, resolution=req.resolution, frame=req.frame, color=req.color,
                                     formats=tuple(req.formats) if req.formats else None,
                                     texture_size=req.texture_size, faces=req.faces)
    if req.texture or req.texture_size is not None or req.faces is not None:
        opts.texture = True
    if req.texture_fit is not None:
        opts.texture_refine = bool(req.texture_fit)
    t0 = time.monotonic()
    timings: dict = {}
    files = export_mesh(model, cfg, scene, run_dir.path, emitter, opts, timings)
    extra: dict = {}
    if "texture_refine" in timings:  # the texel fit's figures (PROTOCOL.md, `done` of export)
        fit = timings.pop("texture_refine")
        extra["texture_fit"] = {"steps": fit["steps"], "pixels": fit["pixels"],
                                "mse_before": round(fit["mse_before"], 6), "mse_after": round(fit["mse_after"], 6),
                                "seconds": round(fit["gather_s"] + fit["optimise_s"], 2)}
    if "silhouette" in timings:
        extra["silhouette_offset"] = round(float(timings.pop("silhouette")["offset"]), 6)
    if "fidelity" in timings:
        extra["fidelity"] = timings.pop("fidelity")
    return {"mesh": str(files["ply"].resolve()), "files": {k: str(v.resolve()) for k, v in files.items()},
            "steps": int(cfg.train.steps), "timings": done_timings(timings, total_s=time.monotonic() - t0), **extra}


def _check_range(flag: str, value: int | None, key: str) -> None:
    """A command-line value against the limits ``ExportConfig.<key>`` states (engine/config_schema.py)."""
    if value is None:
        return
    meta = next(f.metadata for f in dataclasses.fields(ExportConfig) if f.name == key)
    low, high = meta["min"], meta.get("max")
    if high is not None and not low <= value <= high:
        raise InputError(f"{flag} must be between {low} and {high}, got {value}")
    if value < low:
        raise InputError(f"{flag} must be at least {low}, got {value}")


def cancelled_fields(exc: Cancelled, req: ExportRequest, run_dir: RunDir, cancel: CancelToken) -> dict:
    """``mesh``: the new mesh.ply when the export was stopped after writing it (during texturing)."""
    mesh = getattr(exc, "files", {}).get("ply")
    return {"step": None, "checkpoint": str(run_dir.checkpoint.resolve()),
            "mesh": None if mesh is None else str(mesh.resolve()), "reason": cancel.reason or REQUEST,
            "export": "cancelled"}
