"""End-to-end graphs (uint8 pixels in, uint8 pixels out) give the pixels the CLI writes: the shipped models,
exported by `flowsr export onnx --end-to-end`, run in onnxruntime on real photos against `flowsr sr` and
`flowsr degrade` (untiled) on the same photos."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import varied_tiny
from onnx import numpy_helper
from PIL import Image
from skimage import data, transform

from flowsr.export.onnx_export import export_onnx
from flowsr.export.spec import SPEC_FILE, SR
from flowsr.export.tensorrt_engine import profile_shapes
from flowsr.runtime.cli import main
from flowsr.runtime.default_models import DEFAULT_DEGRADATION_MODEL, DEFAULT_SR_MODEL
from flowsr.runtime.pair_dataset import output_paths
from flowsr.runtime.super_resolver import SuperResolver

MIN_PSNR_DB = 45.0  # on uint8 outputs; one level off on every pixel would be 48.1 dB
PHOTOS = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea}


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    mse = np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def write_photos(folder, height: int, width: int) -> dict[str, np.ndarray]:
    """The photos at an odd size (so the graphs pad and crop), as PNG files and as arrays."""
    folder.mkdir()
    photos = {}
    for name, load in PHOTOS.items():
        photo = (transform.resize(load(), (height, width), anti_aliasing=True) * 255).round().astype(np.uint8)
        Image.fromarray(photo).save(folder / f"{name}.png")
        photos[name] = photo
    return photos


def export_end_to_end(model_dir, out, *extra) -> dict:
    assert main(["export", "onnx", "--model", model_dir, "-o", out, "--end-to-end", *extra]) == 0
    return json.loads((out / SPEC_FILE).read_text())


@pytest.mark.slow
def test_sr_graph_gives_the_pixels_of_flowsr_sr(tmp_path):
    """The default model (one plain model directory, no parts to pick), exported end to end, gives what `flowsr sr`
    writes."""
    spec = export_end_to_end(DEFAULT_SR_MODEL, tmp_path / "onnx", "--scale", "4")
    graph = spec["graphs"]["end_to_end"]
    assert spec["scale"] == 4 and graph["inputs"][0]["shape"] == ["batch", "height", "width", 3]
    assert graph["output"] == {"name": "sr", "dtype": "uint8", "shape": ["batch", "4*height", "4*width", 3]}
    assert graph["verification"]["psnr_db"] >= MIN_PSNR_DB
    assert profile_shapes(graph) == {"lr": {"min": [1, 16, 16, 3], "opt": [1, 256, 256, 3], "max": [4, 512, 512, 3]}}
    photos = write_photos(tmp_path / "photos", 61, 87)
    assert (
        main(["sr", tmp_path / "photos", "-o", tmp_path / "sr", "--tile", "0", "--vae-tile", "0", "--device", "cpu"])
        == 0
    )
    session = ort.InferenceSession(str(tmp_path / "onnx" / graph["file"]), providers=["CPUExecutionProvider"])
    for name, photo in photos.items():
        (got,) = session.run(None, {"lr": photo[None]})[0]
        expected = np.asarray(Image.open(tmp_path / "sr" / f"{name}.png"))
        assert got.shape == expected.shape == (244, 348, 3) and got.dtype == np.uint8
        assert psnr(expected, got) >= MIN_PSNR_DB, name


def test_sr_graph_starts_each_image_at_the_time_its_estimator_reads(tmp_path):
    """A tiny model whose estimator reads a strength off each image and whose velocity depends on the start time
    that picks: its x2 graph gives SuperResolver's pixels (strength auto, untiled); with the graph's estimator weights
    changed (strength 0 for every image) it gives other pixels, SuperResolver's at strength 0."""
    model = varied_tiny()
    spec = export_onnx(model, tmp_path / "onnx", graphs=("end_to_end",), scale=2)
    assert spec["graphs"]["end_to_end"]["verification"]["psnr_db"] >= MIN_PSNR_DB
    photos = write_photos(tmp_path / "photos", 29, 43)
    proto = onnx.load(tmp_path / "onnx" / "end_to_end.onnx")
    outputs = {}
    for strength in ("auto", 0.0):
        if strength == 0.0:
            (bias,) = [  # the estimator's last layer's: one logit
                tensor
                for tensor in proto.graph.initializer
                if "estimator.head" in tensor.name and tensor.name.endswith("bias") and list(tensor.dims) == [1]
            ]
            bias.CopyFrom(numpy_helper.from_array(np.full((1,), -30.0, np.float32), bias.name))  # sigmoid(-30) = 0
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs[strength] = session.run(None, {"lr": np.stack(list(photos.values()))})[0]
        resolver = SuperResolver(model, scale=2, tile=0, vae_tile=0, device="cpu", strength=strength)
        for got, expected in zip(outputs[strength], resolver(list(photos.values())), strict=True):
            assert got.shape == expected.shape == (58, 86, 3)
            assert psnr(expected, got) >= MIN_PSNR_DB, strength
    assert all(psnr(read, clean) < 35 for read, clean in zip(outputs["auto"], outputs[0.0], strict=True))


@pytest.mark.slow
def test_degradation_graph_gives_the_pixels_of_flowsr_degrade(tmp_path):
    spec = export_end_to_end(DEFAULT_DEGRADATION_MODEL, tmp_path / "onnx")
    graph = spec["graphs"]["end_to_end"]
    assert [tensor["name"] for tensor in graph["inputs"]] == ["hr", "scale"] and graph["output"]["dtype"] == "uint8"
    assert graph["verification"]["psnr_db"] >= MIN_PSNR_DB
    photos = write_photos(tmp_path / "photos", 100, 141)
    scales = [2.0, 3.3]
    assert (
        main(
            [
                "degrade",
                tmp_path / "photos",
                "-o",
                tmp_path / "lr",
                "--scale",
                "2,3.3",
                "--tile",
                "0",
                "--device",
                "cpu",
                "--no-noise",
            ]
        )
        == 0
    )
    session = ort.InferenceSession(str(tmp_path / "onnx" / graph["file"]), providers=["CPUExecutionProvider"])
    for name, photo in photos.items():
        got = session.run(None, {"hr": np.stack([photo] * len(scales)), "scale": np.array(scales, np.float32)})[0]
        for scale, degraded in zip(scales, got, strict=True):
            expected = np.asarray(Image.open(output_paths(tmp_path / "lr", name, scale)[1]))
            assert degraded.shape == expected.shape == photo.shape
            assert psnr(expected, degraded) >= MIN_PSNR_DB, (name, scale)


def test_end_to_end_options_are_checked_in_one_line(tmp_path, capsys):
    assert (
        main(["export", "onnx", "--model", DEFAULT_SR_MODEL, "-o", tmp_path / "a", "--end-to-end", "--scale", "2.5"])
        == 2
    )
    assert (
        main(["export", "onnx", "--model", DEFAULT_SR_MODEL, "-o", tmp_path / "b", "--end-to-end", "--graphs", "sr"])
        == 2
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 2 and "whole scale" in lines[0] and "exclude each other" in lines[1]
    assert not any(tmp_path.iterdir())
    assert SR.end_to_end.name not in SR.graphs  # stage exports never include it by default
