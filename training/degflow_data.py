"""Multi-scale samples for DegFlow: the HR image and its LR images at the knot scales, all at HR size and aligned,
with one random crop and one dihedral transform shared by every scale of a sample. Each sample is (K, 3, crop, crop)
in [-1, 1], HR first.

- `RealSRScales`: RealSR v2 "ordered": `{root}/{Camera}/{Train|Test}/{s}/`, HR `{split}/2/{Camera}_{idx}_HR.png`,
  LR `{split}/{s}/{Camera}_{idx}_LR{s}.png`.
- `SynthesizedScales`: HR-only folders, each scale made by the Real-ESRGAN-style pipeline with the same random
  draws (one seed per sample), so the scales of a sample form one degradation family; LR is resized back to HR size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from flowsr.core import images
from flowsr.core.sr_model import resize_to

from .data import (
    DataError,
    HRCrops,
    _check_crop,
    _dihedral,
    _EpochDataset,
    _image_size,
    _tensor,
)
from .degradations import DegradationConfig, degrade

DEFAULT_DEGRADATION = DegradationConfig()


def _scale_name(scale: float) -> str:
    return f"{scale:g}"


class RealSRScales(_EpochDataset):
    def __init__(self, root, split: str = "Train", scales: Sequence[float] = (2, 4), crop: int = 128, seed: int = 0):
        super().__init__(seed)
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; expected the RealSR layout {{root}}/{{Camera}}/{split}/{{2,3,4}}/")
        self.scales, self.crop, self.samples = tuple(scales), crop, []
        for hr in sorted(root.glob(f"*/{split}/2/*_HR.*")):
            if hr.suffix.lower() not in images.IMAGE_SUFFIXES:
                continue
            stem = hr.name[: -len("_HR" + hr.suffix)]
            paths = [hr]
            for scale in self.scales:
                folder = hr.parent.parent / _scale_name(scale)
                found = sorted(folder.glob(f"{stem}_LR{_scale_name(scale)}.*"))
                if not found:
                    raise DataError(
                        f"{hr}: no x{_scale_name(scale)} image {folder / f'{stem}_LR{_scale_name(scale)}.png'}; "
                        f"every HR image needs all of {list(self.scales)}"
                    )
                paths.append(found[0])
            sizes = [_image_size(path) for path in paths]
            for path, size in zip(paths[1:], sizes[1:], strict=True):
                if size != sizes[0]:
                    raise DataError(
                        f"{path}: {size[1]}x{size[0]} differs from its HR {sizes[0][1]}x{sizes[0][0]}; "
                        "RealSR images are stored aligned at HR size"
                    )
            _check_crop(hr, sizes[0], crop)
            self.samples.append(paths)
        if not self.samples:
            raise DataError(f"{root}: no {{Camera}}/{split}/2/*_HR.png images; expected the RealSR v2 ordered layout")

    def __len__(self) -> int:
        return len(self.samples)

    def sample(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        arrays = []
        for path in self.samples[index]:
            try:
                arrays.append(images.to_unit_float(images.read_image(path).rgb))
            except images.ImageError as err:
                raise DataError(f"{path}: {err}") from None
        height, width = arrays[0].shape[:2]
        top, left = int(rng.integers(height - self.crop + 1)), int(rng.integers(width - self.crop + 1))
        crops = _dihedral([a[top : top + self.crop, left : left + self.crop] for a in arrays], rng)
        return torch.stack([_tensor(c) for c in crops])


class SynthesizedScales(HRCrops):
    def __init__(
        self,
        root,
        scales: Sequence[float] = (2, 4),
        crop: int = 128,
        seed: int = 0,
        config: DegradationConfig = DEFAULT_DEGRADATION,
        **crops,
    ):
        super().__init__(root, crop=crop, seed=seed, **crops)
        self.scales, self.config = tuple(scales), config

    def sample(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        hr = self.hr_crop(index, rng)
        family = int(rng.integers(2**31))
        knots = [_tensor(hr)]
        for scale in self.scales:
            lr = _tensor(degrade(hr, scale, seed=family, config=self.config))[None]
            knots.append(resize_to(lr, self.crop, self.crop)[0])
        return torch.stack(knots)
