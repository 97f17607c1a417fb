"""Command line: ``python -m engine fit|solve|export|eval|render|doctor`` (contract in PROTOCOL.md)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import get_args

from .atomic_files import DISK_FULL
from .cancel import REQUEST, CancelToken
from .config_schema import (
    DATA_FORMATS,
    EXPORT_FORMATS,
    EXPORT_FRAMES,
    PRESETS,
    SOLVE_CAMERAS,
    SOLVE_MATCHERS,
    ColorSource,
)
from .errors import Cancelled, DeviceError, DiskFull, EngineError, InputError
from .jobs import JOB_MODULES, OTHER_RANK_DONE
from .liveness import heartbeat_stream, reporting, watch
from .protocol import Emitter
from .ranks import is_first_rank
from .run_dir import RunDir

PROGRESS_MODES = ("jsonl", "bar", "none")  # --progress: the JSON-lines protocol, a progress bar, or silence
EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_CANCELLED = 0, 1, 2, 130


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises InputError (exit 2 with one line) instead of printing usage and exiting."""

    def error(self, message: str):
        raise InputError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _ArgumentParser(prog="neus-engine", description="NeuS surface reconstruction engine")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)

    f = sub.add_parser("fit", help="train on a folder of posed photos, then export the mesh")
    f.add_argument("data_dir", type=Path)
    f.add_argument("--out", type=Path, required=True, help="run folder")
    f.add_argument("--format", default="auto", choices=DATA_FORMATS)
    f.add_argument("--preset", default="auto", choices=("auto", *PRESETS),
                   help="auto: preview on a CPU or MPS, fast on CUDA")
    f.add_argument("--steps", type=int, default=None)
    f.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    f.add_argument("--config", default=None, help="extra YAML config file")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    f.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.ckpt")
    f.add_argument("--progress", default="bar", choices=PROGRESS_MODES)
    f.add_argument("--export-on-cancel", action="store_true", help="write the current mesh when cancelled")

    e = sub.add_parser("export", help="re-extract the mesh from a run's checkpoint")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--resolution", type=int, default=None)
    e.add_argument("--texture", action="store_true")
    e.add_argument("--format", dest="formats", action="append", choices=EXPORT_FORMATS, default=None)
    e.add_argument("--frame", default=None, choices=EXPORT_FRAMES)
    e.add_argument("--color", default=None, choices=get_args(ColorSource),
                   help="colour source: the training photos (sharpest) or the learned field")
    e.add_argument("--texture-size", type=int, default=None, help="texture side in texels (implies --texture)")
    e.add_argument("--faces", type=int, default=None,
                   help="game-ready: decimate the textured mesh to N faces and bake a normal map (implies --texture)")
    e.add_argument("--texture-fit", action=argparse.BooleanOptionalAction, default=None,
                   help="texture: fit the texels to the training photos after the photo blend "
                        "(export.texture_refine; --no-texture-fit keeps the blend alone)")
    e.add_argument("--device", default="auto")
    e.add_argument("--progress", default="bar", choices=PROGRESS_MODES)

    v = sub.add_parser("eval", help="Chamfer-L1 and F-score of a mesh against a ground truth")
    v.add_argument("mesh", type=Path)
    v.add_argument("--gt", type=Path, required=True, help="ground-truth mesh or point cloud (PLY/OBJ/...)")
    v.add_argument("--threshold", type=float, default=0.01, help="F-score distance, normalized units")
    v.add_argument("--samples", type=int, default=200_000)
    v.add_argument("--normalization", type=Path, default=None,
                   help="normalization.json (scale_mat): also report metrics in the world frame")
    v.add_argument("--json", action="store_true")

    a = sub.add_parser("fidelity", help="masked PSNR of the textured asset from held-out views (no Blender needed)")
    a.add_argument("run_dir", type=Path)
    a.add_argument("--mesh", type=Path, default=None, help="textured OBJ/GLB (default RUN_DIR/mesh_textured.obj)")
    a.add_argument("--downscale", type=int, default=1)
    a.add_argument("--no-neural", action="store_true", help="skip the neural render's PSNR on the same views")
    a.add_argument("--device", default="auto")
    a.add_argument("--json", action="store_true")
    a.add_argument("--progress", default="none", choices=PROGRESS_MODES)

    r = sub.add_parser("render", help="render novel views along a spherical trajectory")
    r.add_argument("run_dir", type=Path)
    r.add_argument("--frames", type=int, default=60)
    r.add_argument("--downscale", type=int, default=2)
    r.add_argument("--device", default="auto")
    r.add_argument("--progress", default="bar", choices=PROGRESS_MODES)

    s = sub.add_parser("solve", help="solve the cameras of a folder of photos or a video (pycolmap)")
    s.add_argument("source", type=Path, help="folder of photos (JPEG/PNG/TIFF) or a video file")
    s.add_argument("--out", type=Path, required=True, help="DATA_DIR: COLMAP layout + solve.json")
    # Defaults, limits and meanings: engine.config_schema.SolveConfig (None: its default).
    s.add_argument("--matcher", default=None, choices=SOLVE_MATCHERS,
                   help="auto: sequential for a video, exhaustive for a few photos, retrieval for many")
    s.add_argument("--max-image-size", type=int, default=None, help="long side for feature extraction, pixels")
    s.add_argument("--camera", default=None, choices=SOLVE_CAMERAS)
    s.add_argument("--fps", type=float, default=None, help="video: frames kept per second")
    s.add_argument("--max-frames", type=int, default=None, help="video: at most this many frames")
    s.add_argument("--min-placed", type=float, default=None, help="fail when fewer than this fraction is placed")
    s.add_argument("--known-distance", default=None, metavar="IMG_A,IMG_B,METRES",
                   help="true scale: the distance in metres between the cameras of two photos (scale.json)")
    s.add_argument("--progress", default="bar", choices=PROGRESS_MODES)

    d = sub.add_parser("doctor", help="what will run here: Python, torch, devices, accelerators")
    d.add_argument("--json", action="store_true")
    return p


@contextlib.contextmanager
def protocol_stdout(enabled: bool):
    """In jsonl mode, keeps the real stdout for protocol lines and sends everything else printed to stderr."""
    if not enabled:
        yield sys.stdout
        return
    sys.stdout.flush()
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    saved = os.dup(1)
    os.dup2(2, 1)
    old = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield proto
    finally:
        sys.stdout = old
        os.dup2(saved, 1)
        os.close(saved)
        with contextlib.suppress(OSError):  # a reader that is gone (engine.liveness stopped the run for it)
            proto.close()


def run_job(argv: list[str], emitter: Emitter, mode: str) -> int:
    """Parses ``argv`` and runs its job (``engine/jobs/``); returns the exit code.

    Owns what every job shares: errors become one ``error`` event and line (an ``EngineError``'s ``kind`` and exit
    code; anything else is internal, with its traceback on stderr), Ctrl-C in a job that does not watch for stop
    requests becomes ``cancelled``; see :func:`_run` for the rest.
    """
    try:
        _load_failpoints()
        args = build_parser().parse_args(argv)
        job = importlib.import_module(f"{__package__}.jobs.{JOB_MODULES[args.command]}")
        request = job.request_from_args(args)
        with job.run_folder(request, emitter) as run_dir:
            return _run(job, request, run_dir, emitter)
    except EngineError as exc:  # InputError, DeviceError, DiskFull, Diverged: each has its kind and exit code
        return _fail(emitter, exc, mode)
    except KeyboardInterrupt:
        emitter.emit("cancelled", step=0, checkpoint=None, mesh=None)
        return EXIT_CANCELLED
    except MemoryError as exc:
        return _fail(emitter, DeviceError(f"out of memory: {exc}", exit_code=1), mode)
    except Exception as exc:  # an internal error: full traceback on stderr, one line in the protocol
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return _fail(emitter, DiskFull(f"{exc.filename or 'a file'}: no space left on the disk; the files "
                                           "written before are intact (free space, then --resume or export "
                                           "again)"), mode)
        if "out of memory" in str(exc).lower():
            return _fail(emitter, DeviceError(str(exc).splitlines()[0], exit_code=1), mode)
        traceback.print_exc(file=sys.stderr)
        return _fail(emitter, EngineError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"),
                     mode)


def _run(job: ModuleType, request, run_dir: RunDir | None, emitter: Emitter) -> int:
    """One job in its folder: a stale STOP file is removed, the cancel token and its watchers (signals, stdin,
    the STOP file, the parent: engine.liveness) are installed for jobs that stop on request, ``Cancelled`` becomes
    the ``cancelled`` event (exit 130), and the result becomes the final event (or the job's printed report)."""
    watches = job.WATCHES_STOP
    stop_file = None
    # A DDP copy of fit starts after rank 0 began training: a STOP file then is a fresh request, not a stale one.
    if watches and run_dir is not None and is_first_rank():
        run_dir.remove_stop_request(strict=getattr(job, "STRICT_STOP", False))
        stop_file = run_dir.stop_file
    cancel = CancelToken(stop_file)
    if watches:
        watch(cancel, emitter)
    try:
        with reporting(emitter, cancel) if watches else contextlib.nullcontext():
            result = job.run(request, run_dir, emitter, cancel)
    except Cancelled as exc:
        fields = getattr(job, "cancelled_fields", _cancelled_before_work)(exc, request, run_dir, cancel)
        emitter.emit("cancelled", **fields)
        return EXIT_CANCELLED
    if hasattr(job, "report"):
        return job.report(request, result)
    event = result.pop("event", "done")
    if event == OTHER_RANK_DONE:
        # Exit 0 even when the run was cancelled: Lightning kills every rank, rank 0 too (mid-export), when one of
        # the processes it started ends with another code.
        return EXIT_OK
    emitter.emit(event, **result)
    return EXIT_CANCELLED if event == "cancelled" else EXIT_OK


def _cancelled_before_work(exc: Cancelled, request, run_dir: RunDir | None, cancel: CancelToken) -> dict:
    """The ``cancelled`` event of a job stopped before it made anything (fit while solving or loading, solve)."""
    return {"step": 0, "checkpoint": None, "mesh": None, "reason": cancel.reason or REQUEST, "export": None}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    mode = "bar"
    if "--progress" in argv:
        i = argv.index("--progress")
        mode = argv[i + 1] if i + 1 < len(argv) else mode
    # The other DDP ranks run this same command line; only rank 0 speaks (their stdout is rank 0's stderr).
    emit_mode = (mode if mode in PROGRESS_MODES else "bar") if is_first_rank() else "silent"
    with protocol_stdout(mode == "jsonl") as out, _with_heartbeats(out, emit_mode == "jsonl") as stream:
        return run_job(argv, Emitter(emit_mode, stream), mode)


def _with_heartbeats(out, enabled: bool):
    """The protocol's stream through the heartbeat relay (engine/liveness.py) in jsonl mode."""
    return heartbeat_stream(out) if enabled else contextlib.nullcontext(out)


def console_main() -> int:
    """``python -m engine`` and the ``neus-engine`` script: :func:`main`, then a quick exit."""
    code = main()
    # The interpreter's last collection walks every torch and Lightning object at exit (2-3 s on a busy CPU, with
    # nothing left to free): frozen objects are skipped, so a cancelled engine is gone within its 2 s.
    gc.freeze()
    return code


def _load_failpoints() -> None:
    from . import failpoints

    try:
        failpoints.load()
    except failpoints.FailpointSyntaxError as exc:
        raise InputError(str(exc)) from None


def _fail(emitter: Emitter, exc: EngineError, mode: str) -> int:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if mode == "jsonl":
        emitter.emit("error", kind=exc.kind, message=message)
    print(f"error: {message}", file=sys.stderr, flush=True)
    return exc.exit_code

