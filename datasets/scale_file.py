"""True scale: one known distance between two cameras, kept with the dataset in ``scale.json`` (numpy + stdlib).

A solve (or any capture without a scale) has world units of its own choosing. The artist names two photos and the
distance between the cameras that took them, in metres; from the cameras' world-frame centres that gives
``metres_per_unit``, which the camera import (Blender add-on) and ``fit`` (normalization.json) use so the scene
and the mesh come in metres. The file holds the names and the distance, not the factor, so it stays right when
the cameras are loaded at another downscale or re-normalized::

    {"version": 1, "camera_a": "IMG_0001.jpg", "camera_b": "IMG_0042.jpg", "distance_m": 0.85}

Written atomically (a temporary in the same folder, renamed into place) by :func:`write_known_distance`, which the
add-on calls too (it vendors this module): the file is never half-written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from datasets.errors import DatasetError

SCALE_JSON = "scale.json"
VERSION = 1


@dataclass(frozen=True)
class KnownDistance:
    camera_a: str  # image names as the dataset lists them (CameraSet.names)
    camera_b: str
    distance_m: float

    def record(self) -> dict[str, Any]:
        return {"version": VERSION, "camera_a": self.camera_a, "camera_b": self.camera_b,
                "distance_m": self.distance_m}


def check_distance(value: Any) -> float:
    """The distance in metres as a float; ValueError naming the problem unless finite and positive."""
    try:
        metres = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the known distance must be a number of metres, got {value!r}") from None
    if not (math.isfinite(metres) and metres > 0):
        raise ValueError(f"the known distance must be a positive number of metres, got {value!r}")
    return metres


def find_name(names: list[str], wanted: str) -> str:
    """The dataset image name meant by ``wanted``: the name itself, else the one with that file name, else the one
    with that stem (``IMG_0001`` for ``images/IMG_0001.JPG``). ValueError names the problem (unknown, ambiguous)."""
    wanted = str(wanted).strip()
    if wanted in names:
        return wanted
    for key in (lambda n: PurePosixPath(n).name, lambda n: PurePosixPath(n).stem):
        hits = [n for n in names if key(n) == wanted]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ValueError(f"image name {wanted!r} is ambiguous: {', '.join(hits[:4])}")
    example = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    raise ValueError(f"no image named {wanted!r} among the {len(names)} cameras (e.g. {example})")


def world_centres(cams) -> np.ndarray:
    """(N, 3) camera centres of a CameraSet in the dataset's world frame."""
    S = np.asarray(cams.scale_mat, dtype=np.float64)
    return cams.c2w[:, :, 3] @ S[:3, :3].T + S[:3, 3]


def metres_per_unit(cams, known: KnownDistance) -> float:
    """Metres per world unit of ``cams`` (a CameraSet) from a known distance. ValueError names the problem."""
    a, b = find_name(cams.names, known.camera_a), find_name(cams.names, known.camera_b)
    if a == b:
        raise ValueError(f"the known distance needs two different cameras, got {a!r} twice")
    centres = world_centres(cams)
    units = float(np.linalg.norm(centres[cams.names.index(a)] - centres[cams.names.index(b)]))
    if not units > 1e-12 * max(1.0, float(np.abs(centres).max())):
        raise ValueError(f"cameras {a!r} and {b!r} are at the same place: their distance cannot set the scale")
    return check_distance(known.distance_m) / units


def read_known_distance(root: str | Path) -> KnownDistance | None:
    """The dataset's ``scale.json``, or None when it has none. DatasetError (one line naming the file) when bad."""
    path = Path(root) / SCALE_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DatasetError(path, f"cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise DatasetError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("camera_a", "camera_b")):
        raise DatasetError(path, "expected {\"camera_a\": name, \"camera_b\": name, \"distance_m\": metres}")
    try:
        metres = check_distance(data.get("distance_m"))
    except ValueError as exc:
        raise DatasetError(path, str(exc)) from None
    return KnownDistance(data["camera_a"], data["camera_b"], metres)


def with_known_scale(cams):
    """``cams`` (a CameraSet) with ``metres_per_unit`` from the dataset's ``scale.json`` (unchanged without one).
    Raises DatasetError naming scale.json when the file is bad or names a camera the dataset lacks."""
    known = read_known_distance(cams.root)
    if known is None:
        return cams
    try:
        return dataclasses.replace(cams, metres_per_unit=metres_per_unit(cams, known))
    except ValueError as exc:
        raise DatasetError(Path(cams.root) / SCALE_JSON, str(exc)) from None


def write_known_distance(root: str | Path, names: list[str], camera_a: str, camera_b: str,
                         distance_m: Any) -> KnownDistance:
    """Checks the two names against the dataset's ``names`` and the distance, then writes ``root/scale.json``
    atomically. Returns what was written (with the dataset's own names). ValueError names the problem; nothing is
    written then."""
    a, b = find_name(names, camera_a), find_name(names, camera_b)
    if a == b:
        raise ValueError(f"the known distance needs two different cameras, got {a!r} twice")
    known = KnownDistance(a, b, check_distance(distance_m))
    write_json_atomic(Path(root) / SCALE_JSON, known.record())
    return known


def write_json_atomic(path: Path, data: dict) -> None:
    """``data`` as JSON at ``path``: written to a temporary beside it, flushed, then renamed onto it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["SCALE_JSON", "KnownDistance", "check_distance", "find_name", "metres_per_unit", "read_known_distance",
           "with_known_scale", "write_known_distance"]
