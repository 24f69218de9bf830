"""`SuperResolver`: any image in, the image upscaled by any factor out, with one velocity evaluation per tile.

LR image -> its start time (the estimator's strength of the whole image, or the strength given) -> bicubic resize
to the target size -> pad to the model stride -> encode (tiled) -> restore from that time, one NFE per latent tile,
blended -> decode (tiled) -> colour fix -> crop -> same type as the input (`core.sr_model.super_resolve`, the same
code as the end-to-end ONNX graph).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flowsr.core import images
from flowsr.core.errors import SettingsError, check_number
from flowsr.core.sr_model import OneStepSR, super_resolve
from flowsr.export.spec import dtype_name

from .backends import create_backend
from .default_models import default_sr_model
from .devices import resolve_device
from .options import AUTO, DEFAULT_MAX_MEGAPIXELS, MAX_BATCH, MAX_MEGAPIXELS, MAX_SCALE, MAX_TILE, MIN_MEGAPIXELS
from .tiling import tiled_map


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class SuperResolver:
    """Upscale images with a one-step flow SR model.

    `strength` is how degraded the inputs are, from 0 (clean downscales) to 1 (heavily degraded), or "auto": the
    model's estimator reads it off each whole image. It picks the one-step start time, one per image, so the tiles of
    a large photo agree. Sizes are in output pixels, multiples of the model stride. `tile` bounds the transformer's
    tokens (one velocity evaluation per latent tile); `vae_tile` bounds the VAE's activations. The VAE tile is larger by
    default because its GroupNorm statistics are per tile, so VAE tiles differ more from the whole image
    than latent tiles do. 0 turns either off; memory then grows with the image. `color_fix` puts the restored
    detail on the bicubic input's low frequencies (`core.color_fix`), over the whole image after the tiles.
    """

    def __init__(
        self,
        model: str | Path | OneStepSR | None = None,
        *,
        scale: float = 4.0,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        backend: str = "torch",
        tile: int = 1024,
        overlap: int = 128,
        vae_tile: int = 2048,
        batch_size: int = 1,
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        color_fix: bool = True,
        strength: float | str = AUTO,
    ):
        check_number("scale", scale, 1, MAX_SCALE)
        if strength != AUTO:
            check_number("strength", strength, 0, 1)
        check_number("max megapixels", max_megapixels, MIN_MEGAPIXELS, MAX_MEGAPIXELS)
        check_number("batch size", batch_size, 1, MAX_BATCH, integer=True)
        for name, size in (("tile", tile), ("VAE tile", vae_tile), ("overlap", overlap)):
            check_number(name, size, 0, MAX_TILE, integer=True)
        self.device = resolve_device(device)
        self.dtype = getattr(torch, dtype_name(dtype)) if dtype is not None else default_dtype(self.device)
        if model is None:
            model = default_sr_model()
        model_dir = weights_sha256 = None
        if isinstance(model, (str, Path)):
            model_dir = model
            model = OneStepSR.from_pretrained(model)
            weights_sha256 = model.manifest.weights_sha256
        self.model, self.manifest = model, model.manifest  # the torch and compile backends run this model
        self.stride = model.stride
        self.latent_factor = self.stride // 2
        for size in (tile, vae_tile):
            if size and (size % self.stride or overlap % self.stride or not 0 <= overlap < size):
                raise SettingsError(
                    f"tile {size} and overlap {overlap} must be multiples of the model stride {self.stride} "
                    "with overlap < tile"
                )
        self.scale = float(scale)
        self.tile, self.overlap, self.vae_tile = tile, overlap, vae_tile
        self.batch_size, self.color_fix = batch_size, color_fix
        self.strength = strength
        self.max_pixels = int(max_megapixels * 1e6)
        self.backend = create_backend(
            backend, model, self.device, self.dtype, weights_sha256=weights_sha256, model_dir=model_dir
        )

    @classmethod
    def from_preset(cls, preset: str = "tiny", seed: int = 0, **kwargs) -> SuperResolver:
        """Random weights of a preset: for tests and benchmarks, never for real images."""
        model = OneStepSR.from_preset(preset, seed)
        return cls(model, **kwargs)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def check_size(self, height: int, width: int) -> None:
        """Refuse work that would exceed the memory limit, before any is done."""
        out_h, out_w = self.output_size(height, width)
        if out_h * out_w > self.max_pixels:
            raise images.ImageError(
                f"output would be {out_w}x{out_h} ({out_h * out_w / 1e6:.1f} MP), over the "
                f"{self.max_pixels / 1e6:g} MP limit; use a smaller --scale or raise --max-megapixels"
            )

    @torch.inference_mode()
    def upscale_tensor(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) float in [-1, 1] -> (B, 3, round(h*scale), round(w*scale)) float32 in [-1, 1]."""
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) image batch, got shape {tuple(lr.shape)}")
        self.check_size(lr.shape[2], lr.shape[3])
        return self._super_resolve(lr.to(self.device, torch.float32))

    def strength_of(self, lr: torch.Tensor) -> torch.Tensor:
        """The degradation strength (B,) the LR images (B, 3, h, w) in [-1, 1] are restored at: the one given, or
        the one the estimator reads off each whole image."""
        if self.strength == AUTO:
            return self.backend.graphs["estimator"](lr).float()
        return torch.full((lr.shape[0],), float(self.strength), device=lr.device)

    def start_time(self, lr: torch.Tensor) -> torch.Tensor:
        """The start time t (B,) of LR images: the model's time for their strength."""
        return self.model.start_time(self.strength_of(lr).to(self.model.start_times.device)).to(lr.device)

    def _super_resolve(self, lr: torch.Tensor) -> torch.Tensor:
        f, graphs, fixed = self.latent_factor, self.backend.graphs, self.backend.fixed_shapes
        return super_resolve(
            lr,
            *self.output_size(lr.shape[2], lr.shape[3]),
            self.stride,
            start_time=self.start_time,
            encode=lambda x: tiled_map(
                x, graphs["encoder"], self.vae_tile, self.overlap, align=self.stride, scale=1 / f, fixed_size=fixed
            ),
            restore=lambda z, t: tiled_map(
                z,
                lambda tile: graphs["transformer"](tile, t),
                self.tile // f,
                self.overlap // f,
                align=2,
                fixed_size=fixed,
            ),
            decode=lambda raw: tiled_map(
                raw, graphs["decoder"], self.vae_tile // f, self.overlap // f, align=2, scale=f, fixed_size=fixed
            ),
            color_fix_levels=self.manifest.color_fix_levels if self.color_fix else 0,
            color_fix_band=images.ROW_BAND,
        )

    def __call__(self, image):
        """Upscale one image or a list: PIL, numpy uint8/uint16 HWC, torch uint8 HWC or float (B,)3HW in [0, 1].

        The result has the input's type and layout; an alpha channel is carried through (bicubic).
        """
        if isinstance(image, (list, tuple)):
            return self.upscale_many(image)
        return self.upscale_many([image])[0]

    def upscale_many(self, inputs: Sequence) -> list:
        """Batches images of equal size `batch_size` at a time; results keep the input order."""
        outputs: list = [None] * len(inputs)
        pictures: dict[int, images.Picture] = {}
        for index, item in enumerate(inputs):
            if isinstance(item, torch.Tensor) and item.is_floating_point():
                outputs[index] = self._upscale_float(item)
            else:
                pictures[index] = _to_picture(item)
        by_size: dict[tuple, list[int]] = {}
        for index, picture in pictures.items():
            by_size.setdefault(picture.rgb.shape[:2], []).append(index)
        for indices in by_size.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = torch.cat([images.to_tensor(pictures[i].rgb) for i in chunk])
                for i, sr in zip(chunk, self.upscale_tensor(batch), strict=True):
                    outputs[i] = _from_picture(self._finish(pictures[i], sr), like=inputs[i])
        return outputs

    def upscale_picture(self, picture: images.Picture) -> images.Picture:
        """File-level entry (the CLI's): keeps bit depth and alpha."""
        return self._finish(picture, self.upscale_tensor(images.to_tensor(picture.rgb))[0])

    def _finish(self, picture: images.Picture, sr: torch.Tensor) -> images.Picture:
        rgb = images.from_tensor(sr, bit_depth=picture.bit_depth)
        alpha = None
        if picture.alpha is not None:
            alpha = images.resize_alpha(picture.alpha, rgb.shape[0], rgb.shape[1])
        return images.Picture(rgb=rgb, alpha=alpha)

    def _upscale_float(self, image: torch.Tensor) -> torch.Tensor:
        """Float (3, H, W) or (B, 3, H, W) in [0, 1]: upscaled in float, no 8-bit rounding on the way."""
        if image.ndim not in (3, 4) or image.shape[-3] != 3:
            raise ValueError(
                f"float tensors must be (3, H, W) or (B, 3, H, W) in [0, 1], got shape {tuple(image.shape)}"
            )
        batch = image if image.ndim == 4 else image[None]
        chunks = [self.upscale_tensor(part.float() * 2 - 1) for part in batch.split(self.batch_size)]
        result = ((torch.cat(chunks) + 1) / 2).to(image.device, image.dtype)
        return result if image.ndim == 4 else result[0]


def _to_picture(item) -> images.Picture:
    if isinstance(item, Image.Image):
        return images.from_pil(item)
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        if (
            item.dtype not in (np.uint8, np.uint16)
            or item.ndim not in (2, 3)
            or (item.ndim == 3 and item.shape[2] not in (1, 3, 4))
        ):
            raise ValueError(
                f"numpy/tensor images must be uint8 or uint16 with shape (H, W), (H, W, 3) or (H, W, 4); "
                f"got {item.dtype} {item.shape}"
            )
        if item.ndim == 2 or item.shape[2] == 1:
            return images.Picture(rgb=images.gray_to_rgb(item.reshape(item.shape[:2])))
        return images.Picture(
            rgb=np.ascontiguousarray(item[..., :3]), alpha=item[..., 3] if item.shape[2] == 4 else None
        )
    raise TypeError(f"cannot upscale a {type(item).__name__}; pass a PIL image, a numpy array or a torch tensor")


def _from_picture(picture: images.Picture, like):
    array = picture.rgb if picture.alpha is None else np.dstack([picture.rgb, picture.alpha])
    if isinstance(like, Image.Image):
        return Image.fromarray(array)
    if isinstance(like, torch.Tensor):
        return torch.from_numpy(array).to(like.device)
    return array
