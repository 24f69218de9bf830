"""HR/LR pairs at continuous scales, in the dataset layout that `flowsr degrade` writes and SR training reads

    OUT/{s}/{name}_HR.png   the HR image
    OUT/{s}/{name}_LR{s}.png   its degradation at scale s, aligned at HR size (or on the LR grid with --lr-grid)
    OUT/{s}/{name}_LR{s}_{k}.png   draw k of it, with --samples N (N > 1): the same network output, other noise

with s written like "1.1", "2", "2.7". Files are written atomically, so a run that stops leaves only complete
files, and running the same command again skips them (resume). Under torchrun every process takes its share
of the images (`shard`: image i goes to rank i mod world size), so no file is missing or written twice.
"""

from __future__ import annotations

import math
import os
import shutil
import zlib
from pathlib import Path

from flowsr.core import images
from flowsr.core.atomic import atomic_file
from flowsr.core.errors import SettingsError

from .batch import report

NAME_MAX = 255  # bytes in one file name on every common file system
MAX_SCALES = 64  # scales per run: each is one network evaluation and one file per image


def parse_scales(text: str, s_max: float | None = None) -> list[float]:
    """ "2.7" | "2,2.7,4" | "1.5:4:0.5" (start:stop:step, stop included) -> sorted unique scales, at most MAX_SCALES."""
    usage = f"cannot read scales {text!r}; give one (2.7), a list (2,2.7,4) or a range start:stop:step (1.5:4:0.5)"
    try:
        numbers = [float(part) for part in text.split(":" if ":" in text else ",")]
    except ValueError:
        raise SettingsError(usage) from None
    if not all(math.isfinite(number) for number in numbers) or (":" in text and len(numbers) != 3):
        raise SettingsError(usage)
    if ":" in text:
        start, stop, step = numbers
        count = (stop - start) / step + 1 if step > 0 else 0
        if not 1 <= count <= MAX_SCALES + 1e-6:
            raise SettingsError(
                f"scales {text!r} is a range of {max(count, 0):.3g} scales; "
                f"give 1 to {MAX_SCALES} (start <= stop, step > 0)"
            )
        numbers = [start + i * step for i in range(int(count + 1e-9))]
    scales = sorted({round(scale, 4) for scale in numbers})
    if len(scales) > MAX_SCALES:
        raise SettingsError(f"scales {text!r} are {len(scales)} scales; give at most {MAX_SCALES} per run")
    high = s_max if s_max is not None else math.inf
    if scales[0] < 1 or scales[-1] > high + 1e-9:
        raise SettingsError(f"scales {text!r} must lie in [1, {s_max if s_max is not None else 'inf'}]")
    return scales


def scale_name(scale: float) -> str:
    return f"{scale:g}"


def output_paths(out_dir: Path, name: str, scale: float, sample: int | None = None) -> tuple[Path, Path]:
    """(HR, LR) paths of one image at one scale; the LR name ends in _{sample} when several draws are written."""
    folder = out_dir / scale_name(scale)
    suffix = "" if sample is None else f"_{sample}"
    return folder / f"{name}_HR.png", folder / f"{name}_LR{scale_name(scale)}{suffix}.png"


def draw_seed(seed: int, name: str, sample: int) -> int:
    """The noise seed of one draw of one image: from the run's seed and the image's name, so a draw does not depend
    on which other images a run (or a torchrun shard) holds."""
    return zlib.crc32(f"{seed}:{name}:{sample}".encode())


def check_samples(degrader, samples: int, option: str = "--samples") -> None:
    """Several draws of one image differ only in the pixel noise: refuse them without it, before any image is made."""
    if samples > 1 and degrader.noise is None:
        raise SettingsError(
            f"{option} {samples} needs a model with fitted pixel noise (`flowsr train degradation noise`) and no "
            "--no-noise: without it every draw is the same image"
        )


def shard(items: list, rank: int, world: int) -> list:
    return items[rank::world]


def _write_png(path: Path, pixels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    images.write_image(path, images.Picture(pixels))


def _copy_hr(source: Path, target: Path, picture: images.Picture) -> None:
    """The HR image as PNG: a byte copy when it already is one, so nothing of it changes."""
    if source.suffix.lower() == ".png" and picture.alpha is None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
    else:
        _write_png(target, picture.rgb)


def name_jobs(
    found: list[tuple[Path, Path]], out_dir: Path, scales: list[float], samples: int
) -> tuple[list[tuple[Path, str]], int]:
    """(source, output path) pairs -> (source, name) jobs, the name the output path relative to `out_dir` with "/"
    as "_": refuses (reports and counts) names that two sources share or that make a file name too long."""
    jobs, names, failures = [], {}, 0
    last = None if samples == 1 else samples - 1
    for source, target in found:
        name = target.relative_to(out_dir).with_suffix("").as_posix().replace("/", "_")
        longest = max(
            (output_paths(out_dir, name, scale, last)[1].name for scale in scales), key=lambda n: len(os.fsencode(n))
        )
        if len(os.fsencode(longest)) > NAME_MAX:
            report(f"{source}: its output name {longest} is over the file-name limit of {NAME_MAX} bytes; rename it")
            failures += 1
        elif name in names:
            report(
                f"{source}: its outputs would overwrite those of {names[name]} (both are named {name}); "
                "rename one of them"
            )
            failures += 1
        else:
            names[name] = source
            jobs.append((source, name))
    return jobs, failures


def write_pairs(
    degrader, source: Path, name: str, out_dir: Path, scales: list[float], lr_grid: bool, samples: int, seed: int
) -> bool:
    """One HR image at every scale not yet complete, `samples` draws each; False when all were complete (resume)."""
    draws = [None] if samples == 1 else list(range(samples))
    todo = [s for s in scales if not all(p.exists() for k in draws for p in output_paths(out_dir, name, s, k))]
    if not todo:
        return False
    picture = images.read_image(source, max_pixels=degrader.max_pixels)
    seeds = [draw_seed(seed, name, k or 0) for k in draws]
    for k, arrays in zip(draws, degrader.draws(picture.rgb, todo, seeds, lr_grid=lr_grid), strict=True):
        for scale, pixels in zip(todo, arrays, strict=True):
            hr_path, lr_path = output_paths(out_dir, name, scale, k)
            _write_png(lr_path, pixels)
            if not hr_path.exists():
                _copy_hr(source, hr_path, picture)
    return True
