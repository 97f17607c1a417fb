"""Writes a downscaled copy of a DTU-layout scene: ``python -m datasets.downscale SRC DST --factor 2``.

The copy is self-consistent: images and masks box-filtered to ``floor(W / s) x floor(H / s)`` (same names and
types), and in every ``cameras*.npz`` of SRC that holds ``world_mat_i`` (the chosen cameras file at least):

- ``world_mat_i`` -> ``S @ world_mat_i`` with ``S`` the centre-aware pixel map ``u' = (u + 0.5) / s - 0.5``
  (``datasets.geometry.pixel_scale_matrix``), so ``P = (world_mat @ scale_mat)[:3]`` projects into the new
  grid;
- ``camera_mat_i`` (IDR's pixel -> [-1, 1] normalization) -> ``camera_mat_i @ S^-1``: the same normalized
  coordinates for the same ray;
- ``*_inv_i`` recomputed as the inverses of the new matrices; ``scale_mat_i`` and every other key unchanged.

Rescaled matrices are written as float64; other keys keep their dtype. Other files (README, checksums) are not
copied. Everything is written into a temporary folder next to DST, then renamed to DST, so DST appears
complete or not at all. Bad input: a one-line message on stderr and exit status 2. numpy + stdlib here; pixels
via Pillow (``datasets.images``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from datasets.cameras import load_cameras
from datasets.errors import DatasetError
from datasets.formats import dtu
from datasets.geometry import pixel_scale_matrix


def rescale_npz_arrays(arrays: dict[str, np.ndarray], factor: float) -> dict[str, np.ndarray]:
    """The arrays of a DTU cameras npz for images downscaled by ``factor`` (see the module docstring)."""
    S = np.eye(4)
    S[:3, :3] = pixel_scale_matrix(factor)
    S_inv = np.linalg.inv(S)
    out = dict(arrays)
    for key, value in arrays.items():
        m = re.fullmatch(r"(world_mat|camera_mat)_(\d+)", key)
        if m is None:
            continue
        kind, i = m.groups()
        mat = value.astype(np.float64)
        rows = mat.shape[0]
        if mat.shape not in ((4, 4), (3, 4)):
            continue
        new = S[:rows, :rows] @ mat if kind == "world_mat" else mat @ S_inv[: mat.shape[1], : mat.shape[1]]
        out[key] = new
        inv_key = f"{kind}_inv_{i}"
        if inv_key in arrays and new.shape == (4, 4):
            out[inv_key] = np.linalg.inv(new)
    return out


def camera_npz_files(src: Path, chosen: Path) -> list[Path]:
    """The chosen cameras file plus every other ``cameras*.npz`` of ``src`` holding ``world_mat_0``."""
    files = [chosen]
    for p in sorted(src.glob("cameras*.npz")):
        if p.resolve() == chosen.resolve():
            continue
        try:
            keys = dtu.read_npz(p).keys()
        except DatasetError:
            continue
        if "world_mat_0" in keys:
            files.append(p)
    return files


def downscale_scene(src: str | Path, dst: str | Path, factor: int, cameras_file: str | None = None) -> Path:
    """Writes the downscaled copy of ``src`` to ``dst`` (must not exist) atomically; returns ``dst``.

    Raises:
        DatasetError: bad input (the source fails to load, dst exists, bad factor).
    """
    from datasets import images as io  # Pillow

    src, dst = Path(os.path.abspath(src)), Path(os.path.abspath(dst))
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise DatasetError(src, f"factor must be an integer >= 1, got {factor!r}")
    cams = load_cameras(src, format="dtu", downscale=factor, cameras_file=cameras_file)
    if dst.exists():
        raise DatasetError(dst, "destination already exists (choose a new folder)")
    if src == dst or src in dst.parents:
        raise DatasetError(dst, "destination must not be inside the source folder")
    chosen = dtu.camera_file(src, None if cameras_file is None else src / cameras_file)
    npz_files = camera_npz_files(src, chosen)

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".neus_tmp_{dst.name}_", dir=dst.parent))
    try:
        jobs = []
        for paths, is_mask in ((cams.image_paths, False), (cams.mask_paths or [], True)):
            for p in paths:
                out_dir = tmp / p.parent.name
                out_dir.mkdir(exist_ok=True)
                jobs.append((p, out_dir / p.name, is_mask))
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            list(
                pool.map(
                    lambda j: io.write_downscaled(j[0], j[1], factor, cams.width, cams.height, mask=j[2]),
                    jobs,
                )
            )
        for npz in npz_files:
            arrays = rescale_npz_arrays(dtu.read_npz(npz), factor)
            with open(tmp / npz.name, "wb") as f:
                np.savez(f, **arrays)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + message; one line is the contract
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(
        prog="python -m datasets.downscale", description="Write a downscaled copy of a DTU-layout scene."
    )
    parser.add_argument("src", type=Path, help="source scene folder (cameras_sphere.npz, image/, mask/)")
    parser.add_argument("dst", type=Path, help="new folder to create")
    parser.add_argument("--factor", type=int, default=2, help="integer downscale factor (default 2)")
    parser.add_argument("--cameras-file", default=None, help="npz to use instead of cameras_sphere.npz")
    args = parser.parse_args(argv)
    try:
        dst = downscale_scene(args.src, args.dst, args.factor, args.cameras_file)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cams = load_cameras(dst, format="dtu", cameras_file=args.cameras_file)
    print(f"wrote {dst}: {cams.n_views} views at {cams.width}x{cams.height} (factor {args.factor})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
