"""ONNX export of either model, checked and verified against torch: one exporter for every graph of `export.spec`.

Each graph is traced with torch.onnx (dynamo) with dynamic batch, height and width, then checked (the opset
asked for, symbolic axes, plain ONNX ops only, the ONNX checker) and verified (`export.verify`). Folders are
written atomically (built beside the target, then renamed): a failed export leaves nothing. An int8 export is the
float32 one with the velocity graph quantized to QDQ, calibrated on photos (`export.quantize`).
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

import onnx
import torch
from torch import nn
from torch.export import Dim

from flowsr.core.atomic import atomic_directory
from flowsr.core.content_hash import content_sha256

from .end_to_end import EndToEnd, join, pieces
from .quantize import QUANTIZED_GRAPHS, calibration_inputs, calibration_photos, quantize_graph
from .spec import (
    QUANTIZED,
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
    find_export,
    geometry_of,
    onnx_cache_dir,
)
from .verify import verify_end_to_end, verify_graph


def model_spec(model: nn.Module) -> ModelSpec:
    return SPECS[model.kind]


class _Method(nn.Module):
    """A model method as a module's forward, so torch.onnx traces exactly what the runtime calls."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(*inputs)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def example_inputs(graph: Graph, geometry: Geometry, dtype: torch.dtype, min_side: int = 1) -> list[torch.Tensor]:
    """Tracing inputs: batch 2 and unequal sides (pixels: odd sides of at least `min_side`), so no axis is
    specialized."""

    def example(space: str) -> torch.Tensor:
        if space in ("time", "scale"):
            return torch.tensor([0.3, 0.9]) if space == "time" else torch.tensor([1.5, 3.5])
        if space == "pixels":
            return torch.randint(0, 256, (2, min_side + 21, min_side + 37, 3), dtype=torch.uint8)
        if space == "lr_image":
            return torch.randn(2, 3, min_side + 21, min_side + 37, dtype=dtype)
        return torch.randn(geometry.shape(space, 2, 4 * geometry.stride, 6 * geometry.stride), dtype=dtype)

    return [example(tensor.space) for tensor in graph.inputs]


def trace(
    module: nn.Module, graph: Graph, geometry: Geometry, path: Path, opset: int, dtype: torch.dtype, min_side: int = 1
) -> None:
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
        if tensor.space == "lr_image":
            return {0: batch, 2: height, 3: width}
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
        raise ExportError(
            f"{graph.name}: torch.onnx could not convert the graph to opset {opset} (it stayed at {produced}); "
            "use 19 or 20"
        )
    for tensor in (*proto.graph.input, *proto.graph.output):
        dims = tensor.type.tensor_type.shape.dim
        if sum(not dim.dim_param for dim in dims) > (len(dims) > 1):
            raise ExportError(
                f"{graph.name}: {tensor.name} was exported with a fixed size "
                f"{[d.dim_param or d.dim_value for d in dims]}"
            )
    custom = sorted(
        {f"{node.domain}::{node.op_type}" for node in proto.graph.node if node.domain not in ("", "ai.onnx")}
    )
    if custom:
        raise ExportError(
            f"{graph.name}: the graph has non-standard ops {custom}; TensorRT and onnxruntime need plain ONNX ops"
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{graph.name}: invalid ONNX at opset {opset}: {str(err).splitlines()[0]}") from None


def export_end_to_end(
    pieces: list[tuple[Graph, nn.Module]], geometry: Geometry, path: Path, opset: int, min_side: int
) -> None:
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


def export_onnx(
    model: nn.Module,
    out_dir: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    graphs: tuple[str, ...] | None = None,
    opset: int | None = None,
    scale: int | None = None,
    weights_sha256: str | None = None,
    overwrite: bool = False,
    calibrate: str | Path | None = None,
) -> dict:
    """Export, check and verify `graphs` of `model` into `out_dir` atomically; returns the spec written.

    `graphs` defaults to all of the model's stage graphs; "end_to_end" is the whole command in one graph (an SR
    model's at `scale`, fixed in it). `weights_sha256` is the manifest's digest of the stored weights, for a model
    just loaded from its directory (hashed now when not given). `model` is cast to `dtype` in place, on the CPU
    (to float32 for int8, whose runtime graphs are quantized with photos from the folder `calibrate`).
    """
    out_dir = Path(out_dir)
    spec, dtype = model_spec(model), dtype_name(dtype)
    quantized = dtype in QUANTIZED
    graphs = (spec.runtime_graphs if quantized else tuple(spec.graphs)) if graphs is None else graphs
    if quantized:
        _check_quantized_export(spec, graphs, calibrate)
    opset = checked_opset(dtype, opset)
    end_to_end = spec.has_end_to_end(graphs)
    end_to_end_pieces = pieces(model, scale) if end_to_end else None  # refuses a bad scale before any work
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; choose another folder or pass --overwrite")
    digest = content_sha256(model, weights_sha256)
    traced = getattr(torch, "float32" if quantized else dtype)
    nn.Module.to(model, device="cpu", dtype=traced).eval()  # diffusers' ModelMixin.to warns on any cast
    geometry = geometry_of(model)
    photos = calibration_photos(calibrate) if quantized else []
    samples = calibration_inputs(model, photos) if quantized else []
    quantized_here = QUANTIZED_GRAPHS if quantized else ()
    with atomic_directory(out_dir) as staging:
        written = {}
        for name in graphs:
            graph, path = spec.graph(name), staging / f"{name}.onnx"
            profile = spec.profile_for(graph)
            if graph == spec.end_to_end:
                export_end_to_end(end_to_end_pieces, geometry, path, opset, profile.min_side)
            else:
                trace(_Method(model, graph.method), graph, geometry, path, opset, traced)
            if name in quantized_here:
                float_path = path.with_name(f"{name}.float32.onnx")
                path.rename(float_path)
                quantize_graph(float_path, path, samples)
                float_path.unlink()
            check_graph(path, graph, opset)
            shapes = profile.shapes(geometry, graph)
            written[name] = {
                "file": path.name,
                "method": graph.method,
                "inputs": [_tensor_spec(t, geometry, dtype) | shapes[t.name] for t in graph.inputs],
                "output": _tensor_spec(
                    graph.output, geometry, dtype, scale if graph == spec.end_to_end and spec.kind == "sr" else None
                ),
                "verification": (
                    verify_end_to_end(EndToEnd(graph, end_to_end_pieces), graph, path)
                    if graph == spec.end_to_end
                    else verify_graph(model, graph, geometry, path, dtype if name in quantized_here else None)
                ),
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
            "manifest": dataclasses.asdict(model.manifest) if model.manifest else None,
            "graphs": written,
            "files": {path.name: file_sha256(path) for path in sorted(staging.iterdir())},
        }
        if quantized:
            document["quantization"] = {
                "graphs": [name for name in graphs if name in QUANTIZED_GRAPHS],
                "format": "QDQ",
                "ops": ["Conv"],
                "weights": "int8, per output channel",
                "activations": "uint8, per tensor, min/max calibration",
                "calibration_photos": len(photos),
            }
        (staging / SPEC_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return document


def _check_quantized_export(spec: ModelSpec, graphs: tuple[str, ...], calibrate) -> None:
    """What an int8 export needs, refused in one line before any work."""
    if spec.kind != "sr":
        raise ExportError("int8 graphs are made for SR models; export this model in float32, float16 or bfloat16")
    if calibrate is None:
        raise ExportError("--dtype int8 needs --calibrate PHOTOS: a folder of photos like the ones you will serve")
    others = [name for name in graphs if name not in spec.runtime_graphs]
    if others:
        raise ExportError(
            f"int8 exports the runtime's graphs ({', '.join(spec.runtime_graphs)}); "
            f"{', '.join(others)} stay float: export them with another --dtype"
        )


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
    end_to_end = spec.has_end_to_end(graphs)
    scale = int(scale) if end_to_end and spec.kind == "sr" and scale is not None else None
    digest = content_sha256(model, weights_sha256)
    found = find_export(spec.kind, digest, dtype, opset, graphs, scale, model_dir)
    if found is not None:
        return found
    folder = onnx_cache_dir(spec.kind, digest, export_name(dtype, end_to_end, scale), opset)
    export_onnx(
        model,
        folder,
        dtype=dtype,
        graphs=graphs,
        opset=opset,
        scale=scale,
        weights_sha256=weights_sha256,
        overwrite=True,
    )
    return folder
