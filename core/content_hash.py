"""Content hashes of models: what names an export and its engines, so the same weights never export twice.

The weights are hashed once, when a model directory is saved, and the digest is kept in its manifest; the
runtime then keys its caches by that digest and the few constants the graphs bake in (t*, guidance, the
latent normalization, the knot scales), which are cheap to hash, without reading the weights again.
"""

from __future__ import annotations

import hashlib
import itertools
import json

import torch
from torch import nn


def weights_sha256(module: nn.Module) -> str:
    """The sha256 of every parameter and buffer: name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def content_sha256(model: nn.Module, weights: str | None = None) -> str:
    """The model's graphs' identity: its weights' digest (`weights`, as stored, or computed now) and the constants
    `model.graph_constants()` that the exported graphs bake in."""
    weights = weights or weights_sha256(model)
    return hashlib.sha256(json.dumps([weights, model.graph_constants()]).encode()).hexdigest()
