"""``solve SOURCE --out DATA_DIR``: the cameras of a folder of photos or a video (``engine.solve``, pycolmap)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..cancel import CancelToken
from ..config import settings_from_flags
from ..config_schema import SolveConfig
from ..protocol import Emitter
from ..run_dir import RunDir
from ..solve import SolveRequest, parse_known_distance, run_solve

WATCHES_STOP = True


def request_from_args(args) -> SolveRequest:
    """The flags over ``SolveConfig``'s defaults, checked by its rules (one line naming the flag, exit 2) before
    anything is read."""
    settings = settings_from_flags(SolveConfig, {
        "matcher": ("--matcher", args.matcher), "max_image_size": ("--max-image-size", args.max_image_size),
        "camera": ("--camera", args.camera), "fps": ("--fps", args.fps),
        "max_frames": ("--max-frames", args.max_frames),
        "min_placed": ("--min-placed", args.min_placed), "known_distance": ("--known-distance", args.known_distance)})
    parse_known_distance(settings.known_distance)
    return SolveRequest(source=args.source, out=args.out, settings=settings)


@contextlib.contextmanager
def run_folder(req: SolveRequest, emitter: Emitter) -> Iterator[RunDir]:
    """DATA_DIR (it may not exist yet): a STOP file there stops the solve."""
    yield RunDir(req.out)


def run(req: SolveRequest, run_dir: RunDir, emitter: Emitter, cancel: CancelToken) -> dict:
    return run_solve(req, emitter, cancel)
