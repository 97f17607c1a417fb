"""Solve Cameras: run ``engine solve`` on a folder of photos or a video, then import what it solved.

Driven like a reconstruction (``reconstruct.py``): the engine runs as a subprocess (``EngineProcess``), a
``bpy.app.timers`` function applies its events on the main thread (or :func:`run_blocking` in background mode),
Cancel stops it within seconds. When the solve succeeds, the solved COLMAP dataset's cameras, their photos as
backgrounds and the sparse points are imported with the ordinary camera import, and the panel's data folder
points at the solved dataset, so Reconstruct trains on it. Blender's Python never imports pycolmap.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from . import blender_cameras, timer_ui
from .core import photo_source
from .core.engine_process import DEFAULT_SILENCE_S, EngineLocation, EngineProcess
from .core.errors import AddonError
from .core.protocol import RunStatus
from .properties import apply_status

TIMER_INTERVAL = 0.2
PRINT_EVERY_S = 2.0


@dataclass
class SolveRun:
    scene_name: str
    source: Path
    out: Path
    process: EngineProcess
    status: RunStatus = field(default_factory=RunStatus)
    warnings: list[str] = field(default_factory=list)
    finished: bool = False
    imported: str = ""  # the collection the solved cameras went into
    echo: Callable[[str], None] | None = None
    _last_print: float = 0.0
    _shown: tuple = ()  # the status last copied into the scene (redraw only on change)


_active: SolveRun | None = None
last_solve: SolveRun | None = None


def is_running() -> bool:
    return _active is not None and not _active.finished


def start(scene: bpy.types.Scene, source: Path, out: Path, engine: EngineLocation, matcher: str = "auto",
          echo: Callable[[str], None] | None = None, silence_s: float = DEFAULT_SILENCE_S) -> SolveRun:
    """Starts ``engine solve SOURCE --out OUT``. Raises AddonError (already running, bad matcher, unwritable
    folder, the engine cannot start)."""
    global _active, last_solve
    if is_running():
        raise AddonError("cameras are already being solved; cancel first")
    cmd = photo_source.build_solve_command(engine.python, source, out, matcher)
    # The log goes beside the dataset: the engine only writes into an empty folder or an earlier solve.
    proc = EngineProcess(cmd, out, cwd=engine.repo_root or out.parent,
                         log_path=out.parent / f"{out.name}.{photo_source.SOLVE_LOG}", silence_s=silence_s)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AddonError(f"{out.parent}: cannot create the output folder ({e.strerror or e})") from e
    proc.start()
    run = SolveRun(scene.name, source, out, proc, echo=echo)
    run.status.state = "running"
    run.status.stage = "solving"
    _active = last_solve = run
    _say(run, f"[neus] solving cameras: {' '.join(cmd)}")
    _update_ui(run)
    return run


def _say(run: SolveRun, text: str) -> None:
    if run.echo is not None:
        run.echo(text)


def _scene(run: SolveRun) -> bpy.types.Scene | None:
    return bpy.data.scenes.get(run.scene_name)


def handle_event(run: SolveRun, event: dict) -> None:
    """Applies one engine event (main thread only: the end of a solve creates objects)."""
    name = event.get("event")
    run.status.apply(event)
    if name == "stage":
        _say(run, f"[neus] solve stage: {event.get('stage')}")
    elif name == "progress":
        now = time.time()
        if now - run._last_print >= PRINT_EVERY_S:
            run._last_print = now
            _say(run, f"[neus] {event.get('stage')} {event.get('step')}/{event.get('total')} {event.get('unit', '')}")
    elif name == "warning":
        run.warnings.append(str(event.get("message", "")))
        _say(run, f"[neus] warning: {event.get('message')}")
    elif name == "error":
        _say(run, f"[neus] error: {run.status.last_error}")
    elif name == "exit":
        _finish(run, event)


def _finish(run: SolveRun, event: dict) -> None:
    state = event.get("state")
    if state == "done":
        scene = _scene(run) or bpy.context.scene
        settings = scene.neus
        try:
            res = blender_cameras.import_cameras(scene, run.out, settings.frame, "colmap",
                                                 blender_cameras.ImportOptions(backgrounds=True, point_cloud=True))
        except AddonError as e:
            _end(run, "failed", f"the cameras were solved but could not be imported: {e}")
            return
        settings.data_dir = str(run.out)  # Reconstruct now trains on the solved dataset
        settings.data_format = "colmap"
        run.imported = res.collection.name
        n_points = len(res.points.data.vertices) if res.points is not None else 0
        _say(run, f"[neus] solved: {len(res.cameras)} cameras and {n_points} sparse points in '{run.imported}'")
        _end(run, "done", "; ".join(run.warnings))
    elif state == "cancelled":
        _end(run, "cancelled", str(event.get("killed") or ""))
    else:
        _end(run, "failed", run.status.last_error or run.process.failure_message())


def _end(run: SolveRun, state: str, error: str = "") -> None:
    global _active
    run.status.state = state
    run.status.stage = "solved" if state == "done" else state
    run.status.last_error = error
    run.finished = True
    if state != "done":
        _say(run, f"[neus] solve {state}: {error}" if error else f"[neus] solve {state}")
    if _active is run:
        _active = None
    _update_ui(run)
    timer_ui.set_status_bar(None)


def outcome(run: SolveRun) -> tuple[str, str]:
    """(report level, message) for a finished solve: the operator that waited reports it, else the timer."""
    st = run.status
    if st.state == "done":
        warned = f" ({'; '.join(run.warnings)})" if run.warnings else ""
        return ("WARNING" if run.warnings else "INFO"), f"Cameras solved into {run.out}{warned}"
    if st.state == "cancelled":
        return "WARNING", "Camera solving cancelled"
    return "ERROR", f"Camera solving failed: {st.last_error}"


def _update_ui(run: SolveRun) -> None:
    """Copies the status into the scene and redraws the sidebars, only when what they show changed."""
    scene = _scene(run)
    silent = int(run.process.silent_for()) if run.process.not_responding and not run.finished else 0
    shown = (run.status.state, run.status.stage, run.status.counts(), run.status.last_error, silent)
    if scene is None or run._shown == shown:
        return
    run._shown = shown
    apply_status(scene.neus, run.status)
    scene.neus.silent_s = silent
    if not run.finished:
        timer_ui.set_status_bar(f"NeuS camera solve: {run.status.status_text()}")
    timer_ui.redraw_sidebars()


def timer_step() -> float | None:
    """One tick of the interactive driver; None (unregister) once no solve is active."""
    run = _active
    if run is None:
        return None
    if _scene(run) is None:  # File > Open / New took the solve's scene: report into the new file's scene
        run.scene_name = bpy.context.scene.name
        run._shown = ()
    try:
        for event in run.process.poll_events():
            handle_event(run, event)
            if run.finished:
                break
        if not run.finished:
            _update_ui(run)
    except Exception as e:  # a raising timer is dropped silently by Blender: end visibly instead
        traceback.print_exception(e)
        run.process.kill()
        _end(run, "failed", f"add-on error while solving: {e}")
    if run.finished:
        timer_ui.report(*outcome(run))  # seen with the sidebar closed, as a reconstruction's end
        return None
    return TIMER_INTERVAL


def start_timer() -> None:
    if not bpy.app.timers.is_registered(timer_step):
        bpy.app.timers.register(timer_step, first_interval=TIMER_INTERVAL, persistent=True)


def run_blocking(run: SolveRun, poll_s: float = 0.25) -> str:
    """Drives ``run`` to its end on the main thread (background mode, scripts); returns the final state."""
    while not run.finished:
        try:
            event = run.process.next_event(timeout=poll_s)
            if event is not None:
                handle_event(run, event)
            elif run.process.not_responding and not run.process.killed_for:  # nobody is there to press Kill
                run.process.kill_now(f"the engine sent nothing for {run.process.silent_for():.0f} s: killed it")
        except KeyboardInterrupt:
            run.process.cancel()
    return run.status.state


def cancel() -> bool:
    run = _active
    if run is None or run.finished:
        return False
    run.process.cancel()
    run.status.stage = "cancelling"
    _update_ui(run)
    return True


def kill() -> bool:
    """The panel's Kill: ends the solve's engine (its whole process group) at once."""
    run = _active
    if run is None or run.finished:
        return False
    run.process.kill_now(f"killed from the panel after {run.process.silent_for():.0f} s without a word")
    run.status.stage = "killing"
    _update_ui(run)
    return True


def shutdown() -> None:
    global _active
    if _active is not None:
        _active.process.kill()
        _active.finished = True
        _active = None
    if bpy.app.timers.is_registered(timer_step):
        bpy.app.timers.unregister(timer_step)
