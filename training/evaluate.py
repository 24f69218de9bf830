"""`flowsr eval sr`: degrade HR images reproducibly, restore them, and score against bicubic upscaling.

On 8-bit RGB, per image and averaged, one CSV row per image and method: PSNR and SSIM (scikit-image), MS-SSIM
and VIF (pixel-domain visual information fidelity; torchmetrics, no learned weights), NIQE (no reference: how far
the image's statistics are from natural photos'; lower is more natural) and sharpness (gradient energy relative to
the HR image). PSNR favours blur; MS-SSIM and VIF rank a sharper faithful result above a blurry one.

The kinds of input (`training.degradations.degrade_for_eval`): clean bicubic downscales, mild (blur, noise and JPEG
as web and phone pictures have them), heavy (the Real-ESRGAN-style pipeline), and a sweep of strengths between.
Every method, bicubic included, gets the same LR image rounded to 8 bits, as it would be read from a file: the peers
(`training.peers`, run with ncnn) take 8-bit input, and a model must not gain from precision no file carries.

`models` may hold peers (`training.peers.Peer`) beside SR models: each has `upscale_tensor`.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure, visual_information_fidelity

from flowsr.core import images
from flowsr.core.atomic import atomic_file
from flowsr.core.sr_model import resize_to

from .data import DataError, list_images
from .degradations import SWEEP, degrade_for_eval
from .niqe import MIN_SIDE as NIQE_MIN_SIDE
from .niqe import niqe


def gradient_energy(image: np.ndarray) -> float:
    """Mean gradient magnitude of the luma: how much fine detail an image carries."""
    luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    dy, dx = np.gradient(luma)
    return float(np.hypot(dx, dy).mean())


MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # the five scales of Wang et al.
MS_SSIM_KERNEL = 11
VIF_MIN_SIDE = 41  # its finest Gaussian window


def _nchw(*arrays: np.ndarray) -> list[torch.Tensor]:
    """uint8 HWC arrays as float32 (1, C, H, W) tensors on the 0-255 scale, the range the torchmetrics calls take."""
    return [torch.from_numpy(a).permute(2, 0, 1)[None].float() for a in arrays]


def ms_ssim(restored: np.ndarray, reference: np.ndarray) -> float:
    """MS-SSIM of two uint8 HWC images, on the standard five scales where the image is large enough (176 px);
    smaller images use the finest scales that fit, their weights renormalized."""
    side = min(reference.shape[:2])
    scales = len(MS_SSIM_BETAS)
    while scales > 1 and side // (scales - 1) ** 2 <= MS_SSIM_KERNEL - 1:
        scales -= 1
    betas = np.array(MS_SSIM_BETAS[:scales]) / sum(MS_SSIM_BETAS[:scales])
    preds, target = _nchw(restored, reference)
    return float(
        multiscale_structural_similarity_index_measure(
            preds, target, data_range=255.0, betas=tuple(betas), normalize=None
        )
    )


def vif(restored: np.ndarray, reference: np.ndarray) -> float:
    """Pixel-domain VIF of two uint8 HWC images (0-255 scale, noise variance 2), averaged over the channels.

    In float32: 25x faster than float64 on the CPU, and within 1e-5 of it on photos."""
    if min(reference.shape[:2]) < VIF_MIN_SIDE:
        raise DataError(
            f"VIF needs images of at least {VIF_MIN_SIDE} px per side, got {reference.shape[1]}x{reference.shape[0]}"
        )
    preds, target = _nchw(restored, reference)
    return float(visual_information_fidelity(preds, target, sigma_n_sq=2.0))


METRICS = ("psnr", "ssim", "ms_ssim", "vif", "niqe", "sharpness")


def _score(restored: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    return {
        "psnr": peak_signal_noise_ratio(reference, restored, data_range=255),
        "ssim": structural_similarity(reference, restored, channel_axis=2, data_range=255),
        "ms_ssim": ms_ssim(restored, reference),
        "vif": vif(restored, reference),
        "niqe": niqe(restored),
        # 1.0: as much detail as the HR image; bicubic upscaling is well below it.
        "sharpness": gradient_energy(restored) / gradient_energy(reference),
    }


DEGRADATIONS = ("clean", "mild", "heavy")
MIN_EVAL_SIDE = max(NIQE_MIN_SIDE, VIF_MIN_SIDE)  # HR sides, after cropping to a multiple of the scale


def evaluate(
    hr_root, models: dict[str, object], scale: int = 4, seed: int = 0, degradation: str | float = "clean", on_image=None
) -> list[dict]:
    """Rows of (image, method, *METRICS); `models` maps a method name to a SuperResolver or a peer at `scale`.

    `degradation`: "clean", "mild", "heavy" or a sweep strength in [0, 1], seeded per image (`seed` + its index).
    `on_image(hr, results)`, if given, sees every HR image and the uint8 results by method (a comparison sheet)."""
    if degradation not in DEGRADATIONS and not (isinstance(degradation, float) and 0 <= degradation <= 1):
        raise ValueError(
            f"unknown degradation {degradation!r}; choose one of: {', '.join(DEGRADATIONS)}, or a strength in [0, 1]"
        )
    rows = []
    for index, path in enumerate(list_images(hr_root)):
        try:
            hr = images.to_8bit(images.read_image(path).rgb)
        except images.ImageError as err:  # a mean over fewer images would not be comparable: stop, naming it
            raise images.ImageError(f"{path}: {err}; remove or replace it, the evaluation scores every image") from None
        height, width = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
        if min(height, width) < MIN_EVAL_SIDE:
            raise images.ImageError(
                f"{path}: {hr.shape[1]}x{hr.shape[0]} is too small to score (every metric needs at least "
                f"{MIN_EVAL_SIDE} px per side); remove it, the evaluation scores every image"
            )
        hr = np.ascontiguousarray(hr[:height, :width])
        lr = degrade_for_eval(hr.astype(np.float32) / 255, scale, degradation, seed=seed + index)
        lr = np.round(lr * 255) / 255  # 8 bits, as files and the peers have it: the same LR for every method
        lr_tensor = torch.from_numpy(lr).permute(2, 0, 1)[None] * 2 - 1
        outputs = {"bicubic": resize_to(lr_tensor, height, width)[0]}
        strengths = {}
        for name, resolver in models.items():
            outputs[name] = resolver.upscale_tensor(lr_tensor)[0]
            if hasattr(resolver, "strength_of"):  # a flowsr model: the strength it restored the input at
                strengths[name] = float(resolver.strength_of(lr_tensor)[0])
        results = {name: images.from_tensor(output) for name, output in outputs.items()}
        for name, result in results.items():
            rows.append(
                {"image": path.name, "method": name, **_score(result, hr), "strength": strengths.get(name, math.nan)}
            )
        if on_image is not None:
            on_image(hr, results)
    return rows


def reconstruction_psnr(model, hr_root) -> float:
    """Mean PSNR (8-bit) of the SR model's autoencoder round trip, decode(encode(x)), over the images of a folder,
    each cropped to a multiple of the model stride: how much of a photo the latent keeps."""
    scores, stride, dtype = [], model.stride, next(model.parameters()).dtype
    for path in list_images(hr_root):
        hr = images.to_8bit(images.read_image(path).rgb)
        hr = np.ascontiguousarray(hr[: hr.shape[0] // stride * stride, : hr.shape[1] // stride * stride])
        with torch.no_grad():
            restored = model.decode(model.normalization.denormalize(model.encode(images.to_tensor(hr).to(dtype))))
        scores.append(peak_signal_noise_ratio(hr, images.from_tensor(restored[0].float()), data_range=255))
    return float(np.mean(scores))


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    methods: dict[str, list[dict]] = {}
    for row in rows:
        methods.setdefault(row["method"], []).append(row)
    return {
        name: {key: float(np.mean([r[key] for r in group])) for key in METRICS} | {"images": len(group)}
        for name, group in methods.items()
    }


def write_csv(rows: list[dict], path: str | Path) -> None:
    """Rows of `evaluate` or `sweep` (their keys are the columns; numbers to 5 decimals), written atomically: the
    CSV appears whole or not at all."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["image", "method", *METRICS])
    writer.writeheader()
    writer.writerows(
        {key: f"{value:.5f}" if isinstance(value, float) else value for key, value in r.items()} for r in rows
    )
    with atomic_file(path, "w") as f:
        f.write(buffer.getvalue())


def sweep(hr_root, models: dict[str, object], scale: int = 4, seed: int = 0) -> list[dict]:
    """Every model's mean and worst PSNR gain over bicubic at each strength of `SWEEP`, from clean to heavy: one row
    per strength and model, with the mean SSIM, VIF and NIQE differences to bicubic."""
    rows = []
    for strength in SWEEP:
        kind = "clean" if strength == 0 else strength if isinstance(strength, str) else float(strength)
        scored = evaluate(hr_root, models, scale=scale, seed=seed, degradation=kind)
        bicubic = {row["image"]: row for row in scored if row["method"] == "bicubic"}
        for name in models:
            mine = [row for row in scored if row["method"] == name]
            gains = [row["psnr"] - bicubic[row["image"]]["psnr"] for row in mine]
            read = [row["strength"] for row in mine]
            rows.append(
                {
                    "strength": str(strength),
                    "method": name,
                    "psnr_gain": float(np.mean(gains)),
                    "worst_gain": float(np.min(gains)),
                    # the strength the model restored at (its estimator's reading with --strength auto)
                    "strength_read": float(np.mean(read)),
                    "strength_read_min": float(np.min(read)),
                    "strength_read_max": float(np.max(read)),
                    **{
                        f"{key}_diff": float(np.mean([row[key] - bicubic[row["image"]][key] for row in mine]))
                        for key in ("ssim", "vif", "niqe")
                    },
                }
            )
    return rows
