"""pytest-benchmark set-up: machine info names the device and versions; CUDA is synchronized around timed calls."""

import os

if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Set before torch loads its OpenMP runtime. Its threads spin-wait after each parallel region by default, and the
# peer (ncnn) runs its own OpenMP runtime in this process: its threads then shared the cores with spinning ones,
# and on 2 cores the peer's time doubled once torch had run. Passive waiting makes each case's time its own.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from device_key import baseline_key, device_name, latency_versions, module_version  # noqa: E402 (beside this conftest, on sys.path)

from flowsr.training.loop import native_cpu_bfloat16  # noqa: E402


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["device"] = device_name()
    machine_info["cpu_native_bfloat16"] = native_cpu_bfloat16()
    machine_info["omp_wait_policy"] = os.environ["OMP_WAIT_POLICY"]
    machine_info["torch"] = torch.__version__
    machine_info["cuda"] = torch.version.cuda or "none"
    for module in ("triton", "onnxruntime", "diffusers", "tensorrt"):
        machine_info[module] = module_version(module)
    machine_info["baseline_key"] = baseline_key(machine_info["device"], latency_versions())


@pytest.fixture
def timed(benchmark):
    """Benchmark a callable with CUDA synchronized after each call, so GPU time is what is measured."""

    def run(fn, *args, rounds: int | None = None, **kwargs):
        def call():
            out = fn(*args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return out

        call()  # warm-up: lazy init, autotuning, compilation
        if rounds is None:
            return benchmark(call)
        return benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)

    return run
