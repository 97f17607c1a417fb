"""Progress reporting for the command line: JSON lines on stdout (see PROTOCOL.md), a text bar, or nothing."""

from __future__ import annotations

import json
import math
import sys
import time
from typing import TextIO

from . import failpoints

PROTOCOL_VERSION = 1


def _clean(value):
    """JSON-safe values: NaN/inf become null (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class Emitter:
    """Writes protocol events. ``mode`` is ``jsonl``, ``bar`` or ``none``, whose logs go to stderr, or ``silent``:
    no events and no logs (the extra DDP ranks, whose stdout and stderr are rank 0's)."""

    def __init__(self, mode: str = "bar", stream: TextIO | None = None, min_interval_s: float = 0.1) -> None:
        self.mode = mode
        self.stream = stream or sys.stdout
        self.min_interval_s = min_interval_s
        self._last_progress = 0.0

    def emit(self, event: str, **fields) -> None:
        record = {"event": event, "time": round(time.time(), 3), **_clean(fields)}
        if self.mode == "jsonl":
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()
        elif self.mode == "bar":
            self._bar(record)
        if event == "stage":
            failpoints.maybe_kill(str(fields.get("stage")))  # kill@<stage>: the moment a stage begins

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
