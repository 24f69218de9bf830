"""The batch loop that `flowsr sr` and `flowsr degrade` share: input paths -> (source, output) jobs -> one job at a
time -> a summary line. Each failure is one line naming its file, and one bad file never stops the others."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from flowsr.core import images
from flowsr.core.errors import FlowsrError, out_of_memory, printable


def report(message: str) -> None:
    """One line on stderr that does not tear the progress bar."""
    tqdm.write(f"flowsr: {printable(message)}", file=sys.stderr)


def collect_inputs(paths: Sequence[str], out_dir: Path, out_format: str) -> tuple[list[tuple[Path, Path]], int]:
    """Pair every input file with its output path under `out_dir`; named files are always tried, folders contribute
    their images (their sub-folders kept). Returns the pairs and how many inputs failed (each reported)."""
    jobs, failures, claimed = [], 0, {}
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            found = images.find_images(path)
            if not found:
                report(f"{path}: {images.NO_IMAGES}")
                failures += 1
            pairs = [(p, out_dir / p.relative_to(path).with_suffix(f".{out_format}")) for p in found]
        elif path.is_file():
            pairs = [(path, out_dir / f"{path.stem}.{out_format}")]
        else:
            # Pipes and devices would block or never end; only regular files are read.
            report(f"{path}: {'not a regular file' if path.exists() else 'no such file or folder'}")
            failures += 1
            continue
        for source, target in pairs:
            if target in claimed:
                report(
                    f"{source}: its output {target} would overwrite the output of {claimed[target]}; rename one of them"
                )
                failures += 1
                continue
            claimed[target] = source
            jobs.append((source, target))
    return jobs, failures


@dataclass
class BatchResult:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0

    def summary(self, written: str, per_image: str = "", skipped_because: str = "") -> str:
        """`written` ("3 written to OUT"), then the time per image (and `per_image`), the skipped and the failed."""
        text = written
        if self.done:
            text += f" ({self.seconds / self.done:.2f} s per image{per_image})"
        if self.skipped:
            text += f", {self.skipped} skipped ({skipped_because})"
        if self.failed:
            text += f", {self.failed} failed"
        return text


def run_batch(jobs: Sequence, work: Callable[..., bool], description: str, failed: int = 0) -> BatchResult:
    """`work(source, *rest)` for every job tuple: True when it wrote, False when there was nothing to do (its outputs
    exist). A flowsr error or running out of memory fails that job only; `failed` counts failures found earlier."""
    result = BatchResult(failed=failed)
    started = time.perf_counter()
    progress = tqdm(jobs, desc=description, unit="image", disable=None if len(jobs) > 1 else True, file=sys.stderr)
    for job in progress:
        try:
            if work(*job):
                result.done += 1
            else:
                result.skipped += 1
        except FlowsrError as err:
            report(f"{job[0]}: {err}")
            result.failed += 1
        except (MemoryError, torch.OutOfMemoryError) as err:
            report(f"{job[0]}: {out_of_memory(err)}")
            result.failed += 1
    result.seconds = time.perf_counter() - started
    return result
