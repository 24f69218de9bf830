"""Verification of exported graphs: onnxruntime (CPU) against torch on a real photo at two sizes and batches.

A stage graph must match the model method it was traced from, on the inputs it gets in the pipeline; an
end-to-end graph must give the torch pieces' uint8 pixels. An export that does not pass is not written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from .onnxruntime_graph import OnnxGraph, OnnxRuntimeUnavailable
from .spec import MIN_PSNR_DB, SPECS, ExportError, Geometry, Graph, dtype_name

VERIFY_SIZES = ((1, 128, 128), (2, 96, 160))  # (batch, height, width) in image pixels: two sizes, two batches
# uint8 outputs differ where float results straddle a rounding boundary: one level on every pixel is 48.1 dB.
MIN_PIXELS_PSNR_DB = 45.0


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
    """PSNR in dB with the reference's value range as peak (2 for images in [-1, 1]), at least 1 (the range of a
    strength); finite for equal tensors."""
    reference, test = reference.double().cpu(), test.double().cpu()
    mse = max((reference - test).pow(2).mean().item(), 1e-30)
    peak = max(1.0, (reference.max() - reference.min()).item())
    return float(10 * np.log10(peak**2 / mse))


def pipeline_inputs(model: nn.Module, graph: Graph, image: torch.Tensor) -> list[torch.Tensor]:
    """What `graph` gets in the model's pipeline for `image`: the image itself, times spread over those it serves,
    or the latent that the runtime graphs before it make of the image (computed by torch)."""
    spec = SPECS[model.kind]
    values = {
        tensor.name: image
        for name in spec.runtime_graphs
        for tensor in spec.graphs[name].inputs
        if tensor.space in ("image", "lr_image")
    }
    values.update(
        {
            tensor.name: model.served_times(image.shape[0]).cpu()
            for stage in (graph, *(spec.graphs[name] for name in spec.runtime_graphs))
            for tensor in stage.inputs
            if tensor.space == "time"
        }
    )
    for name in spec.runtime_graphs:
        stage = spec.graphs[name]
        if all(tensor.name in values for tensor in graph.inputs):
            break
        if stage.output.name not in values:
            values[stage.output.name] = getattr(model, stage.method)(*(values[tensor.name] for tensor in stage.inputs))
    return [values[tensor.name] for tensor in graph.inputs]


def verify_graph(
    model: nn.Module, graph: Graph, geometry: Geometry, path: Path, export_dtype: str | None = None
) -> dict:
    """Run the exported graph with onnxruntime (CPU) and torch on the reference photo at two sizes and batches.

    Returns the worst PSNR, or the reason onnxruntime's CPU provider cannot run the graph (bfloat16). The bar is
    `export_dtype`'s (an int8 graph against the float32 model it was quantized from), by default the model's.
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
    minimum = MIN_PSNR_DB[export_dtype or dtype_name(dtype)]
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
        return {
            "skipped": (
                f"onnxruntime's CPU provider cannot run the {dtype} {graph.name} graph "
                f"({str(err).strip().splitlines()[0]})"
            )
        }
    worst, shapes = float("inf"), []
    with torch.inference_mode():
        for batch, height, width in VERIFY_SIZES:
            pixels = (
                ((reference_photo(batch, height, width) + 1) * 127.5)
                .round()
                .to(torch.uint8)
                .permute(0, 2, 3, 1)
                .contiguous()
            )
            # scales, for the degradation graph
            inputs = [pixels] + [torch.linspace(1.5, 4.0, batch)] * (len(graph.inputs) - 1)
            expected = module(*inputs)
            got = session.run(None, {tensor.name: x.numpy() for tensor, x in zip(graph.inputs, inputs, strict=True)})[0]
            worst = min(worst, psnr_pixels(expected.numpy(), got))
            shapes.append("x".join(map(str, pixels.shape)))
    minimum = min(MIN_PSNR_DB[dtype], MIN_PIXELS_PSNR_DB)
    if worst < minimum:
        raise ExportError(
            f"{graph.name}: onnxruntime differs from torch ({worst:.1f} dB < {minimum:g} dB on {', '.join(shapes)}); "
            "the export is not trustworthy, nothing was written"
        )
    return {"psnr_db": round(worst, 2), "min_psnr_db": minimum, "inputs": shapes, "provider": "CPUExecutionProvider"}


def psnr_pixels(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR of two uint8 images in dB (peak 255); 99 for equal ones."""
    mse = np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))
