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
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from datasets.photo_sources import VIDEO_SUFFIXES, list_photos

from ..errors import InputError

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
_EXIF_ORIENTATION = 0x0112


@dataclass
class WorkingImage:
    """One image written for solving."""

    name: str  # file name in the working folder (and later in DATA_DIR/images)
    source: str  # the photo's file name, or "frame N" of the video
    width: int
    height: int
    focal_prior_px: float | None = None  # from EXIF (35 mm equivalent), in working-image pixels
    turns: int = 0  # quarter turns counter-clockwise given to the upright photo (1 or 3: the other orientation)


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


def texture_std(grey: np.ndarray) -> float:
    """Grey-level standard deviation of an (H, W) uint8 image after a 2x2 box blur (sensor noise removed)."""
    h, w = grey.shape[0] // 2 * 2, grey.shape[1] // 2 * 2
    blurred = grey[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3), dtype=np.float32)
    return float(blurred.std())


def grey_of(rgb: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey (ITU-R 601 luma, Pillow's) of an (H, W, 3) uint8 image: no float copy of the image."""
    return np.asarray(Image.fromarray(rgb).convert("L"))


def sharpness(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of an (H, W) uint8 grey image: higher is sharper."""
    g = grey.astype(np.int16)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(lap.var(dtype=np.float64))


def thumbnail(grey: np.ndarray, size: int = 64) -> np.ndarray:
    """(size, size) float grey thumbnail of an (H, W) uint8 grey image, for near-duplicate checks."""
    return np.asarray(Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


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


def _upright_size(photo: Path) -> tuple[int, int] | None:
    """(width, height) of ``photo`` as shown (its EXIF orientation applied), from its header alone; None when
    unreadable (decoding it later names the problem)."""
    try:
        with Image.open(photo) as img:
            if img.format == "PNG":  # Pillow's getexif decodes a whole PNG (its EXIF may follow the pixels)
                exif = Image.Exif()
                if img.info.get("exif"):
                    exif.load(img.info["exif"])
            else:
                exif = img.getexif()
            quarter = exif.get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
            return (img.height, img.width) if quarter else img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def _landscape_majority(photos: list[Path]) -> bool:
    """Whether the set is mostly landscape (ties and square photos count as landscape)."""
    sizes = [size for size in map(_upright_size, photos) if size is not None]
    return sum(w < h for w, h in sizes) * 2 <= len(sizes)


def _quarter_turn(raw: Image.Image) -> Image.Transpose:
    """The quarter turn that brings an upright photo of the other orientation into the set's: back to how the
    sensor stored it when its EXIF orientation turned it (so a phone's portrait and landscape photos share one
    sensor frame, principal point included), else counter-clockwise."""
    orientation = raw.getexif().get(_EXIF_ORIENTATION, 1)
    return Image.Transpose.ROTATE_270 if orientation == 8 else Image.Transpose.ROTATE_90


def _decode_working(photo: Path, landscape: bool) -> tuple[Image.Image, float | None, int, bool]:
    """``(working RGB image, focal prior px, quarter turns counter-clockwise, kept as is)`` of one photo.

    JPEGs are decoded at a reduced scale when that still covers the working size (libjpeg's DCT scaling, via
    ``Image.draft``): a 12 MP photo decodes at 3 MP, 4x less time and memory. ``kept as is``: the file already is
    the working image (an upright RGB PNG no larger than the working size), so it can be copied, not re-encoded.
    """
    with Image.open(photo) as raw:
        scale = WORKING_SIZE / max(raw.size)
        if scale < 1.0:
            raw.draft("RGB", (max(1, round(raw.width * scale)), max(1, round(raw.height * scale))))
        raw.load()  # decodes everything: a truncated file fails here, not inside COLMAP
        upright = ImageOps.exif_transpose(raw)
        turns = 0
        if (upright.width >= upright.height) != landscape and upright.width != upright.height:
            transpose = _quarter_turn(raw)
            upright = upright.transpose(transpose)
            turns = 1 if transpose == Image.Transpose.ROTATE_90 else 3
        working = _fit_working_size(upright.convert("RGB"))
        kept = (working.size == raw.size and raw.mode == "RGB" and turns == 0 and raw.format == "PNG"
                and raw.getexif().get(_EXIF_ORIENTATION, 1) == 1)
        return working, _focal_prior(raw, working.width, working.height), turns, kept


def prepare_photos(folder: Path, out_dir: Path, progress: Callable[[int, int], None]) -> PreparedSource:
    """Decodes, checks and writes every photo of ``folder`` to ``out_dir``; raises InputError on bad input.

    Photos of the set's minority orientation (a portrait among landscapes, as phones mix them) are turned by a
    quarter (an exact pixel permutation; the solved camera is rolled with it), never resampled into the other
    frame, so every camera keeps square pixels; ``WorkingImage.turns`` records it.
    """
    photos = list_photos(folder)
    if len(photos) < MIN_PHOTOS:
        found = ", ".join(p.name for p in photos) or "none"
        count = f"{len(photos)} photo{'' if len(photos) == 1 else 's'}"
        raise InputError(f"{folder}: {count} found ({found}); camera solving needs at least "
                         f"{MIN_PHOTOS} overlapping photos (JPEG, PNG or TIFF)")
    landscape = _landscape_majority(photos)
    images, left_out, digests, taken = [], [], {}, set()
    for k, photo in enumerate(photos):
        try:
            working, focal, turns, kept = _decode_working(photo, landscape)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            reason = "truncated" if "truncated" in str(exc).lower() else "unreadable"
            raise InputError(f"{photo}: {reason} image file ({str(exc).splitlines()[0] if str(exc) else exc})") \
                from exc
        digest = hashlib.sha1(working.tobytes()).hexdigest()
        if digest in digests:
            left_out.append({"name": photo.name, "reason": f"same picture as {digests[digest]}"})
        elif texture_std(np.asarray(working.convert("L"))) < FLAT_STD:
            left_out.append({"name": photo.name, "reason": "flat image (no texture to match)"})
        else:
            digests[digest] = photo.name
            name = _working_name(photo, taken)
            if kept and Path(name).suffix.lower() == ".png":
                shutil.copyfile(photo, out_dir / name)
            else:
                _save_working(working, out_dir / name)
            images.append(WorkingImage(name, photo.name, working.width, working.height, focal, turns))
        del working
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
        grey = grey_of(rgb)
        thumb = thumbnail(grey)
        if texture_std(grey) < FLAT_STD:
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
            score = sharpness(grey_of(rgb[::2, ::2]))
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
