"""What every engine job of the add-on shares, as a state machine: engine events in, scene actions out. No bpy.

The add-on has two jobs, a reconstruction (:class:`run_state.Run`) and a camera solve
(:class:`solve_state.SolveJob`). Both are a :class:`Job`: one :class:`EngineProcess` at a time, a
:class:`RunStatus` the panel shows, the name of the scene that shows it (it follows File > Open / New), the
engine's warnings, and a ``finished`` flag set exactly once, by :meth:`Job.end`. The bpy driver
(``job_driver.py``) calls :meth:`Job.poll` from its timer (or :meth:`Job.next_event` in background mode) and gives
the job a :class:`Host` that does what needs Blender; what each event does is the job's :meth:`Job.handle_event`.

States: ``running`` until the engine's exit, then ``done``, ``cancelled`` or ``failed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from .engine_process import EngineProcess
from .protocol import RunStatus

PRINT_EVERY_S = 2.0  # console progress lines at most this often


class Host(Protocol):
    """What a job asks of Blender (main thread only). A reconstruction imports meshes, a camera solve cameras."""

    def import_mesh(self, job: Any, path: str, role: str) -> str:
        """Imports ``path`` as the run's ``role`` ("preview" | "result") object; returns its name.
        Raises AddonError when the file cannot be imported."""

    def clear_preview(self, job: Any) -> None:
        """Removes the run's preview object (unless the artist changed it)."""

    def import_cameras(self, job: Any, out_dir: str) -> tuple[str, int, int]:
        """Imports the solved dataset in ``out_dir`` (cameras, photo backgrounds, sparse points) and points the
        scene's data folder at it; returns (collection name, cameras, sparse points). Raises AddonError when the
        dataset cannot be imported."""

    def say(self, job: Any, text: str) -> None:
        """One console line."""


@dataclass(kw_only=True)
class Job:
    """One engine job and what the UI shows of it. Subclasses say what the events do (:meth:`handle_event`)."""

    WHAT: ClassVar[str] = "engine job"  # "the <WHAT> continues into scene ..." (a file was loaded)
    INTERNAL_ERROR: ClassVar[str] = "add-on error while handling the engine"
    KILLED_FROM_PANEL: ClassVar[str] = "killed from the panel after {:.0f} s without a word from the engine"

    process: EngineProcess
    status: RunStatus = field(default_factory=RunStatus)
    warnings: list[str] = field(default_factory=list)  # the engine's ``warning`` events
    finished: bool = False
    echo: Callable[[str], None] | None = None
    gave_up: str = ""  # why the add-on gave up on a silent engine (blocking mode, where nobody can press Kill)
    _last_print: float = 0.0
    # Each subclass has a settable ``scene_name`` (a field or a property): the scene that shows the job.

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self, host: Host) -> None:
        """Starts the engine process. Raises AddonError when it cannot start."""
        self.process.start()
        self.status.state = "running"

    def cancel(self) -> bool:
        """Asks the engine to stop; the job ends when it exits. False when the job already ended."""
        if self.finished:
            return False
        self.process.cancel()
        self.status.stage = "cancelling"
        return True

    def kill(self) -> bool:
        """The panel's Kill: ends the engine's process group at once (the job then ends ``cancelled``). False when
        the job already ended."""
        if self.finished:
            return False
        self.process.kill_now(self.KILLED_FROM_PANEL.format(self.process.silent_for()))
        self.status.stage = "killing"
        return True

    def give_up_reason(self) -> str:
        """The line that says why the add-on killed a silent engine (see :meth:`give_up_if_silent`)."""
        return (f"the engine sent nothing for {self.process.silent_for():.0f} s (limit "
                f"{self.process.silence_s:.0f} s): killed it")

    def give_up_if_silent(self, host: Host) -> bool:
        """Headless / blocking jobs, where nobody can press Kill: kills an engine silent for its silence limit and
        records why (:attr:`gave_up`). True when it gave up."""
        if self.finished or self.gave_up or not self.process.not_responding:
            return False
        self.gave_up = self.give_up_reason()
        host.say(self, f"[neus] {self.gave_up}")
        self.process.kill_now(self.gave_up)
        return True

    def end(self, host: Host, state: str, error: str | None = None) -> None:
        """Final state; called once, when the job's last process has exited (or the add-on gave up on it)."""
        self.status.state = state
        if error:
            self.status.last_error = error
        self.finished = True
        self.on_end(host)

    def on_end(self, host: Host) -> None:
        """What the job says (and records) once it ended; :attr:`status` holds the final state."""

    def fail_internal(self, host: Host, exc: BaseException) -> None:
        """The add-on itself failed while handling the job: stop the engine and end visibly."""
        self.process.kill()
        self.end(host, "failed", f"{self.INTERNAL_ERROR}: {exc}")

    # -- events ------------------------------------------------------------------------------------------------
    def poll(self, host: Host) -> None:
        """Applies every event the engine sent so far (the interactive driver's timer tick)."""
        for event in self.process.poll_events():
            self.handle_event(host, event)
            if self.finished:
                return
        self.refresh()

    def next_event(self, host: Host, timeout: float) -> None:
        """Waits up to ``timeout`` seconds for one event and applies it; gives up on a silent engine (background
        mode, where nobody can press Kill)."""
        event = self.process.next_event(timeout=timeout)
        if event is not None:
            self.handle_event(host, event)
        else:
            self.give_up_if_silent(host)

    def handle_event(self, host: Host, event: dict) -> None:
        """Applies one engine event (main thread: it may create objects)."""
        raise NotImplementedError

    def refresh(self) -> None:
        """Between events: re-reads what the panel shows besides the events (a reconstruction's log tail)."""

    # -- what the UI shows -------------------------------------------------------------------------------------
    def panel_fields(self) -> dict[str, Any]:
        """Scene properties (``scene.neus``) this job sets besides its :class:`RunStatus`."""
        return {}

    def status_bar_text(self) -> str:
        return f"NeuS: {self.status.status_text()}"

    def silent_seconds(self) -> int:
        """Whole seconds the engine has been silent once past its limit, else 0 (the panel's warning)."""
        return int(self.process.silent_for()) if self.process.not_responding and not self.finished else 0

    def shown_state(self) -> tuple:
        """Everything the panel shows of the job: the driver copies and redraws only when this changed."""
        st = self.status
        return (st.state, st.stage, st.counts(), st.loss, st.psnr, round(st.eta_s or 0.0), st.last_error,
                self.finished, self.silent_seconds(), tuple(sorted(self.panel_fields().items())))

    def outcome(self) -> tuple[str, str]:
        """(report level, message) for the ended job, reported from the timer where no operator waits for it."""
        raise NotImplementedError
