"""The training loop every flowsr trainer shares: data order, DDP, AdamW, learning-rate schedule, mixed
precision, checkpoints, resume, logging.

Reproducible by construction: step s of rank r always sees the same samples (the batch sampler derives them
from (seed, epoch, position)), the same noise (the objective gets a generator seeded by (seed, step, rank)) and
the same learning rate (a function of the step), so a resumed run continues the loss curve it was interrupted
in. Checkpoints are safetensors + JSON.

Precision ("auto"): bfloat16 autocast on CUDA and on CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX),
where models train about 1.5x faster; float32 on other CPUs, which
would emulate bfloat16 slowly. Each sitting appends what it used to RUN_DIR/runs.jsonl.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from flowsr.core.atomic import atomic_directory

from .data import DataError, EpochKey


@dataclass
class LoopConfig:
    steps: int = 1000
    batch_size: int = 8  # per process
    lr: float = 1e-4
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    seed: int = 0
    workers: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    schedule: str = "constant"  # or "cosine": linear warm-up, then cosine decay to 0 at `steps`
    warmup: int = 0  # steps of linear warm-up (cosine schedule)
    precision: str = "auto"  # "auto" (see the module docstring), "float32" or "bfloat16"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")

    def lr_at(self, step: int) -> float:
        """The learning rate of (0-based) `step`."""
        if self.schedule == "constant":
            return self.lr
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "float32", "bfloat16")


def native_cpu_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX tiles), as torch's CPU kernels see it."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check() for check in checks if check is not None)


def autocast_for(device: torch.device, precision: str = "auto") -> tuple[contextlib.AbstractContextManager, str]:
    """The autocast context of a training step on `device`, and a line saying what it is and why."""
    if precision == "float32":
        return torch.autocast(device.type, enabled=False), "float32 (asked for)"
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16), "bfloat16 autocast (CUDA)"
    if precision == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16), "bfloat16 autocast on the CPU (asked for)"
    if native_cpu_bfloat16():
        return torch.autocast(
            "cpu", dtype=torch.bfloat16
        ), "bfloat16 autocast (this CPU has native bfloat16: AVX512-BF16 or AMX)"
    return torch.autocast("cpu", enabled=False), "float32 (this CPU has no native bfloat16)"


class StepBatchSampler(Sampler):
    """Batches of (epoch, index) keys, a fresh permutation every epoch, this rank's share, from `start_step` on."""

    def __init__(self, length: int, batch_size: int, seed: int, rank: int, world: int, start_step: int, steps: int):
        per_rank = length // world
        if per_rank < batch_size:
            raise DataError(f"the dataset has {length} samples: too few for {world} process(es) x batch {batch_size}")
        self.length, self.batch_size, self.seed, self.rank, self.world = length, batch_size, seed, rank, world
        self.batches_per_epoch = per_rank // batch_size
        self.start_step, self.steps = start_step, steps

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self) -> Iterator[list[EpochKey]]:
        for step in range(self.start_step, self.steps):
            epoch, position = divmod(step, self.batches_per_epoch)
            order = np.random.default_rng([self.seed, epoch]).permutation(self.length)[self.rank :: self.world]
            chosen = order[position * self.batch_size : (position + 1) * self.batch_size]
            yield [EpochKey(epoch, int(index)) for index in chosen]


def distributed() -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train_device(rank: int) -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count()
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _write_checkpoint(
    directory: Path, step: int, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer
) -> None:
    """Parameters and optimizer moments as safetensors, the rest as JSON; written to a temp folder, then renamed."""
    state = optimizer.state_dict()
    tensors = {f"param/{name}": p.detach().cpu().contiguous() for name, p in params.items()}
    for index, moments in state["state"].items():
        for key, value in moments.items():
            tensors[f"optim/{index}/{key}"] = torch.as_tensor(value).cpu().contiguous()
    with atomic_directory(directory) as staging:
        safetensors.torch.save_file(tensors, staging / "state.safetensors")
        (staging / "state.json").write_text(json.dumps({"step": step, "param_groups": state["param_groups"]}))


def _read_checkpoint(directory: Path, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer) -> int:
    meta = json.loads((directory / "state.json").read_text())
    tensors = safetensors.torch.load_file(directory / "state.safetensors")
    missing = [name for name in params if f"param/{name}" not in tensors]
    if missing:
        raise DataError(
            f"checkpoint {directory} does not match this model (no {missing[0]}); resume with the same settings"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"param/{name}"])
    moments: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            moments.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": moments, "param_groups": meta["param_groups"]})
    return int(meta["step"])


def run(
    objective: nn.Module,
    dataset,
    config: LoopConfig,
    out_dir: str | Path,
    resume: bool = True,
    description: str = "train",
    validate=None,
) -> list[dict]:
    """Train the parameters of `objective` that require grad; `objective(batch, generator)` returns a dict of
    scalar losses whose "loss" entry is optimized. Returns the logged rows of this process (rank 0 writes them).

    `validate()`, if given, runs on rank 0 at every checkpoint (and before the first step of a fresh run); the
    dict it returns is appended with the step to RUN_DIR/validation.jsonl.
    """
    rank, world = distributed()
    device = train_device(rank)
    out_dir = Path(out_dir)
    checkpoint = out_dir / "checkpoint"
    objective.to(device)
    params = {name: p for name, p in objective.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    optimizer = torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=config.weight_decay)
    start = _read_checkpoint(checkpoint, params, optimizer) if resume and checkpoint.is_dir() else 0
    model = nn.parallel.DistributedDataParallel(objective) if world > 1 else objective
    sampler = StepBatchSampler(len(dataset), config.batch_size, config.seed, rank, world, start, config.steps)
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=config.workers, persistent_workers=config.workers > 0
    )
    autocast, precision = autocast_for(device, config.precision)
    rows, log = [], None
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        sitting = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "from_step": start,
            "to_step": config.steps,
            "device": str(device),
            "processes": world,
            "precision": precision,
        }
        with open(out_dir / "runs.jsonl", "a") as runs:
            runs.write(json.dumps(sitting) + "\n")
        print(f"{description}: steps {start} to {config.steps} on {device} x {world}, {precision}", flush=True)
        log = open(out_dir / "losses.jsonl", "a")
    progress = tqdm(total=config.steps, initial=start, desc=description, disable=rank != 0 or None, dynamic_ncols=True)

    def validation(step: int) -> None:
        if validate is not None and rank == 0:
            training = objective.training
            objective.eval()
            with torch.no_grad(), autocast:
                row = {"step": step, **validate()}
            objective.train(training)
            with open(out_dir / "validation.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    if start == 0:
        validation(0)
    try:
        for step, batch in enumerate(loader, start=start):
            generator = torch.Generator(device).manual_seed(
                int(np.random.SeedSequence([config.seed, step, rank]).generate_state(1)[0])
            )
            batch = (
                [part.to(device, non_blocking=True) for part in batch]
                if isinstance(batch, (list, tuple))
                else batch.to(device)
            )
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step)
            with autocast:
                losses = model(batch, generator)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params.values(), config.grad_clip)
            optimizer.step()
            row = {"step": step + 1, **{k: v.item() for k, v in losses.items()}}
            rows.append(row)
            if log is not None:
                log.write(json.dumps(row) + "\n")
                if (step + 1) % config.log_every == 0:
                    log.flush()
                    progress.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k != "step"})
            progress.update(1)
            done = step + 1
            if rank == 0 and (done % config.checkpoint_every == 0 or done == config.steps):
                _write_checkpoint(checkpoint, done, params, optimizer)
                validation(done)
    finally:
        progress.close()
        if log is not None:
            log.close()
    if world > 1:
        dist.barrier()
    return rows
