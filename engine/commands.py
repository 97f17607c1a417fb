"""The ``export``, ``eval``, ``render`` and ``doctor`` commands."""

from __future__ import annotations

import json
import math
import platform
import sys
import time

from .errors import InputError
from .protocol import Emitter
from .run_dir import RunDir, split_views


def cmd_export(args, emitter: Emitter) -> int:
    from .export import ExportOptions, export_mesh

    if args.resolution is not None and args.resolution < 2:
        raise InputError(f"--resolution must be at least 2, got {args.resolution}")
    if args.texture_size is not None and not 16 <= args.texture_size <= 16384:
        raise InputError(f"--texture-size must be between 16 and 16384, got {args.texture_size}")
    if args.faces is not None and args.faces < 4:
        raise InputError(f"--faces must be at least 4, got {args.faces}")
    run = RunDir(args.run_dir)
    cfg, model = run.load_model(args.device)
    run.require_writable()
    emitter.emit("stage", stage="loading")
    scene = run.load_scene(cfg)
    opts = ExportOptions.from_config(cfg.export, resolution=args.resolution, frame=args.frame, color=args.color,
                                     formats=tuple(args.formats) if args.formats else None,
                                     texture_size=args.texture_size, faces=args.faces)
    if args.texture or args.texture_size is not None or args.faces is not None:
        opts.texture = True
    t0 = time.monotonic()
    timings: dict = {}
    files = export_mesh(model, cfg, scene, args.run_dir, emitter, opts, timings)
    emitter.emit("done", mesh=str(files["ply"].resolve()), files={k: str(v.resolve()) for k, v in files.items()},
                 steps=int(cfg.train.steps), timings={"load_s": 0.0, "train_s": 0.0,
                                                      "extract_s": round(timings.get("extract_s", 0), 2),
                                                      "export_s": round(timings.get("export_s", 0), 2),
                                                      "total_s": round(time.monotonic() - t0, 2)})
    return 0


def cmd_eval(args, emitter: Emitter) -> int:
    from datasets.normalization_file import read_normalization_json

    from .mesh.evaluate import evaluate_mesh
    from .mesh.mesh_data import MeshFileError

    if not args.samples >= 1:
        raise InputError(f"--samples must be positive, got {args.samples}")
    if not (math.isfinite(args.threshold) and args.threshold > 0):
        raise InputError(f"--threshold must be a positive distance, got {args.threshold}")
    scale_mat = None
    if args.normalization is not None:
        try:
            scale_mat, _ = read_normalization_json(args.normalization)
        except ValueError as exc:  # DatasetError: "<file>: <problem>"
            raise InputError(str(exc)) from exc
    try:
        result = evaluate_mesh(args.mesh, args.gt, threshold=args.threshold, n_samples=args.samples,
                               scale_mat=scale_mat)
    except MeshFileError as exc:
        raise InputError(str(exc)) from exc
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for frame, m in (result.items() if "normalized" in result else [("normalized", result)]):
            print(f"{frame}: chamfer-L1 {m['chamfer_l1']:.5f} (acc {m['accuracy']:.5f}, comp {m['completeness']:.5f})"
                  f", F-score@{m['threshold']:g} {m['fscore']:.4f}")
    return 0


def fidelity_views(n_views: int, holdout_every: int) -> tuple[list[int], bool]:
    """The views to judge an asset on: the run's held-out views, else every 8th view (then not held out)."""
    held = split_views(n_views, int(holdout_every))[1]
    if len(held):
        return [int(i) for i in held], True
    return [int(i) for i in split_views(n_views, 8)[1]], False


def neural_masked_psnr(model, scene, views: list[int], downscale: int) -> float | None:
    """Mean masked PSNR of the neural render on ``views`` (the same pixels the asset figure uses)."""
    import numpy as np

    from .mesh.fidelity import masked_psnr
    from .validate import render_views

    values = [masked_psnr(rgb, target, mask) for _, rgb, _, target, mask in
              render_views(model, scene, views, downscale)]
    return float(np.mean(values)) if values else None


def cmd_fidelity(args, emitter: Emitter) -> int:
    """Asset fidelity: the exported textured mesh rendered (no lighting) from held-out cameras vs the photos."""
    import numpy as np

    from datasets.normalization_file import read_normalization_json

    from .mesh import MeshFileError, read_mesh, transform_vertices
    from .mesh.fidelity import asset_fidelity

    if args.downscale < 1:
        raise InputError(f"--downscale must be at least 1, got {args.downscale}")
    run = RunDir(args.run_dir)
    cfg, model = run.load_model(args.device)
    scene = run.load_scene(cfg)
    if scene is None:
        raise InputError(f"{args.run_dir}: the run's data folder is gone; fidelity needs its photos")
    mesh_path = args.mesh or args.run_dir / "mesh_textured.obj"
    if not mesh_path.is_file():
        raise InputError(f"{mesh_path}: not found (run `engine export {args.run_dir} --texture` first)")
    try:
        mesh = read_mesh(mesh_path, yup=True)
    except MeshFileError as exc:
        raise InputError(str(exc)) from exc
    if mesh.uvs is None or mesh.texture is None:
        raise InputError(f"{mesh_path}: has no UVs and texture (export it with --texture)")
    verts = mesh.vertices
    if mesh_path.stem.endswith("_world"):  # exported with --frame world: back to the cameras' frame
        scale_mat, _ = read_normalization_json(run.normalization_file)
        verts = transform_vertices(verts, np.linalg.inv(scale_mat))
    views, held_out = fidelity_views(scene.n_views, int(cfg.data.get("holdout_every", 0)))
    if not held_out:
        emitter.log("the run holds no views out (data.holdout_every=0): judging on views it trained on")
    emitter.emit("stage", stage="rendering")
    device = next(model.parameters()).device
    result = asset_fidelity(verts, mesh.faces, mesh.uvs, mesh.texture, scene, views, args.downscale, device)
    result.update(mesh=str(mesh_path.resolve()), held_out=held_out, downscale=int(args.downscale))
    if not args.no_neural:
        result["neural_psnr"] = neural_masked_psnr(model, scene, views, args.downscale)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        neural = "" if args.no_neural else f", neural render {result['neural_psnr']:.2f} dB"
        print(f"asset masked PSNR {result['psnr']:.2f} dB{neural} on {len(views)} "
              f"{'held-out' if held_out else 'training'} views (mask coverage {result['coverage']:.3f})")
    return 0


def cmd_render(args, emitter: Emitter) -> int:
    import imageio.v2 as imageio
    import numpy as np
    import torch

    from datasets.geometry import scale_intrinsics
    from datasets.rays import spherical_trajectory

    from .atomic_files import atomic_path

    if args.frames < 1:
        raise InputError(f"--frames must be positive, got {args.frames}")
    if args.downscale < 1:
        raise InputError(f"--downscale must be at least 1, got {args.downscale}")
    run = RunDir(args.run_dir)
    cfg, model = run.load_model(args.device)
    run.require_writable()
    scene = run.load_scene(cfg)
    if scene is None:
        raise InputError(f"{args.run_dir}: the run's data folder is gone; render needs its camera intrinsics")
    if scene.height // args.downscale < 1 or scene.width // args.downscale < 1:
        raise InputError(f"--downscale {args.downscale} leaves no pixel of the {scene.width}x{scene.height} images")
    device = next(model.parameters()).device
    cam_dist = float(np.median(np.linalg.norm(scene.c2w[:, :, 3], axis=1)))
    elev = float(np.degrees(np.arcsin(np.clip(np.median(scene.c2w[:, :, 3] @ scene.up) / cam_dist, -1, 1))))
    poses = spherical_trajectory(args.frames, cam_dist, elev, up=tuple(scene.up))
    K = torch.from_numpy(scale_intrinsics(scene.K[0], args.downscale)).float().to(device)
    h, w = scene.height // args.downscale, scene.width // args.downscale
    out_dir = args.run_dir / "render"
    out_dir.mkdir(exist_ok=True)
    bg = torch.ones(3, device=device)
    frames = []
    emitter.emit("stage", stage="rendering")
    for i, c2w in enumerate(poses):
        img = model.render_image(K, torch.from_numpy(c2w).float().to(device), h, w, bg)["rgb"]
        frame = (img.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        with atomic_path(out_dir / f"{i:04d}.png") as tmp:
            imageio.imwrite(tmp, frame)
        frames.append(frame)
        emitter.progress(step=i + 1, total=len(poses), loss=None, psnr=None, rays=h * w, samples_per_step=None,
                         elapsed_s=None, eta_s=None)
    with atomic_path(out_dir / "trajectory.gif") as tmp:
        imageio.mimsave(tmp, frames, duration=1000 / 24, loop=0)
    files = {"frames": str(out_dir.resolve()), "gif": str((out_dir / "trajectory.gif").resolve())}
    try:
        with atomic_path(out_dir / "trajectory.mp4") as tmp:
            imageio.mimsave(tmp, frames, fps=24)
        files["mp4"] = str((out_dir / "trajectory.mp4").resolve())
    except Exception as exc:  # needs imageio-ffmpeg; the GIF is always there
        print(f"no MP4 ({type(exc).__name__}); install imageio-ffmpeg for video", file=sys.stderr)
    emitter.emit("done", mesh=None, files=files, steps=int(cfg.train.steps), timings={})
    return 0


def doctor_report() -> dict:
    """What will run here. Every probe is real: it imports or runs the thing it reports on."""
    import importlib.util

    import torch

    from .device import mps_available

    info: dict = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
                  "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "mps": mps_available(),
                  "devices": []}
    try:
        import psutil  # optional

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        try:
            import os

            info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        except (ValueError, OSError, AttributeError):
            info["memory_gb"] = None
    info["devices"].append({"name": "cpu", "type": "cpu"})
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append({"name": p.name, "type": f"cuda:{i}", "memory_gb": round(p.total_memory / 2**30, 1)})
    if info["mps"]:
        info["devices"].append({"name": "Apple MPS", "type": "mps"})
    info["tinycudann"] = importlib.util.find_spec("tinycudann") is not None
    info["nerfacc"] = importlib.util.find_spec("nerfacc") is not None
    info["torch_compile"] = _probe_compile()
    info["pycolmap"] = _module_version("pycolmap")  # camera solving (`solve`); None when missing
    info["imageio_ffmpeg"] = _module_version("imageio_ffmpeg")
    for mod in ("lightning", "omegaconf", "mcubes", "trimesh", "xatlas", "PIL"):
        info[mod] = importlib.util.find_spec(mod) is not None
    info["ok"] = all(info[m] for m in ("lightning", "omegaconf", "mcubes", "trimesh", "PIL"))
    info["default_device"] = "cuda" if info["cuda"] else ("mps" if info["mps"] else "cpu")
    return info


def _module_version(name: str) -> str | None:
    """The version of an importable module, None when it is missing or fails to import."""
    import importlib

    try:
        return str(getattr(importlib.import_module(name), "__version__", "unknown"))
    except Exception:  # a broken binary wheel fails in many ways; doctor reports it as missing
        return None


def _probe_compile() -> bool | str:
    """torch.compile works on CUDA in practice; on CPU it needs a C++ compiler, so we only check it is present."""
    import shutil

    import torch

    if not hasattr(torch, "compile"):
        return False
    if torch.cuda.is_available():
        try:
            import triton  # noqa: F401

            return True
        except ImportError:
            return "no triton"
    return "cpu (needs a C++ compiler)" if shutil.which("c++") or shutil.which("g++") else False


def cmd_doctor(args, emitter: Emitter) -> int:
    info = doctor_report()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:14s} {v}")
    return 0 if info["ok"] else 1
