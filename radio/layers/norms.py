"""Normalization layers of RADIO ViT variants: DyT and the depth-scaled LayerNorm of ViT-g."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DyT", "LN_EPS", "ScaledLayerNorm"]

#: timm's ViT LayerNorm epsilon.
LN_EPS = 1e-6


class DyT(nn.Module):
    """Dynamic tanh, ``gamma * tanh(alpha * x) + beta``: the LayerNorm replacement of DyT ViTs."""

    def __init__(self, dim: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), 0.9, device=device, dtype=dtype))
        self.gamma = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.beta = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * torch.tanh(self.alpha * x) + self.beta


class ScaledLayerNorm(nn.LayerNorm):
    """LayerNorm whose output is scaled by the constant ``1 / sqrt(depth_index + 1)`` (ViT-g scaled_ln)."""

    def __init__(self, dim: int, depth_index: int, eps: float = LN_EPS, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(dim, eps=eps, device=device, dtype=dtype)
        self.depth_index = depth_index
        self.register_buffer("ln_scale", torch.empty((), device=device, dtype=torch.float32), persistent=False)
        self.reset_non_persistent_buffers()

    def reset_non_persistent_buffers(self) -> None:
        """(Re)compute the constant buffer, e.g. after the module was built on the meta device."""
        if self.weight.is_meta:  # filled once the weights are assigned
            return
        # a float32 constant, then in the model dtype like every floating buffer of the original
        value = torch.tensor((self.depth_index + 1) ** -0.5, dtype=torch.float32, device=self.weight.device)
        self.ln_scale = value.to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.ln_scale
