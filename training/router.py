"""Train the router of a routed SR model on outcomes: which expert restores each LR crop better.

Crops of the training photos, each photo first shrunk to a random short side (texture density then varies as it
does between photos), are degraded two ways: clean bicubic downscaling and the training pipeline. Both experts
restore every LR crop, and the PSNR each reaches against the HR crop is kept. The router is then trained with a
binary cross-entropy whose label is "the degraded expert did better" and whose weight is the PSNR gap (capped):
sending a clean photo to the degraded expert costs about 4 dB, a near-clean degraded one to the clean expert a
few tenths, and the loss weighs the mistakes the same way.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F

from flowsr.core import images
from flowsr.core.atomic import atomic_directory
from flowsr.core.errors import ModelDirError
from flowsr.core.router import DEGRADED_FOLDER, ROUTER_FOLDER, DegradationRouter, is_routed
from flowsr.core.sr_model import OneStepSR, super_resolve
from flowsr.export.merge import ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTERS_JSON, merged_copy, read_adapters
from flowsr.export.rebase import rebase_adapters

from .data import DataError, list_images
from .degradations import bicubic_downscale, degrade


@dataclass(frozen=True)
class RouterSettings:
    crops: int = 4800  # half clean, half pipeline-degraded
    crop: int = 192  # HR pixels; the router sees crop / scale
    scale: float = 4.0
    max_side: int = 1600  # photos are shrunk to this longer side when read, as the SR training reads them
    short_sides: tuple[int, int] = (300, 1200)  # then to a random short side in this range for each crop
    steps: int = 4000
    batch_size: int = 32
    lr: float = 3e-3
    gap_cap: float = 5.0  # dB: the largest weight one crop gets
    seed: int = 0


def read_photos(folder: str | Path, settings: RouterSettings) -> list[np.ndarray]:
    """The photos as float32 RGB in [0, 1], shrunk to `max_side`; photos smaller than a crop are left out."""
    photos = []
    for path in list_images(folder):
        try:
            image = images.to_unit_float(images.read_image(path).rgb)
        except images.ImageError as err:
            raise DataError(f"{path}: {err}") from None
        factor = settings.max_side / max(image.shape[:2])
        if factor < 1:
            image = cv2.resize(image, (round(image.shape[1] * factor), round(image.shape[0] * factor)), interpolation=cv2.INTER_AREA)
        if min(image.shape[:2]) >= settings.crop:
            photos.append(image)
    if not photos:
        raise DataError(f"{folder}: no photo is at least {settings.crop} px on its short side; pass larger photos")
    return photos


def _hr_crop(photo: np.ndarray, rng: np.random.Generator, settings: RouterSettings) -> np.ndarray:
    factor = min(1.0, rng.uniform(*settings.short_sides) / min(photo.shape[:2]))
    if factor < 1:
        size = (max(settings.crop, round(photo.shape[1] * factor)), max(settings.crop, round(photo.shape[0] * factor)))
        photo = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
    top, left = rng.integers(photo.shape[0] - settings.crop + 1), rng.integers(photo.shape[1] - settings.crop + 1)
    return np.ascontiguousarray(photo[top : top + settings.crop, left : left + settings.crop])


def _psnr(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per image, both in [-1, 1]."""
    mse = ((image - reference) / 2).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


@torch.inference_mode()
def outcome_crops(photos: list[np.ndarray], experts: tuple[OneStepSR, OneStepSR], settings: RouterSettings, chunk: int = 16) -> dict:
    """LR crops (uint8, (N, 3, h, w)) and the PSNR each expert (clean, degraded) reaches on them ((N, 2))."""
    rng = np.random.default_rng(settings.seed)
    lr_crops, psnr = [], []
    for start in range(0, settings.crops, chunk):
        hr, lr = [], []
        for k in range(start, min(start + chunk, settings.crops)):
            crop = _hr_crop(photos[int(rng.integers(len(photos)))], rng, settings)
            seed = int(rng.integers(2**31))
            hr.append(crop)
            lr.append(degrade(crop, settings.scale, seed=seed) if k % 2 else bicubic_downscale(crop, settings.scale))
        hr = torch.from_numpy(np.stack(hr)).permute(0, 3, 1, 2) * 2 - 1
        lr = torch.from_numpy(np.stack(lr)).permute(0, 3, 1, 2).clamp(0, 1)
        lr8 = (lr * 255).round().to(torch.uint8)
        lr = lr8.float() / 127.5 - 1  # what the router will see: 8-bit images
        scores = [_psnr(super_resolve(lr, *hr.shape[2:], m.stride, m.encode, m.restore, m.decode), hr) for m in experts]
        lr_crops.append(lr8)
        psnr.append(torch.stack(scores, 1))
    return {"lr": torch.cat(lr_crops), "psnr": torch.cat(psnr)}


def train_router(outcomes: dict, settings: RouterSettings, log=print) -> DegradationRouter:
    """The router, fitted to the outcomes with the gap-weighted cross-entropy (random horizontal flips)."""
    torch.manual_seed(settings.seed)
    router = DegradationRouter()
    lr = outcomes["lr"].float() / 127.5 - 1
    gap = outcomes["psnr"][:, 1] - outcomes["psnr"][:, 0]
    label = (gap > 0).float()
    weight = gap.abs().clamp(max=settings.gap_cap)
    weight = weight / weight.mean().clamp_min(1e-6)
    optimizer = torch.optim.AdamW(router.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    generator = torch.Generator().manual_seed(settings.seed)
    for step in range(settings.steps):
        index = torch.randint(len(gap), (settings.batch_size,), generator=generator)
        batch = lr[index].flip(3) if torch.rand(1, generator=generator).item() < 0.5 else lr[index]
        loss = (F.binary_cross_entropy_with_logits(router(batch), label[index], reduction="none") * weight[index]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 500 == 0 or step == settings.steps - 1:
            log(f"router step {step}: loss {loss.item():.4f}")
    return router.eval()


@torch.no_grad()
def routing_regret(router: DegradationRouter, outcomes: dict) -> dict:
    """How the router does on the crops: accuracy and mean PSNR lost against always picking the better expert."""
    picks = (router(outcomes["lr"].float() / 127.5 - 1) > 0).long()
    psnr = outcomes["psnr"]
    best = psnr.max(1).values
    routed = psnr.gather(1, picks[:, None])[:, 0]
    return {"accuracy": (picks == psnr.argmax(1)).float().mean().item(), "regret_db": (best - routed).mean().item()}


def write_routed_model(model_dir: str | Path, adapters_dir: str | Path, router: DegradationRouter, out_dir: str | Path,
                       record: dict | None = None, overwrite: bool = False) -> Path:
    """Model directory + degraded-expert adapters (stored in float16) + router (and `record`, how it was trained,
    as router/training.json) -> a routed model directory, written atomically."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ModelDirError(f"{out_dir} already exists; choose another path or pass --overwrite")
    adapters = read_adapters(adapters_dir)
    with atomic_directory(out_dir) as staging:
        shutil.copytree(model_dir, staging, dirs_exist_ok=True)
        (staging / DEGRADED_FOLDER).mkdir()
        shutil.copy(adapters.folder / ADAPTERS_JSON, staging / DEGRADED_FOLDER / ADAPTERS_JSON)
        for part in adapters.parts:
            target = staging / DEGRADED_FOLDER / part
            target.mkdir()
            shutil.copy(adapters.folder / part / ADAPTER_CONFIG, target)
            state = {key: tensor.half().contiguous() for key, tensor in adapters.states[part].items()}
            safetensors.torch.save_file(state, target / ADAPTER_WEIGHTS)
        router.save_pretrained(staging / ROUTER_FOLDER, safe_serialization=True)
        if record is not None:
            (staging / ROUTER_FOLDER / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def build_routed_model(model_dir: str | Path, adapters_dir: str | Path, data: str | Path, out_dir: str | Path,
                       settings: RouterSettings = RouterSettings(), overwrite: bool = False, adapters_base: str | Path | None = None,
                       log=print) -> Path:
    """Label crops of `data` by outcome with both experts, train the router, write the routed model directory.

    `adapters_base`: the model the adapters were trained on, when it is not `model_dir` (say, the clean expert
    before more training): the adapters are rebased onto `model_dir` first, so the degraded expert stays the same."""
    if is_routed(model_dir):
        raise ModelDirError(f"{model_dir} is already a routed model; pass the plain model its clean expert was saved as")
    if Path(out_dir).exists() and not overwrite:
        raise ModelDirError(f"{out_dir} already exists; choose another path or pass --overwrite")
    clean = OneStepSR.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory(prefix="flowsr-rebased-") as scratch:
        rebased = {}
        if adapters_base is not None:
            rebased_dir = Path(scratch) / "adapters"
            ranks = sorted(rebase_adapters(OneStepSR.from_pretrained(adapters_base), adapters_dir, clean, rebased_dir).values())
            rebased = {"degraded_adapters": {"trained_on": str(adapters_base), "rebased_ranks": [ranks[0], ranks[-1]]}}
            log(f"degraded-expert adapters rebased onto {model_dir}: {len(ranks)} layers, ranks {ranks[0]} to {ranks[-1]}")
            adapters_dir = rebased_dir
        experts = (clean, merged_copy(clean, adapters_dir))
        photos = read_photos(data, settings)
        started = time.perf_counter()
        outcomes = outcome_crops(photos, experts, settings)
        labelled = time.perf_counter()
        log(f"labelled {settings.crops} crops of {len(photos)} photos with both experts in {labelled - started:.0f} s")
        router = train_router(outcomes, settings, log=log)
        scores = routing_regret(router, outcomes)
        log(f"router trained in {time.perf_counter() - labelled:.0f} s: picks the better expert for {scores['accuracy']:.1%} of "
            f"the crops, {scores['regret_db']:.3f} dB below always picking it")
        record = {"settings": dataclasses.asdict(settings), "training_crops": scores} | rebased
        return write_routed_model(model_dir, adapters_dir, router, out_dir, record=record, overwrite=overwrite)
