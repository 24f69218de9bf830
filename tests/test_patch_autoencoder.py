"""The small preset's PatchAutoencoder: PCA against numpy's SVD, lossless at full rank, tiling, persistence, bad
input."""

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
    """decode(encode(x)) is x's patches projected onto the top principal components (numpy SVD)."""
    model = PatchAutoencoder(patch_size=4, latent_channels=12)
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


def test_full_rank_code_is_lossless_and_tiles_exactly():
    """2x2x3 patches to 12 channels (the small preset): decode(encode(x)) == x, and a tile encodes as the whole
    image."""
    model = PatchAutoencoder(patch_size=2, latent_channels=12)
    assert model.fit_pca(photo("coffee")) == pytest.approx(1.0)
    image = photo(size=(128, 160))
    with torch.no_grad():
        whole = latent_of(model.encode(image))
        torch.testing.assert_close(model.decode(whole).sample, image, atol=1e-5, rtol=0)
        torch.testing.assert_close(latent_of(model.encode(image[:, :, 32:96, 48:128])), whole[:, :, 16:48, 24:64])


def test_saves_and_loads_by_class_name(tmp_path):
    model = PatchAutoencoder(patch_size=4, latent_channels=8, scaling_factor=0.5)
    model.fit_pca(photo())
    model.save_pretrained(tmp_path / "vae", safe_serialization=True)
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_autoencoder(tmp_path / "vae")
    assert isinstance(loaded, PatchAutoencoder) and loaded.config.scaling_factor == 0.5
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_bad_sizes_and_configs_are_refused():
    model = PatchAutoencoder(patch_size=8, latent_channels=8)
    with pytest.raises(ValueError, match="multiples of the patch size 8"):
        model.encode(torch.zeros(1, 3, 20, 16))
    with pytest.raises(ValueError, match=r"latent_channels must lie in \[1, 48\]"):
        PatchAutoencoder(patch_size=4, latent_channels=49)
