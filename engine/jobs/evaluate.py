"""``eval MESH --gt GT``: Chamfer-L1 and F-score of a mesh against a ground truth. Prints a report."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..cancel import CancelToken
from ..errors import InputError
from ..protocol import Emitter

WATCHES_STOP = False


@dataclass
class EvalRequest:
    mesh: Path
    gt: Path
    threshold: float = 0.01  # F-score distance, normalized units
    samples: int = 200_000
    normalization: Path | None = None  # normalization.json: also report metrics in the world frame
    json: bool = False


def request_from_args(args) -> EvalRequest:
    return EvalRequest(mesh=args.mesh, gt=args.gt, threshold=args.threshold, samples=args.samples,
                       normalization=args.normalization, json=args.json)


@contextlib.contextmanager
def run_folder(req: EvalRequest, emitter: Emitter) -> Iterator[None]:
    yield None  # reads two meshes; no run folder


def run(req: EvalRequest, run_dir: None, emitter: Emitter, cancel: CancelToken) -> dict:
    from datasets.normalization_file import read_normalization_json

    from ..mesh.evaluate import evaluate_mesh
    from ..mesh.mesh_data import MeshFileError

    if not req.samples >= 1:
        raise InputError(f"--samples must be positive, got {req.samples}")
    if not (math.isfinite(req.threshold) and req.threshold > 0):
        raise InputError(f"--threshold must be a positive distance, got {req.threshold}")
    scale_mat = None
    if req.normalization is not None:
        try:
            scale_mat, _ = read_normalization_json(req.normalization)
        except ValueError as exc:  # DatasetError: "<file>: <problem>"
            raise InputError(str(exc)) from exc
    try:
        return evaluate_mesh(req.mesh, req.gt, threshold=req.threshold, n_samples=req.samples, scale_mat=scale_mat)
    except MeshFileError as exc:
        raise InputError(str(exc)) from exc


def report(req: EvalRequest, result: dict) -> int:
    if req.json:
        print(json.dumps(result, indent=2))
    else:
        for frame, m in (result.items() if "normalized" in result else [("normalized", result)]):
            print(f"{frame}: chamfer-L1 {m['chamfer_l1']:.5f} (acc {m['accuracy']:.5f}, comp {m['completeness']:.5f})"
                  f", F-score@{m['threshold']:g} {m['fscore']:.4f}")
    return 0
