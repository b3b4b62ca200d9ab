"""Shared fixtures and test-session settings (no network); helper functions are in radio_test_utils.py."""

import os

import pytest
import torch

from ckpt_writer import make_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def images():
    """A deterministic image batch factory: ``images(b, h, w)`` in [0, 1]."""
    def make(b: int = 2, h: int = 64, w: int = 96, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(b, 3, h, w, generator=g)
    return make


@pytest.fixture(scope="session")
def normalized_ckpt(tmp_path_factory):
    """``(path, WrittenCheckpoint)``: a tiny depth-4 official-layout file with a feature normalizer and a
    shared intermediate normalizer (read-only: tests load it, never change it)."""
    path = tmp_path_factory.mktemp("normalized") / "tiny.pth.tar"
    written = make_checkpoint(path, depth=4, cpe_max_size=64, intermediate_normalizer="shared",
                              feature_normalizer=True)
    return path, written
