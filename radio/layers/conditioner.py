"""Input standardization: ``(x - mean) / std`` with the checkpoint's statistics."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InputConditioner", "CLIP_MEAN", "CLIP_STD"]

#: OpenAI CLIP statistics: the defaults before the checkpoint's values are loaded.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class InputConditioner(nn.Module):
    """Standardize an RGB batch in ``[0, 1]`` and cast it to the backbone dtype.

    The buffers ``norm_mean`` / ``norm_std`` are float32 ``(3, 1, 1)``; the arithmetic runs in the
    promoted dtype of the input and the buffers, and the result is cast to ``dtype``.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> None:
        super().__init__()
        self.dtype = dtype
        self.register_buffer("norm_mean", torch.tensor(CLIP_MEAN, device=device).view(3, 1, 1))
        self.register_buffer("norm_std", torch.tensor(CLIP_STD, device=device).view(3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.norm_mean) / self.norm_std).to(self.dtype)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"
