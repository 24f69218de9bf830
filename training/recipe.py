"""`flowsr train recipe`: the whole SR training in one resumable command, from a photo corpus to a float16 model
directory and its evaluation.

Stages, each in its own folder of RUN:

    autoencoder/   the preset's autoencoder on HR crops (the small preset's starts from PCA)
    flow/          the transformer as a generative flow prior in that latent space; t* is estimated from
                   training pairs into its manifest
    allosr2/       AlloSR² LoRA fine-tuning (L_rec, plus FATC, ATM and the pixel term at their weights), merged: the
                   clean expert, trained mostly on clean bicubic pairs
    model/         the merged model in float16: the result (made a routed model by the two stages below)
    degraded/      the degraded expert: an AlloSR² LoRA on top of model/, trained on pipeline-degraded pairs
    router/        (in model/) the router, trained on which expert restores each training crop better; model/
                   becomes a routed model directory: clean expert, degraded/ adapters, router/
    eval-realesrgan.csv, eval-bicubic.csv
                   the held-out photos (CORPUS/holdout) at x4, degraded by the training pipeline (seeded) and by
                   clean bicubic downscaling, restored by the model and by bicubic upscaling
    recipe.json    the settings, each stage's wall time (summed over sittings) and the evaluation table

A finished stage is skipped when the command runs again; an interrupted one resumes from its checkpoint.
`--base MODEL_DIR` starts from a finished flow stage (autoencoder, prior and t*) of another run, so ablations
(`--fatc-weight`, `--atm-weight`, `--allosr2-steps`) train only what differs. `--single` trains one model instead
of two experts and a router (the model/ of a single run is the allosr2/ stage's model, in float16).

The small recipe trains AlloSR² with the relative L_rec alone: FATC and ATM are there (weights 0 by default, the
paper's 1 with `--fatc-weight 1 --atm-weight 1`). With a plain-MSE L_rec they held this CPU-scale model's one-step
output at or below its input; with the relative L_rec, FATC added about 0.07 dB on degraded inputs in a 3000-step
ablation and ATM changed little (README, "The shipped models"). FATC supervises the velocity at points between z_H and z_L whose target (z_L - z_H)/t*
cannot be predicted near z_H; with t* = 0.1 its loss is ~100 times L_rec and its noise drowns the one-step signal,
even weighted by t*² (the units of L_rec). ATM pulls the output toward a generative prior trained for minutes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from flowsr.core.atomic import atomic_file
from flowsr.core.model_dir import Manifest, ModelDirError
from flowsr.core.router import is_routed
from flowsr.core.sr_model import OneStepSR
from flowsr.runtime.super_resolver import SuperResolver

from .allosr2 import LoraSettings, LossWeights
from .data import DataError
from .evaluate import METRICS, evaluate, summarize, write_csv
from .loop import LoopConfig
from .router import RouterSettings, build_routed_model
from .stages import Crops, Pairs, estimate_tstar, train_allosr2, train_autoencoder, train_flow

STAGES = ("autoencoder", "flow", "tstar", "allosr2", "model", "degraded", "router", "eval")
DEGRADATIONS = ("realesrgan", "bicubic")


@dataclass(frozen=True)
class Recipe:
    """Every setting of a recipe run. `steps` and batch sizes are per process."""

    preset: str
    autoencoder: LoopConfig
    flow: LoopConfig
    allosr2: LoopConfig  # the clean expert (or the one model of a single run)
    degraded: LoopConfig | None = None  # the degraded expert; None: one model, no router
    router: RouterSettings | None = None
    crop: int = 128
    repeats: int = 64
    max_side: int = 1600
    scale: float = 4.0
    tstar_samples: int = 256
    lora_rank: int = 64
    # The PatchAutoencoder's latent MSE already is a pixel MSE (orthonormal components); an L1 pixel term on top
    # outweighs it ~10-fold and holds the model near the identity (measured), so the small recipe leaves it out.
    pixel_weight: float = 0.0
    # The share of clean bicubic pairs trades degraded-input gain for clean-input gain (README, "The shipped models"):
    # 0.5 / 0.6 / 0.75 gave +0.34 / +0.11 / -0.37 dB on degraded and -0.20 / +0.07 / +0.88 dB on clean validation
    # photos. One model cannot have both; two experts can: the clean one at 0.75, the degraded one at 0.
    clean_fraction: float = 0.75
    degraded_clean_fraction: float = 0.0
    fatc_weight: float = 0.0  # the paper's weight is 1; see the module docstring
    atm_weight: float = 0.0
    relative_rec: bool = True  # L_rec as the share of each sample's input error left (LossWeights.latent_relative)
    seed: int = 0

    def crops(self, data: Path) -> Crops:
        return Crops(data, crop=self.crop, repeats=self.repeats, max_side=self.max_side, seed=self.seed)

    def pairs(self, data: Path, clean_fraction: float | None = None) -> Pairs:
        return Pairs(data, crop=self.crop, repeats=self.repeats, max_side=self.max_side, seed=self.seed, scale=self.scale,
                     clean_fraction=self.clean_fraction if clean_fraction is None else clean_fraction)

    def lora(self) -> LoraSettings:
        return LoraSettings(rank=self.lora_rank, alpha=float(self.lora_rank))

    def single(self) -> Recipe:
        """One model instead of two experts and a router."""
        return dataclasses.replace(self, degraded=None, router=None)

    def loss_weights(self) -> LossWeights:
        relative = float(self.relative_rec)
        return LossWeights(latent_mse=1.0 - relative, latent_relative=relative, pixel=self.pixel_weight, fatc=self.fatc_weight,
                           atm=self.atm_weight)


def rescheduled(config: LoopConfig, steps: int) -> LoopConfig:
    """`config` over `steps` steps, with the recipes' warm-up (5%) and checkpoints (every quarter, at most 200 steps)."""
    return dataclasses.replace(config, steps=steps, warmup=max(1, steps // 20), checkpoint_every=max(1, min(200, steps // 4)))


def _cosine(steps: int, batch_size: int, lr: float, precision: str = "auto") -> LoopConfig:
    return rescheduled(LoopConfig(batch_size=batch_size, lr=lr, schedule="cosine", precision=precision), steps)


RECIPES = {
    # What ships (README, "The shipped models"): under an hour on 2 CPU cores with native bfloat16. The
    # autoencoder trains in float32: in bfloat16 the rounding of its near-lossless linear code drowns the small
    # corrections its branches learn (measured: no gain at all).
    "small": Recipe(
        preset="small",
        autoencoder=_cosine(6000, 8, 5e-4, precision="float32"),
        flow=_cosine(1500, 16, 3e-4),
        allosr2=_cosine(10000, 8, 3e-4),
        degraded=_cosine(10000, 8, 3e-4),
        router=RouterSettings(),
    ),
    # The same pipeline in seconds, for tests, with every AlloSR² term on.
    "tiny": Recipe(
        preset="tiny",
        autoencoder=_cosine(2, 2, 1e-3),
        flow=_cosine(2, 2, 1e-3),
        allosr2=_cosine(2, 2, 1e-3),
        degraded=_cosine(2, 2, 1e-3),
        router=RouterSettings(crops=4, crop=32, short_sides=(40, 64), steps=2, batch_size=2),
        crop=32,
        repeats=2,
        tstar_samples=4,
        lora_rank=4,
        fatc_weight=1.0,
        atm_weight=1.0,
    ),
}


class RecipeRun:
    """The state of one recipe run folder: which stages are done, their wall times, the evaluation."""

    def __init__(self, corpus: str | Path, out: str | Path, recipe: Recipe, base: str | Path | None = None, log=print):
        self.corpus, self.out, self.recipe, self.log = Path(corpus), Path(out), recipe, log
        self.train_data = self.corpus / "train"
        if not self.train_data.is_dir():
            raise DataError(f"{self.corpus} has no train/ folder of HR images; make the corpus with `flowsr train photos {self.corpus}`")
        self.base = Path(base) if base else None
        if self.base is not None and not Manifest.read(self.base).t_star_estimated:
            raise ModelDirError(f"--base {self.base}: its t* was never estimated; pass the flow/model folder of a finished recipe run")
        self.state_path = self.out / "recipe.json"
        self.state = self._read_state()

    def _read_state(self) -> dict:
        settings = _settings(self.recipe, self.base)
        if not self.state_path.is_file():
            return {"settings": settings, "seconds": {}, "evaluation": {}}
        state = json.loads(self.state_path.read_text())
        if state.get("settings") != settings:
            raise DataError(f"{self.out} holds a recipe run with other settings; use a new -o folder, or the same options as before")
        return state

    def _save_state(self) -> None:
        with atomic_file(self.state_path, "w") as f:
            f.write(json.dumps(self.state, indent=2) + "\n")

    @property
    def base_model(self) -> Path:
        return self.base or self.out / "flow" / "model"

    def done(self, stage: str) -> bool:
        if stage in ("autoencoder", "flow") and self.base is not None:
            return True
        if stage in ("degraded", "router") and getattr(self.recipe, stage) is None:
            return True
        if stage == "router":
            return is_routed(self.out / "model")
        outputs = {"autoencoder": "autoencoder/model", "flow": "flow/model", "allosr2": "allosr2/model", "model": "model",
                   "degraded": "degraded/model"}
        if stage in outputs:
            return (self.out / outputs[stage]).is_dir()
        if stage == "tstar":
            return Manifest.read(self.base_model).t_star_estimated
        return all(degradation in self.state["evaluation"] for degradation in DEGRADATIONS)

    def run(self) -> dict:
        for stage in STAGES:
            if self.done(stage):
                self.log(f"recipe: {stage} done")
                continue
            self.log(f"recipe: {stage} ...")
            started = time.perf_counter()
            try:
                getattr(self, f"_{stage}")()
            finally:  # an interrupted sitting (Ctrl-C) counts too: the stage resumes from where it got
                seconds = self.state["seconds"]
                seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started
                self._save_state()
            self.log(f"recipe: {stage} took {seconds[stage]:.0f} s")
        return self.state

    def _autoencoder(self) -> None:
        recipe = self.recipe
        holdout = self.corpus / "holdout"
        train_autoencoder(self.out / "autoencoder", recipe.crops(self.train_data), recipe.autoencoder, preset=recipe.preset,
                          holdout=holdout if holdout.is_dir() else None)

    def _flow(self) -> None:
        train_flow(self.out / "autoencoder" / "model", self.out / "flow", self.recipe.crops(self.train_data), self.recipe.flow)

    def _tstar(self) -> None:
        t_star = estimate_tstar(self.base_model, self.recipe.pairs(self.train_data), samples=self.recipe.tstar_samples)
        self.log(f"recipe: t* = {t_star:.4f}")

    def _allosr2(self) -> None:
        recipe = self.recipe
        train_allosr2(self.base_model, self.out / "allosr2", recipe.pairs(self.train_data), recipe.allosr2, recipe.loss_weights(), recipe.lora())

    def _model(self) -> None:
        model = OneStepSR.from_pretrained(self.out / "allosr2" / "model", dtype=torch.float16)
        model.save_pretrained(self.out / "model", overwrite=True)

    def _degraded(self) -> None:
        """LoRA on the float16 clean expert as stored, so its adapters apply to exactly the weights that ship; its
        HR targets come from the base's autoencoder, as the clean expert's did (its own encoder is tuned for LR)."""
        recipe = self.recipe
        pairs = recipe.pairs(self.train_data, clean_fraction=recipe.degraded_clean_fraction)
        train_allosr2(self.out / "model", self.out / "degraded", pairs, recipe.degraded, recipe.loss_weights(), recipe.lora(),
                      targets_from=self.base_model)

    def _router(self) -> None:
        settings = dataclasses.replace(self.recipe.router, scale=self.recipe.scale, max_side=self.recipe.max_side, seed=self.recipe.seed)
        build_routed_model(self.out / "model", self.out / "degraded" / "adapters", self.train_data, self.out / "model", settings,
                           overwrite=True, log=self.log)

    def _eval(self) -> None:
        holdout = self.corpus / "holdout"
        if not holdout.is_dir():
            self.log(f"recipe: no {holdout}; nothing to evaluate on")
            for degradation in DEGRADATIONS:
                self.state["evaluation"][degradation] = {}
            return
        resolver = SuperResolver(self.out / "model", scale=self.recipe.scale, device="cpu", tile=0, vae_tile=0)
        for degradation in DEGRADATIONS:
            rows = evaluate(holdout, {"flowsr": resolver}, scale=int(self.recipe.scale), seed=self.recipe.seed, degradation=degradation)
            write_csv(rows, self.out / f"eval-{degradation}.csv")
            self.state["evaluation"][degradation] = summarize(rows)
        self.log(format_evaluation(self.state["evaluation"]))


def _settings(recipe: Recipe, base: Path | None) -> dict:
    """As recipe.json holds them (JSON types), so a resumed run compares equal."""
    return json.loads(json.dumps({**dataclasses.asdict(recipe), "base": str(base) if base else None}))


def format_evaluation(evaluation: dict) -> str:
    """The evaluation table of a recipe run, one row per degradation and method."""
    lines = [f"{'degradation':<12} {'method':<10} " + " ".join(f"{m:>9}" for m in METRICS)]
    for degradation, methods in evaluation.items():
        for method, scores in methods.items():
            lines.append(f"{degradation:<12} {method:<10} " + " ".join(f"{scores[m]:9.4f}" for m in METRICS))
    return "\n".join(lines)
