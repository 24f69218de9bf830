"""The small preset's velocity network: it starts as the identity step, sees tokens as the image grid they come from,
tiles exactly inside its receptive field, and is conditioned on t."""

import torch
from skimage import data, transform

from flowsr.core import latents
from flowsr.core.conv_velocity import ConvVelocityModel
from flowsr.core.sr_model import OneStepSR, resize_to


def randomized(model: ConvVelocityModel, seed: int = 0) -> ConvVelocityModel:
    """Non-zero output and time layers, as after training (both start at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model.conv_out, model.time_mlp[-1]):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.05)
    return model.eval()


def test_untrained_model_returns_the_bicubic_image():
    """Zero velocity: one Euler step leaves the latent as it is, and the lossless autoencoder gives the input back."""
    model = OneStepSR.from_preset("tiny")
    photo = (
        torch.from_numpy(transform.resize(data.astronaut(), (64, 64), anti_aliasing=True))
        .permute(2, 0, 1)[None]
        .float()
        * 2
        - 1
    )
    model.vae.fit_pca(photo)
    x = resize_to(photo[:, :, ::4, ::4], 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), x, atol=1e-5, rtol=0)


def test_tokens_are_read_as_the_image_grid():
    """Shifting the latent by one token (2 latent pixels) shifts the velocity by one token, away from the borders:
    the network sees the packed tokens in their image layout, not as a sequence."""
    net = randomized(ConvVelocityModel(in_channels=8, channels=8, num_layers=2))
    z = torch.randn(1, 2, 24, 24)
    t = torch.full((1,), 0.3)
    with torch.no_grad():
        v = latents.unpack(net(latents.pack(z), t, 24, 24), 24, 24)
        shifted = latents.unpack(net(latents.pack(torch.roll(z, (2, 4), dims=(2, 3))), t, 24, 24), 24, 24)
    margin = 2 * 4  # four 3x3 convolutions, in latent pixels
    torch.testing.assert_close(
        shifted[..., 2 + margin : -margin, 4 + margin : -margin], v[..., margin : -2 - margin, margin : -4 - margin]
    )


def test_a_tile_matches_the_whole_latent_inside_the_receptive_field():
    net = randomized(ConvVelocityModel(in_channels=8, channels=8, num_layers=3))
    z = torch.randn(2, 2, 32, 40)
    t = torch.full((2,), 0.2)
    with torch.no_grad():
        whole = latents.unpack(net(latents.pack(z), t, 32, 40), 32, 40)
        tile = latents.unpack(net(latents.pack(z[..., 8:24, 12:36]), t, 16, 24), 16, 24)
    margin = 2 * 5
    torch.testing.assert_close(
        tile[..., margin:-margin, margin:-margin], whole[..., 8 + margin : 24 - margin, 12 + margin : 36 - margin]
    )


def test_the_velocity_depends_on_t():
    net = randomized(ConvVelocityModel(in_channels=8, channels=8, num_layers=1))
    tokens = torch.randn(1, 16, 8)
    with torch.no_grad():
        early, late = net(tokens, torch.tensor([0.1]), 8, 8), net(tokens, torch.tensor([0.9]), 8, 8)
    assert (early - late).abs().max() > 1e-3
