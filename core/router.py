"""`DegradationRouter`: which of an SR model's two experts restores an LR image better, judged from the LR alone.

One small SR model cannot both remove the noise of a degraded input and keep the fine texture of a clean one: what
it learns to remove on the first it also removes on the second. A routed SR model directory therefore holds two
experts and a router:

    MODEL/                 an ordinary SR model directory: the "clean" expert (trained mostly on clean downscales)
      degraded/            LoRA adapters on top of it (flowsr adapter folder): the "degraded" expert, trained on
                           pipeline-degraded pairs
      router/              this model (diffusers config.json + safetensors)

The router looks at the LR image once and picks one expert, so an image still costs one velocity evaluation per
tile. It sees high frequencies only (the image minus a Gaussian blur of it), runs two 3x3 conv layers on them and
pools the energy of their features over the image as two statistics: the log of its mean (edges dominate it) and
the log of a low-order power mean (flat regions dominate it, where noise shows). Pooling makes it independent of
the image size. A positive logit picks the degraded expert. It is trained on outcomes: which expert restores each
training crop better (`flowsr train router`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .errors import ModelDirError, first_line, out_of_bounds
from .model_dir import LOAD_ERRORS
from .model_schema import read_config

ROUTER_FOLDER = "router"
DEGRADED_FOLDER = "degraded"
EXPERTS = ("clean", "degraded")  # index 0 for a logit <= 0, 1 above
ROUTER_VIEW = 512  # the router looks at the central crop of at most this many LR pixels per side: constant cost


def is_routed(directory: str | Path) -> bool:
    """Whether an SR model directory holds a router and a degraded expert beside its own (clean) model."""
    directory = Path(directory)
    return (directory / ROUTER_FOLDER).is_dir() or (directory / DEGRADED_FOLDER).is_dir()


def central_view(lr: torch.Tensor, size: int = ROUTER_VIEW) -> torch.Tensor:
    """The central crop of at most size x size pixels that the router sees."""
    height, width = lr.shape[-2:]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return lr[..., top : top + size, left : left + size]


class DegradationRouter(ModelMixin, ConfigMixin):
    kind = "router"  # its export spec (`export.spec.ROUTER`)
    stride = 1  # any image size
    manifest = None  # its directory is the routed model's router/ folder, described by the model's manifest

    @register_to_config
    def __init__(self, width: int = 16, blur_sigma: float = 1.0, blur_size: int = 7, gain: float = 10.0, power: float = 0.25):
        super().__init__()
        offsets = torch.arange(blur_size, dtype=torch.float32) - (blur_size - 1) / 2
        blur = torch.exp(-offsets**2 / (2 * blur_sigma**2))
        blur = blur / blur.sum()
        self.register_buffer("blur", torch.outer(blur, blur).expand(3, 1, blur_size, blur_size).clone(), persistent=False)
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(2 * width, 1)

    def graph_constants(self) -> list:
        """What the exported graph bakes in besides the weights: its config (the blur and the pooling)."""
        return sorted((key, value) for key, value in self.config.items() if not key.startswith("_"))

    def high_pass(self, lr: torch.Tensor) -> torch.Tensor:
        pad = self.config.blur_size // 2
        blurred = F.conv2d(F.pad(lr, (pad, pad, pad, pad), mode="replicate"), self.blur, groups=3)
        return (lr - blurred) * self.config.gain

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """LR images (B, 3, h, w) in [-1, 1] -> logits (B,): > 0 picks the degraded expert."""
        features = F.relu(self.conv2(F.relu(self.conv1(self.high_pass(lr)))))
        energy = features.pow(2).flatten(2) + 1e-4
        power = self.config.power
        pooled = torch.cat([energy.mean(-1).log(), energy.pow(power).mean(-1).log() / power], 1)
        return self.head(pooled)[:, 0]


# Bounds of the router's config (name: low, high, integer): a larger width or kernel would be another model.
ROUTER_CONFIG_BOUNDS = {"width": (1, 256, True), "blur_size": (1, 31, True), "blur_sigma": (0.1, 16.0, False),
                        "gain": (1e-3, 1e4, False), "power": (1e-2, 1.0, False)}


def check_router_config(folder: Path) -> None:
    """The router's config.json names this class and keeps every setting within ROUTER_CONFIG_BOUNDS (odd blur)."""
    config = read_config(folder)
    if config.get("_class_name") != DegradationRouter.__name__:
        raise ModelDirError(f"{folder}/config.json names class {config.get('_class_name')!r:.40}, not {DegradationRouter.__name__}; "
                            "re-create the model directory with `flowsr train router`")
    for key, (low, high, integer) in ROUTER_CONFIG_BOUNDS.items():
        reason = out_of_bounds(config.get(key, low), low, high, integer)  # a missing key takes the class default
        if reason is None and key == "blur_size" and config.get(key, 1) % 2 == 0:
            reason = f"must be odd, got {config[key]}"
        if reason is not None:
            raise ModelDirError(f"{folder}/config.json: {key} {reason}; re-create the model directory with `flowsr train router`")


def load_router(directory: str | Path) -> DegradationRouter:
    """The router of a routed SR model directory, with a one-line error for a missing or broken one."""
    folder = Path(directory) / ROUTER_FOLDER
    check_router_config(folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise ModelDirError(f"{weights} is missing; re-create the model directory with `flowsr train router`")
    try:
        router = DegradationRouter.from_pretrained(folder, use_safetensors=True).eval()
    except LOAD_ERRORS as err:
        raise ModelDirError(f"{folder} is missing or not a router ({first_line(err)}); re-create the model directory with "
                            "`flowsr train router`") from None
    if not all(torch.isfinite(parameter).all() for parameter in router.parameters()):
        raise ModelDirError(f"{weights} holds non-finite weights; re-create the model directory with `flowsr train router`")
    return router
