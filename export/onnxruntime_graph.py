"""An exported graph as an onnxruntime session that reads and writes torch tensors in place (I/O binding).

The export's verification and the runtime's onnxruntime backend both run graphs through this, on the CPU or
the CUDA provider. On CUDA the provider runs on the torch stream that was current when the session was made,
ordered with the torch work around it.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from flowsr.core.errors import BackendError

from .spec import ONNX_ELEMENT_TYPES, Geometry, Graph, dtype_name


class OnnxRuntimeUnavailable(BackendError):
    """onnxruntime cannot run this graph here; the message says why and what to do."""


def session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()  # the threads torch would use, for a like-for-like run
    # Between the sessions torch runs the resize and the colour fix on the same cores: threads that spin-wait after
    # a run would take those cores from it (on 2 cores that doubled the whole upscale's time).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def providers_for(device: torch.device) -> list:
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise OnnxRuntimeUnavailable(f"the onnxruntime backend runs on cpu or cuda, not {device.type}")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise OnnxRuntimeUnavailable(
            "this onnxruntime has no CUDAExecutionProvider; pip install onnxruntime-gpu, or use --device cpu"
        )
    stream = torch.cuda.current_stream(device).cuda_stream
    options = {"device_id": device.index, "has_user_compute_stream": "1", "user_compute_stream": str(stream)}
    return [("CUDAExecutionProvider", options)]


class OnnxGraph:
    """One exported graph, called like the model method it was traced from: torch tensors in, a torch tensor out."""

    def __init__(self, path: Path, graph: Graph, geometry: Geometry, device: torch.device, dtype: torch.dtype):
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.graph, self.geometry, self.device = graph, geometry, device
        name = dtype_name(dtype)
        # the spec's dtype of each tensor for this export dtype (int8 QDQ graphs take and give float32)
        self.dtypes = [getattr(torch, tensor.dtype(name)) for tensor in graph.inputs]
        self.output_dtype = getattr(torch, graph.output.dtype(name))
        try:
            self.session = ort.InferenceSession(str(path), session_options(), providers=providers_for(device))
        except (ort_errors.NotImplemented, ort_errors.InvalidGraph) as err:
            reason = str(err).strip().splitlines()[0]
            raise OnnxRuntimeUnavailable(
                f"onnxruntime's {device.type} provider cannot run the {name} {graph.name} graph ({reason})"
            ) from None

    def _bind(self, binding, name: str, tensor: torch.Tensor, output: bool = False) -> None:
        element_type = ONNX_ELEMENT_TYPES[dtype_name(tensor.dtype)]
        bind = binding.bind_output if output else binding.bind_input
        bind(name, self.device.type, self.device.index or 0, element_type, tuple(tensor.shape), tensor.data_ptr())

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        inputs = [x.to(self.device, dtype).contiguous() for x, dtype in zip(inputs, self.dtypes, strict=False)]
        out = torch.empty(
            self.graph.output_shape(self.geometry, inputs[0].shape), device=self.device, dtype=self.output_dtype
        )
        binding = self.session.io_binding()
        for tensor, x in zip(self.graph.inputs, inputs, strict=False):
            self._bind(binding, tensor.name, x)
        self._bind(binding, self.graph.output.name, out, output=True)
        try:
            self.session.run_with_iobinding(binding)
        except (ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.RuntimeException) as err:
            raise BackendError(
                f"onnxruntime failed on the {self.graph.name} graph: {str(err).strip().splitlines()[0]}"
            ) from None
        return out
