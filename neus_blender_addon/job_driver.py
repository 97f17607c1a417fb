"""Drives the add-on's one engine job (a reconstruction or a camera solve) inside Blender.

One job at a time, of either kind (:class:`core.job_state.Job`): :func:`start` refuses a second. Interactively a
persistent ``bpy.app.timers`` function (:func:`timer_step`) applies the engine's events on the main thread; it
survives File > Open / New, and the job then reports into the newly loaded file's scene
(:func:`follow_loaded_file`, from the ``load_post`` handler or the timer itself). In background mode (scripts,
``headless.py``) :func:`run_blocking` drives the job to its end and gives up on a silent engine. Cancel, Kill,
shutdown (add-on unregistered, Blender quitting: the engine's whole process group ends), the panel's status
(copied into ``scene.neus`` and redrawn only when it changed, plus the status bar) and the end report live here.

What is Blender-side and specific to a job kind (building the job from the scene, importing meshes or cameras)
is in ``reconstruct.py`` and ``solve_cameras.py``: each gives :func:`start` a :class:`BlenderHost`.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

import bpy

from . import timer_ui
from .core.errors import AddonError
from .core.job_state import Job
from .properties import apply_status

TIMER_INTERVAL = 0.2

_active: Job | None = None
_host: BlenderHost | None = None
last_job: Job | None = None  # the most recent job, finished or not (for the UI, headless.py and tests)
_shown: dict[str, tuple] = {}  # scene name -> what was last copied into it (redraw only on change)


class BlenderHost:
    """The Blender side of a job (main thread only): prints, and what is done once the job ended. Subclasses add
    what their job kind imports (``reconstruct.ReconstructHost``, ``solve_cameras.SolveHost``)."""

    def say(self, job: Job, text: str) -> None:
        if job.echo is not None:
            job.echo(text)

    def ended(self, job: Job) -> None:
        """The job ended and was forgotten (its status is shown): keep what is worth keeping."""


def active() -> Job | None:
    """The running job, if any (None once it ended)."""
    return _active


def is_running() -> bool:
    """A job (reconstruction or camera solve) is running: one engine job at a time."""
    return _active is not None and not _active.finished


def start(job: Job, host: BlenderHost) -> Job:
    """Starts ``job``'s engine and makes it the active job (call :func:`start_timer` or :func:`run_blocking`).

    Raises:
        AddonError: a job is already running, or the engine cannot start.
    """
    global _active, _host, last_job
    if is_running():
        raise AddonError(f"a {_active.WHAT} is already running; cancel it first")
    job.start(host)
    _active, _host, last_job = job, host, job
    update_ui(job)
    return job


def _scene(job: Job) -> bpy.types.Scene | None:
    return bpy.data.scenes.get(job.scene_name)


def update_ui(job: Job, force: bool = False) -> None:
    """Copies the job's status into its scene and redraws the sidebars, only when what they show changed."""
    scene = _scene(job)
    if scene is None:
        return
    shown = job.shown_state()
    if not force and _shown.get(scene.name) == shown:
        return
    _shown[scene.name] = shown
    settings = scene.neus
    apply_status(settings, job.status)
    for name, value in job.panel_fields().items():
        setattr(settings, name, value)
    settings.silent_s = job.silent_seconds()
    if not job.finished:
        timer_ui.set_status_bar(job.status_bar_text())
    timer_ui.redraw_sidebars()


def _fail_internal(job: Job, host: BlenderHost, exc: BaseException) -> None:
    traceback.print_exception(exc)
    job.fail_internal(host, exc)


def _finish(job: Job, host: BlenderHost, report: bool) -> None:
    """The job ended: forget it, show its end state, let its host keep what is worth keeping (the engine log, an
    undo step) and (from the timer, where no operator waits for the outcome) report it."""
    global _active, _host
    if _active is job:
        _active, _host = None, None
    update_ui(job)
    timer_ui.set_status_bar(None)
    host.ended(job)
    if report:
        timer_ui.report(*job.outcome())  # seen with the sidebar closed too


def timer_step() -> float | None:
    """One tick of the interactive driver: apply every queued event. Returns the delay until the next tick, or
    None when no job is active (which also unregisters it as a ``bpy.app.timers`` function)."""
    job, host = _active, _host
    if job is None or host is None:
        return None
    if _scene(job) is None:  # a file load took the job's scene: follow the new file even without load_post
        follow_loaded_file(bpy.context.scene)
    try:
        job.poll(host)
        if not job.finished:
            update_ui(job)
    except Exception as e:  # a timer that raises is dropped silently by Blender: end the job visibly instead
        _fail_internal(job, host, e)
    if job.finished:
        _finish(job, host, report=True)
        return None
    return TIMER_INTERVAL


def start_timer() -> None:
    """Registers :func:`timer_step`; persistent, so it survives File > Open / New (a non-persistent timer is
    dropped on a file load while the engine keeps running, and the job could never end nor be cancelled)."""
    if not bpy.app.timers.is_registered(timer_step):
        bpy.app.timers.register(timer_step, first_interval=TIMER_INTERVAL, persistent=True)


def follow_loaded_file(scene: bpy.types.Scene) -> None:
    """Another .blend was opened (or File > New) during a job: the job continues and reports into ``scene``, the
    new file's active scene (where a reconstruction's result or the solved cameras are imported). Called from the
    ``load_post`` handler, and by the timer when the job's scene is gone."""
    job, host = _active, _host
    if job is None or job.finished or host is None:
        return
    job.scene_name = scene.name
    host.say(job, f"[neus] a new file was loaded: the {job.WHAT} continues into scene '{scene.name}'")
    update_ui(job, force=True)
    start_timer()


def run_blocking(job: Job, poll_s: float = 0.25) -> str:
    """Drives ``job`` to its end on the calling (main) thread (background mode, scripts), giving up on an engine
    silent past its limit; Ctrl+C cancels the engine, a second one kills it. Returns the final state; the operator
    that waited reports the outcome."""
    host = _host if job is _active else None
    if host is None:
        raise AddonError("run_blocking: the job is not the active job (start it with job_driver.start)")
    interrupts = 0
    while not job.finished:
        try:
            job.next_event(host, poll_s)
        except KeyboardInterrupt:
            interrupts += 1
            host.say(job, "[neus] interrupted: cancelling the engine" if interrupts == 1
                     else "[neus] killing the engine")
            if interrupts == 1:
                job.process.cancel()
            else:
                job.process.kill()
        except Exception as e:
            _fail_internal(job, host, e)
    _finish(job, host, report=False)
    return job.status.state


def _act_on_active(action: Callable[[Job], bool]) -> bool:
    job = _active
    if job is None or not action(job):
        return False
    update_ui(job)
    return True


def cancel() -> bool:
    """Asks the active job's engine to stop; the job ends when the engine exits. False if nothing runs."""
    return _act_on_active(Job.cancel)


def kill() -> bool:
    """The panel's Kill: ends the active job's engine (its whole process group) at once. False if nothing runs."""
    return _act_on_active(Job.kill)


def shutdown() -> None:
    """Stops any engine at once (add-on unregistered, Blender or the script exiting)."""
    global _active, _host
    job = _active
    if job is not None:
        job.process.kill()
        job.finished = True
        _active, _host = None, None
    _shown.clear()
    if bpy.app.timers.is_registered(timer_step):
        bpy.app.timers.unregister(timer_step)
