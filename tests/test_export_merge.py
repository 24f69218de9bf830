"""LoRA merge: adapters written in the documented folder format, merged, loaded without peft, same output."""

import json
import re

import pytest
import safetensors.torch
import torch

from flowsr.core.sr_model import OneStepSR
from flowsr.export.merge import MERGE_TOLERANCE, MergeError, merge_adapters
from flowsr.export.verify import reference_photo


def restored(model, image):
    """The model's SR image at the start time the runtime gives it: its own t* (or, with an estimator and start
    times, the time for the strength it reads off the image)."""
    return model(image, model.start_time(model.estimate_strength(image)))


def test_merged_model_matches_adapter_model(tuned):
    root, adapted = tuned
    merged = OneStepSR.from_pretrained(root / "merged")
    manifest = merged.manifest
    base = OneStepSR.from_pretrained(root / "base")
    assert manifest.t_star == adapted.t_star == merged.t_star != base.t_star
    image = reference_photo(2, 64, 96)
    with torch.inference_mode():
        expected, got, untuned = (restored(model, image) for model in (adapted, merged, base))
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


# The weights each preset's adapters in conftest target (LoRA changes weights, never biases).
TARGETED_WEIGHTS = {
    "tiny": {
        "vae": r"encoder\.weight",
        "transformer": r"(conv_in|blocks\.\d+\.conv\d|fuse|conv_out|time_mlp\.[02])\.weight",
    },
    "tiny-kl": {
        "vae": r"encoder\..*(conv1|conv2|to_q|to_v)\.weight",
        "transformer": r".*(to_q|to_k|to_v|to_out\.0|proj_mlp|proj_out)\.weight",
    },
}


def test_only_the_targeted_weights_change(tuned):
    root, adapted = tuned
    merged = OneStepSR.from_pretrained(root / "merged")
    base = OneStepSR.from_pretrained(root / "base")
    for part, targets in TARGETED_WEIGHTS[adapted.manifest.preset].items():
        before, after = getattr(base, part).state_dict(), getattr(merged, part).state_dict()
        changed = {name for name in before if not torch.equal(before[name], after[name])}
        assert changed and all(re.fullmatch(targets, name) for name in changed), part
    # AlloSR² tunes no estimator: the merged model reads each input's strength as the base does
    assert (merged.estimator is None) == (base.estimator is None) == (adapted.manifest.preset != "tiny")
    if base.estimator is not None:
        before, after = base.estimator.state_dict(), merged.estimator.state_dict()
        assert all(torch.equal(before[name], after[name]) for name in before)


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
    """Named for another preset, or relabelled as the base's: refused either way, before a wrong model is written."""
    root, adapted = tuned
    small = OneStepSR.from_preset("small")
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(MergeError, match=f"preset '{adapted.manifest.preset}'"):
        merge_adapters(tmp_path / "small", root / "adapters", tmp_path / "out")
    (tmp_path / "renamed").mkdir()
    for part in ("transformer", "vae"):
        (tmp_path / "renamed" / part).symlink_to(root / "adapters" / part)
    (tmp_path / "renamed" / "adapters.json").write_text(json.dumps({"t_star": 0.4, "preset": "small"}))
    with pytest.raises(MergeError, match="does not fit"):
        merge_adapters(tmp_path / "small", tmp_path / "renamed", tmp_path / "out")
