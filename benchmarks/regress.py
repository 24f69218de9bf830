"""Latency regression check: run the latency suite and compare its medians with the baseline of this device.

    # run the suite, compare with this machine's baseline, check the ratios
    python benchmarks/regress.py
    # record (or replace) this machine's baseline
    python benchmarks/regress.py --save
    # paths replace the suite; other args go to pytest
    python benchmarks/regress.py --threshold 15 benchmarks/test_degrader.py -x
    # only the within-run ratios of a saved run
    python benchmarks/regress.py --check-ratios RUN.json

Baselines are pytest-benchmark's own storage, one per device and versions: benchmarks/baselines/<key>/ (the key,
from device_key.py, names the device and the torch/onnxruntime versions, on a GPU also CUDA and TensorRT), written by
`--benchmark-save` and compared by `--benchmark-compare` with `--benchmark-compare-fail=median:N%`; device.json beside
it names the device and versions in full. A baseline of another device or other versions is never compared against.

Exit codes: 0 the medians are within the threshold and the ratios hold (or the baseline was saved); 1 a benchmark
failed, a median regressed past the threshold or a ratio does not hold; 2 no baseline of this device and these
versions, or nothing measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from device_key import describe, this_machine  # beside this file: run as a script, its folder is on sys.path

REPO = Path(__file__).resolve().parent.parent
BASELINES = REPO / "benchmarks" / "baselines"
# The latency suite: every backend end to end through SuperResolver (small preset and the shipped model) and the
# degradation synthesis. On a quiet 2-core CPU the stored runs add up to about 1.5 minutes of timed and warm-up calls,
# plus start-up and the ONNX exports of a first run.
SUITE = [
    str(REPO / "benchmarks" / name)
    for name in ("test_default_model.py", "test_backends.py", "test_degrader.py", "test_peer.py")
]
# On a CPU inductor compiles the small model for minutes per shape, so torch.compile is timed on GPUs only.
CPU_FILTER = ["-k", "not compile"]
# The default, 10 %: within one run the rounds' interquartile range is 0.4-11 % of the median, while the regressions
# this guards against (a backend falling back to eager, a lost fused kernel, an extra pass over the image) cost more.
# Between runs a shared machine drifts further: on a 2-core cloud VM (AMD EPYC) unchanged reruns came 0.87-1.28x the
# baseline's medians, so that baseline was saved with --threshold 35. A threshold saved with a baseline is the
# default for comparisons against it.
THRESHOLD = 10


class Ratio(NamedTuple):
    """numerator's median / denominator's median must stay <= at_most, within one run."""

    numerator: str
    denominator: str
    at_most: float
    on: str  # "cpu": only on CPU runs; "any": everywhere
    why: str


RATIOS = [
    # onnxruntime is the CPU deployment backend: it must not fall far behind eager torch. At 128 -> 512 the three
    # sessions' per-call overhead weighs more than at 256 -> 1024, and the ratio moves between runs (2-core AMD EPYC,
    # convolutional models, sessions that do not spin: 1.06 to 1.09 for the shipped model, 0.93 to 1.26 for the small
    # preset at 128 -> 512 and 1.14 to 1.29 at 256 -> 1024 over five runs in one session), so the bounds catch a
    # backend falling behind (twice torch's time), not the run-to-run spread.
    Ratio(
        "test_default_model_128_to_512[onnxruntime-float32]",
        "test_default_model_128_to_512[torch-float32]",
        1.5,
        "cpu",
        "the shipped model at 128 -> 512",
    ),
    Ratio(
        "test_backend[onnxruntime-128->512-1]",
        "test_backend[torch-128->512-1]",
        1.5,
        "cpu",
        "the small preset at 128 -> 512",
    ),
    Ratio(
        "test_backend[onnxruntime-256->1024-1]",
        "test_backend[torch-256->1024-1]",
        1.4,
        "cpu",
        "the small preset at 256 -> 1024",
    ),
    # The peers (benchmarks/test_peer.py): Real-ESRGAN's compact x4 model in ncnn, what fast x4 deployments run today.
    Ratio(
        "test_default_model_128_to_512[torch-bfloat16]",
        "test_peer_128_to_512",
        1.5,
        "cpu",
        "the shipped model's fastest CPU path against Real-ESRGAN compact (ncnn) at 128 -> 512",
    ),
    # The second peer: SPAN x4 (48 channels, the NTIRE 2024 efficient-SR winner) in ncnn. It took 0.94x to 0.97x
    # Real-ESRGAN compact's time in the same run (2-core AMD EPYC, busy), so the same bound holds for it.
    Ratio(
        "test_default_model_128_to_512[torch-bfloat16]",
        "test_span_128_to_512",
        1.5,
        "cpu",
        "the shipped model's fastest CPU path against SPAN x4 (ncnn) at 128 -> 512",
    ),
    # INT8 (the model directory's QDQ export: the velocity network's convolutions in int8) must pay for its
    # quantization: on a 2-core AMD EPYC with AVX512-VNNI it ran at 0.60x to 0.77x torch float32 over four runs.
    Ratio(
        "test_default_model_128_to_512[onnxruntime-int8]",
        "test_default_model_128_to_512[torch-float32]",
        0.9,
        "cpu",
        "the shipped model's int8 export against torch float32 at 128 -> 512",
    ),
    Ratio(
        "test_degrade_512[one-step-1]",
        "test_degrade_512[euler-8]",
        1.1,
        "any",
        "one network evaluation must not cost more than eight (0.62 to 0.98 on CPU, where the RAE dominates)",
    ),
]


def say(line: str, failed: bool = False) -> None:
    """One line of the verdict; stdout is flushed first so that the two streams stay in order in a shared log."""
    sys.stdout.flush()
    print(line, file=sys.stderr if failed else sys.stdout, flush=True)


def check_ratios(run: dict, device: str = "") -> list[str]:
    """Print every applicable ratio of a pytest-benchmark run; return the ones that do not hold."""
    device = run.get("machine_info", {}).get("device") or device
    medians = {bench["name"]: bench["stats"]["median"] for bench in run["benchmarks"]}
    failed = []
    for ratio in RATIOS:
        if ratio.on == "cpu" and not device.startswith("CPU:"):
            continue
        if ratio.numerator not in medians or ratio.denominator not in medians:
            continue  # not in this run (deselected or skipped)
        value = medians[ratio.numerator] / medians[ratio.denominator]
        line = f"{ratio.numerator} / {ratio.denominator} = {value:.2f} (at most {ratio.at_most:.2f}: {ratio.why})"
        say(f"regress: ratio {'ok' if value <= ratio.at_most else 'FAILED'}: {line}")
        if value > ratio.at_most:
            failed.append(line)
    return failed


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    path = path.resolve()
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


def baseline_file(directory: Path) -> Path | None:
    """The pytest-benchmark file of a baseline directory (storage/<machine id>/NNNN_baseline.json)."""
    files = sorted(directory.glob("*/*_baseline.json"))
    return files[-1] if files else None


def recorded(baselines: Path) -> list[str]:
    """One description per baseline in a baselines folder, from the device.json beside each."""
    found = []
    for directory in sorted(baselines.iterdir()) if baselines.is_dir() else []:
        if directory.name.startswith(".") or not directory.is_dir() or baseline_file(directory) is None:
            continue
        try:
            info = json.loads((directory / "device.json").read_text())
            found.append(describe(info["device"], info["versions"]))
        except (OSError, ValueError, KeyError, TypeError):
            found.append(f"{directory.name} (no readable device.json)")
    return found


def saved_threshold(directory: Path) -> int:
    """The threshold recorded with a baseline (`--save --threshold`): this device's own run-to-run spread."""
    try:
        return int(json.loads((directory / "device.json").read_text()).get("threshold", THRESHOLD))
    except (OSError, ValueError, TypeError):
        return THRESHOLD


def refusal(machine: dict, baselines: Path) -> str:
    others = recorded(baselines)
    has = f"it has only {'; '.join(others)}" if others else "it has none"
    save = "python benchmarks/regress.py --save" + (
        "" if baselines.resolve() == BASELINES else f" --baselines {shown(baselines)}"
    )
    return (
        f"regress: no baseline for this machine, {describe(machine['device'], machine['versions'])}, "
        f"in {shown(baselines)} "
        f"({has}); not comparing against another device or other versions. Record one here with: {save}"
    )


def run_pytest(args: list[str]) -> tuple[int, list[str]]:
    """Run pytest with its output streamed through; return its exit code and the regressions pytest-benchmark
    reported."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    regressions = []
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        # "<name> (<source>) - Field 'median' has failed ...: 196.8 > 10.0"
        if "has failed PercentageRegressionCheck" in line:
            name, percent = line.strip().split(" (")[0], line.rsplit(":", 1)[1].split(">")[0].strip()
            regressions.append(
                f"{name} +{float(percent):.0f}%" if percent.replace(".", "", 1).isdigit() else line.strip()
            )
    return process.wait(), regressions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the latency suite and compare its medians with the baseline of this device and versions. "
        "Paths among the other arguments replace the default suite; all other arguments go to pytest.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--save", action="store_true", help="record (or replace) the baseline of this device and versions"
    )
    parser.add_argument(
        "--threshold",
        type=int,
        default=None,
        metavar="PCT",
        help=f"fail when a median is more than PCT %% slower than the baseline (default: the one saved with the "
        f"baseline, else {THRESHOLD}); with --save, the one to keep with it",
    )
    parser.add_argument(
        "--baselines",
        type=Path,
        default=BASELINES,
        metavar="DIR",
        help="baselines folder (default benchmarks/baselines)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also keep this run's pytest-benchmark JSON here")
    parser.add_argument(
        "--check-ratios", type=Path, metavar="RUN_JSON", help="only check the within-run ratios of a saved run"
    )
    args, pytest_args = parser.parse_known_args(argv)
    if args.threshold is not None and args.threshold < 1:
        parser.error("--threshold must be at least 1 (per cent)")
    if args.check_ratios:
        return 1 if check_ratios(json.loads(args.check_ratios.read_text())) else 0

    machine = this_machine()
    directory = args.baselines / machine["key"]
    baseline = baseline_file(directory)
    if args.threshold is None:
        args.threshold = saved_threshold(directory) if baseline is not None and not args.save else THRESHOLD
    if not args.save and baseline is None:
        say(refusal(machine, args.baselines), failed=True)
        return 2
    if not any(Path(arg.split("::")[0]).exists() for arg in pytest_args):
        pytest_args = SUITE + (CPU_FILTER if machine["device"].startswith("CPU:") else []) + pytest_args

    args.baselines.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{machine['key']}.", dir=args.baselines) as staging:
        run_json = args.json or Path(staging) / "run.json"
        run_json.unlink(missing_ok=True)
        if args.save:  # saved into the staging folder, moved into place only if the run passes
            storage = [
                f"--benchmark-storage=file://{Path(staging).resolve() / 'baseline'}",
                "--benchmark-save=baseline",
            ]
        else:
            storage = [
                f"--benchmark-storage=file://{directory.resolve()}",
                f"--benchmark-compare={baseline.resolve()}",
                f"--benchmark-compare-fail=median:{args.threshold}%",
            ]
        code, regressions = run_pytest(["--benchmark-only", f"--benchmark-json={run_json}", *storage, *pytest_args])
        # pytest-benchmark leaves an empty file when collection fails
        if not run_json.exists() or not run_json.stat().st_size:
            say(f"regress: nothing was measured (pytest exited {code})", failed=True)
            return 2 if code in (0, 5) else 1
        run = json.loads(run_json.read_text())
        problems = [f"pytest exited {code}"] if code and not regressions else []
        problems += [f"ratio {line}" for line in check_ratios(run, machine["device"])]
        if args.save:
            if problems:
                say(f"regress: baseline not saved: {'; '.join(problems)}", failed=True)
                return 1
            shutil.rmtree(directory, ignore_errors=True)
            (Path(staging) / "baseline").rename(directory)
            info = machine | {
                "threshold": args.threshold,
                "python": platform.python_version(),
                "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "benchmarks": len(run["benchmarks"]),
                "pytest_args": [arg.replace(f"{REPO}{os.sep}", "") for arg in pytest_args],
            }
            (directory / "device.json").write_text(json.dumps(info, indent=2) + "\n")
            say(
                f"regress: saved the baseline of {describe(machine['device'], machine['versions'])} "
                f"in {shown(directory)}: "
                f"{len(run['benchmarks'])} benchmark(s)"
            )
            return 0

    compared = {bench["fullname"] for bench in json.loads(baseline.read_text())["benchmarks"]}
    matched = [bench for bench in run["benchmarks"] if bench["fullname"] in compared]
    if not matched:
        say(f"regress: nothing in this run matches the baseline {shown(baseline)} (pytest exited {code})", failed=True)
        return 2
    if regressions:
        problems.insert(
            0,
            f"{len(regressions)} median(s) more than {args.threshold}% slower than the baseline {shown(baseline)}: "
            f"{', '.join(regressions)}",
        )
    if problems:
        say(f"regress: FAILED: {'; '.join(problems)}", failed=True)
        return 1
    say(
        f"regress: ok: {len(matched)} of {len(compared)} baseline medians compared, "
        f"none more than {args.threshold}% slower "
        f"({shown(baseline)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
