"""`flowsr degrade` and `flowsr train degradation rae|flow|noise`: the dataset layout, resume, torchrun sharding,
the ONNX graph."""

import json
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from flowsr.core import images
from flowsr.core.degradation_model import DegradationModel
from flowsr.core.model_dir import DegradationManifest, update_manifest
from flowsr.core.noise_model import NoiseModel
from flowsr.export.onnx_export import export_onnx
from flowsr.runtime.allocator import keep_freed_memory
from flowsr.runtime.cli import main
from flowsr.runtime.degrader import Degrader
from flowsr.runtime.pair_dataset import parse_scales
from flowsr.training.noise_fit import calibrate_noise


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "degradation"
    assert main(["model", "init", "--kind", "degradation", "--preset", "tiny", "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hr")
    (folder / "sub").mkdir()
    for name, image in (("astronaut", data.astronaut()), ("coffee", data.coffee()), ("chelsea", data.chelsea())):
        Image.fromarray(image[:72, :88]).save(folder / f"{name}.png")
    Image.fromarray(data.rocket()[:64, :96]).save(folder / "sub" / "rocket.jpg", quality=95)
    return folder


def test_parse_scales():
    assert parse_scales("2.7") == [2.7]
    assert parse_scales("4,2,2.7,2") == [2, 2.7, 4]
    assert parse_scales("1.5:4:0.5") == [1.5, 2, 2.5, 3, 3.5, 4]
    assert parse_scales("1:1.3:0.1") == [1, 1.1, 1.2, 1.3]
    for bad in ("x", "1:4:0", "0.5"):
        with pytest.raises(ValueError):
            parse_scales(bad, 4)
    with pytest.raises(ValueError, match=r"\[1, 4"):
        parse_scales("2,5", 4)


def test_layout_and_resume(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["degrade", photos, "-o", out, "--model", model_dir, "--scale", "2,2.7"]) == 0
    names = ["astronaut", "chelsea", "coffee", "sub_rocket"]
    for scale in ("2", "2.7"):
        expected = sorted([f"{n}_HR.png" for n in names] + [f"{n}_LR{scale}.png" for n in names])
        assert sorted(p.name for p in (out / scale).iterdir()) == expected
    hr = np.asarray(Image.open(out / "2" / "astronaut_HR.png"))
    np.testing.assert_array_equal(hr, np.asarray(Image.open(photos / "astronaut.png")))
    assert np.asarray(Image.open(out / "2.7" / "sub_rocket_LR2.7.png")).shape == (64, 96, 3)  # aligned at HR size
    assert "8 network evaluations" in capsys.readouterr().err  # one per image and scale

    first = (out / "2" / "coffee_LR2.png").stat().st_mtime_ns
    (out / "2.7" / "chelsea_LR2.7.png").unlink()  # an interrupted run: one output missing
    assert main(["degrade", photos, "-o", out, "--model", model_dir, "--scale", "2,2.7"]) == 0
    err = capsys.readouterr().err
    assert "1 images x 2 scales" in err and "3 skipped" in err and "1 network evaluations" in err
    assert (out / "2.7" / "chelsea_LR2.7.png").is_file()
    assert (out / "2" / "coffee_LR2.png").stat().st_mtime_ns == first
    assert not list(out.rglob("*.tmp*"))


def test_lr_grid_and_bad_scale(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["degrade", photos / "coffee.png", "-o", out, "--model", model_dir, "--scale", "3", "--lr-grid"]) == 0
    assert Image.open(out / "3" / "coffee_LR3.png").size == (29, 24)  # round(88 / 3) x round(72 / 3)
    capsys.readouterr()
    assert main(["degrade", photos, "-o", out, "--model", model_dir, "--scale", "6"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flowsr: error")]
    assert len(lines) == 1 and "[1, 4" in lines[0]


def test_torchrun_shards_without_gaps_or_duplicates(model_dir, photos, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29531",
        "-m",
        "flowsr.runtime.cli",
        "degrade",
        str(photos),
        "-o",
        str(out),
        "--model",
        str(model_dir),
        "--scale",
        "2",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reports = sorted(line for line in result.stderr.splitlines() if line.startswith("rank "))
    assert reports[0].startswith("rank 0/2: 2 images") and reports[1].startswith("rank 1/2: 2 images")
    written = sorted(p.name for p in (out / "2").glob("*_LR2.png"))
    assert written == ["astronaut_LR2.png", "chelsea_LR2.png", "coffee_LR2.png", "sub_rocket_LR2.png"]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("solver", ["one-step", "euler"])
def test_pixels_are_converted_per_tile_as_the_whole_float_image_would_be(model_dir, dtype, solver):
    """Integer pixels (what `flowsr degrade` passes, so an 81 MP photo is never held in float twice) give the network
    images that the float image in [-1, 1] gives, padding included: 37 x 53 is no multiple of the stride, and the
    32-pixel tiles make several of them."""
    rgb = data.astronaut()[:37, :53].astype(dtype) * (257 if dtype == np.uint16 else 1)
    degrader = Degrader(model_dir, device="cpu", solver=solver, steps=2, tile=32, overlap=16)
    pixels = degrader.degrade_tensor(torch.from_numpy(rgb).permute(2, 0, 1)[None], [1.7, 3.0])
    floats = degrader.degrade_tensor(images.to_tensor(rgb), [1.7, 3.0])
    assert pixels.shape == floats.shape == (2, 3, 37, 53)
    torch.testing.assert_close(pixels, floats, rtol=0, atol=1e-5)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_degraders_allocator_thresholds():
    assert keep_freed_memory()


def test_onnx_graph_matches_torch_with_dynamic_shapes(model_dir, tmp_path):
    model = DegradationModel.from_pretrained(model_dir)
    with torch.no_grad():  # make the output depend on the latent
        for parameter in model.rae.to_image[-1].parameters():
            parameter.normal_(std=0.05, generator=torch.Generator().manual_seed(0))
    spec = export_onnx(model, tmp_path / "onnx")
    assert spec["graphs"]["degrader"]["verification"]["psnr_db"] >= 50
    assert (
        json.loads((tmp_path / "onnx" / "export.json").read_text())["graphs"]["degrader"]["inputs"][0]["shape"][0]
        == "batch"
    )
    os.environ["FLOWSR_CACHE"] = str(tmp_path / "cache")
    try:
        eager = Degrader(model, device="cpu", backend="torch")(data.astronaut()[:40, :56], [1.5, 3.3])
        onnx = Degrader(model, device="cpu", backend="onnxruntime")(data.astronaut()[:40, :56], [1.5, 3.3])
    finally:
        del os.environ["FLOWSR_CACHE"]
    for a, b in zip(eager, onnx, strict=True):
        assert a.shape == (40, 56, 3) and np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error path is for machines without a GPU")
def test_tensorrt_backend_without_a_gpu_is_one_line(model_dir, photos, tmp_path, capsys):
    """The degrader shares the SR backends' registry: TensorRT too, refused here in one line before any output."""
    assert main(["degrade", photos, "-o", tmp_path / "out", "--model", model_dir, "--backend", "tensorrt"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flowsr:")]
    assert len(lines) == 1 and ("GPU" in lines[0] or "not installed" in lines[0])
    assert not any((tmp_path / "out").rglob("*.png"))


def test_train_rae_then_degflow_end_to_end(photos, tmp_path, capsys):
    common = ["--data", str(photos), "--crop", "32", "--repeats", "2", "--batch-size", "2", "--steps", "3"]
    assert main(["train", "degradation", "rae", "--preset", "tiny", "-o", tmp_path / "rae", *common]) == 0
    assert (
        main(
            [
                "train",
                "degradation",
                "flow",
                "--model",
                tmp_path / "rae" / "model",
                "-o",
                tmp_path / "flow",
                "--lookahead",
                "l1",
                *common,
            ]
        )
        == 0
    )
    manifest = DegradationManifest.read(tmp_path / "flow" / "model")
    assert manifest.trained and manifest.knot_scales == [1.0, 2.0, 4.0]
    losses = [json.loads(line) for line in (tmp_path / "flow" / "losses.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and {"flow", "lookahead"} <= set(losses[0])
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "degradation",
                "flow",
                "--model",
                tmp_path / "rae" / "model",
                "-o",
                tmp_path / "x",
                *common,
                "--scales",
                "2,3,4",
            ]
        )
        == 2
    )
    assert "--scales to match" in capsys.readouterr().err
    # LPIPS absent
    assert (
        main(["train", "degradation", "flow", "--model", tmp_path / "rae" / "model", "-o", tmp_path / "y", *common])
        == 2
    )
    assert "LPIPS" in capsys.readouterr().err


def test_degradation_model_feeds_allosr2_in_one_command(model_dir, photos, tmp_path):
    sr_model = tmp_path / "sr"
    assert main(["model", "init", "--preset", "tiny", "-o", sr_model]) == 0
    run = tmp_path / "run"
    command = [
        "train",
        "sr",
        "allosr2",
        "--model",
        str(sr_model),
        "--data",
        str(photos),
        "--synthesize-with",
        str(model_dir),
        "--synth-scales",
        "1.5:3:0.75",
        "--crop",
        "32",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "-o",
        str(run),
    ]
    assert main(command) == 0
    for scale in ("1.5", "2.25", "3"):
        assert len(list((run / "pairs" / scale).glob("*_LR*.png"))) == 4
    assert (run / "model" / "flowsr.json").is_file()
    losses = (run / "losses.jsonl").read_text().splitlines()
    assert len(losses) == 2


def test_allosr2_trains_on_several_noise_draws_per_image(model_dir, noisy_model_dir, photos, tmp_path, capsys):
    sr_model = tmp_path / "sr"
    assert main(["model", "init", "--preset", "tiny", "-o", sr_model]) == 0
    command = [
        "train",
        "sr",
        "allosr2",
        "--model",
        str(sr_model),
        "--data",
        str(photos),
        "--synth-scales",
        "2",
        "--synth-samples",
        "2",
        "--crop",
        "32",
        "--batch-size",
        "2",
        "--steps",
        "1",
    ]
    assert main([*command, "--synthesize-with", noisy_model_dir, "-o", tmp_path / "run"]) == 0
    names = sorted(p.name for p in (tmp_path / "run" / "pairs" / "2").glob("*_LR*.png"))
    assert len(names) == 2 * 4 and all(name.endswith(("_LR2_0.png", "_LR2_1.png")) for name in names)
    capsys.readouterr()
    assert main([*command, "--synthesize-with", model_dir, "-o", tmp_path / "plain"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--synth-samples 2 needs a model with fitted pixel noise" in error
    assert not (tmp_path / "plain" / "pairs").exists()


def test_eval_degradation_reports_every_pair(model_dir, photos, tmp_path, capsys):
    csv_path = tmp_path / "scores.csv"
    assert (
        main(["eval", "degradation", "--data", photos, "--model", model_dir, "--scales", "2,3", "--csv", csv_path]) == 0
    )
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "image,scale,pair,psnr,latent_mse,first_noise,second_noise,first_spread,second_spread"
    assert len(rows) == 1 + 4 * 2 * 4  # images x scales x pairs
    out = capsys.readouterr().out
    for pair in ("one-vs-multi", "one-vs-true", "multi-vs-true", "bicubic-vs-true"):
        assert pair in out


@pytest.fixture(scope="module")
def noisy_model_dir(model_dir, tmp_path_factory):
    """The tiny model with a pixel-noise table in its manifest."""
    path = tmp_path_factory.mktemp("models") / "noisy"
    shutil.copytree(model_dir, path)
    update_manifest(
        path,
        noise={"times": [0.0, 1.0], "base": [0.0, 4e-3], "slope": [0.0, 0.0], "gray": [0.0, 0.5], "spread": [0.0, 0.2]},
    )
    return path


def test_samples_are_draws_of_one_network_output_reproducible_from_the_seed(noisy_model_dir, photos, tmp_path):
    out = tmp_path / "out"
    command = [
        "degrade",
        str(photos / "coffee.png"),
        "-o",
        str(out),
        "--model",
        str(noisy_model_dir),
        "--scale",
        "2,4",
        "--samples",
        "3",
    ]
    assert main(command) == 0
    assert sorted(p.name for p in (out / "4").iterdir()) == ["coffee_HR.png"] + [
        f"coffee_LR4_{k}.png" for k in range(3)
    ]
    draws = [np.asarray(Image.open(out / "4" / f"coffee_LR4_{k}.png")).astype(float) for k in range(3)]
    clean = Degrader(noisy_model_dir, noise=False)(np.asarray(Image.open(photos / "coffee.png")), [4.0])[0].astype(
        float
    )
    assert all(np.abs(a - b).mean() > 1 for a, b in ((draws[0], draws[1]), (draws[1], draws[2])))  # other noise
    assert np.abs(np.mean(draws, axis=0) - clean).mean() < np.abs(draws[0] - clean).mean()  # around one image
    again = tmp_path / "again"
    assert main([*command[:3], str(again), *command[4:]]) == 0
    for k in range(3):  # the same seed gives the same bytes
        assert (again / "4" / f"coffee_LR4_{k}.png").read_bytes() == (out / "4" / f"coffee_LR4_{k}.png").read_bytes()
    other = tmp_path / "other"
    assert main([*command[:3], str(other), *command[4:], "--seed", "7"]) == 0
    assert (other / "4" / "coffee_LR4_0.png").read_bytes() != (out / "4" / "coffee_LR4_0.png").read_bytes()


def test_samples_without_a_noise_model_is_refused_in_one_line(model_dir, noisy_model_dir, photos, tmp_path, capsys):
    for model, extra in ((model_dir, []), (noisy_model_dir, ["--no-noise"])):
        out = tmp_path / f"out-{len(extra)}"
        assert main(["degrade", photos, "-o", out, "--model", model, "--samples", "2", *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and "--samples 2 needs a model with fitted pixel noise" in error
        assert not out.exists()


def test_eval_degradation_scores_the_noise_draws_of_a_model_with_noise(noisy_model_dir, photos, tmp_path, capsys):
    csv_path = tmp_path / "scores.csv"
    assert (
        main(["eval", "degradation", "--data", photos, "--model", noisy_model_dir, "--scales", "4", "--csv", csv_path])
        == 0
    )
    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:]]
    noisy = [row for row in rows if row[2] == "noisy-vs-true"]
    assert len(noisy) == 4 and all(float(row[7]) > 0 and float(row[8]) > 0 for row in noisy)  # both spread across draws
    assert all(row[7] == "" for row in rows if row[2] != "noisy-vs-true")
    assert "noisy-vs-true" in capsys.readouterr().out


def test_calibrated_noise_is_as_grainy_as_the_pipeline_by_eval_degradation(noisy_model_dir, photos, tmp_path):
    """`train degradation noise --calibrate-on` rescales the table until `eval degradation`'s noise ratio is 1 on
    those photos; the table starts almost 5x as grainy as the pipeline on these photos."""
    model = tmp_path / "model"
    shutil.copytree(noisy_model_dir, model)
    table = {"times": [0.0, 1.0], "base": [0.0, 4e-2], "slope": [0.0, 0.0], "gray": [0.0, 0.5], "spread": [0.0, 0.2]}
    calibrated = calibrate_noise(
        DegradationModel.from_pretrained(model), NoiseModel.from_dict(table), photos, max_side=88
    )
    assert 0 < calibrated.base[1] < table["base"][1] / 4 and calibrated.times == table["times"]
    update_manifest(model, noise=calibrated.to_dict())
    csv_path = tmp_path / "scores.csv"
    assert (
        main(
            [
                "eval",
                "degradation",
                "--data",
                photos,
                "--model",
                model,
                "--scales",
                "4",
                "--max-side",
                "88",
                "--csv",
                csv_path,
            ]
        )
        == 0
    )
    noisy = [line.split(",") for line in csv_path.read_text().splitlines()[1:] if ",noisy-vs-true," in line]
    ratio = np.mean([float(row[5]) for row in noisy]) / np.mean([float(row[6]) for row in noisy])
    assert ratio == pytest.approx(1.0, abs=0.03)


def test_calibration_on_a_folder_without_images_fails_before_the_fit(noisy_model_dir, photos, tmp_path, capsys):
    before = (noisy_model_dir / "flowsr.json").read_bytes()
    (tmp_path / "empty").mkdir()
    assert (
        main(
            [
                "train",
                "degradation",
                "noise",
                "--model",
                noisy_model_dir,
                "--in-place",
                "--data",
                photos,
                "--calibrate-on",
                tmp_path / "empty",
            ]
        )
        == 2
    )
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "empty" in error and "no images" in error
    assert (noisy_model_dir / "flowsr.json").read_bytes() == before
