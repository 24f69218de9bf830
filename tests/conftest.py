"""Shared test set-up: Triton runs under its interpreter on machines with no GPU; tiny models with LoRA adapters."""

import os

# Must happen before anything imports triton.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import json  # noqa: E402

import pytest  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402

from flowsr.core.sr_model import OneStepSR  # noqa: E402
from flowsr.export.merge import merge_adapters  # noqa: E402
from flowsr.export.verify import reference_photo  # noqa: E402
from flowsr.training.allosr2 import GATED_CONV_VELOCITY_TARGETS, PATCH_ENCODER_TARGETS  # noqa: E402

CUDA = torch.cuda.is_available()

devices = pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]
)


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz-full", action="store_true", help="run every hostile-input case (a sample of each class runs by default)"
    )


TRAINED_T_STAR = 0.37


def write_adapters(model, folder, preset="tiny"):
    """The adapter folder format of export/merge.py, written with peft's own state-dict and config functions."""
    for part in ("transformer", "vae"):
        module = getattr(model, part)
        (folder / part).mkdir(parents=True)
        state = {key: value.contiguous() for key, value in get_peft_model_state_dict(module).items()}
        safetensors.torch.save_file(state, folder / part / "adapter_model.safetensors")
        module.peft_config["default"].save_pretrained(folder / part)
    (folder / "adapters.json").write_text(json.dumps({"t_star": TRAINED_T_STAR, "preset": preset}))


# LoRA targets by preset: the GatedConvVelocityModel's convolutions and time MLP and the PatchAutoencoder's 1x1
# encoder (what AlloSR² tunes in tiny and small-gated), and FLUX's attention and MLP projections with a VAE's encoder
# convolutions (tiny-kl).
LORA_TARGETS = {
    "tiny": {"transformer": GATED_CONV_VELOCITY_TARGETS, "vae": PATCH_ENCODER_TARGETS},
    "tiny-kl": {
        "transformer": ["to_q", "to_k", "to_v", "to_out.0", "proj_mlp", "proj_out"],
        "vae": r"^encoder\..*(conv1|conv2|to_q|to_v)$",
    },
}


@pytest.fixture(scope="session", params=list(LORA_TARGETS))
def tuned(request, tmp_path_factory):
    """A base model directory of each preset family (convolutional tiny, FLUX tiny-kl), and the same model with random
    non-zero LoRA weights saved as adapters and merged."""
    preset = request.param
    root = tmp_path_factory.mktemp(f"tuned-{preset}")
    model = OneStepSR.from_preset(preset)
    model.save_pretrained(root / "base")
    torch.manual_seed(1)
    # init_lora_weights=False draws both LoRA matrices at random, so the adapters really change the output.
    targets = LORA_TARGETS[preset]
    model.transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=8, target_modules=targets["transformer"], init_lora_weights=False)
    )
    model.vae.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets["vae"], init_lora_weights=False))
    model.t_star = TRAINED_T_STAR
    write_adapters(model, root / "adapters", preset)
    merge_adapters(root / "base", root / "adapters", root / "merged")
    return root, model.eval()


START_TIMES = [0.05, 0.95]  # far apart, so that the start time visibly changes the output


def varied_tiny(start_times=START_TIMES, seed: int = 0) -> OneStepSR:
    """The tiny preset as training leaves it in what matters for start times: a velocity that depends on t (its
    output and time layers start at zero), an estimator whose strength depends on the image (a strong last layer,
    centred so that the reference photo reads 0.62 and crops of photos read 0.2 to 0.9), and start times per strength
    in the manifest (None: t* for every input)."""
    model = OneStepSR.from_preset("tiny", seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model.transformer.conv_out, model.transformer.time_mlp[-1]):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.2)
        last = model.estimator.head[-1]
        last.weight.copy_(torch.randn(last.weight.shape, generator=generator) * 6)
        last.bias.sub_(torch.logit(model.estimate_strength(reference_photo(1, 64, 64))) - 0.5)
    model.manifest.start_times = None if start_times is None else list(start_times)
    return OneStepSR(
        model.vae, model.transformer, None, None, model.t_star, None, model.manifest, model.estimator
    ).eval()
