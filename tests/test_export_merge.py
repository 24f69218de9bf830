"""LoRA merge: adapters written in the documented folder format, merged, loaded without peft, same output."""

import json
import re

import pytest
import safetensors.torch
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from flowsr.core.sr_model import OneStepSR
from flowsr.export.merge import MERGE_TOLERANCE, MergeError, merge_adapters
from flowsr.export.verify import reference_photo

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


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tiny base model directory, and the same model with random non-zero LoRA weights saved as adapters."""
    root = tmp_path_factory.mktemp("merge")
    model = OneStepSR.from_preset("tiny")
    model.save_pretrained(root / "base")
    torch.manual_seed(1)
    # init_lora_weights=False draws both LoRA matrices at random, so the adapters really change the output.
    model.transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_mlp", "proj_out"], init_lora_weights=False)
    )
    model.vae.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=r"^encoder\..*(conv1|conv2|to_q|to_v)$", init_lora_weights=False))
    model.t_star = TRAINED_T_STAR
    write_adapters(model, root / "adapters")
    merge_adapters(root / "base", root / "adapters", root / "merged")
    return root, model.eval()


def test_merged_model_matches_adapter_model(tuned):
    root, adapted = tuned
    merged = OneStepSR.from_pretrained(root / "merged")
    manifest = merged.manifest
    base = OneStepSR.from_pretrained(root / "base")
    assert manifest.t_star == TRAINED_T_STAR and merged.t_star == TRAINED_T_STAR
    image = reference_photo(2, 64, 96)
    with torch.inference_mode():
        expected, got, untuned = adapted(image), merged(image), base(image)
    assert (untuned - expected).abs().max() > 100 * MERGE_TOLERANCE  # the adapters matter ...
    assert (got - expected).abs().max() < MERGE_TOLERANCE  # ... and merging keeps exactly their effect


def test_merged_weights_hold_no_peft_keys(tuned):
    root, _ = tuned
    files = sorted((root / "merged").rglob("*.safetensors"))
    assert {f.parent.name for f in files} >= {"vae", "transformer"}
    keys = [key for f in files for key in safetensors.torch.load_file(f)]
    assert keys and not [key for key in keys if "lora" in key or "base_layer" in key]
    base_keys = [key for f in sorted((root / "base").rglob("*.safetensors")) for key in safetensors.torch.load_file(f)]
    assert sorted(keys) == sorted(base_keys)


def test_only_the_targeted_weights_change(tuned):
    root, _ = tuned
    merged = OneStepSR.from_pretrained(root / "merged")
    base = OneStepSR.from_pretrained(root / "base")
    for part, targets in (("vae", r"encoder\..*(conv1|conv2|to_q|to_v)\.weight"), ("transformer", r".*(to_q|to_k|to_v|to_out\.0|proj_mlp|proj_out)\.weight")):
        before, after = getattr(base, part).state_dict(), getattr(merged, part).state_dict()
        changed = {name for name in before if not torch.equal(before[name], after[name])}
        assert changed and all(re.fullmatch(targets, name) for name in changed), part


def test_bad_adapter_folders_say_what_is_wrong(tuned, tmp_path):
    root, _ = tuned
    with pytest.raises(MergeError, match="not a flowsr adapter folder"):
        merge_adapters(root / "base", tmp_path, tmp_path / "out")
    (tmp_path / "adapters.json").write_text(json.dumps({"t_star": 0.4, "preset": "tiny"}))
    with pytest.raises(MergeError, match="holds no adapters"):
        merge_adapters(root / "base", tmp_path, tmp_path / "out")
    with pytest.raises(MergeError, match="already exists"):
        merge_adapters(root / "base", root / "adapters", root / "merged")


def test_adapters_of_another_base_are_refused(tuned, tmp_path):
    root, _ = tuned
    small = OneStepSR.from_preset("small")
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(MergeError, match="preset 'tiny'"):
        merge_adapters(tmp_path / "small", root / "adapters", tmp_path / "out")
    (tmp_path / "renamed").mkdir()
    for part in ("transformer", "vae"):
        (tmp_path / "renamed" / part).symlink_to(root / "adapters" / part)
    (tmp_path / "renamed" / "adapters.json").write_text(json.dumps({"t_star": 0.4, "preset": "small"}))
    with pytest.raises(MergeError, match="does not fit"):
        merge_adapters(tmp_path / "small", tmp_path / "renamed", tmp_path / "out")
