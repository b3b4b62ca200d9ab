"""Input guard rails shared by every forward path: shape errors and warnings for likely mistakes.

Shape problems raise (they would fail later with an obscure message, or silently give wrong
features). Value problems warn: a 0-255 image or an already standardized one still produces
numbers, just meaningless ones. The value checks are cheap reductions over the input; they never
run while the model is traced, compiled or exported, so no graph ever contains them.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import List, Optional, Sequence, Set, Tuple, Union

import torch

from .outputs import Resolution, nearest_multiple

__all__ = ["check_image_batch", "check_image_values", "is_tracing", "nearest_supported_resolution", "resolve_indices"]

#: A float image whose maximum exceeds this is almost surely on the 0-255 scale.
MAX_PLAUSIBLE = 1.5
#: A float image whose minimum is below this was almost surely standardized already.
MIN_PLAUSIBLE = -0.5


def is_tracing() -> bool:
    """Whether the current call is being traced, compiled or exported (no Python-side checks then)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and compiler.is_compiling():
        return True
    onnx = getattr(torch, "onnx", None)
    return bool(onnx is not None and onnx.is_in_onnx_export())


def nearest_supported_resolution(height: float, width: float, step: int,
                                 max_resolution: Optional[int] = None) -> Resolution:
    """Each side rounded to the nearest multiple of ``step`` (at least one step), capped at ``max_resolution``.

    Raises:
        ValueError: a side that is not a positive finite number.
    """
    sides = []
    for name, v in (("height", height), ("width", width)):  # NumPy numbers too; bools are not sizes
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive finite number of pixels, got {v!r}")
        sides.append(nearest_multiple(float(v), step))
    cap = None if max_resolution is None else max((max_resolution // step) * step, step)
    if cap is not None:
        sides = [min(s, cap) for s in sides]
    return Resolution(*sides)


def check_image_batch(x: torch.Tensor, step: int, channels: int = 3, max_resolution: Optional[int] = None) -> None:
    """Raise for anything that is not a floating ``(B, channels, H, W)`` batch with sides multiples of ``step``.

    ``max_resolution`` (the release's, when known) only shapes the suggested size, which is what
    ``get_nearest_supported_resolution`` gives.

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: wrong rank, channel count, an empty side, or sides that are not multiples of ``step``.
    """
    if not torch.is_tensor(x):
        raise TypeError(f"expected an image tensor (B, 3, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        hint = " For a single image use x.unsqueeze(0)." if x.ndim == 3 else ""
        raise ValueError(f"expected an image batch of shape (B, 3, H, W), got shape {tuple(x.shape)}.{hint}")
    if x.shape[1] != channels:
        raise ValueError(f"expected {channels} (RGB) channels in dim 1, got {x.shape[1]} (shape {tuple(x.shape)}); "
                         "RADIO takes RGB images in NCHW layout.")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point image with values in [0, 1], got dtype {x.dtype}; "
                        "convert integer images with x.float() / 255.")
    h, w = x.shape[-2:]
    if h == 0 or w == 0 or x.shape[0] == 0:
        raise ValueError(f"the image batch is empty (shape {tuple(x.shape)}); pass at least one image of at "
                         f"least {step}x{step} pixels.")
    if h % step or w % step:
        nearest = nearest_supported_resolution(h, w, step, max_resolution)  # what the model's helper says
        raise ValueError(
            f"Input size {h}x{w} is not supported: height and width must be multiples of "
            f"min_resolution_step={step}. The nearest supported size is {nearest.height}x{nearest.width}; "
            f"resize there (see get_nearest_supported_resolution({h}, {w}))."
        )


def check_image_values(x: torch.Tensor, *, standardizes: bool, max_resolution: Optional[int],
                       warned: Set[str], sizes: Optional[Sequence[Tuple[int, int]]] = None,
                       image_of: Optional[torch.Tensor] = None) -> None:
    """Warn about inputs that are valid tensors but likely mistakes.

    Args:
        x: the image batch ``(B, 3, H, W)`` (or packed patches viewed as ``(N, 3, ps, ps)``).
        standardizes: whether the model still applies its input conditioner (expects ``[0, 1]``).
        max_resolution: the largest side the model was trained for, when known.
        warned: causes already reported by this model; range warnings are given once per model
            (non-finite pixels every time, since they concern one batch).
        sizes: the images' ``(H, W)`` when ``x`` holds packed patches (default: ``x``'s own size).
        image_of: for packed patches, the image index of each row of ``x`` (for the NaN message).
    """
    if is_tracing():
        return
    x = x.detach()  # the checks read values only (and must not warn about scalars that require grad)
    h, w = max(sizes, key=max) if sizes else tuple(x.shape[-2:])
    if max_resolution is not None and max(h, w) > max_resolution and "max_resolution" not in warned:
        warned.add("max_resolution")
        warnings.warn(f"Input size {h}x{w} exceeds this model's max_resolution {max_resolution}: outputs degrade "
                      "past the trained range; resize the image (see get_nearest_supported_resolution).",
                      UserWarning, stacklevel=4)
    lo, hi = (float(v) for v in torch.aminmax(x))  # one pass, one sync
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN/Inf propagate: only then find the images
        finite = torch.isfinite(x).flatten(1).all(dim=1)
        rows = torch.nonzero(~finite).flatten()
        bad = sorted(set((image_of[rows] if image_of is not None else rows).tolist()))
        warnings.warn(f"Images {bad} of the batch contain NaN or Inf pixels; their outputs will be NaN.",
                      UserWarning, stacklevel=4)
        rest = x[finite]
        lo, hi = (float(v) for v in torch.aminmax(rest)) if rest.numel() else (0.0, 1.0)
    if not standardizes:
        return
    # Clearly negative first: a 0-255 image is never negative, a standardized one often exceeds 1.5.
    if lo < MIN_PLAUSIBLE:
        if "standardized" not in warned:
            warned.add("standardized")
            warnings.warn(f"The input's minimum is {lo:.4g}, but RADIO expects RGB values in [0, 1] and standardizes "
                          "them itself: it looks like an already standardized image. Pass images in [0, 1], or call "
                          "model.make_preprocessor_external() and standardize them yourself.", UserWarning,
                          stacklevel=4)
    elif hi > MAX_PLAUSIBLE and "scale" not in warned:
        warned.add("scale")
        warnings.warn(f"The input's maximum is {hi:.4g}, but RADIO expects RGB values in [0, 1]: it looks like a "
                      "0-255 image. Divide it by 255 (x.float() / 255).", UserWarning, stacklevel=4)


def resolve_indices(indices: Union[int, Sequence[int], None], depth: int) -> List[int]:
    """Indices selected by ``indices`` among ``depth`` outputs (blocks, or E-RADIO's pyramid maps), ascending, unique.

    ``None`` selects every block; an int ``n`` the last ``n``; a sequence selects its entries, with
    negative entries counted from the end.

    Raises:
        ValueError: ``n`` outside ``1..depth``, an entry out of range, or an empty selection.
    """
    if indices is None:
        return list(range(depth))
    if torch.is_tensor(indices):
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise TypeError(f"indices must hold integers, got a {indices.dtype} tensor")
        indices = indices.tolist()
    elif type(indices).__module__ == "numpy" and hasattr(indices, "tolist"):  # an array or NumPy scalar
        if getattr(indices.dtype, "kind", "") not in ("i", "u"):
            raise TypeError(f"indices must hold integers, got a NumPy {indices.dtype} value")
        indices = indices.tolist()
    if isinstance(indices, bool) or isinstance(indices, str) or not isinstance(indices, (numbers.Integral, Sequence)):
        raise TypeError(f"indices must be None, an int or a sequence of ints (block indices), got "
                        f"{type(indices).__name__} {indices!r}")
    if isinstance(indices, numbers.Integral):
        indices = int(indices)
        if not 1 <= indices <= depth:
            raise ValueError(f"indices={indices} asks for the last {indices} blocks; the model has {depth}, "
                             f"so use 1..{depth} (or a list of block indices).")
        return list(range(depth - indices, depth))
    out = set()
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"indices must be block indices (ints), got the element {i!r} ({type(i).__name__})")
        i = int(i)
        j = depth + i if i < 0 else i
        if not 0 <= j < depth:
            raise ValueError(f"block index {i} is out of range for a model with {depth} blocks "
                             f"(valid: {-depth}..{depth - 1}).")
        out.add(j)
    if not out:
        raise ValueError("indices selects no block; pass at least one block index.")
    return sorted(out)
