"""What ``solve`` starts from: a folder of photos or a video, turned into a folder of working images.

Photos: JPEG / PNG / TIFF at the top of the folder, any sizes. Each is decoded in full (a truncated file is
caught here, naming it), turned upright by its EXIF orientation, converted to RGB and downscaled to at most
``WORKING_SIZE`` pixels on the long side; the EXIF focal length (35 mm equivalent) becomes a focal prior in
pixels. Video: frames decoded by imageio-ffmpeg, turned as a player shows them (a phone's rotation metadata, its
display matrix, is applied by ffmpeg's default autorotation, and imageio-ffmpeg reports the turned size); in each
window of ``video_fps / fps`` frames the sharpest (variance of a Laplacian) is kept, and a frame almost identical
to the previous kept one is dropped (a phone standing still).

Checked before any camera solving: at least 3 photos, every file readable, not all copies of one picture,
enough texture (flat photos are left out with a reason; too few textured photos is an error).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mts")
WORKING_SIZE = 1600  # long side of the images the dataset keeps: enough for training, light on a laptop
MIN_PHOTOS = 3
# A photo whose grey values vary less than this (std on a 0-255 scale, after a light blur) has nothing SIFT can
# grip: a flat wall, a lens cap, a grey test card.
FLAT_STD = 2.0
# Two consecutive video frames closer than this (mean absolute grey difference on a 64-pixel thumbnail, 0-255)
# add no viewpoint: the second is dropped.
NEAR_DUPLICATE = 1.5
_EXIF_FOCAL_35MM = 0xA405
_EXIF_IFD = 0x8769


@dataclass
class WorkingImage:
    """One image written for solving."""

    name: str  # file name in the working folder (and later in DATA_DIR/images)
    source: str  # the photo's file name, or "frame N" of the video
    width: int
    height: int
    focal_prior_px: float | None = None  # from EXIF (35 mm equivalent), in working-image pixels


@dataclass
class PreparedSource:
    kind: str  # "photos" or "video"
    given: int  # photos in the folder, or frames kept from the video before checks
    images: list[WorkingImage]
    left_out: list[dict] = field(default_factory=list)  # {"name", "reason"} of inputs not used


def source_kind(source: Path) -> str:
    """``photos`` (a folder) or ``video`` (a file with a video suffix); anything else is bad input."""
    if source.is_dir():
        return "photos"
    if source.is_file():
        if source.suffix.lower() in VIDEO_SUFFIXES:
            return "video"
        raise InputError(f"{source}: not a folder of photos or a video ({', '.join(VIDEO_SUFFIXES)})")
    raise InputError(f"{source}: no such folder or video")


def list_photos(folder: Path) -> list[Path]:
    """Photos at the top of ``folder`` (hidden files skipped), in name order."""
    from datasets.imageinfo import natural_key

    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def _focal_prior(img: Image.Image, width: int, height: int) -> float | None:
    """Focal length in pixels of the upright, resized image from the EXIF 35 mm-equivalent focal, if present."""
    try:
        exif = img.getexif()
        f35 = exif.get_ifd(_EXIF_IFD).get(_EXIF_FOCAL_35MM) or exif.get(_EXIF_FOCAL_35MM)
    except Exception:  # malformed EXIF is common and never fatal: no prior then
        return None
    try:
        f35 = float(f35)
    except (TypeError, ValueError):
        return None
    if not 5.0 < f35 < 2000.0:
        return None
    # 35 mm film is 36 mm wide: the equivalent focal relates to the long side of the frame.
    return f35 / 36.0 * max(width, height)


def _fit_working_size(img: Image.Image) -> Image.Image:
    scale = WORKING_SIZE / max(img.size)
    if scale >= 1.0:
        return img
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


def texture_std(rgb: np.ndarray) -> float:
    """Grey-level standard deviation of an (H, W, 3) uint8 image after a 2x2 box blur (sensor noise removed)."""
    grey = rgb.astype(np.float32).mean(axis=2)
    h, w = grey.shape[0] // 2 * 2, grey.shape[1] // 2 * 2
    blurred = grey[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return float(blurred.std())


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image (H, W, 3) uint8: higher is sharper."""
    g = rgb.astype(np.float32).mean(axis=2)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(lap.var())


def thumbnail(rgb: np.ndarray, size: int = 64) -> np.ndarray:
    """(size, size) float grey thumbnail for near-duplicate checks."""
    return np.asarray(Image.fromarray(rgb).convert("L").resize((size, size), Image.Resampling.BILINEAR),
                      dtype=np.float32)


def _save_working(img: Image.Image, path: Path) -> None:
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=95)
    else:
        img.save(path, compress_level=1)  # working copies: fast to write, the dataset is re-read anyway


def _working_name(photo: Path, taken: set[str]) -> str:
    """Photos keep their names (so messages and Blender show them); TIFFs become PNG."""
    name = photo.name if photo.suffix.lower() in (".jpg", ".jpeg", ".png") else f"{photo.stem}.png"
    stem, suffix, n = Path(name).stem, Path(name).suffix, 1
    while name.lower() in taken:
        name, n = f"{stem}_{n}{suffix}", n + 1
    taken.add(name.lower())
    return name


def prepare_photos(folder: Path, out_dir: Path, progress: Callable[[int, int], None]) -> PreparedSource:
    """Decodes, checks and writes every photo of ``folder`` to ``out_dir``; raises InputError on bad input."""
    photos = list_photos(folder)
    if len(photos) < MIN_PHOTOS:
        found = ", ".join(p.name for p in photos) or "none"
        count = f"{len(photos)} photo{'' if len(photos) == 1 else 's'}"
        raise InputError(f"{folder}: {count} found ({found}); camera solving needs at least "
                         f"{MIN_PHOTOS} overlapping photos (JPEG, PNG or TIFF)")
    images, left_out, digests, taken = [], [], {}, set()
    for k, photo in enumerate(photos):
        try:
            with Image.open(photo) as raw:
                raw.load()  # decodes everything: a truncated file fails here, not inside COLMAP
                upright = ImageOps.exif_transpose(raw)
                rgb_img = upright.convert("RGB")
                focal_source = raw
                working = _fit_working_size(rgb_img)
                focal = _focal_prior(focal_source, working.width, working.height)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            reason = "truncated" if "truncated" in str(exc).lower() else "unreadable"
            raise InputError(f"{photo}: {reason} image file ({str(exc).splitlines()[0] if str(exc) else exc})") \
                from exc
        rgb = np.asarray(working)
        digest = hashlib.sha1(rgb.tobytes()).hexdigest()
        if digest in digests:
            left_out.append({"name": photo.name, "reason": f"same picture as {digests[digest]}"})
        elif texture_std(rgb) < FLAT_STD:
            left_out.append({"name": photo.name, "reason": "flat image (no texture to match)"})
        else:
            digests[digest] = photo.name
            name = _working_name(photo, taken)
            _save_working(working, out_dir / name)
            images.append(WorkingImage(name, photo.name, working.width, working.height, focal))
        progress(k + 1, len(photos))
    _check_enough(folder, len(photos), images, left_out)
    return PreparedSource("photos", len(photos), images, left_out)


def _check_enough(source: Path, given: int, images: list[WorkingImage], left_out: list[dict]) -> None:
    if len(images) >= MIN_PHOTOS:
        return
    reasons = {}
    for item in left_out:
        key = "copies of one picture" if item["reason"].startswith("same picture") else item["reason"]
        reasons.setdefault(key, []).append(item["name"])
    detail = "; ".join(f"{why}: {_names(names)}" for why, names in reasons.items())
    raise InputError(f"{source}: only {len(images)} of {given} photos are usable for camera solving ({detail}); "
                     "take photos of a textured object from several viewpoints")


def _names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def prepare_video(video: Path, out_dir: Path, fps: float, max_frames: int,
                  progress: Callable[[int, int], None]) -> PreparedSource:
    """Keeps the sharpest frame of each window of ``video`` (about ``fps`` per second, at most ``max_frames``)."""
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(video))
        meta = reader.__next__()
    except (OSError, RuntimeError, StopIteration) as exc:
        reader = None
        message = str(exc).strip().splitlines()
        raise InputError(f"{video}: not a readable video ({message[-1] if message else type(exc).__name__})") \
            from exc
    width, height = meta["size"]
    video_fps = float(meta.get("fps") or 30.0)
    n_frames = int(round(float(meta.get("duration") or 0.0) * video_fps)) or None
    window = max(1, round(video_fps / max(fps, 1e-3)))
    if n_frames:
        window = max(window, -(-n_frames // max_frames))
    total = n_frames or 0
    images, left_out = [], []
    best: tuple[float, int, np.ndarray] | None = None
    last_thumb = None

    def keep(candidate: tuple[float, int, np.ndarray]) -> None:
        nonlocal last_thumb
        _, index, rgb = candidate
        thumb = thumbnail(rgb)
        if texture_std(rgb) < FLAT_STD:
            left_out.append({"name": f"frame {index}", "reason": "flat image (no texture to match)"})
            return
        if last_thumb is not None and float(np.abs(thumb - last_thumb).mean()) < NEAR_DUPLICATE:
            left_out.append({"name": f"frame {index}", "reason": "near-duplicate of the previous frame"})
            return
        last_thumb = thumb
        name = f"frame_{index:06d}.png"
        img = _fit_working_size(Image.fromarray(rgb))
        img.save(out_dir / name, compress_level=1)
        images.append(WorkingImage(name, f"frame {index}", img.width, img.height))

    index = -1
    try:
        for index, raw in enumerate(reader):
            if len(raw) != width * height * 3:
                raise InputError(f"{video}: frame {index} has {len(raw)} bytes, expected {width}x{height} RGB")
            rgb = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
            score = sharpness(rgb[::2, ::2])
            if best is None or score > best[0]:
                best = (score, index, rgb.copy())
            if (index + 1) % window == 0:
                keep(best)
                best = None
                if len(images) >= max_frames:
                    break
            progress(index + 1, max(total, index + 1))
        if best is not None and len(images) < max_frames:
            keep(best)
    except RuntimeError as exc:
        raise InputError(f"{video}: video decoding failed at frame {index + 1} ({str(exc).splitlines()[0]})") \
            from exc
    finally:
        reader.close()
    if index < 0:
        raise InputError(f"{video}: the video holds no frames")
    _check_enough(video, len(images) + len(left_out), images, left_out)
    return PreparedSource("video", len(images) + len(left_out), images, left_out)
