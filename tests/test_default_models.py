"""The trained models that ship in the package, on photos they never saw (the held-out photos of the corpus)."""

import numpy as np
import torch
from skimage import data, transform
from skimage.metrics import peak_signal_noise_ratio

from flowsr.core.model_dir import DegradationManifest, Manifest
from flowsr.core.sr_model import resize_to
from flowsr.runtime.default_models import DEFAULT_DEGRADATION_MODEL, DEFAULT_SR_MODEL
from flowsr.runtime.degrader import Degrader
from flowsr.runtime.super_resolver import SuperResolver
from flowsr.training.degradations import degrade
from flowsr.training.evaluate import gradient_energy


def held_out_photo(size: int = 256) -> np.ndarray:
    """skimage's coffee (held out of the training corpus), a centred square, float32 in [0, 1]."""
    photo = data.coffee()
    side = min(photo.shape[:2])
    top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
    return transform.resize(photo[top : top + side, left : left + side], (size, size), anti_aliasing=True).astype(np.float32)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return ((image[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def test_packaged_models_are_trained_fp16_and_small():
    assert Manifest.read(DEFAULT_SR_MODEL).trained and DegradationManifest.read(DEFAULT_DEGRADATION_MODEL).trained
    for folder, limit_mb in ((DEFAULT_SR_MODEL, 30), (DEFAULT_DEGRADATION_MODEL, 20)):
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < limit_mb * 2**20, f"{folder}: {size / 2**20:.1f} MB"


def test_default_sr_model_beats_bicubic_and_is_sharper():
    hr = held_out_photo()
    lr = torch.from_numpy(degrade(hr, 4, seed=0)).permute(2, 0, 1)[None] * 2 - 1
    reference = (hr * 255).round().astype(np.uint8)
    bicubic = to_uint8(resize_to(lr, 256, 256).clamp(-1, 1))
    restored = to_uint8(SuperResolver(device="cpu").upscale_tensor(lr))
    assert peak_signal_noise_ratio(reference, restored) > peak_signal_noise_ratio(reference, bicubic)
    assert gradient_energy(restored) > gradient_energy(bicubic)


def test_default_degradation_model_degrades_more_at_larger_scales():
    hr = (held_out_photo() * 255).round().astype(np.uint8)
    degrader = Degrader(device="cpu")
    outputs = degrader(hr, [1.0, 2.0, 3.0, 4.0])
    assert degrader.evaluations == 4  # one network evaluation per scale
    assert all(o.shape == hr.shape for o in outputs)
    detail = [gradient_energy(o) for o in outputs]
    assert detail[0] > detail[1] > detail[3]  # x2 keeps more detail than x4; x3 lies between them
    assert detail[1] > detail[2] > detail[3]
    # x1 is the HR image itself, up to the RAE's reconstruction error
    assert peak_signal_noise_ratio(hr, outputs[0]) > 28
