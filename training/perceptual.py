"""LPIPS for the perceptual term of L_rec, from local weights only (nothing is downloaded at run time)."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from flowsr.core.errors import FlowsrError

HOW_TO = (
    "put the torchvision backbone checkpoint (e.g. hub/checkpoints/vgg16-397923af.pth) under a folder and pass it "
    "as --lpips-weights, or turn the term off with --lpips-weight 0"
)


class LPIPSUnavailable(FlowsrError):
    """The LPIPS term was asked for, but its package or weights are not here."""


def load_lpips(weights_dir: str | Path | None, net: str = "vgg") -> nn.Module:
    """The `lpips` package's LPIPS network; its linear layers ship with the package, the backbone comes from
    `weights_dir` (laid out as a TORCH_HOME: hub/checkpoints/<torchvision file>)."""
    try:
        import lpips
    except ImportError:
        raise LPIPSUnavailable(
            f"the LPIPS term needs the `lpips` package (and torchvision): install them, or {HOW_TO.split(', or ')[1]}"
        ) from None
    if not weights_dir or not (Path(weights_dir) / "hub" / "checkpoints").is_dir():
        raise LPIPSUnavailable(f"LPIPS backbone weights not found in {weights_dir}: {HOW_TO}")
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(weights_dir)
    try:
        return lpips.LPIPS(net=net, verbose=False).eval().requires_grad_(False)
    except Exception as err:  # torchvision raises URLError/RuntimeError when the file is missing or wrong
        raise LPIPSUnavailable(
            f"cannot load LPIPS ({type(err).__name__}: {str(err).splitlines()[0]}): {HOW_TO}"
        ) from None
    finally:
        if previous is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = previous
