"""Public output types and the resolution arithmetic the model and the tools share.

Imports nothing heavy at module level (no torch), so that command-line start-up and
``radio.versions`` stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Tuple

if TYPE_CHECKING:
    import torch

__all__ = ["RadioOutput", "Resolution", "FEATURE_FORMATS", "check_feature_fmt", "nearest_multiple", "to_nchw"]


class Resolution(NamedTuple):
    """An image size in pixels, ``(height, width)``."""

    height: int
    width: int


def nearest_multiple(value: float, step: int) -> int:
    """``value`` rounded to the nearest multiple of ``step`` (Python rounding: ties to even), at least ``step``."""
    return max(int(round(value / step) * step), step)

FEATURE_FORMATS = ("NLC", "NCHW")


class RadioOutput(NamedTuple):
    """The image-level ``summary`` ``(B, C)`` and the dense ``features`` (NLC or NCHW)."""

    summary: torch.Tensor
    features: torch.Tensor


def check_feature_fmt(fmt: str) -> None:
    """Raise ``ValueError`` unless ``fmt`` is ``'NLC'`` or ``'NCHW'``."""
    if fmt not in FEATURE_FORMATS:
        raise ValueError(f"Unsupported feature format {fmt!r}; use one of {', '.join(map(repr, FEATURE_FORMATS))}.")


def to_nchw(x: "torch.Tensor", grid_hw: Tuple[int, int]) -> torch.Tensor:
    """``(B, h*w, C)`` -> ``(B, C, h, w)`` as a permuted view."""
    return x.reshape(x.shape[0], grid_hw[0], grid_hw[1], x.shape[-1]).permute(0, 3, 1, 2)
