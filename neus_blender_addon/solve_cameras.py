"""Solve Cameras in Blender: run ``engine solve`` on a folder of photos or a video, then import what it solved.

The solve's logic is the bpy-free state machine :class:`core.solve_state.SolveJob`; the one job driver
(``job_driver.py``) runs it like a reconstruction (timer, background mode, Cancel / Kill, File > Open, the panel's
status, the end report). This module starts it (:func:`start`) and gives it its :class:`SolveHost`: when the solve
succeeds, the solved COLMAP dataset's cameras, their photos as backgrounds and the sparse points are imported with
the ordinary camera import, and the panel's data folder points at the solved dataset, so Reconstruct trains on it.
Blender's Python never imports pycolmap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import bpy

from . import blender_cameras, job_driver
from .core import solve_state
from .core.engine_process import DEFAULT_SILENCE_S, EngineLocation
from .core.solve_state import SolveJob


def start(scene: bpy.types.Scene, source: Path, out: Path, engine: EngineLocation, matcher: str = "auto",
          echo: Callable[[str], None] | None = None, silence_s: float = DEFAULT_SILENCE_S) -> SolveJob:
    """Starts ``engine solve SOURCE --out OUT`` as the driver's active job (then ``job_driver.start_timer`` or
    ``job_driver.run_blocking``). Raises AddonError (a job already running, bad matcher, unwritable folder, the
    engine cannot start)."""
    job = solve_state.new_solve(scene.name, source, out, engine, matcher, echo=echo, silence_s=silence_s)
    return job_driver.start(job, HOST)


class SolveHost(job_driver.BlenderHost):
    """What :class:`solve_state.SolveJob` asks of Blender."""

    def import_cameras(self, job: SolveJob, out_dir: str) -> tuple[str, int, int]:
        scene = bpy.data.scenes.get(job.scene_name) or bpy.context.scene
        settings = scene.neus
        res = blender_cameras.import_cameras(scene, out_dir, settings.frame, "colmap",
                                             blender_cameras.ImportOptions(backgrounds=True, point_cloud=True))
        settings.data_dir = str(out_dir)  # Reconstruct now trains on the solved dataset
        settings.data_format = "colmap"
        n_points = len(res.points.data.vertices) if res.points is not None else 0
        return res.collection.name, len(res.cameras), n_points


HOST = SolveHost()
