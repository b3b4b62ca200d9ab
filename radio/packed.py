"""Packed variable-resolution batches: several images of different sizes in one token sequence.

A packed batch is the layout transformers' ``RadioModel(pixel_values, image_grid_hw=...)`` and
vLLM take:

* ``patches (sum N_i, 3*ps*ps)``: the patches of every image, image after image, each image's
  patches row-major, each patch channel-major (``(3, ps, ps)`` flattened), raw pixel values;
* ``grid_hw (n, 2)`` int64: the patch grid ``(h_i, w_i)`` of each image.

Inside the backbone each image becomes one *segment* of the packed token sequence: its own
prefix tokens followed by its patch tokens. Token-wise layers (linear layers, norms, MLPs) run
once over the whole sequence; attention is restricted to each segment (:func:`varlen_attention`),
so every image's result equals running it alone.
"""

from __future__ import annotations

import logging
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["PackedImages", "Segments", "check_packed", "make_segments", "pack_images", "varlen_attention"]

_logger = logging.getLogger(__name__)


class PackedImages(NamedTuple):
    """Images of different sizes as one patch tensor.

    Attributes:
        patches: ``(sum h_i*w_i, 3*ps*ps)`` raw pixel patches, image after image, row-major within an
            image, channel-major within a patch.
        grid_hw: ``(n, 2)`` int64 patch grid ``(h_i, w_i)`` per image.
    """

    patches: torch.Tensor
    grid_hw: torch.Tensor


class Segments(NamedTuple):
    """Where each image lives in a packed token sequence.

    Attributes:
        grids: patch grid ``(h_i, w_i)`` per image.
        num_prefix: ``S``, prefix tokens (summary tokens and registers) leading each segment.
        offsets: cumulative token offsets ``(0, L_0, L_0 + L_1, ..., L)`` with ``L_i = S + h_i*w_i``.
    """

    grids: Tuple[Tuple[int, int], ...]
    num_prefix: int
    offsets: Tuple[int, ...]

    @property
    def lengths(self) -> List[int]:
        """Tokens per image, ``S + h_i*w_i``."""
        return [b - a for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.grids)

    def split(self, x: torch.Tensor, dim: int = 1) -> Tuple[torch.Tensor, ...]:
        """Split a packed tensor along ``dim`` into the per-image segments."""
        return x.split(self.lengths, dim=dim)


def make_segments(grids: Sequence[Tuple[int, int]], num_prefix: int) -> Segments:
    """Segment bookkeeping for images with patch grids ``grids`` and ``num_prefix`` prefix tokens each."""
    grids = tuple((int(h), int(w)) for h, w in grids)
    offsets = [0]
    for h, w in grids:
        offsets.append(offsets[-1] + num_prefix + h * w)
    return Segments(grids, int(num_prefix), tuple(offsets))


def pack_images(images: Sequence[torch.Tensor], patch_size: int) -> PackedImages:
    """Pack RGB images of different sizes into channel-major patches plus their grid.

    Args:
        images: ``(3, H_i, W_i)`` floating-point tensors (same dtype and device), sides multiples
            of ``patch_size``.
        patch_size: ``ps`` in pixels.

    Returns:
        :class:`PackedImages` with ``patches (sum (H_i/ps)*(W_i/ps), 3*ps*ps)`` and ``grid_hw (n, 2)``.

    Raises:
        TypeError: not a sequence of tensors, a non-floating image, or mixed dtypes / devices.
        ValueError: an empty sequence, a wrong shape, or a side that is not a multiple of ``ps``.
    """
    if torch.is_tensor(images) or not isinstance(images, (list, tuple)):
        raise TypeError(f"pack_images expects a list or tuple of (3, H, W) image tensors, got "
                        f"{type(images).__name__}; for an equal-size batch use model(x) instead.")
    if not images:
        raise ValueError("pack_images got an empty list; pass at least one (3, H, W) image.")
    ps = int(patch_size)
    first = images[0]
    rows, grids = [], []
    for i, img in enumerate(images):
        if not torch.is_tensor(img):
            raise TypeError(f"image {i} is a {type(img).__name__}, expected a (3, H, W) tensor")
        if img.ndim != 3 or img.shape[0] != 3:
            hint = " (drop the batch axis: img[0])" if img.ndim == 4 and img.shape[0] == 1 else ""
            raise ValueError(f"image {i} has shape {tuple(img.shape)}; expected an RGB image (3, H, W){hint}.")
        if not img.is_floating_point():
            raise TypeError(f"image {i} has dtype {img.dtype}; expected floating point in [0, 1] "
                            "(convert with img.float() / 255).")
        if img.dtype != first.dtype or img.device != first.device:
            raise TypeError(f"mixed inputs: image 0 is {first.dtype} on {first.device}, image {i} is "
                            f"{img.dtype} on {img.device}; convert all images to one dtype and device.")
        hh, ww = img.shape[-2:]
        if hh == 0 or ww == 0 or hh % ps or ww % ps:
            raise ValueError(f"image {i} is {hh}x{ww} pixels; both sides must be positive multiples of the "
                             f"patch size {ps} (see model.get_nearest_supported_resolution).")
        h, w = hh // ps, ww // ps
        rows.append(img.reshape(3, h, ps, w, ps).permute(1, 3, 0, 2, 4).reshape(h * w, 3 * ps * ps))
        grids.append((h, w))
    patches = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
    return PackedImages(patches, torch.tensor(grids, dtype=torch.int64))


def check_packed(packed: PackedImages, patch_size: int, step: int) -> List[Tuple[int, int]]:
    """Validate a packed batch and return its grids as Python ints.

    Args:
        packed: the batch.
        patch_size: ``ps``.
        step: ``min_resolution_step`` in pixels (patch size, times the ViTDet window size if any).

    Raises:
        TypeError: not tensors, non-floating patches, or a non-integer grid.
        ValueError: wrong shapes, an empty batch, grid sides that are not multiples of
            ``step / ps``, or a grid that does not add up to the number of patches.
    """
    patches, grid = packed
    if not torch.is_tensor(patches) or not torch.is_tensor(grid):
        raise TypeError("a packed batch is (patches tensor, grid_hw tensor); build it with radio.pack_images.")
    ps = int(patch_size)
    if patches.ndim != 2 or patches.shape[1] != 3 * ps * ps:
        raise ValueError(f"packed patches must have shape (sum h*w, 3*{ps}*{ps}={3 * ps * ps}), got "
                         f"{tuple(patches.shape)}")
    if not patches.is_floating_point():
        raise TypeError(f"packed patches have dtype {patches.dtype}; expected floating point in [0, 1].")
    if grid.is_floating_point() or grid.is_complex() or grid.dtype == torch.bool:
        raise TypeError(f"grid_hw must hold integers (int64), got {grid.dtype}")
    if grid.ndim != 2 or grid.shape[1] != 2 or grid.shape[0] == 0:
        raise ValueError(f"grid_hw must have shape (n, 2) with n >= 1, got {tuple(grid.shape)}")
    grids = [(int(h), int(w)) for h, w in grid.tolist()]
    unit = step // ps
    for i, (h, w) in enumerate(grids):
        if h <= 0 or w <= 0 or h % unit or w % unit:
            raise ValueError(f"image {i} has a {h}x{w} patch grid ({h * ps}x{w * ps} pixels); both sides must be "
                             f"positive multiples of min_resolution_step={step} pixels ({unit} patches).")
    total = sum(h * w for h, w in grids)
    if total != patches.shape[0]:
        raise ValueError(f"grid_hw describes {total} patches but patches holds {patches.shape[0]} rows")
    return grids


def _varlen_kernel():
    """``torch.nn.attention.varlen.varlen_attn`` when this torch has it, else ``None``."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Segments,
                     scale: Optional[float] = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Attention restricted to each segment of a packed sequence.

    On CUDA with half-precision inputs the flash variable-length kernel runs all segments at once
    (when this torch has ``torch.nn.attention.varlen``); otherwise each segment is attended
    separately with ``scaled_dot_product_attention`` (segments of equal length batched together).
    Measured on CPU (benchmarks/packed_benchmark.py) the per-segment path is faster than one call
    with a block-diagonal mask, whose cost grows with the square of the whole sequence.

    Args:
        q, k, v: ``(1, H, L, d)`` with ``L = segments.offsets[-1]``.
        segments: the segment layout.
        scale: softmax scale (default ``d ** -0.5``).
        dropout_p: attention dropout probability.

    Returns:
        ``(1, H, L, d)``.
    """
    if len(segments) == 1:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    kernel = _varlen_kernel()
    if kernel is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and dropout_p == 0.0:
        cu = torch.tensor(segments.offsets, dtype=torch.int32, device=q.device)
        longest = max(segments.lengths)
        try:  # (L, H, d) layout
            out = kernel(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu, longest,
                         longest, scale=scale)
            return out.transpose(0, 1).unsqueeze(0)
        except RuntimeError as e:  # e.g. an architecture or head size the kernel does not support
            _logger.warning("varlen flash attention unavailable (%s); attending per segment instead", e)
    lengths = segments.lengths
    groups: dict = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    out = torch.empty_like(q)
    starts = segments.offsets
    for n, members in groups.items():
        if len(members) == 1:
            s = starts[members[0]]
            out[:, :, s:s + n] = F.scaled_dot_product_attention(
                q[:, :, s:s + n], k[:, :, s:s + n], v[:, :, s:s + n], dropout_p=dropout_p, scale=scale)
            continue
        # equal-length segments: one batched call
        qs = torch.cat([q[:, :, starts[i]:starts[i] + n] for i in members])
        ks = torch.cat([k[:, :, starts[i]:starts[i] + n] for i in members])
        vs = torch.cat([v[:, :, starts[i]:starts[i] + n] for i in members])
        res = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout_p, scale=scale)
        for j, i in enumerate(members):
            out[:, :, starts[i]:starts[i] + n] = res[j:j + 1]
    return out
