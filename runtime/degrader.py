"""`Degrader`: one HR image in, realistic degraded images at any scales in [1, s_max] out, aligned at HR size,
with one velocity evaluation per scale.

HR image -> pad to the model stride -> per tile: (batch of scales) RAE encode -> u(z(0), 0, r) once -> z(r) ->
RAE decode with the HR skips -> tiles blended -> crop -> the model's pixel noise, one draw per seed -> optional
resize to the LR grid. `steps` switches to the multi-step reference solver. Tiles bound the memory of large
photos as in `SuperResolver`, and so does the same pixel budget.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from flowsr.core import images
from flowsr.core.degflow import lr_size, scale_to_time
from flowsr.core.degradation_model import DegradationModel
from flowsr.core.errors import SettingsError, check_number
from flowsr.core.sr_model import pad_to_multiple, resize_to
from flowsr.export.spec import dtype_name

from .allocator import release_free_memory
from .backends import create_backend
from .default_models import default_degradation_model
from .devices import resolve_device
from .options import DEFAULT_MAX_MEGAPIXELS, MAX_BATCH, MAX_MEGAPIXELS, MAX_STEPS, MAX_TILE, MIN_MEGAPIXELS
from .tiling import tiled_map

SOLVERS = ("one-step", "euler", "adaptive")


class Degrader:
    """Synthesize degraded versions of HR images.

    `solver`: "one-step" (the average velocity, 1 NFE per scale), "euler" (`steps` Euler steps of the
    instantaneous velocity) or "adaptive" (torchdiffeq's dopri5; the reference). `backend`: "torch", "compile",
    "onnxruntime" or "tensorrt" (the last three one-step only: the single-NFE graph, compiled or exported). `tile`
    and `overlap` are in HR pixels, multiples of the model stride (0: the whole image at once); `max_megapixels`
    refuses larger images.
    """

    def __init__(
        self,
        model: str | Path | DegradationModel | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = torch.float32,
        backend: str = "torch",
        solver: str = "one-step",
        steps: int = 32,
        batch_size: int = 4,
        tile: int = 512,
        overlap: int = 64,
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        noise: bool = True,
    ):
        check_number("steps", steps, 1, MAX_STEPS, integer=True)
        check_number("batch size", batch_size, 1, MAX_BATCH, integer=True)
        check_number("tile", tile, 0, MAX_TILE, integer=True)
        check_number("overlap", overlap, 0, MAX_TILE, integer=True)
        check_number("max megapixels", max_megapixels, MIN_MEGAPIXELS, MAX_MEGAPIXELS)
        self.device = resolve_device(device)
        self.dtype = getattr(torch, dtype_name(dtype))
        if model is None:
            model = default_degradation_model()
        model_dir = weights_sha256 = None
        if isinstance(model, (str, Path)):
            model_dir = model
            model = DegradationModel.from_pretrained(model)
            weights_sha256 = model.manifest.weights_sha256
        if solver not in SOLVERS:
            raise SettingsError(f"unknown solver {solver!r}; choose one of: {', '.join(SOLVERS)}")
        if solver != "one-step" and backend != "torch":
            raise SettingsError(f"the {solver} reference solver runs on the torch backend only; pass --backend torch")
        if tile and (tile % model.stride or overlap % model.stride or overlap >= tile):
            raise SettingsError(
                f"tile {tile} and overlap {overlap} must be multiples of the model stride {model.stride} "
                "with overlap < tile"
            )
        self.model, self.manifest = model, model.manifest
        self.solver, self.steps, self.batch_size = solver, steps, batch_size
        self.tile, self.overlap, self.max_pixels = tile, overlap, int(max_megapixels * 1e6)
        self.s_max, self.stride = model.s_max, model.stride
        self.noise = model.noise_model if noise else None
        self.evaluations = 0  # velocity evaluations so far: one per scale for the one-step solver
        runtime = create_backend(
            backend, model, self.device, self.dtype, weights_sha256=weights_sha256, model_dir=model_dir
        )
        self.run, self.fixed_tiles = runtime.graphs["degrader"], runtime.fixed_shapes

    def times(self, scales: Sequence[float]) -> list[float]:
        return [scale_to_time(float(scale), self.s_max) for scale in scales]

    def check_size(self, height: int, width: int) -> None:
        """Refuse an image over the pixel budget, before any work is done."""
        if height * width > self.max_pixels:
            raise images.ImageError(
                f"image is {width}x{height} ({height * width / 1e6:.1f} MP), "
                f"over the {self.max_pixels / 1e6:g} MP limit; "
                "raise --max-megapixels or downscale it"
            )

    @torch.inference_mode()
    def degrade_tensor(self, hr: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
        """(1, 3, H, W) HR image -> (S, 3, H, W) float in [-1, 1], the network's image per scale, at HR size (no
        pixel noise: `add_noise` draws it). `hr` is float in [-1, 1], or uint8/uint16 pixels: those are converted
        tile by tile as the tiles run, so a large photo is never held in float twice."""
        if hr.ndim != 4 or hr.shape[:2] != (1, 3):
            raise ValueError(f"expected one (1, 3, H, W) image, got shape {tuple(hr.shape)}")
        self.check_size(*hr.shape[2:])
        times = self.times(scales)
        height, width = hr.shape[2:]
        if hr.is_floating_point():
            x = pad_to_multiple(hr.to(self.device, torch.float32), self.stride).to(self.dtype)

            def network_input(tile: torch.Tensor) -> torch.Tensor:
                return tile

        else:
            x = _pad_pixels(hr, self.stride)
            levels = float(torch.iinfo(hr.dtype).max)

            def network_input(tile: torch.Tensor) -> torch.Tensor:
                return (tile.to(self.device, torch.float32) * (2 / levels) - 1).to(self.dtype)

        if self.solver == "one-step":
            chunks = []
            for start in range(0, len(times), self.batch_size):
                r = torch.tensor(times[start : start + self.batch_size], device=self.device, dtype=torch.float32)
                images_r = tiled_map(
                    x.expand(len(r), -1, -1, -1),
                    lambda tile, r=r: self.run(network_input(tile), r),
                    self.tile,
                    self.overlap,
                    align=self.stride,
                    fixed_size=self.fixed_tiles,
                )
                chunks.append(images_r[:, :, :height, :width].float())
                self.evaluations += len(r)
            # One batch of scales (the usual case) is returned as it is: no second full-size copy of the result.
            out = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        else:
            out = torch.empty(len(times), 3, height, width, device=self.device)
            for index, r in enumerate(times):
                counts = []

                def solve(tile: torch.Tensor, r: float = r, counts: list = counts) -> torch.Tensor:
                    image, count = self.model.solve(
                        network_input(tile), r, steps=self.steps if self.solver == "euler" else None
                    )
                    counts.append(count)
                    return image

                out[index] = tiled_map(
                    x, solve, self.tile, self.overlap, align=self.stride, fixed_size=self.fixed_tiles
                )[0, :, :height, :width]
                self.evaluations += max(counts)  # per tile; the tiles of one scale run the same solver
        return out.clamp_(-1, 1)

    @torch.inference_mode()
    def add_noise(self, image: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
        """One draw of the model's pixel noise on a network image (1, 3, H, W) at `scale`, reproducible from
        (seed, scale); the image itself when there is no noise model or `noise` is off."""
        if self.noise is None:
            return image
        generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{float(scale)!r}".encode()))
        return self.noise.add_to(
            image, scale_to_time(float(scale), self.s_max), lr_size(image.shape[2], image.shape[3], scale), generator
        )

    def draws(
        self, image, scales: Sequence[float], seeds: Sequence[int], lr_grid: bool = False
    ) -> Iterator[list[np.ndarray]]:
        """A PIL image or HWC uint8/uint16 array -> for each seed in turn, one array per scale, same dtype; at HR
        size, or at the LR size round(H/s) x round(W/s) when `lr_grid` (bicubic, antialiased). The network runs
        once per scale; the seeds differ only in their pixel noise, and only one seed's images are held at a time."""
        picture = images.from_pil(image) if not isinstance(image, (np.ndarray, images.Picture)) else image
        rgb = picture.rgb if isinstance(picture, images.Picture) else picture
        if rgb.ndim == 2:
            rgb = images.gray_to_rgb(rgb)
        out = self.degrade_tensor(torch.from_numpy(rgb).permute(2, 0, 1)[None], scales)
        release_free_memory()  # the tiles' kept memory, before the noise's full-size buffers
        for seed in seeds:
            arrays = []
            for scale, network_image in zip(scales, out, strict=True):
                degraded = self.add_noise(network_image[None], scale, seed)[0]
                if lr_grid:
                    degraded = resize_to(degraded[None], *lr_size(rgb.shape[0], rgb.shape[1], scale))[0]
                arrays.append(images.from_tensor(degraded, bit_depth=16 if rgb.dtype == np.uint16 else 8))
            yield arrays

    def __call__(self, image, scales: Sequence[float], lr_grid: bool = False, seed: int = 0) -> list[np.ndarray]:
        """One draw: `draws` with one seed."""
        return next(self.draws(image, scales, [seed], lr_grid))


def _pad_pixels(pixels: torch.Tensor, multiple: int) -> torch.Tensor:
    """`pad_to_multiple` for integer pixels (which F.pad's reflection does not take), by gathering the same rows and
    columns: the padded pixels are the ones the float path pads with, and no float copy of the image is made."""
    if pixels.shape[2] % multiple == 0 and pixels.shape[3] % multiple == 0:
        return pixels
    reflect = pixels.shape[2] >= multiple and pixels.shape[3] >= multiple

    def indices(length: int) -> torch.Tensor:
        extra = torch.arange(-length % multiple)
        tail = length - 2 - extra if reflect else torch.full_like(extra, length - 1)
        return torch.cat([torch.arange(length), tail])

    return pixels.index_select(2, indices(pixels.shape[2])).index_select(3, indices(pixels.shape[3]))
