"""`flowsr eval`: degrade HR images reproducibly, restore them, and score against bicubic upscaling.

PSNR and SSIM (scikit-image) on 8-bit RGB, and sharpness (gradient energy relative to the HR image), per image
and averaged; one CSV row per image and method.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from flowsr.core import images
from flowsr.core.atomic import atomic_file
from flowsr.core.sr_model import resize_to

from .data import list_images
from .degradations import DegradationConfig, bicubic_downscale, degrade


def gradient_energy(image: np.ndarray) -> float:
    """Mean gradient magnitude of the luma: how much fine detail an image carries."""
    luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    dy, dx = np.gradient(luma)
    return float(np.hypot(dx, dy).mean())


def _score(restored: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    return {
        "psnr": peak_signal_noise_ratio(reference, restored, data_range=255),
        "ssim": structural_similarity(reference, restored, channel_axis=2, data_range=255),
        # 1.0: as much detail as the HR image; bicubic upscaling is well below it.
        "sharpness": gradient_energy(restored) / gradient_energy(reference),
    }


DEGRADATIONS = ("realesrgan", "bicubic")


def evaluate(hr_root, models: dict[str, object], scale: int = 4, seed: int = 0, config: DegradationConfig = DegradationConfig(),
             degradation: str = "realesrgan") -> list[dict]:
    """Rows of (image, method, psnr, ssim, sharpness); `models` maps a method name to a SuperResolver at `scale`.

    `degradation`: "realesrgan" (the training pipeline, seeded per image) or "bicubic" (clean downscaling)."""
    if degradation not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {degradation!r}; choose one of: {', '.join(DEGRADATIONS)}")
    rows = []
    for index, path in enumerate(list_images(hr_root)):
        hr = images.read_image(path).rgb
        hr = images.to_8bit(hr)
        height, width = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
        hr = np.ascontiguousarray(hr[:height, :width])
        if degradation == "bicubic":
            lr = bicubic_downscale(hr.astype(np.float32) / 255, scale)
        else:
            lr = degrade(hr.astype(np.float32) / 255, scale, seed=seed + index, config=config)
        lr_tensor = torch.from_numpy(lr).permute(2, 0, 1)[None] * 2 - 1
        outputs = {"bicubic": resize_to(lr_tensor, height, width)[0]}
        for name, resolver in models.items():
            outputs[name] = resolver.upscale_tensor(lr_tensor)[0]
        for name, output in outputs.items():
            rows.append({"image": path.name, "method": name, **_score(images.from_tensor(output), hr)})
    return rows


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    methods: dict[str, list[dict]] = {}
    for row in rows:
        methods.setdefault(row["method"], []).append(row)
    return {name: {key: float(np.mean([r[key] for r in group])) for key in ("psnr", "ssim", "sharpness")} | {"images": len(group)}
            for name, group in methods.items()}


def write_csv(rows: list[dict], path: str | Path) -> None:
    """Atomically: the CSV appears whole or not at all."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["image", "method", "psnr", "ssim", "sharpness"])
    writer.writeheader()
    writer.writerows({**r, "psnr": f"{r['psnr']:.4f}", "ssim": f"{r['ssim']:.5f}", "sharpness": f"{r['sharpness']:.4f}"} for r in rows)
    with atomic_file(path, "w") as f:
        f.write(buffer.getvalue())
