"""Shared test set-up: Triton runs under its interpreter on machines with no GPU."""

import os

# Must happen before anything imports triton.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

CUDA = torch.cuda.is_available()

devices = pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))])


def pytest_addoption(parser):
    parser.addoption("--fuzz-full", action="store_true", help="run every hostile-input case (a sample of each class runs by default)")
