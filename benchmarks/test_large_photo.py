"""A large photo through the default model: 1024x1024 -> 4096x4096 (x4), time and peak memory per tile size.

Each case runs in a fresh process, so its peak resident memory (`ru_maxrss`) is its own; the timed part is the
upscale of one photo (`SuperResolver.upscale_picture`, the call `flowsr sr` makes), model loading excluded.
The default model's velocity network is convolutional (one token per 4x4 pixels, no attention): its work per tile
grows with the tile's area, so smaller tiles cost the recomputed overlaps and larger ones memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TILES = [512, 1024, 2048]

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    from PIL import Image
    from skimage import data
    from flowsr.core import images
    from flowsr.runtime.super_resolver import SuperResolver

    tile, device = int(sys.argv[1]), sys.argv[2]
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((1024, 1024), Image.BICUBIC))
    resolver = SuperResolver(scale=4, device=device, tile=tile)
    started = time.perf_counter()
    out = resolver.upscale_picture(images.Picture(rgb=photo))
    seconds = time.perf_counter() - started
    assert out.rgb.shape == (4096, 4096, 3)
    print(json.dumps({"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """
)


@pytest.mark.parametrize("tile", TILES)
def test_large_photo_1024_to_4096(benchmark, tile):
    def upscale():
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(tile), DEVICE], capture_output=True, text=True, timeout=3600
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    measured = benchmark.pedantic(upscale, rounds=1, iterations=1)
    benchmark.group = f"default SR model 1024->4096 ({DEVICE})"
    benchmark.extra_info.update(tile=tile, device=DEVICE, **measured)
