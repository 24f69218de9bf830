"""Base-model pre-training objectives against their closed forms."""

import torch
from skimage import data, transform

from flowsr.core.sr_model import OneStepSR
from flowsr.training.pretrain import AutoencoderObjective, initialize_autoencoder


def _photo_batch(height: int = 32, width: int = 48) -> torch.Tensor:
    photo = transform.resize(data.astronaut(), (height, width), anti_aliasing=True)
    return torch.from_numpy(photo).permute(2, 0, 1)[None].float().repeat(2, 1, 1, 1) * 2 - 1


def test_vae_loss_balances_kl_and_reconstruction_as_ldm():
    """LDM: sum of |x - x̂| + (x - x̂)² over pixels, plus kl_weight times the summed KL, both per image."""
    model = OneStepSR.from_preset("tiny-kl", seed=0)
    hr = _photo_batch()
    objective = AutoencoderObjective(model, kl_weight=1e-3)
    losses = objective(hr, torch.Generator().manual_seed(0))

    posterior = model.vae.encode(hr).latent_dist
    recon = model.vae.decode(posterior.sample(generator=torch.Generator().manual_seed(0))).sample
    error = recon - hr
    per_image = (error.abs() + error.pow(2)).flatten(1).sum(1) + 1e-3 * posterior.kl()
    torch.testing.assert_close(losses["loss"] * hr[0].numel(), per_image.mean(), rtol=1e-5, atol=1e-5)


def test_patch_autoencoder_loss_is_plain_reconstruction():
    model = OneStepSR.from_preset("tiny", seed=0)
    hr = _photo_batch()
    message = initialize_autoencoder(model.vae, hr)
    assert message.startswith("PCA of 2 crops")
    losses = AutoencoderObjective(model)(hr, torch.Generator().manual_seed(0))
    error = model.vae.decode(model.vae.encode(hr).latent).sample - hr
    assert "kl" not in losses
    torch.testing.assert_close(losses["loss"], error.abs().mean() + error.pow(2).mean())
    assert [name for name, p in model.named_parameters() if p.requires_grad] == [
        name for name, _ in model.vae.named_parameters(prefix="vae")
    ]


def test_encoder_only_trains_the_encoder_side():
    """Of a VAE, everything before the latent trains; the decoder (and post_quant_conv) stay frozen."""
    model = OneStepSR.from_preset("tiny-kl", seed=0)
    AutoencoderObjective(model, encoder_only=True)
    parts = {name.split(".")[0] for name, _ in model.vae.named_parameters()}
    trainable = {name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad}
    assert "encoder" in trainable and "decoder" in parts
    assert trainable == parts - {"decoder", "post_quant_conv"}
