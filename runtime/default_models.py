"""The trained model directories that ship inside the package, used when no `--model` is given.

They are ordinary flowsr model directories (fp16 safetensors); each has a model card (README.md beside its
manifest) with the data, the recipe that reproduces it and its measured quality.
"""

from __future__ import annotations

from pathlib import Path

from flowsr.core.model_dir import ModelDirError

MODELS = Path(__file__).parent / "models"
DEFAULT_SR_MODEL = MODELS / "sr-small-x4"
DEFAULT_DEGRADATION_MODEL = MODELS / "degradation-small"


def _packaged(folder: Path, missing: str) -> Path:
    if not (folder / "flowsr.json").is_file():
        raise ModelDirError(missing)
    return folder


def default_sr_model() -> Path:
    return _packaged(
        DEFAULT_SR_MODEL,
        f"the packaged SR model is missing from {DEFAULT_SR_MODEL}; reinstall flowsr or pass --model DIR",
    )


def default_degradation_model() -> Path:
    return _packaged(
        DEFAULT_DEGRADATION_MODEL,
        f"the packaged degradation model is missing from {DEFAULT_DEGRADATION_MODEL}; "
        "reinstall flowsr or pass --model DIR",
    )
