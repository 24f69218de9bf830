"""The latency-regression workflow of benchmarks/regress.py, on a throwaway benchmark that sleeps for a set time.

Record a baseline, rerun unchanged (passes), rerun slowed (fails); baselines of another device or other versions
are refused in one line with exit code 2; the within-run ratio check fails on a run that breaks a ratio.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
COMMAND = REPO / "benchmarks" / "regress.py"


def load(name: str):
    """A module of benchmarks/ (no package), without putting that folder on sys.path, where its test_*.py files
    would shadow the test modules of the same names here."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


device_key = load("device_key")  # before regress.py, which imports it
regress = load("regress")

SLEEP_BENCHMARK = textwrap.dedent(
    """
    import os
    import time


    def test_sleep(benchmark):
        benchmark.pedantic(time.sleep, args=(float(os.environ["FLOWSR_TEST_SLEEP_MS"]) / 1e3,), rounds=5, iterations=1)
    """
)


@pytest.fixture
def sleep_benchmark(tmp_path) -> Path:
    path = tmp_path / "bench" / "test_sleep_bench.py"
    path.parent.mkdir()
    path.write_text(SLEEP_BENCHMARK)
    return path


def foreign_baseline(baselines: Path, device: str, versions: dict[str, str]) -> Path:
    """A recorded baseline of another machine, laid out as `regress.py --save` leaves one."""
    directory = baselines / device_key.baseline_key(device, versions)
    (directory / "Linux-CPython-3.11-64bit").mkdir(parents=True)
    run = {
        "machine_info": {"device": device},
        "benchmarks": [
            {"name": "test_sleep", "fullname": "test_sleep_bench.py::test_sleep", "stats": {"median": 0.05}}
        ],
    }
    (directory / "Linux-CPython-3.11-64bit" / "0001_baseline.json").write_text(json.dumps(run))
    (directory / "device.json").write_text(json.dumps({"device": device, "versions": versions}))
    return directory


def test_record_then_compare_unchanged_and_slowed(tmp_path, sleep_benchmark, monkeypatch, capsys):
    baselines = tmp_path / "baselines"
    machine = regress.this_machine()
    monkeypatch.setenv("FLOWSR_TEST_SLEEP_MS", "50")
    assert regress.main(["--save", "--baselines", str(baselines), str(sleep_benchmark), "-p", "no:cacheprovider"]) == 0
    device = json.loads((baselines / machine["key"] / "device.json").read_text())
    assert (device["key"], device["device"], device["versions"]) == (
        machine["key"],
        machine["device"],
        machine["versions"],
    )
    assert regress.baseline_file(baselines / machine["key"]) is not None
    capsys.readouterr()

    # Unchanged: within the threshold (a generous one, the CI machine is shared; 50 ms sleeps drift by well under
    # 10 ms).
    assert (
        regress.main(
            ["--threshold", "20", "--baselines", str(baselines), str(sleep_benchmark), "-p", "no:cacheprovider"]
        )
        == 0
    )
    assert "regress: ok: 1 of 1 baseline medians compared" in capsys.readouterr().out

    # Slowed 2.5x: pytest-benchmark's --benchmark-compare-fail fails the run, at the default threshold.
    monkeypatch.setenv("FLOWSR_TEST_SLEEP_MS", "125")
    assert regress.main(["--baselines", str(baselines), str(sleep_benchmark), "-p", "no:cacheprovider"]) == 1
    verdict = capsys.readouterr().err.strip().splitlines()[-1]
    assert verdict.startswith("regress: FAILED: 1 median(s) more than 10% slower") and "test_sleep +" in verdict


def test_baseline_of_another_device_is_refused_in_one_line(tmp_path, sleep_benchmark):
    baselines = tmp_path / "baselines"
    # Versions no machine running this test has, so that it is foreign on a GPU machine too.
    foreign_baseline(
        baselines,
        "NVIDIA H200",
        {"torch": "2.0.0+cu118", "onnxruntime": "1.16.0", "cuda": "11.8", "tensorrt": "absent"},
    )
    command = [sys.executable, str(COMMAND), "--baselines", str(baselines), str(sleep_benchmark)]
    env = os.environ | {"FLOWSR_TEST_SLEEP_MS": "50"}
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    assert result.stdout == ""  # nothing was run
    [line] = result.stderr.splitlines()
    machine = regress.this_machine()
    assert "NVIDIA H200 (torch 2.0.0+cu118, onnxruntime 1.16.0, cuda 11.8, tensorrt absent)" in line
    assert device_key.describe(machine["device"], machine["versions"]) in line
    assert "python benchmarks/regress.py --save" in line


def test_same_device_with_other_versions_or_no_baseline_is_refused(tmp_path, sleep_benchmark, capsys):
    baselines = tmp_path / "baselines"
    assert regress.main(["--baselines", str(baselines), str(sleep_benchmark)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "(it has none)" in line and "--save" in line

    machine = regress.this_machine()
    older = machine["versions"] | {"torch": "2.12.0"}
    foreign_baseline(baselines, machine["device"], older)
    assert regress.main(["--baselines", str(baselines), str(sleep_benchmark)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert f"it has only {device_key.describe(machine['device'], older)}" in line


def run_json(path: Path, device: str, medians: dict[str, float]) -> Path:
    """A pytest-benchmark run as --benchmark-json writes it (the fields the ratio check reads)."""
    benchmarks = [{"name": name, "stats": {"median": median}} for name, median in medians.items()]
    run = {"machine_info": {"device": device}, "benchmarks": benchmarks}
    path.write_text(json.dumps(run))
    return path


ORT, TORCH = "test_default_model_128_to_512[onnxruntime-float32]", "test_default_model_128_to_512[torch-float32]"
ONE_STEP, EULER = "test_degrade_512[one-step-1]", "test_degrade_512[euler-8]"
BF16, ESRGAN, SPAN = "test_default_model_128_to_512[torch-bfloat16]", "test_peer_128_to_512", "test_span_128_to_512"


@pytest.mark.parametrize(
    "device,medians,code",
    [
        ("CPU: AMD EPYC x2", {ORT: 0.255, TORCH: 0.278, ONE_STEP: 0.91, EULER: 1.25}, 0),  # the measured run
        ("CPU: AMD EPYC x2", {ORT: 0.450, TORCH: 0.278}, 1),  # onnxruntime 1.62x eager torch
        ("CPU: AMD EPYC x2", {BF16: 0.058, ESRGAN: 0.050, SPAN: 0.048}, 0),  # about the peers' times
        ("CPU: AMD EPYC x2", {BF16: 0.058, ESRGAN: 0.050, SPAN: 0.035}, 1),  # 1.66x SPAN's time
        ("NVIDIA H200", {ORT: 0.004, TORCH: 0.002}, 0),  # a CPU-only ratio does not apply on a GPU
        ("NVIDIA H200", {ONE_STEP: 0.02, EULER: 0.01}, 1),  # one NFE slower than eight
    ],
)
def test_ratio_check(tmp_path, capsys, device, medians, code):
    assert regress.main(["--check-ratios", str(run_json(tmp_path / "run.json", device, medians))]) == code
    out = capsys.readouterr().out
    assert ("ratio FAILED" in out) == bool(code)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the suite would run")
def test_gpu_suite_stops_at_once_without_a_gpu():
    """benchmarks/gpu_suite.sh (which ends with this workflow on a GPU) says in one line that it needs a GPU, exit
    code 2."""
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_suite.sh")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"PYTHON": sys.executable},
    )
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("gpu_suite: no CUDA GPU here")
