"""Image files in and out of the stack, and the checks that turn bad files into clear errors.

Inside the stack images are float NCHW in [-1, 1]; at the edges (files, CLI, API) they are
uint8 or uint16 HWC RGB, with any alpha plane carried separately (the model only sees RGB).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import atomic_file
from .errors import FlowsrError

ORIENTATION = 0x0112  # EXIF tag
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")  # what folders are searched for
NO_IMAGES = f"no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)})"

# EXIF orientation -> the array operation that displays the image upright (as PIL.ImageOps.exif_transpose).
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
_MAX_SIDE = {"JPEG": 65500, "WEBP": 16383}  # beyond these the encoders fail with cryptic messages

# Exceptions that decoders raise on malformed data (Pillow's plugins raise all of these).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, cv2.error)


class ImageError(FlowsrError):
    """An image file that cannot be read or written; the one-line message omits the path, which callers prefix."""


@dataclass
class Picture:
    """An image at the edge of the stack: HWC RGB uint8/uint16 plus an optional alpha plane of the same dtype."""

    rgb: np.ndarray
    alpha: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"rgb must be (H, W, 3) uint8 or uint16, got {self.rgb.shape} {self.rgb.dtype}")
        if self.alpha is not None and (self.alpha.shape != self.rgb.shape[:2] or self.alpha.dtype != self.rgb.dtype):
            expected = f"{self.rgb.shape[:2]} {self.rgb.dtype}"
            raise ValueError(f"alpha must be {expected}, got {self.alpha.shape} {self.alpha.dtype}")

    @property
    def bit_depth(self) -> int:
        return 16 if self.rgb.dtype == np.uint16 else 8


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> Picture:
    """Decode any image Pillow can open to an upright Picture, or raise ImageError saying what is wrong.

    max_pixels is checked from the header, before any pixel data is decoded.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            _check_size(im.size, max_pixels)
            if im.format == "PNG":
                _check_png(path)
            if _is_16bit_colour(im, path):
                # OpenCV's TIFF decoder applies tag 274 itself; its PNG decoder ignores EXIF under IMREAD_UNCHANGED.
                orientation = im.getexif().get(ORIENTATION, 1) if im.format == "PNG" else 1
                return _decode_with_opencv(path, orientation)
            im.load()  # decode now, so truncated data fails here (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
            return from_pil(ImageOps.exif_transpose(im))
    except ImageError:
        raise
    except FileNotFoundError as e:
        raise ImageError("file not found") from e
    except IsADirectoryError as e:
        raise ImageError("is a directory, not an image file") from e
    except PermissionError as e:
        raise ImageError("cannot read file: permission denied") from e
    except UnidentifiedImageError as e:
        if path.is_file() and path.stat().st_size == 0:
            raise ImageError("file is empty (0 bytes)") from e
        raise ImageError("not an image file (cannot identify format)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("image is over Pillow's decompression-bomb limit; downscale it") from e
    except _DECODE_ERRORS as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise ImageError(f"truncated or corrupt image data: {reason}") from e


def _check_size(size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} ({width * height / 1e6:.1f} MP), over the {max_pixels / 1e6:g} MP limit; "
            "raise --max-megapixels or downscale it"
        )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel by colour type
# x0, y0, dx, dy
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _check_png(path: Path) -> None:
    """Refuse what decoders would silently accept or over-allocate for: chunks that run past the end of the file
    (a header bomb for some decoders), a palette image without its palette, and image data with fewer rows than
    the header declares (Pillow fills them with black). The data is inflated in bounded pieces and counted."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(8) != _PNG_SIGNATURE:
            raise ImageError("truncated or corrupt image data: not a PNG signature")
        header, types, inflater, inflated = None, set(), zlib.decompressobj(), 0
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise ImageError("truncated or corrupt image data: the PNG ends before its IEND chunk")
            length, kind = struct.unpack(">I4s", head)
            if length > size - f.tell() - 4:
                raise ImageError(
                    f"truncated or corrupt image data: a PNG {kind.decode('latin-1')!r} chunk declares {length} "
                    "bytes, past the end of the file"
                )
            if kind == b"IHDR":
                header = f.read(length)
            elif kind == b"IDAT":
                data = f.read(length)
                try:
                    while data and not inflater.eof:
                        inflated += len(inflater.decompress(data, 1 << 20))
                        data = inflater.unconsumed_tail
                except zlib.error as err:
                    raise ImageError(f"truncated or corrupt image data: {err}") from None
            else:
                f.seek(length, os.SEEK_CUR)
            f.seek(4, os.SEEK_CUR)  # CRC
            types.add(kind)
            if kind == b"IEND":
                break
    try:
        inflated += len(inflater.flush())  # output held back by the last bounded call (a few hundred bytes)
    except zlib.error as err:
        raise ImageError(f"truncated or corrupt image data: {err}") from None
    if header is None or len(header) != 13:
        raise ImageError("truncated or corrupt image data: no valid PNG IHDR chunk")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if colour == 3 and b"PLTE" not in types:
        raise ImageError("corrupt PNG: a palette image without its palette (no PLTE chunk)")
    expected = _png_data_size(width, height, depth * _PNG_SAMPLES.get(colour, 1), interlace)
    if inflated < expected:
        raise ImageError(
            f"truncated or corrupt image data: {inflated} of the {expected} bytes of PNG rows (rows are missing)"
        )


def _png_data_size(width: int, height: int, bits_per_pixel: int, interlace: int) -> int:
    """Bytes of filtered scanlines (one filter byte per row) that a complete image holds."""
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            total += rows * (1 + -(-columns * bits_per_pixel // 8))
    return total


def _is_16bit_colour(im: Image.Image, path: Path) -> bool:
    """True for the 16-bit files Pillow would silently truncate to 8 bit (16-bit gray it reads fine)."""
    if im.format == "PNG":
        with open(path, "rb") as f:
            header = f.read(26)  # signature, IHDR length and type, width, height, bit depth, colour type
        return header[24] == 16 and header[25] != 0
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, ())
        return len(bits) > 1 and 16 in bits
    return False


def _decode_with_opencv(path: Path, orientation: int) -> Picture:
    """OpenCV keeps 16-bit colour (and alpha); the EXIF orientation it did not apply is applied here."""
    array = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageError("truncated or corrupt image data: OpenCV could not decode it")
    array = _UPRIGHT.get(orientation, lambda a: a)(array)
    if array.ndim == 2:
        return Picture(gray_to_rgb(array))
    rgb = np.ascontiguousarray(array[..., 2::-1])  # BGR(A) -> RGB
    return Picture(rgb, np.ascontiguousarray(array[..., 3]) if array.shape[2] == 4 else None)


def from_pil(im: Image.Image) -> Picture:
    """An in-memory Pillow image (any mode) as a Picture: RGB, alpha kept, 16-bit gray kept."""
    if im.mode.startswith("I"):  # 16-bit (I;16*) or 32-bit integer gray
        return Picture(gray_to_rgb(np.clip(np.asarray(im), 0, 65535).astype(np.uint16)))
    if im.has_transparency_data:  # alpha band, palette alpha or a tRNS colour
        rgba = np.asarray(im.convert("RGBA"))
        return Picture(np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]))
    return Picture(np.array(im.convert("RGB")))


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(gray[..., None], (*gray.shape, 3)))


def _scale(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    raise ValueError(f"expected uint8 or uint16 pixels, got {dtype}")


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder`, recursively and sorted, hidden files skipped (an empty list if none)."""
    return sorted(
        p
        for p in Path(folder).rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def to_unit_float(array: np.ndarray) -> np.ndarray:
    """uint8/uint16 pixels -> float32 in [0, 1]."""
    return np.ascontiguousarray(array, dtype=np.float32) / _scale(array.dtype)


ROW_BAND = 512  # rows converted at a time: a photo's pixels are converted without full-size temporaries


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """HWC uint8/uint16 RGB -> float32 (1, 3, H, W) in [-1, 1]."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) RGB, got shape {rgb.shape}")
    out = torch.empty(1, 3, *rgb.shape[:2])
    factor = 2.0 / _scale(rgb.dtype)
    for top in range(0, rgb.shape[0], ROW_BAND):
        band = torch.from_numpy(np.ascontiguousarray(rgb[top : top + ROW_BAND].transpose(2, 0, 1), dtype=np.float32))
        out[0, :, top : top + ROW_BAND] = band.mul_(factor).sub_(1.0)
    return out


def from_tensor(x: torch.Tensor, bit_depth: int = 8) -> np.ndarray:
    """Float (3, H, W) or (1, 3, H, W) in [-1, 1] -> HWC uint8/uint16, clamped and rounded to nearest."""
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) or (1, 3, H, W) tensor, got shape {tuple(x.shape)}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    out = np.empty((x.shape[1], x.shape[2], 3), dtype=dtype)
    for top in range(0, x.shape[1], ROW_BAND):
        band = x[:, top : top + ROW_BAND].detach().float().clamp(-1, 1)  # a copy: the in-place steps spare `x`
        band.add_(1).mul_(_scale(dtype) / 2).round_()
        out[top : top + ROW_BAND] = band.permute(1, 2, 0).cpu().numpy()
    return out


def resize_alpha(alpha: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of an alpha plane (to follow the RGB through super-resolution), same dtype, clamped.

    Antialiased, so it matches Pillow's BICUBIC both up and down.
    """
    if alpha.ndim != 2:
        raise ValueError(f"expected an (H, W) alpha plane, got shape {alpha.shape}")
    x = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None, None]
    y = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return y[0, 0].clamp(0, _scale(alpha.dtype)).round().numpy().astype(alpha.dtype)


def write_image(path: str | os.PathLike, picture: Picture) -> None:
    """Encode by suffix and write atomically: the target is either untouched or complete, never half-written.

    Creates missing parent folders; file-system failures (disk full, read-only folder) become ImageError.
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"unsupported output format '{path.suffix}'; use .png, .jpg, .webp or .tif")
    height, width = picture.rgb.shape[:2]
    limit = _MAX_SIDE.get(fmt)
    if limit is not None and max(height, width) > limit:
        raise ImageError(
            f"image is {width}x{height}, over the {fmt} limit of {limit} pixels a side; write .png or .tif"
        )
    try:
        with atomic_file(path) as f:
            _encode(picture, fmt, f)
    except OSError as e:
        raise ImageError(f"cannot write file: {e.strerror or e}") from e


def _encode(picture: Picture, fmt: str, f: BinaryIO) -> None:
    """16-bit PNG and all TIFF through OpenCV (Pillow cannot write 16-bit colour); the rest through Pillow in 8 bit."""
    if fmt == "TIFF" or (fmt == "PNG" and picture.bit_depth == 16):
        bgr = picture.rgb[..., ::-1]
        if picture.alpha is not None:
            bgr = np.dstack([bgr, picture.alpha])
        ok, encoded = cv2.imencode(f".{fmt.lower()}", np.ascontiguousarray(bgr))
        if not ok:
            raise ImageError(f"OpenCV could not encode the image as {fmt}")
        f.write(encoded.tobytes())
        return
    rgb = to_8bit(picture.rgb)
    if fmt == "JPEG":  # JPEG has no alpha: it is dropped
        Image.fromarray(rgb).save(f, "JPEG", quality=95, subsampling=0)  # 4:4:4: keep restored chroma detail
        return
    pixels = rgb if picture.alpha is None else np.dstack([rgb, to_8bit(picture.alpha)])
    # WebP: lossless, and exact=True keeps the RGB under fully transparent pixels instead of discarding it.
    Image.fromarray(pixels).save(f, fmt, **({"lossless": True, "exact": True} if fmt == "WEBP" else {}))


def to_8bit(a: np.ndarray) -> np.ndarray:
    """Round 16-bit levels to the nearest 8-bit level (x / 257), for formats that only hold 8 bit."""
    if a.dtype == np.uint8:
        return a
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
