"""The stop request shared by long commands (fit, solve); no torch, so `solve` starts and exits quickly."""

from __future__ import annotations

import threading
from pathlib import Path


class CancelToken:
    """Set by SIGINT/SIGTERM, a ``stop`` line on stdin, or a ``STOP`` file in the run folder."""

    def __init__(self, stop_file: Path | None = None) -> None:
        self._event = threading.Event()
        self.stop_file = stop_file

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        if not self._event.is_set() and self.stop_file is not None and self.stop_file.exists():
            self._event.set()
        return self._event.is_set()
