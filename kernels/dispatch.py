"""Which implementation a fused op runs: its Triton kernel on CUDA, its torch reference elsewhere.

`use_backend("triton")` forces the kernels, also on CPU tensors under Triton's interpreter
(TRITON_INTERPRET=1, set before triton is imported): that is how the CPU tests run the real kernel
code. `use_backend("torch")` forces the references, e.g. to compare on a GPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "triton", "torch")
_backend = "auto"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the fused ops with `name` ("auto", "triton" or "torch") inside the block."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; expected one of {BACKENDS}")
    previous, _backend = _backend, name
    try:
        yield
    finally:
        _backend = previous


def triton_runs_on(device: torch.device | str) -> bool:
    """Triton kernels run on CUDA tensors, and on CPU tensors only under the interpreter (TRITON_INTERPRET=1)."""
    return torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(tensor: torch.Tensor) -> bool:
    """True when the op on `tensor` should launch its Triton kernel."""
    if _backend == "torch":
        return False
    if _backend == "auto":
        return tensor.is_cuda
    if not triton_runs_on(tensor.device):
        raise RuntimeError("Triton kernels on CPU tensors need TRITON_INTERPRET=1 set before triton is imported")
    return True


def per_sample_vector(value: float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """A scalar or per-sample (B,) time/step as the contiguous float32 (B,) vector the kernels read.

    A Python number becomes a device-side fill, not a host-to-device copy (which would sync the stream).
    """
    if not isinstance(value, torch.Tensor):
        return torch.full((batch,), float(value), dtype=torch.float32, device=device)
    value = value.to(device=device, dtype=torch.float32)
    if value.ndim == 0:
        return value.expand(batch).contiguous()
    if value.shape != (batch,):
        raise ValueError(f"per-sample value has shape {tuple(value.shape)}, expected ({batch},)")
    return value.contiguous()


def warps_for(block: int) -> int:
    """Memory-bound blocks: 4 warps up to 2048 elements, 8 above (16 B per thread per access on H100)."""
    return 4 if block <= 2048 else 8
