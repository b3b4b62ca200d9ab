"""ViTDet window partitioning of patch tokens (pure functions).

Windows are ``ws x ws`` non-overlapping tiles of the ``h x w`` patch grid, ordered row-major over
the window grid, with tokens row-major inside a window. Batching is
sample-major: window ``k`` of sample ``b`` becomes row ``b * nW + k``.
"""

from __future__ import annotations

import torch

__all__ = ["window_partition", "window_unpartition"]


def window_partition(x: torch.Tensor, grid_hw: tuple[int, int], ws: int) -> torch.Tensor:
    """``(B, h*w, D)`` raster tokens -> ``(B * nW, ws*ws, D)`` windows."""
    b, _, d = x.shape
    h, w = grid_hw
    if h % ws or w % ws:
        raise ValueError(f"patch grid {h}x{w} is not a multiple of the ViTDet window size {ws}")
    x = x.view(b, h // ws, ws, w // ws, ws, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * (h // ws) * (w // ws), ws * ws, d)


def window_unpartition(x: torch.Tensor, grid_hw: tuple[int, int], ws: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, ws*ws, D)`` -> ``(B, h*w, D)``."""
    h, w = grid_hw
    nwh, nww = h // ws, w // ws
    d = x.shape[-1]
    b = x.shape[0] // (nwh * nww)
    x = x.view(b, nwh, nww, ws, ws, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * w, d)
