"""Rebasing LoRA adapters onto a refined base: the expert they define is rebuilt, at the rank the closed form gives."""

import copy
import json
import shutil

import pytest
import safetensors.torch
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

from flowsr.core.router import DEGRADED_FOLDER, ROUTER_FOLDER
from flowsr.core.sr_model import OneStepSR
from flowsr.export.merge import MergeError, attach_adapters, merged_copy, read_adapters
from flowsr.export.rebase import rebase_adapters
from flowsr.export.verify import reference_photo
from flowsr.runtime.cli import main

LORA_RANK = 4  # the `tuned` fixture's adapters, and the refinement below


@pytest.fixture(scope="module")
def refined(tuned, tmp_path_factory):
    """The tuned fixture's base plus another random LoRA of the same layers, merged: a clean expert trained further."""
    root, _ = tuned
    adapters = read_adapters(root / "adapters")
    model = OneStepSR.from_pretrained(root / "base")
    torch.manual_seed(2)  # other random LoRA weights than the fixture's adapters (configs draw them: init_lora_weights=False)
    for part, config in adapters.configs.items():
        getattr(model, part).add_adapter(copy.deepcopy(config))
        getattr(model, part).fuse_lora()
        getattr(model, part).unload_lora()
    out = tmp_path_factory.mktemp("refined") / "model"
    model.save_pretrained(out)
    return out


def outputs(model: OneStepSR) -> torch.Tensor:
    with torch.inference_mode():
        return model(reference_photo(2, 64, 96))


def test_rebased_adapters_rebuild_the_expert_on_the_refined_base(tuned, refined, tmp_path):
    root, _ = tuned
    onto = OneStepSR.from_pretrained(refined)
    ranks = rebase_adapters(OneStepSR.from_pretrained(root / "base"), root / "adapters", onto, tmp_path / "rebased")
    wrapped = attach_adapters(copy.deepcopy(onto), read_adapters(root / "adapters"))  # the layers peft wraps
    assert sorted(ranks) == sorted(name for name, module in wrapped.named_modules() if isinstance(module, BaseTunerLayer))
    # W_expert - W_refined = B1 A1 s1 - B2 A2 s2 with independent random factors: rank 2 x 4, less only where a
    # layer has fewer channels.
    for name, rank in ranks.items():
        weight = onto.get_submodule(name).weight
        assert rank == min(2 * LORA_RANK, weight.shape[0], weight[0].numel()), name
    expert = outputs(OneStepSR.from_pretrained(root / "merged"))
    rebased = outputs(merged_copy(onto, tmp_path / "rebased"))
    naive = outputs(merged_copy(onto, root / "adapters"))  # the old adapters on the new weights: another model
    assert (naive - expert).abs().max() > 0.1
    assert (rebased - expert).abs().max() < 2e-3  # float16 factors
    assert read_adapters(tmp_path / "rebased").t_star == read_adapters(root / "adapters").t_star


def test_rebasing_onto_the_same_base_gives_back_the_adapters(tuned, tmp_path):
    """Onto its own base the difference is the LoRA product itself: same rank, same delta B A scale."""
    root, _ = tuned
    base = OneStepSR.from_pretrained(root / "base")
    ranks = rebase_adapters(base, root / "adapters", base, tmp_path / "same")
    assert set(ranks.values()) == {LORA_RANK}
    original, again = (attach_adapters(copy.deepcopy(base), read_adapters(folder)) for folder in (root / "adapters", tmp_path / "same"))
    for name in ranks:
        old, new = original.get_submodule(name), again.get_submodule(name)
        torch.testing.assert_close(new.get_delta_weight("default"), old.get_delta_weight("default"), rtol=0, atol=2e-3 * old.get_delta_weight("default").abs().max().item())


def test_untrained_adapters_onto_their_own_base_are_zero(tuned, tmp_path):
    """Adapters as peft initializes them (lora_B = 0) change nothing: every layer rebases to a zero rank-1 adapter."""
    root, _ = tuned
    base = OneStepSR.from_pretrained(root / "base")
    untrained = tmp_path / "untrained"
    shutil.copytree(root / "adapters", untrained, dirs_exist_ok=True)
    for part in ("transformer", "vae"):
        path = untrained / part / "adapter_model.safetensors"
        state = safetensors.torch.load_file(path)
        safetensors.torch.save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in state.items()}, path)
    ranks = rebase_adapters(base, untrained, base, tmp_path / "rebased")
    assert set(ranks.values()) == {1}
    state = {k: v for part in ("transformer", "vae") for k, v in safetensors.torch.load_file(tmp_path / "rebased" / part / "adapter_model.safetensors").items()}
    assert state and all(not v.any() for v in state.values())


def test_a_change_outside_the_adapted_layers_is_refused(tuned, tmp_path):
    root, _ = tuned
    base = OneStepSR.from_pretrained(root / "base")
    changed = copy.deepcopy(base)
    with torch.no_grad():
        changed.transformer.x_embedder.weight.add_(0.01)  # not a target of the fixture's transformer adapters
    with pytest.raises(MergeError, match=r"outside the adapted layers \(transformer\.x_embedder\.weight\)") as err:
        rebase_adapters(base, root / "adapters", changed, tmp_path / "rebased")
    assert "\n" not in str(err.value) and not (tmp_path / "rebased").exists()


def test_router_training_rebases_the_degraded_expert(tuned, refined, tmp_path):
    """`train router NEW --degraded A --degraded-base OLD`: the routed model's degraded expert is still OLD + A."""
    root, _ = tuned
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, photo in enumerate(reference_photo(2, 96, 128)):
        Image.fromarray(((photo.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(photos / f"p{index}.png")
    out = tmp_path / "routed"
    assert main(["train", "router", str(refined), "--degraded", str(root / "adapters"), "--degraded-base", str(root / "base"),
                 "--data", str(photos), "-o", str(out), "--crops", "2", "--crop", "64", "--steps", "2"]) == 0
    record = json.loads((out / ROUTER_FOLDER / "training.json").read_text())
    assert record["degraded_adapters"]["trained_on"] == str(root / "base")
    degraded = merged_copy(OneStepSR.from_pretrained(out), out / DEGRADED_FOLDER)
    assert (outputs(degraded) - outputs(OneStepSR.from_pretrained(root / "merged"))).abs().max() < 2e-3
