"""`flowsr eval-degradation`: how close single-NFE synthesis is to the multi-step solution and to the true
degraded images, at the knot scales and at scales the model never saw (x3).

For every HR image and scale s: the true image is the Real-ESRGAN-style pipeline's output at s (seeded per image,
one seed for all scales, resized back to HR size: the training data's construction); the model gives the 1-NFE
image and the adaptive multi-step (dopri5) reference. Reported per pair: pixel PSNR (8-bit RGB) and latent MSE
(normalized RAE latents). `bicubic` (down to the LR grid and back up) is the non-learned baseline.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio

from flowsr.core import images
from flowsr.core.atomic import atomic_file
from flowsr.core.degflow import scale_to_time
from flowsr.core.degradation_model import DegradationModel
from flowsr.core.sr_model import resize_to

from .data import list_images
from .degradations import degrade

FIELDS = ["image", "scale", "pair", "psnr", "latent_mse"]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(peak_signal_noise_ratio(images.from_tensor(b), images.from_tensor(a), data_range=255))


@torch.no_grad()
def evaluate_degradation(hr_root, model: DegradationModel, scales=(2.0, 3.0, 4.0), seed: int = 0, max_side: int = 512) -> list[dict]:
    rows = []
    stride = model.stride
    for index, path in enumerate(list_images(hr_root)):
        hr = images.to_unit_float(images.to_8bit(images.read_image(path).rgb))
        hr = hr[: min(hr.shape[0], max_side) // stride * stride, : min(hr.shape[1], max_side) // stride * stride]
        hr = np.ascontiguousarray(hr)
        height, width = hr.shape[:2]
        hr_tensor = torch.from_numpy(hr).permute(2, 0, 1)[None] * 2 - 1
        z0, skips = model.rae.encode(hr_tensor)
        for scale in scales:
            r = scale_to_time(scale, model.s_max)
            true = torch.from_numpy(degrade(hr, scale, seed=seed + index)).permute(2, 0, 1)[None] * 2 - 1
            true = resize_to(true, height, width).clamp(-1, 1)
            bicubic = resize_to(resize_to(hr_tensor, round(height / scale), round(width / scale)), height, width).clamp(-1, 1)
            z_one = z0 + r * model.velocity(z0, torch.zeros(1), torch.full((1,), r))
            z_multi, _ = model.integrate(z0, r)
            one = model.rae.decode(z_one, skips).clamp(-1, 1)
            multi = model.rae.decode(z_multi, skips).clamp(-1, 1)
            latents = {name: model.rae.encode(image)[0] for name, image in (("true", true), ("bicubic", bicubic))}
            latents.update(one=z_one, multi=z_multi)
            pixels = {"true": true, "bicubic": bicubic, "one": one, "multi": multi}
            for first, second in (("one", "multi"), ("one", "true"), ("multi", "true"), ("bicubic", "true")):
                rows.append({
                    "image": path.name, "scale": scale, "pair": f"{first}-vs-{second}",
                    "psnr": _psnr(pixels[first], pixels[second]),
                    "latent_mse": (latents[first] - latents[second]).pow(2).mean().item(),
                })
    return rows


def summarize_degradation(rows: list[dict]) -> dict[tuple[float, str], dict[str, float]]:
    groups: dict[tuple[float, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["scale"], row["pair"]), []).append(row)
    return {key: {"psnr": float(np.mean([r["psnr"] for r in group])), "latent_mse": float(np.mean([r["latent_mse"] for r in group])),
                  "images": len(group)} for key, group in sorted(groups.items())}


def write_degradation_csv(rows: list[dict], path: str | Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows({**r, "psnr": f"{r['psnr']:.4f}", "latent_mse": f"{r['latent_mse']:.6f}"} for r in rows)
    with atomic_file(Path(path), "w") as f:
        f.write(buffer.getvalue())
