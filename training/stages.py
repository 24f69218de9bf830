"""The SR training stages as functions: what `flowsr train sr vae|flow|tstar|allosr2` run and what
`flowsr train sr recipe` chains.

Each training stage runs the shared loop in its run folder (checkpoint, losses.jsonl, runs.jsonl: a re-run
resumes) and writes the model directory RUN/model. Under torchrun every process trains; rank 0 writes and
gets the model directory back, the others get None.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from flowsr.core.errors import SettingsError
from flowsr.core.model_dir import update_manifest
from flowsr.core.sr_model import OneStepSR
from flowsr.export.merge import merge_adapters

from .allosr2 import LORA_PRESETS, AlloSR2Objective, LoraSettings, LossWeights, add_lora, estimate_t_star, save_adapters
from .data import DegradedFolder, HRCrops, MixedPairs, PairedFolders, StrengthSamples, SynthesizedPairs
from .degradations import ContinuumConfig
from .estimator import StrengthObjective
from .evaluate import reconstruction_psnr
from .loop import LoopConfig, distributed, run
from .perceptual import load_lpips
from .pretrain import AutoencoderObjective, FlowObjective, calibrate_latents, initialize_autoencoder

DEFAULT_LOSS_WEIGHTS = LossWeights()
PCA_CROPS = 512  # crops a fresh PatchAutoencoder's principal components are fitted on
CALIBRATION_CROPS = 64  # crops the latent shift/scale are measured on


@dataclass(frozen=True)
class Crops:
    """HR training crops: `repeats` random crops per image of the folder `data` per epoch, from images shrunk
    so that their longer side is at most `max_side` (large photos are smooth at the pixel level)."""

    data: str | Path
    crop: int = 128
    repeats: int = 64
    max_side: int | None = 1600
    seed: int = 0

    def dataset(self) -> HRCrops:
        return HRCrops(self.data, crop=self.crop, seed=self.seed, repeats=self.repeats, max_side=self.max_side)


@dataclass(frozen=True)
class Pairs(Crops):
    """(LR at HR size, HR) training pairs: paired folders (`lr_data` beside `data`), or HR crops of `data` degraded on
    the fly by `scale` along the degradation continuum (a share `clean_share` of them clean bicubic downscales), with
    a share `synthesized_share` of pairs from a `flowsr degrade` output folder (`synthesized`) mixed in."""

    scale: float = 4.0
    clean_share: float = ContinuumConfig.clean_share
    lr_data: str | Path | None = None
    synthesized: str | Path | None = None
    synthesized_share: float = 1.0
    strength: float | None = None  # every continuum pair at this strength instead of drawn ones

    def continuum(self, kind: type[DegradedFolder] = DegradedFolder) -> DegradedFolder:
        """The HR folder's crops degraded along the continuum, as (LR, HR, strength) pairs or another `kind`."""
        return kind(
            self.data,
            crop=self.crop,
            scale=self.scale,
            seed=self.seed,
            repeats=self.repeats,
            max_side=self.max_side,
            config=ContinuumConfig(clean_share=self.clean_share),
            strength=self.strength,
        )

    def dataset(self):
        if self.lr_data:
            main = PairedFolders(self.lr_data, self.data, crop=self.crop, seed=self.seed)
        else:
            main = self.continuum()
        if not self.synthesized:
            return main
        synthesized = SynthesizedPairs(self.synthesized, crop=self.crop, seed=self.seed)
        return (
            synthesized
            if self.synthesized_share == 1
            else MixedPairs(main, synthesized, self.synthesized_share, seed=self.seed)
        )


def _first(dataset, count: int) -> torch.Tensor:
    return torch.stack([dataset[i] for i in range(min(len(dataset), count))])


def train_autoencoder(
    out: str | Path,
    crops: Crops,
    loop: LoopConfig,
    preset: str = "small",
    model_dir=None,
    restart: bool = False,
    holdout: str | Path | None = None,
    encoder_only: bool = False,
) -> Path | None:
    """The autoencoder of a fresh `preset` model (or of `model_dir`) on HR crops; its latent shift/scale are then
    calibrated to mean 0, std 1. A fresh PatchAutoencoder starts from the principal components of the crops.
    With `holdout` (a folder of photos), every checkpoint logs their reconstruction PSNR to RUN/validation.jsonl.

    `encoder_only` refits `model_dir`'s encoder to its frozen decoder and keeps the latent shift/scale, so the
    model's transformer still fits: the HR-target encoder (`--targets-from`) for LoRA stacked on a merged AlloSR²
    model, whose own encoder was tuned to encode LR images."""
    if encoder_only and model_dir is None:
        raise SettingsError("refitting the encoder needs a model directory whose decoder it inverts; pass --model")
    model = OneStepSR.from_pretrained(model_dir) if model_dir else OneStepSR.from_preset(preset, seed=crops.seed)
    dataset = crops.dataset()
    if model_dir is None:
        print(initialize_autoencoder(model.vae, _first(dataset, PCA_CROPS)), flush=True)
    validate = (lambda: {"holdout_psnr": reconstruction_psnr(model, holdout)}) if holdout else None
    if loop.steps:  # a lossless PatchAutoencoder has nothing to learn beyond its PCA
        objective = AutoencoderObjective(model, encoder_only=encoder_only)
        run(objective, dataset, loop, out, resume=not restart, description="train autoencoder", validate=validate)
    if distributed()[0]:
        return None
    model = model.cpu().eval()
    if not encoder_only:
        calibrate_latents(model, _first(dataset, CALIBRATION_CROPS))  # into the autoencoder's config
    return model.save_pretrained(Path(out) / "model", overwrite=True)


def train_flow(model_dir, out: str | Path, crops: Crops, loop: LoopConfig, restart: bool = False) -> Path | None:
    """The transformer as a generative flow in the (frozen) autoencoder's latent space."""
    model = OneStepSR.from_pretrained(model_dir)
    run(FlowObjective(model), crops.dataset(), loop, out, resume=not restart, description="train flow")
    if distributed()[0]:
        return None
    return model.cpu().eval().save_pretrained(Path(out) / "model", overwrite=True)


START_TIME_STRENGTHS = 11  # the strengths start times are measured at: 0, 0.1, ..., 1


def estimate_tstar(model_dir, pairs: Pairs, samples: int = 256, copy_to=None, overwrite: bool = False) -> float:
    """SNR-guided t* from `samples` training pairs, written into the model's manifest (marked as estimated), or
    into a copy of the model at `copy_to`. A model with a strength estimator also gets its start times: t* of
    `samples` // 4 continuum pairs at each strength of START_TIME_STRENGTHS, never decreasing with the strength."""
    model = OneStepSR.from_pretrained(model_dir)
    dataset = pairs.dataset()
    count = min(samples, len(dataset))
    t_star = estimate_t_star(model, [dataset[i] for i in range(count)])
    fields = {"t_star": t_star, "t_star_source": "estimated"}
    if model.estimator is not None and pairs.lr_data is None:
        times = []
        for index in range(START_TIME_STRENGTHS):
            at_strength = dataclasses.replace(pairs, strength=index / (START_TIME_STRENGTHS - 1)).dataset()
            measured = estimate_t_star(model, [at_strength[i] for i in range(max(1, count // 4))])
            times.append(round(max([measured, *times]), 6))
        fields["start_times"] = times
    update_manifest(model_dir, copy_to, overwrite, **fields)
    return t_star


def train_estimator(model_dir, out: str | Path, pairs: Pairs, loop: LoopConfig, restart: bool = False) -> Path | None:
    """The model's strength estimator on LR crops of the continuum (the rest of the model frozen); writes RUN/model."""
    model = OneStepSR.from_pretrained(model_dir)
    samples = pairs.continuum(StrengthSamples)
    run(StrengthObjective(model), samples, loop, out, resume=not restart, description="train estimator")
    if distributed()[0]:
        return None
    return model.cpu().eval().save_pretrained(Path(out) / "model", overwrite=True)


def train_allosr2(
    model_dir,
    out: str | Path,
    pairs: Pairs,
    loop: LoopConfig,
    weights: LossWeights = DEFAULT_LOSS_WEIGHTS,
    lora: LoraSettings | None = None,
    lpips_weights: str | None = None,
    restart: bool = False,
    targets_from=None,
) -> Path | None:
    """AlloSR² LoRA fine-tuning of a base model; writes the adapters (RUN/adapters) and the merged model (RUN/model).

    `targets_from`: a model directory whose autoencoder encodes the HR targets (its untuned encoder), for a base
    that is itself a merged AlloSR² model; by default the base's own encoder does."""
    model = OneStepSR.from_pretrained(model_dir)
    target_vae = OneStepSR.from_pretrained(targets_from).vae if targets_from is not None else None
    manifest = model.manifest
    if not manifest.t_star_estimated:
        print(
            f"flowsr: warning: {model_dir} has the preset's fallback t* = {manifest.t_star:g}, "
            "never estimated from data; "
            f"run `flowsr train sr tstar --model {model_dir} --in-place --data ...` first",
            file=sys.stderr,
        )
    add_lora(model, lora or LORA_PRESETS.get(manifest.preset, LoraSettings()), seed=loop.seed)
    lpips = load_lpips(lpips_weights) if weights.lpips else None
    run(
        AlloSR2Objective(model, weights, lpips, target_vae),
        pairs.dataset(),
        loop,
        out,
        resume=not restart,
        description="train allosr2",
    )
    if distributed()[0]:
        return None
    adapters = save_adapters(model.cpu(), Path(out) / "adapters", manifest)
    merged = merge_adapters(model_dir, adapters, Path(out) / "model", overwrite=True)
    update_manifest(merged, trained=True)
    return merged
