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
import traceback
import warnings
from importlib.metadata import entry_points
from pathlib import Path

from flowsr.core.errors import FlowsrError, printable

from .options import (
    AUTO,
    BACKENDS,
    MAX_COLOR_FIX_LEVELS,
    MAX_SCALE,
    MAX_STEPS,
    MAX_TILE,
    Parser,
    add_device,
    add_max_megapixels,
    add_model,
    add_output,
    add_overwrite,
    add_seed,
    add_tiles,
    number_option,
    strength_option,
)

OUTPUT_FORMATS = ("png", "webp", "tif", "jpg")


class UsageError(FlowsrError):
    """Something that stops the command before any image is processed."""


def _output_folder(output: str) -> Path:
    """The output folder of `sr` and `degrade`, cleared of what an interrupted run left half-written."""
    from flowsr.core.atomic import remove_stale_temporaries

    out_dir = Path(output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output {out_dir} exists and is not a folder; choose a folder for -o")
    remove_stale_temporaries(out_dir)
    return out_dir


def run_sr(args: argparse.Namespace) -> int:
    from flowsr.core import images
    from flowsr.runtime.batch import collect_inputs, report, run_batch
    from flowsr.runtime.default_models import default_sr_model
    from flowsr.runtime.super_resolver import SuperResolver

    out_dir = _output_folder(args.output)
    resolver = SuperResolver(
        args.model or default_sr_model(),
        scale=args.scale,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        tile=args.tile,
        overlap=args.overlap,
        vae_tile=args.vae_tile,
        max_megapixels=args.max_megapixels,
        color_fix=not args.no_color_fix,
        strength=args.strength,
    )
    if not resolver.manifest.trained:
        report(f"warning: {args.model} is an UNTRAINED model (random weights): its output is not real super-resolution")
    input_limit = int(args.max_megapixels * 1e6)

    def upscale(source: Path, target: Path) -> bool:
        if target.exists() and not args.overwrite:
            return False
        picture = images.read_image(source, max_pixels=input_limit)
        resolver.check_size(*picture.rgb.shape[:2])
        images.write_image(target, resolver.upscale_picture(picture))
        return True

    jobs, failures = collect_inputs(args.inputs, out_dir, args.format)
    result = run_batch(jobs, upscale, "flowsr sr", failed=failures)
    print(
        result.summary(f"{result.done} written to {out_dir}", skipped_because="output exists; --overwrite replaces"),
        file=sys.stderr,
    )
    return 1 if result.failed else 0


def run_degrade(args: argparse.Namespace) -> int:
    import torch

    from flowsr.runtime.allocator import keep_freed_memory
    from flowsr.runtime.batch import collect_inputs, report, run_batch
    from flowsr.runtime.default_models import default_degradation_model
    from flowsr.runtime.degrader import Degrader
    from flowsr.runtime.pair_dataset import check_samples, name_jobs, parse_scales, shard, write_pairs

    keep_freed_memory()
    out_dir = _output_folder(args.output)
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
        report(f"warning: {args.model} is an UNTRAINED model (random weights): its output is not a real degradation")
    found, failures = collect_inputs(args.inputs, out_dir, "png")
    jobs, refused = name_jobs(found, out_dir, scales, args.samples)

    def degrade(source: Path, name: str) -> bool:
        return write_pairs(degrader, source, name, out_dir, scales, args.lr_grid, args.samples, args.seed)

    result = run_batch(shard(jobs, rank, world), degrade, "flowsr degrade", failed=failures + refused)
    draws = f" x {args.samples} draws" if args.samples > 1 else ""
    summary = result.summary(
        f"{result.done} images x {len(scales)} scales{draws} written to {out_dir}",
        per_image=f", {degrader.evaluations} network evaluations",
        skipped_because="already complete",
    )
    print(f"rank {rank}/{world}: {summary}" if world > 1 else summary, file=sys.stderr)
    return 1 if result.failed else 0


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
        "(fine-tune it with `flowsr train sr allosr2`)"
    )
    return 0


def run_model_merge(args: argparse.Namespace) -> int:
    from flowsr.export.merge import merge_adapters

    merge_adapters(args.model, args.adapters, args.output, overwrite=args.overwrite)
    print(f"wrote {args.model} with the adapters of {args.adapters} merged to {args.output}")
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
    from flowsr.export.spec import QUANTIZED, SPECS
    from flowsr.export.tensorrt_engine import ensure_engine, require_tensorrt
    from flowsr.runtime.backends import export_folder

    require_tensorrt()
    model, home, weights_sha256 = _export_source(args)
    spec = SPECS[model.kind]
    graphs, scale = _graph_selection(args, spec, spec.runtime_graphs)
    if args.dtype in QUANTIZED:  # the QDQ export of the runtime graphs, made with photos by `export onnx`
        if graphs != spec.runtime_graphs or model.kind != "sr":
            raise UsageError(
                f"{args.dtype} engines are of an SR model's runtime graphs; drop --graphs and --end-to-end"
            )
        folder = export_folder(model, args.dtype, weights_sha256, home)
    else:
        folder = onnx_dir_for(
            model,
            args.dtype,
            opset=args.opset,
            graphs=graphs,
            scale=scale,
            weights_sha256=weights_sha256,
            model_dir=home,
        )
    print(f"ONNX: {folder}")
    for graph in graphs:
        print(f"{graph}: {ensure_engine(folder, graph)}")
    return 0


def _add_sr(commands) -> None:
    sr = commands.add_parser("sr", help="upscale images with one network evaluation per tile")
    sr.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    add_output(sr, "output folder")
    add_model(sr, "SR model directory (default: the packaged sr-small-x4 model)")
    sr.add_argument(
        "--scale", type=number_option(1, MAX_SCALE), default=4.0, help="output size / input size (default 4)"
    )
    sr.add_argument(
        "--strength",
        type=strength_option,
        default=AUTO,
        help="how degraded the inputs are, from 0 (clean downscales) to 1 (heavily degraded): it picks the start "
        "time of the one step; auto: the model reads it off each whole image (default auto)",
    )
    add_tiles(sr, tile=1024, overlap=128, unit="output")
    sr.add_argument(
        "--vae-tile",
        type=number_option(0, MAX_TILE, integer=True),
        default=2048,
        help="autoencoder tile size in output pixels; 0 = no autoencoder tiling (default 2048)",
    )
    sr.add_argument(
        "--no-color-fix",
        action="store_true",
        help="keep the decoder's colours (default: wavelet color fix to the input's)",
    )
    add_device(sr)
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
        choices=BACKENDS,
        help="torch (eager), compile (torch.compile; CUDA graphs on GPU), onnxruntime (CPU or CUDA) or tensorrt "
        "(NVIDIA GPU); ONNX graphs and engines are made on first use and cached (default torch)",
    )
    sr.add_argument("--format", default="png", choices=OUTPUT_FORMATS, help="output file format (default png)")
    add_max_megapixels(sr, "inputs or outputs")
    add_overwrite(sr, "replace existing outputs (default: keep them)")
    sr.set_defaults(run=run_sr)


def _add_degrade(commands) -> None:
    degrade = commands.add_parser(
        "degrade", help="synthesize realistic degraded images at any scale in [1, 4], one network evaluation per scale"
    )
    degrade.add_argument("inputs", nargs="+", metavar="HR", help="HR image files or folders")
    add_output(degrade, "output folder: OUT/{s}/{name}_HR.png and {name}_LR{s}.png")
    add_model(degrade, "degradation model directory (default: the packaged degradation-small model)")
    degrade.add_argument(
        "--scale",
        default="4",
        help="one scale (2.7), a list (2,2.7,4) or a range start:stop:step (1.5:4:0.5); default 4",
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
    add_tiles(degrade, tile=512, overlap=64, unit="HR")
    add_max_megapixels(degrade, "HR images")
    degrade.add_argument(
        "--lr-grid", action="store_true", help="write LR images at round(H/s) x round(W/s) instead of HR size"
    )
    degrade.add_argument(
        "--samples",
        type=number_option(1, 1000, integer=True),
        default=1,
        help="draws per image and scale, {name}_LR{s}_{k}.png (default 1): one network evaluation, other pixel noise",
    )
    add_seed(degrade, "seed of the pixel noise (default 0)")
    degrade.add_argument(
        "--no-noise", action="store_true", help="leave out the model's pixel noise: the network's image alone"
    )
    add_device(degrade, "cpu, cuda, cuda:1 ... (default: cuda if present; under torchrun cuda:LOCAL_RANK)")
    degrade.add_argument(
        "--backend",
        default="torch",
        choices=BACKENDS,
        help="torch (eager), compile, onnxruntime or tensorrt (the last three: one-step only); default torch",
    )
    degrade.set_defaults(run=run_degrade)


def _add_model(commands) -> None:
    model = commands.add_parser("model", help="make, import, convert and merge model directories")
    model = model.add_subparsers(dest="model_command", required=True)
    init = model.add_parser("init", help="write an untrained model directory of a preset (for tests and benchmarks)")
    add_output(init, "the new model directory")
    # flux-dev is not offered: 12B random parameters help no one; its weights come from a FLUX.1-dev folder.
    init.add_argument("--preset", default="small", choices=["tiny", "tiny-kl", "small"], help="default small")
    init.add_argument(
        "--kind",
        default="sr",
        choices=["sr", "degradation"],
        help="super-resolution (default) or DegFlow degradation model",
    )
    add_seed(init, "seed of the random weights (default 0)")
    add_overwrite(init)
    init.set_defaults(run=run_model_init)

    imported = model.add_parser(
        "import", help="a base SR model directory from a local diffusers FLUX pipeline folder (e.g. FLUX.1-dev)"
    )
    imported.add_argument(
        "pipeline",
        metavar="PIPELINE_DIR",
        help="diffusers folder: vae/, transformer/, text_encoder(_2)/, tokenizer(_2)/",
    )
    add_output(imported, "the new model directory")
    imported.add_argument(
        "--preset",
        default="flux-dev",
        choices=["tiny-kl", "flux-dev"],
        help="the architecture to check against (default flux-dev; tiny-kl for tests)",
    )
    add_overwrite(imported)
    imported.set_defaults(run=run_model_import)

    convert = model.add_parser("convert", help="copy a model directory with its weights stored in another precision")
    add_model(convert, "the model directory to copy", required=True)
    add_output(convert, "the new model directory")
    convert.add_argument(
        "--dtype", default="float16", choices=["float32", "float16", "bfloat16"], help="default float16 (half the size)"
    )
    convert.add_argument(
        "--color-fix-levels",
        type=number_option(1, MAX_COLOR_FIX_LEVELS, integer=True),
        help="SR models: the colour fix's wavelet levels stored in the copy (the result takes the input's features "
        "coarser than about 2^(levels+1) pixels); choose them on validation photos with `flowsr eval sr`",
    )
    add_overwrite(convert)
    convert.set_defaults(run=run_model_convert)

    merge = model.add_parser("merge", help="fold LoRA adapters into an SR model: a model that serves without peft")
    add_model(merge, "the base SR model directory the adapters were trained on", required=True)
    merge.add_argument(
        "--adapters",
        required=True,
        metavar="DIR",
        help="adapter folder (RUN_DIR/adapters of `flowsr train sr allosr2`)",
    )
    add_output(merge, "the merged model directory")
    add_overwrite(merge)
    merge.set_defaults(run=run_model_merge)


def _add_graph_choice(parser, default: str) -> None:
    """What `export onnx` and `export trt` make: some graphs, or the end-to-end graph at a fixed scale."""
    parser.add_argument("--graphs", help=f"comma-separated graphs (default {default})")
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="one graph of the whole command instead: uint8 pixels in and out, the CLI's pixels (untiled)",
    )
    parser.add_argument(
        "--scale", type=number_option(1, 8), default=4.0, help="the SR scale fixed in an --end-to-end graph (default 4)"
    )
    parser.add_argument(
        "--opset",
        type=number_option(1, 99, integer=True),
        default=None,
        help="ONNX opset (default 20; 22 for bfloat16)",
    )


def _add_export(commands) -> None:
    export = commands.add_parser("export", help="ONNX graphs and TensorRT engines")
    export = export.add_subparsers(dest="export_command", required=True)
    onnx = export.add_parser(
        "onnx", help="export a model's ONNX graphs with dynamic batch and size, verified against torch"
    )
    add_model(onnx, "an SR or degradation model directory", required=True)
    add_output(onnx, "output folder (default DIR/onnx/<dtype>)", required=False)
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
    _add_graph_choice(onnx, "all: sr,encoder,transformer,decoder for SR; degrader")
    add_overwrite(onnx, "replace an existing output folder")
    onnx.set_defaults(run=run_export_onnx)

    trt = export.add_parser("trt", help="build cached TensorRT engines from the ONNX export (NVIDIA GPU)")
    add_model(trt, "an SR or degradation model directory", required=True)
    trt.add_argument(
        "--dtype",
        default="float16",
        choices=["float32", "float16", "bfloat16", "int8"],
        help="graph and engine precision (default float16); int8: the QDQ export of `export onnx --dtype int8`",
    )
    _add_graph_choice(trt, "what the runtime runs: encoder,transformer,decoder for SR; degrader")
    trt.set_defaults(run=run_export_trt)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="flowsr", description="One-step flow-matching super-resolution and degradation synthesis.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_sr(commands)
    _add_degrade(commands)
    _add_model(commands)
    _add_export(commands)
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


def main(argv: list[str | os.PathLike] | None = None) -> int:
    """`flowsr ARGV...`; paths may be given as `Path`s."""
    _quiet_libraries()
    args = build_parser().parse_args(None if argv is None else [os.fspath(arg) for arg in argv])
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
