"""Shared test set-up: deterministic, single-threaded-friendly torch defaults."""

import sys
from pathlib import Path

import pytest
import torch

# tests/refs.py is imported as a plain module by the tests.
sys.path.insert(0, str(Path(__file__).parent))

import refs  # noqa: E402

refs.install_torchvision_shim()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
