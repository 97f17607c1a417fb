"""A dataset with its pixels: cameras (``datasets.cameras``) plus images and masks read with Pillow.

Pillow is imported only inside ``load`` so ``import datasets`` works in Blender's Python, which has numpy
only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

import numpy as np

from datasets.cameras import CameraSet, load_cameras


@dataclass
class Scene(CameraSet):
    """A CameraSet plus pixels at the loaded resolution.

    Attributes:
        images: (N, H, W, 3) uint8 (RGBA images composited over white); the only copy of the pixels: training,
            validation and photo colours read (and convert) from it what they use.
        masks: (N, H, W) bool (foreground), or None when the dataset has no masks.
    (``n_views``, ``height`` and ``width`` describe both arrays.)
    """

    images: np.ndarray
    masks: np.ndarray | None


def load(
    path: str | Path,
    format: str = "auto",
    downscale: float = 1,
    cameras_file: str | Path | None = None,
    split: str = "train",
    workers: int | None = None,
    region: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Scene:
    """Loads cameras, images and masks of a dataset folder.

    Args:
        path, format, downscale, cameras_file, split, region: as ``datasets.load_cameras`` (downscale: floor sizes,
            box filter over the top-left ``(W' * s) x (H' * s)`` pixels, consistent with ``K``).
        workers: decoding threads (Pillow releases the GIL while decoding); default min(8, CPU count).
        progress: called in this thread with (files read, files) as each image or mask is read; an exception it
            raises (a cancel) stops the loading once the files under way are read.
    Raises:
        DatasetError: bad input, including images that fail to decode; nothing is returned half-loaded.
    """
    from datasets import images as io  # Pillow

    cams = load_cameras(path, format=format, downscale=downscale, cameras_file=cameras_file, split=split,
                        region=region)
    n, h, w = cams.n_views, cams.height, cams.width
    images = np.empty((n, h, w, 3), dtype=np.uint8)
    masks = np.empty((n, h, w), dtype=bool) if cams.mask_paths is not None else None
    jobs = [(io.read_image, p, images[i]) for i, p in enumerate(cams.image_paths)]
    if masks is not None:
        # An RGBA image that is its own mask (NeRF-synthetic) is read from its alpha even where that is opaque.
        jobs += [(partial(io.read_mask, own_alpha=p == cams.image_paths[i]), p, masks[i])
                 for i, p in enumerate(cams.mask_paths)]
    n_workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        futures = [pool.submit(read, path, cams.downscale, w, h, out=out) for read, path, out in jobs]
        try:
            for done, _ in enumerate(as_completed(futures), 1):
                if progress is not None:
                    progress(done, len(futures))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        for future in futures:  # the first failure in file order (a DatasetError naming the file)
            future.result()
    values = {f.name: getattr(cams, f.name) for f in fields(CameraSet)}
    return Scene(**values, images=images, masks=masks)


def pixel_bytes(n_views: int, width: int, height: int, has_masks: bool) -> int:
    """Bytes :func:`load` holds for the pixels of ``n_views`` images of ``width x height`` (uint8 RGB, bool mask)."""
    return n_views * width * height * (3 + int(has_masks))
