"""ONNX export of both models by one exporter: whole graph and stages, dynamic batch/size, spec file,
fp32/fp16/bf16, onnxruntime vs torch."""

import json

import onnx
import pytest
import torch
from conftest import START_TIMES, varied_tiny

from flowsr.core.content_hash import content_sha256, weights_sha256
from flowsr.core.degradation_model import DegradationModel
from flowsr.core.sr_model import OneStepSR
from flowsr.export.onnx_export import export_onnx, file_sha256
from flowsr.export.onnxruntime_graph import OnnxGraph, OnnxRuntimeUnavailable
from flowsr.export.spec import DEGRADATION, MIN_PSNR_DB, SPEC_FILE, SR, ExportError, geometry_of
from flowsr.export.tensorrt_engine import profile_shapes
from flowsr.export.verify import pipeline_inputs, psnr, reference_photo
from flowsr.runtime.cli import main

PARTS = SR.graphs

# Sizes the export never saw (it traces at batch 2, 64x96 and verifies at 128x128 and 96x160).
CHECK_SIZES = ((3, 80, 112), (1, 144, 64))


def stage_input(model, graph, batch, height, width):
    """The input a graph gets in the pipeline, computed by torch from the reference photo, written out per graph:
    start times (and the degrader's target times) spread over those the model serves."""
    image = reference_photo(batch, height, width).to(next(model.parameters()).dtype)
    t = model.served_times(batch)
    if graph.name in ("encoder", "estimator"):
        return [image]
    if graph.name in ("sr", "degrader"):
        return [image, t]
    latent = model.encode(image)
    return [latent, t] if graph.name == "transformer" else [model.restore(latent, t)]


def onnxruntime_psnr(model, folder, name, sizes=CHECK_SIZES, spec=SR):
    """Worst PSNR of onnxruntime vs torch over `sizes`, on inputs independent of the export's own check."""
    graph = spec.graphs[name]
    dtype = next(model.parameters()).dtype
    session = OnnxGraph(folder / f"{name}.onnx", graph, geometry_of(model), torch.device("cpu"), dtype)
    worst = float("inf")
    with torch.inference_mode():
        for size in sizes:
            inputs = stage_input(model, graph, *size)
            expected = getattr(model, graph.method)(*inputs)
            got = session(*inputs)
            assert got.shape == expected.shape
            worst = min(worst, psnr(expected, got))
    return worst


@pytest.mark.parametrize("name", list(PARTS))
def test_pipeline_inputs_are_what_each_stage_gets(name):
    """The verification's inputs, found by following the spec's tensor names, equal the hand-written pipeline."""
    model = OneStepSR.from_preset("tiny")
    image = reference_photo(2, 64, 96)
    with torch.inference_mode():
        expected = stage_input(model, PARTS[name], 2, 64, 96)
        got = pipeline_inputs(model, PARTS[name], image)
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny preset exported in float32, all its graphs; its velocity depends on t and its estimator on the
    image (`varied_tiny`), so a graph that lost either input would not verify."""
    model = varied_tiny()
    manifest = model.manifest
    folder = tmp_path_factory.mktemp("onnx") / "tiny-float32"
    spec = export_onnx(model, folder)
    return model, manifest, folder, spec


@pytest.mark.parametrize("name", list(PARTS))
def test_float32_parts_match_torch_at_new_sizes(tiny, name):
    model, _, folder, spec = tiny
    assert spec["graphs"][name]["verification"]["psnr_db"] >= 50
    assert onnxruntime_psnr(model, folder, name) >= 50


def test_inputs_and_outputs_are_dynamic(tiny):
    model, _, folder, _ = tiny
    for name, part in PARTS.items():
        graph = onnx.load(folder / f"{name}.onnx", load_external_data=False).graph
        assert [i.name for i in graph.input] == [t.name for t in part.inputs] and [o.name for o in graph.output] == [
            part.output.name
        ]
        for tensor, value in zip((*part.inputs, part.output), (*graph.input, *graph.output), strict=True):
            dims = value.type.tensor_type.shape.dim
            if tensor.space == "time":  # a start time or a strength per image
                assert len(dims) == 1 and dims[0].dim_param, (name, tensor.name)
                assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
                continue
            assert all(dims[axis].dim_param for axis in (0, 2, 3)), (name, tensor.name)
            channels = 3 if tensor.space in ("image", "lr_image") else model.vae.config.latent_channels
            assert dims[1].dim_value == channels, (name, tensor.name)
        assert {node.domain for node in graph.node} <= {"", "ai.onnx"}  # plain ONNX ops only
        onnx.checker.check_model(str(folder / f"{name}.onnx"), full_check=True)


def test_spec_records_files_manifest_and_profiles(tiny):
    model, manifest, folder, spec = tiny
    assert json.loads((folder / SPEC_FILE).read_text()) == spec
    assert spec["content_sha256"] == content_sha256(varied_tiny())
    assert (
        spec["kind"] == "sr" and spec["manifest"]["preset"] == "tiny" and spec["manifest"]["t_star"] == manifest.t_star
    )
    assert spec["opset"] == 20 and spec["dtype"] == "float32"
    assert set(spec["files"]) == {p.name for p in folder.iterdir()} - {SPEC_FILE}
    for name, sha in spec["files"].items():
        assert file_sha256(folder / name) == sha
    latent = model.vae.config.latent_channels
    (encoder,), (decoder,) = spec["graphs"]["encoder"]["inputs"], spec["graphs"]["decoder"]["inputs"]
    assert encoder["min"] == [1, 3, 16, 16] and encoder["max"] == [4, 3, 2048, 2048]
    # 2x2 patches: the latent of the 1024 px profile image is 512 px a side
    assert decoder["opt"] == [1, latent, 512, 512] and spec["graphs"]["decoder"]["output"]["shape"][1] == 3
    assert spec["graphs"]["transformer"]["inputs"][0]["shape"] == ["batch", latent, "2*height", "2*width"]
    assert (
        spec["graphs"]["transformer"]["inputs"][1]
        == spec["graphs"]["sr"]["inputs"][1]
        == {
            "name": "t",
            "dtype": "float32",
            "shape": ["batch"],
            "min": [1],
            "opt": [1],
            "max": [4],
        }
    )
    # the estimator takes the LR image as it comes: any sides in the profile, no stride
    (lr,), strength = spec["graphs"]["estimator"]["inputs"], spec["graphs"]["estimator"]["output"]
    assert (
        lr["shape"] == ["batch", 3, "height", "width"] and lr["min"] == [1, 3, 16, 16] and lr["max"][2:] == [2048] * 2
    )
    assert strength == {"name": "strength", "dtype": "float32", "shape": ["batch"]}
    assert spec["manifest"]["start_times"] == START_TIMES


def test_the_transformer_graph_restores_each_image_from_its_own_t(tiny):
    """t is a graph input, one per image, not a constant of the trace: other times give torch's other result."""
    model, _, folder, _ = tiny
    session = OnnxGraph(
        folder / "transformer.onnx", PARTS["transformer"], geometry_of(model), torch.device("cpu"), torch.float32
    )
    with torch.inference_mode():
        latent = model.encode(reference_photo(3, 48, 80))
        results = []
        for t in (torch.tensor([0.05, 0.5, 0.95]), torch.tensor([0.95, 0.05, 0.5])):
            expected = model.restore(latent, t)
            got = session(latent, t)
            assert psnr(expected, got) >= 50
            results.append(got)
    assert all((results[0][index] - results[1][index]).abs().max() > 1e-2 for index in range(3))


def test_the_estimator_graph_reads_lr_images_of_any_size(tiny):
    """Odd sides, sides under and over the estimator's crop (64 px for tiny), sides too short to cross a JPEG block
    border: onnxruntime's strength is torch's, finite."""
    model, _, folder, _ = tiny
    session = OnnxGraph(
        folder / "estimator.onnx", PARTS["estimator"], geometry_of(model), torch.device("cpu"), torch.float32
    )
    strengths = []
    with torch.inference_mode():
        for batch, height, width in ((2, 37, 53), (1, 17, 301), (3, 90, 70), (1, 6, 8)):  # 6x8: no JPEG grid
            lr = reference_photo(batch, height, width)
            expected, got = model.estimate_strength(lr), session(lr)
            assert got.shape == (batch,) and got.dtype == torch.float32
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
            strengths += got.tolist()
    assert max(strengths) - min(strengths) > 0.05  # the strength depends on the image


def test_existing_output_is_kept_and_failed_export_leaves_nothing(tiny, tmp_path, monkeypatch):
    model, _, folder, spec = tiny
    with pytest.raises(ExportError, match="already exists"):
        export_onnx(model, folder)
    assert json.loads((folder / SPEC_FILE).read_text()) == spec
    monkeypatch.setitem(MIN_PSNR_DB, "float32", 1000.0)  # no export can pass: verification fails
    with pytest.raises(ExportError, match="differs from torch"):
        export_onnx(OneStepSR.from_preset("tiny"), tmp_path / "out", graphs=("encoder",))
    assert list(tmp_path.iterdir()) == []  # neither the target nor a staging folder


@pytest.mark.parametrize(
    "args,message",
    [
        (["--graphs", "vae"], "unknown graph"),
        (["--dtype", "bfloat16", "--opset", "20"], "bfloat16 needs --opset 22"),
        (["--opset", "9"], "opset 9 is not supported"),
    ],
)
def test_cli_bad_options_are_one_line(tmp_path, capsys, args, message):
    model = OneStepSR.from_preset("tiny")
    model.save_pretrained(tmp_path / "model")
    assert main(["export", "onnx", "--model", str(tmp_path / "model"), *args]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "model" / "onnx").exists()


def test_cli_refuses_missing_model_and_existing_output(tiny, tmp_path, capsys):
    model, manifest = tiny[:2]
    model.save_pretrained(tmp_path / "model")
    assert main(["export", "onnx", "--model", str(tmp_path / "nothing")]) == 2
    assert main(["export", "onnx", "--model", str(tmp_path / "model"), "-o", str(tiny[2])]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "does not exist" in lines[0] and "already exists" in lines[1]


@pytest.fixture(scope="module")
def tiny_float16(tmp_path_factory):
    model = OneStepSR.from_preset("tiny")
    folder = tmp_path_factory.mktemp("onnx") / "tiny-float16"
    return model, folder, export_onnx(model, folder, dtype=torch.float16, graphs=("sr",))


def test_float16_runs_in_onnxruntime_and_matches_torch(tiny_float16):
    model, folder, spec = tiny_float16
    assert next(model.parameters()).dtype == torch.float16 and spec["opset"] == 20
    graph = onnx.load(folder / "sr.onnx").graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    # onnxruntime's CPU provider runs float16 nodes that lack a float16 kernel in float32 (inserted casts).
    assert spec["graphs"]["sr"]["verification"]["psnr_db"] >= MIN_PSNR_DB["float16"]
    assert onnxruntime_psnr(model, folder, "sr") >= MIN_PSNR_DB["float16"]


@pytest.fixture(scope="module")
def tiny_bfloat16(tmp_path_factory):
    """The encoder: its Conv and InstanceNormalization are what need opset 22 in bfloat16."""
    model = OneStepSR.from_preset("tiny")
    folder = tmp_path_factory.mktemp("onnx") / "tiny-bfloat16"
    return model, folder, export_onnx(model, folder, dtype=torch.bfloat16, graphs=("encoder",))


def test_bfloat16_export_is_valid_onnx_at_opset_22(tiny_bfloat16):
    _, folder, spec = tiny_bfloat16
    assert spec["opset"] == 22
    model = onnx.load(folder / "encoder.onnx")
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
    onnx.checker.check_model(model, full_check=True)  # Conv type-checks in bfloat16 from opset 22


def test_bfloat16_in_onnxruntime(tiny_bfloat16):
    model, folder, spec = tiny_bfloat16
    check = spec["graphs"]["encoder"]["verification"]
    if "skipped" in check:
        with pytest.raises(OnnxRuntimeUnavailable, match="bfloat16"):
            onnxruntime_psnr(model, folder, "encoder")
        pytest.skip(f"exported and checked, not run: {check['skipped']}")
    assert onnxruntime_psnr(model, folder, "encoder") >= MIN_PSNR_DB["bfloat16"]


@pytest.mark.slow
def test_small_preset_transformer(tmp_path):
    """The shipped size: 12 latent channels at 1/2 size (the lossless 2x2 PatchAutoencoder), a convolutional velocity
    network on 2x2 latent tokens, stride 4."""
    model = OneStepSR.from_preset("small")
    spec = export_onnx(model, tmp_path / "small", graphs=("transformer",))
    assert spec["graphs"]["transformer"]["verification"]["psnr_db"] >= 50
    assert spec["geometry"] == {"stride": 4, "latent_factor": 2, "latent_channels": 12, "latent_multiple": 2}
    assert onnxruntime_psnr(model, tmp_path / "small", "transformer", sizes=((2, 64, 80),)) >= 50


@pytest.fixture(scope="module")
def tiny_kl(tmp_path_factory):
    """The FLUX path in miniature (AutoencoderKL, FluxTransformer2DModel with its text conditioning), all four parts."""
    model = OneStepSR.from_preset("tiny-kl")
    folder = tmp_path_factory.mktemp("onnx") / "tiny-kl-float32"
    return model, folder, export_onnx(model, folder)


@pytest.mark.parametrize("name", list(PARTS))
def test_flux_parts_match_torch_at_new_sizes(tiny_kl, name):
    model, folder, spec = tiny_kl
    assert spec["geometry"] == {"stride": 16, "latent_factor": 8, "latent_channels": 4, "latent_multiple": 2}
    assert spec["graphs"][name]["verification"]["psnr_db"] >= 50
    assert onnxruntime_psnr(model, folder, name) >= 50


@pytest.fixture(scope="module")
def degradation(tmp_path_factory):
    """The tiny degradation model, its decoder perturbed so the output depends on the latent, as a directory."""
    model = DegradationModel.from_preset("tiny")
    with torch.no_grad():
        for parameter in model.rae.to_image[-1].parameters():
            parameter.normal_(std=0.05, generator=torch.Generator().manual_seed(0))
    return model.save_pretrained(tmp_path_factory.mktemp("models") / "degradation")


def test_degradation_model_exports_through_the_same_command(degradation, tmp_path, capsys):
    assert main(["export", "onnx", "--model", str(degradation), "-o", str(tmp_path / "onnx")]) == 0
    spec = json.loads((tmp_path / "onnx" / SPEC_FILE).read_text())
    assert spec["kind"] == "degradation" and list(spec["graphs"]) == ["degrader"]
    hr, r = spec["graphs"]["degrader"]["inputs"]
    assert hr["name"] == "hr" and hr["shape"][0] == "batch" and hr["max"] == [8, 3, 2048, 2048]
    assert r == {"name": "r", "dtype": "float32", "shape": ["batch"], "min": [1], "opt": [1], "max": [8]}
    # What `export trt` gives TensorRT's optimization profile: every input by name.
    assert profile_shapes(spec["graphs"]["degrader"]) == {
        "hr": {"min": [1, 3, 64, 64], "opt": [1, 3, 512, 512], "max": [8, 3, 2048, 2048]},
        "r": {"min": [1], "opt": [1], "max": [8]},
    }
    assert spec["graphs"]["degrader"]["verification"]["psnr_db"] >= 50
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'onnx' / 'degrader.onnx'}: onnxruntime vs torch ")
    model = DegradationModel.from_pretrained(degradation)
    manifest = model.manifest
    assert spec["content_sha256"] == content_sha256(model, manifest.weights_sha256)
    assert onnxruntime_psnr(model, tmp_path / "onnx", "degrader", spec=DEGRADATION) >= 50


def test_stored_weights_digest_is_the_weights_hash(degradation):
    """What `save` writes into the manifest is the hash of the weights it saved: exports found by it are of them."""
    model = DegradationModel.from_pretrained(degradation)
    manifest = model.manifest
    assert manifest.weights_sha256 == weights_sha256(model)
    with torch.no_grad():
        model.unet.conv_in.bias.add_(0.1)
    assert weights_sha256(model) != manifest.weights_sha256
