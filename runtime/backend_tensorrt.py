"""TensorRT backend: one engine per runtime graph, persistent torch I/O buffers and a CUDA graph per input shape.

Engines come from `export.tensorrt_engine` (built from the ONNX export on first use, then cached). Each graph
keeps one execution context; the first call with new input shapes allocates their input and output buffers,
runs the engine once on the backend's stream with `execute_async_v3` (TensorRT's lazy setup happens outside any
capture) and captures a CUDA graph of the call. Later calls copy the inputs into the buffers and replay the
graph: the tiler gives every tile of an image one shape, so a run captures once per graph.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from flowsr.core.errors import BackendError, SettingsError
from flowsr.export.spec import SPECS, Graph, dtype_name
from flowsr.export.tensorrt_engine import TensorRTUnavailable, ensure_engine, require_tensorrt

from .backends import Backend, export_folder


class EngineRunner:
    """One engine and execution context; per input shapes, persistent buffers and a captured CUDA graph."""

    def __init__(self, engine_file: Path, graph: Graph, device: torch.device, dtype: torch.dtype):
        trt = require_tensorrt()
        self.graph, self.device = graph, device
        self.dtypes = [getattr(torch, tensor.dtype(dtype_name(dtype))) for tensor in graph.inputs]
        self.output_dtype = getattr(torch, graph.output.dtype(dtype_name(dtype)))  # float32 for a QDQ graph
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)  # must outlive the engine
        self.engine = self.runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if self.engine is None:
            raise TensorRTUnavailable(
                f"TensorRT could not load {engine_file} (built by another version?); delete it to rebuild"
            )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device)
        self.graphs: dict[tuple, tuple[list[torch.Tensor], torch.Tensor, torch.cuda.CUDAGraph]] = {}
        self.bound: tuple | None = None

    def _bind(self, shapes: tuple, inputs: list[torch.Tensor], output: torch.Tensor | None) -> None:
        """Put the context in the state a shape's graph was captured in: its input shapes and buffer addresses."""
        self.bound = None
        for tensor, shape, buffer in zip(self.graph.inputs, shapes, inputs, strict=False):
            if not self.context.set_input_shape(tensor.name, shape):
                low, _, high = self.engine.get_tensor_profile_shape(tensor.name, 0)
                raise SettingsError(
                    f"{self.graph.name} input {tensor.name} {list(shape)} is outside the engine's profile "
                    f"{list(low)}..{list(high)}; "
                    "keep the tiles and the batch within it"
                )
            self.context.set_tensor_address(tensor.name, buffer.data_ptr())
        if output is not None:
            self.context.set_tensor_address(self.graph.output.name, output.data_ptr())
        self.bound = shapes

    def _capture(self, shapes: tuple) -> tuple[list[torch.Tensor], torch.Tensor, torch.cuda.CUDAGraph]:
        inputs = [
            torch.zeros(shape, device=self.device, dtype=dtype)
            for shape, dtype in zip(shapes, self.dtypes, strict=False)
        ]
        self._bind(shapes, inputs, None)
        output = torch.empty(
            tuple(self.context.get_tensor_shape(self.graph.output.name)), device=self.device, dtype=self.output_dtype
        )
        self._bind(shapes, inputs, output)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError(f"TensorRT failed to run the {self.graph.name} engine")
        self.stream.synchronize()
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph, stream=self.stream, capture_error_mode="thread_local"):
            self.context.execute_async_v3(self.stream.cuda_stream)
        return inputs, output, cuda_graph

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        shapes = tuple(tuple(x.shape) for x in inputs)
        with torch.cuda.device(self.device):
            if shapes not in self.graphs:
                self.graphs[shapes] = self._capture(shapes)
            buffers, output, cuda_graph = self.graphs[shapes]
            if self.bound != shapes:
                self._bind(shapes, buffers, output)
            for buffer, x in zip(buffers, inputs, strict=False):
                buffer.copy_(x)
            cuda_graph.replay()
            return output.clone()  # the next replay overwrites the buffer


def tensorrt_backend(
    model: nn.Module,
    device: torch.device,
    dtype: torch.dtype,
    *,
    weights_sha256: str | None = None,
    model_dir: str | Path | None = None,
) -> Backend:
    require_tensorrt()
    if device.type != "cuda":
        raise TensorRTUnavailable(f"the tensorrt backend runs on a CUDA device, not {device}; pass --device cuda")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    spec = SPECS[model.kind]
    folder = export_folder(model, dtype, weights_sha256, model_dir)
    with torch.cuda.device(device):
        graphs = {
            name: EngineRunner(ensure_engine(folder, name), spec.graphs[name], device, dtype)
            for name in spec.runtime_graphs
        }
    return Backend("tensorrt", graphs, folder)
