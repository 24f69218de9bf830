"""TensorRT backend: one engine per stage, persistent torch I/O buffers and a CUDA graph per input shape.

Engines come from `export.tensorrt_engine` (built from the ONNX export on first use, then cached). Each
stage keeps one execution context; the first call with a new input shape allocates that shape's input and
output buffers, runs the engine once on the backend's stream with `execute_async_v3` (TensorRT's lazy setup
happens outside any capture) and captures a CUDA graph of the call. Later calls copy the input into the
buffer and replay the graph on the caller's stream: the tiler gives every tile of an image one shape, so a
run captures once per stage.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flowsr.core.errors import BackendError, SettingsError
from flowsr.core.sr_model import OneStepSR
from flowsr.export.onnx_export import PARTS, Part, onnx_dir_for
from flowsr.export.tensorrt_engine import TensorRTUnavailable, ensure_engine, require_tensorrt


class EngineRunner:
    """One engine and execution context; per input shape, persistent buffers and a captured CUDA graph."""

    def __init__(self, engine_file: Path, part: Part, device: torch.device, dtype: torch.dtype):
        trt = require_tensorrt()
        self.part, self.device, self.dtype = part, device, dtype
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)  # must outlive the engine
        self.engine = self.runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if self.engine is None:
            raise TensorRTUnavailable(f"TensorRT could not load {engine_file} (built by another version?); delete it to rebuild")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device)
        self.graphs: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.cuda.CUDAGraph]] = {}
        self.bound_shape: tuple | None = None

    def _bind(self, shape: tuple, inputs: torch.Tensor, outputs: torch.Tensor | None) -> None:
        """Put the context in the state a shape's graph was captured in: its input shape and buffer addresses."""
        self.bound_shape = None
        if not self.context.set_input_shape(self.part.input, shape):
            low, _, high = self.engine.get_tensor_profile_shape(self.part.input, 0)
            raise SettingsError(
                f"{self.part.name} input {list(shape)} is outside the engine's profile {list(low)}..{list(high)}; "
                "keep --tile, --vae-tile and the batch within it, or export with a larger ShapeProfile"
            )
        self.context.set_tensor_address(self.part.input, inputs.data_ptr())
        if outputs is not None:
            self.context.set_tensor_address(self.part.output, outputs.data_ptr())
        self.bound_shape = shape

    def _capture(self, shape: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.CUDAGraph]:
        inputs = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self._bind(shape, inputs, None)
        outputs = torch.empty(tuple(self.context.get_tensor_shape(self.part.output)), device=self.device, dtype=self.dtype)
        self._bind(shape, inputs, outputs)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError(f"TensorRT failed to run the {self.part.name} engine")
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            self.context.execute_async_v3(self.stream.cuda_stream)
        return inputs, outputs, graph

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        with torch.cuda.device(self.device):
            if shape not in self.graphs:
                self.graphs[shape] = self._capture(shape)
            inputs, outputs, graph = self.graphs[shape]
            if self.bound_shape != shape:
                self._bind(shape, inputs, outputs)
            inputs.copy_(x)
            graph.replay()
            return outputs.clone()  # the next replay overwrites the buffer


class TensorRTBackend:
    """The three stages as TensorRT engines; same interface as `TorchBackend`."""

    name = "tensorrt"

    def __init__(self, model: OneStepSR, device: torch.device, dtype: torch.dtype):
        require_tensorrt()
        if device.type != "cuda":
            raise TensorRTUnavailable(f"the tensorrt backend runs on a CUDA device, not {device}; pass --device cuda")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        folder = onnx_dir_for(model, dtype)
        with torch.cuda.device(device):
            self.encode, self.restore, self.decode = (
                EngineRunner(ensure_engine(folder, name), PARTS[name], device, dtype) for name in ("encoder", "transformer", "decoder")
            )
