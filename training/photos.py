"""The photo corpus the shipped default model is trained on: images any machine can get from packages.

Sources: `skimage.data` (scikit-image) and Debian's `plasma-workspace-wallpapers` (/usr/share/wallpapers).
Ten photos are held out for evaluation and never trained on.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from flowsr.core import images

WALLPAPERS = Path("/usr/share/wallpapers")
HOLDOUT_SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "camera")
HOLDOUT_WALLPAPERS = ("EveningGlow", "Path", "ColorfulCups", "FallenLeaf", "Kite")
TRAIN_SKIMAGE = (
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
    "moon",
    "coins",
    "brick",
    "grass",
    "gravel",
    "clock",
    "colorwheel",
    "page",
    "text",
)
HOLDOUT_SIZE = 512  # held-out photos: longer side shrunk to 1024, then a centred crop of at most 512 x 512
# Training photos are stored with their longer side at most this (area filter), what the trainers' default
# --max-side shrinks them to anyway: every stage then decodes megapixels, not the wallpapers' 20.
TRAIN_MAX_SIDE = 1600


def _skimage(name: str) -> np.ndarray:
    from skimage import data

    image = getattr(data, name)()
    image = image[0] if isinstance(image, tuple) else image  # stereo pairs: the left view
    return images.gray_to_rgb(image) if image.ndim == 2 else image[..., :3]


def _largest_wallpaper(name: str) -> Path:
    files = sorted((WALLPAPERS / name / "contents" / "images").glob("*"), key=lambda p: p.stat().st_size)
    if not files:
        raise FileNotFoundError(f"{WALLPAPERS / name}: missing; install Debian's plasma-workspace-wallpapers package")
    return files[-1]


def _shrunk(rgb: np.ndarray, max_side: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    factor = max_side / max(height, width)
    if factor >= 1:
        return rgb
    return cv2.resize(rgb, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA)


def _holdout_crop(rgb: np.ndarray) -> np.ndarray:
    rgb = _shrunk(rgb, 1024)
    # Sides that are multiples of 16 divide by every evaluated scale and by the model stride.
    crop_h, crop_w = (min(HOLDOUT_SIZE, side // 16 * 16) for side in rgb.shape[:2])
    top, left = (rgb.shape[0] - crop_h) // 2, (rgb.shape[1] - crop_w) // 2
    return rgb[top : top + crop_h, left : left + crop_w]


def write_corpus(out: str | Path) -> tuple[int, int]:
    """Write OUT/train (whole photos, longer side at most TRAIN_MAX_SIDE) and OUT/holdout (512 x 512 crops); returns
    the two counts."""
    out = Path(out)
    if not WALLPAPERS.is_dir():
        raise FileNotFoundError(f"{WALLPAPERS}: missing; install Debian's plasma-workspace-wallpapers package")
    train = [(name, _skimage(name)) for name in TRAIN_SKIMAGE]
    for folder in sorted(p.name for p in WALLPAPERS.iterdir() if p.is_dir()):
        if folder not in HOLDOUT_WALLPAPERS:
            train.append((folder, _shrunk(images.read_image(_largest_wallpaper(folder)).rgb, TRAIN_MAX_SIDE)))
    holdout = [(name, _holdout_crop(_skimage(name))) for name in HOLDOUT_SKIMAGE]
    holdout += [(name, _holdout_crop(images.read_image(_largest_wallpaper(name)).rgb)) for name in HOLDOUT_WALLPAPERS]
    for split, items in (("train", train), ("holdout", holdout)):
        for name, rgb in items:
            images.write_image(out / split / f"{name}.png", images.Picture(np.ascontiguousarray(rgb)))
    return len(train), len(holdout)
