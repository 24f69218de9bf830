"""Markdown table of a kernels benchmark run, from pytest-benchmark's JSON.

    pytest benchmarks/test_kernels.py --benchmark-only --benchmark-json benchmarks/results/kernels-<gpu>.json
    python benchmarks/kernels_report.py benchmarks/results/kernels-<gpu>.json

One row per Triton kernel timing: median ms, achieved GB/s (bytes the op needs / median time),
% of the copy bandwidth at the same size and dtype, and the speed-up over eager torch and torch.compile.
"""

from __future__ import annotations

import json
import sys


def load(path: str) -> tuple[dict, dict]:
    """(machine info, {(op, size, dtype, implementation): (median seconds, bytes)})."""
    with open(path) as file:
        run = json.load(file)
    timings = {}
    for bench in run["benchmarks"]:
        info = bench["extra_info"]
        key = info["op"], info["size"], info["dtype"], info["implementation"]
        timings[key] = bench["stats"]["median"], info["bytes"]
    return run["machine_info"], timings


def number(value: float) -> str:
    """Three significant digits, without exponents for large values."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def table(timings: dict) -> list[str]:
    lines = [
        "| op | size | dtype | ms | GB/s | % of copy | × vs eager | × vs compile |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]

    def ratio(numerator, denominator, unit):
        return f"{number(numerator / denominator)}{unit}" if numerator and denominator else "—"

    def bandwidth(key):
        seconds, nbytes = timings.get(key, (None, None))
        return nbytes / seconds / 1e9 if seconds else None

    def seconds(key):
        return timings.get(key, (None, None))[0]

    for op, size, dtype, implementation in timings:
        if implementation != "triton":
            continue
        key = op, size, dtype, implementation
        gbps = bandwidth(key)
        copy = bandwidth(("copy", size, dtype, "torch"))
        lines.append(
            f"| {op} | {size} | {dtype} | {number(seconds(key) * 1e3)} | {number(gbps)} "
            f"| {ratio(100 * gbps, copy, '%')} "
            f"| {ratio(seconds((op, size, dtype, 'eager')), seconds(key), '×')} "
            f"| {ratio(seconds((op, size, dtype, 'compile')), seconds(key), '×')} |"
        )
    return lines


def main(path: str) -> None:
    machine, timings = load(path)
    print(f"Device: {machine.get('device', 'unknown')}, torch {machine.get('torch')}, triton {machine.get('triton')}\n")
    print("\n".join(table(timings)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} BENCHMARK_JSON")
    main(sys.argv[1])
