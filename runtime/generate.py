"""`flowsr degrade`: degraded images at continuous scales from HR images, written in the dataset layout

    OUT/{s}/{name}_HR.png   the HR image
    OUT/{s}/{name}_LR{s}.png   its degradation at scale s, aligned at HR size (or on the LR grid with --lr-grid)
    OUT/{s}/{name}_LR{s}_{k}.png   draw k of it, with --samples N (N > 1): the same network output, other noise

with s written like "1.1", "2", "2.7". Files are written atomically, so a run that stops leaves only complete
files, and running the same command again skips them (resume). Under torchrun every process takes its share
of the images (image i goes to rank i mod world size), so no file is missing or written twice.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
import zlib
from pathlib import Path

import torch
from tqdm import tqdm

from flowsr.core import images
from flowsr.core.atomic import atomic_file
from flowsr.core.errors import FlowsrError, SettingsError, out_of_memory

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
            f"{option} {samples} needs a model with fitted pixel noise (`flowsr train noise`) and no --no-noise: "
            "without it every draw is the same image"
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


def generate(
    degrader,
    jobs: list[tuple[Path, str]],
    out_dir: Path,
    scales: list[float],
    lr_grid: bool,
    error,
    samples: int = 1,
    seed: int = 0,
) -> tuple[int, int, int]:
    """Degrade every (source, name) at every scale, `samples` draws each; returns (images done, skipped, failed)."""
    done = skipped = failed = 0
    draws = [None] if samples == 1 else list(range(samples))
    for source, name in tqdm(
        jobs, desc="flowsr degrade", unit="image", disable=None if len(jobs) > 1 else True, file=sys.stderr
    ):
        todo = [s for s in scales if not all(p.exists() for k in draws for p in output_paths(out_dir, name, s, k))]
        if not todo:
            skipped += 1
            continue
        try:
            picture = images.read_image(source, max_pixels=degrader.max_pixels)
            seeds = [draw_seed(seed, name, k or 0) for k in draws]
            for k, arrays in zip(draws, degrader.draws(picture.rgb, todo, seeds, lr_grid=lr_grid), strict=True):
                for scale, pixels in zip(todo, arrays, strict=True):
                    hr_path, lr_path = output_paths(out_dir, name, scale, k)
                    _write_png(lr_path, pixels)
                    if not hr_path.exists():
                        _copy_hr(source, hr_path, picture)
            done += 1
        except FlowsrError as err:
            error(f"{source}: {err}")
            failed += 1
        except (MemoryError, torch.OutOfMemoryError) as err:
            error(f"{source}: {out_of_memory(err)}")
            failed += 1
    return done, skipped, failed


def run_degrade(args, collect_inputs, error) -> int:
    """The `flowsr degrade` command (argument parsing and input collection live in `runtime/cli.py`)."""
    from flowsr.runtime.default_models import default_degradation_model
    from flowsr.runtime.degrader import Degrader

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
    parse_scales(args.scale)  # the form and count, before any model loads; the model's s_max bounds them below
    degrader = Degrader(
        args.model or default_degradation_model(),
        device=device,
        backend=args.backend,
        solver=args.solver,
        steps=args.steps,
        tile=args.tile,
        overlap=args.overlap,
        max_megapixels=args.max_megapixels,
        noise=not args.no_noise,
    )
    scales = parse_scales(args.scale, degrader.s_max)
    check_samples(degrader, args.samples)
    if not degrader.manifest.trained:
        error(f"warning: {args.model} is an UNTRAINED model (random weights): its output is not a real degradation")
    out_dir = Path(args.output)
    found, failures = collect_inputs(args.inputs, out_dir, "png")
    jobs, names = [], {}
    for source, target in found:
        name = target.relative_to(out_dir).with_suffix("").as_posix().replace("/", "_")
        last = None if args.samples == 1 else args.samples - 1
        longest = max(
            (output_paths(out_dir, name, scale, last)[1].name for scale in scales), key=lambda n: len(os.fsencode(n))
        )
        if len(os.fsencode(longest)) > NAME_MAX:
            error(f"{source}: its output name {longest} is over the file-name limit of {NAME_MAX} bytes; rename it")
            failures += 1
            continue
        if name in names:
            error(
                f"{source}: its outputs would overwrite those of {names[name]} (both are named {name}); "
                "rename one of them"
            )
            failures += 1
            continue
        names[name] = source
        jobs.append((source, name))
    started = time.perf_counter()
    done, skipped, failed = generate(
        degrader, shard(jobs, rank, world), out_dir, scales, args.lr_grid, error, args.samples, args.seed
    )
    failures += failed
    summary = (
        f"{done} images x {len(scales)} scales"
        + (f" x {args.samples} draws" if args.samples > 1 else "")
        + f" written to {out_dir}"
    )
    if world > 1:
        summary = f"rank {rank}/{world}: " + summary
    if done:
        summary += (
            f" ({(time.perf_counter() - started) / done:.2f} s per image, {degrader.evaluations} network evaluations)"
        )
    if skipped:
        summary += f", {skipped} skipped (already complete)"
    if failures:
        summary += f", {failures} failed"
    print(summary, file=sys.stderr)
    return 1 if failures else 0
