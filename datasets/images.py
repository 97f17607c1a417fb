"""Pixel loading with Pillow, imported lazily by ``scene.py`` and ``downscale.py`` (Blender has no Pillow).

Images with an alpha channel are composited over white (the NeRF-synthetic convention) at full resolution,
then box-filtered; masks come from the alpha channel when there is one (and it is not opaque everywhere, in a
separate mask file), else from the grey level, are box-filtered, and thresholded at half range (some masks are
anti-aliased). Downscaling by ``s`` box-filters the top-left ``(w * s) x (h * s)`` region into ``w x h`` pixels
(see ``datasets.cameras``), so ``K`` stays exact: integer ``s`` averages ``s x s`` blocks, fractional ``s``
weights source pixels by their exact overlap.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.errors import DatasetError

_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")


def _open(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise DatasetError(path, "image file not found") from None
    except _DECODE_ERRORS as exc:
        raise DatasetError(path, f"cannot decode image: {exc}") from None
    return im


def _check_size(path: Path, im: Image.Image, factor: float, width: int, height: int) -> None:
    need_w, need_h = width * factor, height * factor
    if im.width < need_w - 1e-6 or im.height < need_h - 1e-6 or (factor == 1 and im.size != (width, height)):
        raise DatasetError(path, f"image is {im.width}x{im.height}, expected {round(need_w)}x{round(need_h)}")


def _reduce(im: Image.Image, s: int, width: int, height: int) -> Image.Image:
    """Integer box filter (exact ``s x s`` block means) of the top-left ``width*s x height*s`` region."""
    if s == 1:
        return im
    if im.size != (width * s, height * s):
        im = im.crop((0, 0, width * s, height * s))
    return im.reduce(s)


def _area_resize_axis(arr: np.ndarray, factor: float, n_out: int, axis: int) -> np.ndarray:
    """Exact area average along ``axis``: output pixel i covers source edges [i * factor, (i + 1) * factor]."""
    arr = np.moveaxis(arr, axis, 0)
    n_in = arr.shape[0]
    csum = np.concatenate([np.zeros((1,) + arr.shape[1:]), np.cumsum(arr, axis=0, dtype=np.float64)])
    edges = np.minimum(np.arange(n_out + 1) * factor, n_in)
    k = np.minimum(np.floor(edges).astype(np.int64), n_in - 1)
    frac = (edges - k).reshape((-1,) + (1,) * (arr.ndim - 1))
    integral = csum[k] + frac * arr[k]  # pixels are constant, so the integral is linear inside each one
    return np.moveaxis(np.diff(integral, axis=0) / factor, 0, axis)


def _downscale(path: Path, im: Image.Image, factor: float, width: int, height: int) -> np.ndarray:
    """``im`` box-filtered to (height, width[, C]), values 0..255: uint8 for integer factors (PIL's exact block
    means), float32 for fractional ones (exact area weights, which PIL's BOX resize does not give)."""
    _check_size(path, im, factor, width, height)
    if float(factor).is_integer():
        return np.asarray(_reduce(im, int(factor), width, height), dtype=np.uint8)
    arr = np.asarray(im, dtype=np.float32)
    arr = _area_resize_axis(arr, factor, height, 0)
    return _area_resize_axis(arr, factor, width, 1).astype(np.float32)


def _has_alpha(im: Image.Image) -> bool:
    return "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info)


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit grey -> 8-bit grey ("L", rounded); other modes unchanged."""
    if im.mode not in _SIXTEEN_BIT:
        return im
    grey = np.asarray(im, dtype=np.float32) / 65535.0
    return Image.fromarray(np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def _mask_channel(im: Image.Image, own_alpha: bool = False) -> Image.Image:
    """The mask of an image as 8-bit grey ("L"): its alpha channel when it has one, else its grey level.

    A mask file whose alpha is opaque everywhere (a black-and-white mask saved as RGBA by an image editor) is read
    from its grey level, unless ``own_alpha``: an RGBA photo that is its own mask (NeRF-synthetic) has only alpha.
    """
    im = _to_8bit(im)
    if _has_alpha(im):
        alpha = im.convert("RGBA").getchannel("A")
        if own_alpha or alpha.getextrema()[0] < 255:
            return alpha
        im = im.convert("RGB")
    return im if im.mode == "L" else im.convert("L")


def read_image(path: Path, factor: float, width: int, height: int, out: np.ndarray | None = None) -> np.ndarray:
    """Reads one image as (height, width, 3) uint8, into ``out`` when given (fractional factors round to nearest).

    Pixels stay uint8 from here to the sampled rays (1 byte per channel, 3 per pixel): the engine converts only
    what it samples or compares.

    Raises:
        DatasetError: unreadable / corrupt file, or a size that does not match.
    """
    im = _to_8bit(_open(path))
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
    elif im.mode != "RGB":
        im = im.convert("RGB")
    return _as_uint8(_downscale(path, im, factor, width, height), (height, width, 3), out)


def _as_uint8(arr: np.ndarray, shape: tuple[int, ...], out: np.ndarray | None) -> np.ndarray:
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    if arr.dtype == np.uint8:
        out[...] = arr
    else:  # exact area average of a fractional factor: round to the nearest level
        np.rint(arr, out=out, casting="unsafe")
    return out


def read_mask(path: Path, factor: float, width: int, height: int, out: np.ndarray | None = None,
              own_alpha: bool = False) -> np.ndarray:
    """One mask as (height, width) bool (foreground), into ``out`` if given (alpha if any, else grey; see
    ``_mask_channel`` for ``own_alpha``)."""
    arr = _downscale(path, _mask_channel(_open(path), own_alpha), factor, width, height)
    if out is None:
        out = np.empty((height, width), dtype=bool)
    np.greater(arr, 127.5, out=out)  # half range: 128..255 is foreground
    return out


def mask_is_foreground(values: np.ndarray) -> np.ndarray:
    """The foreground test of mask samples, as :func:`read_mask` applies it: (M,) or (M, C) values (bool, uint8
    0..255 or float 0..1; with channels, any channel counts) -> (M,) bool. Used where masks are sampled at
    projected points (visual-hull cleaning)."""
    values = np.asarray(values)
    if values.ndim > 1:
        values = values.max(axis=-1)
    if values.dtype == np.bool_:
        return values
    return values > (127 if values.dtype == np.uint8 else 0.5)


def write_downscaled(src: Path, dst: Path, factor: int, width: int, height: int, mask: bool = False) -> None:
    """Writes a box-filtered ``width x height`` copy of ``src`` to ``dst`` (same file type, same colour mode).

    Masks become 8-bit grey (their alpha channel when they have one), box-filtered but not thresholded, so the
    anti-aliasing survives and ``read_mask`` thresholds them as it would the original.
    """
    im = _open(src)
    if mask:
        im = _mask_channel(im)
    elif im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGBA" if _has_alpha(im) else "RGB")
    _check_size(src, im, factor, width, height)
    im = _reduce(im, factor, width, height)
    if dst.suffix.lower() in (".jpg", ".jpeg"):
        im.convert("RGB").save(dst, format="JPEG", quality=95)
    else:
        im.save(dst, format="PNG")
