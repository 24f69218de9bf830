"""Base-model pre-training objectives against their closed forms."""

import torch
from skimage import data, transform

from flowsr.core.model_dir import init_sr_model
from flowsr.training.pretrain import VAEObjective


def test_vae_loss_balances_kl_and_reconstruction_as_ldm():
    """LDM: sum of |x - x̂| + (x - x̂)² over pixels, plus kl_weight times the summed KL, both per image."""
    model, _ = init_sr_model("tiny", seed=0)
    photo = transform.resize(data.astronaut(), (32, 48), anti_aliasing=True)
    hr = torch.from_numpy(photo).permute(2, 0, 1)[None].float().repeat(2, 1, 1, 1) * 2 - 1
    objective = VAEObjective(model, kl_weight=1e-3)
    losses = objective(hr, torch.Generator().manual_seed(0))

    posterior = model.vae.encode(hr).latent_dist
    recon = model.vae.decode(posterior.sample(generator=torch.Generator().manual_seed(0))).sample
    error = recon - hr
    per_image = (error.abs() + error.pow(2)).flatten(1).sum(1) + 1e-3 * posterior.kl()
    torch.testing.assert_close(losses["loss"] * hr[0].numel(), per_image.mean(), rtol=1e-5, atol=1e-5)
