"""Model directories: save -> load round trip, safetensors only, clear errors, atomic writes."""

import json
from pathlib import Path

import pytest
import torch
from conftest import varied_tiny

from flowsr.core.content_hash import content_sha256, weights_sha256
from flowsr.core.model_dir import MANIFEST, ModelDirError
from flowsr.core.sr_model import TEXT_EMBEDDINGS, OneStepSR


@pytest.fixture(scope="module")
def tiny():
    return OneStepSR.from_preset("tiny", seed=3)


def test_save_load_round_trip_gives_identical_outputs(tiny, tmp_path):
    model = tiny
    model.t_star = 0.37
    model.save_pretrained(tmp_path / "m")
    loaded = OneStepSR.from_pretrained(tmp_path / "m")
    loaded_manifest = loaded.manifest
    assert loaded_manifest.t_star == 0.37 and loaded.t_star == 0.37
    assert loaded_manifest.trained is False and loaded_manifest.preset == "tiny"
    assert loaded_manifest.versions["torch"] == torch.__version__
    x, t = torch.rand(2, 3, 48, 64) * 2 - 1, torch.tensor([0.2, 0.8])
    with torch.inference_mode():
        assert torch.equal(model(x, t), loaded(x, t))
        assert torch.equal(model.estimate_strength(x), loaded.estimate_strength(x))
    files = {p.name for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert not any(name.endswith((".bin", ".pt", ".pth", ".ckpt")) for name in files)
    assert "diffusion_pytorch_model.safetensors" in files


def test_only_a_text_conditioned_model_stores_prompt_embeddings(tiny, tmp_path):
    """tiny's GatedConvVelocityModel takes no text: no embeddings in memory or on disk. tiny-kl's FLUX transformer does:
    its empty-prompt embeddings come back bit for bit."""
    tiny.save_pretrained(tmp_path / "tiny")
    assert tiny.prompt_embeds is None and not (tmp_path / "tiny" / TEXT_EMBEDDINGS).exists()
    assert OneStepSR.from_pretrained(tmp_path / "tiny").prompt_embeds is None
    flux = OneStepSR.from_preset("tiny-kl", seed=3)
    flux.save_pretrained(tmp_path / "kl")
    loaded = OneStepSR.from_pretrained(tmp_path / "kl")
    assert (tmp_path / "kl" / TEXT_EMBEDDINGS).is_file()
    assert torch.equal(loaded.prompt_embeds, flux.prompt_embeds) and torch.equal(
        loaded.pooled_prompt_embeds, flux.pooled_prompt_embeds
    )
    mine, theirs = flux.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[key], theirs[key]) for key in mine)


def test_a_resaved_model_does_not_carry_the_path_it_was_loaded_from(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "first")
    OneStepSR.from_pretrained(tmp_path / "first").save_pretrained(tmp_path / "second")
    shipped = Path(__file__).parents[1] / "runtime" / "models"
    configs = [*(tmp_path / "second").glob("*/config.json"), *shipped.glob("*/*/config.json")]
    assert len(configs) >= 6
    for path in configs:
        assert "_name_or_path" not in json.loads(path.read_text()), path


def test_existing_directory_is_kept_unless_overwrite(tiny, tmp_path):
    model = tiny
    target = tmp_path / "m"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(ModelDirError, match="already exists"):
        model.save_pretrained(target)
    assert (target / "keep.txt").read_text() == "user data"
    model.save_pretrained(target, overwrite=True)
    assert (target / MANIFEST).is_file() and not (target / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging leftovers


def test_failed_save_leaves_nothing_behind(tiny, tmp_path, monkeypatch):
    model = tiny

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_load_errors_are_one_line(tiny, tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        OneStepSR.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="flowsr model init"):
        OneStepSR.from_pretrained(tmp_path / "empty")
    model = tiny
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelDirError, match="incomplete or corrupt") as err:
        OneStepSR.from_pretrained(tmp_path / "m")
    assert "\n" not in str(err.value)
    (tmp_path / "m" / MANIFEST).write_text("{not json")
    with pytest.raises(ModelDirError, match="not a valid manifest"):
        OneStepSR.from_pretrained(tmp_path / "m")
    data = {**json.loads(model.manifest.to_json()), "format": 99}
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="upgrade flowsr"):
        OneStepSR.from_pretrained(tmp_path / "m")
    data = {**json.loads(model.manifest.to_json()), "t_star_source": "guessed"}
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="t_star_source 'guessed'; expected one of preset, estimated"):
        OneStepSR.from_pretrained(tmp_path / "m")
    data = {**json.loads(model.manifest.to_json()), "t_star_source": "preset", "color_fix_levels": 0}
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match=r"color_fix_levels 0 is outside \[1, 8\]"):
        OneStepSR.from_pretrained(tmp_path / "m")


def test_manifests_without_t_star_source_read_as_the_preset_fallback(tiny, tmp_path):
    """Model directories written before t* provenance was recorded still load; their t* counts as the fallback."""
    model = tiny
    model.save_pretrained(tmp_path / "m")
    data = json.loads((tmp_path / "m" / MANIFEST).read_text())
    del data["t_star_source"]
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(data))
    loaded = OneStepSR.from_pretrained(tmp_path / "m").manifest
    assert loaded.t_star_source == "preset" and not loaded.t_star_estimated


def test_manifests_without_color_fix_levels_read_as_four(tiny, tmp_path):
    """Model directories written before the levels were a model setting keep the fix they were served with."""
    tiny.save_pretrained(tmp_path / "m")
    data = json.loads((tmp_path / "m" / MANIFEST).read_text())
    del data["color_fix_levels"]
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(data))
    assert OneStepSR.from_pretrained(tmp_path / "m").manifest.color_fix_levels == 4


def test_manifests_of_older_versions_still_load(tiny, tmp_path):
    """Older manifests also held copies of the VAE's normalization, the stride and the scale factors: ignored."""
    model = tiny
    model.save_pretrained(tmp_path / "m")
    data = json.loads((tmp_path / "m" / MANIFEST).read_text())
    assert not {"latent_shift", "latent_scale", "stride", "scale_factors"} & set(data)  # no longer written
    data.update(latent_shift=0.5, latent_scale=2.0, stride=16, scale_factors=[4.0])
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(data))
    loaded = OneStepSR.from_pretrained(tmp_path / "m")
    assert loaded.normalization.shift == model.normalization.shift  # the VAE config's, not the stale copy


def test_start_times_key_the_exports_but_are_no_weights(tmp_path):
    """Start times are manifest constants like t*: re-estimating them (`train sr tstar` rewrites only the manifest)
    leaves the stored weights' digest true, while the export key, which the end-to-end graph's times depend on,
    changes; a float16 cast leaves them float32."""
    first, second = varied_tiny(start_times=[0.1, 0.3]), varied_tiny(start_times=[0.1, 0.4])
    assert weights_sha256(first) == weights_sha256(second) == weights_sha256(varied_tiny(start_times=None))
    assert content_sha256(first) != content_sha256(second)
    saved = OneStepSR.from_pretrained(first.save_pretrained(tmp_path / "m"))
    assert saved.manifest.weights_sha256 == weights_sha256(saved) == weights_sha256(first)
    half = OneStepSR.from_pretrained(tmp_path / "m", dtype=torch.float16)
    assert half.start_times.dtype == torch.float32 and half.start_time(torch.tensor([0.5])).tolist() == [
        pytest.approx(0.2)
    ]
