"""`flowsr eval sr` and `flowsr eval degradation`: the evaluation commands that flowsr.training adds to `flowsr`."""

from __future__ import annotations

from pathlib import Path

from flowsr.runtime.options import AUTO, add_device, add_model, add_seed, number_option, strength_option

from .peers import NAMES as PEER_NAMES


def run_eval(args) -> int:
    from flowsr.core.errors import SettingsError
    from flowsr.runtime.super_resolver import SuperResolver

    if not args.model and not args.peer:
        args.parser.error("the following arguments are required: --model (or --peer)")
    if Path(args.csv).is_dir():
        raise SettingsError(
            f"--csv {args.csv} is a folder; name a file to write the scores to, e.g. {Path(args.csv) / 'eval.csv'}"
        )

    from .comparison import ComparisonSheet
    from .degradations import SWEEP
    from .evaluate import METRICS, evaluate, summarize, sweep, write_csv
    from .peers import Peer

    # Peers first, so that a missing wheel or a --scale they cannot run stops the command before any model loads;
    # they are scored after the models.
    peers = {name: Peer(name, scale=args.scale) for name in args.peer or ()}
    models = {}
    for spec in args.model or ():
        name, _, path = spec.rpartition("=")
        name = name or Path(path).name
        if name in peers:
            raise SettingsError(f"--model {spec}: {name} is also a --peer; name the model: --model OTHER={path}")
        models[name] = SuperResolver(
            path,
            scale=args.scale,
            device=args.device,
            tile=0,
            vae_tile=0,
            color_fix=not args.no_color_fix,
            strength=args.strength,
        )
    models |= peers
    if args.degradation == "sweep":
        rows = sweep(args.data, models, scale=args.scale, seed=args.seed)
        write_csv(rows, args.csv)
        print(
            f"x{args.scale}, PSNR gain over bicubic (mean, worst image) and mean SSIM, VIF, NIQE differences "
            f"at strengths {', '.join(map(str, SWEEP))} (0: clean, heavy: the Real-ESRGAN-style pipeline), "
            f"seeded per image from {args.seed}; "
            f"table: {args.csv}"
        )
        print("read: the strength the model restored at, mean (min-max) over the images")
        print(
            f"{'strength':<9} {'method':<24} {'gain':>8} {'worst':>8} {'ssim':>8} {'vif':>8} {'niqe':>8} {'read':>17}"
        )
        for row in rows:
            read = (
                f"{row['strength_read']:.2f} ({row['strength_read_min']:.2f}-{row['strength_read_max']:.2f})"
                if row["strength_read"] == row["strength_read"]  # NaN for peers
                else ""
            )
            print(
                f"{row['strength']:<9} {row['method']:<24} {row['psnr_gain']:8.3f} {row['worst_gain']:8.3f} "
                f"{row['ssim_diff']:8.4f} {row['vif_diff']:8.4f} {row['niqe_diff']:8.3f} {read:>17}"
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


def _add_eval_sr(evaluations) -> None:
    evaluation = evaluations.add_parser(
        "sr", help="score SR models against bicubic on degraded HR images (PSNR, SSIM, MS-SSIM, VIF, NIQE)"
    )
    evaluation.add_argument("--data", required=True, metavar="DIR", help="folder of HR images")
    evaluation.add_argument(
        "--model",
        action="append",
        metavar="[NAME=]DIR",
        help="SR model directory; repeat to compare (e.g. ablations); required unless --peer is given",
    )
    evaluation.add_argument(
        "--peer",
        action="append",
        choices=PEER_NAMES,
        metavar="NAME",
        help=f"also score a peer x4 model on the CPU (ncnn; pip install 'flowsr[peer]'): {', '.join(PEER_NAMES)}; "
        "repeat for both",
    )
    evaluation.add_argument("--scale", type=number_option(2, 16, integer=True), default=4, help="default 4")
    evaluation.add_argument(
        "--strength",
        type=strength_option,
        default=AUTO,
        help="the degradation strength the models restore at, 0 (clean) to 1 (heavy), or auto: each model's "
        "estimator reads it off each image (default auto)",
    )
    add_seed(evaluation, "degradation seed of the first image (then +1 per image)")
    evaluation.add_argument("--csv", default="eval.csv", help="per-image scores (default eval.csv)")
    add_device(evaluation)
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
    evaluation.set_defaults(run=run_eval, parser=evaluation)


def _add_eval_degradation(evaluations) -> None:
    degradation = evaluations.add_parser(
        "degradation", help="1-NFE vs multi-step vs true degraded images at knot and unseen scales"
    )
    degradation.add_argument("--data", required=True, metavar="DIR", help="folder of HR images")
    add_model(degradation, "degradation model directory", required=True)
    degradation.add_argument("--scales", default="2,3,4", help="default 2,3,4 (x3 is not a training knot)")
    add_seed(degradation, "degradation seed of the first image (then +1 per image)")
    degradation.add_argument(
        "--max-side",
        type=number_option(16, 65536, integer=True),
        default=512,
        help="crop images to at most this many pixels per side (default 512)",
    )
    degradation.add_argument(
        "--csv", default="eval-degradation.csv", help="per-image rows (default eval-degradation.csv)"
    )
    degradation.add_argument(
        "--draws",
        type=number_option(2, 1000, integer=True),
        default=32,
        help="draws of the pipeline and of the pixel noise that the noise and spread columns average (default 32)",
    )
    degradation.set_defaults(run=run_eval_degradation)


def add_commands(commands) -> None:
    """`flowsr eval sr|degradation`."""
    evaluation = commands.add_parser("eval", help="score SR or degradation models on HR photos")
    evaluations = evaluation.add_subparsers(dest="eval_command", required=True)
    _add_eval_sr(evaluations)
    _add_eval_degradation(evaluations)
