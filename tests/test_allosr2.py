"""AlloSR² training: the ATM gradient by hand, FATC by closed form, only LoRA trains, resume, DDP."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch
from PIL import Image
from skimage import data

from flowsr.core import latents
from flowsr.core.errors import SettingsError
from flowsr.core.sr_model import OneStepSR
from flowsr.training.allosr2 import LORA_PRESETS, RELATIVE_FLOOR, AlloSR2Objective, LossWeights, add_lora, base_encoder
from flowsr.training.data import DegradedFolder
from flowsr.training.loop import LoopConfig, run

# The tiny preset trains LoRA on convolutions (GatedConvVelocityModel, PatchAutoencoder); tiny-kl on FLUX's attention
# and MLPs, with its text conditioning in every velocity evaluation.
PRESETS = pytest.mark.parametrize("preset", ["tiny", "tiny-kl"])


def lora_model(seed=0, preset="tiny"):
    model = OneStepSR.from_preset(preset, seed=seed)
    manifest = model.manifest
    model.t_star = 0.4
    add_lora(model, LORA_PRESETS[preset])
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-zero adapters, so every LoRA weight has a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model, manifest


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()[::4, ::4]).save(folder / "astronaut.png")
    Image.fromarray(data.coffee()[::3, ::3]).save(folder / "coffee.png")
    return folder


def batch(seed=0, size=2, side=32):
    """(LR, HR, strength) of a pair source that does not know its strength (NaN)."""
    generator = torch.Generator().manual_seed(seed)
    hr = torch.rand(size, 3, side, side, generator=generator) * 2 - 1
    lr = (hr + 0.3 * torch.randn(hr.shape, generator=generator)).clamp(-1, 1)
    return lr, hr, torch.full((size,), float("nan"))


def velocity(model, z, t):
    h, w = z.shape[2:]
    return latents.unpack(model.velocity(latents.pack(z), t, h, w), h, w)


@PRESETS
def test_atm_gradient_is_direction_times_jacobian_by_hand(preset):
    model, _ = lora_model(preset=preset)
    params = [p for p in model.parameters() if p.requires_grad]
    objective = AlloSR2Objective(model, LossWeights(latent_mse=0.0, fatc=0.0, atm=1.0))
    lr, hr, strength = batch()
    loss = objective((lr, hr, strength), torch.Generator().manual_seed(5))["loss"]
    surrogate_grads = torch.autograd.grad(loss, params)

    # By hand: the same random draws, the direction from its definition, then g . dz_hat/dtheta.
    generator = torch.Generator().manual_seed(5)
    z_l = model.encode(lr)
    with torch.no_grad(), base_encoder(model):
        z_h = model.encode(hr)
    t_star = torch.full((2,), 0.4)
    z_hat = z_l - 0.4 * velocity(model, z_l, t_star)
    t = torch.rand(2, generator=generator) * 0.4
    noise = torch.randn(z_h.shape, generator=generator)
    with torch.no_grad():
        s = (t / 0.4).view(-1, 1, 1, 1)
        z_sr = (1 - s) * z_h + s * z_l
        z_gen = (1 - t.view(-1, 1, 1, 1)) * z_h + t.view(-1, 1, 1, 1) * noise
        w = 1 / (z_hat - z_h).abs().mean(dim=(1, 2, 3))
        g = w.view(-1, 1, 1, 1) * (
            (z_sr - z_gen) - t.view(-1, 1, 1, 1) * (velocity(model, z_sr, t) - velocity(model, z_gen, t))
        )
    by_hand = torch.autograd.grad(z_hat, params, grad_outputs=g / z_hat.numel())
    assert sum(g.abs().sum() for g in by_hand) > 0
    for a, b in zip(surrogate_grads, by_hand, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@PRESETS
def test_fatc_loss_matches_closed_form(preset):
    model, _ = lora_model(preset=preset)
    objective = AlloSR2Objective(model, LossWeights(latent_mse=0.0, fatc=1.0, atm=0.0))
    lr, hr, strength = batch(1)
    with torch.no_grad():
        loss = objective((lr, hr, strength), torch.Generator().manual_seed(3))["fatc"]
        z_l = model.encode(lr)
        with base_encoder(model):
            z_h = model.encode(hr)
        t = torch.rand(2, generator=torch.Generator().manual_seed(3)) * 0.4
        s = (t / 0.4).view(-1, 1, 1, 1)
        target = (z_l - z_h) / 0.4
        expected = (velocity(model, (1 - s) * z_h + s * z_l, t) - target).pow(2).mean()
    torch.testing.assert_close(loss, expected)


def test_base_encoder_is_the_frozen_one():
    model, _ = lora_model()
    plain = OneStepSR.from_preset("tiny", seed=0)
    x = batch()[1]
    with torch.no_grad():
        with base_encoder(model):
            frozen = model.encode(x)
        tuned = model.encode(x)
        torch.testing.assert_close(frozen, plain.encode(x))
    assert not torch.allclose(tuned, frozen)


def test_targets_come_from_the_target_encoder_when_one_is_given():
    """A merged AlloSR² model's encoder is tuned: its HR latents are not the autoencoder's, so targets come apart."""
    model, _ = lora_model()
    autoencoder = OneStepSR.from_preset("tiny", seed=0)  # the same decoder; its encoder differs from the model's base
    with torch.no_grad():
        for p in autoencoder.vae.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    autoencoder.vae.half()  # stored in float16: still the same decoder
    objective = AlloSR2Objective(model, LossWeights(fatc=0.0, atm=0.0), target_vae=autoencoder.vae.float())
    lr, hr, strength = batch()
    with torch.no_grad():
        expected = autoencoder.encode(hr)
        with base_encoder(model):
            own = model.encode(hr)
    torch.testing.assert_close(objective.target_latent(hr), expected)
    assert not torch.allclose(expected, own, atol=1e-3)
    z_hr_hat = velocity_step(model, lr)
    torch.testing.assert_close(
        objective((lr, hr, strength), torch.Generator())["latent_mse"], (z_hr_hat - expected).pow(2).mean()
    )
    other = OneStepSR.from_preset("tiny", seed=7)
    with pytest.raises(SettingsError, match="another decoder"):
        AlloSR2Objective(model, target_vae=other.vae)


def velocity_step(model, lr):
    with torch.no_grad():
        z = model.encode(lr)
        t = torch.full((z.shape[0],), model.t_star)
        return z - t[:, None, None, None] * velocity(model, z, t)


def test_pixel_term_is_l1_of_the_decoded_one_step_output():
    model, _ = lora_model()
    objective = AlloSR2Objective(model, LossWeights(latent_mse=0.0, pixel=1.0, fatc=0.0, atm=0.0))
    lr, hr, strength = batch()
    losses = objective((lr, hr, strength), torch.Generator().manual_seed(0))
    with torch.no_grad():
        restored = model(lr, torch.full((2,), model.t_star))  # the runtime path: encode, one Euler step, decode
    torch.testing.assert_close(losses["pixel"], (restored - hr).abs().mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses["loss"], losses["pixel"])


@PRESETS
@pytest.mark.parametrize("weights", [LossWeights(), LossWeights(pixel=1.0)], ids=["default", "pixel"])
def test_one_step_changes_only_lora(photos, tmp_path, weights, preset):
    model, _ = lora_model(preset=preset)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dataset = DegradedFolder(photos, crop=32, scale=4, repeats=2)
    run(AlloSR2Objective(model, weights), dataset, LoopConfig(steps=1, batch_size=2, lr=1e-2), tmp_path, resume=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert not any(k.startswith("vae.decoder") for k in changed)
    assert any(k.startswith("transformer.") for k in changed) and any(k.startswith("vae.encoder") for k in changed)


def test_resume_reproduces_the_loss_curve(photos, tmp_path):
    dataset = DegradedFolder(photos, crop=32, scale=4, repeats=4)
    config = LoopConfig(steps=4, batch_size=2, lr=1e-3, checkpoint_every=2)
    straight = run(AlloSR2Objective(lora_model()[0]), dataset, config, tmp_path / "straight", resume=False)
    config.steps = 2
    first = run(AlloSR2Objective(lora_model()[0]), dataset, config, tmp_path / "resumed", resume=False)
    config.steps = 4
    second = run(AlloSR2Objective(lora_model()[0]), dataset, config, tmp_path / "resumed", resume=True)
    assert [row["step"] for row in first + second] == [1, 2, 3, 4]
    for a, b in zip(straight, first + second, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    logged = [json.loads(line) for line in (tmp_path / "resumed" / "losses.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 2, 3, 4] and {"latent_mse", "fatc", "atm", "loss"} <= set(logged[0])


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch, safetensors.torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[3])
    from test_allosr2 import lora_model
    from flowsr.training.allosr2 import AlloSR2Objective
    from flowsr.training.data import DegradedFolder
    from flowsr.training.loop import LoopConfig, run
    model, _ = lora_model()
    dataset = DegradedFolder(sys.argv[1], crop=32, scale=4, repeats=4)
    rows = run(
        AlloSR2Objective(model), dataset, LoopConfig(steps=3, batch_size=2, lr=1e-2), sys.argv[2] + "/run", resume=False
    )
    state = {k: v.contiguous() for k, v in model.state_dict().items() if "lora_" in k}
    safetensors.torch.save_file(state, f"{sys.argv[2]}/rank{dist.get_rank()}.safetensors")
    with open(f"{sys.argv[2]}/losses{dist.get_rank()}.json", "w") as f:
        json.dump([r["loss"] for r in rows], f)
    """
)


def test_ddp_ranks_hold_identical_weights(photos, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        str(script),
        str(photos),
        str(tmp_path),
        os.path.dirname(__file__),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rank0 = safetensors.torch.load_file(tmp_path / "rank0.safetensors")
    rank1 = safetensors.torch.load_file(tmp_path / "rank1.safetensors")
    start = {k: v for k, v in lora_model()[0].state_dict().items() if "lora_" in k}
    assert rank0.keys() == rank1.keys() == start.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(not torch.equal(rank0[k], start[k]) for k in rank0)  # they trained
    losses = [json.loads((tmp_path / f"losses{rank}.json").read_text()) for rank in (0, 1)]
    assert len(losses[0]) == len(losses[1]) == 3 and losses[0] != losses[1]  # each rank saw its own share of the data


def test_relative_reconstruction_is_each_samples_share_of_its_input_error():
    model, _ = lora_model()
    lr, hr, strength = batch(size=3)
    losses = AlloSR2Objective(model, LossWeights(latent_mse=0.0, latent_relative=1.0, fatc=0.0, atm=0.0))(
        (lr, hr, strength), torch.Generator().manual_seed(0)
    )
    with torch.no_grad(), base_encoder(model):
        z_hr = model.encode(hr)
    z_lr = model.encode(lr)
    t_star = torch.full((3,), model.t_star)
    z_hat = z_lr - model.t_star * velocity(model, z_lr, t_star)
    error = (z_hat - z_hr).pow(2).mean(dim=(1, 2, 3))
    input_error = (z_lr - z_hr).pow(2).mean(dim=(1, 2, 3)).clamp_min(RELATIVE_FLOOR)
    torch.testing.assert_close(losses["latent_relative"], (error / input_error).mean(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses["loss"], losses["latent_relative"])
    torch.testing.assert_close(
        losses["gain_db"], 10 * torch.log10((z_lr - z_hr).pow(2).mean() / error.mean()), rtol=1e-4, atol=1e-5
    )


def test_each_pair_starts_at_its_strengths_time_or_its_own_snr_time():
    """With start times per strength, a pair of known strength starts at the model's time for it; a pair of unknown
    strength at its own SNR-guided time, sqrt(D) / (1 + sqrt(D))."""
    model, _ = lora_model()
    model.start_times = torch.tensor([0.05, 0.25])  # as a manifest with start_times gives them
    objective = AlloSR2Objective(model, LossWeights(fatc=0.0, atm=0.0))
    lr, hr, _ = batch(size=3)
    z_lr, z_hr = model.encode(lr), objective.target_latent(hr)
    strength = torch.tensor([0.0, 0.5, float("nan")])
    t = objective.start_time(strength, z_lr, z_hr)
    degradation = (z_lr - z_hr).pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(
        t, torch.stack([torch.tensor(0.05), torch.tensor(0.15), degradation[2] / (1 + degradation[2])])
    )
