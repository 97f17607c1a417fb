"""NeRF-synthetic (Blender) format (numpy + stdlib only).

::

    scene/
      transforms_train.json, transforms_val.json, transforms_test.json  (or a single transforms.json)
      train/r_0.png ...      (``file_path`` with or without extension)

Each JSON holds ``frames`` (``file_path``, ``transform_matrix`` = 4x4 camera-to-world, already OpenGL camera
axes) and intrinsics: ``camera_angle_x`` (horizontal field of view, radians), optional ``camera_angle_y``, or
``fl_x``/``fl_y``/``cx``/``cy``/``w``/``h`` in pixels (top level or per frame); with the focal length of one axis
only, pixels are square. Blender (and instant-ngp) put pixel centres at +0.5, so the OpenCV principal point is
``cx - 0.5``, and ``W / 2 - 0.5`` when ``cx`` is not given.

Splits: ``split="train"|"val"|"test"`` reads ``transforms_<split>.json``; ``"all"`` reads every split file
present. A lone ``transforms.json`` (no split files) serves ``"train"`` and ``"all"``.

RGBA images give the masks (their alpha channel: ``mask_paths == image_paths``) and are composited over white.

Normalization (the JSON has none):

- cameras looking at the world origin (their least-squares look-at point is within 5% of the median camera
  distance from it), as in NeRF-synthetic: centre 0 and radius 1.5, the radius those scenes' objects fit in
  (clamped to 0.9 x the nearest camera distance so every camera stays outside the sphere);
- otherwise centre = the look-at point and radius = distance x tan(half the wider field of view), the sphere
  spanning the images' longer side (``datasets.normalization.view_radius``; same clamp). If the look-at
  point is ill-defined (nearly parallel axes) the origin is used.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from datasets.camera_set import CameraSet
from datasets.errors import DatasetError
from datasets.formats._common import build_camera_set, common_size, read_text
from datasets.imageinfo import IMAGE_SUFFIXES
from datasets.normalization import (
    camera_distances,
    look_at_center,
    normalize_c2w,
    scale_matrix,
    view_radius,
)

NERF_SYNTHETIC_RADIUS = 1.5
_INTRINSIC_KEYS = ("camera_angle_x", "camera_angle_y", "fl_x", "fl_y", "cx", "cy", "w", "h")
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def json_files(root: Path, cameras_file: Path | None, split: str) -> list[Path]:
    """The transforms files that make up ``split``."""
    if cameras_file is not None:
        if not cameras_file.is_file():
            raise DatasetError(cameras_file, "transforms file not found")
        return [cameras_file]
    split_files = {s: root / f"transforms_{s}.json" for s in ("train", "val", "test")}
    single = root / "transforms.json"
    if split == "all":
        found = [p for p in split_files.values() if p.is_file()]
        if found:
            return found
        if single.is_file():
            return [single]
        raise DatasetError(split_files["train"], "transforms file not found (nor transforms.json)")
    if split_files[split].is_file():
        return [split_files[split]]
    if split == "train" and single.is_file() and not any(p.is_file() for p in split_files.values()):
        return [single]
    raise DatasetError(
        split_files[split], "transforms file not found" + (" (nor transforms.json)" * (split == "train"))
    )


def read_json(path: Path) -> dict:
    """A transforms file as a dict with a non-empty ``frames`` list."""
    text = read_text(path, "invalid JSON: not UTF-8 text")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(path, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(meta, dict):
        raise DatasetError(path, "invalid transforms file: the top level must be a JSON object")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DatasetError(path, "invalid transforms file: missing or empty 'frames' list")
    return meta


def resolve_image(json_path: Path, file_path: str) -> Path | None:
    """``file_path`` relative to the JSON's folder, trying image extensions when it has none that exists.

    Windows-written files may use backslashes, and an extension may differ in case from the file's (``r_0.png``
    for ``r_0.PNG``: the same file on Windows and macOS); both are accepted.
    """
    base = json_path.parent / file_path.replace("\\", "/")
    if base.is_file():
        return base
    suffixes = IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES)
    for suffix in suffixes:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    if base.suffix.lower() in IMAGE_SUFFIXES:
        for suffix in (base.suffix.lower(), base.suffix.upper()):
            if base.with_suffix(suffix).is_file():
                return base.with_suffix(suffix)
    return None


def _number(json_path: Path, where: str, key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DatasetError(json_path, f"{where}: '{key}' must be a finite number, got {value!r}")
    return float(value)


def _rotation_part(json_path: Path, where: str, matrix) -> np.ndarray:
    """The (3, 4) c2w of a ``transform_matrix``, its rotation orthonormalized (uniform scale removed)."""
    try:
        m = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(json_path, f"{where}: 'transform_matrix' is not a numeric matrix") from None
    if m.shape not in ((4, 4), (3, 4)) or not np.all(np.isfinite(m)):
        raise DatasetError(json_path, f"{where}: 'transform_matrix' must be a finite 4x4 matrix, got shape {m.shape}")
    U, S, Vt = np.linalg.svd(m[:3, :3])
    if S[-1] <= 1e-9 * max(S[0], 1e-300) or S[0] / S[-1] > 1.01 or np.linalg.det(m[:3, :3]) < 0:
        raise DatasetError(json_path, f"{where}: 'transform_matrix' is not a rotation (singular, mirrored or skewed)")
    out = m[:3].copy()
    out[:, :3] = U @ Vt
    return out


def _focal(vals: dict[str, float], axis: str, size: int) -> float | None:
    """Focal length in pixels along ``axis`` ("x" or "y"): ``fl_<axis>``, else from ``camera_angle_<axis>``
    (the field of view across ``size`` pixels); None when neither is given."""
    if f"fl_{axis}" in vals:
        return vals[f"fl_{axis}"]
    if f"camera_angle_{axis}" in vals:
        return 0.5 * size / math.tan(0.5 * vals[f"camera_angle_{axis}"])
    return None


def _intrinsics(json_path: Path, where: str, params: dict, width: int, height: int) -> np.ndarray:
    """(3, 3) OpenCV intrinsics of one frame from the merged top-level and frame keys."""
    vals = {k: _number(json_path, where, k, params[k]) for k in _INTRINSIC_KEYS if params.get(k) is not None}
    for key in ("camera_angle_x", "camera_angle_y"):
        if key in vals and not 0 < vals[key] < math.pi:
            raise DatasetError(json_path, f"{where}: '{key}' must be a field of view in radians, in (0, pi)")
    for key, actual in (("w", width), ("h", height)):
        if key in vals and int(round(vals[key])) != actual:
            raise DatasetError(json_path, f"{where}: '{key}' is {vals[key]:g} but the image is {width}x{height}")
    fx, fy = _focal(vals, "x", width), _focal(vals, "y", height)
    if fx is None and fy is None:
        raise DatasetError(json_path, f"{where}: missing 'camera_angle_x' (or 'fl_x', 'fl_y', 'camera_angle_y')")
    # One axis given: square pixels.
    fx = fy if fx is None else fx
    fy = fx if fy is None else fy
    if not (fx > 0 and fy > 0):
        raise DatasetError(json_path, f"{where}: focal length must be positive (check camera_angle_x / fl_x)")
    cx = vals.get("cx", 0.5 * width) - 0.5
    cy = vals.get("cy", 0.5 * height) - 0.5
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def normalization(K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> np.ndarray:
    """``scale_mat`` (4, 4) for world-frame cameras (see the module docstring)."""
    center = look_at_center(c2w)
    origin = np.zeros(3)
    dist_origin = camera_distances(c2w, origin)
    if center is None or np.linalg.norm(center) <= 0.05 * np.median(dist_origin):
        radius = min(NERF_SYNTHETIC_RADIUS, 0.9 * float(dist_origin.min()))
        return scale_matrix(origin, radius)
    radius = min(view_radius(K, c2w, width, height, center), 0.9 * float(camera_distances(c2w, center).min()))
    return scale_matrix(center, radius)


def load(root: Path, factor: float, cameras_file: Path | None, split: str) -> CameraSet:
    """Loads a NeRF-synthetic scene's cameras (see the module docstring). Raises DatasetError on bad input."""
    entries = []  # (json path, frame index, frame dict, merged intrinsic parameters)
    for jf in json_files(root, cameras_file, split):
        meta = read_json(jf)
        top = {k: meta[k] for k in _INTRINSIC_KEYS + _DISTORTION_KEYS if k in meta}
        for i, frame in enumerate(meta["frames"]):
            if not isinstance(frame, dict):
                raise DatasetError(jf, f"frames[{i}] is not a JSON object")
            params = {**top, **{k: frame[k] for k in _INTRINSIC_KEYS + _DISTORTION_KEYS if k in frame}}
            entries.append((jf, i, frame, params))

    image_paths = []
    for jf, i, frame, _ in entries:
        fp = frame.get("file_path")
        if not isinstance(fp, str) or not fp:
            raise DatasetError(jf, f"frames[{i}]: missing 'file_path'")
        if "transform_matrix" not in frame:
            raise DatasetError(jf, f"frames[{i}]: missing 'transform_matrix'")
        path = resolve_image(jf, fp)
        if path is None:
            tried = "" if Path(fp).suffix.lower() in IMAGE_SUFFIXES else f"; tried {', '.join(IMAGE_SUFFIXES)}"
            raise DatasetError(jf.parent / fp, f"missing image (frames[{i}] of {jf.name}{tried})")
        image_paths.append(path)
    width, height, infos = common_size(image_paths)

    K = np.empty((len(entries), 3, 3))
    c2w_world = np.empty((len(entries), 3, 4))
    distortion = False
    for n, (jf, i, frame, params) in enumerate(entries):
        where = f"frames[{i}]"
        K[n] = _intrinsics(jf, where, params, width, height)
        c2w_world[n] = _rotation_part(jf, where, frame["transform_matrix"])
        distortion |= any(params.get(k) not in (None, 0, 0.0) for k in _DISTORTION_KEYS)
    if distortion:
        warnings.warn(f"{root}: lens distortion coefficients are ignored (images assumed undistorted)", stacklevel=3)

    scale_mat = normalization(K, c2w_world, width, height)
    masks = list(image_paths) if all(info.has_alpha for info in infos) else None
    return build_camera_set(
        fmt="blender",
        root=root,
        names=[_relative_name(p, root) for p in image_paths],
        image_paths=image_paths,
        mask_paths=masks,
        K_full=K,
        c2w=normalize_c2w(c2w_world, scale_mat),
        scale_mat=scale_mat,
        full_size=(width, height),
        factor=factor,
    )


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name
