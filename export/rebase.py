"""Re-express LoRA adapters on another base model, so that the model they define stays the same.

A routed model's degraded expert is LoRA adapters on the clean expert. When the clean expert is refined (more
training, its own LoRA merged in), the old adapters on the new weights would be a different model. Rebasing writes
adapters whose merge into the new base gives the old expert's weights. For every layer the adapters target, the
difference W_expert - W_new_base is factored by SVD. When the new base is the old one plus merged LoRA, its rank is
at most the sum of the two LoRA ranks. Directions weaker than `REBASE_TOLERANCE` of the layer's strongest are
dropped (on the shipped experts, the float16 rounding of the stored weights sits about 20 times lower). Each layer
keeps its own rank (peft's `rank_pattern`), and alpha equals the rank, so the LoRA scale is 1.

Only the targeted layers' weights may differ between the expert and the new base: adapters of this kind cannot
reproduce a change anywhere else, and rebasing refuses it. The result is verified after it is written: merged into
the new base by peft, every targeted weight is within `FACTOR_SLACK` tolerances of the layer's strongest singular
value of the expert's weight (the dropped directions plus the float16 rounding of the factors).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from flowsr.core.atomic import atomic_directory
from flowsr.core.sr_model import OneStepSR

from .merge import ADAPTER_WEIGHTS, ADAPTERS_JSON, Adapters, MergeError, merged_copy, read_adapters

REBASE_TOLERANCE = 1e-3  # dropped singular values and the verified weight error, relative to a layer's largest one
FACTOR_SLACK = 4  # the verified error also holds the rounding of float16 factors: a few tolerances


def adapted_layers(adapters: Adapters) -> dict[str, list[str]]:
    """The layers the adapters hold LoRA weights for, by part (module names relative to it): the layers peft wraps,
    since a merge refuses adapters whose weights and wrapped layers differ."""
    return {part: sorted({key.rsplit(".lora_", 1)[0] for key in state}) for part, state in adapters.states.items()}


def _factor(difference: torch.Tensor, module: nn.Module, key: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(lora_A, lora_B, largest singular value) of one layer's weight difference, in peft's layout for the module.

    A layer that does not differ gets a rank-1 zero adapter (and a tiny positive scale, so the check can divide)."""
    if not (isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)):
        raise MergeError(f"{key}: rebasing handles Linear and ungrouped Conv2d layers, not {type(module).__name__}")
    matrix = difference.double().reshape(difference.shape[0], -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    rank = max(1, int((s > REBASE_TOLERANCE * s[0]).sum()))
    root = s[:rank].sqrt()
    lora_b, lora_a = u[:, :rank] * root, root[:, None] * vh[:rank]
    if isinstance(module, nn.Conv2d):  # peft: lora_A is a conv with the layer's kernel, lora_B a 1x1 conv
        lora_a, lora_b = lora_a.reshape(rank, *difference.shape[1:]), lora_b.reshape(difference.shape[0], rank, 1, 1)
    return lora_a.half().contiguous(), lora_b.half().contiguous(), max(float(s[0]), torch.finfo(torch.float32).tiny)


def rebase_adapters(base: OneStepSR, adapters_dir: str | Path, onto: OneStepSR, out_dir: str | Path) -> dict[str, int]:
    """Adapters on `onto` that give the model `adapters_dir` gives on `base`, written atomically to `out_dir`.

    Returns each adapted layer's rank ("part.layer": rank). A MergeError names what stands in the way."""
    adapters = read_adapters(adapters_dir)
    if onto.manifest.preset != adapters.preset:
        raise MergeError(f"the adapters in {adapters_dir} are for preset {adapters.preset!r}, but the new base is {onto.manifest.preset!r}")
    layers = adapted_layers(adapters)
    expert = {key: value.float() for key, value in merged_copy(base, adapters_dir).state_dict().items()}
    target = {key: value.float() for key, value in onto.state_dict().items()}
    adapted = {f"{part}.{name}.weight" for part, names in layers.items() for name in names}
    if expert.keys() != target.keys():
        raise MergeError(f"the new base is not the same architecture as {adapters_dir}'s base; rebase onto a model of the same preset")
    changed = next((key for key in expert if key not in adapted and not torch.equal(expert[key], target[key])), None)
    if changed is not None:
        raise MergeError(f"the new base differs from the expert outside the adapted layers ({changed}), which adapters cannot "
                         "reproduce; train new adapters on it")
    ranks, scales = {}, {}
    with atomic_directory(out_dir) as staging:
        for part, names in layers.items():
            state, part_ranks = {}, {}
            for name in names:
                key = f"{part}.{name}.weight"
                lora_a, lora_b, scales[key] = _factor(expert[key] - target[key], getattr(onto, part).get_submodule(name), key)
                state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = lora_a, lora_b
                part_ranks[name] = lora_a.shape[0]
            ranks.update({f"{part}.{name}": rank for name, rank in part_ranks.items()})
            largest = max(part_ranks.values())
            config = copy.deepcopy(adapters.configs[part])
            config.r, config.lora_alpha = largest, float(largest)
            config.rank_pattern = {re.escape(name): rank for name, rank in part_ranks.items() if rank != largest}
            config.alpha_pattern = {re.escape(name): float(rank) for name, rank in part_ranks.items() if rank != largest}
            (staging / part).mkdir()
            config.save_pretrained(staging / part)
            safetensors.torch.save_file(state, staging / part / ADAPTER_WEIGHTS)
        (staging / ADAPTERS_JSON).write_text(json.dumps({"t_star": adapters.t_star, "preset": adapters.preset}, indent=2) + "\n")
        rebased = merged_copy(onto, staging).state_dict()
        errors = {key: float((rebased[key].float() - expert[key]).abs().max()) / scales[key] for key in adapted}
        worst = max(errors, key=errors.get)
        if errors[worst] > FACTOR_SLACK * REBASE_TOLERANCE:
            raise MergeError(f"the rebased adapters miss the expert's {worst} by {errors[worst]:.1e} of its scale; "
                             "the installed peft may not apply per-layer ranks")
    return ranks
