"""The one exception type every loader raises for bad input."""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """Bad or inconsistent dataset input.

    The message is always one line, ``"<path>: <problem>"``, so the engine can forward it verbatim (exit code
    2) and the add-on can show it in a report. ``path`` and ``problem`` are kept as attributes.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        # Collapse whitespace so a wrapped library message never breaks the one-line contract.
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")
