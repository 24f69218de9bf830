"""`flowsr train sr recipe` end to end on the tiny preset (one model, evaluated on clean, mild and heavy inputs), and
resume of every stage after an interruption."""

import json

import pytest
import safetensors
import torch
from PIL import Image
from skimage import data

from flowsr.core.model_dir import Manifest
from flowsr.core.presets import get_preset
from flowsr.core.sr_model import OneStepSR
from flowsr.runtime.cli import main
from flowsr.training import loop, recipe
from flowsr.training.allosr2 import LORA_PRESETS, LossWeights
from flowsr.training.data import HRCrops
from flowsr.training.evaluate import reconstruction_psnr
from flowsr.training.loop import LoopConfig
from flowsr.training.recipe import RECIPES, STAGES
from flowsr.training.stages import (
    START_TIME_STRENGTHS,
    Crops,
    Pairs,
    estimate_tstar,
    train_allosr2,
    train_autoencoder,
    train_estimator,
    train_flow,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "train").mkdir()
    (root / "holdout").mkdir()
    Image.fromarray(data.astronaut()[::4, ::4]).save(root / "train" / "astronaut.png")
    Image.fromarray(data.rocket()[::4, ::4]).save(root / "train" / "rocket.png")
    Image.fromarray(data.coffee()[100:300, 200:400]).save(root / "holdout" / "coffee.png")  # 200 px: NIQE needs 194
    return root


def test_recipe_end_to_end(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "sr", "recipe", "--data", corpus, "-o", out, "--preset", "tiny"]) == 0
    manifest = Manifest.read(out / "model")
    assert manifest.trained and manifest.t_star_estimated and manifest.preset == "tiny"
    with safetensors.safe_open(out / "model" / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert {f.get_tensor(key).dtype for key in f.keys()} == {torch.float16}
    merged = OneStepSR.from_pretrained(out / "allosr2" / "model")
    assert merged.t_star == pytest.approx(manifest.t_star)
    # One plain model directory: its three parts and the manifest (the tiny preset takes no text, so no embeddings).
    assert sorted(p.name for p in (out / "model").iterdir()) == ["estimator", "flowsr.json", "transformer", "vae"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "allosr2",
        "autoencoder",
        "estimator",
        "flow",
        "model",
    ]
    # the start times measured per strength (tstar stage) reach the result through the estimator and AlloSR² stages
    assert len(manifest.start_times) == START_TIME_STRENGTHS and manifest.start_times == sorted(manifest.start_times)
    assert merged.manifest.start_times == manifest.start_times
    state = json.loads((out / "recipe.json").read_text())
    assert list(state["seconds"]) == list(STAGES) and all(seconds >= 0 for seconds in state["seconds"].values())
    assert list(state["evaluation"]) == ["clean", "mild", "heavy"]
    for kind in ("clean", "mild", "heavy"):
        assert set(state["evaluation"][kind]) == {"bicubic", "flowsr"}
        rows = (out / f"eval-{kind}.csv").read_text().splitlines()
        assert rows[0] == "image,method,psnr,ssim,ms_ssim,vif,niqe,sharpness,strength"
        assert [row.split(",")[:2] for row in rows[1:]] == [["coffee.png", "bicubic"], ["coffee.png", "flowsr"]]
    bicubic_psnr = {kind: state["evaluation"][kind]["bicubic"]["psnr"] for kind in ("clean", "mild", "heavy")}
    assert bicubic_psnr["clean"] > bicubic_psnr["mild"] > bicubic_psnr["heavy"]  # the three kinds really differ
    runs = [json.loads(line) for line in (out / "allosr2" / "runs.jsonl").read_text().splitlines()]
    assert runs[0]["precision"].startswith(("bfloat16", "float32"))
    printed = capsys.readouterr().out
    assert "recipe done" in printed and "flowsr" in printed and "mild" in printed

    # A finished run is not trained again; an ablation starts from its base and trains only AlloSR².
    assert main(["train", "sr", "recipe", "--data", corpus, "-o", out, "--preset", "tiny"]) == 0
    again = capsys.readouterr().out
    assert all(f"recipe: {stage} done" in again for stage in STAGES) and "train " not in again
    ablation = tmp_path / "no-atm"
    argv = [
        "train",
        "sr",
        "recipe",
        "--data",
        str(corpus),
        "-o",
        str(ablation),
        "--preset",
        "tiny",
        "--atm-weight",
        "0",
        "--allosr2-steps",
        "3",
        "--clean-share",
        "0.9",
    ]
    assert main([*argv, "--model", out / "flow" / "model"]) == 0
    assert not (ablation / "autoencoder").exists() and not (ablation / "flow").exists()
    losses = [json.loads(line) for line in (ablation / "allosr2" / "losses.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and "atm" not in losses[0] and "fatc" in losses[0]
    assert json.loads((ablation / "recipe.json").read_text())["settings"]["clean_share"] == 0.9


def test_an_interrupted_evaluation_leaves_the_model_whole_and_resumes(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise Interrupt

    with monkeypatch.context() as patch:
        patch.setattr(recipe, "evaluate", interrupted)
        assert main(["train", "sr", "recipe", "--data", corpus, "-o", out, "--preset", "tiny"]) == 130  # Ctrl-C
    assert OneStepSR.from_pretrained(out / "model").manifest.trained and not list(out.glob("eval-*.csv"))
    assert main(["train", "sr", "recipe", "--data", corpus, "-o", out, "--preset", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "recipe: model done" in printed and "recipe: eval ..." in printed
    assert sorted(p.name for p in out.glob("eval-*.csv")) == ["eval-clean.csv", "eval-heavy.csv", "eval-mild.csv"]


def test_recipe_refuses_other_settings_and_missing_corpus(corpus, tmp_path, capsys):
    assert (
        main(["train", "sr", "recipe", "--data", tmp_path / "nothing", "-o", tmp_path / "run", "--preset", "tiny"]) == 2
    )
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.json").write_text(json.dumps({"settings": {"preset": "other"}, "seconds": {}, "evaluation": {}}))
    assert main(["train", "sr", "recipe", "--data", corpus, "-o", out, "--preset", "tiny"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "no train/ folder" in lines[0] and "other settings" in lines[1]


class Interrupt(KeyboardInterrupt):
    pass


def interrupt_after(monkeypatch, samples: int):
    """Make the data raise (like Ctrl-C) once `samples` training samples have been read."""
    original = HRCrops.__getitem__
    seen = []

    def getitem(self, key):
        seen.append(key)
        if len(seen) > samples:
            raise Interrupt
        return original(self, key)

    monkeypatch.setattr(HRCrops, "__getitem__", getitem)


STAGE_CONFIG = LoopConfig(steps=3, batch_size=2, lr=1e-3, checkpoint_every=1, schedule="cosine", warmup=1)


def _weights(model_dir):
    model = OneStepSR.from_pretrained(model_dir)
    return model.state_dict()


@pytest.mark.parametrize("stage", ["autoencoder", "flow", "estimator", "allosr2"])
def test_each_stage_resumes_where_it_was_interrupted(corpus, tmp_path, monkeypatch, stage):
    """Interrupted after its first step and run again, a stage ends with the weights of an uninterrupted run."""
    crops = Crops(corpus / "train", crop=32, repeats=2)
    pairs = Pairs(corpus / "train", crop=32, repeats=2)
    base = tmp_path / "base"
    if stage != "autoencoder":
        base = train_autoencoder(tmp_path / "ae", crops, STAGE_CONFIG, preset="tiny")
        if stage == "allosr2":
            base = train_flow(base, tmp_path / "flow", crops, STAGE_CONFIG)
            estimate_tstar(base, pairs, samples=2)

    def train(out):
        if stage == "autoencoder":
            return train_autoencoder(out, crops, STAGE_CONFIG, preset="tiny")
        if stage == "flow":
            return train_flow(base, out, crops, STAGE_CONFIG)
        if stage == "estimator":
            return train_estimator(base, out, pairs, STAGE_CONFIG)
        return train_allosr2(base, out, pairs, STAGE_CONFIG)

    straight = _weights(train(tmp_path / "straight"))
    with monkeypatch.context() as patch:
        # a fresh autoencoder first fits its PCA on every crop
        pca_crops = len(crops.dataset()) if stage == "autoencoder" else 0
        interrupt_after(patch, samples=STAGE_CONFIG.batch_size + pca_crops)
        with pytest.raises(Interrupt):
            train(tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "model").exists()
    resumed = _weights(train(tmp_path / "resumed"))
    sittings = [json.loads(line) for line in (tmp_path / "resumed" / "runs.jsonl").read_text().splitlines()]
    assert [s["from_step"] for s in sittings] == [0, 1]
    assert resumed.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-5, atol=1e-6, msg=name)


def test_encoder_refit_inverts_the_frozen_decoder(corpus, tmp_path, capsys):
    """`train sr vae --model M --encoder-only` (the --targets-from model for LoRA on a merged AlloSR² model): from an
    encoder knocked off its decoder, the round trip recovers while the decoder, the latent scale and the
    transformer stay bit-identical."""
    crops = Crops(corpus / "train", crop=32, repeats=2)
    base = OneStepSR.from_pretrained(train_autoencoder(tmp_path / "ae", crops, STAGE_CONFIG, preset="tiny"))
    with torch.no_grad():
        for p in base.vae.encoder.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    knocked = OneStepSR.from_pretrained(base.save_pretrained(tmp_path / "knocked"))
    before = reconstruction_psnr(knocked, corpus / "train")

    assert (
        main(
            [
                "train",
                "sr",
                "vae",
                "--model",
                tmp_path / "knocked",
                "--encoder-only",
                "--data",
                corpus / "train",
                "--crop",
                "32",
                "--steps",
                "30",
                "--batch-size",
                "2",
                "--lr",
                "1e-3",
                "-o",
                tmp_path / "refit",
            ]
        )
        == 0
    )
    assert "encoder refit to the decoder" in capsys.readouterr().out
    refit = OneStepSR.from_pretrained(tmp_path / "refit" / "model")
    assert reconstruction_psnr(refit, corpus / "train") > before + 1.0
    mine, theirs = refit.state_dict(), knocked.state_dict()
    assert any(not torch.equal(mine[k], theirs[k]) for k in mine if k.startswith("vae.encoder."))
    for name in mine:
        if not name.startswith("vae.encoder."):
            assert torch.equal(mine[name], theirs[name]), name
    assert (refit.normalization.shift, refit.normalization.scale) == (
        base.normalization.shift,
        base.normalization.scale,
    )

    assert main(["train", "sr", "vae", "--encoder-only", "--data", corpus / "train", "-o", tmp_path / "none"]) != 0
    assert "pass --model" in capsys.readouterr().err


def test_recipes_weigh_the_allosr2_terms_and_tune_their_presets_layers():
    small, tiny = RECIPES["small"], RECIPES["tiny"]
    assert small.preset == "small" and all(
        config.schedule == "cosine" for config in (small.autoencoder, small.flow, small.allosr2)
    )
    # off by default (module docstring); the paper's 1 on request
    assert (small.fatc_weight, small.atm_weight) == (0.0, 0.0)
    # the tests run every term
    assert tiny.loss_weights() == LossWeights(latent_mse=0.0, latent_relative=1.0, fatc=1.0, atm=1.0)
    # LoRA goes where the preset's network has its layers (tiny and small: convolutions; FLUX: attention and MLPs), at
    # the recipe's rank.
    for name, settings in RECIPES.items():
        lora, preset = settings.lora(), LORA_PRESETS[settings.preset]
        assert (lora.transformer_targets, lora.encoder_targets) == (
            preset.transformer_targets,
            preset.encoder_targets,
        ), name
        assert lora.rank == settings.lora_rank and lora.alpha == settings.lora_rank, name
        # an estimator stage exactly where the preset has a strength estimator
        assert (settings.estimator is None) == (get_preset(settings.preset).estimator is None), name
        assert settings.estimator is None or settings.estimator.schedule == "cosine", name


def test_autocast_follows_native_bfloat16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    context, line = loop.autocast_for(cpu)
    assert not context._enabled and line.startswith("float32")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    context, line = loop.autocast_for(cpu)
    assert context._enabled and context.fast_dtype == torch.bfloat16 and line.startswith("bfloat16")
    context, line = loop.autocast_for(cpu, "float32")
    assert not context._enabled


def test_cosine_schedule_closed_form():
    config = LoopConfig(steps=10, lr=1.0, schedule="cosine", warmup=2)
    assert [config.lr_at(s) for s in (0, 1)] == [0.5, 1.0]
    assert (
        config.lr_at(2) == pytest.approx(1.0)
        and config.lr_at(6) == pytest.approx(0.5)
        and config.lr_at(10) == pytest.approx(0.0)
    )
    assert LoopConfig(lr=0.3).lr_at(500) == 0.3
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        LoopConfig(schedule="linear")
