"""Adaptor heads: the MLPs that map RADIO tokens into a teacher's space.

* ``v1``: ``fc1 -> LayerNorm -> ReLU -> fc2``;
* ``v2``: ``fc1``, residual inner blocks ``h + Linear(GELU(LN(h)))``, then ``Linear(GELU(LN(h)))``;
* ``attn`` (feature heads only): two timm transformer blocks (16 heads) followed by a ``v2`` MLP.

A feature head with ``upsample_factor u > 1`` emits ``u*u*c`` channels per token, which
:func:`upsample_tokens` rearranges into a ``u`` times finer grid.
"""

from __future__ import annotations

from typing import Mapping, Optional, Tuple

import torch
from torch import nn
from timm.models.vision_transformer import Block

__all__ = ["AttnHead", "HEAD_VERSIONS", "HeadMismatchError", "UnknownHeadError", "MlpV1", "MlpV2", "build_head", "head_sizes",
           "upsample_tokens"]

HEAD_VERSIONS = ("v1", "v2", "attn")


class HeadMismatchError(ValueError):
    """An adaptor head whose variant or weights do not fit together (the loader adds the file context)."""


class UnknownHeadError(HeadMismatchError, KeyError):
    """A head variant that does not exist for its role (a ``KeyError`` too, as in the original)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""
_ATTN_HEADS = 16


class MlpV1(nn.Module):
    """``fc1 -> LayerNorm -> ReLU -> fc2``."""

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.norm(self.fc1(x))))


def _ln_gelu_linear(hidden: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out_features))


class MlpV2(nn.Module):
    """``fc1``, ``num_inner`` residual blocks, then a final ``LN -> GELU -> Linear``."""

    def __init__(self, in_features: int, hidden: int, out_features: int, num_inner: int = 0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList([_ln_gelu_linear(hidden, hidden) for _ in range(num_inner)])
        self.final = _ln_gelu_linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        for blk in self.blocks:
            x = x + blk(x)
        return self.final(x)


class AttnHead(nn.Module):
    """Two transformer blocks over the patch tokens, then a ``v2`` MLP without inner blocks.

    The blocks are timm ``Block(dim, 16 heads, mlp_ratio=4, qkv_bias=False, init_values=1e-5)``
    with timm's LayerNorm (eps 1e-6, as current timm builds them for the original).
    """

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        if in_features % _ATTN_HEADS:
            raise HeadMismatchError(f"an 'attn' head needs a width divisible by {_ATTN_HEADS}, got {in_features}")
        self.blocks = nn.Sequential(*[
            Block(in_features, _ATTN_HEADS, mlp_ratio=4.0, qkv_bias=False, init_values=1e-5) for _ in range(2)
        ])
        self.mlp = MlpV2(in_features, hidden, out_features, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.blocks(x))


def _weight(sd: Mapping[str, torch.Tensor], layer: str) -> torch.Tensor:
    if f"{layer}.weight" not in sd:
        raise HeadMismatchError(f"adaptor head weights lack '{layer}.weight'")
    return sd[f"{layer}.weight"]


def head_sizes(sd: Mapping[str, torch.Tensor], version: str) -> Tuple[int, int, int, int]:
    """``(in, hidden, out, num_inner)`` of a head from its state dict (keys relative to the head)."""
    if version not in HEAD_VERSIONS:
        raise HeadMismatchError(f"Unsupported adaptor MLP version {version!r}; known versions: {', '.join(HEAD_VERSIONS)}")
    if version == "attn":
        hidden, in_features = _weight(sd, "mlp.fc1").shape
        return in_features, hidden, _weight(sd, "mlp.final.2").shape[0], 0
    hidden, in_features = _weight(sd, "fc1").shape
    if version == "v1":
        return in_features, hidden, _weight(sd, "fc2").shape[0], 0
    n = 0
    while any(k.startswith(f"blocks.{n}.0.") for k in sd):
        n += 1
    return in_features, hidden, _weight(sd, "final.2").shape[0], n


def build_head(sd: Mapping[str, torch.Tensor], version: str) -> nn.Module:
    """An empty head of ``version`` shaped after the state dict ``sd``."""
    in_features, hidden, out_features, n = head_sizes(sd, version)
    if version == "v1":
        return MlpV1(in_features, hidden, out_features)
    if version == "v2":
        return MlpV2(in_features, hidden, out_features, n)
    return AttnHead(in_features, hidden, out_features)


def upsample_tokens(x: torch.Tensor, grid_hw: Tuple[int, int], factor: Optional[int]) -> torch.Tensor:
    """``(B, h*w, u*u*c)`` -> ``(B, (h*u)*(w*u), c)``: channel blocks become sub-pixel positions.

    Output token ``(r*u + i, q*u + j)`` takes channels ``[(i*u + j)*c, (i*u + j + 1)*c)`` of input
    token ``(r, q)`` (row offset ``i`` slowest).
    """
    u = factor or 1
    if u == 1:
        return x
    b, n, ch = x.shape
    h, w = grid_hw
    if n != h * w or ch % (u * u):
        raise ValueError(f"cannot upsample {tuple(x.shape)} tokens on a {h}x{w} grid by {u}")
    c = ch // (u * u)
    x = x.view(b, h, w, u, u, c).permute(0, 1, 3, 2, 4, 5)  # B, h, i, w, j, c
    return x.reshape(b, h * u * w * u, c)
