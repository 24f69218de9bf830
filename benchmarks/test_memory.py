"""Peak memory of whole `flowsr sr` and `flowsr degrade` runs with the default models and settings.

Each case runs the CLI in a fresh process and reads that process's peak resident memory (`ru_maxrss`), so imports,
model loading, decoding, the tiles and encoding all count. Sizes are of the HR image: `sr` upscales a quarter-size
photo x4 to it, `degrade` takes it as its input. The bounds are the tiles' work: peak memory grows with the
full-size image buffers only (a 4096² float32 RGB image is 192 MiB).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = [512, 2048, 4096]
# ... and the largest photo `degrade` takes within its default 100 MP budget that users bring: 9000² (81 MP).
CASES = [(command, size) for command in ("sr", "degrade") for size in SIZES] + [("degrade", 9000)]

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    from flowsr.runtime.cli import main
    started = time.perf_counter()
    code = main(sys.argv[1:])
    print(json.dumps({"code": code, "seconds": time.perf_counter() - started,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """
)


@pytest.mark.parametrize(("command", "size"), CASES)
def test_peak_memory(benchmark, command, size, tmp_path):
    side = size // 4 if command == "sr" else size
    photo = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()).resize((side, side), Image.BICUBIC).save(photo)
    argv = [command, str(photo), "-o", str(tmp_path / "out"), "--device", DEVICE]

    def run():
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, *argv], capture_output=True, text=True, timeout=3600, check=False
        )
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        assert measured.pop("code") == 0, result.stderr[-2000:]
        return measured

    measured = benchmark.pedantic(run, rounds=1, iterations=1)
    written = next((tmp_path / "out").rglob("*LR*.png" if command == "degrade" else "*.png"))
    assert np.asarray(Image.open(written)).shape[:2] == (size, size)
    benchmark.group = f"peak memory of flowsr {command} ({DEVICE})"
    benchmark.extra_info.update(command=command, hr_size=size, device=DEVICE, **measured)
