"""Image sizes from PNG / JPEG headers, stdlib only (camera loading must not need Pillow)."""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from datasets.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8 and CC are not frames.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: size in pixels and whether there is an alpha channel."""

    width: int
    height: int
    has_alpha: bool


def natural_key(name: str) -> list:
    """Sort key that orders ``img2.png`` before ``img10.png`` (and zero-padded names as usual)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_images(folder: Path) -> list[Path]:
    """PNG / JPEG files of ``folder`` (not recursive) in natural sort order; other files are ignored, and so are
    hidden ones: macOS leaves ``._name.png`` metadata files beside each image on non-Apple disks and in zips."""
    files = [
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def read_image_info(path: Path) -> ImageInfo:
    """Reads the size of a PNG or JPEG file from its header.

    A PNG must also end with its IEND chunk, which catches truncated downloads without decoding anything.

    Raises:
        DatasetError: missing, unreadable, truncated or not a PNG / JPEG file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if head == _PNG_SIGNATURE:
                return _png_info(path, f)
            if head[:2] == b"\xff\xd8":
                f.seek(2)
                return _jpeg_info(path, f)
    except FileNotFoundError:
        raise DatasetError(path, "image file not found") from None
    except OSError as exc:
        raise DatasetError(path, f"cannot read image file: {exc.strerror or exc}") from None
    if not head:
        raise DatasetError(path, "image file is empty")
    raise DatasetError(path, "not a PNG or JPEG file (bad signature)")


def _png_info(path: Path, f) -> ImageInfo:
    ihdr = f.read(25)
    if len(ihdr) < 25 or ihdr[4:8] != b"IHDR":
        raise DatasetError(path, "corrupt PNG: missing IHDR header")
    if zlib.crc32(ihdr[4:21]) != struct.unpack(">I", ihdr[21:25])[0]:
        raise DatasetError(path, "corrupt PNG: IHDR checksum mismatch")
    width, height, _depth, color_type = struct.unpack(">IIBB", ihdr[8:18])
    if width == 0 or height == 0:
        raise DatasetError(path, "corrupt PNG: zero image size")
    has_alpha = color_type in (4, 6)
    # Palette / grey images carry transparency in a tRNS chunk before the image data: walk the chunk headers.
    while not has_alpha:
        header = f.read(8)
        if len(header) < 8:
            raise DatasetError(path, "corrupt PNG: truncated before the image data")
        length, kind = struct.unpack(">I4s", header)
        if kind in (b"IDAT", b"IEND"):
            break
        has_alpha = kind == b"tRNS"
        f.seek(length + 4, 1)
    f.seek(0, 2)
    if f.tell() < 12 + 33:
        raise DatasetError(path, "corrupt PNG: truncated file")
    f.seek(-12, 2)
    if f.read(12) != _PNG_IEND:
        raise DatasetError(path, "corrupt PNG: truncated file (no IEND chunk at the end)")
    return ImageInfo(int(width), int(height), has_alpha)


def _jpeg_info(path: Path, f) -> ImageInfo:
    while True:
        byte = f.read(1)
        if not byte:
            raise DatasetError(path, "corrupt JPEG: no frame header found")
        if byte != b"\xff":
            raise DatasetError(path, "corrupt JPEG: bad marker")
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            raise DatasetError(path, "corrupt JPEG: truncated file")
        code = marker[0]
        if code == 0xD9 or code == 0xDA:
            raise DatasetError(path, "corrupt JPEG: no frame header before the image data")
        if 0xD0 <= code <= 0xD7 or code == 0x01:
            continue  # markers without a length field
        raw = f.read(2)
        if len(raw) < 2:
            raise DatasetError(path, "corrupt JPEG: truncated file")
        length = struct.unpack(">H", raw)[0]
        if code in _JPEG_SOF:
            data = f.read(6)
            if len(data) < 6:
                raise DatasetError(path, "corrupt JPEG: truncated frame header")
            _precision, height, width, _components = struct.unpack(">BHHB", data)
            if width == 0 or height == 0:
                raise DatasetError(path, "corrupt JPEG: zero image size")
            return ImageInfo(int(width), int(height), False)  # JPEG has no alpha
        f.seek(length - 2, 1)
