"""Execution backends of the SR pipeline's three stages: encode, restore (one NFE), decode.

Every backend takes and returns torch tensors, so the tiler, padding and I/O around it are shared.
"""

from __future__ import annotations

import torch

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


BACKENDS = {"torch": TorchBackend}


def create_backend(name: str, model: OneStepSR, device: torch.device, dtype: torch.dtype):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; available here: {', '.join(BACKENDS)}")
    return BACKENDS[name](model, device, dtype)
