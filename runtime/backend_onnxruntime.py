"""onnxruntime backend: the exported encoder, transformer and decoder graphs on the CPU or CUDA provider.

The graphs come from `MODEL_DIR/onnx/<dtype>/` when that export is of the same weights, otherwise they are
exported on first use into the cache (`$FLOWSR_CACHE` or `~/.cache/flowsr`), keyed by content hash, dtype
and opset. I/O binding points onnxruntime at the torch tensors' own memory, so nothing is copied; on CUDA the
provider runs on the torch stream that was current when the backend was made, ordered with the tiling and
blending around it.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from flowsr.core.degradation_model import DegradationModel
from flowsr.core.errors import BackendError
from flowsr.core.sr_model import OneStepSR
from flowsr.export.degrader_onnx import FILE as DEGRADER_FILE
from flowsr.export.degrader_onnx import degrader_onnx_dir
from flowsr.export.onnx_export import ONNX_ELEMENT_TYPES, PARTS, Geometry, Part, dtype_name, onnx_dir_for


class OnnxRuntimeUnavailable(BackendError):
    """onnxruntime cannot run this graph here; the message says why and what to do."""


def session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()  # the threads torch would use, for a like-for-like run
    return options


def providers_for(device: torch.device) -> list:
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise OnnxRuntimeUnavailable(f"the onnxruntime backend runs on cpu or cuda, not {device.type}")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise OnnxRuntimeUnavailable("this onnxruntime has no CUDAExecutionProvider; pip install onnxruntime-gpu, or use --device cpu")
    stream = torch.cuda.current_stream(device).cuda_stream
    options = {"device_id": device.index, "has_user_compute_stream": "1", "user_compute_stream": str(stream)}
    return [("CUDAExecutionProvider", options)]


class OnnxPart:
    """One exported part as a session that reads its input from and writes its output to torch tensors."""

    def __init__(self, path: Path, part: Part, geometry: Geometry, device: torch.device, dtype: torch.dtype):
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.part, self.geometry, self.device, self.dtype = part, geometry, device, dtype
        self.element_type = ONNX_ELEMENT_TYPES[dtype]
        try:
            self.session = ort.InferenceSession(str(path), session_options(), providers=providers_for(device))
        except (ort_errors.NotImplemented, ort_errors.InvalidGraph) as err:
            reason = str(err).strip().splitlines()[0]
            raise OnnxRuntimeUnavailable(f"onnxruntime's {device.type} provider cannot run the {dtype_name(dtype)} {part.name} graph ({reason})") from None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype).contiguous()
        out = torch.empty(self.geometry.output_shape(self.part, x.shape), device=self.device, dtype=self.dtype)
        binding = self.session.io_binding()
        index = self.device.index or 0
        binding.bind_input(self.part.input, self.device.type, index, self.element_type, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.part.output, self.device.type, index, self.element_type, tuple(out.shape), out.data_ptr())
        try:
            self.session.run_with_iobinding(binding)
        except (ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.RuntimeException) as err:
            raise BackendError(f"onnxruntime failed on the {self.part.name} graph: {str(err).strip().splitlines()[0]}") from None
        return out


class OnnxRuntimeBackend:
    """The three stages as onnxruntime sessions; same interface as `TorchBackend`."""

    name = "onnxruntime"

    def __init__(self, model: OneStepSR, device: torch.device, dtype: torch.dtype):
        providers_for(device)  # refuse before exporting anything
        folder = onnx_dir_for(model, dtype)
        geometry = Geometry.of(model)
        self.folder = folder
        try:
            self.encode, self.restore, self.decode = (
                OnnxPart(folder / f"{name}.onnx", PARTS[name], geometry, device, dtype) for name in ("encoder", "transformer", "decoder")
            )
        except OnnxRuntimeUnavailable as err:
            raise OnnxRuntimeUnavailable(f"{err}; use another --dtype or backend") from None


class DegraderSession:
    """The exported single-NFE degradation graph, `(hr, r) -> degraded`, bound to torch tensors like `OnnxPart`."""

    def __init__(self, model: DegradationModel, device: torch.device, dtype: torch.dtype):
        providers = providers_for(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.folder = degrader_onnx_dir(model, dtype)
        self.device, self.dtype, self.element_type = device, dtype, ONNX_ELEMENT_TYPES[dtype]
        try:
            self.session = ort.InferenceSession(str(self.folder / DEGRADER_FILE), session_options(), providers=providers)
        except (ort_errors.NotImplemented, ort_errors.InvalidGraph) as err:
            raise OnnxRuntimeUnavailable(f"onnxruntime's {device.type} provider cannot run the {dtype_name(dtype)} degrader graph "
                                         f"({str(err).strip().splitlines()[0]}); use another --dtype or backend") from None

    def __call__(self, hr: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        hr = hr.to(self.device, self.dtype).contiguous()
        r = r.to(self.device, torch.float32).contiguous()
        out = torch.empty_like(hr)
        binding, index = self.session.io_binding(), self.device.index or 0
        binding.bind_input("hr", self.device.type, index, self.element_type, tuple(hr.shape), hr.data_ptr())
        binding.bind_input("r", self.device.type, index, ONNX_ELEMENT_TYPES[torch.float32], tuple(r.shape), r.data_ptr())
        binding.bind_output("degraded", self.device.type, index, self.element_type, tuple(out.shape), out.data_ptr())
        try:
            self.session.run_with_iobinding(binding)
        except (ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.RuntimeException) as err:
            raise BackendError(f"onnxruntime failed on the degrader graph: {str(err).strip().splitlines()[0]}") from None
        return out
