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


# LoRA targets by preset: the ConvVelocityModel's convolutions and the PatchAutoencoder's 1x1 encoder (what AlloSR²
# tunes in tiny and small), and FLUX's attention and MLP projections with a VAE's encoder convolutions (tiny-kl).
LORA_TARGETS = {
    "tiny": {"transformer": r"^(conv_in|convs\.\d+|conv_out)$", "vae": r"^encoder$"},
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
