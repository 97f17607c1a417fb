"""A reconstruction run as a state machine: engine events in, scene actions out. No bpy.

A :class:`Run` is a :class:`job_state.Job`: the bpy driver (``job_driver.py``) feeds it the events of the engine
process and gives it a :class:`Host` that does what needs Blender (import a mesh, remove the preview, print).
Everything else, which command to start, when to chain a texture export, what state a run ends in and what it
says, lives here and is covered by plain pytest. The scene settings become a :class:`RunRequest` in
``reconstruct.py``.

States: ``running`` (phase ``fit``, then possibly ``export``) until the engine's exit, then ``done``,
``cancelled`` or ``failed``; :attr:`Run.finished` is set exactly once, by :meth:`Run.end`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import engine_process, run_files
from .engine_process import EngineLocation, EngineProcess
from .errors import AddonError
from .job_state import PRINT_EVERY_S, Host, Job
from .protocol import RunStatus, fidelity_text

__all__ = ["PRINT_EVERY_S", "Host", "Run", "RunRequest", "new_run", "resume_problem"]

LOG_LINES = 6  # engine log lines kept for the panel


@dataclass
class RunRequest:
    """Everything a run needs, resolved from the scene settings (by the bpy layer)."""

    scene_name: str  # the scene that shows the run (follows File > Open / New)
    data_dir: Path
    run_dir: Path
    dataset: str  # collection name
    engine: EngineLocation
    preset: str = "auto"
    device: str = "auto"
    steps: int = 0  # <= 0: the preset's (or, on resume, the saved run's) total
    data_format: str = "auto"
    frame: str = "normalized"
    texture: bool = False
    show_preview: bool = True
    scale_mat: np.ndarray | None = None  # from the dataset's cameras, used when the run has no normalization.json
    settings: list[str] = field(default_factory=list)  # engine --set KEY=VALUE overrides
    resume: bool = False  # continue RUN_DIR's checkpoint (``fit --resume``)
    export_on_cancel: bool = True  # a cancelled fit still writes (and the add-on imports) its current mesh
    result_name: str = ""  # the result object's name; "" -> "<dataset> NeuS"
    up: np.ndarray | None = None  # the cameras' mean up (normalized frame), for the dataset's upright parent
    silence_s: float = engine_process.DEFAULT_SILENCE_S  # seconds without a line: "not responding" (preferences)

    def __post_init__(self) -> None:
        if not self.result_name:
            self.result_name = f"{self.dataset} NeuS"

    @property
    def preview_name(self) -> str:
        return f"{self.result_name} preview"

    def fit_command(self) -> list[str]:
        """The ``engine fit`` command line (AddonError for an unknown preset, device or format)."""
        return engine_process.build_fit_command(
            self.engine.python, self.data_dir, self.run_dir, preset=self.preset, device=self.device,
            steps=self.steps, data_format=self.data_format, settings=() if self.resume else self.settings,
            resume=self.resume, export_on_cancel=self.export_on_cancel,
        )

    def export_command(self) -> list[str]:
        """``engine export --texture`` for a fit that made no textured mesh itself."""
        return engine_process.build_export_command(self.engine.python, self.run_dir, texture=True, fmt="glb",
                                                   frame="normalized")

    def process(self, argv: list[str], log_name: str = engine_process.STDERR_LOG) -> EngineProcess:
        return EngineProcess(argv, self.run_dir, cwd=self.engine.repo_root or self.run_dir,
                             log_path=self.run_dir / log_name, silence_s=self.silence_s)


@dataclass
class Run(Job):
    """One engine run (a fit, possibly followed by a texture export) and what the UI shows of it."""

    WHAT = "reconstruction"

    request: RunRequest
    phase: str = "fit"  # fit | export
    export_status: RunStatus = field(default_factory=RunStatus)
    export_started: float = 0.0
    result_object: str = ""
    imported_on_cancel: bool = False  # the result came from --export-on-cancel
    log_tail: list[str] = field(default_factory=list)  # the engine log's last lines
    _cancelled_event: dict = field(default_factory=dict)  # the engine's ``cancelled`` event, if it sent one
    _log_size: int = -1

    @property
    def scene_name(self) -> str:
        return self.request.scene_name

    @scene_name.setter
    def scene_name(self, name: str) -> None:
        self.request.scene_name = name

    @property
    def result_name(self) -> str:
        return self.request.result_name

    @property
    def preview_name(self) -> str:
        return self.request.preview_name

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self, host: Host) -> None:
        """Starts the engine process. Raises AddonError when it cannot start."""
        super().start(host)
        self.status.stage = "resuming" if self.request.resume else "starting"
        host.say(self, f"[neus] engine started: {' '.join(self.process.argv)}")

    def give_up_reason(self) -> str:
        """A silent engine given up on (blocking runs): the run then ends ``failed`` with this reason."""
        return f"{super().give_up_reason()}; its last checkpoint in {self.request.run_dir} can be resumed"

    def on_end(self, host: Host) -> None:
        self.refresh_log_tail()
        state = self.status.state
        if state == "done":
            self.status.stage = "done"
            host.say(self, f"[neus] done: {self.result_object} from {self.status.mesh_path}")
            if self.status.fidelity:
                host.say(self, f"[neus] {fidelity_text(self.status.fidelity)}")
            if self.status.last_error:
                host.say(self, f"[neus] warning: {self.status.last_error}")
        elif state == "cancelled":
            host.say(self, "[neus] cancelled" + (f": imported the current mesh as {self.result_object}"
                                                 if self.imported_on_cancel else "")
                     + (f" ({self.status.last_error})" if self.status.last_error else ""))
        else:
            host.say(self, f"[neus] failed: {self.status.last_error}")

    def refresh(self) -> None:
        self.refresh_log_tail()

    def refresh_log_tail(self) -> bool:
        """Re-reads the engine log's last lines when the file grew. True when they changed."""
        try:
            size = self.process.log_path.stat().st_size
        except OSError:
            return False
        if size == self._log_size:
            return False
        self._log_size = size
        tail = [ln for ln in self.process.stderr_tail(LOG_LINES * 3) if ln.strip()][-LOG_LINES:]
        changed = tail != self.log_tail
        self.log_tail = tail
        return changed

    # -- what the UI shows ---------------------------------------------------------------------------------------
    def panel_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"run_dir": str(self.request.run_dir), "log_tail": "\n".join(self.log_tail)}
        if self.phase == "export" and not self.finished:
            fields["stage"] = "texturing"
        if self.result_object:
            fields["result_object"] = self.result_object
        return fields

    def outcome(self) -> tuple[str, str]:
        st = self.status
        if st.state == "failed":
            return "ERROR", f"Reconstruction failed: {st.last_error}"
        if st.state == "cancelled":
            imported = f"; imported the current mesh as '{self.result_object}'" if self.imported_on_cancel else ""
            why = f" ({st.last_error})" if st.last_error else ""
            return "WARNING", f"Reconstruction cancelled{imported}{why}"
        return ("WARNING" if st.last_error else "INFO"), (f"Reconstruction finished: '{self.result_object}'"
                                                          + (f" ({st.last_error})" if st.last_error else ""))

    # -- events ------------------------------------------------------------------------------------------------
    def handle_event(self, host: Host, event: dict) -> None:
        """Applies one engine event (main thread: it may import objects)."""
        name = event.get("event")
        if name == "cancelled":
            self._cancelled_event = event
        if self.phase == "export":
            self.export_status.apply(event)
            if name == "exit":
                self._finish_export(host, event)
            return
        self.status.apply(event)
        if name == "progress":
            now = time.time()
            st = self.status
            if now - self._last_print >= PRINT_EVERY_S or (st.total and st.step >= st.total):
                self._last_print = now
                host.say(self, f"[neus] {st.status_text()}")
        elif name == "stage":
            host.say(self, f"[neus] stage: {event.get('stage')}")
        elif name == "start":
            host.say(self, f"[neus] {self.status.total} steps on {self.status.device}")
        elif name == "log":
            host.say(self, f"[neus] engine: {event.get('message')}")
        elif name == "error":
            host.say(self, f"[neus] error: {self.status.last_error}")
        elif name == "preview_mesh" and self.request.show_preview and event.get("path"):
            try:
                host.import_mesh(self, str(event["path"]), "preview")
            except AddonError as e:  # a preview is optional; never fail the run for it
                host.say(self, f"[neus] preview not shown: {e}")
        elif name == "exit":
            self._finish_fit(host, event)

    def _import(self, host: Host, path: str) -> str | None:
        """Imports the result; the error text when that failed."""
        try:
            self.result_object = host.import_mesh(self, path, "result")
        except AddonError as e:
            return str(e)
        return None

    def _finish_fit(self, host: Host, event: dict) -> None:
        state = event.get("state")
        st = self.status
        host.clear_preview(self)
        if self.gave_up:
            self.end(host, "failed", self.gave_up)
            return
        if state == "done":
            mesh = st.mesh_path or str(self.request.run_dir / run_files.MESH_PLY)
            if not Path(mesh).is_file():
                self.end(host, "failed", f"the engine finished but wrote no mesh ({mesh})")
                return
            error = self._import(host, mesh)
            if error:
                self.end(host, "failed", f"cannot import the result: {error}")
                return
            if self.request.texture:
                textured = run_files.textured_mesh_from(st.files)
                if textured is None:
                    try:
                        self._start_export(host)
                        return
                    except AddonError as e:
                        st.last_error = f"texture export failed: {e}"
                else:
                    self._import_textured(host, textured)
            self.end(host, "done")
        elif state == "cancelled":
            if st.mesh_path and Path(st.mesh_path).is_file():  # --export-on-cancel
                error = self._import(host, st.mesh_path)
                if error:
                    st.last_error = f"cannot import the mesh saved on cancel: {error}"
                else:
                    self.imported_on_cancel = True
            elif self.request.export_on_cancel:
                st.last_error = self._why_no_mesh_on_cancel(event)
            elif event.get("killed"):
                st.last_error = str(event["killed"])
            self.end(host, "cancelled")
        else:
            self.end(host, "failed", st.last_error or self.process.failure_message())

    def _why_no_mesh_on_cancel(self, exit_event: dict) -> str:
        """Export on Cancel made no mesh: the one line that says why (the panel and the report show it)."""
        cancelled = self._cancelled_event
        if exit_event.get("killed"):
            return f"no mesh on cancel: {exit_event['killed']}"
        if cancelled.get("export") == "cancelled":
            return "no mesh on cancel: a second Cancel stopped the export (Export in the engine makes it later)"
        if cancelled and not cancelled.get("checkpoint"):
            return "no mesh on cancel: the run was cancelled before training began"
        if cancelled.get("reason") not in (None, "request"):
            return f"no mesh on cancel: the engine stopped on its own ({cancelled['reason']})"
        if not cancelled:
            return "no mesh on cancel: " + self.process.failure_message()
        return "no mesh on cancel: the engine exported none (see the engine log)"

    def _start_export(self, host: Host) -> None:
        """Chains ``engine export --texture`` after a fit that was asked for a texture and made none."""
        proc = self.request.process(self.request.export_command(), "engine_export_stderr.log")
        proc.start()
        self.process = proc
        self.phase = "export"
        self.export_started = time.time()
        self.status.state = "running"
        self.status.stage = "texturing"
        host.say(self, f"[neus] exporting a textured mesh: {' '.join(proc.argv)}")

    def _import_textured(self, host: Host, path: str) -> None:
        error = self._import(host, path)
        if error:
            self.status.last_error = f"textured mesh not imported (vertex colours kept): {error}"

    def _finish_export(self, host: Host, event: dict) -> None:
        es = self.export_status
        if self.gave_up:
            self.status.last_error = f"texture export given up (vertex colours kept): {self.gave_up}"
            self.end(host, "failed")
            return
        if event.get("returncode") == 0:
            self.status.fidelity = es.fidelity or self.status.fidelity
            path = run_files.textured_mesh_from(es.files) or (es.mesh_path if es.mesh_path and not
                                                              es.mesh_path.endswith(".ply") else None)
            path = path or run_files.newest_mesh(self.request.run_dir, since=self.export_started - 1.0)
            if path:
                self._import_textured(host, path)
            else:
                self.status.last_error = "texture export wrote no .glb/.obj file (vertex colours kept)"
        elif event.get("state") != "cancelled":
            self.status.last_error = ("texture export failed (vertex colours kept): "
                                      + (es.last_error or self.process.failure_message()))
        self.end(host, "cancelled" if event.get("state") == "cancelled" else "done")


def new_run(request: RunRequest, echo: Callable[[str], None] | None = None) -> Run:
    """A run for ``request`` whose engine is not started yet (AddonError for bad options)."""
    return Run(request, process=request.process(request.fit_command()), echo=echo)


def resume_problem(run_dir: Path | str) -> str | None:
    """Why ``run_dir`` cannot be resumed (no checkpoint or no saved config), or None when it can."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        return f"{run_dir}: nothing to resume (no checkpoints/last.ckpt)"
    if not (run_dir / "config.yaml").is_file():
        return f"{run_dir}: nothing to resume (no config.yaml)"
    return None
