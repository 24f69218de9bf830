"""`flowsr train photos`, `flowsr train sr <stage>` and `flowsr train degradation <stage>`: the training commands
that flowsr.training adds to `flowsr`. Each stage reads `--model DIR` (when it starts from a model) and writes a run
folder `-o RUN_DIR` (checkpoint, losses, RUN_DIR/model); the stages that only change a model's manifest write a new
model directory `-o OUT`, or change `--model` itself with `--in-place`."""

from __future__ import annotations

from pathlib import Path

from flowsr.runtime.options import add_model, add_model_output, add_output, add_seed, number_option


def _loop_config(args):
    from .loop import LoopConfig

    return LoopConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        schedule=args.schedule,
        warmup=args.warmup,
        precision=args.precision,
    )


def _crops(args):
    from .stages import Crops

    return Crops(args.data, crop=args.crop, repeats=args.repeats, max_side=args.max_side, seed=args.seed)


def _pairs(args, synthesized=None):
    from .degradations import ContinuumConfig
    from .stages import Pairs

    return Pairs(
        args.data,
        crop=args.crop,
        repeats=args.repeats,
        max_side=args.max_side,
        seed=args.seed,
        scale=args.scale,
        clean_share=getattr(args, "clean_share", ContinuumConfig.clean_share),
        lr_data=args.lr_data,
        synthesized=synthesized,
        synthesized_share=getattr(args, "synthesized_share", 1.0),
    )


def run_photos(args) -> int:
    from .photos import write_corpus

    train, holdout = write_corpus(args.output, root=args.root)
    print(
        f"wrote {train} training images to {Path(args.output) / 'train'} and {holdout} held-out photos to "
        f"{Path(args.output) / 'holdout'}; their sources and licences to {Path(args.output) / 'SOURCES.md'}"
    )
    return 0


def run_vae(args) -> int:
    from flowsr.core.model_schema import read_config

    from .stages import train_autoencoder

    model_dir = train_autoencoder(
        args.output,
        _crops(args),
        _loop_config(args),
        preset=args.preset,
        model_dir=args.model,
        restart=args.restart,
        encoder_only=args.encoder_only,
    )
    if model_dir and args.encoder_only:
        print(f"encoder refit to the decoder; model directory: {model_dir}")
    elif model_dir:
        config = read_config(model_dir / "vae")  # the calibrated normalization, without loading the weights again
        print(
            f"autoencoder trained; latent shift {config['shift_factor'] or 0.0:.4f}, "
            f"scale {config['scaling_factor']:.4f}; "
            f"model directory: {model_dir}"
        )
    return 0


def run_flow(args) -> int:
    from .stages import train_flow

    model_dir = train_flow(args.model, args.output, _crops(args), _loop_config(args), restart=args.restart)
    if model_dir:
        print(f"generative flow trained; model directory: {model_dir}")
    return 0


def _synthesize_pairs(args) -> Path:
    """DegFlow -> pairs: degrade every HR image of --data at --synth-scales, --synth-samples noise draws each, into
    RUN/pairs (resumable, sharded under torchrun), then train on them. The loop from a folder of HR images to an SR
    model in one command."""
    import torch.distributed as dist

    from flowsr.runtime.batch import run_batch
    from flowsr.runtime.degrader import Degrader
    from flowsr.runtime.pair_dataset import check_samples, parse_scales, shard, write_pairs

    from .data import DataError, list_images
    from .loop import distributed, train_device

    rank, world = distributed()
    degrader = Degrader(args.synthesize_with, device=train_device(rank))
    scales = parse_scales(args.synth_scales, degrader.s_max)
    check_samples(degrader, args.synth_samples, "--synth-samples")
    root = Path(args.data)
    jobs = [(path, path.relative_to(root).with_suffix("").as_posix().replace("/", "_")) for path in list_images(root)]
    out = Path(args.output) / "pairs"

    def degrade(source: Path, name: str) -> bool:
        return write_pairs(degrader, source, name, out, scales, False, args.synth_samples, args.seed)

    result = run_batch(shard(jobs, rank, world), degrade, "pairs")
    if result.failed:
        raise DataError(f"{result.failed} HR images of {root} could not be degraded (listed above); fix or remove them")
    if world > 1:
        dist.barrier()
    draws = f" x {args.synth_samples} draws" if args.synth_samples > 1 else ""
    print(
        f"pairs: {result.done} images degraded at {len(scales)} scales{draws} ({result.skipped} already there) in {out}"
    )
    return out


def run_estimate_tstar(args) -> int:
    from .stages import estimate_tstar

    written_to = args.model if args.in_place else args.output
    t_star = estimate_tstar(
        args.model, _pairs(args), args.samples, None if args.in_place else args.output, args.overwrite
    )
    print(f"t* = {t_star:.4f}, written to {written_to}")
    return 0


def run_allosr2(args) -> int:
    import dataclasses

    from flowsr.core.model_dir import Manifest

    from .allosr2 import LORA_PRESETS, LoraSettings, LossWeights
    from .stages import train_allosr2

    preset = LORA_PRESETS.get(Manifest.read(args.model).preset, LoraSettings())
    lora = dataclasses.replace(preset, rank=args.rank or preset.rank, alpha=args.alpha or args.rank or preset.alpha)
    relative = float(args.relative_rec)
    weights = LossWeights(
        latent_mse=1.0 - relative,
        latent_relative=relative,
        lpips=args.lpips_weight,
        pixel=args.pixel_weight,
        pixel_log_floor=args.pixel_log_floor,
        fatc=0.0 if args.no_fatc else args.fatc_weight,
        atm=0.0 if args.no_atm else args.atm_weight,
    )
    pairs = _pairs(args, synthesized=_synthesize_pairs(args) if args.synthesize_with else None)
    merged = train_allosr2(
        args.model,
        args.output,
        pairs,
        _loop_config(args),
        weights,
        lora,
        args.lpips_weights,
        restart=args.restart,
        targets_from=args.targets_from,
    )
    if merged:
        print(f"LoRA adapters: {Path(args.output) / 'adapters'}; merged model directory: {merged}")
    return 0


def run_recipe(args) -> int:
    import dataclasses

    from .recipe import RECIPES, RecipeRun, rescheduled

    recipe = RECIPES[args.preset]
    changes = {"fatc_weight": args.fatc_weight, "atm_weight": args.atm_weight, "clean_share": args.clean_share}
    if args.allosr2_steps is not None:
        changes["allosr2"] = rescheduled(recipe.allosr2, args.allosr2_steps)
    if args.flow_steps is not None:
        changes["flow"] = rescheduled(recipe.flow, args.flow_steps)
    recipe = dataclasses.replace(recipe, **{key: value for key, value in changes.items() if value is not None})
    state = RecipeRun(args.data, args.output, recipe, base=args.model).run()
    total = sum(state["seconds"].values())
    stages = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in state["seconds"].items())
    print(f"recipe done in {total:.0f} s ({stages}); model directory: {Path(args.output) / 'model'}")
    return 0


def _scale_samples(args, knots: list[float]):
    """The degradation stages' data, at `--scales`, which must be the model's knot scales above 1."""
    from .data import DataError
    from .degflow_data import RealSRScales, SynthesizedScales

    scales = [float(s) for s in args.scales.split(",")]
    if knots != scales:
        raise DataError(f"the data gives scales {scales} but the model's knots are {knots}; pass --scales to match")
    if args.realsr:
        return RealSRScales(args.realsr, split="Train", scales=scales, crop=args.crop, seed=args.seed)
    if not args.data:
        raise DataError("pass --data DIR (HR images, degraded on the fly) or --realsr ROOT (RealSR v2 ordered layout)")
    return SynthesizedScales(
        args.data, scales=scales, crop=args.crop, seed=args.seed, repeats=args.repeats, max_side=args.max_side
    )


def run_rae(args) -> int:
    import torch

    from flowsr.core.degradation_model import DegradationModel

    from .degflow import RAEObjective, calibrate_rae_latents
    from .loop import distributed, run

    model = (
        DegradationModel.from_pretrained(args.model)
        if args.model
        else DegradationModel.from_preset(args.preset, seed=args.seed)
    )
    samples = _scale_samples(args, model.manifest.knot_scales[1:])
    run(RAEObjective(model), samples, _loop_config(args), args.output, resume=not args.restart, description="train rae")
    if distributed()[0] == 0:
        model = model.cpu().eval()
        shift, scale = calibrate_rae_latents(model.rae, torch.stack([samples[i] for i in range(min(len(samples), 64))]))
        model.save_pretrained(Path(args.output) / "model", overwrite=True)
        print(
            f"RAE trained; latent shift {shift:.4f}, scale {scale:.4f}; model directory: {Path(args.output) / 'model'}"
        )
    return 0


def run_degflow(args) -> int:
    from flowsr.core.degradation_model import DegradationModel

    from .degflow import DegFlowObjective, FlowSettings, LPIPSDistance, PixelL1
    from .loop import distributed, run

    model = DegradationModel.from_pretrained(args.model)
    manifest = model.manifest
    samples = _scale_samples(args, manifest.knot_scales[1:])
    if args.lookahead == "lpips":
        from .perceptual import load_lpips

        distance = LPIPSDistance(load_lpips(args.lpips_weights))
    else:
        distance = PixelL1()
    settings = FlowSettings(
        average_target=args.average_target,
        lookahead=0.0 if args.lookahead == "off" else args.lookahead_weight,
        lookahead_weighting=not args.uniform_weighting,
    )
    run(
        DegFlowObjective(model, settings, distance),
        samples,
        _loop_config(args),
        args.output,
        resume=not args.restart,
        description="train degflow",
    )
    if distributed()[0] == 0:
        manifest.trained = True
        model.cpu().eval().save_pretrained(Path(args.output) / "model", overwrite=True)
        print(f"degradation flow trained; model directory: {Path(args.output) / 'model'}")
    return 0


def run_noise(args) -> int:
    from flowsr.core.degradation_model import DegradationModel
    from flowsr.core.errors import SettingsError
    from flowsr.core.model_dir import update_manifest
    from flowsr.core.noise_model import FIELDS
    from flowsr.runtime.pair_dataset import parse_scales

    from .data import list_images
    from .noise_fit import calibrate_noise, fit_noise

    if args.calibrate_on:
        list_images(args.calibrate_on)  # a folder that cannot calibrate fails now, not after the fit
    model = DegradationModel.from_pretrained(args.model)
    scales = sorted(set(parse_scales(args.scales, model.s_max)))
    if scales[0] <= 1 or scales[-1] != model.s_max:
        raise SettingsError(f"--scales {args.scales} must lie above 1 and end at the model's s_max {model.s_max:g}")
    noise = fit_noise(model, args.data, scales=scales, crops=args.crops, crop=args.crop, seed=args.seed)
    how = f"fitted on {args.crops} crops per scale"
    if args.calibrate_on:
        noise = calibrate_noise(model, noise, args.calibrate_on, seed=args.seed)
        how += f", calibrated on {args.calibrate_on}"
    written_to = args.model if args.in_place else args.output
    update_manifest(args.model, None if args.in_place else args.output, args.overwrite, noise=noise.to_dict())
    print(f"pixel noise {how}; written to {written_to}")
    print("  ".join(f"{name:>8}" for name in FIELDS))
    for row in zip(*(getattr(noise, name) for name in FIELDS), strict=True):
        print("  ".join(f"{value:8.2e}" for value in row))
    return 0


def _add_amount(parser, name: str, help: str, default: float | None = None, high: float = 10**6) -> None:
    """A number in [0, high]: a loss weight, or (high=1) a share of the samples or a floor."""
    parser.add_argument(f"--{name}", type=number_option(0, high), default=default, help=help)


def _add_crop_options(parser, crop: int, max_side: int = 1600) -> None:
    parser.add_argument(
        "--crop",
        type=number_option(16, 4096, integer=True),
        default=crop,
        help=f"HR crop size in pixels (default {crop})",
    )
    parser.add_argument(
        "--repeats",
        type=number_option(1, 10**6, integer=True),
        default=64,
        help="crops per HR image per epoch (default 64)",
    )
    parser.add_argument(
        "--max-side",
        type=number_option(16, 65536, integer=True),
        default=max_side,
        help=f"shrink larger images to this longer side first (default {max_side})",
    )
    add_seed(parser)


def _add_data_options(parser, sr_pairs: bool) -> None:
    """An SR stage's photos: --data HR images (and, for SR pairs, their LR images or how to make them)."""
    parser.add_argument("--data", required=True, metavar="DIR", help="folder of HR images")
    _add_crop_options(parser, crop=128)
    if sr_pairs:
        parser.add_argument(
            "--lr-data",
            metavar="DIR",
            help="folder of LR images paired with --data by file name (default: degrade --data on the fly)",
        )
        parser.add_argument(
            "--scale", type=number_option(1, 32), default=4.0, help="degradation scale for HR-only data (default 4)"
        )


def _add_scale_data_options(parser) -> None:
    """A degradation stage's photos: HR images degraded at every knot scale, or a RealSR-layout dataset."""
    parser.add_argument(
        "--data", metavar="DIR", help="folder of HR images, degraded on the fly at every knot scale (Real-ESRGAN-style)"
    )
    parser.add_argument("--realsr", metavar="ROOT", help="RealSR v2 ordered layout: ROOT/{Camera}/Train/{2,3,4}/")
    parser.add_argument(
        "--scales", default="2,4", help="knot scales besides x1 (default 2,4; x3 stays out as the unseen scale)"
    )
    _add_crop_options(parser, crop=128)


def _add_loop_options(parser, steps: int, batch_size: int, lr: float) -> None:
    add_output(parser, "run folder: checkpoint, losses.jsonl, RUN_DIR/model", metavar="RUN_DIR")
    parser.add_argument("--steps", type=number_option(1, 10**9, integer=True), default=steps)
    parser.add_argument(
        "--batch-size", type=number_option(1, 4096, integer=True), default=batch_size, help="per process"
    )
    parser.add_argument("--lr", type=number_option(1e-12, 10), default=lr)
    parser.add_argument("--workers", type=number_option(0, 256, integer=True), default=0, help="data loader processes")
    parser.add_argument("--checkpoint-every", type=number_option(1, 10**9, integer=True), default=200)
    parser.add_argument(
        "--schedule",
        default="constant",
        choices=["constant", "cosine"],
        help="learning rate: constant, or warm-up then cosine decay",
    )
    parser.add_argument(
        "--warmup", type=number_option(0, 10**9, integer=True), default=0, help="warm-up steps of the cosine schedule"
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="auto: bfloat16 autocast on CUDA and on CPUs with native bfloat16 (AVX512-BF16, AMX), else float32",
    )
    parser.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in RUN_DIR")


def _add_sr_stages(stages) -> None:
    recipe = stages.add_parser(
        "recipe",
        help="the whole SR training, resumable: autoencoder, flow prior, t*, AlloSR², float16 model, evaluation",
    )
    recipe.add_argument(
        "--data",
        required=True,
        metavar="CORPUS",
        help="folder with train/ (and holdout/ to evaluate on), as `flowsr train photos` writes it",
    )
    add_output(recipe, "run folder; running the command again resumes it", metavar="RUN_DIR")
    recipe.add_argument(
        "--preset",
        default="small",
        choices=["small", "small-gated", "tiny"],
        help="default small (what ships); small-gated: a start time per image; tiny for tests",
    )
    add_model(recipe, "start from this finished flow stage (RUN_DIR/flow/model of another run)")
    _add_amount(recipe, "fatc-weight", help="weight of the FATC term (default: the preset recipe's; the paper's is 1)")
    _add_amount(recipe, "atm-weight", help="weight of the ATM term (default: the preset recipe's; the paper's is 1)")
    _add_amount(
        recipe,
        "clean-share",
        high=1,
        help="share of the AlloSR² pairs that are clean bicubic downscales, the rest drawn along the degradation "
        "continuum (default: the preset recipe's)",
    )
    recipe.add_argument(
        "--allosr2-steps",
        type=number_option(1, 10**9, integer=True),
        help="AlloSR² steps (default: the preset recipe's), for ablations at a smaller budget",
    )
    recipe.add_argument(
        "--flow-steps",
        type=number_option(1, 10**9, integer=True),
        help="flow prior steps (default: the preset recipe's), for ablations at a smaller budget",
    )
    recipe.set_defaults(run=run_recipe)

    vae = stages.add_parser("vae", help="pre-train the autoencoder of a preset on HR crops")
    vae.add_argument("--preset", default="small")
    add_model(vae, "continue from this model directory instead of a fresh preset")
    vae.add_argument(
        "--encoder-only",
        action="store_true",
        help="refit --model's encoder to its frozen decoder, latent scale kept: the --targets-from model for "
        "LoRA on a merged AlloSR² model",
    )
    _add_data_options(vae, sr_pairs=False)
    _add_loop_options(vae, steps=2000, batch_size=8, lr=2e-4)
    vae.set_defaults(run=run_vae)

    flow = stages.add_parser("flow", help="pre-train the velocity network as a generative flow in the latent space")
    add_model(flow, "model directory with a trained autoencoder", required=True)
    _add_data_options(flow, sr_pairs=False)
    _add_loop_options(flow, steps=3000, batch_size=16, lr=3e-4)
    flow.set_defaults(run=run_flow)

    tstar = stages.add_parser("tstar", help="estimate the SNR-guided start time t* and write it into the manifest")
    add_model(tstar, "model directory with a trained flow", required=True)
    add_model_output(tstar)
    _add_data_options(tstar, sr_pairs=True)
    tstar.add_argument(
        "--samples", type=number_option(1, 10**6, integer=True), default=256, help="pairs to estimate from"
    )
    tstar.set_defaults(run=run_estimate_tstar)

    allosr2 = stages.add_parser(
        "allosr2", help="AlloSR² LoRA fine-tuning (Rec + FATC + ATM): adapters and a merged model"
    )
    add_model(allosr2, "base model directory (trained autoencoder and flow, t* estimated)", required=True)
    _add_data_options(allosr2, sr_pairs=True)
    _add_loop_options(allosr2, steps=1000, batch_size=8, lr=5e-5)
    allosr2.add_argument(
        "--rank", type=number_option(1, 4096, integer=True), default=None, help="LoRA rank (default: the preset's)"
    )
    allosr2.add_argument(
        "--alpha", type=number_option(1e-6, 10**6), default=None, help="LoRA alpha (default: the rank)"
    )
    allosr2.add_argument(
        "--targets-from",
        metavar="DIR",
        default=None,
        help="encode the HR targets with this model's autoencoder (e.g. the flow prior) instead of --model's "
        "own encoder; needed when --model is itself a merged AlloSR² model, whose encoder is tuned for LR",
    )
    allosr2.add_argument("--no-fatc", action="store_true", help="ablation: drop the FATC term")
    allosr2.add_argument("--no-atm", action="store_true", help="ablation: drop the ATM term")
    _add_amount(allosr2, "fatc-weight", default=1.0, help="weight of the FATC term (default 1, the paper's)")
    _add_amount(allosr2, "atm-weight", default=1.0, help="weight of the ATM term (default 1, the paper's)")
    _add_amount(allosr2, "lpips-weight", default=0.0, help="weight of LPIPS in L_rec (needs --lpips-weights)")
    allosr2.add_argument(
        "--lpips-weights", metavar="DIR", help="folder with the LPIPS backbone and linear-layer weights"
    )
    _add_amount(
        allosr2,
        "clean-share",
        high=1,
        default=0.35,
        help="share of HR-only samples that are clean bicubic downscales, the rest drawn along the degradation "
        "continuum from mild to heavy (default 0.35)",
    )
    allosr2.add_argument(
        "--relative-rec",
        action="store_true",
        help="L_rec as each sample's share of its input error left, as the recipe trains (default: plain MSE)",
    )
    _add_amount(
        allosr2, "pixel-weight", default=0.0, help="weight of an L1 term on the decoded image in L_rec (default 0)"
    )
    _add_amount(
        allosr2,
        "pixel-log-floor",
        high=1,
        default=0.0,
        help="> 0: the pixel term is the mean over samples of log(L1 + this), so flat crops count as much as "
        "degraded ones (default 0: plain L1)",
    )
    allosr2.add_argument(
        "--synthesize-with",
        metavar="DIR",
        help="make the LR images of --data with this degradation model (at --synth-scales, into RUN_DIR/pairs) "
        "and train on them, a share --synthesized-share of the pairs",
    )
    _add_amount(
        allosr2,
        "synthesized-share",
        high=1,
        default=1.0,
        help="share of the pairs from --synthesize-with, the rest from --data along the continuum "
        "(default 1: only them)",
    )
    allosr2.add_argument(
        "--synth-scales", default="1.5:4:0.25", help="scales for --synthesize-with (default 1.5:4:0.25)"
    )
    allosr2.add_argument(
        "--synth-samples",
        type=number_option(1, 1000, integer=True),
        default=1,
        help="noise draws per image and scale for --synthesize-with, seeded by --seed (default 1; more need the "
        "model's pixel noise)",
    )
    allosr2.set_defaults(run=run_allosr2)


def _add_degradation_stages(stages) -> None:
    rae = stages.add_parser("rae", help="train the residual autoencoder on {HR, x2, x4}")
    rae.add_argument("--preset", default="small", help="degradation model preset (tiny, small)")
    add_model(rae, "continue from this degradation model directory instead of a fresh preset")
    _add_scale_data_options(rae)
    _add_loop_options(rae, steps=3000, batch_size=8, lr=5e-4)
    rae.set_defaults(run=run_rae)

    flow = stages.add_parser("flow", help="train the (t, r) velocity UNet on the spline through the knot latents")
    add_model(flow, "degradation model directory with a trained residual autoencoder", required=True)
    _add_scale_data_options(flow)
    _add_loop_options(flow, steps=3000, batch_size=8, lr=3e-4)
    flow.add_argument(
        "--lookahead",
        default="lpips",
        choices=["lpips", "l1", "off"],
        help="distance of the look-ahead term (default lpips)",
    )
    _add_amount(
        flow,
        "lookahead-weight",
        default=0.1,
        help="scale of the look-ahead term, a mean of weight x distance (default DegFlow's 0.1)",
    )
    flow.add_argument(
        "--average-target",
        default="meanflow",
        choices=["meanflow", "secant"],
        help="target of the average velocity u(z, t, r): MeanFlow's identity, so one step lands where "
        "integrating v does (default), or the secant of each sample's spline (a conditional mean)",
    )
    flow.add_argument(
        "--uniform-weighting", action="store_true", help="ablation: drop the segment-normalized 1/t weight"
    )
    flow.add_argument(
        "--lpips-weights", metavar="DIR", help="folder with the LPIPS backbone weights (--lookahead lpips)"
    )
    flow.set_defaults(run=run_degflow)

    noise = stages.add_parser("noise", help="fit the model's pixel noise to its residuals against the pipeline")
    add_model(noise, "trained degradation model directory", required=True)
    add_model_output(noise)
    noise.add_argument(
        "--data", required=True, metavar="DIR", help="folder of HR images, degraded by the Real-ESRGAN-style pipeline"
    )
    noise.add_argument(
        "--scales",
        default="1.25,1.5,2,2.5,3,3.5,4",
        help="scales of the fit, above 1 and up to s_max (default 1.25 to 4)",
    )
    noise.add_argument(
        "--crops", type=number_option(2, 10**5, integer=True), default=256, help="HR crops per scale (default 256)"
    )
    noise.add_argument(
        "--crop", type=number_option(32, 4096, integer=True), default=128, help="HR crop size in pixels (default 128)"
    )
    noise.add_argument(
        "--calibrate-on",
        metavar="DIR",
        help="then rescale the fit so that `flowsr eval degradation`'s noise ratio is 1 on these HR photos "
        "(not --data's)",
    )
    add_seed(noise)
    noise.set_defaults(run=run_noise)


def add_commands(commands) -> None:
    """`flowsr train photos|sr|degradation`."""
    train = commands.add_parser("train", help="train SR and degradation models, stage by stage")
    train = train.add_subparsers(dest="train_command", required=True)
    photos = train.add_parser("photos", help="write the packaged photo corpus (train/ and holdout/)")
    add_output(photos, "corpus folder")
    photos.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="folder the Debian packages' files are looked up under (default: /, where they are installed); "
        "without installing them: `apt-get download PKG... && for f in *.deb; do dpkg -x $f DIR; done`, all of "
        "them, plasma-workspace-wallpapers included (a missing one is named)",
    )
    photos.set_defaults(run=run_photos)
    sr = train.add_parser("sr", help="SR model stages: recipe (all of them), vae, flow, tstar, allosr2")
    _add_sr_stages(sr.add_subparsers(dest="stage", required=True, metavar="STAGE"))
    degradation = train.add_parser("degradation", help="degradation model stages: rae, flow, noise")
    _add_degradation_stages(degradation.add_subparsers(dest="stage", required=True, metavar="STAGE"))
