"""The engine's JSON-lines progress protocol (``engine/PROTOCOL.md``, version 1): parsing, status, formatting.

No bpy: the Blender layer copies a :class:`RunStatus` into scene properties.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1

STAGES = ("loading", "training", "extracting", "exporting")

# Events the add-on understands and the fields each must carry (the protocol allows extra fields and events).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "start": ("version",),
    "stage": ("stage",),
    "progress": ("step", "total"),
    "preview_mesh": ("path",),
    "validation": ("step",),
    "done": ("mesh",),
    "cancelled": (),
    "error": ("message",),
}

# Events produced by the add-on itself (never by the engine).
LOG_EVENT = "log"  # a stdout line that is not a JSON object; field ``message``
EXIT_EVENT = "exit"  # the process ended; fields ``returncode``, ``state``, ``killed`` (why the add-on killed it, or "")


class ProtocolError(ValueError):
    """A JSON object on the engine's stdout that breaks the protocol."""


def parse_line(line: str) -> dict[str, Any] | None:
    """One stdout line -> an event dict, or None for a blank line.

    Lines that are not JSON objects with a string ``event`` become ``{"event": "log", "message": line}`` so that
    stray prints (a library warning, say) are shown rather than lost. A JSON event missing a required field
    raises :class:`ProtocolError`.
    """
    text = line.strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return {"event": LOG_EVENT, "message": text, "time": time.time()}
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        return {"event": LOG_EVENT, "message": text, "time": time.time()}
    validate_event(obj)
    return obj


def validate_event(event: dict[str, Any]) -> None:
    """Raises :class:`ProtocolError` if a known event lacks a required field or has a wrong type."""
    name = event.get("event")
    required = REQUIRED_FIELDS.get(name)  # type: ignore[arg-type]
    if required is None:
        return  # unknown events are allowed and ignored
    missing = [k for k in required if k not in event]
    if missing:
        raise ProtocolError(f"engine event '{name}' lacks field(s) {', '.join(missing)}: {json.dumps(event)}")
    if name == "start" and event["version"] != PROTOCOL_VERSION:
        raise ProtocolError(
            f"engine speaks protocol version {event['version']}, this add-on version {PROTOCOL_VERSION}; "
            "update the add-on or the engine so they match"
        )
    if name == "progress":
        for k in ("step", "total"):
            if not isinstance(event[k], int | float) or isinstance(event[k], bool):
                raise ProtocolError(f"engine event 'progress' has a non-numeric '{k}': {event[k]!r}")
    if name in ("preview_mesh", "done") and event.get("path" if name == "preview_mesh" else "mesh") is not None:
        value = event["path" if name == "preview_mesh" else "mesh"]
        if not isinstance(value, str):
            raise ProtocolError(f"engine event '{name}' has a non-string path: {value!r}")


def progress_fraction(step: float | None, total: float | None) -> float:
    """Fraction done in [0, 1] (0 when the total is unknown)."""
    if step is None or not total or total <= 0:
        return 0.0
    return float(min(1.0, max(0.0, step / total)))


def format_eta(seconds: float | None) -> str:
    """``"1h 02m"``, ``"3m 05s"``, ``"42s"``; ``"--"`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class RunStatus:
    """What the UI shows about a run; updated event by event with :meth:`apply`."""

    state: str = "idle"  # idle | running | done | failed | cancelled
    stage: str = ""
    step: int = 0
    total: int = 0
    loss: float | None = None
    psnr: float | None = None
    val_psnr: float | None = None
    eta_s: float | None = None
    elapsed_s: float | None = None
    phase_step: int = 0  # a long phase's own count (extracting, colouring, a solve stage ...); training keeps step
    phase_total: int = 0
    unit: str = ""  # the phase count's unit ("percent", "photos", ...)
    device: str = ""
    last_error: str = ""
    mesh_path: str | None = None
    preview_path: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    checkpoint: str | None = None
    returncode: int | None = None
    log_tail: list[str] = field(default_factory=list)
    fidelity: dict[str, Any] | None = None  # ``done``'s ``fidelity``: the textured asset against the photos

    def counts(self) -> tuple[int, int, str]:
        """What the UI shows as done / total: the current long phase's count while one reports, else training's."""
        if self.phase_total > 0:
            return self.phase_step, self.phase_total, self.unit
        return self.step, self.total, ""

    @property
    def fraction(self) -> float:
        done, total, _ = self.counts()
        return progress_fraction(done, total)

    def _reset_phase(self) -> None:
        self.phase_step, self.phase_total, self.unit = 0, 0, ""

    def apply(self, event: dict[str, Any]) -> None:
        """Updates the status from one event (engine events plus the add-on's ``log``/``exit``)."""
        name = event.get("event")
        if name == "start":
            self.state = "running"
            dev, name = str(event.get("device") or ""), str(event.get("device_name") or "")
            self.device = f"{dev} ({name})" if dev and name and name != dev else (dev or name)
            self.total = int(_num(event.get("total_steps")) or self.total)
            self.step = int(_num(event.get("start_step")) or 0)
        elif name == "stage":
            self.stage = str(event.get("stage", ""))
            self._reset_phase()
        elif name == "progress" and event.get("stage") not in (None, "training"):  # a long phase's own count
            self.stage = str(event["stage"])
            self.phase_step = int(_num(event.get("step")) or 0)
            self.phase_total = int(_num(event.get("total")) or 0)
            self.unit = str(event.get("unit") or "")
            self.eta_s = _num(event.get("eta_s"))
            self.elapsed_s = _num(event.get("elapsed_s"))
        elif name == "progress":
            self.step = int(_num(event.get("step")) or 0)
            self.total = int(_num(event.get("total")) or self.total)
            self.loss = _num(event.get("loss"))
            self.psnr = _num(event.get("psnr"))
            self.eta_s = _num(event.get("eta_s"))
            self.elapsed_s = _num(event.get("elapsed_s"))
        elif name == "preview_mesh":
            self.preview_path = event.get("path")
        elif name == "validation":
            self.val_psnr = _num(event.get("psnr"))
        elif name == "done":
            self.mesh_path = event.get("mesh")
            files = event.get("files")
            self.files = {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}
            fidelity = event.get("fidelity")
            if isinstance(fidelity, dict):
                self.fidelity = fidelity
            self.stage = "done"
            self._reset_phase()
            self.eta_s = 0.0
            if self.total:
                self.step = self.total
        elif name == "cancelled":
            self.checkpoint = event.get("checkpoint")
            if event.get("mesh"):
                self.mesh_path = event.get("mesh")
            self.stage = "cancelled"
            self._reset_phase()
        elif name == "error":
            kind = event.get("kind")
            msg = str(event.get("message", "")).strip()
            self.last_error = f"{kind} error: {msg}" if kind and kind != "internal" else msg
        elif name == LOG_EVENT:
            self.log_tail = (self.log_tail + [str(event.get("message", ""))])[-20:]
        elif name == EXIT_EVENT:
            self.returncode = event.get("returncode")
            self.state = str(event.get("state") or self.state)

    def status_text(self) -> str:
        """One line for the status bar / console, e.g. ``Training 1200/5000 (24%) | loss 0.0123 | ...``."""
        if self.state == "done":
            return "Reconstruction finished" + (f": {self.mesh_path}" if self.mesh_path else "")
        if self.state == "cancelled":
            return "Reconstruction cancelled"
        if self.state == "failed":
            return "Reconstruction failed" + (f": {self.last_error}" if self.last_error else "")
        if self.state == "idle":
            return "Idle"
        parts = [(self.stage or "starting").capitalize()]
        done, total, unit = self.counts()
        if self.stage == "training" or (total and done):
            parts[0] += f" {done}/{total}{' ' + unit if unit else ''} ({100.0 * self.fraction:.0f}%)"
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.psnr is not None:
            parts.append(f"PSNR {self.psnr:.2f} dB")
        if self.eta_s is not None and self.stage == "training":
            parts.append(f"ETA {format_eta(self.eta_s)}")
        return " | ".join(parts)


def fidelity_text(fidelity: dict[str, Any] | None) -> str:
    """One line for the panel from ``done``'s ``fidelity`` (PROTOCOL.md), "" when there is none or it is unusable.

    Masked runs: the asset's masked PSNR and how much of the masks it covers; without masks, the PSNR over the
    pixels the asset covers (the rest of a photo is background it does not model). "held-out": views the run
    neither trained nor textured on; else views it also learned from, which flatter the asset.
    """
    if not isinstance(fidelity, dict):
        return ""
    masked = bool(fidelity.get("masked", True))
    value = _num(fidelity.get("psnr" if masked else "psnr_covered"))
    views = fidelity.get("views")
    if value is None or not isinstance(views, list) or not views:
        return ""
    which = "held-out" if fidelity.get("held_out") else "training"
    text = f"Asset vs photos: {value:.1f} dB on {len(views)} {which} view{'s' if len(views) != 1 else ''}"
    coverage = _num(fidelity.get("coverage"))
    if masked and coverage is not None:
        text += f", {100.0 * coverage:.1f}% of the masks covered"
    elif not masked:
        text += " (no masks: where the asset covers them)"
    return text
