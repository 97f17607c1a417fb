"""``normalization.json`` in a run folder: the 4x4 ``scale_mat`` from the normalized frame (the object inside the
unit sphere, where the engine trains and meshes) to the dataset's world frame (engine/PROTOCOL.md).

The one reader and validator, numpy only, so the engine and the Blender add-on (which vendors it, see
build_addon.py) read the file the same way. The engine writes it atomically from :func:`normalization_record`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError

NORMALIZATION_JSON = "normalization.json"
FRAMES = ("normalized", "world")  # what the meshes beside the file are stored in


def as_scale_mat(scale_mat: Any) -> np.ndarray:
    """(4, 4) float64 normalized -> world matrix; ValueError unless finite and invertible."""
    try:
        m = np.asarray(scale_mat, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError("scale_mat is not a numeric matrix") from exc
    if m.shape != (4, 4):
        raise ValueError(f"scale_mat must be a 4x4 list of rows, got shape {m.shape}")
    if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise ValueError("scale_mat must be finite and invertible")
    return m


def normalization_record(scale_mat: Any, frame: str = "normalized", **extra: Any) -> dict[str, Any]:
    """The JSON object to write: ``{"scale_mat": 4x4 rows, "frame": frame, **extra}``; extra entries (e.g. the
    user ``region``) are left out when None."""
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
    return {"scale_mat": as_scale_mat(scale_mat).tolist(), "frame": frame,
            **{k: v for k, v in extra.items() if v is not None}}


def read_normalization_json(path: str | Path) -> tuple[np.ndarray, str]:
    """Reads ``normalization.json`` (the file, or the run folder holding it).

    Returns:
        ((4, 4) float64 scale_mat, frame).
    Raises:
        DatasetError: (a ValueError) missing or unreadable file, bad JSON, no or bad ``scale_mat``; the message is
            one line, ``"<file>: <problem>"``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / NORMALIZATION_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DatasetError(path, "file not found") from exc
    except OSError as exc:
        raise DatasetError(path, f"cannot read ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise DatasetError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or "scale_mat" not in data:
        raise DatasetError(path, "no 'scale_mat' entry")
    frame = str(data.get("frame", "normalized"))
    if frame not in FRAMES:
        raise DatasetError(path, f"'frame' must be one of {', '.join(FRAMES)}, got {frame!r}")
    try:
        return as_scale_mat(data["scale_mat"]), frame
    except ValueError as exc:
        raise DatasetError(path, str(exc)) from exc


def read_metres_per_unit(path: str | Path) -> float | None:
    """``metres_per_unit`` of ``normalization.json`` (the file or its run folder): metres per world unit from the
    dataset's known distance, or None when the run had none. DatasetError (one line) for a bad file or value."""
    path = Path(path)
    if path.is_dir():
        path = path / NORMALIZATION_JSON
    read_normalization_json(path)  # the same checks of the file as a whole
    value = json.loads(path.read_text(encoding="utf-8")).get("metres_per_unit")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) or value <= 0:
        raise DatasetError(path, f"'metres_per_unit' must be a positive number, got {value!r}")
    return float(value)


__all__ = ["FRAMES", "NORMALIZATION_JSON", "as_scale_mat", "normalization_record", "read_metres_per_unit",
           "read_normalization_json"]
