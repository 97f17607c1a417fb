"""DTU / IDR / NeuS layout (numpy + stdlib only).

::

    scene/
      cameras_sphere.npz   world_mat_i (4x4 or 3x4 projection K[R|t], world units), scale_mat_i (4x4
                           normalized -> world); world_mat_0 .. world_mat_{N-1}. cameras.npz is used when
                           cameras_sphere.npz is absent.
      image/  (or images/) N images, paired with the views by sorted (natural) order, whatever their names
      mask/   (or masks/)  optional, N masks paired by sorted order (000.png .. for 000000.png .. in DTU)

The projection of view i in the normalized frame is ``P_i = (world_mat_i @ scale_mat_i)[:3, :4]`` (as NeuS),
split into ``K`` and ``c2w`` with an RQ decomposition. ``scale_mat`` of the CameraSet is ``scale_mat_0``.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from datasets.camera_set import CameraSet
from datasets.errors import DatasetError
from datasets.formats._common import build_camera_set, common_size, first_folder, pair_masks
from datasets.geometry import c2w_from_opencv, decompose_projection
from datasets.imageinfo import list_images

DEFAULT_CAMERAS = "cameras_sphere.npz"
FALLBACK_CAMERAS = "cameras.npz"
IMAGE_DIRS = ("image", "images")
MASK_DIRS = ("mask", "masks")


def camera_file(root: Path, cameras_file: Path | None = None) -> Path:
    """The npz to read: ``cameras_file`` if given, else cameras_sphere.npz (cameras.npz if that is absent)."""
    if cameras_file is not None:
        return cameras_file
    default = root / DEFAULT_CAMERAS
    if not default.exists() and (root / FALLBACK_CAMERAS).is_file():
        return root / FALLBACK_CAMERAS
    return default


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an npz file (no pickles)."""
    if not path.is_file():
        raise DatasetError(path, "camera file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise DatasetError(path, "not an npz archive (a single .npy array)")
            return {key: np.asarray(data[key]) for key in data.files}
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DatasetError(path, f"cannot read npz archive: {exc}") from None


def projection_matrices(npz_path: Path, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Checks the keys; returns ``P`` (N, 3, 4) = (world_mat_i @ scale_mat_i)[:3], scale_mat_i (N, 4, 4)."""
    # Only canonical names (world_mat_0, not world_mat_00): the matrices are looked up by them.
    ids = sorted(int(m.group(1)) for k in arrays if (m := re.fullmatch(r"world_mat_(0|[1-9]\d*)", k)))
    if not ids:
        raise DatasetError(
            npz_path, "missing key world_mat_0 (no world_mat_i arrays: not a DTU/IDR camera file)"
        )
    n = ids[-1] + 1
    present = set(ids)
    for i in range(n):
        if i not in present:
            raise DatasetError(
                npz_path, f"missing key world_mat_{i} (world_mat_0..world_mat_{n - 1} expected)"
            )
    P = np.empty((n, 3, 4))
    scale = np.empty((n, 4, 4))
    for i in range(n):
        key = f"scale_mat_{i}"
        if key not in arrays:
            raise DatasetError(npz_path, f"missing key {key}")
        world = _as_4x4(npz_path, f"world_mat_{i}", arrays[f"world_mat_{i}"])
        scale[i] = _as_4x4(npz_path, key, arrays[key])
        P[i] = (world @ scale[i])[:3, :4]
    return P, scale


def _as_4x4(npz_path: Path, key: str, value: np.ndarray) -> np.ndarray:
    if value.shape not in ((4, 4), (3, 4)) or not np.issubdtype(value.dtype, np.number):
        raise DatasetError(
            npz_path, f"{key} has shape {value.shape} and dtype {value.dtype}, expected a 4x4 matrix"
        )
    out = np.eye(4)
    out[: value.shape[0]] = value.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise DatasetError(npz_path, f"{key} has non-finite entries")
    return out


def cameras_from_projections(npz_path: Path, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Splits each (3, 4) projection of ``P`` (N, 3, 4) into K (N, 3, 3) and c2w (N, 3, 4) (OpenGL axes)."""
    K = np.empty((len(P), 3, 3))
    c2w = np.empty((len(P), 3, 4))
    for i, Pi in enumerate(P):
        try:
            K[i], R, t = decompose_projection(Pi)
        except ValueError as exc:
            raise DatasetError(npz_path, f"world_mat_{i}: degenerate camera: {exc}") from None
        c2w[i] = c2w_from_opencv(R, t)
        # The object sits at the normalized origin; a camera with it behind is a broken (mirrored) matrix.
        if np.dot(-c2w[i, :, 3], -c2w[i, :, 2]) <= 0:
            raise DatasetError(
                npz_path, f"world_mat_{i}: degenerate camera: the object centre is behind the camera"
            )
    return K, c2w


def load(root: Path, factor: float, cameras_file: Path | None = None) -> CameraSet:
    """Loads a DTU-layout scene's cameras (see the module docstring). Raises DatasetError on bad input."""
    npz_path = camera_file(root, cameras_file)
    P, scale = projection_matrices(npz_path, read_npz(npz_path))
    n = len(P)

    image_dir = first_folder(root, IMAGE_DIRS)
    if image_dir is None:
        raise DatasetError(root / IMAGE_DIRS[0], "image folder not found (expected image/ or images/)")
    paths = list_images(image_dir)
    if not paths:
        raise DatasetError(image_dir, "no PNG or JPEG images in the image folder")
    views = f"{npz_path.name} has {n} views (world_mat_0..world_mat_{n - 1})"
    if len(paths) > n:
        raise DatasetError(paths[n], f"extra image: {views} but {image_dir.name}/ holds {len(paths)} images")
    if len(paths) < n:
        raise DatasetError(
            image_dir, f"missing images: {views} but {image_dir.name}/ holds only {len(paths)}"
        )
    width, height, _ = common_size(paths)

    mask_dir = first_folder(root, MASK_DIRS)
    masks = pair_masks(mask_dir, paths, width, height) if mask_dir is not None else None

    K, c2w = cameras_from_projections(npz_path, P)
    return build_camera_set(
        fmt="dtu",
        root=root,
        names=[p.name for p in paths],
        image_paths=paths,
        mask_paths=masks,
        K_full=K,
        c2w=c2w,
        scale_mat=scale[0],
        full_size=(width, height),
        factor=factor,
    )
