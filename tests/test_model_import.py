"""`flowsr model import`: a base model from a local diffusers FLUX pipeline folder, with the empty-prompt
conditioning computed by the folder's own CLIP and T5 encoders. The folder is built here at tiny size."""

import json

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

from flowsr.core.presets import build_transformer, build_vae, get_preset
from flowsr.core.sr_model import OneStepSR
from flowsr.runtime.cli import main


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux")
    torch.manual_seed(0)
    (root / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "photo</w>": 3}))
    (root / "merges.txt").write_text("#version: 0.2\n")
    clip_tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=77)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=4,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unigram = Tokenizer(models.Unigram([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581a", -1.0)], unk_id=2))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    t5_tokenizer = T5TokenizerFast(
        tokenizer_object=unigram, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0
    )
    t5 = T5EncoderModel(T5Config(vocab_size=4, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2))
    preset = get_preset("tiny-kl")
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=build_vae(preset),
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=build_transformer(preset),
    )
    pipeline.save_pretrained(root / "pipeline")
    return root / "pipeline"


def test_import_computes_the_empty_prompt_with_the_folders_encoders(pipeline_dir, tmp_path):
    assert main(["model", "import", str(pipeline_dir), "-o", str(tmp_path / "base"), "--preset", "tiny-kl"]) == 0
    model = OneStepSR.from_pretrained(tmp_path / "base")
    manifest = model.manifest
    assert manifest.preset == "tiny-kl" and not manifest.trained
    # The reference: the two encoders run directly on the empty prompt, padded as FLUX pads it.
    clip = CLIPTextModel.from_pretrained(pipeline_dir / "text_encoder")
    clip_ids = CLIPTokenizer.from_pretrained(pipeline_dir / "tokenizer")(
        [""], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    t5 = T5EncoderModel.from_pretrained(pipeline_dir / "text_encoder_2")
    t5_ids = T5TokenizerFast.from_pretrained(pipeline_dir / "tokenizer_2")(
        [""], padding="max_length", max_length=4, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        torch.testing.assert_close(model.pooled_prompt_embeds, clip(clip_ids).pooler_output)
        torch.testing.assert_close(model.prompt_embeds, t5(t5_ids).last_hidden_state)
    vae = build_vae(get_preset("tiny-kl")).from_pretrained(pipeline_dir / "vae")
    assert all(
        torch.equal(a, b) for a, b in zip(vae.state_dict().values(), model.vae.state_dict().values(), strict=True)
    )


def test_import_refuses_a_mismatched_or_incomplete_folder(pipeline_dir, tmp_path, capsys):
    assert main(["model", "import", str(pipeline_dir), "-o", str(tmp_path / "a"), "--preset", "flux-dev"]) == 2
    assert "pick the matching --preset" in capsys.readouterr().err
    assert main(["model", "import", str(tmp_path), "-o", str(tmp_path / "b"), "--preset", "tiny-kl"]) == 2
    err = capsys.readouterr().err
    assert err.count("flowsr: error") == 1 and not (tmp_path / "b").exists()
