"""INT8 exports (QDQ): the velocity graph quantized with photos, served by onnxruntime; refused in one line where
they do not apply."""

import json
import shlex
from pathlib import Path

import onnx
import pytest
import torch
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from flowsr.core.sr_model import OneStepSR
from flowsr.runtime.cli import build_parser, main
from flowsr.runtime.default_models import DEFAULT_DEGRADATION_MODEL, DEFAULT_SR_MODEL
from flowsr.runtime.super_resolver import SuperResolver

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(data, name)()[::4, ::4]).save(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not a photo")
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny model whose velocity is not zero (its last convolution starts at zero), so quantization shows."""
    model = OneStepSR.from_preset("tiny", seed=0)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for parameter in model.transformer.conv_out.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    folder = tmp_path_factory.mktemp("tiny") / "m"
    model.save_pretrained(folder)
    return folder


def test_int8_export_quantizes_the_inner_convolutions_and_verifies(tiny_dir, calibration, capsys):
    assert main(["export", "onnx", "--model", tiny_dir, "--dtype", "int8", "--calibrate", calibration]) == 0
    folder = tiny_dir / "onnx" / "int8"
    document = json.loads((folder / "export.json").read_text())
    assert sorted(document["graphs"]) == ["decoder", "encoder", "transformer"]
    assert document["quantization"]["graphs"] == ["transformer"] and document["quantization"]["calibration_photos"] == 4
    assert document["graphs"]["transformer"]["verification"]["min_psnr_db"] == 35
    assert document["graphs"]["encoder"]["verification"]["min_psnr_db"] == 50  # float graphs keep float's bar
    graph = onnx.load(folder / "transformer.onnx").graph
    produced_by = {output: node for node in graph.node for output in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    quantized = [conv for conv in convs if getattr(produced_by.get(conv.input[1]), "op_type", "") == "DequantizeLinear"]
    assert len(quantized) == len(convs) - 2  # the first and the last stay float
    assert convs[0] not in quantized and convs[-1] not in quantized
    assert all(node.domain in ("", "ai.onnx") for node in graph.node)  # plain ONNX: TensorRT takes QDQ as INT8
    assert "QDQ" not in capsys.readouterr().err


def test_int8_serving_of_the_default_model_is_close_to_float32():
    """The shipped export (onnx/int8, calibrated on other photos) against torch float32, on a held-out photo."""
    photo = data.coffee()[::4, ::4][:96, :128]
    int8 = SuperResolver(backend="onnxruntime", dtype="int8", tile=0, vae_tile=0)
    assert int8.backend.folder == DEFAULT_SR_MODEL / "onnx" / "int8"  # found by the weights' digest
    reference = SuperResolver(tile=0, vae_tile=0)(photo)
    assert peak_signal_noise_ratio(reference, int8(photo)) > 40  # 49-57 dB measured on the held-out photos


def test_int8_is_refused_in_one_line_where_it_does_not_apply(tiny_dir, calibration, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()[::8, ::8]).save(photo)
    cases = [
        (
            ["export", "onnx", "--model", str(tiny_dir), "-o", str(tmp_path / "a"), "--dtype", "int8"],
            "needs --calibrate",
        ),
        (
            [
                "export",
                "onnx",
                "--model",
                str(tiny_dir),
                "-o",
                str(tmp_path / "b"),
                "--dtype",
                "int8",
                "--calibrate",
                str(photo),
            ],
            "is not a folder",
        ),
        (
            [
                "export",
                "onnx",
                "--model",
                str(tiny_dir),
                "-o",
                str(tmp_path / "c"),
                "--dtype",
                "int8",
                "--calibrate",
                str(tmp_path / "c0"),
            ],
            "is not a folder",
        ),
        (
            [
                "export",
                "onnx",
                "--model",
                str(tiny_dir),
                "-o",
                str(tmp_path / "d"),
                "--dtype",
                "int8",
                "--calibrate",
                str(calibration),
                "--graphs",
                "sr",
            ],
            "stay float",
        ),
        (
            [
                "export",
                "onnx",
                "--model",
                str(DEFAULT_DEGRADATION_MODEL),
                "-o",
                str(tmp_path / "e"),
                "--dtype",
                "int8",
                "--calibrate",
                str(calibration),
            ],
            "made for SR models",
        ),
        (["sr", str(photo), "-o", str(tmp_path / "o1"), "--dtype", "int8"], "onnxruntime or tensorrt backend"),
    ]
    (tmp_path / "empty").mkdir()
    cases.append(
        (
            [
                "export",
                "onnx",
                "--model",
                str(tiny_dir),
                "-o",
                str(tmp_path / "f"),
                "--dtype",
                "int8",
                "--calibrate",
                str(tmp_path / "empty"),
            ],
            "no readable photo",
        )
    )
    for argv, message in cases:
        assert main(argv) == 2, argv
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], (argv, lines)
        assert not any(Path(argv[argv.index("-o") + 1]).parent.glob("*/*.onnx"))


def test_serving_int8_without_an_export_says_how_to_make_one(tmp_path, capsys):
    assert main(["model", "init", "--preset", "tiny", "-o", tmp_path / "m"]) == 0
    photo = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()[::8, ::8]).save(photo)
    argv = ["sr", str(photo), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "m")]
    assert main([*argv, "--backend", "onnxruntime", "--dtype", "int8"]) == 2
    line = capsys.readouterr().err.strip()
    assert "no int8 export of this model yet" in line and "--calibrate PHOTOS" in line and "\n" not in line
    hint = shlex.split(line.split("`")[1])  # the command it names parses as this version's CLI
    assert hint[:3] == ["flowsr", "export", "onnx"] and build_parser().parse_args(hint[1:]).model == str(tmp_path / "m")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
