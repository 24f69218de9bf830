"""TensorRT engines built from the exported ONNX graphs of either model (TensorRT 10 Python API), cached on disk.

One engine per graph with one optimization profile: the min/opt/max shapes of each input in the export spec. The
precision is the ONNX dtype: float32 graphs build in float32 (TF32 off); float16 and bfloat16 graphs build
strongly typed, so the engine keeps exactly the graph's types; int8 graphs (QDQ, `export onnx --dtype int8`) build
with INT8 on, explicitly quantized: the graph's own scales, no calibrator, float32 outside its Q/DQ pairs. Builds
share a timing cache file per TensorRT version and GPU, so tactics timed once are not timed again. Engines live in
`$FLOWSR_CACHE/tensorrt/` (default `~/.cache/flowsr`), keyed by the graph's ONNX files' sha256, the shapes, the
precision, the TensorRT version and the GPU name: the same inputs never build twice, and another GPU or TensorRT
version builds its own.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from flowsr.core.atomic import atomic_file
from flowsr.core.errors import BackendError

from .spec import engine_cache_dir, read_spec


class TensorRTUnavailable(BackendError):
    """No TensorRT or no GPU here; the message says which and what to do."""


class EngineBuildError(BackendError):
    """TensorRT could not parse or build a graph."""


def require_tensorrt():
    """The tensorrt module, once a CUDA GPU and TensorRT 10 are known to be present."""
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(
            "TensorRT needs an NVIDIA GPU and none is visible here (torch.cuda.is_available() is False)"
        )
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable("TensorRT is not installed; pip install 'flowsr[gpu]' (tensorrt>=10)") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} is too old; flowsr builds engines with TensorRT 10 or newer"
        )
    return trt


def build_engine(onnx_path: Path, profile_shapes: dict[str, dict], dtype: str, timing_cache: Path) -> bytes:
    """Parse the ONNX file, build a serialized engine for one profile (min/opt/max of each input by name), and
    save the updated timing cache."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = dtype in ("float16", "bfloat16")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the path, so external weight files are found
        errors = [str(parser.get_error(index)) for index in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {errors[0] if errors else 'no error reported'}")
    config = builder.create_builder_config()
    if not strongly_typed:
        config.clear_flag(trt.BuilderFlag.TF32)  # float32 means float32: the engine matches what onnxruntime verified
    if dtype == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for name, shapes in profile_shapes.items():
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path} (its log above says why)")
    with atomic_file(timing_cache) as file:
        file.write(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def profile_shapes(entry: dict) -> dict[str, dict]:
    """The optimization profile of one graph of an export spec: {input name: {"min", "opt", "max"}}."""
    return {tensor["name"]: {key: tensor[key] for key in ("min", "opt", "max")} for tensor in entry["inputs"]}


def engine_path(onnx_dir: Path, graph: str) -> Path:
    """Where the engine of `graph` of this export lives for this GPU and TensorRT version (built or not)."""
    trt = require_tensorrt()
    spec = _spec(onnx_dir, graph)
    # graph + external weights
    files = {name: sha for name, sha in spec["files"].items() if name.startswith(f"{graph}.onnx")}
    identity = [
        files,
        profile_shapes(spec["graphs"][graph]),
        spec["dtype"],
        trt.__version__,
        torch.cuda.get_device_name(),
    ]
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    return engine_cache_dir() / f"{spec['kind']}-{graph}-{spec['dtype']}-{key}.engine"


def ensure_engine(onnx_dir: Path, graph: str) -> Path:
    """The cached engine of `graph`, built first if this GPU and TensorRT version have none for these inputs."""
    trt = require_tensorrt()
    path = engine_path(onnx_dir, graph)
    if not path.is_file():
        spec = _spec(onnx_dir, graph)
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-")
        timing_cache = path.parent / f"timing-{trt.__version__}-{gpu}.cache"
        entry = spec["graphs"][graph]
        engine = build_engine(onnx_dir / entry["file"], profile_shapes(entry), spec["dtype"], timing_cache)
        with atomic_file(path) as file:
            file.write(engine)
    return path


def _spec(onnx_dir: Path, graph: str) -> dict:
    spec = read_spec(onnx_dir)
    if spec is None or graph not in spec["graphs"]:
        raise EngineBuildError(
            f"{onnx_dir} has no complete ONNX export of the {graph} graph; run `flowsr export onnx` first"
        )
    return spec
