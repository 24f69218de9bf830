"""Markdown table of a backends (or flux-scale) benchmark run, from pytest-benchmark's JSON.

    pytest benchmarks/test_backends.py --benchmark-only --benchmark-json benchmarks/results/backends-<device>.json
    python benchmarks/backends_report.py benchmarks/results/backends-<device>.json

One row per timing: backend, preset, input -> output, batch, median ms per image, images/s, and the speed-up
over the eager baseline of the same case (`torch`, or `diffusers-eager` at flux scale); the flux-scale run
adds the transformer's achieved TFLOP/s and model-FLOPs utilization.
"""

from __future__ import annotations

import json
import sys

BASELINES = ("torch", "diffusers-eager")


def load(path: str) -> tuple[dict, list[dict]]:
    """(machine info, one dict per benchmark: its extra_info plus the median seconds per call)."""
    with open(path) as file:
        run = json.load(file)
    rows = [bench["extra_info"] | {"median": bench["stats"]["median"]} for bench in run["benchmarks"]]
    return run["machine_info"], rows


def case(row: dict) -> tuple:
    return row["preset"], row["input"], row["output"], row["batch"], row["device"], row["dtype"]


def number(value: float) -> str:
    """Three significant digits, without exponents for large values."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def table(rows: list[dict]) -> list[str]:
    baselines = {case(row): row["median"] for row in rows if row["backend"] in BASELINES}
    flux = any("transformer_tflops" in row for row in rows)
    header = "| backend | preset | shape | batch | ms/image | images/s | × vs eager |"
    rule = "|---|---|---|---:|---:|---:|---:|"
    if flux:
        header += " transformer TFLOP/s | MFU |"
        rule += "---:|---:|"
    lines = [header, rule]
    for row in sorted(rows, key=lambda r: (case(r), r["backend"] not in BASELINES, r["median"])):
        per_image = row["median"] / row["batch"]
        baseline = baselines.get(case(row))
        line = (
            f"| {row['backend']} | {row['preset']} | {row['input']} → {row['output']} | {row['batch']} "
            f"| {number(per_image * 1e3)} | {number(1 / per_image)} "
            f"| {number(baseline / row['median']) + '×' if baseline else '—'} |"
        )
        if flux:
            mfu = f"{100 * row['mfu']:.1f}% of {row['peak_name']}" if row.get("mfu") else "—"
            line += f" {number(row['transformer_tflops'])} | {mfu} |"
        lines.append(line)
    return lines


def main(path: str) -> None:
    machine, rows = load(path)
    print(
        f"Device: {machine.get('device', 'unknown')}, torch {machine.get('torch')}, "
        f"onnxruntime {machine.get('onnxruntime')}, "
        f"tensorrt {machine.get('tensorrt')}\n"
    )
    print("\n".join(table(rows)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} BENCHMARK_JSON")
    main(sys.argv[1])
