"""TensorRT engines and backend: built from the ONNX export, cached, CUDA graphs per shape; a clear line without a
GPU."""

import importlib.util

import pytest
import torch

from flowsr.core.degradation_model import DegradationModel
from flowsr.core.sr_model import OneStepSR
from flowsr.export.spec import engine_cache_dir
from flowsr.export.verify import psnr, psnr_pixels, reference_photo
from flowsr.runtime.cli import main

HAVE_TENSORRT = torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(
    not HAVE_TENSORRT,
    reason="TensorRT engines need an NVIDIA GPU and the tensorrt package (pip install 'flowsr[gpu]'); "
    "neither is required elsewhere",
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = OneStepSR.from_preset("tiny")
    return model.save_pretrained(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """One cache for the module's engines, so each is built once."""
    monkeypatch.setenv("FLOWSR_CACHE", str(tmp_path_factory.getbasetemp() / "tensorrt-test-cache"))


@pytest.mark.skipif(HAVE_TENSORRT, reason="the error path is for machines without TensorRT or a GPU")
def test_export_trt_without_tensorrt_is_one_clear_line(model_dir, capsys):
    assert main(["export", "trt", "--model", str(model_dir)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert (
        len(lines) == 1
        and lines[0].startswith("flowsr: error: TensorRT")
        and ("GPU" in lines[0] or "not installed" in lines[0])
    )


@needs_tensorrt
def test_export_trt_builds_cached_engines_and_a_timing_cache(model_dir, tmp_path_factory, capsys):
    assert main(["export", "trt", "--model", str(model_dir), "--dtype", "float32"]) == 0
    engines = sorted(engine_cache_dir().glob("*.engine"))
    assert [e.name.split("-")[:2] for e in engines] == [
        ["sr", "decoder"],
        ["sr", "encoder"],
        ["sr", "estimator"],
        ["sr", "transformer"],
    ]
    assert list(engine_cache_dir().glob("timing-*.cache"))
    built = {e: e.stat().st_mtime_ns for e in engines}
    assert main(["export", "trt", "--model", str(model_dir), "--dtype", "float32"]) == 0  # cached: nothing is rebuilt
    assert {e: e.stat().st_mtime_ns for e in engines} == built


@needs_tensorrt
@pytest.mark.parametrize("dtype,min_psnr", [("float32", 50.0), ("float16", 35.0)])
def test_tensorrt_backend_matches_torch_tiled(model_dir, dtype, min_psnr):
    from flowsr.runtime.super_resolver import SuperResolver

    settings = {"device": "cuda", "dtype": dtype, "tile": 128, "overlap": 32, "vae_tile": 256}
    lr = reference_photo(2, 48, 72).cuda()
    expected = SuperResolver(model_dir, backend="torch", **settings).upscale_tensor(lr)
    assert psnr(expected, SuperResolver(model_dir, backend="tensorrt", **settings).upscale_tensor(lr)) >= min_psnr


@needs_tensorrt
def test_cuda_graphs_replay_per_shape(model_dir):
    """Alternating shapes replays each shape's graph with its own bindings: same results as the first calls."""
    from flowsr.runtime.backend_tensorrt import tensorrt_backend

    model = OneStepSR.from_pretrained(model_dir)
    encode = tensorrt_backend(model, torch.device("cuda"), torch.float32).graphs["encoder"]
    a, b = reference_photo(1, 64, 64).cuda(), reference_photo(2, 96, 64).cuda()
    first_a, first_b = encode(a), encode(b)
    assert torch.equal(encode(a), first_a) and torch.equal(encode(b), first_b)
    assert len(encode.graphs) == 2
    with pytest.raises(RuntimeError, match="outside the engine's profile"):
        encode(reference_photo(5, 64, 64).cuda())  # the profile's largest batch is 4


@needs_tensorrt
def test_degrader_on_tensorrt_matches_torch(tmp_path):
    """The degradation model's two-input graph (hr, r) through the same engine path."""
    import numpy as np
    from skimage import data

    from flowsr.runtime.degrader import Degrader

    model = DegradationModel.from_preset("tiny")
    with torch.no_grad():
        for parameter in model.rae.to_image[-1].parameters():
            parameter.normal_(std=0.05, generator=torch.Generator().manual_seed(0))
    photo = data.astronaut()[:64, :96]
    eager = Degrader(model, device="cuda", backend="torch")(photo, [1.5, 3.3])
    engine = Degrader(model, device="cuda", backend="tensorrt")(photo, [1.5, 3.3])
    for a, b in zip(eager, engine, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


@needs_tensorrt
def test_int8_engine_of_the_default_models_qdq_export_is_close_to_float32(capsys):
    """`export trt --dtype int8` builds explicitly quantized engines from the shipped QDQ export (onnx/int8), and
    the tensorrt backend serves them: on a photo, within the int8 export's own bound of torch float32."""
    from skimage import data

    from flowsr.runtime.default_models import DEFAULT_SR_MODEL
    from flowsr.runtime.super_resolver import SuperResolver

    assert main(["export", "trt", "--model", DEFAULT_SR_MODEL, "--dtype", "int8"]) == 0
    assert str(DEFAULT_SR_MODEL / "onnx" / "int8") in capsys.readouterr().out
    assert {e.name.split("-")[2] for e in engine_cache_dir().glob("sr-*.engine")} >= {"int8"}
    photo = data.coffee()[::4, ::4][:96, :128]
    settings = {"device": "cuda", "tile": 0, "vae_tile": 0}
    reference = SuperResolver(dtype="float32", **settings)(photo)
    int8 = SuperResolver(backend="tensorrt", dtype="int8", **settings)(photo)
    assert psnr_pixels(reference, int8) >= 35


@pytest.mark.skipif(HAVE_TENSORRT, reason="the error path is for machines without TensorRT or a GPU")
def test_export_trt_int8_without_tensorrt_is_one_clear_line(capsys):
    from flowsr.runtime.default_models import DEFAULT_SR_MODEL

    assert main(["export", "trt", "--model", DEFAULT_SR_MODEL, "--dtype", "int8"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("flowsr: error: TensorRT")
