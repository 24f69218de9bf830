"""The training commands end to end on the tiny preset: VAE -> flow -> t* -> AlloSR² -> eval."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from flowsr.core import images
from flowsr.core.model_dir import Manifest
from flowsr.core.sr_model import OneStepSR, resize_to
from flowsr.runtime.cli import main
from flowsr.training.allosr2 import estimate_t_star
from flowsr.training.data import DegradedFolder, HRCrops
from flowsr.training.degradations import bicubic_downscale

FAST = ["--steps", "2", "--batch-size", "2", "--crop", "32", "--repeats", "2", "--checkpoint-every", "1"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()[::4, ::4]).save(folder / "astronaut.png")
    Image.fromarray(data.rocket()[::4, ::4]).save(folder / "rocket.png")
    return folder


def test_hr_crops_repeat_and_shrink(photos):
    dataset = HRCrops(photos, crop=32, repeats=3, max_side=64)
    assert len(dataset) == 6
    assert max(dataset._image(0).shape[:2]) == 64  # 128 px photo shrunk to 64
    crops = [dataset[i] for i in (0, 2, 4)]  # three crops of the same image
    assert all(c.shape == (3, 32, 32) for c in crops) and not torch.equal(crops[0], crops[1])


def test_pipeline_commands(photos, tmp_path, capsys):
    assert main(["train", "vae", "--preset", "tiny", "--data", str(photos), "-o", str(tmp_path / "vae"), *FAST]) == 0
    vae_model = tmp_path / "vae" / "model"
    manifest = Manifest.read(vae_model)
    assert manifest.trained is False and OneStepSR.from_pretrained(vae_model).normalization.scale != 1.0  # calibrated from the data
    rows = [json.loads(line) for line in (tmp_path / "vae" / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and {"l1", "mse"} <= set(rows[0])  # a PatchAutoencoder: no KL

    assert main(["train", "flow", str(vae_model), "--data", str(photos), "-o", str(tmp_path / "flow"), *FAST]) == 0
    flow_model = tmp_path / "flow" / "model"
    vae_before = OneStepSR.from_pretrained(vae_model)
    after = OneStepSR.from_pretrained(flow_model)
    assert all(torch.equal(a, b) for a, b in zip(vae_before.vae.state_dict().values(), after.vae.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(vae_before.transformer.state_dict().values(), after.transformer.state_dict().values()))

    assert Manifest.read(flow_model).t_star_source == "preset"
    assert main(["train", "estimate-tstar", str(flow_model), "--data", str(photos), "--crop", "32", "--samples", "4"]) == 0
    assert Manifest.read(flow_model).t_star_source == "estimated"
    t_star = Manifest.read(flow_model).t_star
    pairs = DegradedFolder(photos, crop=32, scale=4, repeats=64, max_side=1600)
    assert t_star == pytest.approx(estimate_t_star(after, [pairs[i] for i in range(4)]))
    assert 0 < t_star < 1

    assert main(["train", "allosr2", str(flow_model), "--data", str(photos), "-o", str(tmp_path / "sr"), *FAST]) == 0
    adapters = tmp_path / "sr" / "adapters"
    assert (adapters / "transformer" / "adapter_model.safetensors").is_file()
    assert json.loads((adapters / "adapters.json").read_text())["t_star"] == pytest.approx(t_star)
    merged = OneStepSR.from_pretrained(tmp_path / "sr" / "model")
    manifest = merged.manifest
    assert manifest.trained and merged.t_star == pytest.approx(t_star) and manifest.t_star_estimated
    assert not any("lora" in name for name in merged.state_dict())
    assert "never estimated" not in capsys.readouterr().err


def test_allosr2_on_a_fallback_t_star_warns_in_one_line(photos, tmp_path, capsys):
    base = tmp_path / "base"
    assert main(["model", "init", "--preset", "tiny", str(base)]) == 0
    assert main(["train", "allosr2", str(base), "--data", str(photos), "-o", str(tmp_path / "sr"), *FAST]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "never estimated" in line]
    assert len(warnings) == 1 and warnings[0].startswith("flowsr: warning:") and "estimate-tstar" in warnings[0]


def test_eval_scores_bicubic_and_models(photos, tmp_path, capsys):
    model_dir = tmp_path / "m"
    assert main(["model", "init", "--preset", "tiny", str(model_dir)]) == 0
    csv_path = tmp_path / "scores.csv"
    assert main(["eval", str(photos), "--model", f"untrained={model_dir}", "--csv", str(csv_path)]) == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert {(r["image"], r["method"]) for r in rows} == {(i, m) for i in ("astronaut.png", "rocket.png") for m in ("bicubic", "untrained")}
    assert {(r["method"], r["expert"]) for r in rows} == {("bicubic", ""), ("untrained", "model")}  # a plain model: one expert
    bicubic = [float(r["psnr"]) for r in rows if r["method"] == "bicubic"]
    untrained = [float(r["psnr"]) for r in rows if r["method"] == "untrained"]
    assert all(10 < p < 40 for p in bicubic) and np.mean(untrained) < np.mean(bicubic)  # random weights lose
    out = capsys.readouterr().out
    assert "bicubic" in out and "untrained" in out


def test_eval_on_clean_bicubic_downscaling(photos, tmp_path):
    csv_path = tmp_path / "clean.csv"
    model_dir = tmp_path / "m"
    assert main(["model", "init", "--preset", "tiny", str(model_dir)]) == 0
    assert main(["eval", str(photos), "--model", str(model_dir), "--degradation", "bicubic", "--csv", str(csv_path)]) == 0
    rows = {(r["image"], r["method"]): float(r["psnr"]) for r in csv.DictReader(csv_path.open())}
    for name in ("astronaut.png", "rocket.png"):
        hr = np.asarray(Image.open(photos / name).convert("RGB"))
        hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
        lr = torch.from_numpy(bicubic_downscale(hr.astype(np.float32) / 255, 4)).permute(2, 0, 1)[None] * 2 - 1
        bicubic = images.from_tensor(resize_to(lr, *hr.shape[:2])[0])
        assert rows[(name, "bicubic")] == pytest.approx(peak_signal_noise_ratio(hr, bicubic), abs=1e-3)


def test_bad_training_input_is_one_line(photos, tmp_path, capsys):
    assert main(["train", "vae", "--preset", "tiny", "--data", str(tmp_path / "missing"), "-o", str(tmp_path / "run")]) == 2
    assert main(["train", "allosr2", str(tmp_path / "missing"), "--data", str(photos), "-o", str(tmp_path / "run")]) == 2
    assert main(["train", "vae", "--preset", "tiny", "--data", str(photos), "-o", str(tmp_path / "run"), "--crop", "32", "--repeats", "1", "--batch-size", "4"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("flowsr: error: ") for line in lines)
    assert "not a folder" in lines[0] and "does not exist" in lines[1] and "too few" in lines[2]


def test_allosr2_relative_rec_trains_the_recipes_reconstruction_term(photos, tmp_path):
    base = tmp_path / "base"
    assert main(["model", "init", "--preset", "tiny", str(base)]) == 0
    assert main(["train", "allosr2", str(base), "--data", str(photos), "-o", str(tmp_path / "sr"), "--relative-rec", "--no-fatc", "--no-atm", *FAST]) == 0
    rows = [json.loads(line) for line in (tmp_path / "sr" / "losses.jsonl").read_text().splitlines()]
    assert all(row["loss"] == pytest.approx(row["latent_relative"]) for row in rows)  # the relative term is the whole loss
