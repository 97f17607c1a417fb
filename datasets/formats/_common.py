"""Pieces shared by the format loaders: file reading, image size checks, mask pairing, CameraSet assembly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.camera_set import CameraSet, downscaled_size
from datasets.errors import DatasetError
from datasets.geometry import scale_intrinsics
from datasets.imageinfo import ImageInfo, list_images, read_image_info
from datasets.normalization import mean_up


def read_bytes(path: Path) -> bytes:
    """The bytes of a model / transforms file; an unreadable file is a DatasetError naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DatasetError(path, f"cannot read file: {exc.strerror or exc}") from None


def read_text(path: Path, not_utf8: str) -> str:
    """A UTF-8 text file with universal newlines (as ``Path.read_text``); ``not_utf8`` is the problem reported
    when it does not decode. A leading byte-order mark (Windows editors write one) is dropped."""
    try:
        text = read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(path, not_utf8) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def first_folder(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first existing sub-folder of ``root`` among ``names``."""
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def common_size(paths: list[Path]) -> tuple[int, int, list[ImageInfo]]:
    """Reads every header and checks all images have the size of the first.

    Returns:
        width, height and the per-file header info.
    """
    infos = [read_image_info(p) for p in paths]
    width, height = infos[0].width, infos[0].height
    for p, info in zip(paths, infos, strict=True):
        if (info.width, info.height) != (width, height):
            raise DatasetError(
                p, f"image size {info.width}x{info.height} differs from {width}x{height} of {paths[0].name}"
            )
    return width, height, infos


def pair_masks(mask_dir: Path, image_paths: list[Path], width: int, height: int) -> list[Path]:
    """Masks of ``mask_dir`` paired with images by sorted order, whatever their names; sizes must match."""
    masks = list_images(mask_dir)
    if len(masks) != len(image_paths):
        raise DatasetError(
            mask_dir,
            f"{len(masks)} mask images for {len(image_paths)} images (masks pair with images by sorted "
            "order)",
        )
    check_mask_sizes(masks, width, height)
    return masks


def check_mask_sizes(masks: list[Path], width: int, height: int) -> None:
    """Every mask must have the images' size."""
    for p in masks:
        info = read_image_info(p)
        if (info.width, info.height) != (width, height):
            raise DatasetError(
                p, f"mask size {info.width}x{info.height} differs from image size {width}x{height}"
            )


def build_camera_set(
    *,
    fmt: str,
    root: Path,
    names: list[str],
    image_paths: list[Path],
    mask_paths: list[Path] | None,
    K_full: np.ndarray,
    c2w: np.ndarray,
    scale_mat: np.ndarray,
    full_size: tuple[int, int],
    factor: float,
    region_notes: tuple[str, ...] = (),
) -> CameraSet:
    """Applies the downscale to full-resolution intrinsics and assembles the CameraSet.

    Args:
        K_full: (N, 3, 3) intrinsics of the full-size images; c2w: (N, 3, 4) normalized frame, OpenGL axes.
        full_size: (width, height) of the full-size images.
        region_notes: why the automatic region (the format's normalization) is uncertain, one line each.
    """
    width, height = downscaled_size(full_size[0], full_size[1], factor)
    if width < 1 or height < 1:
        raise DatasetError(
            root, f"downscale {factor:g} leaves no pixel of the {full_size[0]}x{full_size[1]} images"
        )
    K = scale_intrinsics(K_full, factor) if factor != 1.0 else np.array(K_full, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    if not (np.all(np.isfinite(K)) and np.all(np.isfinite(c2w)) and np.all(np.isfinite(scale_mat))):
        raise DatasetError(root, "cameras contain non-finite values")
    return CameraSet(
        names=names,
        image_paths=image_paths,
        mask_paths=mask_paths,
        K=K,
        c2w=c2w,
        scale_mat=np.asarray(scale_mat, dtype=np.float64),
        width=width,
        height=height,
        format=fmt,
        root=root,
        up=mean_up(c2w),
        downscale=factor,
        region_notes=tuple(region_notes),
    )
