"""INT8 exports (QDQ): the velocity graph quantized with photos, served by onnxruntime; refused in one line where
they do not apply."""

import json
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import varied_tiny
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from flowsr.export.quantize import calibration_inputs, calibration_photos
from flowsr.export.verify import psnr
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
    """A tiny model whose velocity is not zero and depends on t (its output and time layers start at zero), with an
    estimator and start times per strength, so quantization shows and the transformer's second input matters."""
    folder = tmp_path_factory.mktemp("tiny") / "m"
    varied_tiny().save_pretrained(folder)
    return folder


def test_calibration_covers_the_start_times_the_model_serves(calibration):
    """Every photo's latent with a start time: its estimated strength's, or, for every second photo, the time of
    the clean or the heavy end, in turn."""
    model = varied_tiny()
    photos = calibration_photos(calibration)
    samples = calibration_inputs(model, photos)
    assert len(samples) == len(photos) == 4 and all(set(sample) == {"latent", "t"} for sample in samples)
    with torch.no_grad():
        for index in (0, 2):
            lr = torch.from_numpy(photos[index]).permute(2, 0, 1)[None].float() / 127.5 - 1
            expected = model.start_time(model.estimate_strength(lr))
            np.testing.assert_allclose(samples[index]["t"], expected.numpy(), atol=1e-6)
    assert [sample["t"].tolist() for sample in samples[1::2]] == [[pytest.approx(0.95)], [pytest.approx(0.05)]]
    for sample, photo in zip(samples, photos, strict=True):
        assert sample["t"].dtype == np.float32 and sample["latent"].dtype == np.float32
        assert sample["latent"].shape == (1, 12, 2 * photo.shape[0], 2 * photo.shape[1])  # x4, 2x2 patches


def test_int8_export_quantizes_the_inner_convolutions_and_verifies(tiny_dir, calibration, capsys):
    assert main(["export", "onnx", "--model", tiny_dir, "--dtype", "int8", "--calibrate", calibration]) == 0
    folder = tiny_dir / "onnx" / "int8"
    document = json.loads((folder / "export.json").read_text())
    assert sorted(document["graphs"]) == ["decoder", "encoder", "estimator", "transformer"]
    assert document["quantization"]["graphs"] == ["transformer"] and document["quantization"]["calibration_photos"] == 4
    assert document["graphs"]["transformer"]["verification"]["min_psnr_db"] == 35
    assert document["graphs"]["encoder"]["verification"]["min_psnr_db"] == 50  # float graphs keep float's bar
    assert document["graphs"]["estimator"]["verification"]["min_psnr_db"] == 50
    assert not any(node.op_type == "DequantizeLinear" for node in onnx.load(folder / "estimator.onnx").graph.node)
    graph = onnx.load(folder / "transformer.onnx").graph
    # the latent and the start time in, both float32 (only the inner convolutions are int8)
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [
        ("latent", onnx.TensorProto.FLOAT),
        ("t", onnx.TensorProto.FLOAT),
    ]
    produced_by = {output: node for node in graph.node for output in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    quantized = [conv for conv in convs if getattr(produced_by.get(conv.input[1]), "op_type", "") == "DequantizeLinear"]
    assert len(quantized) == len(convs) - 2  # the first and the last stay float
    assert convs[0] not in quantized and convs[-1] not in quantized
    assert all(node.domain in ("", "ai.onnx") for node in graph.node)  # plain ONNX: TensorRT takes QDQ as INT8
    assert "QDQ" not in capsys.readouterr().err
    # served: the int8 graphs give about the float32 image, at the start time each image's strength picks
    lr = torch.from_numpy(data.astronaut()[::8, ::8][:40, :56].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    int8 = SuperResolver(tiny_dir, backend="onnxruntime", dtype="int8", device="cpu", tile=0, vae_tile=0)
    assert int8.backend.folder == folder
    reference = SuperResolver(tiny_dir, device="cpu", dtype="float32", tile=0, vae_tile=0)
    assert psnr(reference.upscale_tensor(lr), int8.upscale_tensor(lr)) > 35


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
