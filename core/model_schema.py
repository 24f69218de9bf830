"""What a model directory may hold, checked before any weight is loaded: the manifest's fields by type and bounds,
each part's diffusers config against the architecture of the preset it names, and the stored prompt embeddings.

A directory that passes builds exactly the preset's modules (no layer count or width from the file is trusted),
so memory and time are bounded by the preset family; anything else is one ModelDirError naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from .errors import ModelDirError

MAX_CONFIG_BYTES = 1 << 20  # a diffusers config.json is a few KB
# Calibration and tiling hints of a diffusers config, not architecture: free to differ from the preset.
FREE_CONFIG_KEYS = frozenset({"scaling_factor", "shift_factor", "sample_size", "force_upcast"})


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_TYPES = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (
        lambda v: v is None or (isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)),
        "a sha256 hex digest or null",
    ),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (_is_number, "a finite number"),
    "float | None": (lambda v: v is None or _is_number(v), "a finite number or null"),
    "list[float]": (lambda v: isinstance(v, list) and all(_is_number(x) for x in v), "a list of finite numbers"),
    "list[float] | None": (
        lambda v: v is None or (isinstance(v, list) and all(_is_number(x) for x in v)),
        "a list of finite numbers or null",
    ),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "dict | None": (lambda v: v is None or isinstance(v, dict), "an object or null"),
}


def check_field_types(manifest, path: Path) -> None:
    """Every dataclass field of a manifest has the JSON type its annotation names (NaN and Infinity are refused)."""
    for spec in dataclasses.fields(manifest):
        accepts, expected = _TYPES[spec.type]
        value = getattr(manifest, spec.name)
        if not accepts(value):
            raise ModelDirError(
                f"{path}: {spec.name} must be {expected}, got {value!r:.40}; re-create the model directory"
            )


def check_range(path: Path, name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    if not (low < value if low_open else low <= value) or value > high:
        bracket = "(" if low_open else "["
        raise ModelDirError(
            f"{path}: {name} {value!r} is outside {bracket}{low:g}, {high:g}]; re-create the model directory"
        )


def read_config(folder: Path, name: str = "config.json") -> dict:
    """A part's config file (diffusers' config.json, peft's adapter_config.json): present, small, UTF-8 JSON, an
    object."""
    path = folder / name
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelDirError(
                f"{path} is {path.stat().st_size} bytes, not a config file; re-create the model directory"
            )
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelDirError(f"{folder} has no {name}; the model directory is incomplete, re-create it") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelDirError(
            f"{path} is unreadable or not JSON ({type(err).__name__}); re-create the model directory"
        ) from None
    if not isinstance(config, dict):
        raise ModelDirError(f"{path} is not a JSON object; re-create the model directory")
    return config


def architecture_mismatch(config, expected: dict) -> tuple[str, object, object] | None:
    """The first architecture key of a preset's config that `config` (a dict or a diffusers config) does not
    match, as (key, found, needed); None when it builds the preset's module."""
    for key, value in expected.items():
        found = config.get(key)
        if key not in FREE_CONFIG_KEYS and (list(found) if isinstance(found, (list, tuple)) else found) != value:
            return key, found, value
    return None


def check_architecture(folder: Path, expected: dict, preset: str, class_name: str | None = None) -> None:
    """The part's config builds the preset's module: every architecture key of the preset has its value."""
    config = read_config(folder)
    if class_name is not None and config.get("_class_name") != class_name:
        raise ModelDirError(
            f"{folder}/config.json names class {config.get('_class_name')!r:.40}, "
            f"but preset {preset!r} uses {class_name}"
        )
    mismatch = architecture_mismatch(config, expected)
    if mismatch is not None:
        key, found, value = mismatch
        raise ModelDirError(
            f"{folder}/config.json has {key}={found!r:.60}, but preset {preset!r} needs {value!r}; "
            "re-create the model directory"
        )


def check_embeddings(path: Path, embeddings: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """The stored prompt conditioning: the named tensors, of the preset's shapes, floating point and finite."""
    for key, shape in shapes.items():
        tensor = embeddings.get(key)
        if tensor is None:
            raise ModelDirError(f"{path} lacks {key}; re-create the model directory")
        if tuple(tensor.shape) != shape or not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise ModelDirError(
                f"{path}: {key} must be a finite float tensor of shape {shape}, "
                f"got {tensor.dtype} {tuple(tensor.shape)}"
            )
