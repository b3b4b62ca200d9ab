"""Input standardization: ``(x - mean) / std`` with the checkpoint's statistics."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InputConditioner", "CLIP_MEAN", "CLIP_STD"]

#: OpenAI CLIP statistics: the defaults before the checkpoint's values are loaded.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class InputConditioner(nn.Module):
    """Standardize an RGB batch in ``[0, 1]`` in float32 (the model casts the result to its backbone's
    current dtype).

    The buffers ``norm_mean`` / ``norm_std`` are float32 ``(3, 1, 1)`` and stay float32 when the
    module is cast (``model.half()`` moves them, but never rounds them): the original computes the
    standardization in float32 (at least; a float64 input stays float64).
    """

    def __init__(self, device: torch.device | None = None) -> None:
        super().__init__()
        self.register_buffer("norm_mean", torch.tensor(CLIP_MEAN, device=device).view(3, 1, 1))
        self.register_buffer("norm_std", torch.tensor(CLIP_STD, device=device).view(3, 1, 1))

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # Follow device moves but keep the statistics in float32 (casts apply to the backbone only).
        mean, std = self.norm_mean, self.norm_std
        super()._apply(fn, recurse)
        if self.norm_mean.dtype != mean.dtype and not mean.is_meta:
            self.norm_mean = mean.to(self.norm_mean.device)
            self.norm_std = std.to(self.norm_std.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return (x - self.norm_mean) / self.norm_std

