"""Fold LoRA adapters into the base weights, so the deployed model needs no peft and no extra matmuls.

Adapter folder (what AlloSR² training writes, what `merge_adapters` reads):

    ADAPTERS/
      adapters.json    {"t_star": 0.43, "preset": "small"}: the start time the adapters were trained
                       with (it becomes the merged model's t*) and the preset of the base model
      transformer/     peft LoRA of the FluxTransformer2DModel: adapter_config.json (a peft LoraConfig)
                       and adapter_model.safetensors (peft's state dict of the module, keys relative to
                       it, e.g. `transformer_blocks.0.attn.to_q.lora_A.weight`)
      vae/             the same for the autoencoder (AutoencoderKL or PatchAutoencoder); its target modules
                       lie in `encoder.` (the decoder is not tuned)

Either part folder may be missing (that component was not tuned); one that is present holds both files. Both
are checked before any model is touched: the config's rank, alpha and target modules, and finite weights.
Loading goes through diffusers' `PeftAdapterMixin` (`add_adapter`, which injects the peft layers) and peft's
`set_peft_model_state_dict`; merging through `fuse_lora` (peft's `merge` on every LoRA layer) and `unload_lora`
(the base layers replace the LoRA wrappers). In float32, merged and adapter models agree to float rounding:
within `MERGE_TOLERANCE` on images in [-1, 1].
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import set_peft_model_state_dict

from flowsr.core.errors import FlowsrError, first_line, out_of_bounds
from flowsr.core.model_dir import LOAD_ERRORS
from flowsr.core.model_schema import read_config
from flowsr.core.sr_model import OneStepSR

ADAPTERS_JSON = "adapters.json"
ADAPTER_PARTS = ("transformer", "vae")
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
MAX_RANK = 1024  # flowsr trains ranks 4 to 64
MAX_ALPHA = 1e4
MERGE_TOLERANCE = 1e-4  # max |merged - adapters| on decoded images, float32


class MergeError(FlowsrError):
    """Adapters that cannot be merged into this base model; the message says why."""


@dataclass(frozen=True)
class Adapters:
    folder: Path
    t_star: float
    preset: str
    configs: dict[str, LoraConfig]  # by part: the ADAPTER_PARTS present
    states: dict[str, dict[str, torch.Tensor]]  # by part: peft's state dict, as stored

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.configs)


def _read_lora_config(folder: Path) -> LoraConfig:
    """A part's peft LoraConfig, refused unless its rank, alpha and target modules are of the kind flowsr trains."""
    config = read_config(folder, ADAPTER_CONFIG)
    for key, high, integer in (("r", MAX_RANK, True), ("lora_alpha", MAX_ALPHA, False)):
        reason = out_of_bounds(config.get(key), 1e-6, high, integer)
        if reason is not None:
            raise MergeError(f"{folder / ADAPTER_CONFIG}: {key} {reason}; re-create the adapters")
    targets = config.get("target_modules")
    if not (isinstance(targets, str) and targets) and not (
        isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)
    ):
        raise MergeError(
            f"{folder / ADAPTER_CONFIG}: target_modules must be a regex or a list of module names, got {targets!r:.40}"
        )
    try:
        return LoraConfig.from_pretrained(folder)
    except (TypeError, ValueError, KeyError) as err:
        raise MergeError(
            f"{folder / ADAPTER_CONFIG} is not a peft LoRA config ({first_line(err)}); re-create the adapters"
        ) from None


def _read_lora_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / ADAPTER_WEIGHTS
    try:
        state = safetensors.torch.load_file(path)
    except LOAD_ERRORS as err:
        raise MergeError(f"{path} is missing or not safetensors ({first_line(err)}); re-create the adapters") from None
    bad = next(
        (key for key, tensor in state.items() if not tensor.is_floating_point() or not torch.isfinite(tensor).all()),
        None,
    )
    if bad is not None:
        raise MergeError(f"{path}: {bad} is not a finite float tensor; re-create the adapters")
    return state


def read_adapters(folder: str | Path) -> Adapters:
    """An adapter folder, every file checked: a broken one is a MergeError naming it, before any model is touched."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / ADAPTERS_JSON).read_text())
        t_star, preset = float(meta["t_star"]), str(meta["preset"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MergeError(
            f"{folder} is not a flowsr adapter folder ({ADAPTERS_JSON} missing or invalid: {err})"
        ) from None
    if not 0 < t_star < 1:
        raise MergeError(f"{folder / ADAPTERS_JSON} has t_star {t_star}, outside (0, 1)")
    parts = tuple(part for part in ADAPTER_PARTS if (folder / part).is_dir())
    if not parts:
        raise MergeError(
            f"{folder} holds no adapters: expected {' and/or '.join(f'{p}/{ADAPTER_CONFIG}' for p in ADAPTER_PARTS)}"
        )
    configs = {part: _read_lora_config(folder / part) for part in parts}
    return Adapters(folder, t_star, preset, configs, {part: _read_lora_weights(folder / part) for part in parts})


def attach_adapters(model: OneStepSR, adapters: Adapters) -> OneStepSR:
    """Load the adapters into `model` (unmerged: base + LoRA layers) and set the t* they were trained with."""
    for part, config in adapters.configs.items():
        module = getattr(model, part)
        folder = adapters.folder / part
        try:
            module.add_adapter(config)
            result = set_peft_model_state_dict(module, adapters.states[part])
        except (RuntimeError, ValueError) as err:  # shape mismatch, or target modules this model lacks
            raise MergeError(
                f"{folder} does not fit this base model's {part} ({str(err).strip().splitlines()[-1].strip():.160}); "
                "merge into the model it was trained on"
            ) from None
        missing = [key for key in result.missing_keys if "lora_" in key]
        if result.unexpected_keys or missing:
            first = (result.unexpected_keys or missing)[0]
            raise MergeError(
                f"{folder} does not fit this base model's {part} (e.g. {first}); merge into the model it was trained on"
            )
    model.t_star = adapters.t_star
    return model


def merged_copy(model: OneStepSR, adapters_dir: str | Path) -> OneStepSR:
    """A copy of `model` with the adapters folded in; `model` itself is left as it is."""
    adapters = read_adapters(adapters_dir)
    if adapters.preset != model.manifest.preset:
        raise MergeError(
            f"the adapters in {adapters_dir} are for preset {adapters.preset!r}, "
            f"but the model is {model.manifest.preset!r}"
        )
    result = copy.deepcopy(model)
    result.manifest = dataclasses.replace(model.manifest, weights_sha256=None)  # other weights: hashed when saved
    attach_adapters(result, adapters)
    for part in adapters.parts:
        getattr(result, part).fuse_lora()
        getattr(result, part).unload_lora()
    if any(isinstance(module, BaseTunerLayer) for module in result.modules()):
        raise MergeError("LoRA layers remained after merging; the installed peft/diffusers cannot unload them")
    return result


def merge_adapters(
    model_dir: str | Path, adapters_dir: str | Path, out_dir: str | Path, overwrite: bool = False
) -> Path:
    """Base model directory + adapters -> a merged model directory (written atomically) that loads without peft."""
    if Path(out_dir).exists() and not overwrite:
        raise MergeError(f"{out_dir} already exists; choose another path or pass --overwrite")
    return merged_copy(OneStepSR.from_pretrained(model_dir), adapters_dir).save_pretrained(out_dir, overwrite=overwrite)
