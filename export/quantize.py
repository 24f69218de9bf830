"""INT8 graphs: static QDQ quantization of an SR model's exported velocity graph, calibrated on photos.

QDQ (a QuantizeLinear/DequantizeLinear pair around each quantized op) is the form onnxruntime runs with integer
kernels (VNNI, AMX) and TensorRT takes as explicit INT8. Only the velocity network's convolutions are quantized:
weights per output channel (int8), activations per tensor (uint8), ranges from min/max over the calibration
photos' latents. The first and the last convolution stay in float: the first reads the latent, the last writes the
velocity that the Euler step adds to it; keeping both in float measurably narrowed int8's loss of PSNR gain on the
default model's validation photos (`benchmarks/results/sr-small-x4-int8.json`). The small preset's
autoencoder is a lossless change of basis that quantization would make lossy, and the time embedding, the FiLM
modulation, the activations and the Euler step are cheap; they stay in float32, and so do the graphs' inputs and
outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from flowsr.core.images import ImageError, find_images, read_image, to_unit_float
from flowsr.core.sr_model import bicubic_padded

from .spec import ExportError

QUANTIZED_GRAPHS = ("transformer",)  # of an SR model's runtime graphs
CALIBRATION_SCALE = 4  # the photos are LR inputs, upscaled by this
CALIBRATION_SIDE = 128  # each photo's central crop, at most this many LR pixels a side
MAX_CALIBRATION_PHOTOS = 64


def calibration_photos(folder: str | Path) -> list[np.ndarray]:
    """Up to MAX_CALIBRATION_PHOTOS readable photos of `folder` (sorted, recursive) as RGB central crops."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"--calibrate {folder} is not a folder; give a folder of photos like the ones you will serve")
    photos = []
    for path in find_images(folder):
        try:
            rgb = read_image(path, max_pixels=100_000_000).rgb
        except ImageError:
            continue  # not a photo: calibration takes the others
        top = max(0, (rgb.shape[0] - CALIBRATION_SIDE) // 2)
        left = max(0, (rgb.shape[1] - CALIBRATION_SIDE) // 2)
        photos.append(rgb[top : top + CALIBRATION_SIDE, left : left + CALIBRATION_SIDE])
        if len(photos) == MAX_CALIBRATION_PHOTOS:
            break
    if not photos:
        raise ExportError(f"--calibrate {folder} holds no readable photo; give a folder of photos")
    return photos


@torch.inference_mode()
def calibration_inputs(model: nn.Module, photos: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The velocity graph's inputs for each photo as an LR input at x4: its bicubic upscale, padded, encoded, and a
    start time: the one its estimated strength gives, or, for every second photo, that of the strength at the far
    end of the range (clean or heavy), so the activation ranges cover every start time the model serves."""
    inputs = []
    for index, rgb in enumerate(photos):
        lr = torch.from_numpy(to_unit_float(rgb)).permute(2, 0, 1)[None] * 2 - 1
        height, width = lr.shape[2] * CALIBRATION_SCALE, lr.shape[3] * CALIBRATION_SCALE
        latent = model.encode(bicubic_padded(lr, height, width, model.stride)).float().numpy()
        strength = model.estimate_strength(lr) if index % 2 == 0 else torch.full((1,), float(index % 4 == 1))
        inputs.append({"latent": latent, "t": model.start_time(strength).float().numpy()})
    return inputs


def quantize_graph(float_path: Path, int8_path: Path, samples: list[dict[str, np.ndarray]]) -> None:
    """Write the QDQ int8 form of the float32 graph at `float_path`, calibrated on `samples` of its inputs (after
    onnxruntime's pre-processing: shape inference and graph optimization, as its quantizer expects)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = float_path.with_name(f"{float_path.stem}.prepared.onnx")
    quant_pre_process(str(float_path), str(prepared))
    convs = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type == "Conv"]
    keep_float = [convs[0], convs[-1]] if len(convs) > 2 else []

    class Samples(CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(samples)

        def get_next(self):
            sample = next(self.remaining, None)
            return sample

    quantize_static(
        str(prepared),
        str(int8_path),
        Samples(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["Conv"],
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=keep_float,
    )
    prepared.unlink()
