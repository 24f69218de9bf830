"""Model directories: a `flowsr.json` manifest beside the parts' diffusers `save_pretrained` subfolders.

The models read and write their own directories (`OneStepSR.from_pretrained`/`save_pretrained`,
`DegradationModel.from_pretrained`/`save_pretrained`, safetensors only); this module holds what both share:
the manifests, their checks, and the atomic write of a directory.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import diffusers
import torch
from safetensors import SafetensorError

from .atomic import atomic_directory, atomic_file
from .color_fix import DEFAULT_LEVELS, MAX_LEVELS
from .content_hash import weights_sha256
from .errors import ModelDirError
from .model_schema import check_field_types, check_range
from .noise_model import NoiseModel
from .presets import DEGRADATION_PRESETS, PRESETS

MANIFEST = "flowsr.json"
FORMAT_VERSION = 1
# What loading a saved part may raise for a broken file (diffusers, safetensors, torch); all mean the same here.
LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, SafetensorError)


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
            raise ModelDirError(
                f"{directory} is not a flowsr model directory (no {MANIFEST}); create one with `flowsr model init`"
            )
        try:
            if path.stat().st_size > 1 << 20:
                raise ModelDirError(
                    f"{path} is {path.stat().st_size} bytes, not a manifest; re-create the model directory"
                )
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelDirError(
                f"{path} is not a valid manifest (unreadable or not JSON: {type(err).__name__}); "
                "re-create the model directory"
            ) from None
        if not isinstance(data, dict):
            raise ModelDirError(f"{path} is not a valid manifest (not a JSON object); re-create the model directory")
        if data.get("kind", cls.KIND) != cls.KIND:
            raise ModelDirError(
                f"{directory} holds a {data['kind']!r:.40} model, not a {cls.KIND!r} model; "
                "pass the matching model directory"
            )
        try:
            manifest = cls(**{key: value for key, value in data.items() if key not in cls.LEGACY_FIELDS})
        except TypeError as err:  # a missing or unknown field
            raise ModelDirError(f"{path} is not a valid manifest ({err}); re-create the model directory") from None
        check_field_types(manifest, path)
        if manifest.format > FORMAT_VERSION:
            raise ModelDirError(
                f"{path} has format {manifest.format}, newer than this flowsr reads ({FORMAT_VERSION}); upgrade flowsr"
            )
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
    t_star_source: str = "preset"  # "estimated" once `flowsr train sr tstar` measured it on training pairs
    weights_sha256: str | None = None  # of the stored weights, hashed when saved: the key of exports made from them
    # The wavelet levels of the colour fix: the result takes the bicubic input's features coarser than about
    # 2^(levels+1) pixels. Fewer levels trust the model in fewer bands; chosen per model on validation photos.
    color_fix_levels: int = DEFAULT_LEVELS
    # SNR-guided start times measured at degradation strengths evenly spaced from 0 (clean) to 1 (heavy): the input's
    # strength picks its t. Null: t* for every input.
    start_times: list[float] | None = None

    T_STAR_SOURCES: ClassVar[tuple[str, ...]] = ("preset", "estimated")

    @property
    def t_star_estimated(self) -> bool:
        return self.t_star_source == "estimated"

    def check(self, path: Path) -> None:
        if self.t_star_source not in self.T_STAR_SOURCES:
            raise ModelDirError(
                f"{path} has t_star_source {self.t_star_source!r:.40}; expected one of {', '.join(self.T_STAR_SOURCES)}"
            )
        if self.preset not in PRESETS:
            raise ModelDirError(f"{path} names preset {self.preset!r:.40}; flowsr knows {', '.join(PRESETS)}")
        check_range(path, "t_star", self.t_star, 0.0, 1.0, low_open=True)
        check_range(path, "color_fix_levels", self.color_fix_levels, 1, MAX_LEVELS)
        if self.start_times is not None:
            times = self.start_times
            if (
                len(times) < 2
                or not all(isinstance(t, (int, float)) and 0 < t <= 1 for t in times)
                or any(b < a for a, b in itertools.pairwise(times))
            ):
                raise ModelDirError(
                    f"{path}: start_times {times!r:.60} must be at least two times in (0, 1] that never decrease; "
                    "re-estimate them with `flowsr train sr tstar`"
                )
        if (self.guidance is None) != (PRESETS[self.preset].guidance is None):
            needs = (
                "null: its transformer takes no guidance"
                if PRESETS[self.preset].guidance is None
                else "a number: its transformer is guidance-distilled"
            )
            raise ModelDirError(
                f"{path}: guidance must be {needs} (preset {self.preset!r}); re-create the model directory"
            )
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
    noise: dict | None = None  # the fitted pixel noise (core.noise_model.NoiseModel); null: none is added

    def check(self, path: Path) -> None:
        if self.noise is not None:
            NoiseModel.from_dict(self.noise, str(path))
        if self.preset not in DEGRADATION_PRESETS:
            raise ModelDirError(
                f"{path} names degradation preset {self.preset!r:.40}; flowsr knows {', '.join(DEGRADATION_PRESETS)}"
            )
        check_range(path, "s_max", self.s_max, 1.0, 32.0, low_open=True)
        knots = self.knot_scales
        if (
            len(knots) < 2
            or knots[0] != 1.0
            or any(b <= a for a, b in itertools.pairwise(knots))
            or knots[-1] > self.s_max
        ):
            raise ModelDirError(
                f"{path}: knot_scales {knots!r:.60} must start at 1, increase, and end at most at s_max {self.s_max:g}"
            )


def model_kind(directory: str | Path) -> str:
    """ "sr" or "degradation": what a model directory holds, from its manifest."""
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


def write_model_dir(
    directory: str | Path, model: torch.nn.Module, manifest: _ManifestFile, write_parts, overwrite: bool = False
) -> Path:
    """Write a model directory atomically (into a temporary sibling, then renamed into place): `write_parts(folder)`
    saves the parts, then the manifest follows, stamped with the weights' digest, the versions and the time."""
    directory = Path(directory)
    if directory.exists() and not overwrite and (not directory.is_dir() or any(directory.iterdir())):
        raise ModelDirError(f"{directory} already exists; choose another path or pass --overwrite")
    manifest.weights_sha256 = weights_sha256(model)
    manifest.versions = _versions()
    manifest.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with atomic_directory(directory) as staging:
        write_parts(staging)
        _drop_load_paths(staging)
        (staging / MANIFEST).write_text(manifest.to_json())
    return directory


def _drop_load_paths(folder: Path) -> None:
    """diffusers records in each part's config where it was loaded from (`_name_or_path`): a path on the machine
    that saved it, which a model directory handed to others should not carry."""
    for path in folder.glob("*/config.json"):
        config = json.loads(path.read_text())
        if config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def update_manifest(
    directory: str | Path, copy_to: str | Path | None = None, overwrite: bool = False, **fields
) -> Manifest | DegradationManifest:
    """Change manifest fields (t* after estimation, a degradation model's fitted noise), atomically: in `directory`
    itself, or in a copy of it written to `copy_to`. The copy leaves the exports (onnx/) behind: they bake in
    manifest fields, and the copy makes its own on first use."""
    directory = Path(directory)
    manifest = (DegradationManifest if model_kind(directory) == "degradation" else Manifest).read(directory)
    for key, value in fields.items():
        if not hasattr(manifest, key):
            raise ValueError(f"manifest has no field {key!r}")
        setattr(manifest, key, value)
    manifest.check(directory / MANIFEST)
    if copy_to is None:
        with atomic_file(directory / MANIFEST, "w") as f:
            f.write(manifest.to_json())
        return manifest
    copy_to = Path(copy_to)
    if copy_to.resolve() == directory.resolve():
        raise ModelDirError(f"{copy_to} is the model directory itself; pass --in-place to change it there")
    if copy_to.exists() and not overwrite and (not copy_to.is_dir() or any(copy_to.iterdir())):
        raise ModelDirError(f"{copy_to} already exists; choose another path or pass --overwrite")
    with atomic_directory(copy_to) as staging:
        shutil.copytree(directory, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("onnx", MANIFEST))
        (staging / MANIFEST).write_text(manifest.to_json())
    return manifest
