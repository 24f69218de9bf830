"""Presets build the intended diffusers architectures; base weights load from a local diffusers folder."""

import pytest
import torch

from flowsr.core.autoencoders import latent_of
from flowsr.core.presets import build_transformer, build_vae, get_preset, load_base_components, parameter_count


def test_flux_dev_parameter_count_on_meta_device():
    preset = get_preset("flux-dev")
    with torch.device("meta"):
        transformer = build_transformer(preset)
        vae = build_vae(preset)
    assert next(transformer.parameters()).device.type == "meta"
    # FLUX.1-dev: 11.90B transformer parameters, 83.8M VAE parameters.
    assert parameter_count(transformer) == 11_901_408_320
    assert round(parameter_count(vae) / 1e6, 1) == 83.8
    assert preset.stride == 16 and preset.transformer["in_channels"] == 64


# (autoencoder, velocity network, image pixels per latent pixel) of each preset tests build.
SMALL_PRESETS = {
    "tiny": ("PatchAutoencoder", "GatedConvVelocityModel", 2),
    "tiny-kl": ("AutoencoderKL", "FluxTransformer2DModel", 8),
    "small": ("PatchAutoencoder", "ConvVelocityModel", 2),
    "small-gated": ("PatchAutoencoder", "GatedConvVelocityModel", 2),
}


@pytest.mark.parametrize("name", list(SMALL_PRESETS))
def test_small_presets_build_and_run(name):
    """tiny, small and small-gated: 2x2 patches to 12 latent channels (lossless), tokens of 2x2 latent pixels, so the
    velocity network works at a quarter of the image size; tiny-kl keeps FLUX's geometry (latent at 1/8, 16 pixels per
    token)."""
    autoencoder, velocity, downsample = SMALL_PRESETS[name]
    preset = get_preset(name)
    vae, transformer = build_vae(preset), build_transformer(preset)
    assert (
        (type(vae).__name__, type(transformer).__name__)
        == (autoencoder, velocity)
        == (preset.vae_class, preset.velocity_class)
    )
    assert preset.vae_downsample == downsample and preset.stride == 2 * downsample
    assert preset.transformer["in_channels"] == 4 * preset.latent_channels
    assert (preset.text_tokens > 0) == (velocity == "FluxTransformer2DModel")  # only FLUX is text-conditioned
    # the gated presets read each input's strength (one start time per image); small and FLUX's have one t*
    assert (preset.estimator is not None) == (velocity == "GatedConvVelocityModel")
    height, width = 4 * preset.stride, 6 * preset.stride
    with torch.no_grad():
        latent = latent_of(vae.encode(torch.zeros(1, 3, height, width)))
    assert latent.shape == (1, preset.latent_channels, height // downsample, width // downsample)


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match="tiny, tiny-kl, small, small-gated, flux-dev"):
        get_preset("huge")


def test_base_components_load_from_diffusers_folder(tmp_path):
    preset = get_preset("tiny-kl")
    torch.manual_seed(0)
    vae, transformer = build_vae(preset), build_transformer(preset)
    vae.save_pretrained(tmp_path / "vae")
    transformer.save_pretrained(tmp_path / "transformer")
    loaded_vae, loaded_transformer = load_base_components(str(tmp_path), preset)
    for original, loaded in ((vae, loaded_vae), (transformer, loaded_transformer)):
        for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="preset 'small' needs"):
        load_base_components(str(tmp_path), get_preset("small"))
