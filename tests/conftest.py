"""Shared fixtures and test-session settings (no network); helper functions are in radio_test_utils.py."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def images():
    """A deterministic image batch factory: ``images(b, h, w)`` in [0, 1]."""
    def make(b: int = 2, h: int = 64, w: int = 96, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(b, 3, h, w, generator=g)
    return make
