"""ONNX export of the DegFlow single-NFE graph: (HR image, target time r) -> degraded image at HR size.

Inputs `hr` (batch, 3, H, W) in [-1, 1] with H and W multiples of the model stride, and `r` (batch,) = the
scale's time (s - 1) / (s_max - 1); output `degraded` (batch, 3, H, W). Batch, height and width are dynamic.
The folder holds `degrader.onnx`, and `export.json` with the content hash, the spec (names, symbolic axes,
min/opt/max shapes) and the onnxruntime-vs-torch verification on a real photo at two sizes and batches.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch.export import Dim

from flowsr.core.atomic import atomic_directory
from flowsr.core.degradation_model import DegradationModel

from .onnx_export import (
    MIN_PSNR_DB,
    SPEC,
    SPEC_FORMAT,
    VERIFY_SIZES,
    ExportError,
    cache_root,
    default_opset,
    dtype_name,
    file_sha256,
    psnr,
    read_spec,
    reference_photo,
    weights_sha256,
)

FILE = "degrader.onnx"
PROFILE = {"min": (1, 64, 64), "opt": (1, 512, 512), "max": (8, 2048, 2048)}  # (batch, height, width) in pixels


def export_degrader_onnx(model: DegradationModel, out_dir: str | Path, *, dtype: torch.dtype = torch.float32,
                         opset: int | None = None, overwrite: bool = False) -> dict:
    """Export, check and verify the single-NFE graph into `out_dir` atomically; returns the written spec."""
    out_dir = Path(out_dir)
    opset = default_opset(dtype) if opset is None else opset
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; choose another folder or pass --overwrite")
    digest = weights_sha256(model, [model.s_max, list(model.knot_scales)])
    model.to(device="cpu", dtype=dtype).eval()
    stride = model.stride
    hr = torch.randn(2, 3, 2 * stride, 3 * stride, dtype=dtype)
    r = torch.tensor([0.3, 0.9])
    batch = Dim("batch")
    shapes = ({0: batch, 2: stride * Dim("height"), 3: stride * Dim("width")}, {0: batch})
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with atomic_directory(out_dir) as staging:
        path = staging / FILE
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(model, (hr, r), dynamo=True, opset_version=opset, input_names=["hr", "r"],
                                            output_names=["degraded"], dynamic_shapes=shapes, verbose=False)
        except torch.onnx.errors.OnnxExporterError as err:
            raise ExportError(f"degrader: torch.onnx could not export it: {str(err).strip().splitlines()[0]}") from None
        finally:
            logger.setLevel(level)
        program.save(path)
        onnx.checker.check_model(str(path), full_check=True)
        spec = {
            "format": SPEC_FORMAT,
            "model_sha256": digest,
            "dtype": dtype_name(dtype),
            "opset": opset,
            "stride": stride,
            "inputs": [
                {"name": "hr", "shape": ["batch", 3, f"{stride}*height", f"{stride}*width"], "dtype": dtype_name(dtype)},
                {"name": "r", "shape": ["batch"], "dtype": "float32"},
            ],
            "output": {"name": "degraded", "shape": ["batch", 3, f"{stride}*height", f"{stride}*width"], "dtype": dtype_name(dtype)},
            "profile": {key: [b, 3, h, w] for key, (b, h, w) in PROFILE.items()},
            "verification": verify_degrader(model, path),
        }
        spec["files"] = {p.name: file_sha256(p) for p in sorted(staging.iterdir())}
        (staging / SPEC).write_text(json.dumps(spec, indent=2) + "\n")
    return spec


def verify_degrader(model: DegradationModel, path: Path) -> dict:
    """onnxruntime (CPU) vs torch on the reference photo, two sizes and batches; the worst PSNR must pass."""
    import onnxruntime as ort

    dtype = next(model.parameters()).dtype
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = float("inf")
    with torch.inference_mode():
        for batch, height, width in VERIFY_SIZES:
            hr = reference_photo(batch, height, width).to(dtype)
            r = torch.linspace(0.2, 1.0, batch)
            expected = model(hr, r)
            got = session.run(None, {"hr": hr.numpy(), "r": r.numpy()})[0]
            worst = min(worst, psnr(expected.float(), torch.from_numpy(got).float()))
    if worst < MIN_PSNR_DB[dtype]:
        raise ExportError(f"degrader: onnxruntime differs from torch ({worst:.1f} dB PSNR < {MIN_PSNR_DB[dtype]:g}); the export is wrong")
    return {"psnr_db": worst, "min_psnr_db": MIN_PSNR_DB[dtype], "inputs": [f"{b}x3x{h}x{w}" for b, h, w in VERIFY_SIZES]}


def degrader_onnx_dir(model: DegradationModel, dtype: torch.dtype) -> Path:
    """The cached export of exactly these weights (content hash, dtype, opset), exported on first use."""
    digest = weights_sha256(model, [model.s_max, list(model.knot_scales)])
    opset = default_opset(dtype)
    folder = cache_root() / "onnx" / f"degrader-{digest[:16]}-{dtype_name(dtype)}-opset{opset}"
    spec = read_spec(folder)
    if not spec or spec["model_sha256"] != digest:
        export_degrader_onnx(copy.deepcopy(model), folder, dtype=dtype, opset=opset, overwrite=True)
    return folder
