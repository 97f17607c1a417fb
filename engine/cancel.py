"""The stop request shared by long commands (fit, solve, export); no torch, so `solve` starts and exits quickly."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

# Why a run was stopped (the ``cancelled`` event's ``reason``).
REQUEST = "request"  # SIGINT, SIGTERM, a ``stop`` line on stdin, a STOP file
PARENT_GONE = "parent gone"  # the process named by NEUS_PARENT_PID ended (engine.liveness)
STDIN_CLOSED = "stdin closed"  # standard input was a pipe and reached its end
STDOUT_CLOSED = "stdout closed"  # nobody reads the protocol any more (broken pipe)


class CancelToken:
    """Set by SIGINT/SIGTERM, a ``stop`` line on stdin, a ``STOP`` file in the run folder, or the parent's end."""

    def __init__(self, stop_file: Path | None = None) -> None:
        self._event = threading.Event()
        self.stop_file = stop_file
        self.reason: str | None = None  # the first request's reason since the token was (re)armed
        self._requested_at: float | None = None
        self._ignore_until = 0.0  # requests before this moment repeat one already handled (see rearm)

    def set(self, reason: str = REQUEST) -> None:
        now = time.monotonic()
        if reason == REQUEST and now < self._ignore_until:
            return
        if not self._event.is_set():
            self.reason, self._requested_at = reason, now
        self._event.set()

    def is_set(self) -> bool:
        if not self._event.is_set() and self.stop_file is not None and self.stop_file.exists():
            if time.monotonic() < self._ignore_until:  # the STOP file of the request already handled
                with contextlib.suppress(OSError):
                    self.stop_file.unlink()
            else:
                self.set()
        return self._event.is_set()

    def rearm(self, grace_s: float = 1.0) -> None:
        """The request was handled by starting more work (Export on Cancel): a new request stops that work.

        The add-on asks in three ways at once (a signal, a ``stop`` line, the STOP file): copies of the handled
        request that arrive up to ``grace_s`` after it are ignored, and its STOP file is removed.
        """
        if self.stop_file is not None:
            with contextlib.suppress(OSError):
                self.stop_file.unlink()
        self._ignore_until = (self._requested_at or time.monotonic()) + grace_s
        self.reason = self._requested_at = None
        self._event.clear()
