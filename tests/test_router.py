"""Routed SR models: the router's high-pass front, the routed directory, dispatch to each expert, router training."""

import json

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from flowsr.core.errors import ModelDirError, SettingsError
from flowsr.core.router import DEGRADED_FOLDER, ROUTER_FOLDER, DegradationRouter, central_view, load_router
from flowsr.core.sr_model import OneStepSR, super_resolve
from flowsr.export.merge import merge_adapters
from flowsr.export.verify import reference_photo
from flowsr.runtime.super_resolver import SuperResolver
from flowsr.training.router import RouterSettings, _hr_crop, build_routed_model, outcome_crops, read_photos, write_routed_model


def energy_router(threshold: float) -> DegradationRouter:
    """A router by hand: the log mean high-pass energy of the red channel against log(threshold)."""
    router = DegradationRouter()
    with torch.no_grad():
        for module in (router.conv1, router.conv2, router.head):
            module.weight.zero_()
            module.bias.zero_()
        router.conv1.weight[0, 0, 1, 1] = 1
        router.conv2.weight[0, 0, 1, 1] = 1
        router.head.weight[0, 0] = 1
        router.head.bias.fill_(-np.log(threshold))
    return router.eval()


@pytest.fixture(scope="module")
def routed(tuned, tmp_path_factory):
    """The tiny base as the clean expert, its adapters as the degraded one, and a router that picks by noise."""
    root, _ = tuned
    out = tmp_path_factory.mktemp("routed") / "model"
    write_routed_model(root / "base", root / "adapters", energy_router(threshold=0.5), out, record={"by": "hand"})
    merge_adapters(root / "base", out / DEGRADED_FOLDER, out.parent / "degraded-merged")  # the stored fp16 adapters, merged
    return out


def test_the_high_pass_removes_constant_and_linear_images():
    router = DegradationRouter()
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 40), torch.linspace(-1, 1, 48), indexing="ij")
    ramp = torch.stack([0.3 * xs, 0.2 * ys - 0.1 * xs, torch.full_like(xs, 0.4)])[None]
    inner = router.high_pass(ramp)[..., 3:-3, 3:-3]  # a Gaussian blur keeps linear functions away from the border
    assert inner.abs().max() < 1e-5
    noise = torch.randn(1, 3, 40, 48, generator=torch.manual_seed(0)) * 0.1
    assert router.high_pass(noise).abs().mean() > 0.5


def test_router_saves_and_loads(tmp_path):
    router = DegradationRouter().eval()
    router.save_pretrained(tmp_path / ROUTER_FOLDER, safe_serialization=True)
    image = reference_photo(2, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_router(tmp_path)(image), router(image), rtol=0, atol=1e-5)


def test_the_router_sees_a_central_crop():
    image = torch.arange(2 * 3 * 700 * 20, dtype=torch.float32).reshape(2, 3, 700, 20)
    view = central_view(image, 512)
    assert view.shape == (2, 3, 512, 20) and torch.equal(view, image[:, :, 94:606])


def test_routed_directory_dispatches_each_image_to_its_expert(tuned, routed):
    root, _ = tuned
    smooth = reference_photo(1, 32, 32) * 0.2
    noisy = (smooth + 0.5 * torch.randn(smooth.shape, generator=torch.manual_seed(3))).clamp(-1, 1)
    resolver = SuperResolver(routed, tile=0, vae_tile=0)
    assert resolver.route(torch.cat([smooth, noisy, smooth])) == ["clean", "degraded", "clean"]
    clean = SuperResolver(root / "base", tile=0, vae_tile=0)
    degraded = SuperResolver(routed.parent / "degraded-merged", tile=0, vae_tile=0)
    got, experts = resolver.upscale_tensor_routed(torch.cat([smooth, noisy, smooth]))
    assert experts == ["clean", "degraded", "clean"]
    same = lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # batched vs single matmuls round apart
    same(got[0], clean.upscale_tensor(smooth)[0])
    same(got[2], got[0])
    same(got[1], degraded.upscale_tensor(noisy)[0])
    assert (clean.upscale_tensor(noisy)[0] - got[1]).abs().max() > 0.01  # the experts differ
    forced = SuperResolver(routed, tile=0, vae_tile=0, expert="degraded")
    assert forced.route(smooth) == ["degraded"]
    same(forced.upscale_tensor(smooth), degraded.upscale_tensor(smooth))


def test_routed_directory_keeps_the_adapters_in_float16_and_the_record(routed):
    from safetensors.torch import load_file

    for part in ("transformer", "vae"):
        assert {t.dtype for t in load_file(routed / DEGRADED_FOLDER / part / "adapter_model.safetensors").values()} == {torch.float16}
    assert json.loads((routed / ROUTER_FOLDER / "training.json").read_text()) == {"by": "hand"}
    assert OneStepSR.from_pretrained(routed).manifest.kind == "sr"  # still an ordinary model directory: the clean expert


def test_expert_names_are_checked(tuned, routed):
    root, _ = tuned
    with pytest.raises(SettingsError, match="choose auto or model"):
        SuperResolver(root / "base", expert="degraded")
    with pytest.raises(SettingsError, match="choose auto or clean, degraded"):
        SuperResolver(routed, expert="noisy")


def test_a_broken_router_fails_in_one_line(routed, tmp_path):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(routed, broken)
    (broken / ROUTER_FOLDER / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelDirError, match="not a router") as err:
        SuperResolver(broken)
    assert "\n" not in str(err.value)


def test_outcomes_are_each_experts_psnr_on_the_crop(tuned, tmp_path):
    root, _ = tuned
    photos_dir = tmp_path / "photos"
    photos_dir.mkdir()
    from PIL import Image

    for index, photo in enumerate(reference_photo(2, 96, 128)):
        Image.fromarray(((photo.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(photos_dir / f"p{index}.png")
    settings = RouterSettings(crops=2, crop=64, short_sides=(80, 96), steps=3, batch_size=2)
    photos = read_photos(photos_dir, settings)
    clean, degraded = OneStepSR.from_pretrained(root / "base"), OneStepSR.from_pretrained(root / "merged")
    outcomes = outcome_crops(photos, (clean, degraded), settings)
    rng = np.random.default_rng(settings.seed)  # the crops again, drawn as outcome_crops draws them
    hr = _hr_crop(photos[int(rng.integers(len(photos)))], rng, settings)
    lr = outcomes["lr"][:1].float() / 127.5 - 1
    for column, model in enumerate((clean, degraded)):
        with torch.no_grad():
            sr = super_resolve(lr, 64, 64, model.stride, model.encode, model.restore, model.decode)
        expected = peak_signal_noise_ratio(hr, ((sr[0].permute(1, 2, 0).numpy() + 1) / 2).astype(np.float32), data_range=1.0)
        assert outcomes["psnr"][0, column].item() == pytest.approx(expected, abs=1e-3)

    out = build_routed_model(root / "base", root / "adapters", photos_dir, tmp_path / "routed", settings)
    assert load_router(out) is not None and (out / DEGRADED_FOLDER / "adapters.json").is_file()
    record = json.loads((out / ROUTER_FOLDER / "training.json").read_text())
    assert record["settings"]["crops"] == 2 and 0 <= record["training_crops"]["accuracy"] <= 1
    with pytest.raises(ModelDirError, match="already a routed model"):
        build_routed_model(out, root / "adapters", photos_dir, tmp_path / "again", settings)


def test_each_expert_exports_where_the_runtime_finds_it(routed, tmp_path, capsys, monkeypatch):
    import shutil

    from flowsr.runtime.cli import main

    pytest.importorskip("onnxruntime")
    model = tmp_path / "model"
    shutil.copytree(routed, model)
    monkeypatch.setenv("FLOWSR_CACHE", str(tmp_path / "cache"))
    assert main(["export", "onnx", str(model), "--graphs", "encoder,transformer,decoder"]) == 2
    assert "routed model; export each part" in capsys.readouterr().err
    for part in ("clean", "degraded"):
        assert main(["export", "onnx", str(model), "--part", part, "--graphs", "encoder,transformer,decoder"]) == 0
    assert main(["export", "onnx", str(model), "--part", "router"]) == 0
    assert "router.onnx: onnxruntime vs torch" in capsys.readouterr().out
    homes = [model, model / DEGRADED_FOLDER, model / ROUTER_FOLDER]
    assert all((home / "onnx" / "float32" / "export.json").is_file() for home in homes)
    resolver = SuperResolver(model, backend="onnxruntime", tile=0, vae_tile=0)
    assert [backend.folder for backend in resolver.backends.values()] == [home / "onnx" / "float32" for home in homes[:2]]
    assert not (tmp_path / "cache").exists()  # nothing exported again: each part's own export was found
    smooth = reference_photo(1, 32, 32) * 0.2
    noisy = (smooth + 0.5 * torch.randn(smooth.shape, generator=torch.manual_seed(3))).clamp(-1, 1)
    assert resolver.route(torch.cat([smooth, noisy])) == ["clean", "degraded"]  # the router's graph in onnxruntime
    lr = reference_photo(1, 32, 32)
    for expert in resolver.backends:
        torch_expert = SuperResolver(model, tile=0, vae_tile=0, expert=expert)
        onnx_expert = SuperResolver(model, backend="onnxruntime", tile=0, vae_tile=0, expert=expert)
        diff = (onnx_expert.upscale_tensor(lr) - torch_expert.upscale_tensor(lr)).abs().max()
        assert diff < 1e-3, expert


def test_sr_command_takes_an_expert(routed, tmp_path):
    from PIL import Image

    from flowsr.runtime.cli import main

    photo = ((reference_photo(1, 32, 32)[0].permute(1, 2, 0) * 0.2 + 1) * 127.5).round().byte().numpy()  # smooth: clean
    Image.fromarray(photo).save(tmp_path / "lr.png")
    for expert in ("auto", "clean", "degraded"):
        assert main(["sr", str(tmp_path / "lr.png"), "-o", str(tmp_path / expert), "--model", str(routed), "--expert", expert]) == 0
    outputs = {expert: np.asarray(Image.open(tmp_path / expert / "lr.png")) for expert in ("auto", "clean", "degraded")}
    assert np.array_equal(outputs["auto"], outputs["clean"]) and not np.array_equal(outputs["clean"], outputs["degraded"])
