"""Hostile input across `sr`, `degrade`, `export onnx` and `eval sr`: generated malformed files (corruptions at many
offsets, header bombs, odd modes), model directories broken field by field, and bad numbers.

Every case asserts what the CLI promises: the exit code (0 all done, 1 some files failed, 2 nothing could start),
one `flowsr:` line naming the culprit, no traceback, the good files still written, no temporary file left.
A sample of every class runs by default; `pytest --fuzz-full` runs them all.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import data

from flowsr.core import images
from flowsr.core.errors import SettingsError, printable
from flowsr.runtime.cli import build_parser, main
from flowsr.runtime.pair_dataset import MAX_SCALES, parse_scales

RGB = np.ascontiguousarray(data.astronaut()[::12, ::12][:40, :40])  # 40x40: fast through the tiny models


def _encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def _png16() -> bytes:
    return cv2.imencode(".png", RGB.astype(np.uint16)[..., ::-1] * 257)[1].tobytes()


BASES = {
    "png": lambda: _encode(RGB, "PNG"),
    "png16": _png16,
    "jpg": lambda: _encode(RGB, "JPEG", quality=90),
    "webp": lambda: _encode(RGB, "WEBP", quality=90),
    "tif": lambda: _encode(RGB, "TIFF"),
    "bmp": lambda: _encode(RGB, "BMP"),
}
SUFFIX = {"png16": "png"}


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _png(
    width: int,
    height: int,
    depth: int = 8,
    colour: int = 2,
    rows: int | None = None,
    palette: bool = False,
    idat_length: int | None = None,
) -> bytes:
    samples = {0: 1, 2: 3, 3: 1}[colour]
    rows = height if rows is None else rows
    raw = b"".join(b"\0" + bytes([(7 * y) % 256]) * (width * samples * depth // 8) for y in range(rows))
    body = zlib.compress(raw)
    idat = _chunk(b"IDAT", body)
    if idat_length is not None:  # a length field that lies (the CRC no longer matters)
        idat = struct.pack(">I", idat_length) + idat[4:]
    plte = _chunk(b"PLTE", bytes(range(256)) * 3) if palette else b""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + plte + idat + _chunk(b"IEND", b"")


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 header claims another size."""
    jpeg = bytearray(_encode(RGB, "JPEG"))
    at = jpeg.index(b"\xff\xc0") + 5
    jpeg[at : at + 4] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def _tiff_with_size(width: int, height: int) -> bytes:
    tiff = bytearray(_encode(RGB, "TIFF"))
    count = struct.unpack_from("<H", tiff, struct.unpack_from("<I", tiff, 4)[0])[0]
    start = struct.unpack_from("<I", tiff, 4)[0] + 2
    for i in range(count):
        (tag,) = struct.unpack_from("<H", tiff, start + 12 * i)
        if tag in (256, 257):
            value = width if tag == 256 else height
            struct.pack_into("<HHII", tiff, start + 12 * i, tag, 4, 1, value)  # LONG
    return bytes(tiff)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(RGB[:, :24], "JPEG", exif=exif.tobytes())


def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(RGB).convert("CMYK").save(buffer, "JPEG")
    return buffer.getvalue()


def _mode(mode: str, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(RGB).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


@dataclass(frozen=True)
class FileCase:
    name: str  # file name, unique stem
    payload: bytes
    expect: str  # "ok": written; "bad": one line naming it; "either": one or the other (a benign corruption)
    expect_degrade: str | None = None  # where degrade differs

    def expected(self, command: str) -> str:
        return self.expect_degrade if command == "degrade" and self.expect_degrade else self.expect


def file_cases() -> list[FileCase]:
    rng = random.Random(0)
    cases = []
    for base, make in BASES.items():
        good = make()
        suffix = SUFFIX.get(base, base)
        for fraction in (0.0, 0.02, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.95):
            cut = int(len(good) * fraction)
            # A few trailing bytes of a JPEG (EOI) or BMP padding carry no pixels: only real cuts must fail.
            expect = "bad" if base in ("png", "png16") or fraction < 0.9 else "either"
            cases.append(FileCase(f"trunc-{base}-{cut}.{suffix}", good[:cut], expect))
        for offset in sorted(rng.sample(range(len(good)), 10)):
            flipped = bytearray(good)
            flipped[offset] ^= 0xFF
            cases.append(FileCase(f"flip-{base}-{offset}.{suffix}", bytes(flipped), "either"))
    cases += [
        FileCase("bomb-png-ihdr.png", _png(100_000, 100_000, rows=1), "bad"),
        FileCase("bomb-png-wide.png", _png(2**31 - 1, 1, rows=0), "bad"),
        FileCase("bomb-png16-idat-length.png", _png(16, 16, depth=16, idat_length=0xFFFF0BFB), "bad"),
        FileCase("bomb-png-idat-length.png", _png(16, 16, idat_length=0x7FFFFFFF), "bad"),
        FileCase("bomb-jpeg-sof.jpg", _jpeg_with_size(65000, 65000), "bad"),
        FileCase("bomb-tiff-size.tif", _tiff_with_size(100_000, 100_000), "bad"),
        FileCase("half-rows.png", _png(32, 32, rows=16), "bad"),
        FileCase("half-rows16.png", _png(32, 32, depth=16, rows=16), "bad"),
        FileCase("palette-without-plte.png", _png(32, 32, colour=3), "bad"),
        FileCase("palette-with-plte.png", _png(32, 32, colour=3, palette=True), "ok"),
        FileCase("empty.png", b"", "bad"),
        FileCase("text.jpg", b"this is not an image\n" * 20, "bad"),
        FileCase("html.png", b"<html><body>404</body></html>", "bad"),
        FileCase("mode-1.png", _mode("1"), "ok"),
        FileCase("mode-L.png", _mode("L"), "ok"),
        FileCase("mode-LA.png", _mode("LA"), "ok"),
        FileCase("mode-P.png", _mode("P"), "ok"),
        FileCase("mode-RGBA.png", _mode("RGBA"), "ok"),
        FileCase("mode-I16.png", _encode((RGB[..., 0].astype(np.uint16) * 257), "PNG"), "ok"),
        FileCase(
            "mode-RGBA16.png",
            cv2.imencode(".png", np.dstack([RGB, RGB[..., :1]]).astype(np.uint16) * 257)[1].tobytes(),
            "ok",
        ),
        FileCase("mode-cmyk.jpg", _cmyk_jpeg(), "ok"),
        FileCase("exif-rotated.jpg", _exif_rotated(), "ok"),
        FileCase("one-pixel.png", _encode(RGB[:1, :1], "PNG"), "ok"),
        FileCase("strip.png", _encode(RGB[:1, :40], "PNG"), "ok"),
        # A 255-byte name: its temporary must fit too. Its degraded output, {name}_LR4.png, cannot exist.
        FileCase("x" * 251 + ".png", _encode(RGB, "PNG"), "ok", expect_degrade="bad"),
        FileCase("new\nline.png", b"not a png", "bad"),
    ]
    return cases


FILE_CASES = file_cases()


def sample(cases: list, keep_every: int, full: bool) -> list:
    return cases if full else cases[::keep_every]


@pytest.fixture(scope="module")
def sr_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "sr"
    assert main(["model", "init", "--preset", "tiny", "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def kl_model(tmp_path_factory):
    """The FLUX path in miniature (AutoencoderKL, FluxTransformer2DModel, stored text embeddings)."""
    path = tmp_path_factory.mktemp("models") / "sr-kl"
    assert main(["model", "init", "--preset", "tiny-kl", "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def degradation_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "degradation"
    assert main(["model", "init", "--preset", "tiny", "--kind", "degradation", "-o", str(path)]) == 0
    return path


@pytest.fixture
def full(request) -> bool:
    return request.config.getoption("--fuzz-full")


def flowsr_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("flowsr:")]


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".flowsr-")]


def decodes(path: Path) -> bool:
    return path.is_file() and images.read_image(path).rgb.size > 0


@pytest.mark.parametrize("command", ["sr", "degrade"])
def test_malformed_files_one_line_each_and_the_good_ones_written(
    command, sr_model, degradation_model, full, tmp_path, capsys
):
    cases = sample(FILE_CASES, 4, full)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.png").write_bytes(BASES["png"]())
    for case in cases:
        (folder / case.name).write_bytes(case.payload)
    out = tmp_path / "out"
    model = sr_model if command == "sr" else degradation_model
    code = main([command, str(folder), "-o", str(out), "--model", str(model)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = flowsr_lines(err)

    def output(name: str) -> Path:
        stem = Path(name).stem
        return out / f"{stem}.png" if command == "sr" else out / "4" / f"{stem}_LR4.png"

    assert decodes(output("good.png"))
    failed = 0
    for case in cases:
        named = [line for line in lines if printable(str(folder / case.name)) + ":" in line]
        written = len(output(case.name).name) <= 255 and output(case.name).exists()
        assert len(named) + written == 1, f"{case.name!r}: {named} written={written}"
        assert case.expected(command) != "ok" or written, f"{case.name!r} should have been written: {named}"
        assert case.expected(command) != "bad" or named, f"{case.name!r} should have failed"
        if written:
            assert decodes(output(case.name))
        failed += bool(named)
    assert code == (1 if failed else 0)
    assert no_temporaries(out)


@pytest.mark.slow
def test_header_bombs_stay_small(sr_model, tmp_path):
    """Peak memory of a whole `flowsr sr` process over every header bomb, measured in a subprocess."""
    import subprocess
    import sys

    folder = tmp_path / "bombs"
    folder.mkdir()
    for case in FILE_CASES:
        if case.name.startswith(("bomb-", "half-rows")):
            (folder / case.name).write_bytes(case.payload)
    probe = (
        "import resource, sys; from flowsr.runtime.cli import main; code = main(sys.argv[1:]); "
        "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, "sr", str(folder), "-o", str(tmp_path / "out"), "--model", str(sr_model)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    noise = [
        line for line in result.stderr.splitlines() if not line.startswith(("flowsr:", "peak_rss_kib", "0 written"))
    ]
    assert not noise, noise  # no library warnings or log lines around flowsr's own
    assert len(flowsr_lines(result.stderr)) == len(list(folder.iterdir())) + 1  # one per bomb, and the summary
    peak_mib = int(result.stderr.split("peak_rss_kib")[1].split()[0]) / 1024
    assert peak_mib < 1500, f"peak RSS {peak_mib:.0f} MiB"


# --- model directories, broken field by field -------------------------------------------------------------------

BAD_VALUES = [None, "x", "NaN", float("nan"), float("inf"), -1, 0, 1e308, [], {}, True, "1"]


def _manifest_cases(fields: dict[str, list]) -> list[tuple[str, object, bool]]:
    """(field, value, valid) for every bad value of every field; `fields` lists each field's valid values."""
    cases = []
    for field, valid in fields.items():
        for value in BAD_VALUES:
            cases.append((field, value, any(value == v and type(value) is type(v) for v in valid)))
    return cases


SR_FIELDS = {
    "kind": ["sr"],
    "preset": ["tiny"],
    "t_star": [],
    "guidance": [None],
    "trained": [True],
    "versions": [{}],
    "created": ["x", "1", "NaN"],
    "format": [],
    "t_star_source": [],
    "weights_sha256": [None],
    "start_times": [None],
}
DEGRADATION_FIELDS = {
    "kind": ["degradation"],
    "preset": ["tiny"],
    "s_max": [],
    "knot_scales": [],
    "trained": [True],
    "versions": [{}],
    "created": ["x", "1", "NaN"],
    "format": [],
    "weights_sha256": [None],
    "noise": [None],
}
NOISE_TABLE = {"times": [0.0, 1.0], "base": [0.0, 1e-3], "slope": [0.0, 1e-3], "gray": [0.0, 0.5], "spread": [0.0, 1.0]}


def _broken_copy(source: Path, target: Path, edit) -> Path:
    shutil.copytree(source, target)
    edit(target)
    return target


def _set_json(path: Path, field: str, value) -> None:
    content = json.loads(path.read_text())
    content[field] = value
    path.write_text(json.dumps(content))  # NaN and Infinity as JSON's extensions, as a hostile file would


def _weights(folder: Path) -> Path:
    return next(folder.glob("*.safetensors"))


def _safetensors_header_bomb(path: Path) -> None:
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")


FILE_EDITS = {
    "manifest-random-bytes": lambda d: (d / "flowsr.json").write_bytes(bytes(range(256)) * 4),
    "manifest-latin1": lambda d: (d / "flowsr.json").write_bytes(
        '{"kind": "sr", "preset": "t\xefny"}'.encode("latin-1")
    ),
    "manifest-list": lambda d: (d / "flowsr.json").write_text("[1, 2, 3]"),
    "manifest-empty": lambda d: (d / "flowsr.json").write_text(""),
    "manifest-huge": lambda d: (d / "flowsr.json").write_text(" " * (2 << 20) + "{}"),
    "manifest-missing-field": lambda d: (d / "flowsr.json").write_text(json.dumps({"kind": "sr"})),
    "manifest-unknown-field": lambda d: _set_json(d / "flowsr.json", "surprise", 1),
    "manifest-folder": lambda d: ((d / "flowsr.json").unlink(), (d / "flowsr.json").mkdir()),
}
SR_FILE_EDITS = {
    **FILE_EDITS,
    "transformer-weights-random": lambda d: _weights(d / "transformer").write_bytes(random.Random(2).randbytes(4096)),
    "transformer-weights-truncated": lambda d: _weights(d / "transformer").write_bytes(
        _weights(d / "transformer").read_bytes()[:1000]
    ),
    "transformer-weights-header-bomb": lambda d: _safetensors_header_bomb(_weights(d / "transformer")),
    "transformer-config-missing": lambda d: (d / "transformer" / "config.json").unlink(),
    # The other velocity network: its class is the preset's, not the file's to choose.
    "transformer-config-class": lambda d: _set_json(
        d / "transformer" / "config.json", "_class_name", "FluxTransformer2DModel"
    ),
    "vae-weights-missing": lambda d: _weights(d / "vae").unlink(),
    "vae-config-missing": lambda d: (d / "vae" / "config.json").unlink(),
    "vae-config-binary": lambda d: (d / "vae" / "config.json").write_bytes(b"\xff\xfe\x00" * 100),
    "vae-config-list": lambda d: (d / "vae" / "config.json").write_text("[]"),
    "vae-config-class": lambda d: _set_json(d / "vae" / "config.json", "_class_name", "os.system"),
    # The strength estimator is the preset's part: the tiny preset reads every input's strength with it.
    "estimator-missing": lambda d: shutil.rmtree(d / "estimator"),
    "estimator-weights-random": lambda d: _weights(d / "estimator").write_bytes(random.Random(4).randbytes(4096)),
    "estimator-weights-missing": lambda d: _weights(d / "estimator").unlink(),
    "estimator-config-missing": lambda d: (d / "estimator" / "config.json").unlink(),
    "estimator-config-class": lambda d: _set_json(d / "estimator" / "config.json", "_class_name", "os.system"),
}
# Only a text-conditioned velocity network (FLUX: the tiny-kl and flux-dev presets) stores the empty-prompt embeddings.
KL_FILE_EDITS = {
    "embeddings-random": lambda d: (d / "text_embeddings.safetensors").write_bytes(random.Random(1).randbytes(4096)),
    "embeddings-pickle": lambda d: (d / "text_embeddings.safetensors").write_bytes(
        pickle.dumps({"prompt_embeds": [1.0]})
    ),
    "embeddings-empty": lambda d: (d / "text_embeddings.safetensors").write_bytes(b""),
    "embeddings-missing": lambda d: (d / "text_embeddings.safetensors").unlink(),
    "embeddings-header-bomb": lambda d: _safetensors_header_bomb(d / "text_embeddings.safetensors"),
    "transformer-weights-random": lambda d: _weights(d / "transformer").write_bytes(random.Random(2).randbytes(4096)),
    "transformer-config-class": lambda d: _set_json(
        d / "transformer" / "config.json", "_class_name", "GatedConvVelocityModel"
    ),
    "vae-config-class": lambda d: _set_json(d / "vae" / "config.json", "_class_name", "PatchAutoencoder"),
    # FLUX presets have one t* for every input: a strength estimator is not theirs to load.
    "estimator-present": lambda d: (
        (d / "estimator").mkdir(),
        (d / "estimator" / "config.json").write_text(json.dumps({"_class_name": "StrengthEstimator"})),
    ),
}
DEGRADATION_FILE_EDITS = {
    **FILE_EDITS,
    "unet-weights-random": lambda d: _weights(d / "unet").write_bytes(random.Random(3).randbytes(4096)),
    "rae-weights-header-bomb": lambda d: _safetensors_header_bomb(_weights(d / "rae")),
    "rae-config-missing": lambda d: (d / "rae" / "config.json").unlink(),
}
ARCHITECTURE_KEYS = {
    "sr": {
        "vae": ["in_channels", "patch_size", "latent_channels"],
        "transformer": ["in_channels", "channels", "num_blocks", "time_embedding_dim"],
        "estimator": ["channels", "max_side"],
    },
    "sr-kl": {
        "vae": ["block_out_channels", "layers_per_block", "latent_channels"],
        "transformer": [
            "num_layers",
            "num_single_layers",
            "num_attention_heads",
            "attention_head_dim",
            "in_channels",
            "joint_attention_dim",
        ],
    },
    "degradation": {
        "rae": ["block_out_channels", "norm_num_groups"],
        "unet": ["block_out_channels", "layers_per_block", "in_channels"],
    },
}
CONFIG_VALUES = [100_000, [], [100_000] * 4, -1, "x", None]


def model_cases(kind: str) -> list[tuple[str, object, bool]]:
    """(label, edit of a model directory copy, valid). "sr": the tiny preset (PatchAutoencoder, GatedConvVelocityModel,
    StrengthEstimator, no text); "sr-kl": what only the FLUX path (tiny-kl) holds, its parts' configs and its text
    embeddings."""
    if kind == "sr-kl":
        cases = [
            ("unchanged", lambda d: None, True),
            ("manifest-preset=tiny", lambda d: _set_json(d / "flowsr.json", "preset", "tiny"), False),
        ]
    else:
        fields = SR_FIELDS if kind == "sr" else DEGRADATION_FIELDS
        cases = [
            (f"manifest-{field}={value!r}", lambda d, f=field, v=value: _set_json(d / "flowsr.json", f, v), valid)
            for field, value, valid in _manifest_cases(fields)
        ]
    if kind == "sr":
        cases += [("manifest-preset=tiny-kl", lambda d: _set_json(d / "flowsr.json", "preset", "tiny-kl"), False)]
    if kind == "degradation":
        cases += [
            (f"manifest-knot_scales={knots}", lambda d, k=knots: _set_json(d / "flowsr.json", "knot_scales", k), False)
            for knots in ([1.0], [2.0, 4.0], [1.0, 4.0, 2.0], [1.0, 2.0, 9.0], [1.0, 1.0, 4.0])
        ]
        cases += [("manifest-s_max=1", lambda d: _set_json(d / "flowsr.json", "s_max", 1.0), False)]
        cases += [("manifest-noise=table", lambda d: _set_json(d / "flowsr.json", "noise", NOISE_TABLE), True)]
        cases += [
            (
                f"manifest-noise.{key}={value!r}",
                lambda d, k=key, v=value: _set_json(d / "flowsr.json", "noise", {**NOISE_TABLE, k: v}),
                False,
            )
            for key, value in (
                ("base", [0.0, float("nan")]),
                ("base", [0.0, -1.0]),
                ("gray", [0.0, 2.0]),
                ("times", [0.0, 0.5]),
                ("spread", "1"),
                ("slope", [0.0]),
            )
        ]
    for part, keys in ARCHITECTURE_KEYS[kind].items():
        for key in keys:
            cases += [
                (
                    f"{part}-config-{key}={value!r:.20}",
                    lambda d, p=part, k=key, v=value: _set_json(d / p / "config.json", k, v),
                    False,
                )
                for value in CONFIG_VALUES
            ]
    edits = {"sr": SR_FILE_EDITS, "sr-kl": KL_FILE_EDITS, "degradation": DEGRADATION_FILE_EDITS}[kind]
    cases += [(label, edit, False) for label, edit in edits.items()]
    if kind == "sr-kl":
        import safetensors.torch
        import torch

        def embeddings(d: Path, **tensors) -> None:
            safetensors.torch.save_file(tensors, d / "text_embeddings.safetensors")

        cases += [
            ("embeddings-wrong-key", lambda d: embeddings(d, other=torch.zeros(1)), False),
            (
                "embeddings-wrong-shape",
                lambda d: embeddings(d, prompt_embeds=torch.zeros(1, 2, 3), pooled_prompt_embeds=torch.zeros(1, 3)),
                False,
            ),
            (
                "embeddings-nan",
                lambda d: embeddings(
                    d, prompt_embeds=torch.full((1, 4, 32), float("nan")), pooled_prompt_embeds=torch.zeros(1, 32)
                ),
                False,
            ),
            (
                "embeddings-int",
                lambda d: embeddings(
                    d, prompt_embeds=torch.zeros(1, 4, 32, dtype=torch.int64), pooled_prompt_embeds=torch.zeros(1, 32)
                ),
                False,
            ),
        ]
    return cases


SR_MODEL_CASES, KL_MODEL_CASES, DEGRADATION_MODEL_CASES = (
    model_cases("sr"),
    model_cases("sr-kl"),
    model_cases("degradation"),
)


def _run_model_case(command: list[str], model: Path, out: Path, capsys, valid: bool, label: str) -> None:
    code = main(command)
    err = capsys.readouterr().err
    assert "Traceback" not in err, label
    lines = flowsr_lines(err)
    if valid:
        assert code == 0, f"{label}: {lines}"
        return
    assert code == 2, f"{label}: exit {code}, {lines}"
    assert len(lines) == 1 and str(model) in lines[0], f"{label}: {lines}"
    assert not out.exists() or no_temporaries(out)


@pytest.mark.parametrize("kind", ["sr", "sr-kl", "degradation"])
def test_model_directories_broken_field_by_field(kind, sr_model, kl_model, degradation_model, full, tmp_path, capsys):
    image = tmp_path / "photo.png"
    image.write_bytes(BASES["png"]())
    command, source, cases, options = {
        "sr": ("sr", sr_model, SR_MODEL_CASES, []),
        "sr-kl": ("sr", kl_model, KL_MODEL_CASES, []),
        "degradation": ("degrade", degradation_model, DEGRADATION_MODEL_CASES, ["--scale", "2"]),
    }[kind]
    for index, (label, edit, valid) in enumerate(sample(cases, 4, full)):
        model = _broken_copy(source, tmp_path / f"m{index}", edit)
        out = tmp_path / f"out{index}"
        _run_model_case(
            [command, str(image), "-o", str(out), "--model", str(model), *options], model, out, capsys, valid, label
        )


def test_a_model_without_text_conditioning_holds_no_embeddings(sr_model, kl_model):
    """tiny (GatedConvVelocityModel) stores no text embeddings, so none of the embedding cases above apply to it;
    tiny-kl does."""
    assert (
        not (sr_model / "text_embeddings.safetensors").exists() and (kl_model / "text_embeddings.safetensors").is_file()
    )


def test_export_and_eval_refuse_broken_models_in_one_line(sr_model, full, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()[::4, ::4]).save(photos / "astronaut.png")
    bad = [case for case in SR_MODEL_CASES if not case[2]]
    for index, (label, edit, _) in enumerate(sample(bad, 3, full)[: None if full else 12]):
        model = _broken_copy(sr_model, tmp_path / f"m{index}", edit)
        for command, out in (
            (
                ["export", "onnx", "--model", str(model), "-o", str(tmp_path / f"onnx{index}")],
                tmp_path / f"onnx{index}",
            ),
            (
                ["eval", "sr", "--data", str(photos), "--model", str(model), "--csv", str(tmp_path / f"e{index}.csv")],
                tmp_path / f"e{index}.csv",
            ),
        ):
            _run_model_case(command, model, out, capsys, False, f"{command[0]} {label}")
            assert not out.exists()


# --- numbers and options ------------------------------------------------------------------------------------------

BAD_NUMBERS = ["nan", "NaN", "inf", "-inf", "1e308", "-1", "0x10", "", "abc", "1e-400", "4,5", " "]


def option_cases() -> list[list[str]]:
    cases = []
    for option in ("--scale", "--max-megapixels", "--tile", "--overlap", "--vae-tile"):
        cases += [
            ["sr", "IMAGE", "-o", "OUT", option, value]
            for value in BAD_NUMBERS + ["0.5" if option == "--scale" else "-5", "1e9"]
        ]
    cases += [["sr", "IMAGE", "-o", "OUT", "--strength", value] for value in BAD_NUMBERS + ["1.5", "-0.1", "AUTO"]]
    for option in ("--steps", "--tile", "--overlap", "--max-megapixels"):
        cases += [["degrade", "IMAGE", "-o", "OUT", option, value] for value in BAD_NUMBERS]
    cases += [
        ["degrade", "IMAGE", "-o", "OUT", "--scale", value]
        for value in (
            "1:inf:1",
            "1:4:1e-12",
            "nan",
            "inf",
            "0.5",
            "5",
            "4:1:1",
            "1:4:0",
            "1:4:-1",
            "1:4",
            "1,,2",
            "",
            "1:2:3:4",
            "1e308",
        )
    ]
    cases += [
        ["eval", "sr", "--data", "PHOTOS", "--model", "MODEL", "--scale", value]
        for value in ("0", "-1", "1", "100", "nan", "2.5", "abc")
    ]
    cases += [
        ["export", "onnx", "--model", "MODEL", "-o", "OUT", "--opset", value]
        for value in ("0", "-1", "nan", "1e9", "abc")
    ]
    cases += [
        [command, "IMAGE", "-o", "OUT", "--device", device]
        for command in ("sr", "degrade")
        for device in ("cuda", "cuda:7", "foo", "")
    ]
    return cases


OPTION_CASES = option_cases()


def test_bad_options_exit_2_with_one_line_before_any_work(sr_model, degradation_model, full, tmp_path, capsys):
    image = tmp_path / "photo.png"
    image.write_bytes(BASES["png"]())
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(image, photos / "photo.png")
    for index, case in enumerate(sample(OPTION_CASES, 3, full)):
        out = tmp_path / f"out{index}"
        model = sr_model if case[0] != "degrade" else degradation_model
        substitutions = {"IMAGE": str(image), "OUT": str(out), "PHOTOS": str(photos), "MODEL": str(model)}
        argv = [substitutions.get(arg, arg) for arg in case]
        if case[0] in ("sr", "degrade"):
            argv += ["--model", str(model)]
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse refuses at parsing
            code = exit.code
        err = capsys.readouterr().err
        assert "Traceback" not in err, case
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "error" in lines[0], f"{case}: exit {code}, {lines}"
        assert not out.exists()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=12)))
def test_any_scale_text_is_a_bounded_number_or_one_line(text):
    parser = build_parser()
    try:
        args = parser.parse_args(["sr", "x", "-o", "y", "--scale", text])
    except SystemExit as exit:
        assert exit.code == 2
        return
    assert 1 <= args.scale <= 32


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    st.one_of(
        st.tuples(st.floats(), st.floats(), st.floats()).map(lambda t: ":".join(map(repr, t))),
        st.lists(st.floats(), min_size=1, max_size=80).map(lambda v: ",".join(map(repr, v))),
        st.text(alphabet="0123456789.:,-einf", max_size=16),
    )
)
def test_any_degrade_scales_text_is_a_short_bounded_list_or_settings_error(text):
    try:
        scales = parse_scales(text, 4.0)
    except SettingsError as err:
        assert "\n" not in str(err)
        return
    assert 1 <= len(scales) <= MAX_SCALES and all(1 <= s <= 4.0 for s in scales)


# --- kill -9 ------------------------------------------------------------------------------------------------------


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".flowsr-*")] if folder.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sr", "degrade"])
def test_kill_9_then_rerun_completes_every_output_and_leaves_no_temporary(
    command, sr_model, degradation_model, tmp_path
):
    """Killed once at the moment a temporary file exists and once at a random time; the rerun finishes the job."""
    import os
    import signal
    import subprocess
    import sys
    import time

    photos = tmp_path / "in"
    photos.mkdir()
    for index in range(8):
        Image.fromarray(np.roll(data.astronaut()[::2, ::2], 17 * index, axis=1)).save(photos / f"p{index}.png")
    out = tmp_path / "out"
    model = sr_model if command == "sr" else degradation_model
    argv = [sys.executable, "-m", "flowsr.runtime.cli", command, str(photos), "-o", str(out), "--model", str(model)]
    rng = random.Random(0)
    killed_with_temporary = False
    for attempt in range(4):
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        wait_for_temporary = attempt == 0 or not killed_with_temporary
        random_delay = rng.uniform(0.0, 1.0)
        first_output = None
        while process.poll() is None and time.monotonic() < deadline:
            if wait_for_temporary and _temporaries(out):
                break
            if not wait_for_temporary and out.exists() and any(out.rglob("*.png")):
                first_output = first_output or time.monotonic()
                if time.monotonic() - first_output > random_delay:
                    break
            time.sleep(0.0005)
        if process.poll() is None:
            killed_with_temporary |= bool(_temporaries(out))
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if killed_with_temporary and attempt >= 1:
            break
    assert killed_with_temporary, "never caught a temporary file to kill at; the test needs larger images"
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    for index in range(8):
        written = out / f"p{index}.png" if command == "sr" else out / "4" / f"p{index}_LR4.png"
        assert decodes(written)
    assert not _temporaries(out)


def test_eval_names_a_corrupt_image(sr_model, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    # 256 px: every metric's minimum size (NIQE's 194)
    Image.fromarray(data.astronaut()[::2, ::2]).save(photos / "a.png")
    (photos / "b.png").write_bytes(BASES["png"]()[:300])
    assert main(["eval", "sr", "--data", str(photos), "--model", str(sr_model), "--csv", str(tmp_path / "e.csv")]) == 2
    lines = flowsr_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(photos / "b.png") in lines[0] and "truncated" in lines[0]
    assert not (tmp_path / "e.csv").exists()


@pytest.mark.parametrize("side", [3, 100])
def test_eval_names_an_image_too_small_to_score(sr_model, tmp_path, capsys, side):
    """A 3x3 photo (smaller than the heavy pipeline's blur kernels) and one under NIQE's minimum: one line naming it."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()[::2, ::2]).save(photos / "a.png")
    Image.fromarray(data.astronaut()[:side, :side]).save(photos / "small.png")
    assert main(["eval", "sr", "--data", str(photos), "--model", str(sr_model), "--csv", str(tmp_path / "e.csv")]) == 2
    lines = flowsr_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(photos / "small.png") in lines[0] and "too small" in lines[0]
    assert not (tmp_path / "e.csv").exists()


def test_eval_refuses_a_folder_as_its_csv(sr_model, tmp_path, capsys):
    photos, folder = tmp_path / "photos", tmp_path / "scores"
    photos.mkdir()
    folder.mkdir()
    (folder / "kept.txt").write_text("the user's")
    Image.fromarray(data.astronaut()[::2, ::2]).save(photos / "a.png")
    assert main(["eval", "sr", "--data", str(photos), "--model", str(sr_model), "--csv", str(folder)]) == 2
    lines = flowsr_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "--csv" in lines[0] and "is a folder" in lines[0]
    assert [p.name for p in folder.iterdir()] == ["kept.txt"]


def test_a_bug_shows_its_traceback_and_asks_to_be_reported(sr_model, tmp_path, capsys, monkeypatch):
    """A ValueError that no check raised is a bug, not bad input: it must not pass for a one-line user error."""
    from flowsr.runtime import super_resolver

    def broken(self, lr):
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr(super_resolver.SuperResolver, "upscale_tensor", broken)
    image = tmp_path / "photo.png"
    image.write_bytes(BASES["png"]())
    assert main(["sr", str(image), "-o", str(tmp_path / "out"), "--model", str(sr_model)]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "an internal invariant failed" in err and "please report it" in err.splitlines()[-1]
