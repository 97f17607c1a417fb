"""A camera solve (``engine solve``) as a state machine: engine events in, scene actions out. No bpy.

A :class:`SolveJob` is a :class:`job_state.Job`, driven like a reconstruction by the bpy driver
(``job_driver.py``). When the engine has solved the photos (or video), the job asks its host to import the solved
COLMAP dataset (:meth:`Host.import_cameras`: cameras, photo backgrounds, sparse points; the panel's data folder
then points at it, so Reconstruct trains on it). Blender's Python never imports pycolmap: the engine solves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import photo_source
from .engine_process import DEFAULT_SILENCE_S, EngineLocation, EngineProcess
from .errors import AddonError
from .job_state import PRINT_EVERY_S, Host, Job


@dataclass
class SolveJob(Job):
    """``engine solve SOURCE --out OUT`` and the import of what it solved."""

    WHAT = "camera solve"
    INTERNAL_ERROR = "add-on error while solving"
    KILLED_FROM_PANEL = "killed from the panel after {:.0f} s without a word"

    scene_name: str
    source: Path
    out: Path
    imported: str = ""  # the collection the solved cameras went into

    def start(self, host: Host) -> None:
        """Starts the engine. Raises AddonError (unwritable output folder, the engine cannot start)."""
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AddonError(f"{self.out.parent}: cannot create the output folder ({e.strerror or e})") from e
        super().start(host)
        self.status.stage = "solving"
        host.say(self, f"[neus] solving cameras: {' '.join(self.process.argv)}")

    def give_up_reason(self) -> str:
        return f"the engine sent nothing for {self.process.silent_for():.0f} s: killed it"

    def end(self, host: Host, state: str, error: str | None = None) -> None:
        """As :meth:`Job.end`; the solve's last error is always ``error`` (the warnings of a done solve)."""
        self.status.last_error = error or ""
        super().end(host, state, error)

    def on_end(self, host: Host) -> None:
        state, error = self.status.state, self.status.last_error
        self.status.stage = "solved" if state == "done" else state
        if state != "done":
            host.say(self, f"[neus] solve {state}: {error}" if error else f"[neus] solve {state}")

    # -- events ------------------------------------------------------------------------------------------------
    def handle_event(self, host: Host, event: dict) -> None:
        name = event.get("event")
        self.status.apply(event)
        if name == "stage":
            host.say(self, f"[neus] solve stage: {event.get('stage')}")
        elif name == "progress":
            now = time.time()
            if now - self._last_print >= PRINT_EVERY_S:
                self._last_print = now
                host.say(self, f"[neus] {event.get('stage')} {event.get('step')}/{event.get('total')} "
                               f"{event.get('unit', '')}")
        elif name == "warning":
            self.warnings.append(str(event.get("message", "")))
            host.say(self, f"[neus] warning: {event.get('message')}")
        elif name == "error":
            host.say(self, f"[neus] error: {self.status.last_error}")
        elif name == "exit":
            self._finish(host, event)

    def _finish(self, host: Host, event: dict) -> None:
        state = event.get("state")
        if state == "done":
            try:
                self.imported, n_cameras, n_points = host.import_cameras(self, str(self.out))
            except AddonError as e:
                self.end(host, "failed", f"the cameras were solved but could not be imported: {e}")
                return
            host.say(self, f"[neus] solved: {n_cameras} cameras and {n_points} sparse points in '{self.imported}'")
            self.end(host, "done", "; ".join(self.warnings))
        elif state == "cancelled":
            self.end(host, "cancelled", str(event.get("killed") or ""))
        else:
            self.end(host, "failed", self.status.last_error or self.process.failure_message())

    # -- what the UI shows -------------------------------------------------------------------------------------
    def status_bar_text(self) -> str:
        return f"NeuS camera solve: {self.status.status_text()}"

    def outcome(self) -> tuple[str, str]:
        st = self.status
        if st.state == "done":
            warned = f" ({'; '.join(self.warnings)})" if self.warnings else ""
            return ("WARNING" if self.warnings else "INFO"), f"Cameras solved into {self.out}{warned}"
        if st.state == "cancelled":
            return "WARNING", "Camera solving cancelled"
        return "ERROR", f"Camera solving failed: {st.last_error}"


def new_solve(scene_name: str, source: Path, out: Path, engine: EngineLocation, matcher: str = "auto",
              echo: Callable[[str], None] | None = None, silence_s: float = DEFAULT_SILENCE_S) -> SolveJob:
    """A solve of ``source`` into ``out`` whose engine is not started yet (AddonError for a bad matcher)."""
    cmd = photo_source.build_solve_command(engine.python, source, out, matcher)
    # The log goes beside the dataset: the engine only writes into an empty folder or an earlier solve.
    proc = EngineProcess(cmd, out, cwd=engine.repo_root or out.parent,
                         log_path=out.parent / f"{out.name}.{photo_source.SOLVE_LOG}", silence_s=silence_s)
    return SolveJob(scene_name, source, out, process=proc, echo=echo)
