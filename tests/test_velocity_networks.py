"""The small presets' velocity networks (ConvVelocityModel: the packaged default's; GatedConvVelocityModel:
small-gated's): each starts as the identity step, sees tokens as the image grid they come from, tiles exactly inside
its receptive field, and is conditioned on t."""

import pytest
import torch
from skimage import data, transform

from flowsr.core import latents
from flowsr.core.conv_velocity import ConvVelocityModel
from flowsr.core.gated_conv_velocity import GatedConvVelocityModel
from flowsr.core.sr_model import OneStepSR, resize_to


def conv(depth: int) -> tuple[ConvVelocityModel, int]:
    """A ConvVelocityModel of about `depth` layers and its count of 3x3 convolutions."""
    return ConvVelocityModel(in_channels=8, channels=8, num_layers=depth), depth + 2


def gated(depth: int) -> tuple[GatedConvVelocityModel, int]:
    blocks = max(1, depth // 2)
    return GatedConvVelocityModel(in_channels=8, channels=8, num_blocks=blocks), 3 * blocks + 2


NETWORKS = pytest.mark.parametrize("make", [conv, gated], ids=["conv", "gated"])


def randomized(model, seed: int = 0):
    """Non-zero output and time layers, as after training (both start at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model.conv_out, model.time_mlp[-1]):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.5)
    return model.eval()


@pytest.mark.parametrize("preset", ["small", "tiny"])
def test_untrained_model_returns_the_bicubic_image(preset):
    """Zero velocity: one Euler step leaves the latent as it is, and the lossless autoencoder gives the input back."""
    model = OneStepSR.from_preset(preset)
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
        torch.testing.assert_close(model(x, torch.tensor([0.3])), x, atol=1e-5, rtol=0)


@NETWORKS
def test_tokens_are_read_as_the_image_grid(make):
    """Shifting the latent by one token (2 latent pixels) shifts the velocity by one token, away from the borders:
    the network sees the packed tokens in their image layout, not as a sequence."""
    net, convolutions = make(2)
    net = randomized(net)
    z = torch.randn(1, 2, 32, 32)
    t = torch.full((1,), 0.3)
    with torch.no_grad():
        v = latents.unpack(net(latents.pack(z), t, 32, 32), 32, 32)
        shifted = latents.unpack(net(latents.pack(torch.roll(z, (2, 4), dims=(2, 3))), t, 32, 32), 32, 32)
    margin = 2 * convolutions  # in latent pixels
    torch.testing.assert_close(
        shifted[..., 2 + margin : -margin, 4 + margin : -margin], v[..., margin : -2 - margin, margin : -4 - margin]
    )


@NETWORKS
def test_a_tile_matches_the_whole_latent_inside_the_receptive_field(make):
    net, convolutions = make(3)
    net = randomized(net)
    z = torch.randn(2, 2, 48, 56)
    t = torch.full((2,), 0.2)
    with torch.no_grad():
        whole = latents.unpack(net(latents.pack(z), t, 48, 56), 48, 56)
        tile = latents.unpack(net(latents.pack(z[..., 4:44, 8:48]), t, 40, 40), 40, 40)
    margin = 2 * convolutions
    torch.testing.assert_close(
        tile[..., margin:-margin, margin:-margin], whole[..., 4 + margin : 44 - margin, 8 + margin : 48 - margin]
    )


@NETWORKS
def test_the_velocity_depends_on_t(make):
    net = randomized(make(1)[0])
    tokens = torch.randn(1, 16, 8)
    with torch.no_grad():
        early, late = net(tokens, torch.tensor([0.1]), 8, 8), net(tokens, torch.tensor([0.9]), 8, 8)
    assert (early - late).abs().max() > 1e-3


def test_the_gate_is_the_closed_form():
    """A gated block's output is 2 sigmoid(h) x + h with h its third convolution's output: the identity where h is 0."""
    block = GatedConvVelocityModel(in_channels=8, channels=8, num_blocks=1).blocks[0]
    x = torch.randn(1, 8, 6, 6)
    zero = torch.zeros(1, 8, 1, 1)
    with torch.no_grad():
        h = block.conv3(torch.nn.functional.silu(block.conv2(torch.nn.functional.silu(block.conv1(x)))))
        torch.testing.assert_close(block(x, zero, zero), 2 * torch.sigmoid(h) * x + h)
