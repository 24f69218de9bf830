"""The trained model directories that ship inside the package, used when no `--model` is given.

They are ordinary flowsr model directories (fp16 safetensors); the commands that reproduce them are in the
README ("The shipped models").
"""

from __future__ import annotations

from pathlib import Path

from flowsr.core.model_dir import ModelDirError

MODELS = Path(__file__).parent / "models"
DEFAULT_SR_MODEL = MODELS / "sr-small-x4"
DEFAULT_DEGRADATION_MODEL = MODELS / "degradation-small"


def _packaged(folder: Path, what: str) -> Path:
    if not (folder / "flowsr.json").is_file():
        raise ModelDirError(f"the packaged default {what} model is missing from {folder}; reinstall flowsr or pass --model DIR")
    return folder


def default_sr_model() -> Path:
    return _packaged(DEFAULT_SR_MODEL, "SR")


def default_degradation_model() -> Path:
    return _packaged(DEFAULT_DEGRADATION_MODEL, "degradation")
