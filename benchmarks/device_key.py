"""Which device and versions a latency number belongs to: the one place benchmarks/conftest.py (machine info of
every run) and benchmarks/regress.py (which baseline to compare against) take them from.

A baseline key names the device and the versions that change latency: torch and onnxruntime everywhere, and on a
GPU the CUDA and TensorRT versions too. It is a filesystem-safe slug, e.g.
`cpu-amd-epyc-x2_torch-2.13.0-cpu_onnxruntime-1.32.0`.

    python benchmarks/device_key.py            # this machine's key
    python benchmarks/device_key.py --device   # its device slug alone (names result files)
    python benchmarks/device_key.py --json     # device and versions in full
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys

import torch


def module_version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:
        return "absent"


def cpu_model() -> str:
    """The CPU's model name (Linux reports it in /proc/cpuinfo; platform.processor() there is only "x86_64")."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU: {cpu_model()} x{os.cpu_count()}"


def latency_versions() -> dict[str, str]:
    """The versions a baseline is only valid for."""
    versions = {"torch": torch.__version__, "onnxruntime": module_version("onnxruntime")}
    if torch.cuda.is_available():
        versions |= {"cuda": torch.version.cuda or "none", "tensorrt": module_version("tensorrt")}
    return versions


def slug(text: str) -> str:
    """Lower case; every run of characters other than a-z, 0-9 and '.' becomes one '-'."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "unknown"


def baseline_key(device: str, versions: dict[str, str]) -> str:
    return "_".join([slug(device)] + [f"{name}-{slug(version)}" for name, version in versions.items()])


def describe(device: str, versions: dict[str, str]) -> str:
    """One readable line: `CPU: AMD EPYC x2 (torch 2.13.0+cpu, onnxruntime 1.32.0)`."""
    return f"{device} ({', '.join(f'{name} {version}' for name, version in versions.items())})"


def this_machine() -> dict:
    """Device, latency versions and key of this machine, as stored beside a baseline."""
    device, versions = device_name(), latency_versions()
    return {"key": baseline_key(device, versions), "device": device, "versions": versions}


if __name__ == "__main__":
    machine = this_machine()
    if "--json" in sys.argv[1:]:
        print(json.dumps(machine, indent=2))
    elif "--device" in sys.argv[1:]:
        print(slug(machine["device"]))
    else:
        print(machine["key"])
