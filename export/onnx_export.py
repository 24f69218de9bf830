"""ONNX export of either model, checked and verified against torch: one exporter for every graph of `export.spec`.

Each graph is traced with torch.onnx (dynamo) with dynamic batch, height and width, then checked (the opset
asked for, symbolic axes, plain ONNX ops only, the ONNX checker) and run with onnxruntime against torch on a
real photo at two sizes and batches. Folders are written atomically (built beside the target, then renamed):
a failed export leaves nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.export import Dim

from flowsr.core.atomic import atomic_directory
from flowsr.core.content_hash import content_sha256
from flowsr.core.latents import PATCH

from .end_to_end import EndToEnd, join, pieces
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
    export_name,
    onnx_cache_dir,
    read_spec,
)

VERIFY_SIZES = ((1, 128, 128), (2, 96, 160))  # (batch, height, width) in image pixels: two sizes, two batches
# uint8 outputs differ where float results straddle a rounding boundary: one level on every pixel is 48.1 dB.
MIN_PIXELS_PSNR_DB = 45.0


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


def example_inputs(graph: Graph, geometry: Geometry, dtype: torch.dtype, min_side: int = 1) -> list[torch.Tensor]:
    """Tracing inputs: batch 2 and unequal sides (pixels: odd sides of at least `min_side`), so no axis is specialized."""
    def example(space: str) -> torch.Tensor:
        if space in ("time", "scale"):
            return torch.tensor([0.3, 0.9]) if space == "time" else torch.tensor([1.5, 3.5])
        if space == "pixels":
            return torch.randint(0, 256, (2, min_side + 21, min_side + 37, 3), dtype=torch.uint8)
        return torch.randn(geometry.shape(space, 2, 4 * geometry.stride, 6 * geometry.stride), dtype=dtype)

    return [example(tensor.space) for tensor in graph.inputs]


def trace(module: nn.Module, graph: Graph, geometry: Geometry, path: Path, opset: int, dtype: torch.dtype, min_side: int = 1) -> None:
    """Trace `module`'s forward with torch.onnx (dynamo) into `path`: batch, height and width dynamic, each input
    with sizes of its own (image and latent sides multiples of the stride and packing; pixel sides >= `min_side`).
    `dtype` is the image and latent inputs'."""
    example = example_inputs(graph, geometry, dtype, min_side)
    batch = Dim("batch")

    def axes(tensor) -> dict:
        if tensor.space in ("time", "scale"):
            return {0: batch}
        height, width = Dim(f"{tensor.name}_height", min=min_side), Dim(f"{tensor.name}_width", min=min_side)
        if tensor.space == "pixels":
            return {0: batch, 1: height, 2: width}
        multiple = geometry.stride if tensor.space == "image" else geometry.latent_multiple
        height, width = Dim(f"{tensor.name}_height"), Dim(f"{tensor.name}_width")
        return {0: batch, 2: multiple * height, 3: multiple * width}

    dynamic_shapes = tuple(axes(t) for t in graph.inputs)
    if any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values()):
        dynamic_shapes = (dynamic_shapes,)  # forward(*inputs): one argument, the tuple
    # The exporter's deprecation warnings and its notes on absent torchvision ops are not about this graph.
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    log_level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(),
                tuple(example),
                dynamo=True,
                opset_version=opset,
                input_names=[t.name for t in graph.inputs],
                output_names=[graph.output.name],
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
    except torch.onnx.errors.OnnxExporterError as err:
        raise ExportError(f"{graph.name}: torch.onnx could not export it: {str(err).strip().splitlines()[0]}") from None
    finally:
        registry_log.setLevel(log_level)
    program.save(path)  # weights go to `<file>.data` when they pass the protobuf size limit


def check_graph(path: Path, graph: Graph, opset: int) -> None:
    """What every exported file must be: the opset asked for, symbolic batch and sides (only the channel count
    fixed), plain ONNX ops (what TensorRT and onnxruntime run), and valid for the ONNX checker."""
    proto = onnx.load(path, load_external_data=False)
    produced = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    if produced != opset:
        raise ExportError(f"{graph.name}: torch.onnx could not convert the graph to opset {opset} (it stayed at {produced}); use 19 or 20")
    for tensor in (*proto.graph.input, *proto.graph.output):
        dims = tensor.type.tensor_type.shape.dim
        if sum(not dim.dim_param for dim in dims) > (len(dims) > 1):
            raise ExportError(f"{graph.name}: {tensor.name} was exported with a fixed size {[d.dim_param or d.dim_value for d in dims]}")
    custom = sorted({f"{node.domain}::{node.op_type}" for node in proto.graph.node if node.domain not in ("", "ai.onnx")})
    if custom:
        raise ExportError(f"{graph.name}: the graph has non-standard ops {custom}; TensorRT and onnxruntime need plain ONNX ops")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{graph.name}: invalid ONNX at opset {opset}: {str(err).splitlines()[0]}") from None


def export_end_to_end(pieces: list[tuple[Graph, nn.Module]], geometry: Geometry, path: Path, opset: int, min_side: int) -> None:
    """Trace each piece of an end-to-end graph on its own, then join them into one file (`export.end_to_end`)."""
    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        protos = []
        for graph, module in pieces:
            piece = Path(folder) / f"{graph.name}.onnx"
            trace(module, graph, geometry, piece, opset, torch.float32, min_side)  # pieces pass float32 images
            protos.append((graph, onnx.load(piece)))
        joined = join(protos)
    weights = sum(tensor.ByteSize() for tensor in joined.graph.initializer)
    # Past the protobuf limit the weights go to `<file>.data`, as torch.onnx saves them.
    onnx.save_model(joined, path, save_as_external_data=weights > 1 << 30, location=f"{path.name}.data")


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


def verify_end_to_end(module: nn.Module, graph: Graph, path: Path) -> dict:
    """The end-to-end graph in onnxruntime (CPU) vs the torch module, uint8 outputs, on the reference photo at two
    sizes and batches; PSNR with peak 255."""
    dtype = dtype_name(next(module.parameters()).dtype)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for a graph its CPU provider lacks kernels for
        return {"skipped": f"onnxruntime's CPU provider cannot run the {dtype} {graph.name} graph ({str(err).strip().splitlines()[0]})"}
    worst, shapes = float("inf"), []
    with torch.inference_mode():
        for batch, height, width in VERIFY_SIZES:
            pixels = ((reference_photo(batch, height, width) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
            inputs = [pixels] + [torch.linspace(1.5, 4.0, batch)] * (len(graph.inputs) - 1)  # scales, for the degradation graph
            expected = module(*inputs)
            got = session.run(None, {tensor.name: x.numpy() for tensor, x in zip(graph.inputs, inputs)})[0]
            worst = min(worst, psnr_pixels(expected.numpy(), got))
            shapes.append("x".join(map(str, pixels.shape)))
    minimum = min(MIN_PSNR_DB[dtype], MIN_PIXELS_PSNR_DB)
    if worst < minimum:
        raise ExportError(f"{graph.name}: onnxruntime differs from torch ({worst:.1f} dB < {minimum:g} dB on {', '.join(shapes)}); "
                          "the export is not trustworthy, nothing was written")
    return {"psnr_db": round(worst, 2), "min_psnr_db": minimum, "inputs": shapes, "provider": "CPUExecutionProvider"}


def psnr_pixels(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR of two uint8 images in dB (peak 255); 99 for equal ones."""
    mse = np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def export_onnx(
    model: nn.Module,
    out_dir: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    graphs: tuple[str, ...] | None = None,
    opset: int | None = None,
    scale: int | None = None,
    manifest=None,
    weights_sha256: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Export, check and verify `graphs` of `model` into `out_dir` atomically; returns the spec written.

    `graphs` defaults to all of the model's stage graphs; "end_to_end" is the whole command in one graph (an SR
    model's at `scale`, fixed in it). `weights_sha256` is the manifest's digest of the stored weights (hashed now
    when not given). `model` is cast to `dtype` in place, on the CPU.
    """
    out_dir = Path(out_dir)
    spec, dtype = model_spec(model), dtype_name(dtype)
    graphs = tuple(spec.graphs) if graphs is None else graphs
    opset = checked_opset(dtype, opset)
    end_to_end = spec.end_to_end.name in graphs
    end_to_end_pieces = pieces(model, scale) if end_to_end else None  # refuses a bad scale before any work
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; choose another folder or pass --overwrite")
    digest = content_sha256(model, weights_sha256)
    model.to(device="cpu", dtype=getattr(torch, dtype)).eval()
    geometry = geometry_of(model)
    with atomic_directory(out_dir) as staging:
        written = {}
        for name in graphs:
            graph, path = spec.graph(name), staging / f"{name}.onnx"
            profile = spec.profile_for(graph)
            if graph == spec.end_to_end:
                export_end_to_end(end_to_end_pieces, geometry, path, opset, profile.min_side)
            else:
                trace(_Method(model, graph.method), graph, geometry, path, opset, getattr(torch, dtype))
            check_graph(path, graph, opset)
            shapes = profile.shapes(geometry, graph)
            written[name] = {
                "file": path.name,
                "method": graph.method,
                "inputs": [_tensor_spec(t, geometry, dtype) | shapes[t.name] for t in graph.inputs],
                "output": _tensor_spec(graph.output, geometry, dtype, scale if graph == spec.end_to_end and spec.kind == "sr" else None),
                "verification": (verify_end_to_end(EndToEnd(graph, end_to_end_pieces), graph, path) if graph == spec.end_to_end
                                 else verify_graph(model, graph, geometry, path)),
            }
        document = {
            "format": SPEC_FORMAT,
            "kind": spec.kind,
            "content_sha256": digest,
            "dtype": dtype,
            "opset": opset,
            "scale": int(scale) if end_to_end and spec.kind == "sr" else None,
            "geometry": dataclasses.asdict(geometry),
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
            "manifest": dataclasses.asdict(manifest) if manifest else None,
            "graphs": written,
            "files": {path.name: file_sha256(path) for path in sorted(staging.iterdir())},
        }
        (staging / SPEC_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return document


def _tensor_spec(tensor, geometry: Geometry, dtype: str, scale: int | None = None) -> dict:
    shape = geometry.symbolic(tensor.space)
    if scale:  # the end-to-end SR output: the input's sides times the scale
        shape = [shape[0], f"{scale}*{shape[1]}", f"{scale}*{shape[2]}", shape[3]]
    return {"name": tensor.name, "dtype": tensor.dtype(dtype), "shape": shape}


def onnx_dir_for(
    model: nn.Module,
    dtype: str | torch.dtype,
    *,
    opset: int | None = None,
    graphs: tuple[str, ...] | None = None,
    scale: int | None = None,
    weights_sha256: str | None = None,
    model_dir: str | Path | None = None,
) -> Path:
    """Where the runtime finds `graphs` (default the runtime's; or ("end_to_end",) at `scale`) of exactly this model:
    `MODEL_DIR/onnx/<name>` when that export is of the same content, otherwise a cache folder keyed by content,
    dtype and opset, exported there on first use (which moves `model` to the CPU and casts it, in place). With
    `weights_sha256` (the manifest's) no weight is read to find it.
    """
    spec, dtype = model_spec(model), dtype_name(dtype)
    graphs = spec.runtime_graphs if graphs is None else graphs
    opset = checked_opset(dtype, opset)
    end_to_end = spec.end_to_end.name in graphs
    scale = int(scale) if end_to_end and spec.kind == "sr" and scale is not None else None
    name = export_name(dtype, end_to_end, scale)
    digest = content_sha256(model, weights_sha256)

    def usable(folder: Path) -> bool:
        found = read_spec(folder)
        return (bool(found) and found["content_sha256"] == digest and found["opset"] == opset and found.get("scale") == scale
                and set(graphs) <= set(found["graphs"]))

    if model_dir is not None and usable(Path(model_dir) / "onnx" / name):
        return Path(model_dir) / "onnx" / name
    cached = onnx_cache_dir(spec.kind, digest, name, opset)
    if not usable(cached):
        export_onnx(model, cached, dtype=dtype, graphs=graphs, opset=opset, scale=scale, weights_sha256=weights_sha256, overwrite=True)
    return cached
