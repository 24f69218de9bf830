"""ONNX export of the one-step SR model: the whole graph and its three stages, with dynamic batch and size.

Parts: `sr` (LR image at the target size -> SR image: encode, pack, one velocity evaluation at t*, Euler,
unpack, decode), and for engines per stage `encoder` (image -> normalized latent), `transformer` (the restore
stage: normalized latent -> raw HR latent, one NFE) and `decoder` (raw latent -> image). Batch, height and
width are dynamic; image sides are declared as multiples of the model stride and latent sides as multiples
of the 2x2 packing, so one file serves every tile size.

An export folder holds `<part>.onnx` (plus `<part>.onnx.data` when the weights pass the protobuf limit) and
`export.json`: the model's content hash, a copy of its manifest, each part's spec (input/output names,
symbolic axes, TensorRT min/opt/max shapes) and its verification against torch with onnxruntime on a real
photo, and the sha256 of every file. Folders are written atomically (built beside the target, then renamed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.export import Dim

from flowsr.core.atomic import atomic_directory
from flowsr.core.errors import FlowsrError
from flowsr.core.latents import PATCH
from flowsr.core.model_dir import Manifest
from flowsr.core.sr_model import OneStepSR

SPEC = "export.json"
SPEC_FORMAT = 1
DEFAULT_OPSET = 20
# ONNX's Conv (and the VAE's normalization) accepts bfloat16 only from opset 22.
BFLOAT16_OPSET = 22
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ONNX_ELEMENT_TYPES = {torch.float32: onnx.TensorProto.FLOAT, torch.float16: onnx.TensorProto.FLOAT16, torch.bfloat16: onnx.TensorProto.BFLOAT16}
# ORT vs torch on the verification photo, in dB over the reference's value range. fp32 differs only by
# summation order (~120-150 dB measured); fp16 by where each runtime rounds (~70 dB measured: ORT's CPU
# provider runs fp16 nodes that have no fp16 kernel in fp32, between inserted casts).
MIN_PSNR_DB = {torch.float32: 50.0, torch.float16: 40.0, torch.bfloat16: 30.0}
VERIFY_SIZES = ((1, 128, 128), (2, 96, 160))  # (batch, height, width) in output pixels: two sizes, two batches


class ExportError(FlowsrError):
    """An export that cannot be done or did not verify; the message says what to do."""


@dataclass(frozen=True)
class Part:
    """One exported graph: a `OneStepSR` method from one tensor to one tensor."""

    name: str
    method: str
    input: str
    output: str
    input_space: str  # "image" or "latent"
    output_space: str


PARTS = {
    "sr": Part("sr", "forward", "image", "sr_image", "image", "image"),
    "encoder": Part("encoder", "encode", "image", "latent", "image", "latent"),
    "transformer": Part("transformer", "restore", "latent", "raw_latent", "latent", "latent"),
    "decoder": Part("decoder", "decode", "raw_latent", "image", "latent", "image"),
}
STAGE_PARTS = ("encoder", "transformer", "decoder")  # what the runtime backends run


@dataclass(frozen=True)
class Geometry:
    """Tensor shapes of a model's parts; sizes are given in image pixels, multiples of `stride`."""

    stride: int
    latent_factor: int
    latent_channels: int

    @classmethod
    def of(cls, model: OneStepSR) -> Geometry:
        return cls(model.stride, model.stride // PATCH, model.vae.config.latent_channels)

    def shape(self, space: str, batch: int, height: int, width: int) -> list[int]:
        if space == "image":
            return [batch, 3, height, width]
        return [batch, self.latent_channels, height // self.latent_factor, width // self.latent_factor]

    def output_shape(self, part: Part, input_shape) -> list[int]:
        batch, _, height, width = input_shape
        factor = 1 if part.input_space == "image" else self.latent_factor
        return self.shape(part.output_space, batch, height * factor, width * factor)

    def multiple(self, space: str) -> int:
        return self.stride if space == "image" else PATCH


@dataclass(frozen=True)
class ShapeProfile:
    """TensorRT optimization profile in image pixels: any padded image up to the default VAE tile, tuned for the
    default transformer tile, batches up to 4."""

    min_side: int = 16
    opt_side: int = 1024
    max_side: int = 2048
    opt_batch: int = 1
    max_batch: int = 4

    def shapes(self, geometry: Geometry, part: Part) -> dict[str, list[int]]:
        def side(value: int) -> int:
            return max(geometry.stride, value // geometry.stride * geometry.stride)

        return {
            "min": geometry.shape(part.input_space, 1, side(self.min_side), side(self.min_side)),
            "opt": geometry.shape(part.input_space, self.opt_batch, side(self.opt_side), side(self.opt_side)),
            "max": geometry.shape(part.input_space, self.max_batch, side(self.max_side), side(self.max_side)),
        }


class _Stage(nn.Module):
    """A `OneStepSR` method as a module's forward, so torch.onnx traces exactly what the runtime calls."""

    def __init__(self, model: OneStepSR, method: str):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x)


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ExportError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


def default_opset(dtype: torch.dtype) -> int:
    return BFLOAT16_OPSET if dtype == torch.bfloat16 else DEFAULT_OPSET


def parse_parts(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in PARTS]
    if unknown or not names:
        raise ExportError(f"unknown part(s) {', '.join(unknown) or text!r}; choose from {', '.join(PARTS)}")
    return names


def weights_sha256(module: nn.Module, constants: list) -> str:
    """Content hash of the weights and of the constants baked into the graphs."""
    digest = hashlib.sha256(json.dumps(constants).encode())
    for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def model_sha256(model: OneStepSR) -> str:
    """The SR graphs bake in t*, guidance and the latent normalization besides the weights."""
    return weights_sha256(model, [model.t_star, model.guidance, model.normalization.shift, model.normalization.scale])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def reference_photo(batch: int, height: int, width: int) -> torch.Tensor:
    """skimage's astronaut resized to height x width, in [-1, 1]; every other sample is its mirror image."""
    try:
        from skimage import data, transform
    except ImportError:
        raise ExportError("verifying an export needs scikit-image (pip install scikit-image)") from None
    photo = transform.resize(data.astronaut(), (height, width), anti_aliasing=True)
    image = torch.from_numpy(photo).permute(2, 0, 1).float() * 2 - 1
    return torch.stack([image.flip(-1) if index % 2 else image for index in range(batch)])


def psnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    """PSNR in dB with the reference's value range as the peak (2 for images in [-1, 1]); finite for equal tensors."""
    reference, test = reference.double(), test.double()
    mse = max((reference - test).pow(2).mean().item(), 1e-30)
    peak = (reference.max() - reference.min()).item()
    return float(10 * np.log10(peak**2 / mse))


def export_part(model: OneStepSR, part: Part, path: Path, opset: int) -> None:
    """Trace one part with torch.onnx (dynamo) and check the file: dynamic axes, plain ops, ONNX typing."""
    geometry = Geometry.of(model)
    dtype = next(model.parameters()).dtype
    # Batch 2 and unequal sides, so that no axis is specialized to the example.
    example = torch.randn(geometry.shape(part.input_space, 2, 4 * geometry.stride, 6 * geometry.stride), dtype=dtype)
    multiple = geometry.multiple(part.input_space)
    axes = {0: Dim("batch"), 2: multiple * Dim("height"), 3: multiple * Dim("width")}
    # The exporter's deprecation warnings and its notes on absent torchvision ops are not about this graph.
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    log_level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _Stage(model, part.method).eval(),
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[part.input],
                output_names=[part.output],
                dynamic_shapes=(axes,),
                verbose=False,
            )
    except torch.onnx.errors.OnnxExporterError as err:
        raise ExportError(f"{part.name}: torch.onnx could not export it: {str(err).strip().splitlines()[0]}") from None
    finally:
        registry_log.setLevel(log_level)
    program.save(path)  # weights go to `<file>.data` when they pass the protobuf size limit
    proto = onnx.load(path, load_external_data=False)
    produced = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    if produced != opset:
        raise ExportError(f"{part.name}: torch.onnx could not convert the graph to opset {opset} (it stayed at {produced}); use 19 or 20")
    graph = proto.graph
    for tensor in (*graph.input, *graph.output):
        dims = tensor.type.tensor_type.shape.dim
        if not all(dims[axis].dim_param for axis in (0, 2, 3)):
            raise ExportError(f"{part.name}: {tensor.name} was exported with a fixed size {[d.dim_param or d.dim_value for d in dims]}")
    custom = sorted({f"{node.domain}::{node.op_type}" for node in graph.node if node.domain not in ("", "ai.onnx")})
    if custom:
        raise ExportError(f"{part.name}: the graph has non-standard ops {custom}; TensorRT and onnxruntime need plain ONNX ops")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{part.name}: invalid ONNX at opset {opset}: {str(err).splitlines()[0]}") from None


def verify_part(model: OneStepSR, part: Part, path: Path) -> dict:
    """Run the exported part with onnxruntime (CPU) and torch on the reference photo at two sizes and batches.

    Returns the worst PSNR, or the reason onnxruntime's CPU provider cannot run the graph (bfloat16).
    """
    from flowsr.runtime.backend_onnxruntime import OnnxPart, OnnxRuntimeUnavailable  # that module imports this one

    dtype = next(model.parameters()).dtype
    try:
        session = OnnxPart(path, part, Geometry.of(model), torch.device("cpu"), dtype)
    except OnnxRuntimeUnavailable as err:
        return {"skipped": str(err)}
    worst, shapes = float("inf"), []
    with torch.inference_mode():
        for batch, height, width in VERIFY_SIZES:
            image = reference_photo(batch, height, width).to(dtype)
            x = image
            if part.input_space == "latent":
                x = model.encode(image)
                if part.method == "decode":
                    x = model.restore(x)
            expected = getattr(model, part.method)(x)
            worst = min(worst, psnr(expected, session(x)))
            shapes.append("x".join(map(str, x.shape)))
    if worst < MIN_PSNR_DB[dtype]:
        raise ExportError(
            f"{part.name}: onnxruntime differs from torch ({worst:.1f} dB < {MIN_PSNR_DB[dtype]:g} dB on {', '.join(shapes)}); "
            "the export is not trustworthy, nothing was written"
        )
    return {"psnr_db": round(worst, 2), "min_psnr_db": MIN_PSNR_DB[dtype], "inputs": shapes, "provider": "CPUExecutionProvider"}


def export_onnx(
    model: OneStepSR,
    out_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    parts: tuple[str, ...] = tuple(PARTS),
    opset: int | None = None,
    manifest: Manifest | None = None,
    profile: ShapeProfile = ShapeProfile(),
    overwrite: bool = False,
) -> dict:
    """Export, check and verify `parts` of `model` into `out_dir` atomically; returns the written spec.

    The content hash is taken from `model` as given, then `model` is cast to `dtype` in place (on CPU).
    """
    out_dir = Path(out_dir)
    opset = default_opset(dtype) if opset is None else opset
    if dtype == torch.bfloat16 and opset < BFLOAT16_OPSET:
        raise ExportError(f"bfloat16 needs --opset {BFLOAT16_OPSET} or newer (ONNX Conv takes bfloat16 from opset 22)")
    if not 18 <= opset <= 23:
        raise ExportError(f"opset {opset} is not supported; use 19 or 20 (22 for bfloat16)")
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; choose another folder or pass --overwrite")
    digest = model_sha256(model)
    model.to(device="cpu", dtype=dtype).eval()
    geometry = Geometry.of(model)
    with atomic_directory(out_dir) as staging:
        spec_parts = {}
        for name in parts:
            part = PARTS[name]
            export_part(model, part, staging / f"{name}.onnx", opset)
            spec_parts[name] = {
                "file": f"{name}.onnx",
                "method": part.method,
                "input": _tensor_spec(part.input, part.input_space, geometry, dtype) | profile.shapes(geometry, part),
                "output": _tensor_spec(part.output, part.output_space, geometry, dtype),
                "verification": verify_part(model, part, staging / f"{name}.onnx"),
            }
        spec = {
            "format": SPEC_FORMAT,
            "model_sha256": digest,
            "dtype": dtype_name(dtype),
            "opset": opset,
            "geometry": dataclasses.asdict(geometry),
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
            "manifest": dataclasses.asdict(manifest) if manifest else None,
            "parts": spec_parts,
            "files": {path.name: file_sha256(path) for path in sorted(staging.iterdir())},
        }
        (staging / SPEC).write_text(json.dumps(spec, indent=2) + "\n")
    return spec


def _tensor_spec(name: str, space: str, geometry: Geometry, dtype: torch.dtype) -> dict:
    multiple = geometry.multiple(space)
    channels = 3 if space == "image" else geometry.latent_channels
    return {"name": name, "dtype": dtype_name(dtype), "shape": ["batch", channels, f"{multiple}*height", f"{multiple}*width"]}


def read_spec(folder: Path) -> dict | None:
    """The export spec of a folder, or None when there is no complete export there."""
    try:
        spec = json.loads((Path(folder) / SPEC).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if spec.get("format") != SPEC_FORMAT or not all((Path(folder) / name).is_file() for name in spec.get("files", {})):
        return None
    return spec


def cache_root() -> Path:
    return Path(os.environ.get("FLOWSR_CACHE") or Path.home() / ".cache" / "flowsr").expanduser()


def onnx_dir_for(model: OneStepSR, dtype: torch.dtype, opset: int | None = None, parts: tuple[str, ...] = STAGE_PARTS) -> Path:
    """Where the runtime finds `parts` of this exact model: `MODEL_DIR/onnx/<dtype>` when an export of the same
    weights is there, otherwise a cache folder keyed by content hash, dtype and opset, exported on first use.
    """
    opset = default_opset(dtype) if opset is None else opset
    digest = model_sha256(model)

    def usable(folder: Path) -> bool:
        spec = read_spec(folder)
        return bool(spec) and spec["model_sha256"] == digest and spec["opset"] == opset and set(parts) <= set(spec["parts"])

    # diffusers records where `from_pretrained` loaded each component: the model directory.
    model_dir = model.transformer.config.get("_name_or_path")
    if model_dir and usable(Path(model_dir) / "onnx" / dtype_name(dtype)):
        return Path(model_dir) / "onnx" / dtype_name(dtype)
    cached = cache_root() / "onnx" / f"{digest[:16]}-{dtype_name(dtype)}-opset{opset}"
    if not usable(cached):
        export_onnx(model, cached, dtype=dtype, parts=parts, opset=opset, overwrite=True)
    return cached
