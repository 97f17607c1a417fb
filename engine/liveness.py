"""Liveness: the engine shows it is alive and ends itself when nobody is left to hear it (PROTOCOL.md, "Liveness").

- **Heartbeat**: a relay process between the Emitter and standard output sends ``heartbeat`` (the current stage,
  seconds since the last event) after every ``HEARTBEAT_AFTER_S`` seconds without an event, so a reader can tell a
  long silent phase (compiling, marching cubes, xatlas, a solve stage) from a hung engine.
- **Counts in long phases**: code with natural chunks (grid slabs, photos, texels, validation views) calls
  :func:`tick` at each chunk boundary. Inside :func:`reporting` that sends a ``progress`` event with the phase's
  counts (at most one per ``PHASE_PROGRESS_S``, none for a phase shorter than that) and raises
  :class:`~engine.errors.Cancelled` when a stop was requested, so exports end within a chunk of a cancel.
- **Parent watch**: :func:`watch` installs every way to stop a command: SIGINT/SIGTERM, ``stop`` lines on stdin, the
  end of stdin when it is a pipe (the add-on's end of it closes when Blender dies), the process named by
  ``NEUS_PARENT_PID`` ending (polled: ``os.kill(pid, 0)`` and a changed ``getppid()`` on POSIX, a process handle on
  Windows), and a broken stdout. Each sets the CancelToken with its reason; the command then ends as on a cancel
  (a checkpoint during training, exit 130).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO, TypeVar

from .cancel import PARENT_GONE, REQUEST, STDIN_CLOSED, STDOUT_CLOSED, CancelToken
from .errors import Cancelled, InputError
from .protocol import Emitter
from .ranks import is_first_rank

HEARTBEAT_AFTER_S = 3.0  # a heartbeat after this long without an event
PHASE_PROGRESS_S = 1.0  # a long phase's progress: at most one event per this long, the first after this long
PARENT_POLL_S = 0.5  # how often the parent process is checked
PARENT_ENV = "NEUS_PARENT_PID"
T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ heartbeat
# The relay: a small Python process (no torch) between the Emitter and the real standard output. It forwards every
# line as it comes and writes a heartbeat after every ``after`` seconds without one. A thread in the engine could not:
# native calls that keep Python's interpreter lock (xatlas' unwrap: 10.7 s for a 20k-face mesh, PyMCubes: 1.2 s at
# 256^3, measured on the shared 2-core CPU) would silence it. One writer: lines never mix. It ends at the end of its
# input (the engine exited or was killed) and ignores the signals meant for the engine, so it forwards `cancelled`.
_RELAY = r"""
import json, queue, signal, sys, threading, time
for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
    if hasattr(signal, name):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
after = float(sys.argv[1])
lines = queue.Queue()
def read():
    for line in sys.stdin.buffer:
        lines.put(line)
    lines.put(None)
threading.Thread(target=read, daemon=True).start()
out = sys.stdout.buffer
stage, finished = "starting", False
last_event = last_write = time.monotonic()
try:
    while True:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            now = time.monotonic()
            if not finished and now - last_write >= after:
                beat = {"event": "heartbeat", "time": round(time.time(), 3), "stage": stage,
                        "elapsed_s": round(now - last_event, 1)}
                out.write(json.dumps(beat).encode() + b"\n")
                out.flush()
                last_write = now
            continue
        if line is None:
            break
        out.write(line)
        out.flush()
        last_event = last_write = time.monotonic()
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "stage":
            stage = str(event.get("stage"))
        finished = finished or event.get("event") in ("done", "cancelled", "error")
except OSError:  # nobody reads the protocol any more: the engine finds out at its next write (stdout closed)
    pass
"""


class HeartbeatRelay:
    """The relay process (see above) for one command: :attr:`stream` replaces the protocol's standard output."""

    def __init__(self, stdout: TextIO, after_s: float = HEARTBEAT_AFTER_S) -> None:
        stdout.flush()
        self.process = subprocess.Popen([sys.executable, "-c", _RELAY, str(after_s)], stdin=subprocess.PIPE,
                                        stdout=stdout.fileno(), text=True, encoding="utf-8", bufsize=1)
        self.stream: TextIO = self.process.stdin  # type: ignore[assignment]

    def close(self, timeout_s: float = 5.0) -> None:
        """Ends the input and waits for the relay to write the rest."""
        with contextlib.suppress(OSError, ValueError):
            self.stream.close()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()


@contextlib.contextmanager
def heartbeat_stream(stdout: TextIO, after_s: float = HEARTBEAT_AFTER_S) -> Iterator[TextIO]:
    """The protocol's stream with heartbeats: the relay's input, or ``stdout`` and a heartbeat thread when the relay
    cannot start."""
    try:
        relay = HeartbeatRelay(stdout, after_s)
    except OSError as exc:
        print(f"heartbeat relay not started ({exc}); heartbeats from a thread", file=sys.stderr, flush=True)
        relay = None
    try:
        yield stdout if relay is None else relay.stream
    finally:
        if relay is not None:
            relay.close()


def start_heartbeat(emitter: Emitter, after_s: float = HEARTBEAT_AFTER_S) -> threading.Thread:
    """Heartbeats from a daemon thread in this process (the fallback: silenced while native code holds the
    interpreter lock); it ends after the run's final event."""

    def beat() -> None:
        while not emitter.finished:
            emitter.heartbeat(after_s)
            time.sleep(min(0.25, after_s / 4))

    thread = threading.Thread(target=beat, daemon=True, name="neus-heartbeat")
    thread.start()
    return thread


# ------------------------------------------------------------------------------------------- long phases
class _PhaseReporter:
    """Counts of the current long phase as ``progress`` events, and the cancel check at each chunk."""

    def __init__(self, emitter: Emitter, cancel: CancelToken | None, every_s: float) -> None:
        self.emitter, self.cancel, self.every_s = emitter, cancel, every_s
        self.key: tuple[str, str] | None = None
        self.started = self.last_sent = 0.0
        self.done = 0
        self.sent = False

    def tick(self, phase: str, done: int, total: int, unit: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"stopped while {phase}")
        now = time.monotonic()
        if (phase, unit) != self.key or done < self.done:  # a new phase (or a pass started again, e.g. after OOM)
            self.key, self.started, self.sent = (phase, unit), now, False
        self.done = done
        due = now - self.started >= self.every_s and now - self.last_sent >= self.every_s
        if not (due or (self.sent and done >= total)):  # a phase that reported also reports its end
            return
        elapsed = now - self.started
        eta = elapsed / done * (total - done) if done > 0 else None
        self.emitter.emit("progress", stage=phase, step=int(done), total=int(total), unit=unit,
                          elapsed_s=round(elapsed, 2), eta_s=None if eta is None else round(eta, 1), loss=None,
                          psnr=None)
        self.last_sent, self.sent = now, True


_REPORTER: _PhaseReporter | None = None


@contextlib.contextmanager
def reporting(emitter: Emitter, cancel: CancelToken | None,
              every_s: float = PHASE_PROGRESS_S) -> Iterator[None]:
    """Within this block, :func:`tick` reports to ``emitter`` and checks ``cancel`` (one block at a time)."""
    global _REPORTER
    saved, _REPORTER = _REPORTER, _PhaseReporter(emitter, cancel, every_s)
    try:
        yield
    finally:
        _REPORTER = saved


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Within this block :func:`tick` does nothing (work inside a training step, which reports and stops itself)."""
    global _REPORTER
    saved, _REPORTER = _REPORTER, None
    try:
        yield
    finally:
        _REPORTER = saved


def tick(phase: str, done: int, total: int, unit: str) -> None:
    """A chunk boundary of a long phase: ``done`` of ``total`` ``unit`` (e.g. ``views``) are finished.

    Sends a ``progress`` event when one is due and raises Cancelled when a stop was requested (only inside
    :func:`reporting`; elsewhere it does nothing). Call it where stopping leaves nothing half done.
    """
    if _REPORTER is not None:
        _REPORTER.tick(phase, done, total, unit)


def check_cancel(what: str = "exporting") -> None:
    """Raises Cancelled when a stop was requested (inside :func:`reporting`)."""
    if _REPORTER is not None and _REPORTER.cancel is not None and _REPORTER.cancel.is_set():
        raise Cancelled(f"stopped while {what}")


def interruptible(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` for a native call that holds the interpreter lock for seconds (xatlas), run so that a
    stop request still ends it within a poll: on Linux in a forked child (copy-on-write, nothing to re-import) while
    this process waits on its pipe and checks the cancel; elsewhere, or outside :func:`reporting`, in place.

    ``fn`` must not touch torch or threads of this process (the child has only the calling thread). Its result is
    pickled back; dict arguments receive the child's changes (e.g. ``stats``).
    """
    if _REPORTER is None or _REPORTER.cancel is None or not sys.platform.startswith("linux"):
        return fn(*args, **kwargs)
    import pickle

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, send, and leave without running any of the parent's cleanup
        code = 0
        try:
            os.close(read_end)
            # Hold none of the engine's files (the protocol pipe: its reader must see the end when the engine
            # dies), and die with the engine (PR_SET_PDEATHSIG, SIGKILL).
            os.closerange(3, write_end)
            os.closerange(write_end + 1, 1 << 16)
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
            try:
                payload = (True, fn(*args, **kwargs), {k: v for k, v in kwargs.items() if isinstance(v, dict)})
            except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
                payload = (False, exc, {})
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(payload, out, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    import select

    chunks = []
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], 0.1)
            if not ready:
                check_cancel()
                continue
            data = os.read(read_end, 1 << 20)
            if not data:
                break
            chunks.append(data)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    if not chunks:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)}: the worker process ended without a result")
    ok, value, changed = pickle.loads(b"".join(chunks))
    if not ok:
        raise value
    for key, new in changed.items():
        kwargs[key].clear()
        kwargs[key].update(new)
    return value


# ------------------------------------------------------------------------------------------ parent watch
def watch(token: CancelToken, emitter: Emitter) -> None:
    """Every way to stop the command sets ``token`` (see the module docstring). Raises InputError for a malformed
    ``NEUS_PARENT_PID``."""
    if not is_first_rank():
        # A DDP copy of the command: rank 0's stop request decides for every rank (train.ProgressCallback), so a
        # terminal's Ctrl-C, which reaches every rank, must not end this one on its own; stdin is rank 0's to read.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return

    def handler(signum, frame):
        token.set(REQUEST)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    if sys.stdin is not None and not sys.stdin.isatty():
        threading.Thread(target=_watch_stdin, args=(token, emitter), daemon=True, name="neus-stdin").start()
    parent = _parent_pid()
    if parent is not None:
        alive = _parent_probe(parent)
        threading.Thread(target=_watch_parent, args=(alive, parent, token, emitter), daemon=True,
                         name="neus-parent").start()

    def stdout_closed() -> None:
        token.set(STDOUT_CLOSED)
        _drop_dead_pipe(2)  # stderr too, when it went to the same dead reader: later logs must not raise
        emitter.log("nobody reads the progress events any more (standard output closed): stopping as on a cancel")

    emitter.on_closed = stdout_closed


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _watch_stdin(token: CancelToken, emitter: Emitter) -> None:
    """``stop`` lines request a stop; the end of a piped stdin means its writer (the add-on) is gone."""
    try:
        piped = _is_pipe(sys.stdin.fileno())
    except (OSError, ValueError, AttributeError):
        piped = False
    try:
        for line in sys.stdin:
            if line.strip().lower() == "stop":
                token.set(REQUEST)
    except (OSError, ValueError):
        return
    if piped:
        emitter.log("standard input closed: stopping as on a cancel")
        token.set(STDIN_CLOSED)


def _parent_pid() -> int | None:
    text = os.environ.get(PARENT_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) <= 0:
        raise InputError(f"{PARENT_ENV}: expected a process id, got {text!r}")
    return int(text)


def _parent_probe(pid: int) -> Callable[[], bool]:
    """A function that says whether process ``pid`` still runs."""
    if os.name == "nt":
        return _windows_probe(pid)
    # Our own parent ending reparents us at once, even while it lingers as a zombie that os.kill still finds.
    direct = os.getppid() == pid

    def alive() -> bool:
        if direct and os.getppid() != pid:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:  # PermissionError: it runs under another user
            return True
        return True

    return alive


def _windows_probe(pid: int) -> Callable[[], bool]:
    """OpenProcess once (the handle pins the process object, so a reused id cannot fool us), then a zero wait."""
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    kernel32.WaitForSingleObject.restype = wintypes.DWORD
    kernel32.WaitForSingleObject.argtypes = (wintypes.HANDLE, wintypes.DWORD)
    synchronize, wait_object_0, error_invalid_parameter = 0x00100000, 0, 87
    handle = kernel32.OpenProcess(synchronize, False, pid)
    if not handle:
        if ctypes.get_last_error() == error_invalid_parameter:  # no such process: it ended before we started
            return lambda: False
        return lambda: True  # not ours to watch (access denied): the stdin and stdout watches still apply

    def alive() -> bool:
        return kernel32.WaitForSingleObject(handle, 0) != wait_object_0

    return alive


def _watch_parent(alive: Callable[[], bool], pid: int, token: CancelToken, emitter: Emitter) -> None:
    while alive():
        time.sleep(PARENT_POLL_S)
    # Nobody may be reading any more: a dead reader's pipe must not turn the checkpoint save into an error.
    for fd in (2, _fileno(emitter.stream)):
        _drop_dead_pipe(fd)
    emitter.log(f"the parent process {pid} ({PARENT_ENV}) is gone: stopping as on a cancel")
    token.set(PARENT_GONE)


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):
        return None


def _drop_dead_pipe(fd: int | None) -> None:
    """Points ``fd`` at the null device when it is a pipe whose reader is gone (POSIX: poll says POLLERR), so
    writes to it are dropped instead of raising BrokenPipeError in whatever code logs next."""
    if fd is None or os.name == "nt" or not _is_pipe(fd):
        return
    import select

    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    events = poller.poll(0)
    if not any(mask & select.POLLERR for _, mask in events):
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


__all__ = ["HEARTBEAT_AFTER_S", "PARENT_ENV", "HeartbeatRelay", "check_cancel", "heartbeat_stream", "interruptible",
           "paused", "reporting", "start_heartbeat", "tick", "watch"]
