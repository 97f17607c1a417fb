"""Reconstruction runs: start the engine, apply its events on Blender's main thread, import the result.

Two drivers share :func:`handle_event`:

- interactive: a ``bpy.app.timers`` function, :func:`timer_step`, drains the event queue every 0.2 s (tests call
  it directly to drive this path, since timers do not fire in background mode);
- background (``bpy.app.background``): :func:`run_blocking` waits on the queue until the run ends, printing
  progress to stdout.

One run at a time (module state ``_active``).
"""

from __future__ import annotations

import shlex
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np

from . import blender_cameras, blender_mesh, camera_source, engine_process, run_files
from .engine_process import EngineLocation, EngineProcess
from .properties import apply_status
from .protocol import RunStatus

TIMER_INTERVAL = 0.2
PRINT_EVERY_S = 2.0
PREVIEW_EVERY = 250  # steps between live-preview meshes, when the scene asks for them


@dataclass
class RunRequest:
    """Everything a run needs, resolved from the scene settings."""

    scene_name: str
    data_dir: Path
    run_dir: Path
    dataset: str  # collection name
    engine: EngineLocation
    preset: str = "auto"
    device: str = "auto"
    steps: int = 0
    data_format: str = "auto"
    frame: str = "normalized"
    texture: bool = False
    show_preview: bool = True
    scale_mat: np.ndarray | None = None  # from the dataset's cameras, used when the run has no normalization.json
    settings: list[str] = field(default_factory=list)  # engine --set KEY=VALUE overrides
    up: np.ndarray | None = None  # the cameras' mean up (normalized frame), for the dataset's upright parent


@dataclass
class Run:
    request: RunRequest
    process: EngineProcess
    status: RunStatus = field(default_factory=RunStatus)
    phase: str = "fit"  # fit | export
    export_status: RunStatus = field(default_factory=RunStatus)
    export_started: float = 0.0
    finished: bool = False
    result_object: str = ""
    echo: Callable[[str], None] | None = None
    _last_print: float = 0.0

    @property
    def result_name(self) -> str:
        return f"{self.request.dataset} NeuS"

    @property
    def preview_name(self) -> str:
        return f"{self.request.dataset} NeuS preview"


_active: Run | None = None
last_run: Run | None = None  # the most recent run, finished or not (for the UI and tests)


def active_run() -> Run | None:
    return _active


def is_running() -> bool:
    return _active is not None and not _active.finished


def default_run_dir(dataset: str) -> Path:
    """``//neus_runs/<dataset>`` beside a saved .blend file, else ``<tmp>/neus_runs/<dataset>``."""
    if bpy.data.filepath:
        return Path(bpy.path.abspath("//")) / "neus_runs" / dataset
    return Path(tempfile.gettempdir()) / "neus_runs" / dataset


def request_from_scene(scene: bpy.types.Scene, engine_python: str = "") -> RunRequest:
    """Validates the scene settings and the dataset (cameras only, fast) and finds the engine.

    Raises:
        ValueError: bad data folder or dataset (``"<path>: <problem>"``).
        engine_process.EngineNotFoundError: no engine interpreter.
    """
    s = scene.neus
    if not s.data_dir.strip():
        raise ValueError("no dataset folder set (Photos)")
    data_dir = Path(bpy.path.abspath(s.data_dir)).absolute()
    cams = camera_source.load_camera_set(data_dir, s.data_format)  # DatasetError (a ValueError) on bad input
    dataset = camera_source.dataset_name(data_dir)
    run_dir = Path(bpy.path.abspath(s.output_dir)).absolute() if s.output_dir.strip() else default_run_dir(dataset)
    if run_dir.resolve() == data_dir.resolve():
        raise ValueError(f"{run_dir}: the output folder must not be the dataset folder")
    settings = parse_settings(s.engine_settings)
    if s.show_preview and not any(kv.startswith("train.preview_every=") for kv in settings):
        settings.append(f"train.preview_every={PREVIEW_EVERY}")
    if s.texture:
        settings.append("export.texture=true")  # the fit writes the textured OBJ/GLB itself
    if not s.use_masks and not any(kv.startswith("data.use_mask=") for kv in settings):
        settings.append("data.use_mask=false")  # the engine then layers its no-mask defaults
    user_region = blender_cameras.user_region(scene, dataset)  # the region object, once the artist edits it
    if user_region is not None and not any(kv.startswith("data.region.") for kv in settings):
        settings += user_region.settings()
    engine = engine_process.find_engine_python(engine_python)
    return RunRequest(scene.name, data_dir, run_dir, dataset, engine, s.preset, s.device, int(s.steps),
                      s.data_format, s.frame, bool(s.texture), bool(s.show_preview),
                      np.asarray(cams.scale_mat, dtype=np.float64), settings, np.asarray(cams.up))


def parse_settings(text: str) -> list[str]:
    """``"a.b=1 c='x y'"`` -> ``["a.b=1", "c=x y"]``; ValueError for an item without ``=``."""
    try:
        items = shlex.split(text or "")
    except ValueError as e:
        raise ValueError(f"Extra Settings: {e}") from e
    for item in items:
        key, eq, _ = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"Extra Settings: '{item}' is not KEY=VALUE")
    return items


def start(request: RunRequest, echo: Callable[[str], None] | None = None) -> Run:
    """Starts the engine for ``request`` and makes it the active run.

    Raises:
        RuntimeError: a run is already active.
        engine_process.EngineNotFoundError: the interpreter cannot be executed.
    """
    global _active, last_run
    if is_running():
        raise RuntimeError("a reconstruction is already running; cancel it first")
    cmd = engine_process.build_fit_command(
        request.engine.python, request.data_dir, request.run_dir, preset=request.preset, device=request.device,
        steps=request.steps, data_format=request.data_format, settings=request.settings,
    )
    proc = EngineProcess(cmd, request.run_dir, cwd=request.engine.repo_root or request.run_dir)
    proc.start()
    run = Run(request, proc, echo=echo)
    run.status.state = "running"
    run.status.stage = "starting"
    _active = last_run = run
    _say(run, f"[neus] engine started: {' '.join(cmd)}")
    _update_ui(run)
    return run


def _say(run: Run, text: str) -> None:
    if run.echo is not None:
        run.echo(text)


def _scene(run: Run) -> bpy.types.Scene | None:
    return bpy.data.scenes.get(run.request.scene_name)


def _run_scale_mat(run: Run) -> np.ndarray:
    """The run's normalized -> world matrix: its normalization.json, else the dataset cameras'."""
    try:
        return run_files.read_normalization(run.request.run_dir)
    except ValueError:
        return run.request.scale_mat if run.request.scale_mat is not None else np.eye(4)


def _import_result(run: Run, path: str | Path, name: str, kind: str = "results") -> bpy.types.Object:
    """Imports a mesh of the run into the dataset's ``kind`` sub-collection, under the dataset's parent."""
    scene = _scene(run) or bpy.context.scene
    req = run.request
    obj = blender_mesh.import_mesh(path, name, blender_cameras.sub_collection(scene, req.dataset, kind))
    blender_cameras.attach_result(obj, scene, req.dataset, req.frame, _run_scale_mat(run), req.up)
    return obj


def _start_export(run: Run) -> None:
    """Chains ``engine export --texture`` after a fit when a textured mesh was asked for and the fit made none."""
    req = run.request
    cmd = engine_process.build_export_command(req.engine.python, req.run_dir, texture=True, fmt="glb",
                                              frame="normalized")
    proc = EngineProcess(cmd, req.run_dir, cwd=req.engine.repo_root or req.run_dir,
                         log_path=req.run_dir / "engine_export_stderr.log")
    proc.start()
    run.process = proc
    run.phase = "export"
    run.export_started = time.time()
    run.status.state = "running"
    run.status.stage = "texturing"
    _say(run, f"[neus] exporting a textured mesh: {' '.join(cmd)}")


def handle_event(run: Run, event: dict) -> None:
    """Applies one engine event to the run (main thread only: it may create objects)."""
    name = event.get("event")
    if run.phase == "export":
        run.export_status.apply(event)
        if name == "exit":
            _finish_export(run, event)
        return
    run.status.apply(event)
    if name == "progress":
        now = time.time()
        if now - run._last_print >= PRINT_EVERY_S or (run.status.total and run.status.step >= run.status.total):
            run._last_print = now
            _say(run, f"[neus] {run.status.status_text()}")
    elif name == "stage":
        _say(run, f"[neus] stage: {event.get('stage')}")
    elif name == "start":
        _say(run, f"[neus] {run.status.total} steps on {run.status.device}")
    elif name == "log":
        _say(run, f"[neus] engine: {event.get('message')}")
    elif name == "error":
        _say(run, f"[neus] error: {run.status.last_error}")
    elif name == "preview_mesh" and run.request.show_preview and event.get("path"):
        try:
            _import_result(run, event["path"], run.preview_name, "previews")
        except (ValueError, OSError) as e:  # a preview is optional; never fail the run for it
            _say(run, f"[neus] preview not shown: {e}")
    elif name == "exit":
        _finish_fit(run, event)


def _finish_fit(run: Run, event: dict) -> None:
    state = event.get("state")
    st = run.status
    blender_mesh.remove_named_object(run.preview_name)
    if state == "done":
        mesh = st.mesh_path or str(run.request.run_dir / run_files.MESH_PLY)
        if not Path(mesh).is_file():
            _end(run, "failed", f"the engine finished but wrote no mesh ({mesh})")
            return
        try:
            obj = _import_result(run, mesh, run.result_name)
        except (ValueError, OSError) as e:
            _end(run, "failed", f"cannot import the result: {e}")
            return
        run.result_object = obj.name
        if run.request.texture:
            textured = run_files.textured_mesh_from(st.files)
            if textured is None:
                try:
                    _start_export(run)
                    return
                except engine_process.EngineNotFoundError as e:
                    st.last_error = f"texture export failed: {e}"
            else:
                _import_textured(run, textured)
        _end(run, "done")
    elif state == "cancelled":
        if st.mesh_path and Path(st.mesh_path).is_file():  # --export-on-cancel
            try:
                run.result_object = _import_result(run, st.mesh_path, run.result_name).name
            except (ValueError, OSError) as e:
                st.last_error = f"cannot import the mesh saved on cancel: {e}"
        _end(run, "cancelled")
    else:
        _end(run, "failed", st.last_error or run.process.failure_message())


def _import_textured(run: Run, path: str) -> None:
    try:
        run.result_object = _import_result(run, path, run.result_name).name
    except (ValueError, OSError, RuntimeError) as e:
        run.status.last_error = f"textured mesh not imported (vertex colours kept): {e}"


def _finish_export(run: Run, event: dict) -> None:
    es = run.export_status
    if event.get("returncode") == 0:
        path = run_files.textured_mesh_from(es.files) or (es.mesh_path if es.mesh_path and not
                                                          es.mesh_path.endswith(".ply") else None)
        path = path or run_files.newest_mesh(run.request.run_dir, since=run.export_started - 1.0)
        if path:
            _import_textured(run, path)
        else:
            run.status.last_error = "texture export wrote no .glb/.obj file (vertex colours kept)"
    elif event.get("state") != "cancelled":
        run.status.last_error = ("texture export failed (vertex colours kept): "
                                 + (es.last_error or run.process.failure_message()))
    _end(run, "cancelled" if event.get("state") == "cancelled" else "done")


def _end(run: Run, state: str, error: str | None = None) -> None:
    global _active
    run.status.state = state
    if error:
        run.status.last_error = error
    run.finished = True
    if state == "done":
        run.status.stage = "done"
        _say(run, f"[neus] done: {run.result_object} from {run.status.mesh_path}")
    elif state == "cancelled":
        _say(run, "[neus] cancelled")
    else:
        _say(run, f"[neus] failed: {run.status.last_error}")
    if run.status.last_error and state == "done":
        _say(run, f"[neus] warning: {run.status.last_error}")
    if _active is run:
        _active = None
    _update_ui(run)
    _set_status_bar(None)


def _update_ui(run: Run) -> None:
    scene = _scene(run)
    if scene is not None:
        settings = scene.neus
        apply_status(settings, run.status)
        if run.phase == "export" and not run.finished:
            settings.stage = "texturing"
        settings.run_dir = str(run.request.run_dir)
        if run.result_object:
            settings.result_object = run.result_object
    if not run.finished:
        _set_status_bar(f"NeuS: {run.status.status_text()}")
    _redraw()


def _windows() -> list:
    return [w for wm in bpy.data.window_managers for w in wm.windows]


def _set_status_bar(text: str | None) -> None:
    for win in _windows():
        try:
            win.workspace.status_text_set(text)
        except (AttributeError, RuntimeError, TypeError):
            pass


def _redraw() -> None:
    for win in _windows():
        for area in win.screen.areas:
            if area.type in ("VIEW_3D", "PROPERTIES"):
                area.tag_redraw()


def _fail_internal(run: Run, exc: BaseException) -> None:
    traceback.print_exception(exc)
    run.process.kill()
    _end(run, "failed", f"add-on error while handling the engine: {exc}")


def timer_step() -> float | None:
    """One tick of the interactive driver: apply every queued event. Returns the delay until the next tick,
    or None when no run is active (which also unregisters it as a ``bpy.app.timers`` function)."""
    run = _active
    if run is None:
        return None
    try:
        for event in run.process.poll_events():
            handle_event(run, event)
            if run.finished:
                break
        if not run.finished:
            _update_ui(run)
    except Exception as e:  # a timer that raises is dropped silently by Blender: end the run visibly instead
        _fail_internal(run, e)
    if run.finished:
        if bpy.app.timers.is_registered(timer_step):
            bpy.app.timers.unregister(timer_step)
        return None
    return TIMER_INTERVAL


def start_timer() -> None:
    """Registers :func:`timer_step`; persistent, so it survives File > Open / New (a non-persistent timer is
    dropped on a file load while the engine keeps running, and the run could never end nor be cancelled)."""
    if not bpy.app.timers.is_registered(timer_step):
        bpy.app.timers.register(timer_step, first_interval=TIMER_INTERVAL, persistent=True)


def follow_loaded_file(scene: bpy.types.Scene) -> None:
    """Another .blend was opened (or File > New) during a run: the run continues and reports into ``scene``,
    the new file's active scene, where its result will be imported. Called from the ``load_post`` handler."""
    run = _active
    if run is None or run.finished:
        return
    run.request.scene_name = scene.name
    _say(run, f"[neus] a new file was loaded: the reconstruction continues into scene '{scene.name}'")
    _update_ui(run)
    start_timer()


def run_blocking(run: Run, poll_s: float = 0.25) -> str:
    """Drives ``run`` to its end on the calling (main) thread; Ctrl+C cancels the engine. Returns the state."""
    interrupts = 0
    while not run.finished:
        try:
            event = run.process.next_event(timeout=poll_s)
            if event is not None:
                handle_event(run, event)
        except KeyboardInterrupt:
            interrupts += 1
            _say(run, "[neus] interrupted: cancelling the engine" if interrupts == 1 else "[neus] killing the engine")
            if interrupts == 1:
                run.process.cancel()
            else:
                run.process.kill()
        except Exception as e:
            _fail_internal(run, e)
    return run.status.state


def cancel() -> bool:
    """Asks the active run's engine to stop; the run ends when the engine exits. False if nothing runs."""
    run = _active
    if run is None or run.finished:
        return False
    run.process.cancel()
    run.status.stage = "cancelling"
    _update_ui(run)
    return True


def shutdown() -> None:
    """Stops any engine at once (add-on unregistered)."""
    global _active
    run = _active
    if run is not None:
        run.process.kill()
        run.finished = True
        _active = None
    if bpy.app.timers.is_registered(timer_step):
        bpy.app.timers.unregister(timer_step)
