"""Export specs: what each model's graphs take and give, and where exports and engines are kept.

Standard library only, so any tool (an engine builder, a serving process) reads a spec without torch or onnx.
One spec per model kind, as in TensorRT's Diffusion demo: each graph's input and output names, their symbolic
axes, and the min/opt/max shapes of its optimization profile. An export folder holds `<graph>.onnx` (plus
`<graph>.onnx.data` when the weights pass the protobuf limit) and `export.json`, this spec filled in for one
model, dtype and opset, with each graph's verification against torch and the sha256 of every file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from flowsr.core.errors import FlowsrError, SettingsError

SPEC_FILE = "export.json"
SPEC_FORMAT = 2

DTYPES = ("float32", "float16", "bfloat16", "int8")
QUANTIZED = ("int8",)  # QDQ graphs (export/quantize.py): float32 inputs and outputs, quantized inside
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
ONNX_ELEMENT_TYPES = {"float32": 1, "uint8": 2, "float16": 10, "bfloat16": 16}  # onnx.TensorProto's numbers
# onnxruntime vs torch on the verification photo, in dB over the reference's value range. float32 differs only by
# summation order (~120-150 dB measured); float16 by where each runtime rounds (~70 dB measured: onnxruntime's CPU
# provider runs float16 nodes that have no float16 kernel in float32, between inserted casts).
MIN_PSNR_DB = {"float32": 50.0, "float16": 40.0, "bfloat16": 30.0, "int8": 35.0}
DEFAULT_OPSET = 20
BFLOAT16_OPSET = 22  # ONNX's Conv (and the VAE's normalization) take bfloat16 from opset 22
OPSETS = range(18, 24)


class ExportError(FlowsrError):
    """An export that cannot be done or did not verify; the message says what to do."""


def dtype_name(value) -> str:
    """The canonical name of a dtype given as a name ("float16"), an alias ("fp16") or a torch.dtype."""
    name = str(value).removeprefix("torch.")
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise SettingsError(f"unknown dtype {str(value)!r:.40}; use one of {', '.join(DTYPES)}")
    return name


def checked_opset(dtype: str, opset: int | None) -> int:
    """The opset to export `dtype` graphs at: the default for the dtype, or `opset` if it can hold them."""
    if opset is None:
        return BFLOAT16_OPSET if dtype == "bfloat16" else DEFAULT_OPSET
    if dtype == "bfloat16" and opset < BFLOAT16_OPSET:
        raise ExportError(f"bfloat16 needs --opset {BFLOAT16_OPSET} or newer (ONNX Conv takes bfloat16 from opset 22)")
    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported; use 19 or 20 ({BFLOAT16_OPSET} for bfloat16)")
    return opset


@dataclass(frozen=True)
class Geometry:
    """A model's tensor shapes from four numbers. Image sides are multiples of `stride`; a latent has
    `latent_channels` channels at 1/`latent_factor` of the image size, sides multiples of `latent_multiple`."""

    stride: int
    latent_factor: int = 1
    latent_channels: int = 0
    latent_multiple: int = 1

    def shape(self, space: str, batch: int, height: int, width: int) -> list[int]:
        """The shape of a tensor of `space` for an image of height x width pixels."""
        if space in ("image", "lr_image"):
            return [batch, 3, height, width]
        if space == "latent":
            return [batch, self.latent_channels, height // self.latent_factor, width // self.latent_factor]
        if space == "pixels":
            return [batch, height, width, 3]
        return [batch]  # "time", "scale": one value per sample

    def image_size(self, space: str, shape) -> tuple[int, int]:
        """(height, width) in image pixels of a tensor of `space` (image or latent)."""
        factor = self.latent_factor if space == "latent" else 1
        return shape[2] * factor, shape[3] * factor

    def symbolic(self, space: str) -> list:
        if space in ("time", "scale"):
            return ["batch"]
        if space == "pixels":
            return ["batch", "height", "width", 3]
        if space == "lr_image":
            return ["batch", 3, "height", "width"]
        multiple = self.stride if space == "image" else self.latent_multiple
        channels = 3 if space == "image" else self.latent_channels
        return ["batch", channels, f"{multiple}*height", f"{multiple}*width"]


def geometry_of(model) -> Geometry:
    """The geometry of an SR model (`OneStepSR`) or a degradation model, from its attributes."""
    if model.kind == "sr":
        return Geometry(model.stride, model.stride // model.packing, model.vae.config.latent_channels, model.packing)
    return Geometry(model.stride)


@dataclass(frozen=True)
class Tensor:
    """A graph input or output. "image" (NCHW in [-1, 1], sides multiples of the stride), "lr_image" (the same at
    any size: an LR input as it comes) and "latent" tensors have the export's dtype; "pixels" are uint8 RGB images
    (NHWC, as files hold them); "time" and "scale" are float32, one value per sample."""

    name: str
    space: str

    def dtype(self, export_dtype: str) -> str:
        floats = "float32" if export_dtype in QUANTIZED else export_dtype
        return {"time": "float32", "scale": "float32", "pixels": "uint8"}.get(self.space, floats)


@dataclass(frozen=True)
class Graph:
    """One exported graph: a model method from its inputs to one output, batch, height and width dynamic."""

    name: str
    method: str
    inputs: tuple[Tensor, ...]
    output: Tensor

    def output_shape(self, geometry: Geometry, input_shape) -> list[int]:
        """The output's shape for the first input's shape."""
        height, width = geometry.image_size(self.inputs[0].space, input_shape)
        return geometry.shape(self.output.space, input_shape[0], height, width)


@dataclass(frozen=True)
class Profile:
    """A TensorRT optimization profile in image pixels (rounded to the stride): every graph input gets the
    min/opt/max shapes of these sides and batches."""

    min_side: int
    opt_side: int
    max_side: int
    opt_batch: int
    max_batch: int

    def shapes(self, geometry: Geometry, graph: Graph) -> dict[str, dict[str, list[int]]]:
        def side(value: int) -> int:  # image and latent sides are multiples of the stride; pixels are any size
            return (
                value
                if graph.inputs[0].space in ("pixels", "lr_image")
                else max(geometry.stride, value // geometry.stride * geometry.stride)
            )

        sizes = {
            "min": (1, self.min_side),
            "opt": (self.opt_batch, self.opt_side),
            "max": (self.max_batch, self.max_side),
        }
        return {
            tensor.name: {
                key: geometry.shape(tensor.space, batch, side(value), side(value))
                for key, (batch, value) in sizes.items()
            }
            for tensor in graph.inputs
        }


@dataclass(frozen=True)
class ModelSpec:
    """Everything exported of one model kind. `runtime_graphs` are what the backends run, in pipeline order;
    `end_to_end` is the whole command in one graph, uint8 pixels in and out, with its own profile."""

    kind: str
    graphs: dict[str, Graph]
    runtime_graphs: tuple[str, ...]
    profile: Profile
    end_to_end: Graph
    end_to_end_profile: Profile

    def graph(self, name: str) -> Graph:
        return self.end_to_end if name == self.end_to_end.name else self.graphs[name]

    def has_end_to_end(self, graphs) -> bool:
        return self.end_to_end.name in graphs

    def profile_for(self, graph: Graph) -> Profile:
        return self.end_to_end_profile if graph == self.end_to_end else self.profile

    def parse_graphs(self, text: str) -> tuple[str, ...]:
        """A comma-separated list of graph names, checked."""
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in names if name not in self.graphs]
        if unknown or not names:
            raise ExportError(
                f"unknown graph(s) {', '.join(unknown) or text!r:.60} for a {self.kind} model; "
                f"choose from {', '.join(self.graphs)}"
            )
        return names


SR = ModelSpec(
    kind="sr",
    graphs={
        # The whole model: an LR image already resized to the output size and its start time t -> the SR image.
        "sr": Graph("sr", "forward", (Tensor("image", "image"), Tensor("t", "time")), Tensor("sr_image", "image")),
        # The LR image as it comes (whole, any size) -> its degradation strength in [0, 1]; the runtime turns the
        # strength into the start time t with the model's table (`OneStepSR.start_time`).
        "estimator": Graph("estimator", "estimate_strength", (Tensor("lr", "lr_image"),), Tensor("strength", "time")),
        "encoder": Graph("encoder", "encode", (Tensor("image", "image"),), Tensor("latent", "latent")),
        # The restore stage: normalized LR latent and start time t -> raw HR latent, one velocity evaluation and the
        # Euler step.
        "transformer": Graph(
            "transformer", "restore", (Tensor("latent", "latent"), Tensor("t", "time")), Tensor("raw_latent", "latent")
        ),
        "decoder": Graph("decoder", "decode", (Tensor("raw_latent", "latent"),), Tensor("image", "image")),
    },
    runtime_graphs=("estimator", "encoder", "transformer", "decoder"),
    # Any padded image up to the default VAE tile, tuned for the default transformer tile, batches up to 4.
    profile=Profile(min_side=16, opt_side=1024, max_side=2048, opt_batch=1, max_batch=4),
    # `flowsr sr` untiled: LR pixels -> bicubic x scale (fixed at export) -> pad -> encode -> restore -> decode ->
    # colour fix -> crop -> SR pixels.
    end_to_end=Graph("end_to_end", "end_to_end", (Tensor("lr", "pixels"),), Tensor("sr", "pixels")),
    # LR sides: at least 16 px (an output of at least one stride), up to 512 px (2048 px out at x4).
    end_to_end_profile=Profile(min_side=16, opt_side=256, max_side=512, opt_batch=1, max_batch=4),
)
DEGRADATION = ModelSpec(
    kind="degradation",
    graphs={
        # HR image and target time r = (s - 1) / (s_max - 1) -> the degraded image at HR size, one evaluation.
        "degrader": Graph(
            "degrader", "forward", (Tensor("hr", "image"), Tensor("r", "time")), Tensor("degraded", "image")
        ),
    },
    runtime_graphs=("degrader",),
    # Tiles of the default 512 px, a batch of scales per call.
    profile=Profile(min_side=64, opt_side=512, max_side=2048, opt_batch=1, max_batch=8),
    # `flowsr degrade` untiled: HR pixels and a scale in [1, s_max] per sample -> the degraded pixels at HR size.
    end_to_end=Graph(
        "end_to_end", "end_to_end", (Tensor("hr", "pixels"), Tensor("scale", "scale")), Tensor("degraded", "pixels")
    ),
    end_to_end_profile=Profile(min_side=64, opt_side=512, max_side=2048, opt_batch=1, max_batch=8),
)
SPECS = {spec.kind: spec for spec in (SR, DEGRADATION)}


def read_spec(folder: str | Path) -> dict | None:
    """The spec of an export folder, or None when there is no complete export of this format there."""
    folder = Path(folder)
    try:
        spec = json.loads((folder / SPEC_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        return None
    if not all((folder / name).is_file() for name in spec.get("files", {})):
        return None
    return spec


def cache_root() -> Path:
    """Where exports and engines made on first use are kept: $FLOWSR_CACHE, default ~/.cache/flowsr."""
    return Path(os.environ.get("FLOWSR_CACHE") or Path.home() / ".cache" / "flowsr").expanduser()


def export_name(dtype: str, end_to_end: bool = False, scale: int | None = None) -> str:
    """An export folder's name: `<dtype>` for the graphs the runtime runs, `end-to-end-<dtype>` for a
    degradation model's end-to-end graph and `end-to-end-x<scale>-<dtype>` for an SR model's."""
    if not end_to_end:
        return dtype
    return f"end-to-end-x{scale}-{dtype}" if scale else f"end-to-end-{dtype}"


def onnx_cache_dir(kind: str, content_sha256: str, name: str, opset: int) -> Path:
    return cache_root() / "onnx" / f"{kind}-{content_sha256[:16]}-{name}-opset{opset}"


def find_export(
    kind: str,
    content_sha256: str,
    dtype: str,
    opset: int,
    graphs,
    scale: int | None = None,
    model_dir: str | Path | None = None,
) -> Path | None:
    """A complete export of `graphs` of exactly this content: the model directory's own (`MODEL_DIR/onnx/<name>`)
    or the cache's; None when there is none yet. Reads only spec files, so serving needs no onnx package."""
    name = export_name(dtype, end_to_end=scale is not None or "end_to_end" in graphs, scale=scale)
    candidates = ([Path(model_dir) / "onnx" / name] if model_dir is not None else []) + [
        onnx_cache_dir(kind, content_sha256, name, opset)
    ]
    for folder in candidates:
        spec = read_spec(folder)
        if (
            spec
            and spec["content_sha256"] == content_sha256
            and spec["opset"] == opset
            and spec.get("scale") == scale
            and set(graphs) <= set(spec["graphs"])
        ):
            return folder
    return None


def engine_cache_dir() -> Path:
    return cache_root() / "tensorrt"
