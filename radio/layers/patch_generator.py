"""The CPE patch generator: patchify, linear embedding, position-table viewport, prefix tokens.

RADIO replaces a ViT's patch embedding with this module (AM-RADIO, "cropped position embedding").
A learned ``G x G`` position table is cut to the input's patch grid:

* eval: the table is resized bilinearly to an ``m x m`` square (``m`` = larger grid side) and
  cropped top-left, so the short side is cropped, never squeezed;
* training: each sample (each video in video mode) samples a random viewport of the table, and
  position dropout drops the whole embedding of some samples.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClsToken", "PatchGenerator", "position_grid_size"]

_MIN_SCALE = math.sqrt(0.1)
_LOG_ASPECT = math.log(4 / 3)


def position_grid_size(cpe_max_size: int, patch_size: int) -> int:
    """Side ``G`` of the position table for a ``cpe_max_size`` pixel budget (Python ``round``)."""
    return int(round(cpe_max_size / patch_size))


class ClsToken(nn.Module):
    """Learned prefix tokens: ``num_cls`` summary tokens followed by ``num_registers`` registers."""

    def __init__(self, dim: int, num_cls: int, num_registers: int, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.num_cls = num_cls
        self.num_registers = num_registers
        self.token = nn.Parameter(torch.zeros(num_cls + num_registers, dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the prefix tokens to ``x`` ``(B, N, D)``."""
        return torch.cat([self.token.unsqueeze(0).expand(x.shape[0], -1, -1), x], dim=1)


class PatchGenerator(nn.Module):
    """Image ``(B, 3, H, W)`` -> tokens ``(B, S + h*w, D)``.

    Args:
        patch_size: ``ps``.
        embed_dim: ``D``.
        grid_size: side ``G`` of the learned position table.
        num_cls: summary tokens ``T``.
        num_registers: registers ``R``.
        cpe_mode: resize-then-crop the table (true for all released checkpoints); if false, crop only.
        class_token: whether prefix tokens exist at all.
        embed_bias: whether the patch projection has a bias (DINOv2 family).
        normalize_patches: LayerNorm (eps 1e-5) over the whole sequence, prefix included.
        pos_dropout: probability of dropping a sample's position embedding in training mode.
    """

    def __init__(self, patch_size: int, embed_dim: int, grid_size: int, num_cls: int, num_registers: int,
                 cpe_mode: bool = True, class_token: bool = True, embed_bias: bool = False,
                 normalize_patches: bool = False, pos_dropout: float = 0.1,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.grid_size = grid_size
        self.cpe_mode = cpe_mode
        self.pos_dropout = pos_dropout
        self.num_cls_tokens = num_cls
        self.num_registers = num_registers if class_token else 0
        self.num_video_frames = 1
        factory = dict(device=device, dtype=dtype)
        self.embedder = nn.Linear(3 * patch_size * patch_size, embed_dim, bias=embed_bias, **factory)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid_size * grid_size, embed_dim, **factory))
        self.cls_token = ClsToken(embed_dim, num_cls, num_registers, **factory) if class_token else None
        self.patch_normalizer = nn.LayerNorm(embed_dim, **factory) if normalize_patches else nn.Identity()

    @property
    def num_prefix_tokens(self) -> int:
        """``S``: tokens inserted before the patch tokens."""
        return self.num_cls_tokens + self.num_registers if self.cls_token is not None else 0

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, h*w, C*ps*ps)``, channel slowest inside a patch."""
        b, c, hh, ww = x.shape
        ps = self.patch_size
        h, w = hh // ps, ww // ps
        x = x.reshape(b, c, h, ps, w, ps).permute(0, 2, 4, 1, 3, 5)  # B, h, w, C, ps, ps
        return x.reshape(b, h * w, c * ps * ps)

    def _table(self) -> torch.Tensor:
        g = self.grid_size
        return self.pos_embed.reshape(1, g, g, -1).permute(0, 3, 1, 2)  # 1, D, G, G

    def _eval_pos_embed(self, h: int, w: int) -> torch.Tensor:
        g = self.grid_size
        # ``h``/``w`` are symbolic (SymInt) while torch.export traces with dynamic sizes: a Python
        # branch on their values would be frozen at the example size. The shortcuts below are taken
        # only for concrete sizes; the general path gives identical numbers (a bilinear resize to the
        # same size is the identity, and the float32 round trip of the table is exact).
        concrete = isinstance(h, int) and isinstance(w, int)
        if concrete and (h, w) == (g, g):
            return self.pos_embed
        table = self._table()
        if self.cpe_mode:
            # torch.jit.trace gives the sizes as 0-d tensors, torch.export as SymInts
            m = torch.maximum(h, w) if torch.is_tensor(h) else torch.sym_max(h, w)
            table = F.interpolate(table.float(), size=(m, m), mode="bilinear", align_corners=False)
            table = table.to(self.pos_embed.dtype)[:, :, :h, :w]
        else:
            if torch.is_tensor(h):  # torch.jit.trace
                table = table[:, :, : torch.clamp(h, max=g), : torch.clamp(w, max=g)]
            else:
                table = table[:, :, : torch.sym_min(h, g), : torch.sym_min(w, g)]
            if not concrete or table.shape[-2:] != (h, w):
                table = F.interpolate(table.float(), size=(h, w), mode="bilinear", align_corners=False)
                table = table.to(self.pos_embed.dtype)
        return table.flatten(2).transpose(1, 2)  # 1, h*w, D

    def _train_pos_embed(self, batch: int, h: int, w: int) -> torch.Tensor:
        t = self.num_video_frames
        n = batch // t
        dev = self.pos_embed.device
        scale = torch.rand(n, 1, 1, device=dev) * (1 - _MIN_SCALE) + _MIN_SCALE
        aspect = torch.exp(torch.rand(n, 1, 1, device=dev) * (2 * _LOG_ASPECT) - _LOG_ASPECT)
        scale_xy = torch.stack([scale * aspect, scale / aspect], dim=-1).clamp(0, 1)  # n, 1, 1, 2
        pos_xy = torch.rand(n, 1, 1, 2, device=dev) * (1 - scale_xy)
        lin_y = torch.linspace(0, 1, h, device=dev)
        lin_x = torch.linspace(0, 1, w, device=dev)
        yy, xx = torch.meshgrid(lin_y, lin_x, indexing="ij")
        lin = torch.stack([xx, yy], dim=-1).unsqueeze(0)  # 1, h, w, 2 (x first)
        grid = (lin * scale_xy + pos_xy) * 2 - 1
        table = self._table().float().expand(n, -1, -1, -1)
        pos = F.grid_sample(table, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        pos = pos.to(self.pos_embed.dtype).flatten(2).transpose(1, 2)  # n, h*w, D
        if t > 1:
            pos = pos.repeat_interleave(t, dim=0)
        return pos

    def position_embedding(self, batch: int, h: int, w: int) -> torch.Tensor:
        """The position embedding added to a batch on an ``h x w`` patch grid."""
        if self.training and self.cpe_mode:  # video mode only matters here: eval uses one fixed table
            t = self.num_video_frames
            if batch % t:
                raise ValueError(f"In cpe_video_mode({t}) the batch ({batch}) must be a multiple of {t} "
                                 "(inputs are (videos * frames, C, H, W)).")
            pos = self._train_pos_embed(batch, h, w)
        else:
            pos = self._eval_pos_embed(h, w)
        if self.training and self.pos_dropout > 0:
            keep = torch.rand(batch, 1, 1, device=pos.device) > self.pos_dropout
            pos = pos * keep.to(pos.dtype)
        return pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        patches = self.embedder(self.patchify(x))
        patches = patches + self.position_embedding(x.shape[0], h, w)
        if self.cls_token is not None:
            patches = self.cls_token(patches)
        return self.patch_normalizer(patches)

    def forward_packed(self, patches: torch.Tensor, grids: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """Packed patches of several images -> one token sequence (eval mode only).

        Each image gets its own position embedding (the eval-mode rule of :meth:`forward`, computed
        once per distinct grid) and its own prefix tokens, so each segment equals :meth:`forward`
        on that image alone.

        Args:
            patches: conditioned patches ``(sum h_i*w_i, C*ps*ps)``, channel-major within a patch
                (the layout of :meth:`patchify`).
            grids: patch grid ``(h_i, w_i)`` per image.

        Returns:
            ``(1, sum (S + h_i*w_i), D)``: per image, ``S`` prefix tokens then its patch tokens.

        Raises:
            ValueError: in training mode (random viewports are drawn per batch, not per image).
        """
        if self.training and (self.cpe_mode or self.pos_dropout > 0):
            raise ValueError("packed embedding is eval-mode only (training draws random position viewports); "
                             "call model.eval(), or run images of one size per batch in training.")
        emb = self.embedder(patches)
        cache: Dict[Tuple[int, int], torch.Tensor] = {}
        pieces = []
        start = 0
        for h, w in grids:
            if (h, w) not in cache:
                cache[(h, w)] = self.position_embedding(1, h, w)[0]
            n = h * w
            if self.cls_token is not None:
                pieces.append(self.cls_token.token)
            pieces.append(emb[start:start + n] + cache[(h, w)])
            start += n
        return self.patch_normalizer(torch.cat(pieces, dim=0)).unsqueeze(0)

    def extra_repr(self) -> str:
        return (f"patch_size={self.patch_size}, grid={self.grid_size}x{self.grid_size}, "
                f"num_cls_tokens={self.num_cls_tokens}, num_registers={self.num_registers}, cpe_mode={self.cpe_mode}")
