"""Training pairs: shapes, alignment, reproducibility, the continuum's clean share, mixed sources, clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from flowsr.core.sr_model import resize_to
from flowsr.training.data import (
    DataError,
    DegradedFolder,
    MixedPairs,
    PairedFolders,
    StrengthSamples,
    SynthesizedPairs,
)
from flowsr.training.degradations import ContinuumConfig, bicubic_downscale
from flowsr.training.stages import Pairs


@pytest.fixture
def hr_folder(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    Image.fromarray(data.astronaut()[:200, :240]).save(folder / "astronaut.png")
    Image.fromarray(data.chelsea()).save(folder / "chelsea.jpg", quality=95)
    return folder


def test_degraded_folder_pairs(hr_folder):
    dataset = DegradedFolder(hr_folder, crop=64, scale=4, seed=1)
    lr, hr, strength = dataset[0]
    assert lr.shape == hr.shape == (3, 64, 64) and lr.dtype == hr.dtype == torch.float32
    assert -1 <= lr.min() and lr.max() <= 1 and -1 <= hr.min() and hr.max() <= 1
    # the continuum strength the pair was degraded at: one float32 number in [0, 1]
    assert strength.shape == () and strength.dtype == torch.float32 and 0 <= strength <= 1
    again_lr, again_hr, again_strength = DegradedFolder(hr_folder, crop=64, scale=4, seed=1)[0]
    assert torch.equal(lr, again_lr) and torch.equal(hr, again_hr) and torch.equal(strength, again_strength)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0][1], hr)  # a new epoch, a new crop
    # The HR crop is a real crop of the photo, up to the dihedral transform.
    photo = torch.from_numpy(data.astronaut()[:200, :240].astype(np.float32) / 255 * 2 - 1).permute(2, 0, 1)
    windows = photo.unfold(1, 64, 1).unfold(2, 64, 1)  # (3, H-63, W-63, 64, 64)
    candidates = [hr, hr.flip(-1), hr.rot90(1, (1, 2)), hr.rot90(2, (1, 2)), hr.rot90(3, (1, 2))]
    candidates += [c.flip(-1) for c in candidates[2:]]
    assert any((windows == c[:, None, None]).all(-1).all(-1).all(0).any() for c in candidates)


def test_the_estimator_learns_from_the_lr_images_the_pairs_are_made_of(hr_folder):
    """`StrengthSamples`: the same draws as `DegradedFolder` (same seed, same index), the LR at its own size, on 8-bit
    levels (as every served input is), and the strength it was degraded at."""
    pairs = DegradedFolder(hr_folder, crop=64, scale=4, seed=2, repeats=4)
    samples = StrengthSamples(hr_folder, crop=64, scale=4, seed=2, repeats=4)
    assert len(samples) == len(pairs)
    for index in range(len(samples)):
        lr, strength = samples[index]
        lr_up, _, pair_strength = pairs[index]
        assert lr.shape == (3, 16, 16) and strength.dtype == torch.float32 and torch.equal(strength, pair_strength)
        levels = (lr + 1) / 2 * 255
        torch.testing.assert_close(levels, levels.round(), atol=1e-3, rtol=0)
        torch.testing.assert_close(resize_to(lr[None], 64, 64)[0], lr_up)
    fixed = DegradedFolder(hr_folder, crop=32, scale=4, seed=0, repeats=3, strength=0.7)
    assert all(fixed[index][2].item() == pytest.approx(0.7) for index in range(len(fixed)))


def test_bicubic_downscale_matches_pillow():
    photo = data.astronaut()[:203, :250]
    ours = bicubic_downscale(photo.astype(np.float32) / 255, 4)
    pillow = np.asarray(Image.fromarray(photo).resize((62, 51), Image.BICUBIC), dtype=np.float32) / 255
    assert ours.shape == pillow.shape == (51, 62, 3)
    assert np.abs(ours - pillow).mean() < 1 / 255  # both antialiased bicubic; they differ by rounding


def eight_bit(image: np.ndarray) -> np.ndarray:
    """An image in [0, 1] on the 8-bit levels every served input has."""
    return np.round(np.clip(image, 0, 1) * 255) / 255


def is_clean(lr: torch.Tensor, hr: torch.Tensor) -> bool:
    """Whether a pair's LR (at HR size) is the clean bicubic downscale of its HR crop, rounded to 8 bits, brought back
    to its size."""
    hr_image = ((hr.permute(1, 2, 0).numpy() + 1) / 2).astype(np.float32)
    downscaled = torch.from_numpy(eight_bit(bicubic_downscale(hr_image, 4))).permute(2, 0, 1)[None].float() * 2 - 1
    return torch.allclose(lr, resize_to(downscaled, *hr.shape[1:])[0], atol=1e-5)


@pytest.mark.parametrize("clean_share", [0.0, 0.5, 1.0])
def test_clean_share_of_degraded_pairs(hr_folder, clean_share):
    """Each LR is the clean bicubic downscale of its HR crop or a draw along the degradation continuum, the clean ones
    a share `clean_share` of the pairs; a pair's strength says which (0: clean)."""
    dataset = DegradedFolder(
        hr_folder, crop=32, scale=4, seed=3, repeats=20, config=ContinuumConfig(clean_share=clean_share)
    )
    pairs = [dataset[index] for index in range(len(dataset))]
    clean = sum(is_clean(lr, hr) for lr, hr, _ in pairs)
    assert [is_clean(lr, hr) for lr, hr, _ in pairs] == [strength.item() == 0 for _, _, strength in pairs]
    if clean_share == 0.5:
        assert 0.25 * len(dataset) < clean < 0.75 * len(dataset)
    else:  # a draw above strength 0 could match only if every one of its steps were skipped: none of these 40 does
        assert clean == clean_share * len(dataset)
    with pytest.raises(DataError, match="clean share"):
        DegradedFolder(hr_folder, crop=32, config=ContinuumConfig(clean_share=1.5))


def negatives(folder):
    """A `flowsr degrade` output folder whose LR image is the negative of its HR image, so its pairs are
    recognisable."""
    hr = data.astronaut()[:96, :96]
    (folder / "2").mkdir(parents=True)
    Image.fromarray(hr).save(folder / "2" / "a_HR.png")
    Image.fromarray(255 - hr).save(folder / "2" / "a_LR2.png")
    return folder


def from_negatives(pair) -> bool:
    lr, hr, strength = pair
    return torch.allclose(lr, -hr, atol=1e-6) and strength.isnan().item()  # synthesized: no continuum strength


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_mixed_pairs_take_the_second_source_at_its_share(hr_folder, tmp_path, share):
    main = DegradedFolder(hr_folder, crop=32, scale=4, seed=0, repeats=20)
    extra = SynthesizedPairs(negatives(tmp_path / "synthesized"), crop=32, seed=0)
    mixed = MixedPairs(main, extra, share, seed=5)
    assert len(mixed) == len(main)
    picks = [from_negatives(mixed[index]) for index in range(len(mixed))]
    again = MixedPairs(main, extra, share, seed=5)
    # reproducible (an unknown strength is NaN in both)
    assert all(
        torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
        for index in range(len(mixed))
        for a, b in zip(mixed[index], again[index], strict=True)
    )
    if share in (0.0, 1.0):
        assert picks == [share == 1.0] * len(mixed)  # only the main source, or only the extra one
        return
    assert 0.25 * len(mixed) < sum(picks) < 0.75 * len(mixed)
    mixed.set_epoch(1)
    assert [from_negatives(mixed[index]) for index in range(len(mixed))] != picks  # each epoch draws anew


def test_pairs_mix_synthesized_pairs_at_their_share(hr_folder, tmp_path):
    synthesized = negatives(tmp_path / "synthesized")
    plain = Pairs(hr_folder, crop=32, clean_share=0.6).dataset()
    assert type(plain) is DegradedFolder and plain.config.clean_share == 0.6
    assert type(Pairs(hr_folder, crop=32, synthesized=synthesized).dataset()) is SynthesizedPairs  # share 1: only them
    mixed = Pairs(hr_folder, crop=32, clean_share=0.6, synthesized=synthesized, synthesized_share=0.25).dataset()
    assert type(mixed) is MixedPairs and mixed.share == 0.25 and mixed.main.config.clean_share == 0.6
    with pytest.raises(DataError, match="share"):
        MixedPairs(plain, mixed.extra, 1.5)


def test_paired_folders_align_lr_and_hr(tmp_path):
    hr = data.astronaut()[:256, :256]
    lr = np.asarray(Image.fromarray(hr).resize((64, 64), Image.BICUBIC))
    (tmp_path / "hr").mkdir()
    (tmp_path / "lr").mkdir()
    Image.fromarray(hr).save(tmp_path / "hr" / "a.png")
    Image.fromarray(lr).save(tmp_path / "lr" / "a.png")
    dataset = PairedFolders(tmp_path / "lr", tmp_path / "hr", crop=128, seed=0)
    for epoch in range(4):
        dataset.set_epoch(epoch)
        lr_up, hr_crop, strength = dataset[0]
        assert lr_up.shape == hr_crop.shape == (3, 128, 128) and strength.isnan()  # a folder's pairs: not known
        # The upsampled LR must look like the HR crop (same area), far more than like a shifted crop.
        aligned = (lr_up - hr_crop).abs().mean()
        shifted = (lr_up[:, 16:, 16:] - hr_crop[:, :-16, :-16]).abs().mean()
        assert aligned < 0.6 * shifted
    (tmp_path / "hr" / "a.png").unlink()  # the pair was decoded once and is kept: later epochs need no file
    dataset.set_epoch(4)
    assert dataset[0][1].shape == (3, 128, 128)


def test_synthesized_draws_are_pairs_of_their_own_sharing_one_hr_image(tmp_path):
    """`flowsr degrade --samples N` writes {s}/{name}_LR{s}_{k}.png; each draw must come back with its own LR pixels."""
    hr = data.astronaut()[:96, :96]
    (tmp_path / "2").mkdir()
    Image.fromarray(hr).save(tmp_path / "2" / "a_HR.png")
    Image.fromarray(hr // 2).save(tmp_path / "2" / "a_LR2_0.png")  # t -> (t - 1) / 2 in [-1, 1]
    Image.fromarray(255 - hr).save(tmp_path / "2" / "a_LR2_1.png")  # t -> -t
    dataset = SynthesizedPairs(tmp_path, crop=64, seed=0)
    assert len(dataset) == 2 and dataset._pair(0)[1] is dataset._pair(1)[1]
    (lr_0, hr_0, _), (lr_1, hr_1, _) = dataset[0], dataset[1]
    assert torch.allclose(lr_0, (hr_0 - 1) / 2, atol=1.5 / 255) and torch.allclose(lr_1, -hr_1, atol=1e-6)
    Image.fromarray(hr).save(tmp_path / "2" / "a_LR2.png")  # a single-draw run's output beside numbered draws
    with pytest.raises(DataError, match="both single and numbered draws of a"):
        SynthesizedPairs(tmp_path, crop=64)


def test_errors_name_the_problem(tmp_path, hr_folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        DegradedFolder(tmp_path / "empty")
    with pytest.raises(DataError, match="smaller than the 512 px crop"):
        DegradedFolder(hr_folder, crop=512)
    (hr_folder / "broken.png").write_text("not a picture")
    with pytest.raises(DataError, match="broken.png: cannot read"):
        DegradedFolder(hr_folder, crop=64)
    (hr_folder / "broken.png").unlink()
    (tmp_path / "lr").mkdir()
    Image.fromarray(data.astronaut()[:50, :60]).save(tmp_path / "lr" / "astronaut.png")
    with pytest.raises(DataError, match="no LR image"):
        PairedFolders(tmp_path / "lr", hr_folder, crop=64)
    Image.fromarray(data.chelsea()[:70, :70]).save(tmp_path / "lr" / "chelsea.png")
    with pytest.raises(DataError, match="integer factor"):
        PairedFolders(tmp_path / "lr", hr_folder, crop=64)
