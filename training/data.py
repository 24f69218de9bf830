"""Training pairs for one-step SR: (LR resized to the HR size, HR, strength), the images float (3, H, W) in [-1, 1],
the strength a float32 scalar: the degradation continuum's strength the pair was made at (0 clean, 1 heavy), or NaN
where it is not known (paired folders, synthesized pairs).

Sources: paired LR/HR folders, HR-only folders degraded on the fly along the degradation continuum
(training/degradations.py), pairs a DegFlow model synthesized (`flowsr degrade`), or a mix of two of them.
Every random choice derives from (seed, epoch, index), so a run, a resume and every DDP rank see the
same samples for the same step.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from flowsr.core import images
from flowsr.core.errors import FlowsrError
from flowsr.core.sr_model import resize_to

from .degradations import ContinuumConfig, degrade_continuum, draw_strength

DEFAULT_CONTINUUM = ContinuumConfig()


class DataError(FlowsrError):
    """A dataset that cannot be used; the message names the file or folder and what to do."""


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of images")
    found = images.find_images(root)
    if not found:
        raise DataError(f"{root}: {images.NO_IMAGES}")
    return found


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the header, without decoding; unreadable files fail here, before training starts."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception as err:  # Pillow raises many types for bad files; every one is a bad dataset entry
        raise DataError(
            f"{path}: cannot read this image ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    return height, width


def _check_crop(path: Path, size: tuple[int, int], crop: int) -> None:
    if min(size) < crop:
        raise DataError(
            f"{path}: {size[1]}x{size[0]} is smaller than the {crop} px crop; use a smaller --crop or remove the image"
        )


def _rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def _dihedral(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip and 90-degree rotation for every array of a sample."""
    flip, turns = rng.integers(2), int(rng.integers(4))
    return [np.rot90(a[:, ::-1] if flip else a, turns) for a in arrays]


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1) * 2 - 1


def _as_8bit(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] rounded to the 8-bit levels that every served input has."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.float32) / 255.0


UNKNOWN_STRENGTH = torch.tensor(float("nan"))


class EpochKey(NamedTuple):
    """A sample address that carries its epoch, so data loader workers need no shared epoch state."""

    epoch: int
    index: int


class _EpochDataset(Dataset):
    """Indexed by an int (the current epoch, see `set_epoch`) or an EpochKey; `sample` gets a seeded generator."""

    def __init__(self, seed: int):
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, key: int | EpochKey):
        epoch, index = key if isinstance(key, EpochKey) else (self.epoch, key)
        return self.sample(index, _rng(self.seed, epoch, index))


class HRCrops(_EpochDataset):
    """Random HR crops (with a random dihedral transform) from a folder of images.

    Decoded images are kept in memory (`cache`), optionally shrunk so their longer side is at most `max_side`
    (area filter): large photos are smooth at the pixel level, shrinking them gives crops with more detail.
    `repeats` crops are drawn from every image per epoch.
    """

    def __init__(
        self, root, crop: int = 256, seed: int = 0, repeats: int = 1, max_side: int | None = None, cache: bool = True
    ):
        super().__init__(seed)
        self.paths = list_images(root)
        for path in self.paths:
            size = _image_size(path)
            if max_side and max(size) > max_side:
                size = tuple(round(side * max_side / max(size)) for side in size)
            _check_crop(path, size, crop)
        self.crop, self.repeats, self.max_side = crop, repeats, max_side
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths) * self.repeats

    def _image(self, index: int) -> np.ndarray:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        path = self.paths[index]
        try:
            rgb = images.read_image(path).rgb
        except images.ImageError as err:
            raise DataError(f"{path}: {err}") from None
        image = images.to_unit_float(rgb)
        if self.max_side and max(image.shape[:2]) > self.max_side:
            factor = self.max_side / max(image.shape[:2])
            size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        if self._cache is not None:
            self._cache[index] = image
        return image

    def hr_crop(self, index: int, rng: np.random.Generator) -> np.ndarray:
        image = self._image(index % len(self.paths))
        top = int(rng.integers(image.shape[0] - self.crop + 1))
        left = int(rng.integers(image.shape[1] - self.crop + 1))
        (hr,) = _dihedral([image[top : top + self.crop, left : left + self.crop]], rng)
        return np.ascontiguousarray(hr)

    def sample(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        return _tensor(self.hr_crop(index, rng))


class DegradedFolder(HRCrops):
    """HR-only folder: random HR crop, degraded to LR (8-bit) at a strength drawn from the degradation continuum
    (clean downscales, the mild middle, the heavy pipeline; `training.degradations.degrade_continuum`), or at
    `strength` when given; yields (LR at HR size, HR, strength)."""

    def __init__(
        self,
        root,
        crop: int = 256,
        scale: float = 4.0,
        seed: int = 0,
        config: ContinuumConfig = DEFAULT_CONTINUUM,
        strength: float | None = None,
        **crops,
    ):
        if not 0 <= config.clean_share <= 1:
            raise DataError(f"the clean share must lie in [0, 1], got {config.clean_share}")
        super().__init__(root, crop=crop, seed=seed, **crops)
        self.scale, self.config, self.strength = scale, config, strength

    def degraded(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        """(LR at its own size, HR, strength) as float HWC arrays in [0, 1]."""
        hr = self.hr_crop(index, rng)
        strength = draw_strength(rng, self.config) if self.strength is None else self.strength
        lr = degrade_continuum(hr, self.scale, seed=int(rng.integers(2**31)), strength=strength, config=self.config)
        return _as_8bit(lr), hr, strength

    def sample(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lr, hr, strength = self.degraded(index, rng)
        return resize_to(_tensor(lr)[None], self.crop, self.crop)[0], _tensor(hr), torch.tensor(strength)


class StrengthSamples(DegradedFolder):
    """What the strength estimator learns from: (LR at its own size, the strength it was degraded at)."""

    def sample(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        lr, _, strength = self.degraded(index, rng)
        return _tensor(lr), torch.tensor(strength, dtype=torch.float32)


class PairedFolders(_EpochDataset):
    """Paired LR/HR folders matched by file stem; LR either at HR size (aligned) or an integer factor smaller.
    Decoded pairs are kept in memory, as `HRCrops` keeps its images."""

    def __init__(self, lr_root, hr_root, crop: int = 256, seed: int = 0):
        hr_paths = {p.relative_to(hr_root).with_suffix(""): p for p in list_images(hr_root)}
        lr_paths = {p.relative_to(lr_root).with_suffix(""): p for p in list_images(lr_root)}
        missing = sorted(set(hr_paths) - set(lr_paths))
        if missing:
            raise DataError(
                f"{Path(lr_root) / missing[0]}.*: no LR image for HR {hr_paths[missing[0]]} "
                f"({len(missing)} missing in all)"
            )
        self._set_pairs([(lr_paths[key], hr_paths[key]) for key in sorted(hr_paths)], crop, seed)

    def _set_pairs(self, pairs: list[tuple[Path, Path]], crop: int, seed: int) -> None:
        super().__init__(seed)
        self.pairs, self.factors, self._decoded = [], [], {}
        sizes = {}
        for lr_path, hr_path in pairs:
            if hr_path not in sizes:  # several draws share one HR image
                sizes[hr_path] = _image_size(hr_path)
                _check_crop(hr_path, sizes[hr_path], crop)
            hr_size, lr_size = sizes[hr_path], _image_size(lr_path)
            factor = hr_size[0] // lr_size[0] if lr_size[0] else 0
            if factor < 1 or (lr_size[0] * factor, lr_size[1] * factor) != hr_size or crop % factor:
                raise DataError(
                    f"{lr_path}: {lr_size[1]}x{lr_size[0]} does not match HR {hr_size[1]}x{hr_size[0]} by an integer "
                    f"factor dividing the {crop} px crop"
                )
            self.pairs.append((lr_path, hr_path))
            self.factors.append(factor)
        self.crop = crop

    def __len__(self) -> int:
        return len(self.pairs)

    def _decode(self, path: Path) -> np.ndarray:
        """A decoded image, kept in memory (once per file, so draws that share an HR image share its pixels):
        decoding two photos per sample made training data-bound."""
        if path not in self._decoded:
            try:
                self._decoded[path] = images.read_image(path).rgb
            except images.ImageError as err:
                raise DataError(f"{path}: {err}") from None
        return self._decoded[path]

    def _pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        lr_path, hr_path = self.pairs[index]
        return self._decode(lr_path), self._decode(hr_path)

    def sample(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        factor = self.factors[index]
        lr, hr = self._pair(index)
        # Crop on the LR grid so LR and HR crops cover exactly the same area.
        top = int(rng.integers((hr.shape[0] - self.crop) // factor + 1)) * factor
        left = int(rng.integers((hr.shape[1] - self.crop) // factor + 1)) * factor
        hr = hr[top : top + self.crop, left : left + self.crop]
        small = self.crop // factor
        lr = lr[top // factor : top // factor + small, left // factor : left // factor + small]
        lr, hr = _dihedral([images.to_unit_float(lr), images.to_unit_float(hr)], rng)
        return resize_to(_tensor(lr)[None], self.crop, self.crop)[0], _tensor(hr), UNKNOWN_STRENGTH


class SynthesizedPairs(PairedFolders):
    """Pairs in the `flowsr degrade` layout, every scale folder of `root`: `{s}/{name}_LR{s}.png`, or its draws
    `{s}/{name}_LR{s}_{k}.png`, each with `{s}/{name}_HR.png`. Every draw is a pair of its own."""

    def __init__(self, root, crop: int = 256, seed: int = 0):
        pairs, numbered = [], {}
        for lr_path in sorted(Path(root).glob("*/*_LR*.png")):
            found = re.fullmatch(rf"(.+)_LR{re.escape(lr_path.parent.name)}(_\d+)?\.png", lr_path.name)
            if not found:
                continue
            hr_path = lr_path.with_name(f"{found[1]}_HR.png")
            if not hr_path.is_file():
                raise DataError(f"{lr_path}: no HR image {hr_path} beside it; re-run `flowsr degrade` on the HR folder")
            if numbered.setdefault(hr_path, found[2] is not None) != (found[2] is not None):
                raise DataError(
                    f"{lr_path.parent}: holds both single and numbered draws of {found[1]} "
                    "(runs with other --samples); remove one set"
                )
            pairs.append((lr_path, hr_path))
        if not pairs:
            raise DataError(
                f"{root}: no {{s}}/{{name}}_LR{{s}}.png images; make them with `flowsr degrade HR_DIR -o {root}`"
            )
        self._set_pairs(pairs, crop, seed)


class MixedPairs(_EpochDataset):
    """Two pair sources as one: each sample comes from `extra` with probability `share`, else from `main` (its index
    there drawn at random); every draw derives from (seed, epoch, index) as in the sources themselves."""

    def __init__(self, main: _EpochDataset, extra: _EpochDataset, share: float, seed: int = 0):
        if not 0 <= share <= 1:
            raise DataError(f"the share of the second pair source must lie in [0, 1], got {share}")
        super().__init__(seed)
        self.main, self.extra, self.share = main, extra, share

    def __len__(self) -> int:
        return len(self.main)

    def sample(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if rng.uniform() < self.share:
            return self.extra.sample(int(rng.integers(len(self.extra))), rng)
        return self.main.sample(index, rng)
