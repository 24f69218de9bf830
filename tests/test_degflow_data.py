"""Multi-scale DegFlow samples: the RealSR v2 ordered layout built from real photos, and synthesized scales."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from flowsr.core.sr_model import resize_to
from flowsr.training.data import DataError
from flowsr.training.degflow_data import RealSRScales, SynthesizedScales
from flowsr.training.degradations import degrade

PHOTOS = {"astronaut": data.astronaut()[:160, :192], "coffee": data.coffee()[:144, :176]}


def darker(image: np.ndarray, scale: int) -> np.ndarray:
    """A stand-in 'LR' image whose pixels are a known function of the HR pixels, so alignment is checkable."""
    return (image.astype(np.uint16) * (8 - scale) // 8).astype(np.uint8)


def realsr(root, scales=(2, 3, 4), camera="Canon", split="Train", skip=None, resize=None):
    for index, (name, image) in enumerate(PHOTOS.items(), start=1):
        hr_folder = root / camera / split / "2"
        hr_folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(hr_folder / f"{camera}_{index:03d}_HR.png")
        for scale in scales:
            if (name, scale) == skip:
                continue
            folder = root / camera / split / str(scale)
            folder.mkdir(parents=True, exist_ok=True)
            lr = darker(image, scale)
            if (name, scale) == resize:
                lr = lr[:-8]
            Image.fromarray(lr).save(folder / f"{camera}_{index:03d}_LR{scale}.png")
    return root


def test_realsr_layout_crops_every_scale_alike(tmp_path):
    dataset = RealSRScales(realsr(tmp_path), scales=(2, 4), crop=64, seed=1)
    assert len(dataset) == 2
    for index in range(2):
        sample = dataset[index]
        assert sample.shape == (3, 3, 64, 64)
        hr = np.rint((sample[0].numpy() + 1) * 127.5).astype(np.uint16)
        for knot, scale in ((1, 2), (2, 4)):
            lr = np.rint((sample[knot].numpy() + 1) * 127.5).astype(np.uint16)
            np.testing.assert_array_equal(lr, hr * (8 - scale) // 8)  # same crop and same flip/rotation
    assert torch.equal(dataset[0], dataset[0]) and not torch.equal(dataset[0], dataset[1])


def test_realsr_errors(tmp_path):
    with pytest.raises(DataError, match="no x3 image"):
        RealSRScales(realsr(tmp_path / "a", skip=("coffee", 3)), scales=(2, 3, 4), crop=64)
    with pytest.raises(DataError, match="differs from its HR"):
        RealSRScales(realsr(tmp_path / "b", resize=("astronaut", 4)), scales=(2, 4), crop=64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="RealSR v2 ordered layout"):
        RealSRScales(tmp_path / "empty", crop=64)
    with pytest.raises(DataError, match="smaller than the 512 px crop"):
        RealSRScales(realsr(tmp_path / "c"), crop=512)


def test_synthesized_scales_are_one_degradation_family(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    Image.fromarray(data.astronaut()[:128, :128]).save(folder / "astronaut.png")
    dataset = SynthesizedScales(folder, scales=(2, 4), crop=64, seed=3, repeats=2)
    sample = dataset[0]
    assert sample.shape == (3, 3, 64, 64)
    assert torch.equal(sample, dataset[0])  # reproducible from the seed
    # Stronger degradation at x4 than at x2: the x4 image is further from the HR image.
    errors = [(sample[k] - sample[0]).abs().mean().item() for k in (1, 2)]
    assert 0 < errors[0] < errors[1]
    # One seed for every scale of a sample: both knots are the pipeline run with the same seed.
    rng = np.random.default_rng([3, 0, 0])
    hr = dataset.hr_crop(0, rng)
    family = int(rng.integers(2**31))
    for knot, scale in ((1, 2.0), (2, 4.0)):
        lr = torch.from_numpy(degrade(hr, scale, seed=family)).permute(2, 0, 1)[None] * 2 - 1
        torch.testing.assert_close(resize_to(lr, 64, 64)[0], sample[knot])
