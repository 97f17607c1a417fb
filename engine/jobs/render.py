"""``render RUN_DIR``: novel views along a spherical trajectory (PNG frames, a GIF, an MP4 with imageio-ffmpeg)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..cancel import CancelToken
from ..errors import InputError
from ..protocol import Emitter
from ..run_dir import RunDir

WATCHES_STOP = False  # Ctrl-C interrupts it (frames written so far stay)


@dataclass
class RenderRequest:
    run_dir: Path
    frames: int = 60
    downscale: int = 2
    device: str = "auto"


def request_from_args(args) -> RenderRequest:
    return RenderRequest(run_dir=args.run_dir, frames=args.frames, downscale=args.downscale, device=args.device)


@contextlib.contextmanager
def run_folder(req: RenderRequest, emitter: Emitter) -> Iterator[RunDir]:
    yield RunDir(req.run_dir)


def run(req: RenderRequest, run_dir: RunDir, emitter: Emitter, cancel: CancelToken) -> dict:
    import imageio.v2 as imageio
    import numpy as np
    import torch

    from datasets.geometry import scale_intrinsics
    from datasets.rays import spherical_trajectory

    from ..atomic_files import atomic_path

    if req.frames < 1:
        raise InputError(f"--frames must be positive, got {req.frames}")
    if req.downscale < 1:
        raise InputError(f"--downscale must be at least 1, got {req.downscale}")
    cfg, model = run_dir.load_model(req.device)
    run_dir.require_writable()
    scene = run_dir.load_scene(cfg)
    if scene is None:
        raise InputError(f"{run_dir.path}: the run's data folder is gone; render needs its camera intrinsics")
    if scene.height // req.downscale < 1 or scene.width // req.downscale < 1:
        raise InputError(f"--downscale {req.downscale} leaves no pixel of the {scene.width}x{scene.height} images")
    device = next(model.parameters()).device
    cam_dist = float(np.median(np.linalg.norm(scene.c2w[:, :, 3], axis=1)))
    elev = float(np.degrees(np.arcsin(np.clip(np.median(scene.c2w[:, :, 3] @ scene.up) / cam_dist, -1, 1))))
    poses = spherical_trajectory(req.frames, cam_dist, elev, up=tuple(scene.up))
    K = torch.from_numpy(scale_intrinsics(scene.K[0], req.downscale)).float().to(device)
    h, w = scene.height // req.downscale, scene.width // req.downscale
    out_dir = run_dir.path / "render"
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
    return {"mesh": None, "files": files, "steps": cfg.train.steps, "timings": {}}
