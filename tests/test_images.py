"""flowsr.core.images against independent encoders and decoders: Pillow, OpenCV, tifffile and PNGs built by hand."""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from flowsr.core import images
from flowsr.core.images import ImageError, Picture, from_tensor, read_image, resize_alpha, to_tensor, write_image

tifffile = pytest.importorskip("tifffile")  # a scikit-image dependency: the independent 16-bit TIFF writer/reader

# Real photos, cropped non-square (160 x 240) so that a transposed result cannot pass for the right one.
RGB8 = np.ascontiguousarray(data.chelsea()[60:220, 100:340])
OTHER8 = np.ascontiguousarray(data.astronaut()[100:260, 150:390])
GRAY8 = np.ascontiguousarray(data.camera()[100:260, 50:290])
ALPHA8 = data.camera()[300:460, 200:440].copy()
ALPHA8[:40, :60] = 0  # a fully transparent block
# Every bit in use: one photo in the high byte, another in the low one, so truncation to 8 bit cannot pass.
RGB16 = (RGB8.astype(np.uint16) << 8) | OTHER8
GRAY16 = (GRAY8.astype(np.uint16) << 8) | OTHER8[..., 1]
ALPHA16 = (ALPHA8.astype(np.uint16) << 8) | GRAY8

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    return PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))


def raw_png16(pixels: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG encoded by hand (filter 0, one IDAT): an encoder independent of Pillow and OpenCV."""
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    return (
        png_header(pixels.shape[1], pixels.shape[0], 16, colour_type)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def header_only_png(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is garbage: decoding it would fail."""
    return png_header(width, height, bit_depth, colour_type) + png_chunk(b"IDAT", b"not zlib") + png_chunk(b"IEND", b"")


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[images.ORIENTATION] = orientation
    return exif.tobytes()


def with_exif_chunk(png: bytes, orientation: int, where: str) -> bytes:
    """Add an eXIf chunk after IHDR, or before IEND (where Pillow finds it only once the pixels are decoded)."""
    payload = exif_bytes(orientation)[len(b"Exif\0\0") :]  # the chunk holds the bare TIFF structure
    at = 8 + 25 if where == "after IHDR" else len(png) - 12
    return png[:at] + png_chunk(b"eXIf", payload) + png[at:]


def pillow_upright(rgb8: np.ndarray, orientation: int) -> np.ndarray:
    """Reference: what PIL.ImageOps.exif_transpose makes of an 8-bit PNG carrying this orientation."""
    buffer = io.BytesIO()
    Image.fromarray(rgb8).save(buffer, "PNG", exif=exif_bytes(orientation))
    return np.array(ImageOps.exif_transpose(Image.open(buffer)))


def upright16(orientation: int) -> np.ndarray:
    """RGB16 as exif_transpose would show it, built byte by byte from 8-bit references."""
    return (pillow_upright(RGB8, orientation).astype(np.uint16) << 8) | pillow_upright(OTHER8, orientation)


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def cv2_read(path) -> np.ndarray:
    """Independent decoder for what write_image put on disk, as RGB(A)."""
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA if array.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def only_files(directory) -> list[str]:
    return sorted(os.listdir(directory))


# --- reading and writing, format by format ---------------------------------------------------------------------


@pytest.mark.parametrize("with_alpha", [False, True])
def test_png_8bit_round_trip_is_exact(tmp_path, with_alpha):
    alpha = ALPHA8 if with_alpha else None
    write_image(tmp_path / "x.png", Picture(RGB8, alpha))
    expected = np.dstack([RGB8, ALPHA8]) if with_alpha else RGB8
    np.testing.assert_array_equal(cv2_read(tmp_path / "x.png"), expected)
    picture = read_image(tmp_path / "x.png")
    assert picture.bit_depth == 8
    np.testing.assert_array_equal(picture.rgb, RGB8)
    np.testing.assert_array_equal(picture.alpha, alpha)


@pytest.mark.parametrize("with_alpha", [False, True])
def test_png_16bit_round_trip_is_exact(tmp_path, with_alpha):
    alpha = ALPHA16 if with_alpha else None
    write_image(tmp_path / "x.png", Picture(RGB16, alpha))
    on_disk = cv2_read(tmp_path / "x.png")
    assert on_disk.dtype == np.uint16
    np.testing.assert_array_equal(on_disk, np.dstack([RGB16, ALPHA16]) if with_alpha else RGB16)
    picture = read_image(tmp_path / "x.png")
    assert picture.rgb.dtype == np.uint16 and picture.bit_depth == 16
    assert (picture.rgb > 255).any() and (picture.rgb % 256 != picture.rgb // 256).any()  # not 8-bit widened
    np.testing.assert_array_equal(picture.rgb, RGB16)
    np.testing.assert_array_equal(picture.alpha, alpha)


@pytest.mark.parametrize(
    ("colour_type", "pixels", "rgb", "alpha"),
    [
        (0, GRAY16, np.dstack([GRAY16] * 3), None),
        (2, RGB16, RGB16, None),
        (4, np.dstack([GRAY16, ALPHA16]), np.dstack([GRAY16] * 3), ALPHA16),
        (6, np.dstack([RGB16, ALPHA16]), RGB16, ALPHA16),
    ],
    ids=["gray", "rgb", "gray+alpha", "rgba"],
)
def test_hand_encoded_16bit_png_reads_exactly(tmp_path, colour_type, pixels, rgb, alpha):
    (tmp_path / "x.png").write_bytes(raw_png16(pixels, colour_type))
    picture = read_image(tmp_path / "x.png")
    assert picture.rgb.dtype == np.uint16
    np.testing.assert_array_equal(picture.rgb, rgb)
    np.testing.assert_array_equal(picture.alpha, alpha)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_gray_becomes_16bit_rgb(tmp_path, suffix):
    cv2.imwrite(str(tmp_path / f"g{suffix}"), GRAY16)
    picture = read_image(tmp_path / f"g{suffix}")
    assert picture.rgb.dtype == np.uint16 and picture.alpha is None
    np.testing.assert_array_equal(picture.rgb, np.dstack([GRAY16] * 3))


def test_8bit_gray_becomes_rgb(tmp_path):
    (tmp_path / "g.png").write_bytes(encode(GRAY8, "PNG"))
    picture = read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(picture.rgb, np.dstack([GRAY8] * 3))
    assert picture.alpha is None


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".JPG"])
def test_jpeg_round_trip_is_close_and_drops_alpha(tmp_path, suffix):
    write_image(tmp_path / f"x{suffix}", Picture(RGB8, ALPHA8))
    assert Image.open(tmp_path / f"x{suffix}").format == "JPEG"
    picture = read_image(tmp_path / f"x{suffix}")
    assert picture.alpha is None
    assert peak_signal_noise_ratio(RGB8, picture.rgb) > 38  # quality 95 on this photo: 39.4 dB


def test_16bit_to_jpeg_rounds_to_nearest_8bit_level(tmp_path):
    write_image(tmp_path / "x.jpg", Picture(RGB16))
    nearest = np.round(RGB16 / 257).astype(np.uint8)
    assert peak_signal_noise_ratio(nearest, read_image(tmp_path / "x.jpg").rgb) > 38


@pytest.mark.parametrize("with_alpha", [False, True])
def test_webp_is_lossless_and_exact(tmp_path, with_alpha):
    alpha = ALPHA8 if with_alpha else None
    write_image(tmp_path / "x.webp", Picture(RGB8, alpha))
    on_disk = Image.open(tmp_path / "x.webp")
    assert on_disk.format == "WEBP"
    expected = np.dstack([RGB8, ALPHA8]) if with_alpha else RGB8
    np.testing.assert_array_equal(np.array(on_disk.convert("RGBA" if with_alpha else "RGB")), expected)
    picture = read_image(tmp_path / "x.webp")
    np.testing.assert_array_equal(picture.rgb, RGB8)  # including the colour under fully transparent pixels
    np.testing.assert_array_equal(picture.alpha, alpha)


def test_16bit_to_webp_rounds_to_nearest_8bit_level(tmp_path):
    write_image(tmp_path / "x.webp", Picture(RGB16))
    np.testing.assert_array_equal(read_image(tmp_path / "x.webp").rgb, np.round(RGB16 / 257).astype(np.uint8))


@pytest.mark.parametrize("suffix", [".tif", ".tiff"])
@pytest.mark.parametrize(
    ("rgb", "alpha"),
    [(RGB16, None), (RGB16, ALPHA16), (RGB8, None), (RGB8, ALPHA8)],
    ids=["16", "16+alpha", "8", "8+alpha"],
)
def test_tiff_round_trip_is_exact(tmp_path, suffix, rgb, alpha):
    # read_image is pinned to tifffile's encoder below, so an exact round trip pins write_image too.
    write_image(tmp_path / f"x{suffix}", Picture(rgb, alpha))
    picture = read_image(tmp_path / f"x{suffix}")
    assert picture.rgb.dtype == rgb.dtype
    np.testing.assert_array_equal(picture.rgb, rgb)
    np.testing.assert_array_equal(picture.alpha, alpha)


@pytest.mark.parametrize("alpha", [None, ALPHA16], ids=["rgb", "rgba"])
def test_tiff_16bit_from_tifffile_reads_exactly(tmp_path, alpha):
    pixels, extra = (RGB16, None) if alpha is None else (np.dstack([RGB16, alpha]), ["unassalpha"])
    tifffile.imwrite(tmp_path / "x.tif", pixels, photometric="rgb", extrasamples=extra, compression="zlib")
    picture = read_image(tmp_path / "x.tif")
    np.testing.assert_array_equal(picture.rgb, RGB16)
    np.testing.assert_array_equal(picture.alpha, alpha)


def test_rgba_png_keeps_alpha_separately(tmp_path):
    (tmp_path / "x.png").write_bytes(encode(np.dstack([RGB8, ALPHA8]), "PNG"))
    picture = read_image(tmp_path / "x.png")
    np.testing.assert_array_equal(picture.rgb, RGB8)
    np.testing.assert_array_equal(picture.alpha, ALPHA8)


def test_gray_alpha_becomes_rgb_plus_alpha(tmp_path):
    Image.merge("LA", [Image.fromarray(GRAY8), Image.fromarray(ALPHA8)]).save(tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").mode == "LA"
    picture = read_image(tmp_path / "x.png")
    np.testing.assert_array_equal(picture.rgb, np.dstack([GRAY8] * 3))
    np.testing.assert_array_equal(picture.alpha, ALPHA8)


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_with_transparent_index(tmp_path, suffix):
    index = GRAY8 // 16  # 16 palette entries, taken from a photo
    palette = np.random.default_rng(0).integers(0, 256, (16, 3), dtype=np.uint8)
    image = Image.fromarray(index)
    image.putpalette(palette.tobytes())
    image.save(tmp_path / f"x{suffix}", transparency=5)
    assert Image.open(tmp_path / f"x{suffix}").mode == "P"
    picture = read_image(tmp_path / f"x{suffix}")
    np.testing.assert_array_equal(picture.rgb[index != 5], palette[index][index != 5])
    np.testing.assert_array_equal(picture.alpha, np.where(index == 5, 0, 255).astype(np.uint8))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.fromarray(RGB8).convert("CMYK").save(tmp_path / "x.jpg", quality=95)
    assert Image.open(tmp_path / "x.jpg").mode == "CMYK"
    picture = read_image(tmp_path / "x.jpg")
    assert picture.rgb.shape == RGB8.shape and picture.rgb.dtype == np.uint8
    assert peak_signal_noise_ratio(RGB8, picture.rgb) > 38  # 43.5 dB; a CMY/RGB mix-up would be far below


# --- EXIF orientation -----------------------------------------------------------------------------------------


def expected_shape(orientation: int) -> tuple[int, ...]:
    height, width = RGB8.shape[:2]
    return (width, height, 3) if orientation >= 5 else (height, width, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_8bit_matches_pillow(tmp_path, fmt, orientation):
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(encode(RGB8, fmt, exif=exif_bytes(orientation), quality=95))
    picture = read_image(path)
    assert picture.rgb.shape == expected_shape(orientation)
    np.testing.assert_array_equal(picture.rgb, np.array(ImageOps.exif_transpose(Image.open(path))))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("where", ["after IHDR", "before IEND"])
def test_exif_orientation_16bit_png_matches_pillow(tmp_path, where, orientation):
    png = cv2.imencode(".png", RGB16[..., ::-1])[1].tobytes()
    (tmp_path / "x.png").write_bytes(with_exif_chunk(png, orientation, where))
    assert Image.open(tmp_path / "x.png").getexif().get(images.ORIENTATION) == orientation
    picture = read_image(tmp_path / "x.png")
    assert picture.rgb.dtype == np.uint16 and picture.rgb.shape == expected_shape(orientation)
    np.testing.assert_array_equal(picture.rgb, upright16(orientation))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_16bit_tiff_matches_pillow(tmp_path, orientation):
    tifffile.imwrite(tmp_path / "x.tif", RGB16, photometric="rgb", extratags=[(274, "H", 1, orientation, True)])
    picture = read_image(tmp_path / "x.tif")
    assert picture.rgb.shape == expected_shape(orientation)
    np.testing.assert_array_equal(picture.rgb, upright16(orientation))


# --- bad input ------------------------------------------------------------------------------------------------


def _truncated(payload: bytes) -> bytes:
    return payload[: len(payload) * 6 // 10]


def _corrupt_idat(payload: bytes) -> bytes:
    start = payload.index(b"IDAT") + 200
    return payload[:start] + bytes(b ^ 0x5A for b in payload[start : start + 64]) + payload[start + 64 :]


BAD_FILES = {
    "empty": (lambda: b"", {}, "file is empty (0 bytes)"),
    "text": (lambda: b"just some notes\nnot pixels\n", {}, "not an image file (cannot identify format)"),
    "truncated png": (lambda: _truncated(encode(RGB8, "PNG")), {}, "truncated or corrupt image data: "),
    "truncated 16-bit png": (
        lambda: _truncated(cv2.imencode(".png", RGB16)[1].tobytes()),
        {},
        "truncated or corrupt image data: ",
    ),
    "truncated jpeg": (lambda: _truncated(encode(RGB8, "JPEG")), {}, "truncated or corrupt image data: "),
    "corrupt png data": (lambda: _corrupt_idat(encode(RGB8, "PNG")), {}, "truncated or corrupt image data: "),
    "over max_pixels": (
        lambda: header_only_png(3000, 2000),
        {"max_pixels": 1_000_000},
        "image is 3000x2000 (6.0 MP), over the 1 MP limit; raise --max-megapixels or downscale it",
    ),
    "16-bit over max_pixels": (
        lambda: header_only_png(3000, 2000, 16, 6),
        {"max_pixels": 2_500_000},
        "image is 3000x2000 (6.0 MP), over the 2.5 MP limit",
    ),
    "decompression bomb": (lambda: header_only_png(20000, 20000), {}, "decompression-bomb limit"),
}


def assert_clean_error(excinfo: pytest.ExceptionInfo, tmp_path, expected: str) -> None:
    message = str(excinfo.value)
    assert type(excinfo.value) is ImageError
    assert expected in message
    assert "\n" not in message and str(tmp_path) not in message  # one line; the caller adds the path


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_raises_clean_image_error(tmp_path, case):
    make, kwargs, expected = BAD_FILES[case]
    path = tmp_path / "bad.png"
    path.write_bytes(make())
    with pytest.raises(ImageError) as excinfo:
        read_image(path, **kwargs)
    assert_clean_error(excinfo, tmp_path, expected)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(ImageError) as excinfo:
        read_image(tmp_path)
    assert_clean_error(excinfo, tmp_path, "is a directory, not an image file")
    with pytest.raises(ImageError) as excinfo:
        read_image(tmp_path / "nope.png")
    assert_clean_error(excinfo, tmp_path, "file not found")


def test_max_pixels_boundary(tmp_path):
    (tmp_path / "x.png").write_bytes(encode(RGB8, "PNG"))
    pixels = RGB8.shape[0] * RGB8.shape[1]
    np.testing.assert_array_equal(read_image(tmp_path / "x.png", max_pixels=pixels).rgb, RGB8)
    with pytest.raises(ImageError, match="over the"):
        read_image(tmp_path / "x.png", max_pixels=pixels - 1)


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="running as root: chmod 000 does not stop root reading"
)
def test_unreadable_file(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(encode(RGB8, "PNG"))
    path.chmod(0)
    try:
        with pytest.raises(ImageError) as excinfo:
            read_image(path)
    finally:
        path.chmod(0o600)
    assert_clean_error(excinfo, tmp_path, "cannot read file: permission denied")


def test_permission_error_is_reported_cleanly(tmp_path, monkeypatch):
    """The mapping for unreadable files, checked even as root, where chmod cannot produce one."""

    def denied(fp, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(images.Image, "open", denied)
    with pytest.raises(ImageError) as excinfo:
        read_image(tmp_path / "x.png")
    assert_clean_error(excinfo, tmp_path, "cannot read file: permission denied")


FUZZ_SOURCES = {
    "png": lambda: encode(RGB8[:24, :32], "PNG"),
    "png16": lambda: cv2.imencode(".png", RGB16[:24, :32])[1].tobytes(),
    "jpeg": lambda: encode(RGB8[:24, :32], "JPEG", exif=exif_bytes(6)),
    "webp": lambda: encode(np.dstack([RGB8, ALPHA8])[:24, :32], "WEBP", lossless=True),
    "tiff8": lambda: cv2.imencode(".tif", RGB8[:24, :32])[1].tobytes(),
    "tiff16": lambda: cv2.imencode(".tif", RGB16[:24, :32])[1].tobytes(),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on the corrupt metadata it skips
@pytest.mark.parametrize("fmt", FUZZ_SOURCES)
def test_damaged_files_give_a_picture_or_an_image_error(tmp_path, fmt):
    """Truncations and overwritten bytes anywhere: never another exception type, never a multi-line message."""
    original = FUZZ_SOURCES[fmt]()
    rng = np.random.default_rng(sum(fmt.encode()))
    mutants = [original[:cut] for cut in rng.integers(1, len(original), 30)]
    for _ in range(60):
        damaged = bytearray(original)
        for at in rng.integers(0, len(original), 3):
            damaged[at] = rng.integers(0, 256)
        mutants.append(bytes(damaged))
    path = tmp_path / f"x.{fmt}"
    errors = 0
    for mutant in mutants:
        path.write_bytes(mutant)
        try:
            read_image(path, max_pixels=4_000_000)
        except ImageError as err:
            errors += 1
            assert "\n" not in str(err)
    assert errors >= 30  # at least every truncation was caught


# --- tensors --------------------------------------------------------------------------------------------------


def test_to_tensor_layout_and_range():
    x = to_tensor(RGB8)
    assert x.shape == (1, 3, *RGB8.shape[:2]) and x.dtype == torch.float32
    expected = RGB8.transpose(2, 0, 1)[None] / 255 * 2 - 1
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(to_tensor(RGB16).numpy(), RGB16.transpose(2, 0, 1)[None] / 65535 * 2 - 1, atol=1e-6)


@pytest.mark.parametrize(("dtype", "bit_depth"), [(np.uint8, 8), (np.uint16, 16)])
def test_tensor_round_trip_is_exact_for_every_level(dtype, bit_depth):
    levels = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
    rng = np.random.default_rng(0)
    side = int(np.sqrt(levels.size))
    rgb = np.stack([rng.permutation(levels).reshape(side, side) for _ in range(3)], axis=-1)
    x = to_tensor(rgb)
    assert x.min() == -1 and x.max() == 1
    np.testing.assert_array_equal(from_tensor(x, bit_depth), rgb)
    np.testing.assert_array_equal(from_tensor(x[0], bit_depth), rgb)


def test_from_tensor_clamps_and_rounds_to_nearest():
    levels = np.array([-40.0, 0.4, 0.6, 127.4, 127.6, 254.5001, 300.0])  # in 8-bit units
    x = torch.tensor(levels / 255 * 2 - 1, dtype=torch.float32).view(1, 1, -1).expand(3, 1, -1)
    got = from_tensor(x)
    assert got.shape == (1, levels.size, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[0, :, 0], [0, 0, 1, 127, 128, 255, 255])


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        from_tensor(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError):
        from_tensor(torch.zeros(3, 4, 4), bit_depth=12)
    with pytest.raises(ValueError):
        to_tensor(GRAY8)
    with pytest.raises(ValueError):
        Picture(RGB8.astype(np.float32))
    with pytest.raises(ValueError):
        Picture(RGB8, ALPHA16)


# --- alpha resizing -------------------------------------------------------------------------------------------


CHECKER = ((np.indices((40, 60)).sum(0) % 2) * 255).astype(np.uint8)  # bicubic overshoots most here


@pytest.mark.parametrize("alpha", [ALPHA8, ALPHA16, CHECKER], ids=["8", "16", "checker"])
@pytest.mark.parametrize("size", [(320, 480), (80, 120), (333, 101)], ids=["up", "down", "odd"])
def test_resize_alpha_matches_pillow_bicubic(alpha, size):
    height, width = size
    limit = np.iinfo(alpha.dtype).max
    resized = np.array(Image.fromarray(alpha.astype(np.float32)).resize((width, height), Image.BICUBIC))
    reference = np.clip(np.round(resized), 0, limit)  # bicubic overshoots at hard edges: clamped, not wrapped
    got = resize_alpha(alpha, height, width)
    assert got.dtype == alpha.dtype and got.shape == size
    assert np.abs(got.astype(np.float64) - reference).max() <= 1


# --- atomic writing -------------------------------------------------------------------------------------------


def test_write_creates_parents_and_overwrites_with_umask_permissions(tmp_path):
    path = tmp_path / "a" / "b" / "x.png"
    write_image(path, Picture(OTHER8))
    write_image(path, Picture(RGB8))
    np.testing.assert_array_equal(read_image(path).rgb, RGB8)
    assert only_files(path.parent) == ["x.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_unsupported_suffix_leaves_everything_untouched(tmp_path):
    (tmp_path / "x.bmp").write_bytes(b"old")
    with pytest.raises(ImageError) as excinfo:
        write_image(tmp_path / "x.bmp", Picture(RGB8))
    assert_clean_error(excinfo, tmp_path, "unsupported output format '.bmp'")
    assert (tmp_path / "x.bmp").read_bytes() == b"old"
    assert only_files(tmp_path) == ["x.bmp"]


def _pillow_dies_mid_write(self, fp, *args, **kwargs):
    fp.write(b"\x89PNG half an image")
    raise RuntimeError("disk pulled")


def _opencv_dies(*args, **kwargs):
    raise RuntimeError("encoder crashed")


def _replace_fails(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize(
    ("target", "bit_depth", "patch", "raises"),
    [
        ("PIL.Image.Image.save", 8, _pillow_dies_mid_write, RuntimeError),
        ("cv2.imencode", 16, _opencv_dies, RuntimeError),
        ("os.replace", 8, _replace_fails, ImageError),  # a file-system failure: reported as ImageError
    ],
    ids=["pillow mid-write", "opencv", "replace"],
)
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, target, bit_depth, patch, raises, existing):
    path = tmp_path / "x.png"
    if existing:
        path.write_bytes(b"old")
    monkeypatch.setattr(target, patch)
    with pytest.raises(raises) as excinfo:
        write_image(path, Picture(RGB8 if bit_depth == 8 else RGB16))
    monkeypatch.undo()
    if raises is ImageError:
        assert_clean_error(excinfo, tmp_path, "cannot write file: No space left on device")
    assert only_files(tmp_path) == (["x.png"] if existing else [])
    if existing:
        assert path.read_bytes() == b"old"


def test_unwritable_location_raises_image_error(tmp_path):
    (tmp_path / "file").write_bytes(b"not a folder")
    with pytest.raises(ImageError) as excinfo:
        write_image(tmp_path / "file" / "x.png", Picture(RGB8))
    assert_clean_error(excinfo, tmp_path, "cannot write file: ")
    assert only_files(tmp_path) == ["file"]


@pytest.mark.parametrize(("suffix", "side"), [(".webp", 16384), (".jpg", 65501)])
def test_too_wide_for_the_format_is_refused_before_writing(tmp_path, suffix, side):
    with pytest.raises(ImageError) as excinfo:
        write_image(tmp_path / f"x{suffix}", Picture(np.zeros((2, side, 3), np.uint8)))
    assert_clean_error(excinfo, tmp_path, f"image is {side}x2, over the")
    assert only_files(tmp_path) == []
    write_image(tmp_path / f"x{suffix}", Picture(np.zeros((2, side - 1, 3), np.uint8)))  # the largest allowed works
    assert read_image(tmp_path / f"x{suffix}").rgb.shape == (2, side - 1, 3)
