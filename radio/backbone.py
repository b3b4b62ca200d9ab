"""The RADIO vision transformer: CPE patch generator + timm blocks + optional final norm.

Built from timm's ``Block`` with every structural option given at construction (no surgery on a
built timm model). ViTDet windowed attention is a per-block constructor option, as in SAM's image
encoder: a windowed block attends within ``ws x ws`` windows of patch tokens while the prefix
tokens (summary tokens and registers) wait unchanged for the next global block.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterator, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from timm.layers import Mlp
from timm.models.vision_transformer import Block

from .architectures import ArchSpec
from .layers.mlp import NormMlp, SwiGLU
from .layers.norms import LN_EPS, DyT, ScaledLayerNorm
from .layers.patch_generator import PatchGenerator, position_grid_size
from .layers.windows import window_partition, window_unpartition
from .packed import Segments, make_segments, varlen_attention

__all__ = ["RadioBlock", "RadioViT"]

_CHUNK = 1024  # tokens per chunk of the packed MLP


class RadioBlock(Block):
    """A timm ViT block that can attend within ViTDet windows.

    Args:
        window_size: ``0`` for global attention; otherwise the block sees only ``ws x ws`` windows of
            patch tokens, and the ``num_prefix_tokens`` leading tokens pass through unchanged.
        num_prefix_tokens: ``S``, summary tokens plus registers.
        **kwargs: timm ``Block`` arguments.
    """

    def __init__(self, *args: object, window_size: int = 0, num_prefix_tokens: int = 0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.window_size = window_size
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: torch.Tensor, grid_hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:  # type: ignore[override]
        if not self.window_size:
            return super().forward(x)
        if grid_hw is None:
            raise ValueError("a windowed block needs the patch grid size (grid_hw)")
        s = self.num_prefix_tokens
        prefix, patches = x[:, :s], x[:, s:]
        windows = super().forward(window_partition(patches, grid_hw, self.window_size))
        return torch.cat([prefix, window_unpartition(windows, grid_hw, self.window_size)], dim=1)

    def _packed_attention(self, x: torch.Tensor, segments: Segments) -> torch.Tensor:
        """This block's attention module on a packed ``(1, L, D)`` sequence, attending per segment.

        The projections run once over all tokens; only the softmax attention is split by segment.
        """
        attn = self.attn
        _, n, _ = x.shape
        gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
        qkv = attn.qkv(x).reshape(1, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        dropout = attn.attn_drop.p if self.training else 0.0
        y = varlen_attention(q, k, v, segments, scale=attn.scale, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(1, n, -1)
        y = attn.norm(y)
        if gate is not None:
            y = y * gate
        return attn.proj_drop(attn.proj(y))

    def forward_packed(self, x: torch.Tensor, segments: Segments) -> torch.Tensor:
        """The block on a packed sequence ``(1, L, D)`` of several images (see :mod:`radio.packed`).

        A global block attends within each image; a windowed block runs the windows of all images
        as one batch (the prefix tokens pass through unchanged, as in :meth:`forward`).
        """
        if self.window_size:
            s, ws = self.num_prefix_tokens, self.window_size
            parts = segments.split(x)
            windows = torch.cat([window_partition(p[:, s:], g, ws) for p, g in zip(parts, segments.grids)])
            windows = super().forward(windows)
            counts = [(h // ws) * (w // ws) for h, w in segments.grids]
            pieces = []
            for p, g, win in zip(parts, segments.grids, windows.split(counts)):
                pieces += [p[:, :s], window_unpartition(win, g, ws)]
            return torch.cat(pieces, dim=1)
        x = x + self.drop_path1(self.ls1(self._packed_attention(self.norm1(x), segments)))
        # Token-wise tail in chunks (the same computation, to float rounding): the activations stay in cache.
        return torch.cat([c + self.drop_path2(self.ls2(self.mlp(self.norm2(c)))) for c in x.split(_CHUNK, dim=1)], dim=1)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}" if self.window_size else ""


def _norm_layer(spec: ArchSpec, depth_index: int) -> Callable[..., nn.Module]:
    if spec.block_norm == "dyt":
        return DyT
    if spec.scaled_ln:
        return partial(ScaledLayerNorm, depth_index=depth_index)
    return partial(nn.LayerNorm, eps=LN_EPS)


def _mlp_layer(spec: ArchSpec) -> Callable[..., nn.Module]:
    if spec.mlp_kind == "swiglu":
        return SwiGLU
    return NormMlp if spec.mlp_norm else Mlp


class RadioViT(nn.Module):
    """The backbone: ``patch_generator`` -> ``blocks`` -> ``norm``.

    Args:
        spec: architecture description.
        cpe_max_size: pixel size of the position table.
        num_cls_tokens: ``T``.
        num_registers: ``R``.
        final_norm: keep the final LayerNorm (``args.model_norm``; always for the DINOv2 family).
        window_size: ViTDet window size in patches, or ``None``.
        global_blocks: with ``window_size``, the indices of the global blocks.
        device, dtype: where and how to allocate parameters (``'meta'`` for loading without init).
    """

    def __init__(self, spec: ArchSpec, cpe_max_size: int, num_cls_tokens: int, num_registers: int,
                 final_norm: bool = False, window_size: Optional[int] = None,
                 global_blocks: Sequence[int] = (), device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.spec = spec
        self.patch_size = spec.patch_size
        self.embed_dim = spec.embed_dim
        grid = position_grid_size(cpe_max_size, spec.patch_size)
        cpe_mode = spec.family != "vit" or (grid * spec.patch_size,) * 2 != tuple(spec.img_size)
        self.patch_generator = PatchGenerator(
            spec.patch_size, spec.embed_dim, grid, num_cls_tokens, num_registers, cpe_mode=cpe_mode,
            class_token=spec.class_token, embed_bias=spec.embed_bias, normalize_patches=spec.embed_norm, **factory)
        prefix = self.patch_generator.num_prefix_tokens
        self.window_size = window_size
        dpr = spec.drop_path_rates or (0.0,) * spec.depth
        mlp_ratio = spec.mlp_hidden / spec.embed_dim
        if int(spec.embed_dim * mlp_ratio) != spec.mlp_hidden:  # guard against float rounding down
            mlp_ratio = (spec.mlp_hidden + 0.5) / spec.embed_dim
        self.blocks = nn.ModuleList([
            RadioBlock(
                spec.embed_dim, spec.num_heads, mlp_ratio=mlp_ratio, qkv_bias=spec.qkv_bias,
                qk_norm=spec.qk_norm, proj_bias=spec.proj_bias, init_values=1.0 if spec.layerscale else None,
                drop_path=dpr[j], act_layer=partial(nn.GELU, approximate=spec.act_approximate),
                norm_layer=_norm_layer(spec, j), mlp_layer=_mlp_layer(spec),
                window_size=(window_size or 0) if (window_size and j not in global_blocks) else 0,
                num_prefix_tokens=prefix, **factory)
            for j in range(spec.depth)
        ])
        if spec.scaled_ln and spec.qk_norm:  # only norm1/norm2 are scaled: the q/k norms stay plain LayerNorms
            head_dim = spec.embed_dim // spec.num_heads
            for blk in self.blocks:
                blk.attn.q_norm = nn.LayerNorm(head_dim, eps=LN_EPS, **factory)
                blk.attn.k_norm = nn.LayerNorm(head_dim, eps=LN_EPS, **factory)
        self.norm = nn.LayerNorm(spec.embed_dim, eps=LN_EPS, **factory) if final_norm else nn.Identity()
        self.grad_checkpointing = False

    def _run_block(self, blk: nn.Module, tokens: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, tokens, grid, use_reentrant=False)
        return blk(tokens, grid)

    @property
    def num_cls_tokens(self) -> int:
        return self.patch_generator.num_cls_tokens

    @property
    def num_registers(self) -> int:
        return self.patch_generator.num_registers

    @property
    def num_prefix_tokens(self) -> int:
        return self.patch_generator.num_prefix_tokens

    def grid_size(self, x: torch.Tensor) -> Tuple[int, int]:
        """Patch grid ``(h, w)`` of an image batch."""
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    def iter_blocks(self, x: torch.Tensor, stop: Optional[int] = None) -> Iterator[Tuple[int, torch.Tensor]]:
        """Run the patch generator then the blocks, yielding ``(index, tokens)`` after each block.

        Args:
            x: conditioned image ``(B, 3, H, W)``.
            stop: last block index to run (inclusive); all blocks by default.
        """
        grid = self.grid_size(x)
        tokens = self.patch_generator(x)
        last = len(self.blocks) - 1 if stop is None else stop
        for i, blk in enumerate(self.blocks):
            if i > last:
                break
            tokens = self._run_block(blk, tokens, grid)
            yield i, tokens

    def iter_blocks_packed(self, patches: torch.Tensor, grids: Sequence[Tuple[int, int]],
                           stop: Optional[int] = None) -> Iterator[Tuple[int, torch.Tensor, Segments]]:
        """Packed counterpart of :meth:`iter_blocks`: yields ``(index, tokens (1, L, D), segments)``.

        Args:
            patches: conditioned channel-major patches ``(sum h_i*w_i, 3*ps*ps)``.
            grids: patch grid ``(h_i, w_i)`` per image.
            stop: last block index to run (inclusive); all blocks by default.
        """
        segments = make_segments(grids, self.num_prefix_tokens)
        tokens = self.patch_generator.forward_packed(patches, segments.grids)
        last = len(self.blocks) - 1 if stop is None else stop
        for i, blk in enumerate(self.blocks):
            if i > last:
                break
            if self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(blk.forward_packed, tokens, segments, use_reentrant=False)
            else:
                tokens = blk.forward_packed(tokens, segments)
            yield i, tokens, segments

    def forward_packed(self, patches: torch.Tensor, grids: Sequence[Tuple[int, int]]) -> Tuple[torch.Tensor, Segments]:
        """Packed images -> ``(tokens (1, sum (S + h_i*w_i), D) after the final norm, segments)``.

        Each image's segment equals :meth:`forward` on that image alone (eval mode).
        """
        tokens, segments = None, None
        for _, tokens, segments in self.iter_blocks_packed(patches, grids):
            pass
        if tokens is None:  # no blocks (pruned): embedding only
            segments = make_segments(grids, self.num_prefix_tokens)
            tokens = self.patch_generator.forward_packed(patches, segments.grids)
        return self.norm(tokens), segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conditioned image ``(B, 3, H, W)`` -> tokens ``(B, S + h*w, D)`` after the final norm."""
        grid = self.grid_size(x)
        tokens = self.patch_generator(x)
        for blk in self.blocks:
            tokens = self._run_block(blk, tokens, grid)
        return self.norm(tokens)
