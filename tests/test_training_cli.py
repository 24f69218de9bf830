"""The training commands end to end on the tiny preset: VAE -> flow -> t* -> AlloSR² -> eval (clean, mild, heavy,
sweep)."""

import csv
import json
import math

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from flowsr.core import images
from flowsr.core.model_dir import Manifest
from flowsr.core.sr_model import OneStepSR, resize_to
from flowsr.runtime.cli import main
from flowsr.runtime.super_resolver import SuperResolver
from flowsr.training.allosr2 import estimate_t_star
from flowsr.training.data import DegradedFolder, HRCrops
from flowsr.training.degradations import SWEEP, ContinuumConfig, bicubic_downscale, degrade, degrade_for_eval
from flowsr.training.stages import START_TIME_STRENGTHS

FAST = ["--steps", "2", "--batch-size", "2", "--crop", "32", "--repeats", "2", "--checkpoint-every", "1"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()[::4, ::4]).save(folder / "astronaut.png")
    Image.fromarray(data.rocket()[::4, ::4]).save(folder / "rocket.png")
    return folder


@pytest.fixture(scope="module")
def eval_photos(tmp_path_factory):
    """Photos large enough for every metric (NIQE needs 194 px a side)."""
    folder = tmp_path_factory.mktemp("eval-photos")
    Image.fromarray(data.astronaut()[::2, ::2]).save(folder / "astronaut.png")  # 256x256
    Image.fromarray(data.rocket()[::2, ::2]).save(folder / "rocket.png")  # 214x320: cropped to 212x320 at x4
    return folder


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "m"
    assert main(["model", "init", "--preset", "tiny", "-o", str(path)]) == 0
    return path


def hr_of(folder, name: str, scale: int = 4) -> np.ndarray:
    """The HR image as `flowsr eval sr` scores it: 8-bit, cropped to a multiple of the scale."""
    hr = np.asarray(Image.open(folder / name).convert("RGB"))
    return np.ascontiguousarray(hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale])


def eight_bit(lr: np.ndarray) -> np.ndarray:
    """The LR image as `flowsr eval sr` gives it to every method: rounded to 8 bits."""
    return np.round(lr * 255) / 255


def bicubic_psnr(hr: np.ndarray, lr: np.ndarray) -> float:
    """PSNR of the bicubic upscale of an LR float image in [0, 1] (rounded to 8 bits) against the 8-bit HR image."""
    lr_tensor = torch.from_numpy(eight_bit(lr)).permute(2, 0, 1)[None] * 2 - 1
    return peak_signal_noise_ratio(hr, images.from_tensor(resize_to(lr_tensor, *hr.shape[:2])[0]))


def test_hr_crops_repeat_and_shrink(photos):
    dataset = HRCrops(photos, crop=32, repeats=3, max_side=64)
    assert len(dataset) == 6
    assert max(dataset._image(0).shape[:2]) == 64  # 128 px photo shrunk to 64
    crops = [dataset[i] for i in (0, 2, 4)]  # three crops of the same image
    assert all(c.shape == (3, 32, 32) for c in crops) and not torch.equal(crops[0], crops[1])


def test_pipeline_commands(photos, tmp_path, capsys):
    assert main(["train", "sr", "vae", "--preset", "tiny", "--data", photos, "-o", tmp_path / "vae", *FAST]) == 0
    vae_model = tmp_path / "vae" / "model"
    manifest = Manifest.read(vae_model)
    # calibrated from the data
    assert manifest.trained is False and OneStepSR.from_pretrained(vae_model).normalization.scale != 1.0
    rows = [json.loads(line) for line in (tmp_path / "vae" / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and {"l1", "mse"} <= set(rows[0])  # a PatchAutoencoder: no KL

    assert main(["train", "sr", "flow", "--model", vae_model, "--data", photos, "-o", tmp_path / "flow", *FAST]) == 0
    flow_model = tmp_path / "flow" / "model"
    vae_before = OneStepSR.from_pretrained(vae_model)
    after = OneStepSR.from_pretrained(flow_model)
    assert all(
        torch.equal(a, b)
        for a, b in zip(vae_before.vae.state_dict().values(), after.vae.state_dict().values(), strict=True)
    )
    assert not all(
        torch.equal(a, b)
        for a, b in zip(
            vae_before.transformer.state_dict().values(), after.transformer.state_dict().values(), strict=True
        )
    )

    assert Manifest.read(flow_model).t_star_source == "preset"
    (flow_model / "onnx" / "float32").mkdir(parents=True)  # an export: it bakes in t*, so a copy leaves it behind
    tstar = [
        "train",
        "sr",
        "tstar",
        "--model",
        str(flow_model),
        "--data",
        str(photos),
        "--crop",
        "32",
        "--samples",
        "4",
    ]
    copy = tmp_path / "flow-tstar"
    assert main([*tstar, "-o", copy]) == 0
    assert Manifest.read(flow_model).t_star_source == "preset"  # the model itself is untouched
    assert Manifest.read(copy).t_star_source == "estimated" and not (copy / "onnx").exists()
    for part in ("vae", "transformer", "estimator"):
        for file in (flow_model / part).iterdir():
            assert (copy / part / file.name).read_bytes() == file.read_bytes()
    capsys.readouterr()
    assert main([*tstar, "-o", copy]) == 2  # OUT exists
    assert main([*tstar, "-o", flow_model]) == 2  # OUT is the model: that is --in-place
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # neither -o nor --in-place: argparse says which are needed
        main(tstar)
    assert main([*tstar, "--in-place"]) == 0
    assert Manifest.read(flow_model).t_star_source == "estimated"
    t_star = Manifest.read(flow_model).t_star
    assert Manifest.read(copy).t_star == t_star  # the same pairs, the same estimate
    # a model with a strength estimator gets its start times too: one per strength, never decreasing
    start_times = Manifest.read(flow_model).start_times
    assert len(start_times) == START_TIME_STRENGTHS and start_times == sorted(start_times)
    assert Manifest.read(copy).start_times == start_times
    pairs = DegradedFolder(photos, crop=32, scale=4, repeats=64, max_side=1600)
    assert t_star == pytest.approx(estimate_t_star(after, [pairs[i] for i in range(4)]))
    assert 0 < t_star < 1

    assert main(["train", "sr", "allosr2", "--model", flow_model, "--data", photos, "-o", tmp_path / "sr", *FAST]) == 0
    adapters = tmp_path / "sr" / "adapters"
    # The tiny preset's LoRA: every convolution of the velocity network and its time MLP (one gated block), and the
    # PatchAutoencoder's 1x1 encoder.
    layers = {
        part: {
            key.split(".lora_")[0] for key in safetensors.torch.load_file(adapters / part / "adapter_model.safetensors")
        }
        for part in ("transformer", "vae")
    }
    assert layers == {
        "transformer": {
            "conv_in",
            "blocks.0.conv1",
            "blocks.0.conv2",
            "blocks.0.conv3",
            "fuse",
            "conv_out",
            "time_mlp.0",
            "time_mlp.2",
        },
        "vae": {"encoder"},
    }
    assert json.loads((adapters / "adapters.json").read_text())["t_star"] == pytest.approx(t_star)
    merged = OneStepSR.from_pretrained(tmp_path / "sr" / "model")
    manifest = merged.manifest
    assert manifest.trained and merged.t_star == pytest.approx(t_star) and manifest.t_star_estimated
    assert not any("lora" in name for name in merged.state_dict())
    assert "never estimated" not in capsys.readouterr().err


def test_allosr2_on_a_fallback_t_star_warns_in_one_line(photos, tmp_path, capsys):
    base = tmp_path / "base"
    assert main(["model", "init", "--preset", "tiny", "-o", base]) == 0
    assert main(["train", "sr", "allosr2", "--model", base, "--data", photos, "-o", tmp_path / "sr", *FAST]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "never estimated" in line]
    assert len(warnings) == 1 and warnings[0].startswith("flowsr: warning:") and "train sr tstar" in warnings[0]


def test_eval_scores_bicubic_and_models_on_heavy_inputs_by_default(eval_photos, untrained, tmp_path, capsys):
    csv_path = tmp_path / "scores.csv"
    assert main(["eval", "sr", "--data", eval_photos, "--model", f"untrained={untrained}", "--csv", csv_path]) == 0
    assert csv_path.read_text().splitlines()[0] == "image,method,psnr,ssim,ms_ssim,vif,niqe,sharpness,strength"
    rows = list(csv.DictReader(csv_path.open()))
    assert {(r["image"], r["method"]) for r in rows} == {
        (i, m) for i in ("astronaut.png", "rocket.png") for m in ("bicubic", "untrained")
    }
    assert all(float(r["niqe"]) > 0 for r in rows)
    # the strength each model restored its input at (its estimator's reading); none for bicubic
    assert all(math.isnan(float(r["strength"])) == (r["method"] == "bicubic") for r in rows)
    assert all(0 <= float(r["strength"]) <= 1 for r in rows if r["method"] == "untrained")
    # The default input is the heavy pipeline, seeded per image in listing order from --seed (0).
    for seed, name in enumerate(("astronaut.png", "rocket.png")):
        hr = hr_of(eval_photos, name)
        expected = bicubic_psnr(hr, degrade(hr.astype(np.float32) / 255, 4, seed=seed))
        assert float(next(r["psnr"] for r in rows if r["image"] == name and r["method"] == "bicubic")) == pytest.approx(
            expected, abs=1e-4
        )
    bicubic = [float(r["psnr"]) for r in rows if r["method"] == "bicubic"]
    model = [float(r["psnr"]) for r in rows if r["method"] == "untrained"]
    assert all(10 < p < 40 for p in bicubic) and np.mean(model) < np.mean(bicubic)  # random weights lose
    out = capsys.readouterr().out
    assert "heavy" in out and "bicubic" in out and "untrained" in out and "niqe" in out


def test_eval_on_clean_and_mild_inputs(eval_photos, untrained, tmp_path):
    """Bicubic's scores are those of the inputs `degrade_for_eval` makes (clean: the plain bicubic downscale), and
    mild inputs (blur, noise, JPEG) score below clean ones."""
    scores = {}
    for kind in ("clean", "mild"):
        csv_path = tmp_path / f"{kind}.csv"
        argv = [
            "eval",
            "sr",
            "--data",
            str(eval_photos),
            "--model",
            str(untrained),
            "--degradation",
            kind,
            "--seed",
            "5",
            "--csv",
            str(csv_path),
        ]
        assert main(argv) == 0
        scores[kind] = {(r["image"], r["method"]): float(r["psnr"]) for r in csv.DictReader(csv_path.open())}
        for index, name in enumerate(("astronaut.png", "rocket.png")):
            hr = hr_of(eval_photos, name)
            unit = hr.astype(np.float32) / 255
            lr = bicubic_downscale(unit, 4) if kind == "clean" else degrade_for_eval(unit, 4, "mild", seed=5 + index)
            assert scores[kind][(name, "bicubic")] == pytest.approx(bicubic_psnr(hr, lr), abs=1e-4)
    assert all(
        scores["mild"][(name, "bicubic")] < scores["clean"][(name, "bicubic")]
        for name in ("astronaut.png", "rocket.png")
    )


def test_eval_sweep_reports_the_gain_over_bicubic_at_every_strength(eval_photos, untrained, tmp_path, capsys):
    csv_path = tmp_path / "sweep.csv"
    assert (
        main(
            [
                "eval",
                "sr",
                "--data",
                eval_photos,
                "--model",
                f"m={untrained}",
                "--degradation",
                "sweep",
                "--csv",
                csv_path,
            ]
        )
        == 0
    )
    assert csv_path.read_text().splitlines()[0] == (
        "strength,method,psnr_gain,worst_gain,strength_read,strength_read_min,strength_read_max,ssim_diff,vif_diff,"
        "niqe_diff"
    )
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["strength"], r["method"]) for r in rows] == [(str(s), "m") for s in SWEEP]
    assert all(float(r["worst_gain"]) <= float(r["psnr_gain"]) for r in rows)
    # Strength 0 is clean downscaling: the gain is the model's PSNR minus bicubic's, computed here directly.
    resolver, gains = SuperResolver(untrained, scale=4, device="cpu", tile=0, vae_tile=0), []
    for name in ("astronaut.png", "rocket.png"):
        hr = hr_of(eval_photos, name)
        lr = torch.from_numpy(eight_bit(bicubic_downscale(hr.astype(np.float32) / 255, 4))).permute(2, 0, 1)[None]
        lr = lr * 2 - 1
        restored, bicubic = (
            images.from_tensor(resolver.upscale_tensor(lr)[0]),
            images.from_tensor(resize_to(lr, *hr.shape[:2])[0]),
        )
        gains.append(peak_signal_noise_ratio(hr, restored) - peak_signal_noise_ratio(hr, bicubic))
    assert float(rows[0]["psnr_gain"]) == pytest.approx(np.mean(gains), abs=1e-4)
    assert float(rows[0]["worst_gain"]) == pytest.approx(min(gains), abs=1e-4)
    table = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [line[:2] for line in table if line and line[0] in {str(s) for s in SWEEP}] == [[str(s), "m"] for s in SWEEP]


def test_bad_training_input_is_one_line(photos, tmp_path, capsys):
    assert main(["train", "sr", "vae", "--preset", "tiny", "--data", tmp_path / "missing", "-o", tmp_path / "run"]) == 2
    assert (
        main(["train", "sr", "allosr2", "--model", tmp_path / "missing", "--data", photos, "-o", tmp_path / "run"]) == 2
    )
    assert (
        main(
            [
                "train",
                "sr",
                "vae",
                "--preset",
                "tiny",
                "--data",
                photos,
                "-o",
                tmp_path / "run",
                "--crop",
                "32",
                "--repeats",
                "1",
                "--batch-size",
                "4",
            ]
        )
        == 2
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("flowsr: error: ") for line in lines)
    assert "not a folder" in lines[0] and "does not exist" in lines[1] and "too few" in lines[2]


def test_allosr2_relative_rec_trains_the_recipes_reconstruction_term(photos, tmp_path):
    base = tmp_path / "base"
    assert main(["model", "init", "--preset", "tiny", "-o", base]) == 0
    assert (
        main(
            [
                "train",
                "sr",
                "allosr2",
                "--model",
                base,
                "--data",
                photos,
                "-o",
                tmp_path / "sr",
                "--relative-rec",
                "--no-fatc",
                "--no-atm",
                *FAST,
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (tmp_path / "sr" / "losses.jsonl").read_text().splitlines()]
    # the relative term is the whole loss
    assert all(row["loss"] == pytest.approx(row["latent_relative"]) for row in rows)


def test_allosr2_pairs_follow_the_clean_share_and_the_rank_keeps_the_presets_targets(
    photos, untrained, tmp_path, monkeypatch
):
    """--clean-share reaches the continuum of the HR-only pairs (default: the continuum's own), and --rank changes the
    rank of the tiny preset's convolutional LoRA, not its targets."""
    from flowsr.training import stages
    from flowsr.training.allosr2 import LORA_PRESETS

    seen = []
    monkeypatch.setattr(
        stages,
        "train_allosr2",
        lambda model, out, pairs, loop, weights, lora, *args, **kwargs: seen.append((pairs, lora)),
    )
    argv = [
        "train",
        "sr",
        "allosr2",
        "--model",
        str(untrained),
        "--data",
        str(photos),
        "-o",
        str(tmp_path / "sr"),
        "--crop",
        "32",
    ]
    assert main(argv) == 0 and main([*argv, "--clean-share", "0.7", "--rank", "2"]) == 0
    (default_pairs, default_lora), (pairs, lora) = seen
    assert default_pairs.dataset().config.clean_share == ContinuumConfig.clean_share != 0.7
    assert pairs.dataset().config.clean_share == 0.7
    assert default_lora == LORA_PRESETS["tiny"]
    assert (lora.rank, lora.alpha) == (2, 2) and (lora.transformer_targets, lora.encoder_targets) == (
        default_lora.transformer_targets,
        default_lora.encoder_targets,
    )
