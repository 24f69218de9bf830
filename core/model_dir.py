"""Model directories: a `flowsr.json` manifest, diffusers `save_pretrained` subfolders and the constant
empty-prompt embeddings. Loading is `from_pretrained` on that folder, safetensors only; writing is atomic.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import diffusers
import safetensors.torch
import torch
from diffusers import FluxTransformer2DModel, UNet2DModel
from safetensors import SafetensorError

from .atomic import atomic_directory, atomic_file
from .autoencoders import load_autoencoder
from .content_hash import weights_sha256
from .degradation_model import (
    DEGRADATION_PRESETS,
    DegradationModel,
    DegradationPreset,
    build_degradation_model,
    get_degradation_preset,
)
from .errors import ModelDirError, first_line
from .model_schema import check_architecture, check_embeddings, check_field_types, check_range
from .presets import PRESETS, Preset, build_transformer, build_vae, get_preset, load_base_components
from .rae import ResidualAutoencoder
from .sr_model import OneStepSR

MANIFEST = "flowsr.json"
TEXT_EMBEDDINGS = "text_embeddings.safetensors"
FORMAT_VERSION = 1
# What loading a saved part may raise for a broken file (diffusers, safetensors, torch); all mean the same here.
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, SafetensorError)


class _ManifestFile:
    """`flowsr.json`: what a model directory holds, read with a one-line error for anything unusable.

    It holds only what no part's config holds: the latent normalization, the stride and the architecture are the
    parts' own (diffusers `config.json`). Fields that older versions wrote as copies (LEGACY_FIELDS) are ignored.
    """

    KIND: ClassVar[str]
    LEGACY_FIELDS: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, directory: Path):
        path = Path(directory) / MANIFEST
        if not Path(directory).is_dir():
            raise ModelDirError(f"model directory {directory} does not exist")
        if not path.is_file():
            raise ModelDirError(f"{directory} is not a flowsr model directory (no {MANIFEST}); create one with `flowsr model init`")
        try:
            if path.stat().st_size > 1 << 20:
                raise ModelDirError(f"{path} is {path.stat().st_size} bytes, not a manifest; re-create the model directory")
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelDirError(f"{path} is not a valid manifest (unreadable or not JSON: {type(err).__name__}); re-create the model directory") from None
        if not isinstance(data, dict):
            raise ModelDirError(f"{path} is not a valid manifest (not a JSON object); re-create the model directory")
        if data.get("kind", cls.KIND) != cls.KIND:
            raise ModelDirError(f"{directory} holds a {data['kind']!r:.40} model, not a {cls.KIND!r} model; pass the matching model directory")
        try:
            manifest = cls(**{key: value for key, value in data.items() if key not in cls.LEGACY_FIELDS})
        except TypeError as err:  # a missing or unknown field
            raise ModelDirError(f"{path} is not a valid manifest ({err}); re-create the model directory") from None
        check_field_types(manifest, path)
        if manifest.format > FORMAT_VERSION:
            raise ModelDirError(f"{path} has format {manifest.format}, newer than this flowsr reads ({FORMAT_VERSION}); upgrade flowsr")
        check_range(path, "format", manifest.format, 1, FORMAT_VERSION)
        manifest.check(path)
        return manifest

    def check(self, path: Path) -> None:
        """Bounds beyond the types; a subclass raises ModelDirError for a value it cannot use."""


@dataclass
class Manifest(_ManifestFile):
    """A one-step super-resolution model directory."""

    KIND: ClassVar[str] = "sr"
    LEGACY_FIELDS: ClassVar[frozenset[str]] = frozenset({"latent_shift", "latent_scale", "scale_factors", "stride"})
    kind: str
    preset: str
    t_star: float
    guidance: float | None
    trained: bool
    versions: dict = field(default_factory=dict)
    created: str = ""
    format: int = FORMAT_VERSION
    t_star_source: str = "preset"  # "estimated" once `estimate-tstar` measured it on training pairs
    weights_sha256: str | None = None  # of the stored weights, hashed when saved: the key of exports made from them

    T_STAR_SOURCES: ClassVar[tuple[str, ...]] = ("preset", "estimated")

    @property
    def t_star_estimated(self) -> bool:
        return self.t_star_source == "estimated"

    def check(self, path: Path) -> None:
        if self.t_star_source not in self.T_STAR_SOURCES:
            raise ModelDirError(f"{path} has t_star_source {self.t_star_source!r:.40}; expected one of {', '.join(self.T_STAR_SOURCES)}")
        if self.preset not in PRESETS:
            raise ModelDirError(f"{path} names preset {self.preset!r:.40}; flowsr knows {', '.join(PRESETS)}")
        check_range(path, "t_star", self.t_star, 0.0, 1.0, low_open=True)
        if (self.guidance is None) != (PRESETS[self.preset].guidance is None):
            needs = "null: its transformer takes no guidance" if PRESETS[self.preset].guidance is None else "a number: its transformer is guidance-distilled"
            raise ModelDirError(f"{path}: guidance must be {needs} (preset {self.preset!r}); re-create the model directory")
        if self.guidance is not None:
            check_range(path, "guidance", self.guidance, 0.0, 100.0)


@dataclass
class DegradationManifest(_ManifestFile):
    """A DegFlow degradation model directory: RAE and velocity UNet, the knot scales it was trained on."""

    KIND: ClassVar[str] = "degradation"
    LEGACY_FIELDS: ClassVar[frozenset[str]] = frozenset({"stride"})
    kind: str
    preset: str
    s_max: float
    knot_scales: list[float]
    trained: bool
    versions: dict = field(default_factory=dict)
    created: str = ""
    format: int = FORMAT_VERSION
    weights_sha256: str | None = None  # of the stored weights, hashed when saved: the key of exports made from them

    def check(self, path: Path) -> None:
        if self.preset not in DEGRADATION_PRESETS:
            raise ModelDirError(f"{path} names degradation preset {self.preset!r:.40}; flowsr knows {', '.join(DEGRADATION_PRESETS)}")
        check_range(path, "s_max", self.s_max, 1.0, 32.0, low_open=True)
        knots = self.knot_scales
        if len(knots) < 2 or knots[0] != 1.0 or any(b <= a for a, b in itertools.pairwise(knots)) or knots[-1] > self.s_max:
            raise ModelDirError(f"{path}: knot_scales {knots!r:.60} must start at 1, increase, and end at most at s_max {self.s_max:g}")


def model_kind(directory: str | Path) -> str:
    """"sr" or "degradation": what a model directory holds, from its manifest."""
    if not Path(directory).is_dir():
        raise ModelDirError(f"model directory {directory} does not exist")
    path = Path(directory) / MANIFEST
    try:
        kind = json.loads(path.read_text()).get("kind")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        raise ModelDirError(f"{directory} is not a flowsr model directory (no readable {MANIFEST})") from None
    if kind not in (Manifest.KIND, DegradationManifest.KIND):
        raise ModelDirError(f"{path} names an unknown model kind {kind!r}; re-create the model directory")
    return kind


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        flowsr_version = version("flowsr")
    except PackageNotFoundError:
        flowsr_version = "unknown"
    return {"flowsr": flowsr_version, "torch": torch.__version__, "diffusers": diffusers.__version__}


def init_sr_model(preset: Preset | str, seed: int = 0) -> tuple[OneStepSR, Manifest]:
    """An untrained SR model with random weights (tests, benchmarks, the start of training)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    generator = torch.manual_seed(seed)
    vae, transformer = build_vae(preset), build_transformer(preset)
    prompt = torch.randn(1, preset.text_tokens, preset.transformer["joint_attention_dim"], generator=generator)
    pooled = torch.randn(1, preset.transformer["pooled_projection_dim"], generator=generator)
    model = OneStepSR(vae, transformer, prompt, pooled, preset.default_t_star, preset.guidance)
    manifest = Manifest(
        kind="sr",
        preset=preset.name,
        t_star=preset.default_t_star,
        guidance=preset.guidance,
        trained=False,
    )
    return model.eval(), manifest


@torch.no_grad()
def import_sr_model(pipeline_dir: str | Path, preset: Preset | str) -> tuple[OneStepSR, Manifest]:
    """A base model from a local diffusers FLUX pipeline folder (e.g. FLUX.1-dev): its VAE and transformer, and
    the empty-prompt conditioning computed once with its own CLIP and T5 encoders (then no text encoder runs
    again). The start of AlloSR² training on a real backbone; labelled untrained until fine-tuned."""
    from diffusers import FluxPipeline

    preset = get_preset(preset) if isinstance(preset, str) else preset
    try:
        vae, transformer = load_base_components(str(pipeline_dir), preset)
    except OSError as err:
        raise ModelDirError(f"{pipeline_dir}: no loadable vae/ and transformer/ ({str(err).strip().splitlines()[0]}); pass a diffusers FLUX pipeline folder") from None
    try:
        pipeline = FluxPipeline.from_pretrained(pipeline_dir, vae=None, transformer=None, use_safetensors=True)
        prompt, pooled, _ = pipeline.encode_prompt(prompt="", prompt_2="", device="cpu", max_sequence_length=preset.text_tokens)
    except Exception as err:  # transformers and tokenizers raise many types for a broken folder; all mean the same here
        raise ModelDirError(f"{pipeline_dir}: cannot load its text encoders and tokenizers ({first_line(err)}); pass a complete FLUX pipeline folder") from None
    model = OneStepSR(vae, transformer, prompt.float(), pooled.float(), preset.default_t_star, preset.guidance)
    manifest = Manifest(kind="sr", preset=preset.name, t_star=preset.default_t_star, guidance=preset.guidance, trained=False)
    return model.eval(), manifest


def save_sr_model(model: OneStepSR, manifest: Manifest, directory: str | Path, overwrite: bool = False) -> Path:
    """Write the model directory atomically: into a temporary sibling, then renamed into place."""
    directory = Path(directory)
    if directory.exists() and not overwrite and (not directory.is_dir() or any(directory.iterdir())):
        raise ModelDirError(f"{directory} already exists; choose another path or pass --overwrite")
    manifest.t_star = model.t_star
    manifest.weights_sha256 = weights_sha256(model)
    manifest.versions = _versions()
    manifest.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with atomic_directory(directory) as staging:
        model.vae.save_pretrained(staging / "vae", safe_serialization=True)
        model.transformer.save_pretrained(staging / "transformer", safe_serialization=True)
        embeddings = {"prompt_embeds": model.prompt_embeds, "pooled_prompt_embeds": model.pooled_prompt_embeds}
        safetensors.torch.save_file({k: v.contiguous().cpu() for k, v in embeddings.items()}, staging / TEXT_EMBEDDINGS)
        (staging / MANIFEST).write_text(manifest.to_json())
    return directory


def load_sr_model(directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[OneStepSR, Manifest]:
    directory = Path(directory)
    manifest = Manifest.read(directory)
    if manifest.kind != "sr":
        raise ModelDirError(f"{directory} holds a {manifest.kind!r} model, not a super-resolution model")
    preset = get_preset(manifest.preset)
    check_architecture(directory / "vae", preset.vae, preset.name, class_name=preset.vae_class)
    check_architecture(directory / "transformer", preset.transformer, preset.name)
    try:
        embeddings = safetensors.torch.load_file(directory / TEXT_EMBEDDINGS)
    except _LOAD_ERRORS as err:
        raise ModelDirError(f"{directory / TEXT_EMBEDDINGS} is missing or not a safetensors file ({first_line(err)}); re-create the model directory") from None
    check_embeddings(directory / TEXT_EMBEDDINGS, embeddings, {
        "prompt_embeds": (1, preset.text_tokens, preset.transformer["joint_attention_dim"]),
        "pooled_prompt_embeds": (1, preset.transformer["pooled_projection_dim"]),
    })
    try:
        vae = load_autoencoder(directory / "vae", dtype=dtype)
        transformer = FluxTransformer2DModel.from_pretrained(directory, subfolder="transformer", use_safetensors=True, torch_dtype=dtype)
    except _LOAD_ERRORS as err:
        raise ModelDirError(f"{directory} is incomplete or corrupt ({first_line(err)}); re-create or re-download it") from None
    model = OneStepSR(
        vae,
        transformer,
        embeddings["prompt_embeds"],
        embeddings["pooled_prompt_embeds"],
        manifest.t_star,
        manifest.guidance,
    )
    return model.to(device).eval(), manifest


def update_manifest(directory: str | Path, **fields) -> Manifest:
    """Change manifest fields in place (e.g. t* after estimation), atomically."""
    directory = Path(directory)
    manifest = Manifest.read(directory)
    for key, value in fields.items():
        if not hasattr(manifest, key):
            raise ValueError(f"manifest has no field {key!r}")
        setattr(manifest, key, value)
    with atomic_file(directory / MANIFEST, "w") as f:
        f.write(manifest.to_json())
    return manifest


def init_degradation_model(preset: DegradationPreset | str, seed: int = 0) -> tuple[DegradationModel, DegradationManifest]:
    """An untrained DegFlow model with random weights (tests, the start of training)."""
    preset = get_degradation_preset(preset) if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    model = build_degradation_model(preset)
    manifest = DegradationManifest(kind="degradation", preset=preset.name, s_max=model.s_max, knot_scales=list(model.knot_scales),
                                   trained=False)
    return model.eval(), manifest


def save_degradation_model(model: DegradationModel, manifest: DegradationManifest, directory: str | Path, overwrite: bool = False) -> Path:
    directory = Path(directory)
    if directory.exists() and not overwrite and (not directory.is_dir() or any(directory.iterdir())):
        raise ModelDirError(f"{directory} already exists; choose another path or pass --overwrite")
    manifest.weights_sha256 = weights_sha256(model)
    manifest.versions = _versions()
    manifest.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with atomic_directory(directory) as staging:
        model.rae.save_pretrained(staging / "rae", safe_serialization=True)
        model.unet.save_pretrained(staging / "unet", safe_serialization=True)
        (staging / MANIFEST).write_text(manifest.to_json())
    return directory


def load_degradation_model(directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[DegradationModel, DegradationManifest]:
    directory = Path(directory)
    manifest = DegradationManifest.read(directory)
    preset = get_degradation_preset(manifest.preset)
    check_architecture(directory / "rae", preset.rae, preset.name)
    check_architecture(directory / "unet", preset.unet, preset.name)
    try:
        rae = ResidualAutoencoder.from_pretrained(directory, subfolder="rae", use_safetensors=True, torch_dtype=dtype)
        unet = UNet2DModel.from_pretrained(directory, subfolder="unet", use_safetensors=True, torch_dtype=dtype)
    except _LOAD_ERRORS as err:
        raise ModelDirError(f"{directory} is incomplete or corrupt ({first_line(err)}); re-create or re-download it") from None
    model = DegradationModel(rae, unet, manifest.knot_scales, manifest.s_max)
    return model.to(device).eval(), manifest


def load_model(directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Either kind of model directory, by what its manifest says it holds: (model, manifest)."""
    load = load_degradation_model if model_kind(directory) == DegradationManifest.KIND else load_sr_model
    return load(directory, device, dtype)


def save_model(model, manifest, directory: str | Path, overwrite: bool = False) -> Path:
    """Either kind of model, by its manifest's kind."""
    save = save_degradation_model if manifest.kind == DegradationManifest.KIND else save_sr_model
    return save(model, manifest, directory, overwrite=overwrite)
