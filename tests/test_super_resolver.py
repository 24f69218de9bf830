"""SuperResolver: sizes, input types, batching, one NFE per tile, tiled vs whole."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import START_TIMES, varied_tiny
from PIL import Image
from skimage import data, transform

from flowsr.core import images
from flowsr.core.autoencoders import latent_of
from flowsr.core.color_fix import wavelet_color_fix
from flowsr.core.errors import SettingsError
from flowsr.core.sr_model import pad_to_multiple
from flowsr.runtime.super_resolver import SuperResolver
from flowsr.runtime.tiling import spans


@pytest.fixture(scope="module")
def photo():
    """A real photo (skimage's astronaut) at 256x256."""
    return (transform.resize(data.astronaut(), (256, 256), anti_aliasing=True) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def resolver():
    return SuperResolver.from_preset("tiny", scale=2, tile=0, vae_tile=0)


def count_velocity_samples(resolver):
    """Number of latent tiles the velocity network has evaluated: batch size summed over calls (its tokens come
    first: GatedConvVelocityModel's positional `tokens`, FLUX's `hidden_states`)."""
    seen = []
    resolver.model.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).shape[0]),
        with_kwargs=True,
    )
    return seen


@pytest.mark.parametrize("size,scale", [((37, 53), 4.0), ((32, 32), 2.5), ((20, 31), 1.0), ((16, 48), 3.3)])
def test_output_size_for_any_scale(size, scale):
    r = SuperResolver.from_preset("tiny", scale=scale, tile=0)
    out = r(np.zeros((*size, 3), np.uint8))
    assert out.shape == (round(size[0] * scale), round(size[1] * scale), 3) and out.dtype == np.uint8


@pytest.mark.parametrize("color_fix", [False, True])
def test_pipeline_order_resize_pad_encode_restore_decode_fix_crop(photo, color_fix):
    """With the velocity forced to zero, SR must equal decode(encode(bicubic(LR))) of the padded image, color-fixed
    to that padded image, cropped."""
    r = SuperResolver.from_preset("tiny", scale=1.5, tile=0, vae_tile=0, color_fix=color_fix)
    model = r.model
    # GatedConvVelocityModel starts at zero velocity; made explicit here
    torch.nn.init.zeros_(model.transformer.conv_out.weight)
    torch.nn.init.zeros_(model.transformer.conv_out.bias)
    lr = images.to_tensor(photo[:50, :70])
    out = r.upscale_tensor(lr)
    with torch.inference_mode():
        up = F.interpolate(lr, size=(75, 105), mode="bicubic", align_corners=False).clamp(-1, 1)
        padded = F.pad(up, (0, -105 % r.stride, 0, -75 % r.stride), mode="reflect")  # stride 4: 76x108
        decoded = model.vae.decode(latent_of(model.vae.encode(padded))).sample
        if color_fix:
            decoded = wavelet_color_fix(decoded, padded)
    torch.testing.assert_close(out, decoded[:, :, :75, :105].clamp(-1, 1), atol=1e-5, rtol=1e-5)


def test_one_velocity_evaluation_per_tile(photo):
    r = SuperResolver.from_preset("tiny", scale=4, tile=256, overlap=64, vae_tile=0, batch_size=2)
    seen = count_velocity_samples(r)
    # 400x600 output (a multiple of the stride, 4) -> a 200x300 latent, in 128-latent-pixel tiles
    r([photo[:100, :150]] * 3)
    f = r.latent_factor
    assert f == 2
    tiles = len(spans(400 // f, 256 // f, 64 // f, align=2)) * len(spans(600 // f, 256 // f, 64 // f, align=2))
    assert tiles == 6
    assert sum(seen) == 3 * tiles
    seen.clear()
    r.tile = 0  # untiled: one evaluation per image
    r(photo[:100, :150])
    assert seen == [1]


def test_tiled_matches_whole_image_without_seams(photo):
    """1024x1024 output, 512 px latent tiles with 128 px overlap vs the whole image in one tile."""
    whole = SuperResolver.from_preset("tiny", scale=4, tile=0, vae_tile=0).upscale_tensor(images.to_tensor(photo))
    tiled = SuperResolver.from_preset("tiny", scale=4, tile=512, overlap=128, vae_tile=0).upscale_tensor(
        images.to_tensor(photo)
    )
    error = (whole - tiled).abs()[0].mean(0)  # per pixel, in [-1, 1] units (2.0 = full range)
    assert error.mean() < 0.01 and error.flatten().quantile(0.99) < 0.06
    border = torch.zeros_like(error, dtype=torch.bool)
    for span in spans(1024 // 2, 512 // 2, 128 // 2, align=2)[1:]:  # the latent tiles (2 pixels each), in pixels
        for edge in (2 * span.start, 2 * (span.start + span.size)):
            if 0 < edge < 1024:
                border[:, edge - 8 : edge + 8] = True
                border[edge - 8 : edge + 8, :] = True
    # A seam would concentrate the error where tiles meet.
    assert error[border].mean() < 1.2 * error[~border].mean()


def test_one_start_time_per_image_tiled_or_whole(photo):
    """The estimator reads the whole LR image, so every tile of it is restored from the same start time: tiled and
    whole agree as they do at one t*, though crops of the photo read other strengths; that time is the one the
    image's strength gives."""
    model = varied_tiny()
    lr = images.to_tensor(photo[::4, ::4])  # 64 x 64: 256 x 256 out, 4 x 4 tiles of 64 px
    with torch.no_grad():
        whole_strength = model.estimate_strength(lr)
        crops = [model.estimate_strength(lr[..., y : y + 32, x : x + 32]) for y in (0, 32) for x in (0, 32)]
    assert max((crop - whole_strength).abs().item() for crop in crops) > 0.05  # a tile alone would read another
    whole = SuperResolver(model, scale=4, tile=0, vae_tile=0).upscale_tensor(lr)
    tiled = SuperResolver(model, scale=4, tile=64, overlap=32, vae_tile=0).upscale_tensor(lr)
    error = (whole - tiled).abs()[0].mean(0)
    assert error.mean() < 0.01 and error.flatten().quantile(0.99) < 0.06
    given = SuperResolver(model, scale=4, tile=0, vae_tile=0, strength=whole_strength.item()).upscale_tensor(lr)
    torch.testing.assert_close(whole, given, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(5, 7), (8, 8), (3, 40)])
def test_images_too_small_for_a_jpeg_block_get_a_start_time(size):
    """Under 9 px a side the estimator has no 8-pixel grid to read blocking on: still one finite strength each."""
    resolver = SuperResolver(varied_tiny(), scale=4, tile=0, vae_tile=0)
    lr = torch.rand(2, 3, *size) * 2 - 1
    strength = resolver.strength_of(lr)
    assert strength.shape == (2,) and torch.isfinite(strength).all() and ((0 <= strength) & (strength <= 1)).all()
    out = resolver.upscale_tensor(lr)
    assert out.shape == (2, 3, 4 * size[0], 4 * size[1]) and torch.isfinite(out).all()


def test_the_strength_given_picks_the_start_time(photo):
    """strength 0 and 1 start at the model's first and last start times: other images where those differ, the same
    image where they do not (and a model without start times starts everything at t*)."""
    lr = images.to_tensor(photo[:32, :48])
    outputs = {}
    for times in (START_TIMES, [0.4, 0.4], None):
        model = varied_tiny(start_times=times)
        for strength in (0.0, 1.0):
            resolver = SuperResolver(model, scale=2, tile=0, vae_tile=0, strength=strength)
            expected_t = times[int(strength)] if times else model.t_star
            assert resolver.start_time(lr).tolist() == [pytest.approx(expected_t)]
            outputs[str(times), strength] = resolver.upscale_tensor(lr)
    assert (outputs[str(START_TIMES), 0.0] - outputs[str(START_TIMES), 1.0]).abs().mean() > 0.02
    for times in ([0.4, 0.4], None):
        torch.testing.assert_close(outputs[str(times), 0.0], outputs[str(times), 1.0])


def test_input_types_round_trip(photo, resolver):
    small = photo[:24, :40]
    out = resolver(Image.fromarray(small))
    assert isinstance(out, Image.Image) and out.size == (80, 48) and out.mode == "RGB"
    rgba = np.dstack([small, np.full(small.shape[:2], 200, np.uint8)])
    out = resolver(Image.fromarray(rgba))
    assert out.mode == "RGBA" and np.asarray(out)[..., 3].min() >= 199
    out16 = resolver(small.astype(np.uint16) * 257)
    assert out16.dtype == np.uint16 and out16.shape == (48, 80, 3)
    gray = resolver(small[..., 0])
    assert gray.shape == (48, 80, 3)
    hwc = resolver(torch.from_numpy(small))
    assert hwc.dtype == torch.uint8 and hwc.shape == (48, 80, 3)
    chw = torch.from_numpy(small).permute(2, 0, 1).float() / 255
    out = resolver(chw)
    assert out.shape == (3, 48, 80) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    batch = resolver(torch.stack([chw, chw.flip(-1)]))
    assert batch.shape == (2, 3, 48, 80)
    torch.testing.assert_close(batch[0], out)
    # uint8 output is the float output rounded
    assert np.abs(resolver(small).astype(int) - (out.permute(1, 2, 0).numpy() * 255)).max() <= 1.0


def test_batched_list_keeps_order_and_matches_single_images(photo):
    r = SuperResolver.from_preset("tiny", scale=2, tile=0, batch_size=3)
    inputs = [photo[:32, :48], photo[50:82, :40], photo[100:132, 10:58], photo[:32, :40]]
    batched = r(inputs)
    r.batch_size = 1
    single = [r(x) for x in inputs]
    for a, b in zip(batched, single, strict=True):
        assert a.shape == b.shape
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_padding_covers_tiny_images():
    x = torch.randn(1, 3, 5, 7)
    assert pad_to_multiple(x, 16).shape == (1, 3, 16, 16)
    assert torch.equal(pad_to_multiple(x, 16)[..., :5, :7], x)


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.zeros((8, 8, 3), np.float64), "uint8 or uint16"),
        (np.zeros((8, 8, 2), np.uint8), "uint8 or uint16"),
        (torch.zeros(2, 8, 8), r"\(3, H, W\)"),
        ("photo.png", "cannot upscale a str"),
    ],
)
def test_bad_api_inputs_say_what_to_pass(resolver, bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        resolver(bad)


def test_bad_settings_are_refused():
    with pytest.raises(SettingsError, match="multiples of the model stride"):
        SuperResolver.from_preset("tiny", tile=258)  # overlap 128 < 258, but 258 is no multiple of the stride (4)
    for scale in (0.5, float("nan"), float("inf"), 1e308, "4"):
        with pytest.raises(SettingsError, match=r"scale must be a number in \[1, 32\]"):
            SuperResolver.from_preset("tiny", scale=scale)
    for megapixels in (0, float("nan"), float("inf"), -1):
        with pytest.raises(SettingsError, match="max megapixels must be"):
            SuperResolver.from_preset("tiny", max_megapixels=megapixels)
    for strength in (2, -0.1, float("nan"), "abc", "0.5", None):
        with pytest.raises(SettingsError, match=r"strength must be a number in \[0, 1\]"):
            SuperResolver.from_preset("tiny", strength=strength)
    with pytest.raises(SettingsError, match="unknown backend"):
        SuperResolver.from_preset("tiny", backend="tensorflow")
    with pytest.raises(images.ImageError, match="over the 1 MP limit"):
        SuperResolver.from_preset("tiny", max_megapixels=1)(np.zeros((300, 300, 3), np.uint8))
