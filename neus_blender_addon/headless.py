"""Headless demo: cameras + reconstruction + coloured mesh into a .blend, without the Blender UI.

    python -m neus_blender_addon.headless DATA_DIR --out RUN_DIR [--preset auto|preview|fast|quality] [--steps N]
        [--device auto|cpu|cuda|mps] [--frame normalized|world] [--texture] [--engine-python PATH]
        [--silence-limit SECONDS]

Run it with the project's venv Python (which has the ``bpy`` module), from the repository root. It starts from an
empty factory scene, registers the add-on, imports the cameras, runs the reconstruction to completion (progress
on stdout), adds a world and a sun so a render (F12) through the first dataset camera shows the mesh, and
saves ``RUN_DIR/scene.blend``. An engine that sends nothing (not even its 3 s heartbeat) for ``--silence-limit``
seconds is killed and the run fails with one line. Exit codes: 0 done, 1 failed (or given up on), 2 bad input,
130 cancelled.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from neus_blender_addon.core.choices import DEVICES, FORMATS, FRAMES, PRESETS
from neus_blender_addon.core.engine_process import DEFAULT_SILENCE_S


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints the usage too; bad input is one line here, as in the engine
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = _OneLineParser(prog="python -m neus_blender_addon.headless", description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path, help="dataset folder (DTU, NeRF-synthetic or COLMAP layout)")
    ap.add_argument("--out", type=Path, required=True, help="run folder: engine outputs and scene.blend")
    ap.add_argument("--preset", choices=PRESETS, default="auto")
    ap.add_argument("--steps", type=int, default=0, help="training steps (0: the preset's default)")
    ap.add_argument("--device", choices=DEVICES, default="auto")
    ap.add_argument("--format", dest="data_format", choices=FORMATS, default="auto")
    ap.add_argument("--frame", choices=FRAMES, default="normalized")
    ap.add_argument("--texture", action="store_true", help="also export and import a textured mesh")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="engine config override (repeatable), e.g. --set export.resolution=256")
    ap.add_argument("--engine-python", default="", help="interpreter that runs the engine (default: auto-detect)")
    ap.add_argument("--silence-limit", type=float, default=DEFAULT_SILENCE_S, metavar="SECONDS",
                    help=f"give up on an engine silent this long (default {DEFAULT_SILENCE_S:.0f}; it sends a "
                         "heartbeat every 3 s)")
    args = ap.parse_args(argv)
    if args.steps < 0:
        ap.error("--steps must be >= 0")
    if not args.silence_limit > 0:
        ap.error("--silence-limit must be > 0 seconds")
    for kv in args.settings:
        if "=" not in kv or kv.startswith("="):
            ap.error(f"--set expects KEY=VALUE, got '{kv}'")
    return args


def _call(op, **kwargs) -> set[str]:
    """Runs an operator; an ERROR report (which bpy.ops raises as RuntimeError, already printed) -> CANCELLED."""
    try:
        return op(**kwargs)
    except RuntimeError:
        return {"CANCELLED"}


def light_scene(scene) -> None:
    """A grey world and a sun from above, so F12 through a dataset camera shows the mesh (the factory-empty scene
    has neither and renders black). The dataset arrives upright, so "above" is +Z."""
    import math

    import bpy

    world = scene.world or bpy.data.worlds.new("NeuS demo world")
    scene.world = world
    world.use_nodes = True
    background = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")
    background.inputs["Color"].default_value = (0.5, 0.5, 0.5, 1.0)
    background.inputs["Strength"].default_value = 0.8
    sun = bpy.data.lights.new("NeuS demo sun", "SUN")
    sun.energy = 3.0
    obj = bpy.data.objects.new("NeuS demo sun", sun)
    obj.rotation_euler = (math.radians(35.0), 0.0, math.radians(30.0))  # from above, a little to the side
    scene.collection.objects.link(obj)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import bpy
    except ImportError:
        print("error: this needs the bpy module (Blender as a Python module): run it with the project's "
              ".venv/bin/python", file=sys.stderr)
        return 2
    import neus_blender_addon as addon
    from neus_blender_addon import job_driver
    from neus_blender_addon.core import camera_source, engine_process
    from neus_blender_addon.core.errors import AddonError

    data_dir = args.data_dir.absolute()
    try:
        camera_source.load_camera_set(data_dir, args.data_format)  # fail fast, before Blender work
    except AddonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out.absolute()
    if out.resolve() == data_dir.resolve():
        print(f"error: {out}: the output folder must not be the dataset folder", file=sys.stderr)
        return 2

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon.register()
    try:
        scene = bpy.context.scene
        s = scene.neus
        s.data_dir = str(data_dir)
        s.output_dir = str(out)
        s.data_format = args.data_format
        s.preset = args.preset
        s.device = args.device
        s.steps = args.steps
        s.frame = args.frame
        s.texture = args.texture
        s.show_preview = False  # nobody looks at it here
        s.engine_settings = " ".join(shlex.quote(kv) for kv in args.settings)
        # A new scene: take the photos' render size and the first dataset camera, so F12 shows that view.
        if "FINISHED" not in _call(bpy.ops.neus.import_cameras, directory=str(data_dir), set_render=True,
                                   set_active_camera=True):
            print(f"error: {s.last_error}", file=sys.stderr)
            return 2
        light_scene(scene)
        if args.engine_python:
            os.environ[engine_process.ENV_VAR] = args.engine_python
        job_driver.last_job = None
        # background mode: runs to completion, printing progress; --out is the run folder itself
        result = _call(bpy.ops.neus.reconstruct, run_dir=str(out), silence_limit=args.silence_limit)
        run = job_driver.last_job
        if "FINISHED" not in result:
            if run is None:  # refused before the engine started (engine not found, say)
                print(f"error: {s.last_error}", file=sys.stderr)
                return 1
            print(f"error: reconstruction {run.status.state}: {run.status.last_error}", file=sys.stderr)
            if run.status.state == "cancelled":
                return 130
            return 2 if run.status.returncode == 2 else 1
        blend = out / "scene.blend"
        # Blender writes to "<name>@" and renames into place, so the file is never half-written.
        bpy.ops.wm.save_as_mainfile(filepath=str(blend), check_existing=False)
        print(f"[neus] saved {blend}", flush=True)
        return 0
    finally:
        addon.unregister()


if __name__ == "__main__":
    sys.exit(main())
