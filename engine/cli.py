"""Command line: ``python -m engine fit|solve|export|eval|render|doctor`` (contract in PROTOCOL.md)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import traceback
from pathlib import Path
from typing import get_args

from .atomic_files import DISK_FULL
from .cancel import REQUEST, CancelToken
from .config_schema import DATA_FORMATS, EXPORT_FORMATS, EXPORT_FRAMES, PRESETS, ColorSource
from .errors import Cancelled, DeviceError, DiskFull, EngineError, InputError
from .liveness import heartbeat_stream, reporting, watch
from .protocol import Emitter
from .ranks import is_first_rank
from .run_dir import RunDir, config_errors_as_input

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
    a.add_argument("--progress", default="none", choices=["jsonl", "bar", "none"])

    r = sub.add_parser("render", help="render novel views along a spherical trajectory")
    r.add_argument("run_dir", type=Path)
    r.add_argument("--frames", type=int, default=60)
    r.add_argument("--downscale", type=int, default=2)
    r.add_argument("--device", default="auto")
    r.add_argument("--progress", default="bar", choices=PROGRESS_MODES)

    s = sub.add_parser("solve", help="solve the cameras of a folder of photos or a video (pycolmap)")
    s.add_argument("source", type=Path, help="folder of photos (JPEG/PNG/TIFF) or a video file")
    s.add_argument("--out", type=Path, required=True, help="DATA_DIR: COLMAP layout + solve.json")
    s.add_argument("--matcher", default="auto", choices=["auto", "exhaustive", "sequential"],
                   help="auto: sequential for video or many photos, exhaustive otherwise")
    s.add_argument("--max-image-size", type=int, default=1200, help="long side for feature extraction, pixels")
    s.add_argument("--camera", default="auto", choices=["auto", "single", "per-image"])
    s.add_argument("--fps", type=float, default=2.0, help="video: frames kept per second")
    s.add_argument("--max-frames", type=int, default=120, help="video: at most this many frames")
    s.add_argument("--min-placed", type=float, default=0.5, help="fail when fewer than this fraction is placed")
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


def _install_cancel(token, emitter: Emitter) -> None:
    watch(token, emitter)  # signals, stdin, NEUS_PARENT_PID, a broken stdout (engine/liveness.py)


def _cmd_fit(args, emitter: Emitter) -> int:
    from .cpu_threads import configure_torch_threads
    from .train import FitRequest

    configure_torch_threads()  # reported in the start event (cpu_threads)
    req = FitRequest(data_dir=args.data_dir, run_dir=args.out, format=args.format, preset=args.preset,
                     steps=args.steps, device=args.device, config_file=args.config, overrides=args.overrides,
                     resume=args.resume, export_on_cancel=args.export_on_cancel)
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"{args.out}: exists and is not a folder")
    if args.resume and (args.overrides or args.config):
        emitter.log(f"--resume continues with {args.out / 'config.yaml'}: --set and --config are ignored")
    created = not args.out.exists()
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{args.out}: cannot create the run folder ({exc.strerror or exc})") from exc
    try:
        return _fit_in(args.out, req, emitter)
    finally:
        if created:  # a run that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                args.out.rmdir()


def _fit_in(run_dir: Path, req, emitter: Emitter) -> int:
    """``fit`` once the run folder exists."""
    from .solve import needs_solving
    from .train import OTHER_RANK_DONE, run_fit

    run = RunDir(run_dir)
    run.require_writable()
    first_rank = is_first_rank()
    if first_rank:  # a DDP copy starts after rank 0 began training: a STOP file now is a fresh request
        run.remove_stop_request(strict=True)  # a stale stop request from an earlier run must not stop this one
    token = CancelToken(run.stop_file if first_rank else None)
    _install_cancel(token, emitter)
    try:
        with reporting(emitter, token):
            if needs_solving(req.data_dir):
                req.data_dir = _solve_for_fit(req, emitter, token)
            result = run_fit(req, emitter, token)
    except Cancelled:
        emitter.emit("cancelled", step=0, checkpoint=None, mesh=None, reason=token.reason or REQUEST, export=None)
        return EXIT_CANCELLED
    event = result.pop("event")
    if event == OTHER_RANK_DONE:
        # Exit 0 even when the run was cancelled: Lightning kills every rank, rank 0 too (mid-export), when one of
        # the processes it started ends with another code.
        return EXIT_OK
    emitter.emit(event, **result)
    return EXIT_CANCELLED if event == "cancelled" else EXIT_OK


def _solve_for_fit(req, emitter: Emitter, token) -> Path:
    """``fit PHOTOS|VIDEO``: solves the cameras into ``RUN_DIR/solved`` (kept for --resume), returns that folder.

    The solve's events join the fit's stream after a ``solving`` stage; its ``done`` becomes ``solved``.
    """
    from .solve import SOLVE_FILE, SolveRequest, run_solve

    solved = req.run_dir / "solved"
    # A DDP copy of the command starts once rank 0 has solved and begun training: it trains on rank 0's solve.
    if not ((req.resume or not is_first_rank()) and (solved / SOLVE_FILE).is_file()):
        if not req.resume:
            _check_config_before_solving(req)
        emitter.emit("stage", stage="solving")
        result = run_solve(SolveRequest(source=req.data_dir, out=solved), emitter, token, announce=False)
        emitter.emit("solved", **result)
    if req.format == "auto":
        req.format = "colmap"
    return solved


def _check_config_before_solving(req) -> None:
    """A bad ``--set`` or ``--config`` fails in a second, not after minutes of solving: the config is built as it
    will be for the solved (COLMAP, no masks) scene. The preset ``auto`` resolves to a real preset only once the
    device is known; ``preview`` stands in for it (every preset has the same keys)."""
    from .config import build_config

    preset = "preview" if req.preset == "auto" else req.preset
    fmt = "colmap" if req.format == "auto" else req.format
    with config_errors_as_input():
        build_config(preset, fmt, False, req.config_file, [*req.overrides, f"data.format={fmt}"])


def _cmd_solve(args, emitter: Emitter) -> int:
    from .solve import SolveRequest, run_solve

    req = SolveRequest(source=args.source, out=args.out, matcher=args.matcher, max_image_size=args.max_image_size,
                       camera=args.camera, fps=args.fps, max_frames=args.max_frames, min_placed=args.min_placed,
                       known_distance=args.known_distance)
    stop_file = args.out / "STOP"
    with contextlib.suppress(OSError):
        stop_file.unlink()  # a stale stop request must not stop this solve
    token = CancelToken(stop_file)
    _install_cancel(token, emitter)
    try:
        result = run_solve(req, emitter, token)
    except Cancelled:
        emitter.emit("cancelled", step=0, checkpoint=None, mesh=None, reason=token.reason or REQUEST, export=None)
        return EXIT_CANCELLED
    emitter.emit("done", **result)
    return EXIT_OK


def _cmd_export(args, emitter: Emitter) -> int:
    """``export`` stops at the next chunk on a cancel (engine.liveness.tick) and writes nothing after it."""
    from . import commands

    stop_file = args.run_dir / "STOP"
    token = CancelToken(stop_file if args.run_dir.is_dir() else None)
    if token.stop_file is not None:
        with contextlib.suppress(OSError):
            stop_file.unlink()  # a stale stop request must not stop this export
    _install_cancel(token, emitter)
    try:
        with reporting(emitter, token):
            return commands.cmd_export(args, emitter)
    except Cancelled as exc:
        mesh = getattr(exc, "files", {}).get("ply")
        emitter.emit("cancelled", step=None, checkpoint=str((args.run_dir / "checkpoints" / "last.ckpt").resolve()),
                     mesh=None if mesh is None else str(mesh.resolve()), reason=token.reason or REQUEST,
                     export="cancelled")
        return EXIT_CANCELLED


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    mode = "bar"
    if "--progress" in argv:
        i = argv.index("--progress")
        mode = argv[i + 1] if i + 1 < len(argv) else mode
    # The other DDP ranks run this same command line; only rank 0 speaks (their stdout is rank 0's stderr).
    emit_mode = (mode if mode in PROGRESS_MODES else "bar") if is_first_rank() else "silent"
    with protocol_stdout(mode == "jsonl") as out, _with_heartbeats(out, emit_mode == "jsonl") as stream:
        emitter = Emitter(emit_mode, stream)
        try:
            _load_failpoints()
            args = build_parser().parse_args(argv)
            if args.command == "fit":
                return _cmd_fit(args, emitter)
            if args.command == "solve":
                return _cmd_solve(args, emitter)
            if args.command == "export":
                return _cmd_export(args, emitter)
            from . import commands

            return getattr(commands, f"cmd_{args.command}")(args, emitter)
        except InputError as exc:
            return _fail(emitter, exc, mode)
        except DeviceError as exc:
            return _fail(emitter, exc, mode)
        except EngineError as exc:
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

