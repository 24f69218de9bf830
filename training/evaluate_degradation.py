"""`flowsr eval degradation`: how close single-NFE synthesis is to the multi-step solution and to the true
degraded images, at the knot scales and at scales the model never saw (x3).

For every HR image and scale s: the true image is the Real-ESRGAN-style pipeline's output at s (seeded per image,
one seed for all scales, resized back to HR size: the training data's construction); the model gives the 1-NFE
image and the adaptive multi-step (dopri5) reference. Reported per pair: pixel PSNR (8-bit RGB), latent MSE
(normalized RAE latents) and each image's `flat_noise`, how much noise and artefacts it carries where the photo is
flat. `bicubic` (down to the LR grid and back up) is the non-learned baseline.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio

from flowsr.core import images
from flowsr.core.atomic import atomic_file
from flowsr.core.degflow import lr_size, scale_to_time
from flowsr.core.degradation_model import DegradationModel
from flowsr.core.sr_model import resize_to

from .data import list_images
from .degradations import degrade

FIELDS = [
    "image",
    "scale",
    "pair",
    "psnr",
    "latent_mse",
    "first_noise",
    "second_noise",
    "first_spread",
    "second_spread",
]
DRAW_SEED_STEP = 1000  # draw k of image i uses seed + i + 1000 k
FLAT_SHARE = 0.25  # the flattest quarter of the photo's pixels
LUMA = torch.tensor([0.299, 0.587, 0.114])


def lr_grid(image: torch.Tensor, scale: float) -> np.ndarray:
    """An image (1, 3, H, W) in [-1, 1] at HR size, resized to the LR grid of `scale`: (3, h, w) in 8-bit levels."""
    return (
        ((resize_to(image.float(), *lr_size(image.shape[2], image.shape[3], scale))[0] + 1) * 127.5)
        .numpy()
        .astype(np.float64)
    )


def highpass(channels: np.ndarray) -> np.ndarray:
    """(C, h, w) minus its Gaussian blur (sigma 1 px) per channel: the grain, the first thing the eye sees of noise."""
    return channels - ndimage.gaussian_filter(channels, (0, 1.0, 1.0))


def flat_mask(hr: torch.Tensor, scale: float) -> np.ndarray:
    """The flattest quarter of the HR image's pixels on the LR grid of `scale` (lowest 5x5 local std of luma):
    where a degraded image's high frequencies are its noise and artefacts, not the scene's texture."""
    photo = np.tensordot(LUMA.double().numpy(), lr_grid(hr, scale), axes=1)
    local_std = np.sqrt(np.maximum(ndimage.uniform_filter(photo**2, 5) - ndimage.uniform_filter(photo, 5) ** 2, 0))
    return local_std <= np.quantile(local_std, FLAT_SHARE)


def flat_noise(image: torch.Tensor, hr: torch.Tensor, scale: float) -> float:
    """Std (8-bit levels) of the high-pass luma of `image` (1, 3, H, W in [-1, 1], at HR size) on the LR grid of
    `scale`, over `flat_mask` of the HR image."""
    grain = np.tensordot(LUMA.double().numpy(), highpass(lr_grid(image, scale)), axes=1)
    return float(grain[flat_mask(hr, scale)].std())


def top_left_crops(hr_root, max_side: int, stride: int) -> Iterator[tuple[Path, np.ndarray, torch.Tensor]]:
    """(path, HWC float32 in [0, 1], (1, 3, H, W) in [-1, 1]) of each image's top-left crop of at most `max_side`
    pixels per side, sides multiples of `stride`."""
    for path in list_images(hr_root):
        hr = images.to_unit_float(images.to_8bit(images.read_image(path).rgb))
        hr = np.ascontiguousarray(
            hr[: min(hr.shape[0], max_side) // stride * stride, : min(hr.shape[1], max_side) // stride * stride]
        )
        yield path, hr, torch.from_numpy(hr).permute(2, 0, 1)[None] * 2 - 1


def pipeline_draw(hr: np.ndarray, scale: float, seed: int) -> torch.Tensor:
    """One draw of the Real-ESRGAN-style pipeline at `scale`, brought back to HR size: (1, 3, H, W) in [-1, 1]."""
    lr = torch.from_numpy(degrade(hr, scale, seed=seed)).permute(2, 0, 1)[None] * 2 - 1
    return resize_to(lr, hr.shape[0], hr.shape[1]).clamp(-1, 1)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(peak_signal_noise_ratio(images.from_tensor(b), images.from_tensor(a), data_range=255))


@torch.no_grad()
def evaluate_degradation(
    hr_root, model: DegradationModel, scales=(2.0, 3.0, 4.0), seed: int = 0, max_side: int = 512, draws: int = 32
) -> list[dict]:
    """Per image, scale and pair of images, the rows of FIELDS. The true image is the pipeline's first draw;
    its flat-region noise is the mean over `draws` draws (other seeds). With a noise model the one-step image plus
    noise (`noisy`, its first draw; its noise the mean over `draws` draws) is compared with the true image too, and
    that row's spreads are the per-pixel std (8-bit levels) across the noise draws and across the pipeline's."""
    rows = []
    stride = model.stride
    noise = model.noise_model
    for index, (path, hr, hr_tensor) in enumerate(top_left_crops(hr_root, max_side, stride)):
        height, width = hr.shape[:2]
        z0, skips = model.rae.encode(hr_tensor)
        for scale in scales:
            r = scale_to_time(scale, model.s_max)
            grid = lr_size(height, width, scale)
            truths = [pipeline_draw(hr, scale, seed + index + DRAW_SEED_STEP * draw) for draw in range(draws)]
            true = truths[0]
            bicubic = resize_to(resize_to(hr_tensor, *grid), height, width).clamp(-1, 1)
            z_one = z0 + r * model.velocity(z0, torch.zeros(1), torch.full((1,), r))
            z_multi, _ = model.integrate(z0, r)
            one = model.rae.decode(z_one, skips).clamp(-1, 1)
            multi = model.rae.decode(z_multi, skips).clamp(-1, 1)
            latents = {name: model.rae.encode(image)[0] for name, image in (("true", true), ("bicubic", bicubic))}
            latents.update(one=z_one, multi=z_multi)
            pixels = {"true": true, "bicubic": bicubic, "one": one, "multi": multi}
            pairs = [("one", "multi"), ("one", "true"), ("multi", "true"), ("bicubic", "true")]
            spreads = {}
            if noise is not None:
                noisy = [
                    noise.add_to(one, r, grid, torch.Generator().manual_seed(seed + index + DRAW_SEED_STEP * draw))
                    for draw in range(draws)
                ]
                pixels["noisy"] = noisy[0]
                latents["noisy"] = model.rae.encode(noisy[0])[0]
                pairs.append(("noisy", "true"))
                spreads = {"noisy": _spread(noisy), "true": _spread(truths)}
            # Random images are scored over all their draws: the pipeline's, and the noise model's.
            draws_of = {"true": truths, "noisy": noisy} if noise is not None else {"true": truths}
            noise_levels = {
                name: float(np.mean([flat_noise(image, hr_tensor, scale) for image in draws_of.get(name, [image])]))
                for name, image in pixels.items()
            }
            for first, second in pairs:
                rows.append(
                    {
                        "image": path.name,
                        "scale": scale,
                        "pair": f"{first}-vs-{second}",
                        "psnr": _psnr(pixels[first], pixels[second]),
                        "latent_mse": (latents[first] - latents[second]).pow(2).mean().item(),
                        "first_noise": noise_levels[first],
                        "second_noise": noise_levels[second],
                        "first_spread": spreads.get(first, ""),
                        "second_spread": spreads.get(second, ""),
                    }
                )
    return rows


def _spread(draws: list[torch.Tensor]) -> float:
    """Per-pixel std across draws of one image, in 8-bit levels, averaged over pixels and channels."""
    return float((torch.cat(draws).std(dim=0) * 127.5).mean())


def summarize_degradation(rows: list[dict]) -> dict[tuple[float, str], dict[str, float]]:
    """Means per (scale, pair); `noise_ratio` and `spread_ratio` are the first image's mean over the second's."""
    groups: dict[tuple[float, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["scale"], row["pair"]), []).append(row)

    def ratio(group: list[dict], field: str) -> float:
        values = [(r[f"first_{field}"], r[f"second_{field}"]) for r in group if r[f"first_{field}"] != ""]
        return (
            float(np.mean([a for a, _ in values]) / max(np.mean([b for _, b in values]), 1e-12))
            if values
            else float("nan")
        )

    return {
        key: {
            "psnr": float(np.mean([r["psnr"] for r in group])),
            "latent_mse": float(np.mean([r["latent_mse"] for r in group])),
            "noise_ratio": ratio(group, "noise"),
            "spread_ratio": ratio(group, "spread"),
            "images": len(group),
        }
        for key, group in sorted(groups.items())
    }


def write_degradation_csv(rows: list[dict], path: str | Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(
        {key: f"{value:.6g}" if isinstance(value, float) else value for key, value in r.items()} for r in rows
    )
    with atomic_file(Path(path), "w") as f:
        f.write(buffer.getvalue())
