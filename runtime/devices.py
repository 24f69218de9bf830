"""The device a SuperResolver or Degrader runs on: the user's choice checked up front, or the best one present.

A device this machine lacks (`cuda` without a CUDA build or GPU, `cuda:3` with two GPUs, a misspelt name) is
refused in one line before any model is loaded, instead of failing deep inside torch.
"""

from __future__ import annotations

import torch

from flowsr.core.errors import FlowsrError


class DeviceError(FlowsrError):
    """The requested device does not exist on this machine."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` as a torch.device that this machine has (None: cuda if present, else cpu); DeviceError otherwise."""
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {str(device)!r}; use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(
                f"device {str(device)!r}: this machine has no CUDA device torch can use; use --device cpu"
            )
        if resolved.index is not None and resolved.index >= count:
            raise DeviceError(
                f"device {str(device)!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    elif resolved.type != "cpu":
        raise DeviceError(f"device {str(device)!r}: flowsr runs on cpu or cuda")
    return resolved
