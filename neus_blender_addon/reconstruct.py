"""Reconstruction runs in Blender: start the engine, apply its events on Blender's main thread, import the result.

The run's logic is the bpy-free state machine :class:`run_state.Run`; this module gives it a :class:`BlenderHost`
(mesh import, preview removal, console) and drives it:

- interactive: a persistent ``bpy.app.timers`` function, :func:`timer_step`, drains the event queue every 0.2 s
  and keeps running across File > Open / New (tests call it directly, since timers do not fire in background
  mode);
- background (``bpy.app.background``): :func:`run_blocking` waits on the queue until the run ends, printing
  progress to stdout.

One run at a time (module state ``_active``). When a run ends its result import is one undo step, and from the
timer its outcome is reported with ``neus.report`` (status bar and Info log, seen with the sidebar closed).
"""

from __future__ import annotations

import shlex
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import bpy
import numpy as np

from . import blender_cameras, blender_mesh, timer_ui
from .core import camera_source, engine_process, run_files, run_state
from .core.errors import AddonError
from .core.run_state import Run, RunRequest
from .properties import apply_status

TIMER_INTERVAL = 0.2
PREVIEW_EVERY = 250  # steps between live-preview meshes, when the scene asks for them
LOG_TEXT = "NeuS engine log"  # Text data-block holding the last run's engine log

_active: Run | None = None
last_run: Run | None = None  # the most recent run, finished or not (for the UI and tests)
_shown: dict[str, tuple] = {}  # scene name -> the status last copied into it (redraw only on change)


def active_run() -> Run | None:
    return _active


def is_running() -> bool:
    return _active is not None and not _active.finished


def default_run_dir(dataset: str) -> Path:
    """Parent of the numbered run folders: ``//neus_runs/<dataset>`` beside a saved .blend file, else
    ``<tmp>/neus_runs/<dataset>``."""
    if bpy.data.filepath:
        return Path(bpy.path.abspath("//")) / "neus_runs" / dataset
    return Path(tempfile.gettempdir()) / "neus_runs" / dataset


def request_from_scene(scene: bpy.types.Scene, engine_python: str = "", run_dir: Path | None = None,
                       resume: bool = False,
                       silence_s: float = engine_process.DEFAULT_SILENCE_S) -> RunRequest:
    """Validates the scene settings and the dataset (cameras only, fast) and finds the engine.

    The run goes to ``run_dir`` when given (headless, Resume), else to a new numbered folder
    ``run_NNN`` in the Output folder, with a result object of its own (``"<dataset> NeuS run_NNN"``).

    Raises:
        AddonError: bad settings, data folder or dataset (``"<path>: <problem>"``), or no engine interpreter.
    """
    s = scene.neus
    if not s.data_dir.strip():
        raise AddonError("no dataset folder set (Photos)")
    data_dir = Path(bpy.path.abspath(s.data_dir)).absolute()
    cams = camera_source.load_camera_set(data_dir, s.data_format)
    dataset = camera_source.dataset_name(data_dir)
    result_name = ""
    if run_dir is None:
        parent = Path(bpy.path.abspath(s.output_dir)).absolute() if s.output_dir.strip() else default_run_dir(dataset)
        if parent.resolve() == data_dir.resolve():
            raise AddonError(f"{parent}: the output folder must not be the dataset folder")
        run_dir = run_files.next_run_dir(parent)
    if run_dir.name.startswith(run_files.RUN_PREFIX):
        result_name = f"{dataset} NeuS {run_dir.name}"
    if run_dir.resolve() == data_dir.resolve():
        raise AddonError(f"{run_dir}: the output folder must not be the dataset folder")
    settings = parse_settings(s.engine_settings)
    if s.show_preview and not any(kv.startswith("train.preview_every=") for kv in settings):
        settings.append(f"train.preview_every={PREVIEW_EVERY}")
    if s.texture:  # the panel's texture options, except where the artist's own settings name the key
        user_keys = {kv.split("=", 1)[0] for kv in settings}
        settings += [kv for kv in engine_process.texture_settings(s.texture_size, s.color_source, int(s.game_faces))
                     if kv.split("=", 1)[0] not in user_keys]
    if not s.use_masks and not any(kv.startswith("data.use_mask=") for kv in settings):
        settings.append("data.use_mask=false")  # the engine then layers its no-mask defaults
    user_region = blender_cameras.user_region(scene, dataset)  # the region object, once the artist edits it
    if user_region is not None and not any(kv.startswith("data.region.") for kv in settings):
        settings += user_region.settings()
    engine = engine_process.find_engine_python(engine_python)
    return RunRequest(scene.name, data_dir, run_dir, dataset, engine, s.preset, s.device, int(s.steps),
                      s.data_format, s.frame, bool(s.texture), bool(s.show_preview),
                      np.asarray(cams.scale_mat, dtype=np.float64), settings, resume=resume,
                      export_on_cancel=bool(s.export_on_cancel), result_name=result_name, up=np.asarray(cams.up),
                      silence_s=silence_s)


def resume_request(scene: bpy.types.Scene, engine_python: str = "",
                   silence_s: float = engine_process.DEFAULT_SILENCE_S) -> RunRequest:
    """A request that continues the scene's last run folder from its checkpoint (``fit --resume``).

    Raises:
        AddonError: no run folder, or nothing to resume in it.
    """
    s = scene.neus
    if not s.run_dir.strip():
        raise AddonError("no earlier run to resume")
    run_dir = Path(bpy.path.abspath(s.run_dir)).absolute()
    problem = run_state.resume_problem(run_dir)
    if problem:
        raise AddonError(problem)
    return request_from_scene(scene, engine_python, run_dir=run_dir, resume=True, silence_s=silence_s)


def parse_settings(text: str) -> list[str]:
    """``"a.b=1 c='x y'"`` -> ``["a.b=1", "c=x y"]``; AddonError for an item without ``=``."""
    try:
        items = shlex.split(text or "")
    except ValueError as e:
        raise AddonError(f"Extra Settings: {e}") from e
    for item in items:
        key, eq, _ = item.partition("=")
        if not eq or not key.strip():
            raise AddonError(f"Extra Settings: '{item}' is not KEY=VALUE")
    return items


def start(request: RunRequest, echo: Callable[[str], None] | None = None) -> Run:
    """Starts the engine for ``request`` and makes it the active run.

    Raises:
        AddonError: a run is already active, bad options, or the engine cannot start.
    """
    global _active, last_run
    if is_running():
        raise AddonError("a reconstruction is already running; cancel it first")
    run = run_state.new_run(request, echo)
    run.start(HOST)
    _active = last_run = run
    _update_ui(run)
    return run


class BlenderHost:
    """What :class:`run_state.Run` asks of Blender."""

    def import_mesh(self, run: Run, path: str, role: str) -> str:
        preview = role == "preview"
        obj = _import_result(run, path, run.preview_name if preview else run.result_name,
                             "previews" if preview else "results")
        blender_mesh.stamp(obj)  # as placed: a later move by the artist marks it as theirs
        return obj.name

    def clear_preview(self, run: Run) -> None:
        blender_mesh.remove_named_object(run.preview_name)

    def say(self, run: Run, text: str) -> None:
        if run.echo is not None:
            run.echo(text)


HOST = BlenderHost()


def _scene(run: Run) -> bpy.types.Scene | None:
    return bpy.data.scenes.get(run.request.scene_name)


def _run_scale_mat(run: Run) -> np.ndarray:
    """The run's normalized -> world matrix: its normalization.json, else the dataset cameras'."""
    try:
        return run_files.read_normalization(run.request.run_dir)
    except AddonError:
        return run.request.scale_mat if run.request.scale_mat is not None else np.eye(4)


def _import_result(run: Run, path: str | Path, name: str, kind: str = "results") -> bpy.types.Object:
    """Imports a mesh of the run into the dataset's ``kind`` sub-collection, under the dataset's parent."""
    scene = _scene(run) or bpy.context.scene
    req = run.request
    obj = blender_mesh.import_mesh(path, name, blender_cameras.sub_collection(scene, req.dataset, kind))
    try:
        metres = run_files.read_metres_per_unit(req.run_dir)
    except AddonError:
        metres = None  # no normalization.json yet (a live preview) or an older run
    blender_cameras.attach_result(obj, scene, req.dataset, req.frame, _run_scale_mat(run), req.up, metres)
    return obj


def _finish(run: Run, report: bool) -> None:
    """The run ended: forget it, show its end state, keep its log, make its import one undo step and (from the
    timer, where no operator is waiting for the outcome) report it."""
    global _active
    if _active is run:
        _active = None
    _update_ui(run)
    timer_ui.set_status_bar(None)
    _store_log(run)
    if run.result_object:
        _undo_push(f"NeuS: import {run.result_object}")
    if not report:
        return
    st = run.status
    if st.state == "failed":
        timer_ui.report("ERROR", f"Reconstruction failed: {st.last_error}")
    elif st.state == "cancelled":
        imported = f"; imported the current mesh as '{run.result_object}'" if run.imported_on_cancel else ""
        why = f" ({st.last_error})" if st.last_error else ""
        timer_ui.report("WARNING", f"Reconstruction cancelled{imported}{why}")
    else:
        timer_ui.report("WARNING" if st.last_error else "INFO", f"Reconstruction finished: '{run.result_object}'"
                        + (f" ({st.last_error})" if st.last_error else ""))


def _undo_push(message: str) -> None:
    try:
        with timer_ui.window_context():
            bpy.ops.ed.undo_push(message=message)
    except RuntimeError as e:  # no undo stack (some background setups): the import stays, without a step
        print(f"[neus] no undo step: {e}", flush=True)


def _store_log(run: Run) -> None:
    """The whole engine log in a Text data-block (Scripting > Text Editor), for after the run."""
    try:
        text = run.process.log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    block = bpy.data.texts.get(LOG_TEXT) or bpy.data.texts.new(LOG_TEXT)
    block.clear()
    block.write(f"# {run.process.log_path}\n{text}")


def silent_seconds(process: engine_process.EngineProcess) -> int:
    """Whole seconds the engine has been silent once past its limit, else 0 (what the panel's warning shows)."""
    return int(process.silent_for()) if process.not_responding else 0


def _shown_state(run: Run) -> tuple:
    st = run.status
    return (st.state, st.stage, run.phase, st.counts(), st.loss, st.psnr, round(st.eta_s or 0.0),
            st.last_error, run.result_object, tuple(run.log_tail), str(run.request.run_dir), run.finished,
            silent_seconds(run.process))


def _update_ui(run: Run, force: bool = False) -> None:
    """Copies the run's status into its scene and redraws the sidebars, only when what they show changed."""
    scene = _scene(run)
    if scene is None:
        return
    shown = _shown_state(run)
    if not force and _shown.get(scene.name) == shown:
        return
    _shown[scene.name] = shown
    settings = scene.neus
    apply_status(settings, run.status)
    if run.phase == "export" and not run.finished:
        settings.stage = "texturing"
    settings.run_dir = str(run.request.run_dir)
    settings.log_tail = "\n".join(run.log_tail)
    settings.silent_s = 0 if run.finished else silent_seconds(run.process)
    if run.result_object:
        settings.result_object = run.result_object
    if not run.finished:
        timer_ui.set_status_bar(f"NeuS: {run.status.status_text()}")
    timer_ui.redraw_sidebars()


def _fail_internal(run: Run, exc: BaseException) -> None:
    traceback.print_exception(exc)
    run.fail_internal(HOST, exc)


def timer_step() -> float | None:
    """One tick of the interactive driver: apply every queued event. Returns the delay until the next tick,
    or None when no run is active (which also unregisters it as a ``bpy.app.timers`` function)."""
    run = _active
    if run is None:
        return None
    if _scene(run) is None:  # a file load took the run's scene: follow the new file even without the load_post handler
        follow_loaded_file(bpy.context.scene)
    try:
        for event in run.process.poll_events():
            run.handle_event(HOST, event)
            if run.finished:
                break
        if not run.finished:
            run.refresh_log_tail()
            _update_ui(run)
    except Exception as e:  # a timer that raises is dropped silently by Blender: end the run visibly instead
        _fail_internal(run, e)
    if run.finished:
        _finish(run, report=True)
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
    HOST.say(run, f"[neus] a new file was loaded: the reconstruction continues into scene '{scene.name}'")
    _update_ui(run, force=True)
    start_timer()


def run_blocking(run: Run, poll_s: float = 0.25) -> str:
    """Drives ``run`` to its end on the calling (main) thread; Ctrl+C cancels the engine. Returns the state."""
    interrupts = 0
    while not run.finished:
        try:
            event = run.process.next_event(timeout=poll_s)
            if event is not None:
                run.handle_event(HOST, event)
            else:
                run.give_up_if_silent(HOST)  # nobody is there to press Kill
        except KeyboardInterrupt:
            interrupts += 1
            HOST.say(run, "[neus] interrupted: cancelling the engine" if interrupts == 1
                     else "[neus] killing the engine")
            if interrupts == 1:
                run.process.cancel()
            else:
                run.process.kill()
        except Exception as e:
            _fail_internal(run, e)
    _finish(run, report=False)  # the operator that waited reports the outcome
    return run.status.state


def cancel() -> bool:
    """Asks the active run's engine to stop; the run ends when the engine exits. False if nothing runs."""
    run = _active
    if run is None or not run.cancel():
        return False
    _update_ui(run)
    return True


def kill() -> bool:
    """The panel's Kill: ends the active run's engine (its whole process group) at once. False if nothing runs."""
    run = _active
    if run is None or not run.kill():
        return False
    _update_ui(run)
    return True


def shutdown() -> None:
    """Stops any engine at once (add-on unregistered, Blender or the script exiting)."""
    global _active
    run = _active
    if run is not None:
        run.process.kill()
        run.finished = True
        _active = None
    _shown.clear()
    if bpy.app.timers.is_registered(timer_step):
        bpy.app.timers.unregister(timer_step)
