"""The `flowsr` command line: `flowsr sr`, `flowsr degrade`, `flowsr model`, `flowsr export` (and, from
flowsr.training through the `flowsr.commands` entry points, `train` and `eval`).

Every failure is one line on stderr naming what failed and what to do; one bad file never stops the others,
and the exit code says whether any failed: 0 all done, 1 some files failed, 2 nothing could start (a bad option,
model or output folder), 3 a bug in flowsr (its traceback is shown, to be reported).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from importlib.metadata import entry_points
from pathlib import Path

from tqdm import tqdm

from flowsr.core.errors import FlowsrError, out_of_memory, printable

from .options import (
    DEFAULT_MAX_MEGAPIXELS,
    MAX_COLOR_FIX_LEVELS,
    MAX_MEGAPIXELS,
    MAX_SCALE,
    MAX_STEPS,
    MAX_TILE,
    MIN_MEGAPIXELS,
    Parser,
    number_option,
)

OUTPUT_FORMATS = ("png", "webp", "tif", "jpg")


def _error(message: str) -> None:
    tqdm.write(f"flowsr: {printable(message)}", file=sys.stderr)


class UsageError(FlowsrError):
    """Something that stops the command before any image is processed."""


def _collect_inputs(paths: list[str], out_dir: Path, out_format: str) -> tuple[list[tuple[Path, Path]], int]:
    """Pair every input file with its output path; named files are always tried, folders contribute their images."""
    from flowsr.core import images

    jobs, failures, claimed = [], 0, {}
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            found = images.find_images(path)
            if not found:
                _error(f"{path}: {images.NO_IMAGES}")
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
                _error(
                    f"{source}: its output {target} would overwrite the output of {claimed[target]}; rename one of them"
                )
                failures += 1
                continue
            claimed[target] = source
            jobs.append((source, target))
    return jobs, failures


def run_sr(args: argparse.Namespace) -> int:
    import torch

    from flowsr.core import images
    from flowsr.core.atomic import remove_stale_temporaries
    from flowsr.runtime.default_models import default_sr_model
    from flowsr.runtime.super_resolver import SuperResolver

    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output {out_dir} exists and is not a folder; choose a folder for -o")
    remove_stale_temporaries(out_dir)
    if args.model is None:
        args.model = default_sr_model()
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
        color_fix=not args.no_color_fix,
    )
    if not resolver.manifest.trained:
        _error(f"warning: {args.model} is an UNTRAINED model (random weights): its output is not real super-resolution")
    jobs, failures = _collect_inputs(args.inputs, out_dir, args.format)
    skipped = done = 0
    started = time.perf_counter()
    input_limit = int(args.max_megapixels * 1e6)
    for source, target in tqdm(
        jobs, desc="flowsr sr", unit="image", disable=None if len(jobs) > 1 else True, file=sys.stderr
    ):
        if target.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            picture = images.read_image(source, max_pixels=input_limit)
            resolver.check_size(*picture.rgb.shape[:2])
            images.write_image(target, resolver.upscale_picture(picture))
            done += 1
        except FlowsrError as err:
            _error(f"{source}: {err}")
            failures += 1
        except (MemoryError, torch.OutOfMemoryError) as err:
            _error(f"{source}: {out_of_memory(err)}")
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
    from flowsr.core.degradation_model import DegradationModel
    from flowsr.core.sr_model import OneStepSR

    model_class = DegradationModel if args.kind == "degradation" else OneStepSR
    model_class.from_preset(args.preset, seed=args.seed).save_pretrained(args.output, overwrite=args.overwrite)
    print(f"wrote an UNTRAINED {args.preset} model (random weights, for tests and benchmarks) to {args.output}")
    return 0


def run_model_import(args: argparse.Namespace) -> int:
    from flowsr.core.sr_model import OneStepSR

    OneStepSR.from_flux_pipeline(args.pipeline, args.preset).save_pretrained(args.output, overwrite=args.overwrite)
    print(
        f"wrote the {args.preset} base model from {args.pipeline} to {args.output} "
        "(fine-tune it with `flowsr train allosr2`)"
    )
    return 0


def _load_model(directory: str, dtype=None):
    """Either kind of model directory, by what its manifest says it holds."""
    import torch

    from flowsr.core.degradation_model import DegradationModel
    from flowsr.core.model_dir import model_kind
    from flowsr.core.sr_model import OneStepSR

    model_class = DegradationModel if model_kind(directory) == "degradation" else OneStepSR
    return model_class.from_pretrained(directory, dtype=dtype or torch.float32)


def _export_source(args: argparse.Namespace):
    """(model, the folder its exports live under, its stored weights' digest) for `export onnx`/`trt`."""
    model = _load_model(args.model)
    return model, Path(args.model), model.manifest.weights_sha256


def run_model_convert(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    model = _load_model(args.model, dtype=getattr(torch, args.dtype))
    if args.color_fix_levels is not None:
        if model.kind != "sr":
            raise UsageError(f"--color-fix-levels is a setting of SR models; {args.model} is a {model.kind} model")
        model.manifest = dataclasses.replace(model.manifest, color_fix_levels=args.color_fix_levels)
    model.save_pretrained(args.output, overwrite=args.overwrite)
    print(f"wrote {args.model} with {args.dtype} weights to {args.output}")
    return 0


def run_degrade(args: argparse.Namespace) -> int:
    from flowsr.core.atomic import remove_stale_temporaries
    from flowsr.runtime.generate import run_degrade as generate

    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output {out_dir} exists and is not a folder; choose a folder for -o")
    remove_stale_temporaries(out_dir)
    return generate(args, _collect_inputs, _error)


def _graph_selection(args: argparse.Namespace, spec, default: tuple[str, ...]) -> tuple[tuple[str, ...], int | None]:
    """The graphs `export onnx`/`export trt` make (--end-to-end, --graphs or `default`) and the scale fixed in an
    end-to-end SR graph (a whole number; None otherwise)."""
    if args.end_to_end and args.graphs:
        raise UsageError("--end-to-end and --graphs exclude each other: the end-to-end graph is one graph")
    if not args.end_to_end:
        return (spec.parse_graphs(args.graphs) if args.graphs else default), None
    if spec.end_to_end is None:
        raise UsageError(f"a {spec.kind} has no end-to-end graph: its one graph is all of it")
    if spec.kind != "sr":
        return (spec.end_to_end.name,), None
    if args.scale != int(args.scale):
        raise UsageError(
            f"--scale {args.scale:g}: the end-to-end SR graph fixes a whole scale (1 to 8); "
            "use the stage graphs for others"
        )
    return (spec.end_to_end.name,), int(args.scale)


def run_export_onnx(args: argparse.Namespace) -> int:
    from flowsr.export.onnx_export import export_onnx
    from flowsr.export.spec import QUANTIZED, SPECS, ExportError, checked_opset, export_name

    checked_opset(args.dtype, args.opset)
    model, home, weights_sha256 = _export_source(args)
    spec = SPECS[model.kind]
    default_graphs = spec.runtime_graphs if args.dtype in QUANTIZED else tuple(spec.graphs)
    graphs, scale = _graph_selection(args, spec, default_graphs)
    out = Path(args.output) if args.output else home / "onnx" / export_name(args.dtype, args.end_to_end, scale)
    if out.exists() and not args.overwrite:
        raise ExportError(f"{out} already exists; choose another OUT or pass --overwrite")
    document = export_onnx(
        model,
        out,
        dtype=args.dtype,
        graphs=graphs,
        opset=args.opset,
        scale=scale,
        weights_sha256=weights_sha256,
        overwrite=args.overwrite,
        calibrate=args.calibrate,
    )
    for entry in document["graphs"].values():
        check = entry["verification"]
        if "psnr_db" in check:
            status = (
                f"onnxruntime vs torch {check['psnr_db']:.1f} dB PSNR (>= {check['min_psnr_db']:g}) "
                f"on {' and '.join(check['inputs'])}"
            )
        else:
            status = f"written and checked, not run: {check['skipped']}"
        print(f"{out / entry['file']}: {status}")
    return 0


def run_export_trt(args: argparse.Namespace) -> int:
    from flowsr.export.onnx_export import onnx_dir_for
    from flowsr.export.spec import SPECS
    from flowsr.export.tensorrt_engine import ensure_engine, require_tensorrt

    require_tensorrt()
    model, home, weights_sha256 = _export_source(args)
    spec = SPECS[model.kind]
    graphs, scale = _graph_selection(args, spec, spec.runtime_graphs)
    folder = onnx_dir_for(
        model, args.dtype, opset=args.opset, graphs=graphs, scale=scale, weights_sha256=weights_sha256, model_dir=home
    )
    print(f"ONNX: {folder}")
    for graph in graphs:
        print(f"{graph}: {ensure_engine(folder, graph)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="flowsr", description="One-step flow-matching super-resolution.")
    commands = parser.add_subparsers(dest="command", required=True)

    sr = commands.add_parser("sr", help="upscale images with one network evaluation per tile")
    sr.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    sr.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    sr.add_argument(
        "--scale", type=number_option(1, MAX_SCALE), default=4.0, help="output size / input size (default 4)"
    )
    sr.add_argument("--model", metavar="DIR", help="flowsr model directory (default: the packaged sr-small-x4 model)")
    sr.add_argument(
        "--tile",
        type=number_option(0, MAX_TILE, integer=True),
        default=1024,
        help="transformer tile in output pixels, a multiple of the model stride; 0 = no tiling (default 1024)",
    )
    sr.add_argument(
        "--overlap",
        type=number_option(0, MAX_TILE, integer=True),
        default=128,
        help="tile overlap in output pixels (default 128)",
    )
    sr.add_argument(
        "--vae-tile",
        type=number_option(0, MAX_TILE, integer=True),
        default=2048,
        help="VAE tile size in output pixels; 0 = no VAE tiling (default 2048)",
    )
    sr.add_argument(
        "--no-color-fix",
        action="store_true",
        help="keep the decoder's colours (default: wavelet color fix to the input's)",
    )
    sr.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    sr.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16", "int8"],
        help="default: bfloat16 on cuda, float32 on cpu; int8: the QDQ export made by `export onnx --dtype int8` "
        "(onnxruntime backend)",
    )
    sr.add_argument(
        "--backend",
        default="torch",
        help="execution backend: torch (eager), compile (torch.compile; CUDA graphs on GPU), "
        "onnxruntime (CPU or CUDA), "
        "tensorrt (NVIDIA GPU); ONNX graphs and engines are made on first use and cached (default torch)",
    )
    sr.add_argument("--format", default="png", choices=OUTPUT_FORMATS, help="output file format (default png)")
    sr.add_argument(
        "--max-megapixels",
        type=number_option(MIN_MEGAPIXELS, MAX_MEGAPIXELS),
        default=DEFAULT_MAX_MEGAPIXELS,
        help="refuse inputs or outputs larger than this (default 100)",
    )
    sr.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: keep them)")
    sr.set_defaults(run=run_sr)

    degrade = commands.add_parser(
        "degrade", help="synthesize realistic degraded images at any scale in [1, 4], one network evaluation per scale"
    )
    degrade.add_argument("inputs", nargs="+", metavar="HR", help="HR image files or folders")
    degrade.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="output folder: OUT/{s}/{name}_HR.png and {name}_LR{s}.png"
    )
    degrade.add_argument(
        "--scale",
        default="4",
        help="one scale (2.7), a list (2,2.7,4) or a range start:stop:step (1.5:4:0.5); default 4",
    )
    degrade.add_argument(
        "--model", metavar="DIR", help="degradation model directory (default: the packaged degradation-small model)"
    )
    degrade.add_argument(
        "--solver",
        default="one-step",
        choices=["one-step", "euler", "adaptive"],
        help="one-step (1 NFE per scale, default), euler (--steps NFEs) or adaptive (dopri5): "
        "the multi-step references",
    )
    degrade.add_argument(
        "--steps",
        type=number_option(1, MAX_STEPS, integer=True),
        default=32,
        help="Euler steps for --solver euler (default 32)",
    )
    degrade.add_argument(
        "--tile",
        type=number_option(0, MAX_TILE, integer=True),
        default=512,
        help="tile size in HR pixels, a multiple of the model stride; 0 = no tiling (default 512)",
    )
    degrade.add_argument(
        "--overlap",
        type=number_option(0, MAX_TILE, integer=True),
        default=64,
        help="tile overlap in HR pixels (default 64)",
    )
    degrade.add_argument(
        "--max-megapixels",
        type=number_option(MIN_MEGAPIXELS, MAX_MEGAPIXELS),
        default=DEFAULT_MAX_MEGAPIXELS,
        help="refuse larger HR images (default 100)",
    )
    degrade.add_argument(
        "--lr-grid", action="store_true", help="write LR images at round(H/s) x round(W/s) instead of HR size"
    )
    degrade.add_argument(
        "--samples",
        type=number_option(1, 1000, integer=True),
        default=1,
        help="draws per image and scale, {name}_LR{s}_{k}.png (default 1): one network evaluation, other pixel noise",
    )
    degrade.add_argument(
        "--seed", type=number_option(0, 2**32 - 1, integer=True), default=0, help="seed of the pixel noise (default 0)"
    )
    degrade.add_argument(
        "--no-noise", action="store_true", help="leave out the model's pixel noise: the network's image alone"
    )
    degrade.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 ... (default: cuda if present; under torchrun cuda:LOCAL_RANK)",
    )
    degrade.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "compile", "onnxruntime", "tensorrt"],
        help="torch (eager), compile, onnxruntime or tensorrt (the last three: one-step only); default torch",
    )
    degrade.set_defaults(run=run_degrade)

    model = commands.add_parser("model", help="model directories").add_subparsers(dest="model_command", required=True)
    init = model.add_parser("init", help="write an untrained model directory of a preset")
    init.add_argument("output", metavar="OUT")
    # flux-dev is not offered: 12B random parameters help no one; its weights come from a FLUX.1-dev folder.
    init.add_argument("--preset", default="small", choices=["tiny", "tiny-kl", "small"], help="default small")
    init.add_argument(
        "--kind",
        default="sr",
        choices=["sr", "degradation"],
        help="super-resolution (default) or DegFlow degradation model",
    )
    init.add_argument("--seed", type=number_option(0, 2**32 - 1, integer=True), default=0)
    init.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    init.set_defaults(run=run_model_init)
    imported = model.add_parser(
        "import", help="a base model directory from a local diffusers FLUX pipeline folder (e.g. FLUX.1-dev)"
    )
    imported.add_argument(
        "pipeline",
        metavar="PIPELINE_DIR",
        help="diffusers folder: vae/, transformer/, text_encoder(_2)/, tokenizer(_2)/",
    )
    imported.add_argument("output", metavar="OUT")
    imported.add_argument(
        "--preset",
        default="flux-dev",
        choices=["tiny-kl", "flux-dev"],
        help="the architecture to check against (default flux-dev; tiny-kl for tests)",
    )
    imported.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    imported.set_defaults(run=run_model_import)
    convert = model.add_parser("convert", help="copy a model directory with its weights stored in another precision")
    convert.add_argument("model", metavar="MODEL_DIR")
    convert.add_argument("output", metavar="OUT")
    convert.add_argument(
        "--dtype", default="float16", choices=["float32", "float16", "bfloat16"], help="default float16 (half the size)"
    )
    convert.add_argument(
        "--color-fix-levels",
        type=number_option(1, MAX_COLOR_FIX_LEVELS, integer=True),
        help="SR models: the colour fix's wavelet levels stored in the copy (the result takes the input's features "
        "coarser than about 2^(levels+1) pixels); choose them on validation photos with `flowsr eval`",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    convert.set_defaults(run=run_model_convert)

    export = commands.add_parser("export", help="ONNX graphs and TensorRT engines").add_subparsers(
        dest="export_command", required=True
    )
    onnx = export.add_parser(
        "onnx", help="export a model's ONNX graphs with dynamic batch and size, verified against torch"
    )
    onnx.add_argument("model", metavar="MODEL_DIR", help="an SR or degradation model directory")
    onnx.add_argument("output", metavar="OUT", nargs="?", help="output folder (default MODEL_DIR/onnx/<dtype>)")
    onnx.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16", "int8"],
        help="default float32; int8: the SR runtime graphs, the velocity network quantized (QDQ); needs --calibrate",
    )
    onnx.add_argument(
        "--calibrate",
        metavar="PHOTOS",
        help="int8: a folder of photos like the ones you will serve (LR inputs; up to 64 central 128px crops)",
    )
    onnx.add_argument(
        "--graphs", help="comma-separated graphs (default all: sr,encoder,transformer,decoder for SR; degrader)"
    )
    onnx.add_argument(
        "--end-to-end",
        action="store_true",
        help="one graph of the whole command instead: uint8 pixels in and out, the CLI's pixels (untiled)",
    )
    onnx.add_argument(
        "--scale", type=number_option(1, 8), default=4.0, help="the SR scale fixed in an --end-to-end graph (default 4)"
    )
    onnx.add_argument(
        "--opset",
        type=number_option(1, 99, integer=True),
        default=None,
        help="ONNX opset (default 20; 22 for bfloat16)",
    )
    onnx.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    onnx.set_defaults(run=run_export_onnx)
    trt = export.add_parser("trt", help="build cached TensorRT engines from the ONNX export (NVIDIA GPU)")
    trt.add_argument("model", metavar="MODEL_DIR", help="an SR or degradation model directory")
    trt.add_argument(
        "--dtype",
        default="float16",
        choices=["float32", "float16", "bfloat16"],
        help="graph and engine precision (default float16)",
    )
    trt.add_argument(
        "--graphs",
        help="comma-separated graphs (default what the runtime runs: encoder,transformer,decoder for SR; degrader)",
    )
    trt.add_argument(
        "--end-to-end", action="store_true", help="an engine of the end-to-end graph (uint8 pixels in and out) instead"
    )
    trt.add_argument(
        "--scale", type=number_option(1, 8), default=4.0, help="the SR scale fixed in an --end-to-end graph (default 4)"
    )
    trt.add_argument(
        "--opset",
        type=number_option(1, 99, integer=True),
        default=None,
        help="ONNX opset if the graphs must be exported first (default 20; 22 for bfloat16)",
    )
    trt.set_defaults(run=run_export_trt)

    # Other packages add their commands (flowsr.training: `train` and `eval`) through this entry-point group, so
    # the runtime depends on none of them.
    for entry in entry_points(group="flowsr.commands"):
        entry.load()(commands)
    return parser


def _quiet_libraries() -> None:
    """Library warnings and log lines around flowsr's one line help no one: flowsr reports what matters itself."""
    warnings.simplefilter("ignore")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # read when cv2 is first imported, below
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "critical")  # it logs a failed load as an error before raising


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except FlowsrError as err:  # a bad option, model, data or output folder: nothing could start
        print(f"flowsr: error: {printable(str(err).strip())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flowsr: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - anything else is a bug: its traceback, and a line saying so
        traceback.print_exc()
        print(
            "flowsr: internal error: this is a bug in flowsr, not a problem with your input; please report it with the "
            "traceback above",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
