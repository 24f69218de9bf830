"""onnxruntime backend: a model's exported runtime graphs on the CPU or CUDA provider.

The graphs come from `MODEL_DIR/onnx/<dtype>/` when that export is of the same content, otherwise from the cache
(`$FLOWSR_CACHE` or `~/.cache/flowsr`), keyed by content, dtype and opset, exported there on first use.
I/O binding points onnxruntime at the torch tensors' own memory, so nothing is copied.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from flowsr.export.onnxruntime_graph import OnnxGraph, OnnxRuntimeUnavailable, providers_for
from flowsr.export.spec import SPECS, geometry_of

from .backends import Backend, export_folder


def onnxruntime_backend(
    model: nn.Module,
    device: torch.device,
    dtype: torch.dtype,
    *,
    weights_sha256: str | None = None,
    model_dir: str | Path | None = None,
) -> Backend:
    providers_for(device)  # refuse before exporting anything
    spec, geometry = SPECS[model.kind], geometry_of(model)
    folder = export_folder(model, dtype, weights_sha256, model_dir)
    try:
        graphs = {
            name: OnnxGraph(folder / f"{name}.onnx", spec.graphs[name], geometry, device, dtype)
            for name in spec.runtime_graphs
        }
    except OnnxRuntimeUnavailable as err:
        raise OnnxRuntimeUnavailable(f"{err}; use another --dtype or backend") from None
    return Backend("onnxruntime", graphs, folder)
