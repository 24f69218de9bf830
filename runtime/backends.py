"""Execution backends of the SR pipeline's three stages: encode, restore (one NFE), decode.

Every backend takes and returns torch tensors, so the tiler, padding and I/O around it are shared:
`torch` (eager), `compile` (torch.compile; CUDA graphs on GPU), `onnxruntime` (exported graphs, CPU or CUDA
provider), `tensorrt` (engines built from the exported graphs, CUDA graphs per shape).
"""

from __future__ import annotations

import importlib

import torch

from flowsr.core.errors import BackendError, SettingsError
from flowsr.core.sr_model import OneStepSR


class TorchBackend:
    """Eager PyTorch on the model's own modules."""

    name = "torch"

    def __init__(self, model: OneStepSR, device: torch.device, dtype: torch.dtype):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.dtype = dtype

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode(image.to(self.dtype))

    def restore(self, z_lr: torch.Tensor) -> torch.Tensor:
        return self.model.restore(z_lr.to(self.dtype))

    def decode(self, raw_latent: torch.Tensor) -> torch.Tensor:
        return self.model.decode(raw_latent.to(self.dtype))


class CompileBackend(TorchBackend):
    """`torch.compile` of each stage, specialized to each input shape (inductor on CPU and CUDA).

    On CUDA the stages are also captured as CUDA graphs ("reduce-overhead"). The first call with a new shape
    compiles and captures (seconds to minutes); later calls with that shape replay. The tiler cuts every
    image into tiles of one size (the last tile is flush with the edge, not smaller), so a run compiles once
    per stage and reuses the graphs; images smaller than a tile compile once per size, up to torch._dynamo's
    recompile limit, after which that stage runs eagerly.
    """

    name = "compile"

    def __init__(self, model: OneStepSR, device: torch.device, dtype: torch.dtype):
        super().__init__(model, device, dtype)
        self.cuda_graphs = device.type == "cuda"
        mode = "reduce-overhead" if self.cuda_graphs else None
        self._encode, self._restore, self._decode = (
            torch.compile(stage, mode=mode, dynamic=False) for stage in (self.model.encode, self.model.restore, self.model.decode)
        )

    def _run(self, stage, x: torch.Tensor) -> torch.Tensor:
        # Tiles are views whose strides depend on the whole image; contiguous inputs make the shape the only key.
        out = stage(x.to(self.dtype).contiguous())
        # A CUDA graph writes every replay into the same output memory: keep this result before the next call.
        return out.clone() if self.cuda_graphs else out

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self._run(self._encode, image)

    def restore(self, z_lr: torch.Tensor) -> torch.Tensor:
        return self._run(self._restore, z_lr)

    def decode(self, raw_latent: torch.Tensor) -> torch.Tensor:
        return self._run(self._decode, raw_latent)


# Imported on first use: each backend pulls in its own runtime (onnxruntime, tensorrt).
BACKENDS = {
    "torch": ("flowsr.runtime.backends", "TorchBackend", None),
    "compile": ("flowsr.runtime.backends", "CompileBackend", None),
    "onnxruntime": ("flowsr.runtime.backend_onnxruntime", "OnnxRuntimeBackend", "pip install 'flowsr[onnx]'"),
    "tensorrt": ("flowsr.runtime.backend_tensorrt", "TensorRTBackend", "pip install 'flowsr[gpu]' on a machine with an NVIDIA GPU"),
}


def create_backend(name: str, model: OneStepSR, device: torch.device, dtype: torch.dtype):
    if name not in BACKENDS:
        raise SettingsError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    module, cls, install = BACKENDS[name]
    try:
        backend = getattr(importlib.import_module(module), cls)
    except ImportError as err:
        raise BackendError(f"the {name} backend needs {err.name or 'a missing package'}, which is not installed; {install}") from None
    return backend(model, device, dtype)
