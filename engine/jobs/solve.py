"""``solve SOURCE --out DATA_DIR``: the cameras of a folder of photos or a video (``engine.solve``, pycolmap)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..cancel import CancelToken
from ..protocol import Emitter
from ..run_dir import RunDir
from ..solve import SolveRequest, run_solve

WATCHES_STOP = True


def request_from_args(args) -> SolveRequest:
    return SolveRequest(source=args.source, out=args.out, matcher=args.matcher, max_image_size=args.max_image_size,
                        camera=args.camera, fps=args.fps, max_frames=args.max_frames, min_placed=args.min_placed,
                        known_distance=args.known_distance)


@contextlib.contextmanager
def run_folder(req: SolveRequest, emitter: Emitter) -> Iterator[RunDir]:
    """DATA_DIR (it may not exist yet): a STOP file there stops the solve."""
    yield RunDir(req.out)


def run(req: SolveRequest, run_dir: RunDir, emitter: Emitter, cancel: CancelToken) -> dict:
    return run_solve(req, emitter, cancel)
