"""Finding, starting, watching and stopping the engine subprocess. No bpy.

The add-on never imports the engine (it needs torch; Blender's Python has none). It runs
``ENGINE_PYTHON -m engine fit ... --progress jsonl`` with the repository root as working directory, reads JSON
lines from stdout on a thread and hands them to the main thread through a :class:`queue.Queue`
(``engine/PROTOCOL.md``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import protocol
from .choices import DEVICES, FORMATS, PRESETS
from .errors import AddonError

ENV_VAR = "NEUS_ENGINE_PYTHON"
PARENT_ENV = "NEUS_PARENT_PID"  # the engine ends itself (saving its checkpoint) when this process is gone
STOP_FILE = "STOP"
STDERR_LOG = "engine_stderr.log"
# Seconds without a line from the engine after which it counts as not responding. The engine sends a ``heartbeat``
# after every 3 s without an event (its longest measured gap between lines: 3.3 s), so 30 s is ten missed beats.
DEFAULT_SILENCE_S = 30.0
SILENCE_POLL_S = 0.2


# Process states. ``running`` until the process has exited and its stdout is drained.
IDLE, RUNNING, DONE, FAILED, CANCELLED = "idle", "running", "done", "failed", "cancelled"


class EngineNotFoundError(AddonError):
    """No usable engine interpreter; the message says how to configure one."""


@dataclass(frozen=True)
class EngineLocation:
    """Where the engine runs: its interpreter and the working directory that makes ``-m engine`` importable."""

    python: Path
    source: str  # "preferences" | "environment" | "auto-detected"
    repo_root: Path | None  # the checkout holding engine/ (None: the engine is installed in ``python``)

    def describe(self) -> str:
        where = f", repository {self.repo_root}" if self.repo_root else ""
        return f"{self.python} ({self.source}{where})"


def addon_repo_root() -> Path | None:
    """The repository this add-on lives in (``<root>/neus_blender_addon``), if it holds the engine."""
    root = Path(__file__).resolve().parents[2]  # <root>/neus_blender_addon/core/engine_process.py
    return root if (root / "engine" / "__init__.py").is_file() else None


def venv_python(root: Path) -> Path | None:
    """``root/.venv``'s interpreter (POSIX or Windows layout), if present. Not symlink-resolved: a venv's
    python must be started through its own path to find ``pyvenv.cfg``."""
    for rel in (("bin", "python"), ("bin", "python3"), ("Scripts", "python.exe")):
        p = root.joinpath(".venv", *rel)
        if p.is_file():
            return p.absolute()
    return None


def repo_root_for_python(python: Path) -> Path | None:
    """The checkout an interpreter belongs to: the nearest of its ancestors (up to 4 levels) that holds
    ``engine/__init__.py`` (e.g. ``ROOT/.venv/bin/python`` -> ``ROOT``)."""
    for parent in list(Path(python).absolute().parents)[:4]:
        if (parent / "engine" / "__init__.py").is_file():
            return parent
    return None


def _check_python(path: Path, source: str) -> Path:
    if not path.exists():
        raise EngineNotFoundError(f"Engine Python '{path}' (from {source}) does not exist")
    if path.is_dir():
        raise EngineNotFoundError(
            f"Engine Python '{path}' (from {source}) is a folder; point it at the interpreter, "
            "e.g. <repo>/.venv/bin/python or <repo>\\.venv\\Scripts\\python.exe"
        )
    if os.name != "nt" and not os.access(path, os.X_OK):
        raise EngineNotFoundError(f"Engine Python '{path}' (from {source}) is not executable")
    return path


NOT_FOUND_HELP = (
    "No engine Python found. Set it in Preferences > Add-ons > NeuS Reconstruct > Engine Python, "
    f"or set the {ENV_VAR} environment variable, to the interpreter of the environment where the engine is "
    "installed (for a checkout: <repo>/.venv/bin/python after running .ci/setup)"
)


def find_engine_python(preference: str = "", env: Mapping[str, str] | None = None,
                       addon_root: Path | None | str = "auto") -> EngineLocation:
    """Resolves the engine interpreter: explicit preference, then ``$NEUS_ENGINE_PYTHON``, then the ``.venv``
    of the repository the add-on lives in.

    Args:
        preference: path from the add-on preferences ("" = unset).
        env: environment (default ``os.environ``).
        addon_root: repository to auto-detect in; "auto" = :func:`addon_repo_root`, None = no auto-detection.
    Raises:
        EngineNotFoundError: with a message saying what to configure.
    """
    env = os.environ if env is None else env
    pref = (preference or "").strip()
    if pref:
        p = _check_python(Path(os.path.expanduser(pref)), "add-on preferences")
        return EngineLocation(p.absolute(), "preferences", repo_root_for_python(p))
    from_env = (env.get(ENV_VAR) or "").strip()
    if from_env:
        p = _check_python(Path(os.path.expanduser(from_env)), f"${ENV_VAR}")
        return EngineLocation(p.absolute(), "environment", repo_root_for_python(p))
    root = addon_repo_root() if addon_root == "auto" else (Path(addon_root) if addon_root else None)
    if root is not None:
        p = venv_python(root)
        if p is not None:
            return EngineLocation(p, "auto-detected", root)
    raise EngineNotFoundError(NOT_FOUND_HELP)


def build_fit_command(
    python: Path | str,
    data_dir: Path | str,
    run_dir: Path | str,
    preset: str = "auto",
    device: str = "auto",
    steps: int = 0,
    data_format: str = "auto",
    settings: Sequence[str] = (),
    resume: bool = False,
    export_on_cancel: bool = False,
) -> list[str]:
    """``python -m engine fit DATA --out RUN ... --progress jsonl`` (steps <= 0 keeps the preset's default).
    AddonError for an unknown preset, device or format."""
    if preset not in PRESETS:
        raise AddonError(f"unknown preset '{preset}' (expected one of {', '.join(PRESETS)})")
    if device not in DEVICES:
        raise AddonError(f"unknown device '{device}' (expected one of {', '.join(DEVICES)})")
    if data_format not in FORMATS:
        raise AddonError(f"unknown format '{data_format}' (expected one of {', '.join(FORMATS)})")
    cmd = [str(python), "-m", "engine", "fit", str(Path(data_dir).absolute()), "--out", str(Path(run_dir).absolute()),
           "--preset", preset, "--device", device, "--progress", "jsonl"]
    if data_format != "auto":
        cmd += ["--format", data_format]
    if steps and int(steps) > 0:
        cmd += ["--steps", str(int(steps))]
    for kv in settings:
        cmd += ["--set", kv]
    if resume:
        cmd.append("--resume")
    if export_on_cancel:
        cmd.append("--export-on-cancel")
    return cmd


def texture_settings(size: int | str, color: str, faces: int) -> list[str]:
    """``--set`` overrides for a textured result (texture side, colour source, game-ready face count; 0 = off)."""
    return ["export.texture=true", f"export.texture_size={int(size)}", f"export.color={color}",
            f"export.faces={max(int(faces), 0)}"]


def build_export_command(python: Path | str, run_dir: Path | str, texture: bool = True, fmt: str = "glb",
                         frame: str = "normalized", resolution: int | None = None) -> list[str]:
    """``python -m engine export RUN_DIR [--texture] --format F --frame normalized|world``."""
    cmd = [str(python), "-m", "engine", "export", str(Path(run_dir).absolute()), "--format", fmt, "--frame", frame]
    if texture:
        cmd.append("--texture")
    if resolution:
        cmd += ["--resolution", str(int(resolution))]
    return cmd


def subprocess_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the engine: unbuffered UTF-8 output; no PYTHONHOME (it would point a foreign
    interpreter at Blender's standard library); ``NEUS_PARENT_PID`` = this process (Blender), so an engine whose
    Blender crashed stops itself, saving a checkpoint (``engine/PROTOCOL.md``, Liveness)."""
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONHOME", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env[PARENT_ENV] = str(os.getpid())
    return env


def run_doctor(location: EngineLocation, timeout: float = 180.0) -> dict[str, Any]:
    """Runs ``doctor --json`` and returns its report.

    Raises:
        AddonError: the engine could not be started or failed, with the reason (e.g. engine not installed).
    """
    cmd = [str(location.python), "-m", "engine", "doctor", "--json"]
    try:
        res = subprocess.run(cmd, cwd=str(location.repo_root) if location.repo_root else None,
                             capture_output=True, text=True, encoding="utf-8", errors="replace",
                             timeout=timeout, env=subprocess_env(), stdin=subprocess.DEVNULL)
    except OSError as e:  # missing, not executable
        raise AddonError(f"cannot start engine Python {location.python}: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise AddonError(f"'engine doctor' did not answer within {timeout:.0f} s") from e
    if res.returncode != 0:
        raise AddonError(explain_failure(res.returncode, res.stderr.splitlines(), location.python))
    text = res.stdout.strip()
    for candidate in (text, *reversed(text.splitlines())):
        try:
            obj = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    raise AddonError(f"'engine doctor --json' printed no JSON object: {text[:200]!r}")


class DoctorJob:
    """``engine doctor`` on a worker thread, so Check Engine returns at once (the first torch import can take a
    minute); the main thread polls :meth:`result` from a timer."""

    def __init__(self, location: EngineLocation, timeout: float = 180.0) -> None:
        self.location = location
        self._answer: queue.Queue[tuple[bool, list[str]]] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._work, args=(timeout,), name="neus-engine-doctor", daemon=True)
        self._thread.start()

    def _work(self, timeout: float) -> None:
        try:
            lines = [f"Engine: {self.location.describe()}", *format_doctor(run_doctor(self.location, timeout))]
            self._answer.put((True, lines))
        except AddonError as e:
            self._answer.put((False, [f"Engine check failed: {e}"]))

    def result(self, wait_s: float = 0.0) -> tuple[bool, list[str]] | None:
        """``(ok, lines)`` once the check ended, else None (after waiting up to ``wait_s``)."""
        try:
            return self._answer.get(timeout=wait_s) if wait_s > 0 else self._answer.get_nowait()
        except queue.Empty:
            return None


def format_doctor(report: Mapping[str, Any], max_lines: int = 24) -> list[str]:
    """Readable ``key: value`` lines from a doctor report (nested tables flattened one level)."""
    lines: list[str] = []
    for key, value in report.items():
        if isinstance(value, Mapping):
            for k2, v2 in value.items():
                if not isinstance(v2, Mapping | list):
                    lines.append(f"{key}.{k2}: {v2}")
        elif isinstance(value, list):
            lines.append(f"{key}: {', '.join(str(v) for v in value)}")
        else:
            lines.append(f"{key}: {value}")
    return lines[:max_lines]


def explain_failure(returncode: int | None, stderr_lines: Sequence[str], python: Path | str) -> str:
    """One line saying why the engine failed, from its exit code and the tail of its stderr."""
    text = "\n".join(stderr_lines)
    if "No module named engine" in text or "No module named 'engine'" in text:
        return (f"the engine is not importable by {python}: run it from the repository's .venv, or install the "
                "project into that environment (pip install -e .)")
    if "No module named" in text:
        missing = next(ln for ln in reversed(stderr_lines) if "No module named" in ln)
        return f"the engine's environment ({python}) lacks a package: {missing.strip()}"
    last = next((ln.strip() for ln in reversed(stderr_lines) if ln.strip()), "")
    code = f"exit code {returncode}" if returncode is not None else "no exit code"
    return f"engine failed ({code})" + (f": {last}" if last else "; see the engine log")


_LIVE: weakref.WeakSet[EngineProcess] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Blender is quitting: don't leave a training process behind."""
    for proc in list(_LIVE):
        proc.kill()


class EngineProcess:
    """One engine subprocess with a stdout reader thread.

    Events (dicts, see :mod:`protocol`) arrive in :attr:`events`; the last one is always
    ``{"event": "exit", "returncode": rc, "state": final_state}``.

    Liveness is judged by silence, not by time: every line on stdout (an event, a ``heartbeat``, a stray print)
    resets :meth:`silent_for`. After :meth:`cancel` the engine may take as long as it needs (an export on cancel
    that keeps reporting is never cut short); only ``silence_s`` seconds without a line get its process group
    killed. Standard input stays a pipe for the engine's life: its end tells the engine that Blender is gone.
    """

    def __init__(self, argv: Sequence[str], run_dir: Path | str, cwd: Path | str | None = None,
                 log_path: Path | str | None = None, silence_s: float = DEFAULT_SILENCE_S,
                 env: Mapping[str, str] | None = None) -> None:
        self.argv = [str(a) for a in argv]
        self.run_dir = Path(run_dir)
        self.cwd = Path(cwd) if cwd else self.run_dir
        self.log_path = Path(log_path) if log_path else self.run_dir / STDERR_LOG
        self.silence_s = float(silence_s)
        self.env = subprocess_env(env)
        self._last_output = time.monotonic()
        self._cancelled_at: float | None = None
        self.killed_for: str = ""  # why the add-on killed the process group ("" when it did not)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._state = IDLE
        self._returncode: int | None = None
        self._cancel_requested = False
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._log_file: Any = None
        self.started_at: float | None = None

    # -- state ---------------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def returncode(self) -> int | None:
        with self._lock:
            return self._returncode

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def silent_for(self) -> float:
        """Seconds since the engine's last line on stdout (or since it started, or since :meth:`cancel`, whichever
        is latest: a cancel restarts the clock, so the engine gets a full ``silence_s`` to answer it)."""
        last = max(self._last_output, self._cancelled_at or 0.0)
        return max(0.0, time.monotonic() - last)

    @property
    def not_responding(self) -> bool:
        """Running and silent for ``silence_s`` seconds or more."""
        return self.running and self.silent_for() >= self.silence_s

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Starts the process (creating the run dir).

        Raises:
            EngineNotFoundError: the interpreter cannot be executed.
            AddonError: the run folder cannot be written.
        """
        if self.state != IDLE:
            raise AddonError("an EngineProcess can be started once")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / STOP_FILE).unlink(missing_ok=True)  # a stale STOP would end the new run at once
            self._log_file = open(self.log_path, "w", encoding="utf-8", errors="replace")
        except OSError as e:
            raise AddonError(f"{self.run_dir}: cannot write the run folder ({e.strerror or e})") from e
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            # Own process group, so CTRL_BREAK reaches only the engine.
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            # Own session: a Ctrl+C in Blender's terminal must not kill the engine behind the add-on's back.
            kwargs["start_new_session"] = True
        try:
            self._proc = subprocess.Popen(
                self.argv, cwd=str(self.cwd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self._log_file, text=True, encoding="utf-8", errors="replace", bufsize=1,
                env=self.env, **kwargs,
            )
        except OSError as e:
            self._log_file.close()
            raise EngineNotFoundError(f"cannot start the engine ({self.argv[0]}): {e}") from e
        self.started_at = time.time()
        self._last_output = time.monotonic()
        with self._lock:
            self._state = RUNNING
        _LIVE.add(self)
        self._reader = threading.Thread(target=self._read_stdout, name="neus-engine-reader", daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        seen: set[str] = set()
        try:
            for raw in self._proc.stdout:
                self._last_output = time.monotonic()
                try:
                    event = protocol.parse_line(raw)
                except protocol.ProtocolError as e:
                    event = {"event": "error", "kind": "protocol", "message": str(e), "time": time.time()}
                if event is None:
                    continue
                seen.add(event["event"])
                self.events.put(event)
        except (OSError, ValueError) as e:  # pipe torn down under us
            self.events.put({"event": protocol.LOG_EVENT, "message": f"stdout reader stopped: {e}"})
        finally:
            rc = self._proc.wait()
            for pipe in (self._proc.stdout, self._proc.stdin):  # the process is gone: release its pipes
                if pipe is not None:
                    with contextlib.suppress(OSError, ValueError):
                        pipe.close()
            if self._log_file is not None:
                self._log_file.close()
            (self.run_dir / STOP_FILE).unlink(missing_ok=True)
            state = self._final_state(rc, seen)
            with self._lock:
                self._returncode = rc
                self._state = state
            _LIVE.discard(self)
            self.events.put({"event": protocol.EXIT_EVENT, "returncode": rc, "state": state, "time": time.time(),
                             "killed": self.killed_for})

    def _final_state(self, rc: int, seen: set[str]) -> str:
        if rc == 0 and "done" in seen:
            return DONE
        if self._cancel_requested or rc == 130 or "cancelled" in seen:
            return CANCELLED
        return DONE if rc == 0 else FAILED

    def cancel(self) -> None:
        """Asks the engine to stop (SIGINT / CTRL_BREAK, ``RUN_DIR/STOP`` and ``stop`` on stdin; a second call is a
        second request, which also stops an export on cancel). Returns at once. A watcher kills the process group
        once the engine has been silent for ``silence_s`` seconds since the request or its last line."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        first = not self._cancel_requested
        self._cancel_requested = True
        self._cancelled_at = time.monotonic()
        try:
            (self.run_dir / STOP_FILE).touch()
        except OSError:
            pass
        try:
            if proc.stdin is not None:
                proc.stdin.write("stop\n")
                proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the engine closed its stdin or is gone
        try:
            if os.name == "nt":
                proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
            else:
                proc.send_signal(signal.SIGINT)
        except (OSError, ValueError):
            pass
        if first:
            threading.Thread(target=self._kill_when_silent, name="neus-engine-cancel", daemon=True).start()

    def _kill_when_silent(self) -> None:
        proc = self._proc
        assert proc is not None
        while proc.poll() is None:
            silent = self.silent_for()
            if silent >= self.silence_s:
                self.kill_now(f"the engine sent nothing for {silent:.0f} s after Cancel")
                return
            time.sleep(SILENCE_POLL_S)

    def kill_now(self, reason: str = "killed on request") -> None:
        """Kills the engine's whole process group at once (the Kill button, a silent engine). The run ends
        ``cancelled``; the engine's checkpoint files are written atomically, so ``--resume`` continues from the last
        one it saved."""
        proc = self._proc
        if proc is None:
            return
        self._cancel_requested = True
        if not self.killed_for:
            self.killed_for = reason
        self._kill_group(proc)

    def kill(self) -> None:
        """Stops at once (Blender quitting, add-on unregistered): a stop request, up to 3 s for the engine to save
        its checkpoint, then SIGKILL to its whole process group (also when the engine itself already ended, so no
        child it started, a solver or another training rank, outlives it)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self.cancel()
            try:
                proc.wait(3.0)
            except subprocess.TimeoutExpired:
                self.killed_for = self.killed_for or "Blender or the add-on stopped"
        self._kill_group(proc)
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            pass

    @staticmethod
    def _kill_group(proc: subprocess.Popen[str]) -> None:
        """SIGKILL to the engine's whole process group (it leads its own session, see :meth:`start`), so processes
        it started (the heartbeat relay, a solver, other training ranks, loader workers) go too; a plain kill
        elsewhere. The group outlives its leader while a member lives, so this works after the engine exited."""
        if os.name != "nt":
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
                return
        with contextlib.suppress(OSError):
            proc.kill()

    def wait(self, timeout: float | None = None) -> int | None:
        """Waits for the process to exit and its stdout to be drained; returns the exit code (None on timeout)."""
        if self._reader is None:
            return self.returncode
        self._reader.join(timeout)
        return None if self._reader.is_alive() else self.returncode

    # -- events --------------------------------------------------------------------------------------------
    def poll_events(self, max_events: int = 1000) -> list[dict[str, Any]]:
        """All events queued so far (non-blocking), at most ``max_events``."""
        out: list[dict[str, Any]] = []
        while len(out) < max_events:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                break
        return out

    def next_event(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next event, waiting up to ``timeout`` seconds (None if none arrived)."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def stderr_tail(self, n: int = 20) -> list[str]:
        """The last ``n`` lines the engine wrote to stderr."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return [ln.rstrip("\n") for ln in f.readlines()[-n:]]
        except OSError:
            return []

    def failure_message(self) -> str:
        """Why the process failed, from its stderr (used when it died without an ``error`` event)."""
        return explain_failure(self.returncode, self.stderr_tail(40), self.argv[0])

