"""COLMAP sparse models, text or binary (numpy + stdlib only; binary readers written here with struct).

::

    scene/
      sparse/0/ (or sparse/)  cameras.{bin,txt}, images.{bin,txt}, points3D.{bin,txt} (optional);
                              the .bin files are preferred
      images/                 the (undistorted) images, looked up by the model's image names
      masks/                  optional: masks/<name> or masks/<name>.png (COLMAP's convention) for every
                              image, or otherwise as many masks as images, paired by sorted order

Camera models: PINHOLE, SIMPLE_PINHOLE; SIMPLE_RADIAL, RADIAL, OPENCV and FULL_OPENCV load with a warning that
non-zero distortion is ignored (run ``colmap image_undistorter`` for exact results); fisheye models are refused.
COLMAP puts pixel centres at +0.5, so the OpenCV principal point is ``cx - 0.5``. Images registered in the
model are loaded in natural name order; files of images/ that the model does not register are skipped with a
warning.

Normalization (a COLMAP model has none): the automatic region of ``datasets.auto_region``, the smallest sphere
holding both the space most photos see and the sparse points' robust hull, every camera outside it; why it is
uncertain, when it is, is in ``CameraSet.region_notes``.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.auto_region import AutoRegion, auto_region
from datasets.camera_set import CameraSet
from datasets.errors import DatasetError
from datasets.formats._common import (
    build_camera_set,
    check_mask_sizes,
    common_size,
    first_folder,
    read_bytes,
    read_text,
)
from datasets.geometry import c2w_from_opencv
from datasets.imageinfo import list_images, natural_key
from datasets.normalization import normalize_c2w

# model id -> (name, number of parameters), as in COLMAP's src/colmap/sensor/models.h.
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
_MODEL_PARAMS = {name: count for name, count in CAMERA_MODELS.values()}
# Models with one focal length (f, cx, cy, ...) and with two (fx, fy, cx, cy, ...).
_SINGLE_FOCAL = ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")
_DOUBLE_FOCAL = ("PINHOLE", "OPENCV", "FULL_OPENCV")


@dataclass
class Camera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray


@dataclass
class Image:
    id: int
    qvec: np.ndarray  # (4,) w, x, y, z: world -> camera rotation
    tvec: np.ndarray  # (3,) world -> camera translation
    camera_id: int
    name: str


def qvec_to_rotmat(q: np.ndarray) -> np.ndarray:
    """(3, 3) rotation of a unit quaternion (w, x, y, z); the quaternion is normalized first."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


# --- text model ------------------------------------------------------------------------------------------


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of a text model file; comments dropped, blank lines kept (images.txt has some)."""
    text = read_text(path, "not a UTF-8 text file")
    return [
        (n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if not line.lstrip().startswith("#")
    ]


def read_cameras_text(path: Path) -> dict[int, Camera]:
    cameras = {}
    for n, line in _data_lines(path):
        if not line:
            continue
        parts = line.split()
        try:
            cam_id, model, width, height = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
            params = np.array([float(v) for v in parts[4:]])
        except (IndexError, ValueError):
            raise DatasetError(path, f"line {n}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...'") from None
        if model not in _MODEL_PARAMS:
            raise DatasetError(path, f"line {n}: unknown camera model {model!r}")
        if len(params) != _MODEL_PARAMS[model]:
            raise DatasetError(
                path, f"line {n}: {model} needs {_MODEL_PARAMS[model]} parameters, got {len(params)}"
            )
        cameras[cam_id] = Camera(cam_id, model, width, height, params)
    return cameras


def read_images_text(path: Path) -> dict[int, Image]:
    images = {}
    lines = _data_lines(path)
    k = 0
    while k < len(lines):
        n, line = lines[k]
        k += 1
        if not line:
            continue
        parts = line.split()
        try:
            if len(parts) < 10:
                raise ValueError
            img_id = int(parts[0])
            qvec = np.array([float(v) for v in parts[1:5]])
            tvec = np.array([float(v) for v in parts[5:8]])
            cam_id = int(parts[8])
        except ValueError:
            raise DatasetError(
                path, f"line {n}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'"
            ) from None
        # The name is the rest of the line (it may contain spaces); the next line lists the 2D points.
        name = line.split(None, 9)[9]
        images[img_id] = Image(img_id, qvec, tvec, cam_id, name)
        k += 1
    return images


def read_points_text(path: Path) -> np.ndarray:
    """(P, 3) sparse point positions of a points3D.txt."""
    return read_points3d_text(path)[0]


def read_points3d_text(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(P, 3) float64 positions and (P, 3) uint8 colours of a points3D.txt."""
    points, colors = [], []
    for n, line in _data_lines(path):
        if not line:
            continue
        parts = line.split()
        try:
            points.append([float(v) for v in parts[1:4]])
            if len(parts) < 8:
                raise ValueError
            colors.append([min(max(int(v), 0), 255) for v in parts[4:7]])
        except ValueError:
            raise DatasetError(path, f"line {n}: expected 'POINT3D_ID X Y Z R G B ERROR TRACK...'") from None
    return np.array(points, dtype=np.float64).reshape(-1, 3), np.array(colors, dtype=np.uint8).reshape(-1, 3)


# --- binary model ----------------------------------------------------------------------------------------


class _Reader:
    """Sequential little-endian reads of a byte buffer; truncation becomes a DatasetError naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = read_bytes(path)
        self.pos = 0

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise DatasetError(
                self.path, f"truncated or corrupt binary model (unexpected end at byte {self.pos})"
            )
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values

    def skip(self, nbytes: int) -> None:
        if nbytes < 0 or self.pos + nbytes > len(self.data):
            raise DatasetError(
                self.path, f"truncated or corrupt binary model (unexpected end at byte {self.pos})"
            )
        self.pos += nbytes

    def read_cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise DatasetError(self.path, "truncated or corrupt binary model (unterminated image name)")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DatasetError(self.path, "corrupt binary model (image name is not UTF-8)") from None

    def check_end(self) -> None:
        if self.pos != len(self.data):
            raise DatasetError(
                self.path, f"corrupt binary model ({len(self.data) - self.pos} unexpected trailing bytes)"
            )


def read_cameras_binary(path: Path) -> dict[int, Camera]:
    r = _Reader(path)
    (count,) = r.read("Q")
    cameras = {}
    for _ in range(count):
        cam_id, model_id, width, height = r.read("iiQQ")
        if model_id not in CAMERA_MODELS:
            raise DatasetError(path, f"camera {cam_id}: unknown camera model id {model_id}")
        model, n_params = CAMERA_MODELS[model_id]
        cameras[cam_id] = Camera(cam_id, model, int(width), int(height), np.array(r.read(f"{n_params}d")))
    r.check_end()
    return cameras


def read_images_binary(path: Path) -> dict[int, Image]:
    r = _Reader(path)
    (count,) = r.read("Q")
    images = {}
    for _ in range(count):
        img_id, qw, qx, qy, qz, tx, ty, tz, cam_id = r.read("idddddddi")
        name = r.read_cstring()
        (n_points,) = r.read("Q")
        r.skip(24 * n_points)  # x, y (double) and point3D_id (int64) per 2D point: not needed
        images[img_id] = Image(img_id, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]), cam_id, name)
    r.check_end()
    return images


def read_points_binary(path: Path) -> np.ndarray:
    """(P, 3) sparse point positions of a points3D.bin."""
    return read_points3d_binary(path)[0]


def read_points3d_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(P, 3) float64 positions and (P, 3) uint8 colours of a points3D.bin."""
    r = _Reader(path)
    (count,) = r.read("Q")
    if count >= len(r.data):
        raise DatasetError(path, "corrupt binary model (impossible point count)")
    points = np.empty((count, 3))
    colors = np.empty((count, 3), dtype=np.uint8)
    for k in range(count):
        # point3D_id (uint64), xyz (3 double), rgb (3 uint8), error (double), track length (uint64).
        _pid, x, y, z, red, green, blue, _err, track = r.read("QdddBBBdQ")
        points[k] = (x, y, z)
        colors[k] = (red, green, blue)
        r.skip(8 * track)  # (image_id, point2D_idx) int32 pairs
    r.check_end()
    return points, colors


# --- loading ---------------------------------------------------------------------------------------------


def find_sparse_folder(root: Path) -> Path | None:
    """``sparse/0`` or ``sparse`` of ``root``, the first holding cameras.bin or cameras.txt; None if neither."""
    for folder in (root / "sparse" / "0", root / "sparse"):
        if any((folder / f"cameras{ext}").is_file() for ext in (".bin", ".txt")):
            return folder
    return None


def read_sparse_points(root: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The model's sparse points in the dataset's world frame: (P, 3) positions and (P, 3) uint8 colours, without
    non-finite points; None when the model has no points3D file. Raises DatasetError on a bad file."""
    pts_file = _model_file(sparse_folder(root), "points3D", required=False)
    if pts_file is None:
        return None
    xyz, rgb = read_points3d_binary(pts_file) if pts_file.suffix == ".bin" else read_points3d_text(pts_file)
    keep = np.isfinite(xyz).all(axis=1)
    return xyz[keep], rgb[keep]


def sparse_folder(root: Path) -> Path:
    folder = find_sparse_folder(root)
    if folder is not None:
        return folder
    raise DatasetError(
        root / "sparse" / "0", "COLMAP model not found (expected sparse/0/cameras.bin or .txt)"
    )


def _model_file(folder: Path, stem: str, required: bool = True) -> Path | None:
    for ext in (".bin", ".txt"):
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    if required:
        raise DatasetError(folder / f"{stem}.bin", f"missing COLMAP model file ({stem}.bin or {stem}.txt)")
    return None


def read_model(folder: Path) -> tuple[dict[int, Camera], dict[int, Image], np.ndarray | None, Path, Path]:
    """Cameras, images, points (P, 3) or None, and the paths of the camera and image files."""
    cam_file = _model_file(folder, "cameras")
    img_file = _model_file(folder, "images")
    pts_file = _model_file(folder, "points3D", required=False)
    binary = {".bin": True, ".txt": False}
    cameras = read_cameras_binary(cam_file) if binary[cam_file.suffix] else read_cameras_text(cam_file)
    images = read_images_binary(img_file) if binary[img_file.suffix] else read_images_text(img_file)
    points = None
    if pts_file is not None:
        points = read_points_binary(pts_file) if binary[pts_file.suffix] else read_points_text(pts_file)
    return cameras, images, points, cam_file, img_file


def intrinsics(cam: Camera, cam_file: Path) -> np.ndarray:
    """(3, 3) OpenCV intrinsics of a COLMAP camera (distortion dropped)."""
    p = cam.params
    if cam.model in _SINGLE_FOCAL:
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        distortion = p[3:]
    elif cam.model in _DOUBLE_FOCAL:
        fx, fy, cx, cy = p[:4]
        distortion = p[4:]
    else:
        raise DatasetError(
            cam_file,
            f"camera {cam.id}: model {cam.model} is not supported (undistort with colmap image_undistorter)",
        )
    if not (fx > 0 and fy > 0) or not np.all(np.isfinite(p)):
        raise DatasetError(cam_file, f"camera {cam.id}: invalid focal length or parameters {p.tolist()}")
    if np.any(distortion != 0):
        warnings.warn(
            f"{cam_file}: camera {cam.id} ({cam.model}) has lens distortion, which is ignored (images are "
            "assumed undistorted; run colmap image_undistorter for exact results)",
            stacklevel=4,
        )
    return np.array([[fx, 0.0, cx - 0.5], [0.0, fy, cy - 0.5], [0.0, 0.0, 1.0]])


def normalization(
    K: np.ndarray, c2w: np.ndarray, width: int, height: int, points: np.ndarray | None, where: Path
) -> AutoRegion:
    """The automatic region (``scale_mat`` and notes) of world-frame cameras and sparse points: see
    ``datasets.auto_region``."""
    try:
        return auto_region(K, c2w, width, height, points)
    except ValueError as exc:
        raise DatasetError(where, str(exc)) from None


def _masks(
    root: Path, names: list[str], image_dir: Path, n_images_in_folder: list[Path]
) -> list[Path] | None:
    mask_dir = first_folder(root, ("masks", "mask"))
    if mask_dir is None:
        return None
    by_name = []
    for name in names:
        hit = next((c for c in (mask_dir / name, mask_dir / f"{name}.png") if c.is_file()), None)
        if hit is None:
            break
        by_name.append(hit)
    else:
        return by_name
    masks = list_images(mask_dir)
    if len(masks) == len(names):
        return masks
    if len(masks) == len(n_images_in_folder):
        index = {p.name: k for k, p in enumerate(n_images_in_folder)}
        if all(Path(name).name in index for name in names):
            return [masks[index[Path(name).name]] for name in names]
    raise DatasetError(
        mask_dir,
        f"{len(masks)} masks for {len(names)} registered images ({len(n_images_in_folder)} in "
        f"{image_dir.name}/): masks pair by name (masks/<name>.png) or by sorted order",
    )


def load(root: Path, factor: float) -> CameraSet:
    """Loads a COLMAP scene's cameras (see the module docstring). Raises DatasetError on bad input."""
    folder = sparse_folder(root)
    cameras, images, points, cam_file, img_file = read_model(folder)
    if not images:
        raise DatasetError(img_file, "no registered images in the model")
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DatasetError(image_dir, "image folder not found")
    ordered = sorted(images.values(), key=lambda im: natural_key(im.name))
    first_id: dict[str, int] = {}
    for im in ordered:  # two poses for one photo: a merged or hand-edited model
        if im.name in first_id:
            raise DatasetError(
                img_file, f"image {im.name!r} is registered twice (image ids {first_id[im.name]} and {im.id})"
            )
        first_id[im.name] = im.id
    paths = []
    for im in ordered:
        if im.camera_id not in cameras:
            raise DatasetError(
                img_file, f"image {im.name!r} refers to camera {im.camera_id}, absent from {cam_file.name}"
            )
        path = image_dir / im.name
        if not path.is_file():
            raise DatasetError(path, f"missing image (registered in {img_file.name})")
        paths.append(path)
    width, height, _ = common_size(paths)
    for im, path in zip(ordered, paths, strict=True):
        cam = cameras[im.camera_id]
        if (cam.width, cam.height) != (width, height):
            raise DatasetError(
                path,
                f"image size {width}x{height} differs from {cam.width}x{cam.height} of camera {cam.id} in "
                f"{cam_file.name} (images at another resolution than the model?)",
            )
    in_folder = list_images(image_dir)
    registered = {p.resolve() for p in paths}
    skipped = [p for p in in_folder if p.resolve() not in registered]
    if skipped:
        warnings.warn(
            f"{image_dir}: {len(skipped)} images are not registered in the COLMAP model and are skipped "
            f"(e.g. {skipped[0].name})",
            stacklevel=3,
        )

    K_cache = {cam_id: None for cam_id in cameras}
    K = np.empty((len(ordered), 3, 3))
    c2w_world = np.empty((len(ordered), 3, 4))
    for n, im in enumerate(ordered):
        if K_cache[im.camera_id] is None:
            K_cache[im.camera_id] = intrinsics(cameras[im.camera_id], cam_file)
        K[n] = K_cache[im.camera_id]
        if (
            not (np.all(np.isfinite(im.qvec)) and np.all(np.isfinite(im.tvec)))
            or np.linalg.norm(im.qvec) < 1e-12
        ):
            raise DatasetError(img_file, f"image {im.name!r}: invalid pose")
        c2w_world[n] = c2w_from_opencv(qvec_to_rotmat(im.qvec), im.tvec)

    region = normalization(K, c2w_world, width, height, points, folder)
    scale_mat = region.scale_mat
    names = [im.name for im in ordered]
    masks = _masks(root, names, image_dir, in_folder)
    if masks is not None:
        check_mask_sizes(masks, width, height)
    return build_camera_set(
        fmt="colmap",
        root=root,
        names=names,
        image_paths=paths,
        mask_paths=masks,
        K_full=K,
        c2w=normalize_c2w(c2w_world, scale_mat),
        scale_mat=scale_mat,
        full_size=(width, height),
        factor=factor,
        region_notes=region.notes,
    )
