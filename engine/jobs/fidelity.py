"""``fidelity RUN_DIR``: the exported textured asset rendered unlit from the run's held-out cameras against the
photos (masked PSNR), beside the neural render's on the same pixels. Prints a report; no ``done`` event."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..cancel import CancelToken
from ..errors import InputError
from ..mesh.fidelity import fidelity_views
from ..protocol import Emitter
from ..run_dir import RunDir

WATCHES_STOP = False


@dataclass
class FidelityRequest:
    run_dir: Path
    mesh: Path | None = None  # textured OBJ/GLB; None: RUN_DIR/mesh_textured.obj
    downscale: int = 1
    neural: bool = True  # also the neural render's PSNR on the same views
    device: str = "auto"
    json: bool = False


def request_from_args(args) -> FidelityRequest:
    return FidelityRequest(run_dir=args.run_dir, mesh=args.mesh, downscale=args.downscale, neural=not args.no_neural,
                           device=args.device, json=args.json)


@contextlib.contextmanager
def run_folder(req: FidelityRequest, emitter: Emitter) -> Iterator[RunDir]:
    yield RunDir(req.run_dir)


def neural_masked_psnr(model, scene, views: list[int], downscale: int) -> float | None:
    """Mean masked PSNR of the neural render on ``views`` (the same pixels the asset figure uses)."""
    import numpy as np

    from ..mesh.fidelity import masked_psnr
    from ..validate import render_views

    values = [masked_psnr(rgb, target, mask) for _, rgb, _, target, mask in
              render_views(model, scene, views, downscale)]
    return float(np.mean(values)) if values else None


def run(req: FidelityRequest, run_dir: RunDir, emitter: Emitter, cancel: CancelToken) -> dict:
    import numpy as np

    from datasets.normalization_file import read_normalization_json

    from ..mesh import MeshFileError, read_mesh, transform_vertices
    from ..mesh.fidelity import asset_fidelity

    if req.downscale < 1:
        raise InputError(f"--downscale must be at least 1, got {req.downscale}")
    cfg, model = run_dir.load_model(req.device)
    scene = run_dir.load_scene(cfg)
    if scene is None:
        raise InputError(f"{run_dir.path}: the run's data folder is gone; fidelity needs its photos")
    mesh_path = req.mesh or run_dir.path / "mesh_textured.obj"
    if not mesh_path.is_file():
        raise InputError(f"{mesh_path}: not found (run `engine export {run_dir.path} --texture` first)")
    try:
        mesh = read_mesh(mesh_path, yup=True)
    except MeshFileError as exc:
        raise InputError(str(exc)) from exc
    if mesh.uvs is None or mesh.texture is None:
        raise InputError(f"{mesh_path}: has no UVs and texture (export it with --texture)")
    verts = mesh.vertices
    if mesh_path.stem.endswith("_world"):  # exported with --frame world: back to the cameras' frame
        scale_mat, _ = read_normalization_json(run_dir.normalization_file)
        verts = transform_vertices(verts, np.linalg.inv(scale_mat))
    views, held_out = fidelity_views(scene.n_views, cfg.data.holdout_every)
    if not held_out:
        emitter.log("the run holds no views out (data.holdout_every=0): judging on views it trained on")
    emitter.emit("stage", stage="rendering")
    device = next(model.parameters()).device
    result = asset_fidelity(verts, mesh.faces, mesh.uvs, mesh.texture, scene, views, req.downscale, device)
    result.update(mesh=str(mesh_path.resolve()), held_out=held_out, downscale=int(req.downscale))
    if req.neural:
        result["neural_psnr"] = neural_masked_psnr(model, scene, views, req.downscale)
    return result


def report(req: FidelityRequest, result: dict) -> int:
    if req.json:
        print(json.dumps(result, indent=2))
    else:
        neural = f", neural render {result['neural_psnr']:.2f} dB" if req.neural else ""
        interior = "" if result["psnr_interior"] is None else f"interior {result['psnr_interior']:.2f} dB, "
        print(f"asset masked PSNR {result['psnr']:.2f} dB{neural} on {len(result['views'])} "
              f"{'held-out' if result['held_out'] else 'training'} views ({interior}mask coverage "
              f"{result['coverage']:.3f})")
    return 0
