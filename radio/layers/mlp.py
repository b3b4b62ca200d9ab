"""Feed-forward layers of RADIO ViT variants: SwiGLU (DINOv2-g) and timm's Mlp with a hidden LayerNorm."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from timm.layers import Mlp

__all__ = ["NormMlp", "SwiGLU"]


class SwiGLU(nn.Module):
    """DINOv2-g feed-forward: ``w3(silu(a) * b)`` with ``a, b`` the halves of ``w12(x)``."""

    def __init__(self, in_features: int, hidden_features: int, device: torch.device | None = None,
                 dtype: torch.dtype | None = None, **_: object) -> None:
        super().__init__()
        self.w12 = nn.Linear(in_features, 2 * hidden_features, device=device, dtype=dtype)
        self.w3 = nn.Linear(hidden_features, in_features, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(nn.functional.silu(a) * b)


class NormMlp(Mlp):
    """timm ``Mlp`` with a LayerNorm (eps 1e-5) between the activation and ``fc2`` (ViT-H mlpnorm)."""

    def __init__(self, *args: object, norm_layer: object = None, **kwargs: object) -> None:
        super().__init__(*args, norm_layer=partial(nn.LayerNorm, eps=1e-5), **kwargs)
