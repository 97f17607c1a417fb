"""Progress reporting for the command line: JSON lines on stdout (see PROTOCOL.md), a text bar, or nothing."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from . import failpoints

PROTOCOL_VERSION = 1
# Events after which nothing more is sent (the heartbeat stops too).
FINAL_EVENTS = frozenset({"done", "cancelled", "error"})


def _clean(value):
    """JSON-safe values: NaN/inf become null (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def done_timings(export_timings: dict, total_s: float, load_s: float = 0.0, train_s: float = 0.0) -> dict:
    """The ``done`` event's ``timings`` in seconds (PROTOCOL.md); ``export_timings`` as ``export_mesh`` fills it."""
    return {"load_s": round(load_s, 2), "train_s": round(train_s, 2),
            "extract_s": round(export_timings.get("extract_s", 0.0), 2),
            "export_s": round(export_timings.get("export_s", 0.0), 2), "total_s": round(total_s, 2)}


class Emitter:
    """Writes protocol events. ``mode`` is ``jsonl``, ``bar`` or ``none``, whose logs go to stderr, or ``silent``:
    no events and no logs (the extra DDP ranks, whose stdout and stderr are rank 0's)."""

    def __init__(self, mode: str = "bar", stream: TextIO | None = None, min_interval_s: float = 0.1) -> None:
        self.mode = mode
        self.stream = stream or sys.stdout
        self.min_interval_s = min_interval_s
        self._last_progress = 0.0
        # One line at a time: the heartbeat thread (engine.liveness) writes too.
        self._lock = threading.Lock()
        self.last_event_at = time.monotonic()  # when the last event other than a heartbeat went out
        self.last_write_at = self.last_event_at  # ... any event, heartbeats included
        self.stage = "starting"  # the stage of the last ``stage`` event (heartbeats name it)
        self.finished = False  # a final event (done, cancelled, error) went out
        self.closed = False  # the reader of the stream is gone (broken pipe): events are dropped
        self.on_closed: Callable[[], None] | None = None  # called once when that happens (engine.liveness)

    def emit(self, event: str, **fields) -> None:
        record = {"event": event, "time": round(time.time(), 3), **_clean(fields)}
        with self._lock:
            self._write(record)
            now = time.monotonic()
            self.last_event_at = self.last_write_at = now
            if event == "stage":
                self.stage = str(fields.get("stage"))
            if event in FINAL_EVENTS:
                self.finished = True
        if event == "stage":
            failpoints.maybe_kill(str(fields.get("stage")))  # kill@<stage>: the moment a stage begins
            failpoints.maybe_sleep(str(fields.get("stage")))  # sleep@<stage>: a silent phase (solve's pycolmap
            # stages sleep in the child that runs them instead: engine.solve.sfm)

    def heartbeat(self, after_s: float) -> bool:
        """A ``heartbeat`` event when nothing was sent for ``after_s`` seconds and the run has not ended; whether
        one went out. Called by the heartbeat thread; the check and the write happen under the lock, so a heartbeat
        never follows a final event or splits a line."""
        with self._lock:
            now = time.monotonic()
            if self.finished or self.closed or now - self.last_write_at < after_s:
                return False
            self._write({"event": "heartbeat", "time": round(time.time(), 3), "stage": self.stage,
                         "elapsed_s": round(now - self.last_event_at, 1)})
            self.last_write_at = now
            return True

    def _write(self, record: dict) -> None:
        """Writes one event (the lock is held)."""
        if self.mode == "jsonl":
            if self.closed:
                return
            try:
                self.stream.write(json.dumps(record) + "\n")
                self.stream.flush()
            except (BrokenPipeError, OSError, ValueError):  # the reader is gone (EPIPE; EINVAL on Windows)
                self.closed = True
                if self.on_closed is not None:
                    self.on_closed()
        elif self.mode == "bar":
            self._bar(record)

    def progress_due(self, force: bool = False) -> bool:
        """Whether a ``progress`` event may go out now (at most one per ``min_interval_s`` unless ``force``)."""
        return force or time.monotonic() - self._last_progress >= self.min_interval_s

    def progress(self, force: bool = False, **fields) -> None:
        """A ``progress`` event, rate-limited to one per ``min_interval_s`` unless ``force``."""
        if not self.progress_due(force):
            return
        self._last_progress = time.monotonic()
        self.emit("progress", **fields)

    def log(self, message: str) -> None:
        if self.mode != "silent":
            print(message, file=sys.stderr, flush=True)

    def _bar(self, r: dict) -> None:
        ev = r["event"]
        if ev == "progress":
            frac = r["step"] / max(1, r["total"])
            bar = "#" * int(30 * frac)
            psnr = f"{r['psnr']:.1f}" if r.get("psnr") is not None else "-"
            eta = r.get("eta_s")
            eta_txt = f"{eta:.0f}s" if eta is not None else "-"
            if r.get("loss") is None:  # a solve stage: counts of images or pairs, no loss
                what = f"{r.get('stage', '')} {r['step']}/{r['total']} {r.get('unit', '')}"
                sys.stderr.write(f"\r[{bar:<30}] {what} eta {eta_txt} ")
            else:
                sys.stderr.write(f"\r[{bar:<30}] {r['step']}/{r['total']} loss {r['loss']:.4f} psnr {psnr} "
                                 f"eta {eta_txt} ")
            sys.stderr.flush()
        elif ev == "stage":
            sys.stderr.write(f"\n== {r['stage']}\n")
        elif ev == "done":
            sys.stderr.write(f"\ndone: {r.get('mesh') or r.get('data_dir')}\n")
        elif ev == "warning":
            sys.stderr.write(f"\nwarning: {r['message']}\n")
        elif ev == "error":
            sys.stderr.write(f"\nerror ({r['kind']}): {r['message']}\n")
        elif ev == "cancelled":
            sys.stderr.write(f"\ncancelled at step {r['step']}; checkpoint {r['checkpoint']}\n")
        elif ev in ("start", "validation", "preview_mesh"):
            sys.stderr.write(f"{ev}: {json.dumps({k: v for k, v in r.items() if k not in ('event', 'time')})}\n")
        sys.stderr.flush()
