"""``fit DATA_DIR --out RUN_DIR``: trains on posed photos (solving their cameras first when they have none), then
extracts and exports the mesh. The training itself is ``engine.train``."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

from ..cancel import CancelToken
from ..errors import InputError
from ..fit_setup import FitRequest, load_request
from ..liveness import tick
from ..protocol import Emitter
from ..ranks import is_first_rank
from ..run_dir import RunDir, config_errors_as_input

WATCHES_STOP = True
STRICT_STOP = True  # fit writes into the run folder: a STOP file it cannot remove is bad input, not a stop


def request_from_args(args) -> FitRequest:
    return FitRequest(data_dir=args.data_dir, run_dir=args.out, format=args.format, preset=args.preset,
                      steps=args.steps, device=args.device, config_file=args.config, overrides=args.overrides,
                      resume=args.resume, export_on_cancel=args.export_on_cancel)


@contextlib.contextmanager
def run_folder(req: FitRequest, emitter: Emitter) -> Iterator[RunDir]:
    """The run folder, created if needed; a run that failed before writing anything leaves no empty folder."""
    out = req.run_dir
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if req.resume and (req.overrides or req.config_file):
        emitter.log(f"--resume continues with {out / 'config.yaml'}: --set and --config are ignored")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the run folder ({exc.strerror or exc})") from exc
    try:
        run = RunDir(out)
        run.require_writable()
        yield run
    finally:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()


TRAINING_LIBRARIES = ("torch", "lightning.pytorch", "engine.train")  # what training loads, the heaviest first


def run(req: FitRequest, run_dir: RunDir, emitter: Emitter, cancel: CancelToken) -> dict:
    from datasets.photo_sources import needs_solving

    if needs_solving(req.data_dir):
        req.data_dir = _solve_for_fit(req, run_dir, emitter, cancel)
    prepared = load_request(req, emitter)  # bad input is answered before torch and Lightning load (seconds)
    # One at a time, with progress between: together they take ~3 s on a quiet 2-core machine, over 5 s on a busy one.
    tick("loading", 0, len(TRAINING_LIBRARIES), "libraries")
    for done, module in enumerate(TRAINING_LIBRARIES, 1):
        importlib.import_module(module)
        tick("loading", done, len(TRAINING_LIBRARIES), "libraries")
    from ..cpu_threads import configure_torch_threads
    from ..train import run_fit

    configure_torch_threads()  # reported in the start event (cpu_threads)

    return run_fit(req, emitter, cancel, prepared)


def _solve_for_fit(req: FitRequest, run_dir: RunDir, emitter: Emitter, cancel: CancelToken):
    """``fit PHOTOS|VIDEO``: solves the cameras into ``RUN_DIR/solved`` (kept for --resume), returns that folder.

    The solve's events join the fit's stream after a ``solving`` stage; its ``done`` becomes ``solved``.
    """
    from ..solve import SOLVE_FILE, SolveRequest, run_solve

    solved = run_dir.solved_dir
    # A DDP copy of the command starts once rank 0 has solved and begun training: it trains on rank 0's solve.
    if not ((req.resume or not is_first_rank()) and (solved / SOLVE_FILE).is_file()):
        if not req.resume:
            _check_config_before_solving(req)
        emitter.emit("stage", stage="solving")
        result = run_solve(SolveRequest(source=req.data_dir, out=solved), emitter, cancel, announce=False)
        emitter.emit("solved", **result)
    if req.format == "auto":
        req.format = "colmap"
    return solved


def _check_config_before_solving(req: FitRequest) -> None:
    """A bad ``--set`` or ``--config`` fails in a second, not after minutes of solving: the config is built as it
    will be for the solved (COLMAP, no masks) scene. The preset ``auto`` resolves to a real preset only once the
    device is known; ``preview`` stands in for it (every preset has the same keys)."""
    from ..config import build_config

    preset = "preview" if req.preset == "auto" else req.preset
    fmt = "colmap" if req.format == "auto" else req.format
    with config_errors_as_input():
        build_config(preset, fmt, False, req.config_file, [*req.overrides, f"data.format={fmt}"])
