"""Failpoints: faults injected into the real engine from outside, so that tests hurt the real command.

``NEUS_FAILPOINTS`` holds comma-separated ``name@where`` entries (PROTOCOL.md, "Faults"), e.g.
``NEUS_FAILPOINTS=nan_loss@7,oom@12,kill@checkpoint_write``. Unset or empty: every call here returns at once
(one global read), so the points cost nothing in a normal run.

Code marks a point with :func:`hit` (``if failpoints.hit("nan_loss", step): ...``) or uses the helpers
(:func:`maybe_kill`, :func:`maybe_fail_write`). To add a point, add its name (and, for ``kill``, its moment) to
``POINTS`` / ``KILL_MOMENTS`` below so that a misspelt entry fails at start (one line, exit 2) instead of being
silently inert.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

ENV = "NEUS_FAILPOINTS"

# The protocol stages (fit, export and solve): the moment a `stage` event is written.
STAGES: frozenset[str] = frozenset({
    "loading", "solving", "training", "compiling", "extracting", "exporting", "texturing",
    "reading", "features", "matching", "mapping", "undistorting", "writing",
})
# Moments named in ``kill@<moment>`` (besides a step number: killed right after that training step).
KILL_MOMENTS: frozenset[str] = STAGES | frozenset({
    # an atomic write whose temporary file is half written (engine.atomic_files)
    "checkpoint_write", "export_write", "config_write", "preview_write",
    # between keeping the previous checkpoint as prev.ckpt and renaming the new one onto last.ckpt
    "checkpoint_rotate",
})
# Kinds of write (engine.atomic_files.write_kind) that ``disk_full@<kind>`` can make fail.
WRITE_KINDS: frozenset[str] = frozenset({"checkpoint", "export", "config", "preview"})

# Chunked evaluations that ``oom@<place>`` can make run out of memory (engine.guard.with_memory_backoff).
OOM_PLACES: frozenset[str] = frozenset({"extract", "validate"})

# name -> a predicate on ``where`` (the text after @) that says whether the entry is well formed.
POINTS = {
    "nan_loss": lambda w: _is_steps(w),  # the training loss becomes NaN at that step (or range FIRST-LAST)
    # the device raises torch.OutOfMemoryError at that training step, or in chunked evaluation (once)
    "oom": lambda w: _is_steps(w) or w in OOM_PLACES,
    "disk_full": lambda w: w in WRITE_KINDS,  # the next write of that kind fails with ENOSPC (once)
    "kill": lambda w: w.isdigit() or w in KILL_MOMENTS,  # the process SIGKILLs itself at that moment
    "sleep": lambda w: w in STAGES,  # as that stage begins, SLEEP_S seconds in native code holding the GIL
}
SLEEP_S = 7.0  # sleep@<stage>: long enough for two heartbeats (engine.liveness, every 3 s of silence)
# Solve's pycolmap stages run in its child process (engine.solve.sfm): ``sleep@`` one of them sleeps there, as a long
# pycolmap call holds the child's interpreter lock, while the engine relaying the child's events stays awake.
SOLVE_CHILD_STAGES: frozenset[str] = frozenset({"features", "matching", "mapping", "undistorting"})


class FailpointSyntaxError(ValueError):
    """A malformed ``NEUS_FAILPOINTS`` value (the command line reports it as bad input, exit 2)."""


def _is_steps(where: str) -> bool:
    first, dash, last = where.partition("-")
    return first.isdigit() and (not dash or last.isdigit())


def parse(text: str) -> dict[str, list[str]]:
    """``"a@x,b@y"`` -> ``{"a": ["x"], "b": ["y"]}``; raises FailpointSyntaxError naming the bad entry."""
    points: dict[str, list[str]] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, at, where = entry.partition("@")
        if not at or name not in POINTS or not POINTS[name](where):
            raise FailpointSyntaxError(
                f"{ENV}: bad entry {entry!r} (expected name@where with name one of {', '.join(POINTS)}; "
                "see engine/PROTOCOL.md, Faults)")
        points.setdefault(name, []).append(where)
    return points


_ACTIVE: dict[str, list[str]] = {}
_USED: set[tuple[str, str]] = set()  # (name, at) of one-shot points already fired


def load() -> None:
    """Reads ``NEUS_FAILPOINTS`` (called once at start by the command line); raises FailpointSyntaxError."""
    global _ACTIVE
    _ACTIVE = parse(os.environ.get(ENV, ""))
    _USED.clear()


def _matches(where: str, at: str) -> bool:
    if where == at:
        return True
    if at.isdigit() and _is_steps(where) and "-" in where:
        first, last = (int(x) for x in where.split("-"))
        return first <= int(at) <= last
    return False


def hit(name: str, at: str | int, once: bool = False) -> bool:
    """Whether the failpoint ``name@at`` is set (``at`` a step number or a moment). ``once``: fires the first time
    ``at`` is reached only (the next write failing; an out-of-memory step that is retried)."""
    if not _ACTIVE:
        return False
    wheres = _ACTIVE.get(name)
    if not wheres:
        return False
    at = str(at)
    for where in wheres:
        if _matches(where, at):
            if once:
                if (name, at) in _USED:
                    return False
                _USED.add((name, at))
            return True
    return False


def kill_self() -> None:
    """Ends this process at once, as ``kill -9`` does (no handler, no flush, no cleanup)."""
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))  # Windows: TerminateProcess either way


def maybe_kill(moment: str | int) -> None:
    """``kill@<moment>``: SIGKILLs this process here."""
    if _ACTIVE and hit("kill", moment):
        kill_self()


def maybe_sleep(stage: str, in_solve_child: bool = False) -> None:
    """``sleep@<stage>``: the calling thread sleeps ``SLEEP_S`` seconds in a native call that keeps Python's
    interpreter lock, as xatlas and PyMCubes do, so no thread of this process runs meanwhile (once per stage).
    A stage of ``SOLVE_CHILD_STAGES`` sleeps in solve's child process only (``in_solve_child``)."""
    if _ACTIVE and (stage in SOLVE_CHILD_STAGES) == in_solve_child and hit("sleep", stage, once=True):
        import ctypes  # PyDLL: a foreign call that does not release the interpreter lock (CDLL would)

        if os.name == "nt":
            ctypes.PyDLL("kernel32").Sleep(int(SLEEP_S * 1000))
        else:
            ctypes.PyDLL(None).sleep(int(SLEEP_S))


def maybe_fail_write(kind: str | None, tmp: Path) -> None:
    """Called by the atomic writers once the temporary ``tmp`` holds the whole file, before it is renamed into place:
    ``disk_full@<kind>`` cuts it to half and raises ENOSPC (as a full disk would mid-write); ``kill@<kind>_write``
    cuts it to half and SIGKILLs the process."""
    if not _ACTIVE or kind is None:
        return
    full = hit("disk_full", kind, once=True)
    killed = hit("kill", f"{kind}_write")
    if full or killed:
        with open(tmp, "r+b") as f:
            f.truncate(os.path.getsize(tmp) // 2)
    if killed:
        kill_self()
    if full:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))


def nan_loss(loss, step: int):
    """``nan_loss@STEP``: the loss as computed, times NaN at that step (so its gradients are NaN too)."""
    if _ACTIVE and hit("nan_loss", step):
        return loss * float("nan")
    return loss


def maybe_oom(step: int | str) -> None:
    """``oom@STEP`` / ``oom@<place>``: raises the error PyTorch raises when the device's memory is exhausted (once
    per step or place)."""
    if _ACTIVE and hit("oom", step, once=True):
        import torch

        raise torch.OutOfMemoryError(f"out of memory (failpoint oom@{step})")


__all__ = ["ENV", "FailpointSyntaxError", "KILL_MOMENTS", "POINTS", "SLEEP_S", "SOLVE_CHILD_STAGES", "STAGES",
           "WRITE_KINDS", "hit", "kill_self", "load", "maybe_fail_write", "maybe_kill", "maybe_oom", "maybe_sleep",
           "nan_loss", "parse"]
