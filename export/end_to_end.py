"""End-to-end graphs: a whole `flowsr sr` or `flowsr degrade` (untiled) as one graph, uint8 pixels in and out.

An engine user then needs no bicubic resize, padding, colour fix or rounding of their own: the graph runs the
same code as the runtime (`core.sr_model`) and rounds like the image writer. Pixels are uint8 RGB, (N, H, W, 3),
as image files hold them.

A graph is pieces, each traced by torch.onnx on its own and then joined: `pre` (pixels -> the model's padded
input), for SR `time` (pixels -> the strength the model's estimator reads off the whole LR image -> the start time
t), `core` (the model, on sides that are multiples of its stride) and `post` (crop to the input's size times the
scale, round to pixels). Traced as one, the padded sides `16 * ceil(4h / 16)` reach the model's shape
arithmetic, which torch.export cannot prove things about; piece by piece, every shape is one it can.
"""

from __future__ import annotations

import onnx
import onnx.compose
import torch
from torch import nn

from flowsr.core.sr_model import bicubic_padded, pad_to_multiple, restore_image

from .spec import ExportError, Graph, Tensor


# The uint8 tensors are cast first on the way in and last on the way out: TensorRT takes uint8 only as network
# input and output, into or out of a cast.
def to_signed(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1], as `core.images.to_tensor`."""
    return pixels.float().permute(0, 3, 1, 2) * (2.0 / 255.0) - 1.0


def to_pixels(image: torch.Tensor) -> torch.Tensor:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3), clamped and rounded, as `core.images.from_tensor`."""
    return ((image.float().clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).to(torch.uint8)


class _SRPre(nn.Module):
    def __init__(self, stride: int, scale: int):
        super().__init__()
        self.stride, self.scale = stride, scale

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return bicubic_padded(to_signed(lr), lr.shape[1] * self.scale, lr.shape[2] * self.scale, self.stride)


class _SRTime(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        return self.model.start_time(self.model.estimate_strength(to_signed(lr).to(dtype)))


class _SRCore(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        model, dtype = self.model, next(self.model.parameters()).dtype
        return restore_image(
            x,
            t,
            lambda image: model.encode(image.to(dtype)),
            model.restore,
            model.decode,
            model.manifest.color_fix_levels,
        )


class _Crop(nn.Module):
    """The padded result cropped to the pixel input's size times `scale`, as pixels."""

    def __init__(self, scale: int = 1):
        super().__init__()
        self.scale = scale

    def forward(self, y: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return to_pixels(y[:, :, : pixels.shape[1] * self.scale, : pixels.shape[2] * self.scale])


class _DegradationPre(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, hr: torch.Tensor) -> torch.Tensor:
        return pad_to_multiple(to_signed(hr), self.stride)


class _DegradationCore(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        r = ((scale.float() - 1) / (self.model.s_max - 1)).clamp(0, 1)  # core.degflow.scale_to_time, per sample
        return self.model(x.to(next(self.model.parameters()).dtype), r).float()


class EndToEnd(nn.Module):
    """The three pieces, run in torch: the reference the joined ONNX graph is verified against."""

    def __init__(self, graph: Graph, pieces: list[tuple[Graph, nn.Module]]):
        super().__init__()
        self.graph, self.pieces = graph, pieces
        self.parts = nn.ModuleList(module for _, module in pieces)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        values = {tensor.name: x for tensor, x in zip(self.graph.inputs, inputs, strict=False)}
        for graph, module in self.pieces:
            values[graph.output.name] = module(*(values[tensor.name] for tensor in graph.inputs))
        return values[self.pieces[-1][0].output.name]


def pieces(model: nn.Module, scale: int | None) -> list[tuple[Graph, nn.Module]]:
    """The end-to-end graph of an SR model (at an integer `scale`, fixed in it) or a degradation model, as pieces."""
    if model.kind == "degradation":
        return [
            (Graph("pre", "forward", (Tensor("hr", "pixels"),), Tensor("x", "image")), _DegradationPre(model.stride)),
            (
                Graph("core", "forward", (Tensor("x", "image"), Tensor("scale", "scale")), Tensor("y", "image")),
                _DegradationCore(model),
            ),
            (
                Graph("post", "forward", (Tensor("y", "image"), Tensor("hr", "pixels")), Tensor("degraded", "pixels")),
                _Crop(),
            ),
        ]
    if scale is None or scale != int(scale) or not 1 <= scale <= 8:
        raise ExportError(
            f"the end-to-end SR graph needs a whole --scale from 1 to 8 (fixed in the graph), got {scale}"
        )
    return [
        (Graph("pre", "forward", (Tensor("lr", "pixels"),), Tensor("x", "image")), _SRPre(model.stride, int(scale))),
        (Graph("time", "forward", (Tensor("lr", "pixels"),), Tensor("t", "time")), _SRTime(model)),
        (Graph("core", "forward", (Tensor("x", "image"), Tensor("t", "time")), Tensor("y", "image")), _SRCore(model)),
        (
            Graph("post", "forward", (Tensor("y", "image"), Tensor("lr", "pixels")), Tensor("sr", "pixels")),
            _Crop(int(scale)),
        ),
    ]


def join(protos: list[tuple[Graph, onnx.ModelProto]]) -> onnx.ModelProto:
    """One ONNX model of the pieces, wired by tensor name: each piece's input is an earlier piece's output of that
    name, or a graph input of that name (shared by the pieces that read it)."""
    (_, joined), produced = protos[0], {protos[0][0].output.name}
    for graph, proto in protos[1:]:
        prefix = f"{graph.name}/"  # onnxscript names nodes and values alike in every piece
        links = [(tensor.name, prefix + tensor.name) for tensor in graph.inputs if tensor.name in produced]
        joined = onnx.compose.merge_models(joined, onnx.compose.add_prefix(proto, prefix), io_map=links)
        inputs = {value.name for value in joined.graph.input}
        for tensor in graph.inputs:
            if tensor.name in produced:
                continue
            if tensor.name in inputs:  # read by an earlier piece too: one graph input
                kept = [value for value in joined.graph.input if value.name != prefix + tensor.name]
                del joined.graph.input[:]
                joined.graph.input.extend(kept)
            _rename(joined.graph, prefix + tensor.name, tensor.name)
        _rename(joined.graph, prefix + graph.output.name, graph.output.name)
        produced.add(graph.output.name)
    return joined


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new
