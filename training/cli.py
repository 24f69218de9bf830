"""`flowsr train ...`: the corpus, base-model pre-training, t* estimation and AlloSR² fine-tuning."""

from __future__ import annotations

from pathlib import Path

from flowsr.runtime.options import number_option


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

    train, holdout = write_corpus(args.output)
    print(
        f"wrote {train} training images to {Path(args.output) / 'train'} and {holdout} held-out photos to "
        f"{Path(args.output) / 'holdout'}"
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

    from flowsr.runtime.degrader import Degrader
    from flowsr.runtime.generate import check_samples, generate, parse_scales, shard

    from .data import DataError, list_images
    from .loop import distributed, train_device

    rank, world = distributed()
    degrader = Degrader(args.synthesize_with, device=train_device(rank))
    scales = parse_scales(args.synth_scales, degrader.s_max)
    check_samples(degrader, args.synth_samples, "--synth-samples")
    root = Path(args.data)
    jobs = [(path, path.relative_to(root).with_suffix("").as_posix().replace("/", "_")) for path in list_images(root)]
    out = Path(args.output) / "pairs"
    done, skipped, failed = generate(
        degrader, shard(jobs, rank, world), out, scales, False, print, args.synth_samples, args.seed
    )
    if failed:
        raise DataError(f"{failed} HR images of {root} could not be degraded (listed above); fix or remove them")
    if world > 1:
        dist.barrier()
    draws = f" x {args.synth_samples} draws" if args.synth_samples > 1 else ""
    print(f"pairs: {done} images degraded at {len(scales)} scales{draws} ({skipped} already there) in {out}")
    return out


def run_estimate_tstar(args) -> int:
    from .stages import estimate_tstar

    t_star = estimate_tstar(args.model, _pairs(args), samples=args.samples)
    print(f"t* = {t_star:.4f}, written to {args.model}")
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
    state = RecipeRun(args.corpus, args.output, recipe, base=args.base).run()
    total = sum(state["seconds"].values())
    stages = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in state["seconds"].items())
    print(f"recipe done in {total:.0f} s ({stages}); model directory: {Path(args.output) / 'model'}")
    return 0


def _scale_samples(args):
    from .data import DataError
    from .degflow_data import RealSRScales, SynthesizedScales

    scales = [float(s) for s in args.scales.split(",")]
    if args.realsr:
        return RealSRScales(args.realsr, split="Train", scales=scales, crop=args.crop, seed=args.seed)
    if not args.data:
        raise DataError("pass --data HR_DIR (degraded on the fly) or --realsr ROOT (RealSR v2 ordered layout)")
    return SynthesizedScales(
        args.data, scales=scales, crop=args.crop, seed=args.seed, repeats=args.repeats, max_side=args.max_side
    )


def run_rae(args) -> int:
    import torch

    from flowsr.core.degradation_model import DegradationModel

    from .data import DataError
    from .degflow import RAEObjective, calibrate_rae_latents
    from .loop import distributed, run

    model = (
        DegradationModel.from_pretrained(args.model)
        if args.model
        else DegradationModel.from_preset(args.preset, seed=args.seed)
    )
    manifest = model.manifest
    samples = _scale_samples(args)
    if manifest.knot_scales[1:] != list(samples.scales):
        raise DataError(
            f"the data gives scales {list(samples.scales)} but the model's knots are {manifest.knot_scales[1:]}; "
            "pass --scales to match"
        )
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

    from .data import DataError
    from .degflow import DegFlowObjective, FlowSettings, LPIPSDistance, PixelL1
    from .loop import distributed, run

    model = DegradationModel.from_pretrained(args.model)
    manifest = model.manifest
    samples = _scale_samples(args)
    if manifest.knot_scales[1:] != list(samples.scales):
        raise DataError(
            f"the data gives scales {list(samples.scales)} but the model's knots are {manifest.knot_scales[1:]}; "
            "pass --scales to match"
        )
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
    from flowsr.runtime.generate import parse_scales

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
    update_manifest(args.model, noise=noise.to_dict())
    print(f"pixel noise {how}; written to {Path(args.model) / 'flowsr.json'}")
    print("  ".join(f"{name:>8}" for name in FIELDS))
    for row in zip(*(getattr(noise, name) for name in FIELDS), strict=True):
        print("  ".join(f"{value:8.2e}" for value in row))
    return 0


def run_eval_degradation(args) -> int:
    from flowsr.core.degradation_model import DegradationModel

    from .evaluate_degradation import evaluate_degradation, summarize_degradation, write_degradation_csv

    model = DegradationModel.from_pretrained(args.model)
    scales = [float(s) for s in args.scales.split(",")]
    rows = evaluate_degradation(
        args.data, model, scales=scales, seed=args.seed, max_side=args.max_side, draws=args.draws
    )
    write_degradation_csv(rows, args.csv)
    print(f"true images: Real-ESRGAN-style pipeline seeded per image from {args.seed}; per-image rows: {args.csv}")
    print(
        f"noise: high-pass std where the photo is flat; spread: per-pixel std across {args.draws} draws "
        "(noisy: of the pixel noise; true: of the pipeline);"
    )
    print("both the first image's over the second's, 1 = as much")
    print(f"{'scale':>6} {'pair':<18} {'PSNR':>8} {'latent MSE':>11} {'noise':>6} {'spread':>6} images")
    for (scale, pair), scores in summarize_degradation(rows).items():
        print(
            f"{scale:>6g} {pair:<18} {scores['psnr']:8.3f} {scores['latent_mse']:11.5f} {scores['noise_ratio']:6.2f} "
            f"{scores['spread_ratio']:6.2f} {scores['images']}"
        )
    return 0


def _add_scale_data_options(parser) -> None:
    parser.add_argument(
        "--data", help="folder of HR images, degraded on the fly at every knot scale (Real-ESRGAN-style)"
    )
    parser.add_argument("--realsr", metavar="ROOT", help="RealSR v2 ordered layout: ROOT/{Camera}/Train/{2,3,4}/")
    parser.add_argument(
        "--scales", default="2,4", help="knot scales besides x1 (default 2,4; x3 stays out as the unseen scale)"
    )
    parser.add_argument(
        "--crop", type=number_option(16, 4096, integer=True), default=128, help="HR crop size in pixels"
    )
    parser.add_argument(
        "--repeats",
        type=number_option(1, 10**6, integer=True),
        default=64,
        help="crops per HR image per epoch (--data)",
    )
    parser.add_argument(
        "--max-side",
        type=number_option(16, 65536, integer=True),
        default=1600,
        help="shrink larger images to this longer side first (--data)",
    )
    parser.add_argument("--seed", type=number_option(0, 2**32 - 1, integer=True), default=0)


def run_eval(args) -> int:
    from flowsr.core.errors import SettingsError
    from flowsr.runtime.super_resolver import SuperResolver

    if Path(args.csv).is_dir():
        raise SettingsError(
            f"--csv {args.csv} is a folder; name a file to write the scores to, e.g. {Path(args.csv) / 'eval.csv'}"
        )

    from .comparison import ComparisonSheet
    from .degradations import SWEEP
    from .evaluate import METRICS, evaluate, summarize, sweep, write_csv

    models = {}
    for spec in args.model:
        name, _, path = spec.rpartition("=")
        models[name or Path(path).name] = SuperResolver(
            path, scale=args.scale, device=args.device, tile=0, vae_tile=0, color_fix=not args.no_color_fix
        )
    if args.degradation == "sweep":
        rows = sweep(args.data, models, scale=args.scale, seed=args.seed)
        write_csv(rows, args.csv)
        print(
            f"x{args.scale}, PSNR gain over bicubic (mean, worst image) and mean SSIM, VIF, NIQE differences "
            f"at strengths {', '.join(map(str, SWEEP))} (0: clean, heavy: the Real-ESRGAN-style pipeline), "
            f"seeded per image from {args.seed}; "
            f"table: {args.csv}"
        )
        print(f"{'strength':<9} {'method':<24} {'gain':>8} {'worst':>8} {'ssim':>8} {'vif':>8} {'niqe':>8}")
        for row in rows:
            print(
                f"{row['strength']:<9} {row['method']:<24} {row['psnr_gain']:8.3f} {row['worst_gain']:8.3f} "
                f"{row['ssim_diff']:8.4f} {row['vif_diff']:8.4f} {row['niqe_diff']:8.3f}"
            )
        return 0
    sheet = ComparisonSheet() if args.comparison else None
    rows = evaluate(
        args.data,
        models,
        scale=args.scale,
        seed=args.seed,
        degradation=args.degradation,
        on_image=sheet.add if sheet else None,
    )
    write_csv(rows, args.csv)
    if sheet:
        sheet.save(args.comparison)
        print(f"comparison picture: {args.comparison}")
    print(f"x{args.scale}, {args.degradation} inputs, seeded per image from {args.seed}; per-image scores: {args.csv}")
    print(f"{'method':<24} " + " ".join(f"{metric:>9}" for metric in METRICS) + " images")
    for name, scores in summarize(rows).items():
        print(f"{name:<24} " + " ".join(f"{scores[metric]:9.4f}" for metric in METRICS) + f" {scores['images']}")
    return 0


def _add_data_options(parser, crop: int, sr_pairs: bool) -> None:
    parser.add_argument("--data", required=True, help="folder of HR images")
    parser.add_argument(
        "--crop", type=number_option(16, 4096, integer=True), default=crop, help="HR crop size in pixels"
    )
    parser.add_argument(
        "--repeats", type=number_option(1, 10**6, integer=True), default=64, help="crops per image per epoch"
    )
    parser.add_argument(
        "--max-side",
        type=number_option(16, 65536, integer=True),
        default=1600,
        help="shrink larger images to this longer side first",
    )
    parser.add_argument("--seed", type=number_option(0, 2**32 - 1, integer=True), default=0)
    if sr_pairs:
        parser.add_argument(
            "--lr-data", help="folder of LR images paired with --data by file name (default: degrade --data on the fly)"
        )
        parser.add_argument(
            "--scale", type=number_option(1, 32), default=4.0, help="degradation scale for HR-only data (default 4)"
        )


def _add_loop_options(parser, steps: int, batch_size: int, lr: float) -> None:
    parser.add_argument(
        "-o", "--output", required=True, metavar="RUN_DIR", help="run folder: checkpoint, losses.jsonl, results"
    )
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


def add_commands(commands) -> None:
    train = commands.add_parser("train", help="train models").add_subparsers(dest="train_command", required=True)

    photos = train.add_parser("photos", help="write the packaged photo corpus (train/ and holdout/)")
    photos.add_argument("output", metavar="OUT")
    photos.set_defaults(run=run_photos)

    recipe = train.add_parser(
        "recipe",
        help="the whole SR training, resumable: autoencoder, flow prior, t*, AlloSR², float16 model, evaluation",
    )
    recipe.add_argument(
        "corpus",
        metavar="CORPUS",
        help="folder with train/ (and holdout/ to evaluate on), as `flowsr train photos` writes it",
    )
    recipe.add_argument(
        "-o", "--output", required=True, metavar="RUN_DIR", help="run folder; running the command again resumes it"
    )
    recipe.add_argument(
        "--preset", default="small", choices=["small", "tiny"], help="default small (what ships); tiny for tests"
    )
    recipe.add_argument(
        "--base", metavar="MODEL_DIR", help="start from this finished flow stage (RUN/flow/model of another run)"
    )
    recipe.add_argument(
        "--fatc-weight",
        type=number_option(0, 10**6),
        help="weight of the FATC term (default: the preset recipe's; the paper's is 1)",
    )
    recipe.add_argument(
        "--atm-weight",
        type=number_option(0, 10**6),
        help="weight of the ATM term (default: the preset recipe's; the paper's is 1)",
    )
    recipe.add_argument(
        "--clean-share",
        type=number_option(0, 1),
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

    vae = train.add_parser("vae", help="pre-train the autoencoder of a preset on HR crops")
    vae.add_argument("--preset", default="small")
    vae.add_argument("--model", help="continue from this model directory instead of a fresh preset")
    vae.add_argument(
        "--encoder-only",
        action="store_true",
        help="refit --model's encoder to its frozen decoder, latent scale kept: the --targets-from model for "
        "LoRA on a merged AlloSR² model",
    )
    _add_data_options(vae, crop=128, sr_pairs=False)
    _add_loop_options(vae, steps=2000, batch_size=8, lr=2e-4)
    vae.set_defaults(run=run_vae)

    flow = train.add_parser("flow", help="pre-train the transformer as a generative flow in the VAE's latent space")
    flow.add_argument("model", metavar="MODEL_DIR", help="model directory with a trained VAE")
    _add_data_options(flow, crop=128, sr_pairs=False)
    _add_loop_options(flow, steps=3000, batch_size=16, lr=3e-4)
    flow.set_defaults(run=run_flow)

    tstar = train.add_parser(
        "estimate-tstar", help="estimate the SNR-guided start time t* and write it into the manifest"
    )
    tstar.add_argument("model", metavar="MODEL_DIR")
    _add_data_options(tstar, crop=128, sr_pairs=True)
    tstar.add_argument(
        "--samples", type=number_option(1, 10**6, integer=True), default=256, help="pairs to estimate from"
    )
    tstar.set_defaults(run=run_estimate_tstar)

    allosr2 = train.add_parser(
        "allosr2", help="AlloSR² LoRA fine-tuning (Rec + FATC + ATM): adapters and a merged model"
    )
    allosr2.add_argument("model", metavar="MODEL_DIR", help="base model directory (trained VAE and flow, t* estimated)")
    _add_data_options(allosr2, crop=128, sr_pairs=True)
    _add_loop_options(allosr2, steps=1000, batch_size=8, lr=5e-5)
    allosr2.add_argument(
        "--rank", type=number_option(1, 4096, integer=True), default=None, help="LoRA rank (default: the preset's)"
    )
    allosr2.add_argument(
        "--alpha", type=number_option(1e-6, 10**6), default=None, help="LoRA alpha (default: the rank)"
    )
    allosr2.add_argument(
        "--targets-from",
        metavar="MODEL_DIR",
        default=None,
        help="encode the HR targets with this model's autoencoder (e.g. the flow prior) instead of MODEL_DIR's "
        "own encoder; needed when MODEL_DIR is itself a merged AlloSR² model, whose encoder is tuned for LR",
    )
    allosr2.add_argument("--no-fatc", action="store_true", help="ablation: drop the FATC term")
    allosr2.add_argument("--no-atm", action="store_true", help="ablation: drop the ATM term")
    allosr2.add_argument(
        "--fatc-weight",
        type=number_option(0, 10**6),
        default=1.0,
        help="weight of the FATC term (default 1, the paper's)",
    )
    allosr2.add_argument(
        "--atm-weight",
        type=number_option(0, 10**6),
        default=1.0,
        help="weight of the ATM term (default 1, the paper's)",
    )
    allosr2.add_argument(
        "--lpips-weight",
        type=number_option(0, 10**6),
        default=0.0,
        help="weight of LPIPS in L_rec (needs --lpips-weights)",
    )
    allosr2.add_argument("--lpips-weights", help="folder with the LPIPS backbone and linear-layer weights")
    allosr2.add_argument(
        "--clean-share",
        type=number_option(0, 1),
        default=0.35,
        help="share of HR-only samples that are clean bicubic downscales, the rest drawn along the degradation "
        "continuum from mild to heavy (default 0.35)",
    )
    allosr2.add_argument(
        "--relative-rec",
        action="store_true",
        help="L_rec as each sample's share of its input error left, as the recipe trains (default: plain MSE)",
    )
    allosr2.add_argument(
        "--pixel-weight",
        type=number_option(0, 10**6),
        default=0.0,
        help="weight of an L1 term on the decoded image in L_rec (default 0)",
    )
    allosr2.add_argument(
        "--pixel-log-floor",
        type=number_option(0, 1),
        default=0.0,
        help="> 0: the pixel term is the mean over samples of log(L1 + this), so flat crops count as much as "
        "degraded ones (default 0: plain L1)",
    )
    allosr2.add_argument(
        "--synthesize-with",
        metavar="DEGRADATION_DIR",
        help="make the LR images of --data with this DegFlow model (at --synth-scales, into RUN_DIR/pairs) "
        "and train on them, a share --synthesized-share of the pairs",
    )
    allosr2.add_argument(
        "--synthesized-share",
        type=number_option(0, 1),
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

    rae = train.add_parser("rae", help="DegFlow: train the residual autoencoder on {HR, x2, x4}")
    rae.add_argument("--preset", default="small", help="degradation model preset (tiny, small)")
    rae.add_argument("--model", help="continue from this degradation model directory")
    _add_scale_data_options(rae)
    _add_loop_options(rae, steps=3000, batch_size=8, lr=5e-4)
    rae.set_defaults(run=run_rae)

    degflow = train.add_parser(
        "degflow", help="DegFlow: train the (t, r) velocity UNet on the spline through the knot latents"
    )
    degflow.add_argument("model", metavar="MODEL_DIR", help="degradation model directory with a trained RAE")
    _add_scale_data_options(degflow)
    _add_loop_options(degflow, steps=3000, batch_size=8, lr=3e-4)
    degflow.add_argument(
        "--lookahead",
        default="lpips",
        choices=["lpips", "l1", "off"],
        help="distance of the look-ahead term (default lpips)",
    )
    degflow.add_argument(
        "--lookahead-weight",
        type=number_option(0, 10**6),
        default=0.1,
        help="scale of the look-ahead term, a mean of weight x distance (default DegFlow's 0.1)",
    )
    degflow.add_argument(
        "--average-target",
        default="meanflow",
        choices=["meanflow", "secant"],
        help="target of the average velocity u(z, t, r): MeanFlow's identity, so one step lands where "
        "integrating v does (default), or the secant of each sample's spline (a conditional mean)",
    )
    degflow.add_argument(
        "--uniform-weighting", action="store_true", help="ablation: drop the segment-normalized 1/t weight"
    )
    degflow.add_argument("--lpips-weights", help="folder with the LPIPS backbone weights (for --lookahead lpips)")
    degflow.set_defaults(run=run_degflow)

    noise = train.add_parser(
        "noise", help="DegFlow: fit the model's pixel noise to its residuals against the pipeline (in place)"
    )
    noise.add_argument(
        "model", metavar="MODEL_DIR", help="trained degradation model directory; its flowsr.json gets the fit"
    )
    noise.add_argument("--data", required=True, help="folder of HR images, degraded by the Real-ESRGAN-style pipeline")
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
        metavar="HR_DIR",
        help="then rescale the fit so that eval-degradation's noise ratio is 1 on these photos (not --data's)",
    )
    noise.add_argument("--seed", type=number_option(0, 2**32 - 1, integer=True), default=0)
    noise.set_defaults(run=run_noise)


def add_eval_command(commands) -> None:
    evaluation = commands.add_parser(
        "eval", help="score SR models against bicubic on degraded HR images (PSNR, SSIM, MS-SSIM, VIF, NIQE)"
    )
    evaluation.add_argument("data", metavar="HR_DIR", help="folder of HR images")
    evaluation.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="model directory; repeat to compare (e.g. ablations)",
    )
    evaluation.add_argument("--scale", type=number_option(2, 16, integer=True), default=4)
    evaluation.add_argument(
        "--seed",
        type=number_option(0, 2**32 - 1, integer=True),
        default=0,
        help="degradation seed of the first image (then +1 per image)",
    )
    evaluation.add_argument("--csv", default="eval.csv", help="per-image scores (default eval.csv)")
    evaluation.add_argument("--device", default=None)
    evaluation.add_argument(
        "--degradation",
        default="heavy",
        choices=["clean", "mild", "heavy", "sweep"],
        help="how the HR images become LR: clean bicubic downscaling; mild (blur 1.2, noise 3/255, JPEG 75); "
        "heavy, the Real-ESRGAN-style pipeline (default); sweep: the gain over bicubic from clean to heavy",
    )
    evaluation.add_argument(
        "--no-color-fix", action="store_true", help="score the models without the wavelet color fix"
    )
    evaluation.add_argument(
        "--comparison", metavar="PNG", help="also write side-by-side crops (bicubic, each model, HR) of every image"
    )
    evaluation.set_defaults(run=run_eval)

    degradation = commands.add_parser(
        "eval-degradation", help="DegFlow: 1-NFE vs multi-step vs true degraded images at knot and unseen scales"
    )
    degradation.add_argument("data", metavar="HR_DIR", help="folder of HR images")
    degradation.add_argument("--model", required=True, metavar="DIR", help="degradation model directory")
    degradation.add_argument("--scales", default="2,3,4", help="default 2,3,4 (x3 is not a training knot)")
    degradation.add_argument("--seed", type=number_option(0, 2**32 - 1, integer=True), default=0)
    degradation.add_argument(
        "--max-side",
        type=number_option(16, 65536, integer=True),
        default=512,
        help="crop images to at most this many pixels per side",
    )
    degradation.add_argument("--csv", default="eval-degradation.csv")
    degradation.add_argument(
        "--draws",
        type=number_option(2, 1000, integer=True),
        default=32,
        help="draws of the pipeline and of the pixel noise that the noise and spread columns average (default 32)",
    )
    degradation.set_defaults(run=run_eval_degradation)
