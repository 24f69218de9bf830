"""`flowsr train sr recipe`: the whole SR training in one resumable command, from a photo corpus to a float16 model
directory and its evaluation.

Stages, each in its own folder of RUN:

    autoencoder/   the preset's autoencoder on HR crops (the small preset's is the principal components of 2x2
                   patches, fitted without training steps: a lossless code)
    flow/          the velocity network as a generative flow prior in that latent space; t* and the start times
                   per degradation strength are estimated from training pairs into its manifest
    estimator/     the strength estimator on LR crops of the continuum (the prior with its estimator trained)
    allosr2/       AlloSR² LoRA fine-tuning (L_rec, plus FATC, ATM and the pixel term at their weights), merged, on
                   pairs along the degradation continuum: clean downscales, the mild middle, the heavy pipeline
    model/         the merged model in float16: the result
    eval-{clean,mild,heavy}.csv
                   the held-out photos (CORPUS/holdout) at x4 of each kind of input (seeded), restored by the model
                   and by bicubic upscaling
    recipe.json    the settings, each stage's wall time (summed over sittings) and the evaluation table

A finished stage is skipped when the command runs again; an interrupted one resumes from its checkpoint.
`--model DIR` starts from a finished flow stage (autoencoder, prior and t*) of another run, so ablations
(`--fatc-weight`, `--atm-weight`, `--allosr2-steps`, `--clean-share`) train only what differs.

The small recipe's L_rec is on pixels: its autoencoder is lossless, so the decoded image's L1 distance to the HR
image is the whole error. It is taken per sample as log(L1 + 0.005), so a flat, nearly restored crop counts as much
as a heavily degraded one, as it does in a mean PSNR gain. FATC and ATM are there at weight 0 by default, the paper's
1 with `--fatc-weight 1 --atm-weight 1`. FATC supervises the velocity at points between z_H and z_L whose target
(z_L - z_H)/t* cannot be predicted near z_H; with a small t* its loss outweighs L_rec by orders of magnitude and its
noise drowns the one-step signal. ATM pulls the output toward a generative prior trained for minutes.
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
from flowsr.core.sr_model import OneStepSR
from flowsr.runtime.super_resolver import SuperResolver

from .allosr2 import LORA_PRESETS, LoraSettings, LossWeights
from .data import DataError
from .degradations import ContinuumConfig
from .evaluate import DEGRADATIONS, METRICS, evaluate, summarize, write_csv
from .loop import LoopConfig
from .stages import Crops, Pairs, estimate_tstar, train_allosr2, train_autoencoder, train_estimator, train_flow

STAGES = ("autoencoder", "flow", "tstar", "estimator", "allosr2", "model", "eval")


@dataclass(frozen=True)
class Recipe:
    """Every setting of a recipe run. `steps` and batch sizes are per process."""

    preset: str
    autoencoder: LoopConfig
    flow: LoopConfig
    allosr2: LoopConfig
    estimator: LoopConfig | None = None  # None: the preset has no strength estimator
    estimator_crop: int = 256  # HR crops the estimator's LR inputs come from
    crop: int = 128
    repeats: int = 64
    max_side: int = 1600
    scale: float = 4.0
    tstar_samples: int = 256
    lora_rank: int = 64
    # L_rec: `latent_weight` times the latent MSE (relative to each sample's input error with `relative_rec`), plus
    # `pixel_weight` times the L1 distance of the decoded image to the HR image.
    latent_weight: float = 1.0
    pixel_weight: float = 0.0
    pixel_log_floor: float = 0.0  # > 0: the pixel term is the mean of log(L1 + floor) per sample (LossWeights)
    clean_share: float = ContinuumConfig.clean_share  # of the continuum's pairs at strength 0 (clean downscales)
    fatc_weight: float = 0.0  # the paper's weight is 1; see the module docstring
    atm_weight: float = 0.0
    relative_rec: bool = True  # L_rec as the share of each sample's input error left (LossWeights.latent_relative)
    seed: int = 0

    def crops(self, data: Path) -> Crops:
        return Crops(data, crop=self.crop, repeats=self.repeats, max_side=self.max_side, seed=self.seed)

    def pairs(self, data: Path, crop: int | None = None) -> Pairs:
        return Pairs(
            data,
            crop=crop or self.crop,
            repeats=self.repeats,
            max_side=self.max_side,
            seed=self.seed,
            scale=self.scale,
            clean_share=self.clean_share,
        )

    def lora(self) -> LoraSettings:
        """The preset's LoRA targets at the recipe's rank, alpha = rank."""
        return dataclasses.replace(LORA_PRESETS[self.preset], rank=self.lora_rank, alpha=float(self.lora_rank))

    def loss_weights(self) -> LossWeights:
        relative = float(self.relative_rec)
        return LossWeights(
            latent_mse=self.latent_weight * (1.0 - relative),
            latent_relative=self.latent_weight * relative,
            pixel=self.pixel_weight,
            pixel_log_floor=self.pixel_log_floor,
            fatc=self.fatc_weight,
            atm=self.atm_weight,
        )


def rescheduled(config: LoopConfig, steps: int) -> LoopConfig:
    """`config` over `steps` steps, with the recipes' warm-up (5%) and checkpoints (every quarter, at most 200
    steps)."""
    return dataclasses.replace(
        config, steps=steps, warmup=max(1, steps // 20), checkpoint_every=max(1, min(200, steps // 4))
    )


def _cosine(steps: int, batch_size: int, lr: float, precision: str = "auto") -> LoopConfig:
    return rescheduled(LoopConfig(batch_size=batch_size, lr=lr, schedule="cosine", precision=precision), steps)


RECIPES = {
    # What ships (runtime/models/sr-small-x4/README.md): the autoencoder needs no training steps (its PCA is the code).
    "small": Recipe(
        preset="small",
        autoencoder=_cosine(0, 8, 5e-4, precision="float32"),
        flow=_cosine(1500, 16, 3e-4),
        allosr2=_cosine(8000, 20, 5e-4),
        crop=160,  # the largest multiple of 16 that the first corpus's smallest photo (172 px) held
        latent_weight=0.0,
        relative_rec=False,
        pixel_weight=1.0,
        pixel_log_floor=0.005,
    ),
    # The start time per image: a strength estimator and start times per strength; in training (see its card).
    "small-gated": Recipe(
        preset="small-gated",
        autoencoder=_cosine(0, 8, 5e-4, precision="float32"),
        flow=_cosine(300, 16, 3e-4),
        allosr2=_cosine(6000, 16, 5e-4),
        estimator=_cosine(1500, 32, 3e-3),
        crop=192,
        estimator_crop=256,
        lora_rank=32,
        latent_weight=0.0,
        relative_rec=False,
        pixel_weight=1.0,
        pixel_log_floor=0.005,
    ),
    # The same pipeline in seconds, for tests, with every AlloSR² term on.
    "tiny": Recipe(
        preset="tiny",
        autoencoder=_cosine(2, 2, 1e-3),
        flow=_cosine(2, 2, 1e-3),
        allosr2=_cosine(2, 2, 1e-3),
        estimator=_cosine(2, 2, 1e-3),
        crop=32,
        estimator_crop=32,
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
            raise DataError(
                f"{self.corpus} has no train/ folder of HR images; "
                f"make the corpus with `flowsr train photos -o {self.corpus}`"
            )
        self.base = Path(base) if base else None
        if self.base is not None and not Manifest.read(self.base).t_star_estimated:
            raise ModelDirError(
                f"--model {self.base}: its t* was never estimated; pass the flow/model folder of a finished recipe run"
            )
        self.state_path = self.out / "recipe.json"
        self.state = self._read_state()

    def _read_state(self) -> dict:
        settings = _settings(self.recipe, self.base)
        if not self.state_path.is_file():
            return {"settings": settings, "seconds": {}, "evaluation": {}}
        state = json.loads(self.state_path.read_text())
        if state.get("settings") != settings:
            raise DataError(
                f"{self.out} holds a recipe run with other settings; use a new -o folder, or the same options as before"
            )
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
        outputs = {
            "autoencoder": "autoencoder/model",
            "flow": "flow/model",
            "estimator": "estimator/model",
            "allosr2": "allosr2/model",
            "model": "model",
        }
        if stage == "estimator" and self.recipe.estimator is None:
            return True
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
        train_autoencoder(
            self.out / "autoencoder",
            recipe.crops(self.train_data),
            recipe.autoencoder,
            preset=recipe.preset,
            holdout=holdout if holdout.is_dir() else None,
        )

    def _flow(self) -> None:
        train_flow(
            self.out / "autoencoder" / "model", self.out / "flow", self.recipe.crops(self.train_data), self.recipe.flow
        )

    def _tstar(self) -> None:
        t_star = estimate_tstar(self.base_model, self.recipe.pairs(self.train_data), samples=self.recipe.tstar_samples)
        self.log(f"recipe: t* = {t_star:.4f}")

    def _estimator(self) -> None:
        recipe = self.recipe
        train_estimator(
            self.base_model,
            self.out / "estimator",
            recipe.pairs(self.train_data, crop=recipe.estimator_crop),
            recipe.estimator,
        )

    @property
    def sr_base(self) -> Path:
        """What AlloSR² fine-tunes: the prior with its trained estimator, or the prior itself."""
        return self.out / "estimator" / "model" if self.recipe.estimator is not None else self.base_model

    def _allosr2(self) -> None:
        recipe = self.recipe
        train_allosr2(
            self.sr_base,
            self.out / "allosr2",
            recipe.pairs(self.train_data),
            recipe.allosr2,
            recipe.loss_weights(),
            recipe.lora(),
        )

    def _model(self) -> None:
        model = OneStepSR.from_pretrained(self.out / "allosr2" / "model", dtype=torch.float16)
        model.save_pretrained(self.out / "model", overwrite=True)

    def _eval(self) -> None:
        holdout = self.corpus / "holdout"
        if not holdout.is_dir():
            self.log(f"recipe: no {holdout}; nothing to evaluate on")
            for degradation in DEGRADATIONS:
                self.state["evaluation"][degradation] = {}
            return
        resolver = SuperResolver(self.out / "model", scale=self.recipe.scale, device="cpu", tile=0, vae_tile=0)
        for degradation in DEGRADATIONS:
            rows = evaluate(
                holdout,
                {"flowsr": resolver},
                scale=int(self.recipe.scale),
                seed=self.recipe.seed,
                degradation=degradation,
            )
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
