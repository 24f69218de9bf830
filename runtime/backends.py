"""Execution backends of both models: each runs a model's runtime graphs (`export.spec`) on torch tensors.

SR runs estimator (the strength of each whole LR image) -> encoder -> transformer (restore from the start time:
one NFE) -> decoder; degradation synthesis runs degrader (hr, r).
Every backend gives the same callables by graph name, so the tiling, padding and I/O around them are shared:
`torch` (eager; on CUDA the SR Euler step is the fused Triton kernel), `compile` (torch.compile, the SR estimator
eager; CUDA graphs on GPU), `onnxruntime` (the exported graphs, CPU or CUDA provider), `tensorrt` (engines built
from the exported graphs, CUDA graphs per shape). Exports and engines are made on first use and cached.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flowsr.core.content_hash import content_sha256
from flowsr.core.errors import BackendError, SettingsError
from flowsr.export.spec import QUANTIZED, SPECS, Graph, checked_opset, dtype_name, find_export


@dataclass
class Backend:
    """A model's runtime graphs as callables, e.g. `backend.graphs["encoder"](image)`."""

    name: str
    graphs: dict[str, Callable[..., torch.Tensor]]
    folder: Path | None = None  # the ONNX export the graphs were made from (onnxruntime, tensorrt)

    @property
    def fixed_shapes(self) -> bool:
        """True where each new input shape costs a compile or a CUDA graph: tiles then keep one size."""
        return self.name in ("compile", "tensorrt")


def _typed(method: Callable, graph: Graph, dtype: torch.dtype, contiguous: bool = False) -> Callable:
    """`method` with image and latent inputs cast to the backend's dtype (target times stay float32)."""
    dtypes = [torch.float32 if tensor.space == "time" else dtype for tensor in graph.inputs]

    def call(*inputs: torch.Tensor) -> torch.Tensor:
        inputs = [x.to(dtype) for x, dtype in zip(inputs, dtypes, strict=False)]
        return method(*(x.contiguous() for x in inputs) if contiguous else inputs)

    return call


def _fused_restore(model: nn.Module) -> Callable:
    """SR's restore with the Euler step, unpack, denormalization and cast in one Triton kernel (CUDA)."""
    from flowsr.kernels.euler_update import fused_euler_unpack  # triton: imported only where a GPU runs it

    def restore(z_lr: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tokens, velocity = model.predict_velocity(z_lr, t)
        norm = model.normalization
        return fused_euler_unpack(velocity, tokens, -t.float(), *z_lr.shape[2:], norm.shift, norm.scale, z_lr.dtype)

    return restore


def _place(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move and cast in place with nn.Module.to: diffusers' ModelMixin.to warns on every cast."""
    nn.Module.to(model, device=device, dtype=dtype).eval()


def torch_backend(model: nn.Module, device: torch.device, dtype: torch.dtype, **_) -> Backend:
    """Eager PyTorch on the model's own modules."""
    _place(model, device, dtype)
    spec = SPECS[model.kind]
    graphs = {}
    for name in spec.runtime_graphs:
        graph = spec.graphs[name]
        method = (
            _fused_restore(model)
            if (device.type, graph.method) == ("cuda", "restore")
            else getattr(model, graph.method)
        )
        graphs[name] = _typed(method, graph, dtype)
    return Backend("torch", graphs)


def compile_backend(model: nn.Module, device: torch.device, dtype: torch.dtype, **_) -> Backend:
    """`torch.compile` of each graph, specialized to each input shape (inductor on CPU and CUDA).

    On CUDA the graphs are also captured as CUDA graphs ("reduce-overhead"). The first call with a new shape
    compiles and captures (seconds to minutes); later calls with that shape replay. The tiler cuts every image
    into tiles of one size (the last tile is flush with the edge, not smaller), so a run compiles once per graph;
    images smaller than a tile compile once per size, up to torch._dynamo's recompile limit, after which that
    graph runs eagerly.
    """
    _place(model, device, dtype)
    spec = SPECS[model.kind]
    cuda_graphs = device.type == "cuda"
    graphs = {}
    for name in spec.runtime_graphs:
        graph = spec.graphs[name]
        if graph.inputs[0].space == "lr_image":
            # The SR estimator sees each whole LR image at its own size, once: compiled per shape it would compile
            # again for every image size the tiles hide from the other graphs. It is a few small convolutions; eager.
            graphs[name] = _typed(getattr(model, graph.method), graph, dtype)
            continue
        compiled = torch.compile(
            getattr(model, graph.method), mode="reduce-overhead" if cuda_graphs else None, dynamic=False
        )
        # Tiles are views whose strides depend on the whole image; contiguous inputs make the shape the only key.
        run = _typed(compiled, graph, dtype, contiguous=True)
        # A CUDA graph writes every replay into the same output memory: keep each result before the next call.
        graphs[name] = (lambda *inputs, run=run: run(*inputs).clone()) if cuda_graphs else run
    return Backend("compile", graphs)


def export_folder(
    model: nn.Module, dtype: torch.dtype, weights_sha256: str | None = None, model_dir: str | Path | None = None
) -> Path:
    """The ONNX export of the model's runtime graphs that the onnxruntime and tensorrt backends run: found by
    content from the spec files alone, or exported now (into the cache)."""
    spec, name = SPECS[model.kind], dtype_name(dtype)
    opset = checked_opset(name, None)
    found = find_export(
        spec.kind, content_sha256(model, weights_sha256), name, opset, spec.runtime_graphs, model_dir=model_dir
    )
    if found is not None:
        return found
    if name in QUANTIZED:  # quantizing needs photos to calibrate on, which only the user can name
        home = model_dir or "DIR"
        raise BackendError(
            f"no {name} export of this model yet: make one with `flowsr export onnx --model {home} --dtype {name} "
            "--calibrate PHOTOS` (a folder of photos like the ones you will serve), or choose another --dtype"
        )
    # the exporter needs onnx and onnxscript; serving an export does not
    from flowsr.export.onnx_export import onnx_dir_for

    return onnx_dir_for(model, name, weights_sha256=weights_sha256, model_dir=model_dir)


# Imported on first use: each backend pulls in its own runtime (onnxruntime, tensorrt).
BACKENDS = {
    "torch": ("flowsr.runtime.backends", "torch_backend", None),
    "compile": ("flowsr.runtime.backends", "compile_backend", None),
    "onnxruntime": ("flowsr.runtime.backend_onnxruntime", "onnxruntime_backend", "pip install 'flowsr[onnx]'"),
    "tensorrt": (
        "flowsr.runtime.backend_tensorrt",
        "tensorrt_backend",
        "pip install 'flowsr[gpu]' on a machine with an NVIDIA GPU",
    ),
}


def create_backend(
    name: str,
    model: nn.Module,
    device: torch.device,
    dtype: torch.dtype,
    *,
    weights_sha256: str | None = None,
    model_dir: str | Path | None = None,
) -> Backend:
    """Backend `name` for an SR or degradation model. `weights_sha256` and `model_dir` (from a loaded model
    directory) let the exporting backends find the directory's own export, or the cached one, without hashing
    the weights; the model then belongs to the backend (it may be moved and cast)."""
    if name not in BACKENDS:
        raise SettingsError(f"unknown backend {name!r:.40}; choose one of: {', '.join(BACKENDS)}")
    if dtype_name(dtype) in QUANTIZED and (name not in ("onnxruntime", "tensorrt") or model.kind != "sr"):
        raise SettingsError(
            f"{dtype_name(dtype)} is for SR models on the onnxruntime or tensorrt backend (a QDQ export); "
            "pass --backend onnxruntime, or another --dtype"
        )
    module, function, install = BACKENDS[name]
    try:
        make = getattr(importlib.import_module(module), function)
    except ImportError as err:
        raise BackendError(
            f"the {name} backend needs {err.name or 'a missing package'}, which is not installed; {install}"
        ) from None
    return make(model, device, dtype, weights_sha256=weights_sha256, model_dir=model_dir)
