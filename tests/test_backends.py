"""Backends behind one interface: compile and onnxruntime give the torch backend's image; tensorrt says when it
cannot run. (The degradation model's backends: tests/test_degrade_cli.py.)"""

import contextlib
import importlib.util
import io
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import varied_tiny
from PIL import Image

from flowsr.core.content_hash import content_sha256
from flowsr.core.sr_model import OneStepSR
from flowsr.export.onnx_export import onnx_dir_for
from flowsr.export.onnxruntime_graph import OnnxGraph, OnnxRuntimeUnavailable, providers_for
from flowsr.export.spec import SPEC_FILE, SR, read_spec
from flowsr.export.verify import psnr, reference_photo
from flowsr.runtime.cli import main
from flowsr.runtime.devices import DeviceError
from flowsr.runtime.super_resolver import SuperResolver

MIN_PSNR_DB = 50.0  # any backend vs eager torch, float32, through SuperResolver
HAVE_TENSORRT = torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model directory with its four runtime graphs exported by `flowsr export onnx` (and what the command
    printed). Its estimator reads a strength off each image and its velocity depends on the start time that picks,
    so a backend that got either wrong would give another image."""
    path = tmp_path_factory.mktemp("models") / "tiny"
    varied_tiny().save_pretrained(path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", "onnx", "--model", str(path), "--graphs", ",".join(SR.runtime_graphs)]) == 0
    return path, printed.getvalue().splitlines()


@pytest.fixture(scope="module")
def model_dir(exported):
    return exported[0]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Exports made on first use go to this test's own cache folder."""
    monkeypatch.setenv("FLOWSR_CACHE", str(tmp_path / "cache"))


def upscale(model_dir, backend, lr, **settings):
    return SuperResolver(model_dir, backend=backend, device="cpu", dtype="float32", **settings).upscale_tensor(lr)


def test_export_command_prints_its_verification(exported):
    path, lines = exported
    spec = read_spec(path / "onnx" / "float32")
    assert set(spec["graphs"]) == set(SR.runtime_graphs) and len(lines) == len(SR.runtime_graphs)
    for name, line in zip(SR.runtime_graphs, lines, strict=True):
        assert line.startswith(f"{path / 'onnx' / 'float32' / name}.onnx: onnxruntime vs torch ")
        recorded = spec["graphs"][name]["verification"]["psnr_db"]
        assert recorded >= 50 and f" vs torch {recorded:.1f} dB PSNR (>= 50)" in line


@pytest.mark.parametrize(
    "settings", [{"tile": 0, "vae_tile": 0}, {"tile": 128, "overlap": 32, "vae_tile": 256}], ids=["whole", "tiled"]
)
def test_onnxruntime_matches_torch(model_dir, settings):
    """With the strength read off each image (auto): onnxruntime runs the exported estimator too, and every start
    time it picks gives the torch backend's image."""
    lr = reference_photo(2, 48, 72)  # x4: 192x288 output, several tiles in the tiled run
    lr[1] = reference_photo(1, 96, 144)[0, :, 24:72, 36:108]  # another picture: another strength
    resolver = SuperResolver(model_dir, backend="onnxruntime", device="cpu", dtype="float32", **settings)
    assert resolver.backend.folder == model_dir / "onnx" / "float32"  # the directory's own export, no re-export
    assert resolver.strength == "auto" and isinstance(resolver.backend.graphs["estimator"], OnnxGraph)
    eager = SuperResolver(model_dir, backend="torch", device="cpu", dtype="float32", **settings)
    strength = resolver.strength_of(lr)
    torch.testing.assert_close(strength, eager.strength_of(lr), atol=1e-5, rtol=0)
    assert (strength[0] - strength[1]).abs() > 0.01
    assert psnr(eager.upscale_tensor(lr), resolver.upscale_tensor(lr)) >= MIN_PSNR_DB


def test_sr_command_with_onnxruntime_backend(model_dir, tmp_path, capsys):
    photo = (reference_photo(1, 40, 56)[0].permute(1, 2, 0).numpy() + 1) * 127.5
    Image.fromarray(photo.round().astype(np.uint8)).save(tmp_path / "photo.png")
    for backend in ("torch", "onnxruntime"):
        argv = [
            "sr",
            str(tmp_path / "photo.png"),
            "-o",
            str(tmp_path / backend),
            "--model",
            str(model_dir),
            "--backend",
            backend,
            "--device",
            "cpu",
        ]
        assert main(argv) == 0
    eager, onnx = (
        np.asarray(Image.open(tmp_path / backend / "photo.png")).astype(int) for backend in ("torch", "onnxruntime")
    )
    assert eager.shape == onnx.shape == (160, 224, 3)
    assert np.abs(eager - onnx).max() <= 1  # 8-bit rounding is the only difference
    assert not (tmp_path / "cache").exists()


def test_first_use_export_goes_to_the_cache_keyed_by_content(model_dir, tmp_path):
    model = OneStepSR.from_pretrained(model_dir)
    with torch.no_grad():
        # other weights (the PatchAutoencoder's 1x1 encoder): the directory's export does not apply
        model.vae.encoder.bias.add_(0.1)
    digest = content_sha256(model)
    folder = onnx_dir_for(model, torch.float32, graphs=("encoder",), model_dir=model_dir)
    assert folder == tmp_path / "cache" / "onnx" / f"sr-{digest[:16]}-float32-opset20"
    assert read_spec(folder)["content_sha256"] == digest
    written = (folder / SPEC_FILE).stat().st_mtime_ns
    model = OneStepSR.from_pretrained(model_dir)
    with torch.no_grad():
        model.vae.encoder.bias.add_(0.1)
    assert onnx_dir_for(model, torch.float32, graphs=("encoder",)) == folder  # found again, not re-exported
    assert (folder / SPEC_FILE).stat().st_mtime_ns == written
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging folders left behind


def test_the_manifest_digest_finds_the_export_without_reading_weights(model_dir, tmp_path, monkeypatch):
    """A loaded model directory names its export by the digest saved with it: no weight is hashed again."""
    from flowsr.core import content_hash

    model = OneStepSR.from_pretrained(model_dir)
    manifest = model.manifest
    expected = content_sha256(model)
    assert content_sha256(model, manifest.weights_sha256) == expected  # the saved digest is of these weights

    def no_hashing(module):
        raise AssertionError("weights were hashed again")

    monkeypatch.setattr(content_hash, "weights_sha256", no_hashing)
    resolver = SuperResolver(model_dir, backend="onnxruntime", device="cpu", dtype="float32")
    assert read_spec(resolver.backend.folder)["content_sha256"] == expected
    assert not (tmp_path / "cache").exists()


def test_serving_an_existing_export_needs_no_onnx_package(model_dir):
    """Only the exporter needs onnx and onnxscript: with them blocked, the directory's export still runs."""
    script = (
        "import sys; sys.modules['onnx'] = sys.modules['onnxscript'] = None\n"
        "import torch\n"
        "from flowsr.runtime.super_resolver import SuperResolver\n"
        f"sr = SuperResolver({str(model_dir)!r}, backend='onnxruntime', device='cpu', dtype='float32')\n"
        "print(tuple(sr.upscale_tensor(torch.zeros(1, 3, 16, 16)).shape), "
        "'onnx' in sys.modules and sys.modules['onnx'] is not None)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["(1,", "3,", "64,", "64)", "False"]


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="the error path is for a CPU-only onnxruntime"
)
@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has the CUDA provider"
)
def test_onnxruntime_on_cuda_needs_the_cuda_provider():
    with pytest.raises(OnnxRuntimeUnavailable, match="no CUDAExecutionProvider"):
        providers_for(torch.device("cuda"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error path is for machines without CUDA")
def test_onnxruntime_on_a_missing_cuda_device_is_refused_before_export(model_dir, tmp_path):
    with pytest.raises(DeviceError, match="no CUDA device"):
        SuperResolver(model_dir, backend="onnxruntime", device=torch.device("cuda"), dtype="float32")
    assert not (tmp_path / "cache").exists()  # refused before exporting anything


@pytest.mark.skipif(HAVE_TENSORRT, reason="the error path is for machines without TensorRT or a GPU")
def test_tensorrt_without_gpu_is_one_clear_line(model_dir, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photo)
    assert (
        main(["sr", str(photo), "-o", str(tmp_path / "out"), "--model", str(model_dir), "--backend", "tensorrt"]) == 2
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flowsr: error")]
    assert len(lines) == 1 and ("GPU" in lines[0] or "not installed" in lines[0])


@pytest.mark.slow
def test_compile_matches_torch_and_reuses_its_graphs(model_dir):
    """Inductor on CPU; with fixed tiles, a second image of another size compiles nothing new."""
    from torch._dynamo.utils import counters

    settings = {"scale": 2, "tile": 64, "overlap": 32, "vae_tile": 64}
    resolver = SuperResolver(model_dir, backend="compile", device="cpu", dtype="float32", **settings)
    first = reference_photo(1, 48, 64)
    assert psnr(upscale(model_dir, "torch", first, **settings), resolver.upscale_tensor(first)) >= MIN_PSNR_DB
    compiled = counters["stats"]["unique_graphs"]
    second = reference_photo(1, 64, 40)
    assert psnr(upscale(model_dir, "torch", second, **settings), resolver.upscale_tensor(second)) >= MIN_PSNR_DB
    assert counters["stats"]["unique_graphs"] == compiled
