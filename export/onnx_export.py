"""ONNX export of either model, checked and verified against torch: one exporter for every graph of `export.spec`.

Each graph is traced with torch.onnx (dynamo) with dynamic batch, height and width, then checked (the opset
asked for, symbolic axes, plain ONNX ops only, the ONNX checker) and run with onnxruntime against torch on a
real photo at two sizes and batches. Folders are written atomically (built beside the target, then renamed):
a failed export leaves nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.export import Dim

from flowsr.core.atomic import atomic_directory
from flowsr.core.content_hash import content_sha256
from flowsr.core.latents import PATCH

from .onnxruntime_graph import OnnxGraph, OnnxRuntimeUnavailable
from .spec import (
    MIN_PSNR_DB,
    SPEC_FILE,
    SPEC_FORMAT,
    SPECS,
    ExportError,
    Geometry,
    Graph,
    ModelSpec,
    checked_opset,
    dtype_name,
    onnx_cache_dir,
    read_spec,
)

VERIFY_SIZES = ((1, 128, 128), (2, 96, 160))  # (batch, height, width) in image pixels: two sizes, two batches


def model_spec(model: nn.Module) -> ModelSpec:
    return SPECS[model.kind]


def geometry_of(model: nn.Module) -> Geometry:
    if model.kind == "sr":
        return Geometry(model.stride, model.stride // PATCH, model.vae.config.latent_channels, PATCH)
    return Geometry(model.stride)


class _Method(nn.Module):
    """A model method as a module's forward, so torch.onnx traces exactly what the runtime calls."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(*inputs)


def reference_photo(batch: int, height: int, width: int) -> torch.Tensor:
    """skimage's astronaut resized to height x width, in [-1, 1]; every other sample is its mirror image."""
    try:
        from skimage import data, transform
    except ImportError:
        raise ExportError("verifying an export needs scikit-image (pip install scikit-image)") from None
    photo = transform.resize(data.astronaut(), (height, width), anti_aliasing=True)
    image = torch.from_numpy(photo).permute(2, 0, 1).float() * 2 - 1
    return torch.stack([image.flip(-1) if index % 2 else image for index in range(batch)])


def psnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    """PSNR in dB with the reference's value range as the peak (2 for images in [-1, 1]); finite for equal tensors."""
    reference, test = reference.double().cpu(), test.double().cpu()
    mse = max((reference - test).pow(2).mean().item(), 1e-30)
    peak = (reference.max() - reference.min()).item()
    return float(10 * np.log10(peak**2 / mse))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def pipeline_inputs(model: nn.Module, graph: Graph, image: torch.Tensor) -> list[torch.Tensor]:
    """What `graph` gets in the model's pipeline for `image`: the image itself, target times spread over (0, 1],
    or the latent that the runtime graphs before it make of the image (computed by torch)."""
    spec = model_spec(model)
    values = {tensor.name: image for name in spec.runtime_graphs for tensor in spec.graphs[name].inputs if tensor.space == "image"}
    values.update({tensor.name: torch.linspace(0.2, 1.0, image.shape[0]) for tensor in graph.inputs if tensor.space == "time"})
    for name in spec.runtime_graphs:
        stage = spec.graphs[name]
        if all(tensor.name in values for tensor in graph.inputs):
            break
        if stage.output.name not in values:
            values[stage.output.name] = getattr(model, stage.method)(*(values[tensor.name] for tensor in stage.inputs))
    return [values[tensor.name] for tensor in graph.inputs]


def export_graph(model: nn.Module, graph: Graph, geometry: Geometry, path: Path, opset: int) -> None:
    """Trace one graph with torch.onnx (dynamo) and check the file: dynamic axes, plain ops, ONNX typing."""
    dtype = next(model.parameters()).dtype
    # Batch 2 and unequal sides, so that no axis is specialized to the example.
    example = [torch.randn(geometry.shape(t.space, 2, 4 * geometry.stride, 6 * geometry.stride), dtype=dtype) for t in graph.inputs]
    example = [torch.tensor([0.3, 0.9]) if t.space == "time" else x for t, x in zip(graph.inputs, example)]
    batch, height, width = Dim("batch"), Dim("height"), Dim("width")

    def axes(space: str) -> dict:
        if space == "time":
            return {0: batch}
        multiple = geometry.stride if space == "image" else geometry.latent_multiple
        return {0: batch, 2: multiple * height, 3: multiple * width}

    # The exporter's deprecation warnings and its notes on absent torchvision ops are not about this graph.
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    log_level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _Method(model, graph.method).eval(),
                tuple(example),
                dynamo=True,
                opset_version=opset,
                input_names=[t.name for t in graph.inputs],
                output_names=[graph.output.name],
                dynamic_shapes=(tuple(axes(t.space) for t in graph.inputs),),  # forward(*inputs): one entry, the tuple
                verbose=False,
            )
    except torch.onnx.errors.OnnxExporterError as err:
        raise ExportError(f"{graph.name}: torch.onnx could not export it: {str(err).strip().splitlines()[0]}") from None
    finally:
        registry_log.setLevel(log_level)
    program.save(path)  # weights go to `<file>.data` when they pass the protobuf size limit
    proto = onnx.load(path, load_external_data=False)
    produced = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    if produced != opset:
        raise ExportError(f"{graph.name}: torch.onnx could not convert the graph to opset {opset} (it stayed at {produced}); use 19 or 20")
    for tensor in (*proto.graph.input, *proto.graph.output):
        dims = tensor.type.tensor_type.shape.dim
        fixed = [axis for axis in (0, 2, 3) if axis < len(dims) and not dims[axis].dim_param]
        if fixed:
            raise ExportError(f"{graph.name}: {tensor.name} was exported with a fixed size {[d.dim_param or d.dim_value for d in dims]}")
    custom = sorted({f"{node.domain}::{node.op_type}" for node in proto.graph.node if node.domain not in ("", "ai.onnx")})
    if custom:
        raise ExportError(f"{graph.name}: the graph has non-standard ops {custom}; TensorRT and onnxruntime need plain ONNX ops")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{graph.name}: invalid ONNX at opset {opset}: {str(err).splitlines()[0]}") from None


def verify_graph(model: nn.Module, graph: Graph, geometry: Geometry, path: Path) -> dict:
    """Run the exported graph with onnxruntime (CPU) and torch on the reference photo at two sizes and batches.

    Returns the worst PSNR, or the reason onnxruntime's CPU provider cannot run the graph (bfloat16).
    """
    dtype = next(model.parameters()).dtype
    try:
        session = OnnxGraph(path, graph, geometry, torch.device("cpu"), dtype)
    except OnnxRuntimeUnavailable as err:
        return {"skipped": str(err)}
    worst, shapes = float("inf"), []
    with torch.inference_mode():
        for batch, height, width in VERIFY_SIZES:
            inputs = pipeline_inputs(model, graph, reference_photo(batch, height, width).to(dtype))
            expected = getattr(model, graph.method)(*inputs)
            worst = min(worst, psnr(expected, session(*inputs)))
            shapes.append("x".join(map(str, inputs[0].shape)))
    minimum = MIN_PSNR_DB[dtype_name(dtype)]
    if worst < minimum:
        raise ExportError(
            f"{graph.name}: onnxruntime differs from torch ({worst:.1f} dB < {minimum:g} dB on {', '.join(shapes)}); "
            "the export is not trustworthy, nothing was written"
        )
    return {"psnr_db": round(worst, 2), "min_psnr_db": minimum, "inputs": shapes, "provider": "CPUExecutionProvider"}


def export_onnx(
    model: nn.Module,
    out_dir: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    graphs: tuple[str, ...] | None = None,
    opset: int | None = None,
    manifest=None,
    weights_sha256: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Export, check and verify `graphs` (default all) of `model` into `out_dir` atomically; returns the spec written.

    `weights_sha256` is the manifest's digest of the stored weights (hashed now when not given). `model` is cast
    to `dtype` in place, on the CPU.
    """
    out_dir = Path(out_dir)
    spec, dtype = model_spec(model), dtype_name(dtype)
    graphs = tuple(spec.graphs) if graphs is None else graphs
    opset = checked_opset(dtype, opset)
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; choose another folder or pass --overwrite")
    digest = content_sha256(model, weights_sha256)
    model.to(device="cpu", dtype=getattr(torch, dtype)).eval()
    geometry = geometry_of(model)
    with atomic_directory(out_dir) as staging:
        written = {}
        for name in graphs:
            graph = spec.graphs[name]
            export_graph(model, graph, geometry, staging / f"{name}.onnx", opset)
            profile = spec.profile.shapes(geometry, graph)
            written[name] = {
                "file": f"{name}.onnx",
                "method": graph.method,
                "inputs": [_tensor_spec(t, geometry, dtype) | profile[t.name] for t in graph.inputs],
                "output": _tensor_spec(graph.output, geometry, dtype),
                "verification": verify_graph(model, graph, geometry, staging / f"{name}.onnx"),
            }
        document = {
            "format": SPEC_FORMAT,
            "kind": spec.kind,
            "content_sha256": digest,
            "dtype": dtype,
            "opset": opset,
            "geometry": dataclasses.asdict(geometry),
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
            "manifest": dataclasses.asdict(manifest) if manifest else None,
            "graphs": written,
            "files": {path.name: file_sha256(path) for path in sorted(staging.iterdir())},
        }
        (staging / SPEC_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return document


def _tensor_spec(tensor, geometry: Geometry, dtype: str) -> dict:
    return {"name": tensor.name, "dtype": tensor.dtype(dtype), "shape": geometry.symbolic(tensor.space)}


def onnx_dir_for(
    model: nn.Module,
    dtype: str | torch.dtype,
    *,
    opset: int | None = None,
    graphs: tuple[str, ...] | None = None,
    weights_sha256: str | None = None,
    model_dir: str | Path | None = None,
) -> Path:
    """Where the runtime finds `graphs` (default the runtime's) of exactly this model: `MODEL_DIR/onnx/<dtype>`
    when that export is of the same content, otherwise a cache folder keyed by content, dtype and opset, exported
    there on first use (which moves `model` to the CPU and casts it, in place). With `weights_sha256` (the
    manifest's) no weight is read to find it.
    """
    spec, dtype = model_spec(model), dtype_name(dtype)
    graphs = spec.runtime_graphs if graphs is None else graphs
    opset = checked_opset(dtype, opset)
    digest = content_sha256(model, weights_sha256)

    def usable(folder: Path) -> bool:
        found = read_spec(folder)
        return bool(found) and found["content_sha256"] == digest and found["opset"] == opset and set(graphs) <= set(found["graphs"])

    if model_dir is not None and usable(Path(model_dir) / "onnx" / dtype):
        return Path(model_dir) / "onnx" / dtype
    cached = onnx_cache_dir(spec.kind, digest, dtype, opset)
    if not usable(cached):
        export_onnx(model, cached, dtype=dtype, graphs=graphs, opset=opset, weights_sha256=weights_sha256, overwrite=True)
    return cached

