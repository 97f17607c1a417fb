"""``export RUN_DIR``: re-extracts the mesh (and, on request, the textured asset) from a run's checkpoint."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..cancel import REQUEST, CancelToken
from ..config import Flags, check_flags, export_settings, merge_flags
from ..errors import Cancelled
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


def export_flags(req: ExportRequest) -> Flags:
    """The command line's export settings as overrides of the run's ``export`` config (None: not given).
    ``--texture-size`` and ``--faces`` imply ``--texture``."""
    texture = req.texture or req.texture_size is not None or req.faces is not None
    return {"export.resolution": ("--resolution", req.resolution), "export.texture": ("--texture", texture or None),
            "export.formats": ("--format", req.formats), "export.frame": ("--frame", req.frame),
            "export.color": ("--color", req.color), "export.texture_size": ("--texture-size", req.texture_size),
            "export.faces": ("--faces", req.faces), "export.texture_refine": ("--texture-fit", req.texture_fit)}


def run(req: ExportRequest, run_dir: RunDir, emitter: Emitter, cancel: CancelToken) -> dict:
    from ..export import export_mesh, silhouette_fields

    flags = export_flags(req)
    # Before the run is read; --faces gives a face count (0, the config's "off", is not one).
    check_flags(flags, rules={"export.faces": "export.texture_faces"})
    cfg, model = run_dir.load_model(req.device)
    run_dir.require_writable()
    emitter.emit("stage", stage="loading")
    scene = run_dir.load_scene(cfg)
    cfg = merge_flags(cfg, flags)
    t0 = time.monotonic()
    timings: dict = {}
    files = export_mesh(model, cfg, scene, run_dir.path, emitter, export_settings(cfg), timings)
    extra: dict = {}
    if "texture_refine" in timings:  # the texel fit's figures (PROTOCOL.md, `done` of export)
        fit = timings.pop("texture_refine")
        extra["texture_fit"] = {"steps": fit["steps"], "pixels": fit["pixels"],
                                "mse_before": round(fit["mse_before"], 6), "mse_after": round(fit["mse_after"], 6),
                                "seconds": round(fit["gather_s"] + fit["optimise_s"], 2)}
    if "silhouette" in timings:
        extra.update(silhouette_fields(timings.pop("silhouette")))
    if "fidelity" in timings:
        extra["fidelity"] = timings.pop("fidelity")
    return {"mesh": str(files["ply"].resolve()), "files": {k: str(v.resolve()) for k, v in files.items()},
            "steps": cfg.train.steps, "timings": done_timings(timings, total_s=time.monotonic() - t0), **extra}


def cancelled_fields(exc: Cancelled, req: ExportRequest, run_dir: RunDir, cancel: CancelToken) -> dict:
    """``mesh``: the new mesh.ply when the export was stopped after writing it (during texturing)."""
    mesh = getattr(exc, "files", {}).get("ply")
    return {"step": None, "checkpoint": str(run_dir.checkpoint.resolve()),
            "mesh": None if mesh is None else str(mesh.resolve()), "reason": cancel.reason or REQUEST,
            "export": "cancelled"}
