"""Feature normalizers stored in RADIO checkpoints.

* :class:`FeatureNormalizer` whitens the final spatial features: ``(x - mean) @ tx^T``.
* :class:`IntermediateFeatureNormalizer` does the same per block for ``forward_intermediates``,
  with per-block means, scalar ``alphas`` and either one shared or one rotation per block. Prefix
  tokens are passed through unchanged.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FeatureNormalizer", "IntermediateFeatureNormalizer", "NullIntermediateNormalizer"]


class FeatureNormalizer(nn.Module):
    """``y = (x - mean) @ tx^T`` over the channel dimension.

    Accepts NLC ``(B, N, D)`` (or any rank <= 3 with channels last) and NCHW ``(B, D, H, W)``.
    """

    def __init__(self, dim: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=dtype, device=device))
        self.register_buffer("tx", torch.eye(dim, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim <= 3:
            return (x - self.mean) @ self.tx.T
        if x.ndim == 4:
            x = x - self.mean.view(1, -1, 1, 1)
            return F.conv2d(x, self.tx[:, :, None, None])
        raise ValueError(f"FeatureNormalizer expects NLC (3-D) or NCHW (4-D) input, got shape {tuple(x.shape)}")


class IntermediateFeatureNormalizer(nn.Module):
    """Per-block whitening of intermediate tokens.

    Buffers: ``alphas (L,)``, ``means (L, D)``, ``rotation (D, D)`` shared or ``(L, D, D)`` per block.
    """

    def __init__(self, num_layers: int, dim: int, per_layer_rotation: bool, dtype: torch.dtype = torch.float32,
                 device: torch.device | None = None) -> None:
        super().__init__()
        rot_shape = (num_layers, dim, dim) if per_layer_rotation else (dim, dim)
        self.register_buffer("alphas", torch.ones(num_layers, dtype=dtype, device=device))
        self.register_buffer("rotation", torch.zeros(rot_shape, dtype=dtype, device=device))
        self.register_buffer("means", torch.zeros(num_layers, dim, dtype=dtype, device=device))

    @property
    def num_layers(self) -> int:
        return self.means.shape[0]

    def _rotation(self, index: int) -> torch.Tensor:
        return self.rotation[index] if self.rotation.ndim == 3 else self.rotation

    def forward(self, x: torch.Tensor, index: int, rot_index: Optional[int] = None,
                skip: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalize the tokens of block ``index``.

        Args:
            x: ``(B, N, D)`` tokens (or ``(B, D, H, W)`` when ``skip`` is 0).
            index: block whose mean and alpha apply.
            rot_index: block whose rotation applies (defaults to ``index``).
            skip: number of leading prefix tokens passed through untouched (alpha 1 there).

        Returns:
            ``(y, alpha)`` with ``alpha`` broadcastable to ``y``.
        """
        rot = self._rotation(index if rot_index is None else rot_index)
        mean = self.means[index]
        alpha = self.alphas[index]
        if skip:
            if x.ndim != 3:
                raise ValueError(f"prefix skipping needs NLC tokens, got shape {tuple(x.shape)}")
            prefix, spatial = x[:, :skip], x[:, skip:]
            y = torch.cat([prefix, (spatial - mean) @ rot.T], dim=1)
            a = torch.ones(1, x.shape[1], 1, dtype=alpha.dtype, device=alpha.device)
            a[:, skip:] = alpha
            return y, a
        if x.ndim == 3:
            return (x - mean) @ rot.T, alpha.expand(1, x.shape[1], 1)
        if x.ndim == 4:
            y = F.conv2d(x - mean.view(1, -1, 1, 1), rot[:, :, None, None])
            return y, alpha.expand(1, 1, *x.shape[2:])
        raise ValueError(f"IntermediateFeatureNormalizer expects 3-D or 4-D input, got shape {tuple(x.shape)}")


class NullIntermediateNormalizer(nn.Module):
    """Stand-in when no intermediate normalizer applies: identity with ``alpha = 1``."""

    def forward(self, x: torch.Tensor, index: int, rot_index: Optional[int] = None,
                skip: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        return x, torch.ones((), dtype=x.dtype, device=x.device)
