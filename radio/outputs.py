"""Public output types."""

from __future__ import annotations

from typing import NamedTuple, Tuple

import torch

from .versions import Resolution

__all__ = ["RadioOutput", "Resolution", "FEATURE_FORMATS", "check_feature_fmt", "to_nchw"]

FEATURE_FORMATS = ("NLC", "NCHW")


class RadioOutput(NamedTuple):
    """The image-level ``summary`` ``(B, C)`` and the dense ``features`` (NLC or NCHW)."""

    summary: torch.Tensor
    features: torch.Tensor


def check_feature_fmt(fmt: str) -> None:
    """Raise ``ValueError`` unless ``fmt`` is ``'NLC'`` or ``'NCHW'``."""
    if fmt not in FEATURE_FORMATS:
        raise ValueError(f"Unsupported feature format {fmt!r}; use one of {', '.join(map(repr, FEATURE_FORMATS))}.")


def to_nchw(x: torch.Tensor, grid_hw: Tuple[int, int]) -> torch.Tensor:
    """``(B, h*w, C)`` -> ``(B, C, h, w)`` as a permuted view."""
    return x.reshape(x.shape[0], grid_hw[0], grid_hw[1], x.shape[-1]).permute(0, 3, 1, 2)
