"""The small preset's PatchAutoencoder: PCA start against numpy's SVD, tiling, persistence, bad input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data, transform

from flowsr.core.autoencoders import latent_of, load_autoencoder
from flowsr.core.patch_autoencoder import PatchAutoencoder


def photo(name: str = "astronaut", size: tuple[int, int] = (96, 128)) -> torch.Tensor:
    image = transform.resize(getattr(data, name)(), size, anti_aliasing=True)
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() * 2 - 1


def test_fitted_code_is_the_principal_subspace():
    """Untrained branches: decode(encode(x)) is x's patches projected onto the top principal components (numpy SVD)."""
    model = PatchAutoencoder(patch_size=4, latent_channels=12, hidden_channels=8)
    train = torch.cat([photo("astronaut"), photo("coffee")])
    kept = model.fit_pca(train)

    patches = F.pixel_unshuffle(train.double(), 4).permute(0, 2, 3, 1).reshape(-1, 48).numpy()
    mean = patches.mean(axis=0)
    _, singular, vt = np.linalg.svd(patches - mean, full_matrices=False)
    basis = vt[:12]
    assert kept == pytest.approx((singular[:12] ** 2).sum() / (singular**2).sum(), rel=1e-6)

    test = photo("chelsea")
    test_patches = F.pixel_unshuffle(test.double(), 4).permute(0, 2, 3, 1).reshape(-1, 48).numpy()
    expected = (test_patches - mean) @ basis.T @ basis + mean
    with torch.no_grad():
        decoded = model(test).sample
    got = F.pixel_unshuffle(decoded.double(), 4).permute(0, 2, 3, 1).reshape(-1, 48).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-5)
    # orthonormal components: the latent is the patches' coordinates in the principal basis (each up to its sign)
    with torch.no_grad():
        latent = latent_of(model.encode(test)).double().permute(0, 2, 3, 1).reshape(-1, 12).numpy()
    coordinates = (test_patches - mean) @ basis.T
    signs = np.sign((latent * coordinates).sum(axis=0))
    np.testing.assert_allclose(latent * signs, coordinates, atol=2e-5)


def test_tiles_match_the_whole_image_inside_the_receptive_field():
    torch.manual_seed(0)
    model = PatchAutoencoder(patch_size=8, latent_channels=16, hidden_channels=8)
    for coder in (model.encoder, model.decoder):
        torch.nn.init.normal_(coder.conv_out.weight, std=0.05)  # non-zero branches, as after training
    image = photo(size=(128, 160))
    with torch.no_grad():
        whole = latent_of(model.encode(image))
        tile = latent_of(model.encode(image[:, :, 32:96, 48:128]))  # latent rows 4..12, columns 6..16
        margin = 3  # three 3x3 convolutions
        torch.testing.assert_close(tile[:, :, margin:-margin, margin:-margin], whole[:, :, 4 + margin : 12 - margin, 6 + margin : 16 - margin])
        whole_image = model.decode(whole).sample
        tile_image = model.decode(whole[:, :, 4:12, 6:16]).sample
    inner = 8 * margin
    torch.testing.assert_close(tile_image[:, :, inner:-inner, inner:-inner], whole_image[:, :, 32 + inner : 96 - inner, 48 + inner : 128 - inner])


def test_saves_and_loads_by_class_name(tmp_path):
    model = PatchAutoencoder(patch_size=4, latent_channels=8, hidden_channels=8, scaling_factor=0.5)
    model.fit_pca(photo())
    model.save_pretrained(tmp_path / "vae", safe_serialization=True)
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_autoencoder(tmp_path / "vae")
    assert isinstance(loaded, PatchAutoencoder) and loaded.config.scaling_factor == 0.5
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_bad_sizes_and_configs_are_refused():
    model = PatchAutoencoder(patch_size=8, latent_channels=8, hidden_channels=8)
    with pytest.raises(ValueError, match="multiples of the patch size 8"):
        model.encode(torch.zeros(1, 3, 20, 16))
    with pytest.raises(ValueError, match=r"latent_channels must lie in \[1, 48\]"):
        PatchAutoencoder(patch_size=4, latent_channels=49)
