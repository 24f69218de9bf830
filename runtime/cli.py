"""The `flowsr` command line: `flowsr sr`, `flowsr model init`.

Every failure is one line on stderr naming what failed and what to do; one bad file never stops the others,
and the exit code says whether any failed (0 all done, 1 some failed, 2 nothing could start).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
OUTPUT_FORMATS = ("png", "webp", "tif", "jpg")


def _error(message: str) -> None:
    tqdm.write(f"flowsr: {message}", file=sys.stderr)


class UsageError(Exception):
    """Something that stops the command before any image is processed."""


def _collect_inputs(paths: list[str], out_dir: Path, out_format: str) -> tuple[list[tuple[Path, Path]], int]:
    """Pair every input file with its output path; named files are always tried, folders contribute their images."""
    jobs, failures, claimed = [], 0, {}
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            if not found:
                _error(f"{path}: no images in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
                failures += 1
            pairs = [(p, out_dir / p.relative_to(path).with_suffix(f".{out_format}")) for p in found]
        elif path.is_file():
            pairs = [(path, out_dir / f"{path.stem}.{out_format}")]
        else:
            # Pipes and devices would block or never end; only regular files are read.
            _error(f"{path}: {'not a regular file' if path.exists() else 'no such file or folder'}")
            failures += 1
            continue
        for source, target in pairs:
            if target in claimed:
                _error(f"{source}: its output {target} would overwrite the output of {claimed[target]}; rename one of them")
                failures += 1
                continue
            claimed[target] = source
            jobs.append((source, target))
    return jobs, failures


def run_sr(args: argparse.Namespace) -> int:
    from flowsr.core import images
    from flowsr.core.model_dir import ModelDirError, Manifest
    from flowsr.runtime.super_resolver import SuperResolver

    if args.model is None:
        raise UsageError(
            "no trained default model ships with this version yet; pass --model DIR "
            "(`flowsr model init --preset small DIR` makes an untrained one for testing)"
        )
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output {out_dir} exists and is not a folder; choose a folder for -o")
    try:
        if not Manifest.read(args.model).trained:
            _error(f"warning: {args.model} is an UNTRAINED model (random weights): its output is not real super-resolution")
        resolver = SuperResolver(
            args.model,
            scale=args.scale,
            device=args.device,
            dtype=args.dtype,
            backend=args.backend,
            tile=args.tile,
            overlap=args.overlap,
            vae_tile=args.vae_tile,
            max_megapixels=args.max_megapixels,
        )
    except (ModelDirError, ValueError, RuntimeError) as err:
        raise UsageError(str(err).splitlines()[0]) from None
    jobs, failures = _collect_inputs(args.inputs, out_dir, args.format)
    skipped = done = 0
    started = time.perf_counter()
    input_limit = int(args.max_megapixels * 1e6)
    for source, target in tqdm(jobs, desc="flowsr sr", unit="image", disable=None if len(jobs) > 1 else True, file=sys.stderr):
        if target.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            picture = images.read_image(source, max_pixels=input_limit)
            resolver.check_size(*picture.rgb.shape[:2])
            images.write_image(target, resolver.upscale_picture(picture))
            done += 1
        except images.ImageError as err:
            _error(f"{source}: {err}")
            failures += 1
        except (RuntimeError, MemoryError) as err:
            _error(f"{source}: failed: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}")
            failures += 1
    summary = f"{done} written to {out_dir}"
    if done:
        summary += f" ({(time.perf_counter() - started) / done:.2f} s per image)"
    if skipped:
        summary += f", {skipped} skipped (output exists; --overwrite replaces)"
    if failures:
        summary += f", {failures} failed"
    print(summary, file=sys.stderr)
    return 1 if failures else 0


def run_model_init(args: argparse.Namespace) -> int:
    from flowsr.core.model_dir import ModelDirError, init_sr_model, save_sr_model

    try:
        model, manifest = init_sr_model(args.preset, seed=args.seed)
        save_sr_model(model, manifest, args.output, overwrite=args.overwrite)
    except (ModelDirError, ValueError) as err:
        raise UsageError(str(err)) from None
    print(f"wrote an UNTRAINED {args.preset} model (random weights, for tests and benchmarks) to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowsr", description="One-step flow-matching super-resolution.")
    commands = parser.add_subparsers(dest="command", required=True)

    sr = commands.add_parser("sr", help="upscale images with one network evaluation per tile")
    sr.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    sr.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    sr.add_argument("--scale", type=float, default=4.0, help="output size / input size (default 4)")
    sr.add_argument("--model", metavar="DIR", help="flowsr model directory")
    sr.add_argument("--tile", type=int, default=1024, help="transformer tile in output pixels, a multiple of the model stride; 0 = no tiling (default 1024)")
    sr.add_argument("--overlap", type=int, default=128, help="tile overlap in output pixels (default 128)")
    sr.add_argument("--vae-tile", type=int, default=2048, help="VAE tile size in output pixels; 0 = no VAE tiling (default 2048)")
    sr.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    sr.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"], help="default: bfloat16 on cuda, float32 on cpu")
    sr.add_argument("--backend", default="torch", help="execution backend (default torch)")
    sr.add_argument("--format", default="png", choices=OUTPUT_FORMATS, help="output file format (default png)")
    sr.add_argument("--max-megapixels", type=float, default=100.0, help="refuse inputs or outputs larger than this (default 100)")
    sr.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: keep them)")
    sr.set_defaults(run=run_sr)

    model = commands.add_parser("model", help="model directories").add_subparsers(dest="model_command", required=True)
    init = model.add_parser("init", help="write an untrained model directory of a preset")
    init.add_argument("output", metavar="OUT")
    init.add_argument("--preset", default="small", help="tiny, small or flux-dev (default small)")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    init.set_defaults(run=run_model_init)

    from flowsr.training.cli import add_commands as add_train_commands, add_eval_command

    add_train_commands(commands)
    add_eval_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UsageError as err:
        print(f"flowsr: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flowsr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
