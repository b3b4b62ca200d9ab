"""Parity checks shared by the exporters: one error measure, one output flattening, one key format.

Every exporter's ``verify_*`` compares the exported artifact with the source model output by output
and size by size, and reports ``{'<output>@<H>x<W>': relative error}`` where ``<output>`` is
``summary`` / ``features`` for the backbone and ``<adaptor>.summary`` / ``<adaptor>.features`` for
an adaptor (the ONNX output names).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch

__all__ = ["flatten_outputs", "parity_key", "relative_error"]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected||_2 / ||expected||_2`` over the whole tensor, in float64.

    Args:
        actual: the exported artifact's output, any shape.
        expected: the reference output, the same shape (any floating dtype or device).

    Returns:
        The relative L2 error; 0 when both are zero, ``inf`` when only ``expected`` is.

    Raises:
        ValueError: the shapes differ.
    """
    if tuple(actual.shape) != tuple(expected.shape):
        raise ValueError(f"cannot compare tensors of shapes {tuple(actual.shape)} and {tuple(expected.shape)}")
    a = actual.detach().to("cpu", torch.float64)
    b = expected.detach().to("cpu", torch.float64)
    num = (a - b).norm().item()
    den = b.norm().item()
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def flatten_outputs(out: Any, adaptor_names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
    """A model output as ``{output name: tensor}`` in output order.

    Args:
        out: a ``RadioOutput`` (backbone only) or the dict of ``RadioOutput`` a model with adaptors
            returns (``'backbone'`` plus one entry per adaptor).
        adaptor_names: the adaptors to include, in order (default: every adaptor of a dict output,
            in its order; none for a ``RadioOutput``).

    Returns:
        ``{'summary': (B, C), 'features': (B, ...), '<name>.summary': ..., '<name>.features': ...}``.

    Raises:
        KeyError: an adaptor named that the output does not have.
    """
    backbone = out["backbone"] if isinstance(out, dict) else out
    if adaptor_names is None:
        adaptor_names = [k for k in out if k != "backbone"] if isinstance(out, dict) else []
    flat = {"summary": backbone.summary, "features": backbone.features}
    for name in adaptor_names:
        flat[f"{name}.summary"] = out[name].summary
        flat[f"{name}.features"] = out[name].features
    return flat


def parity_key(output: str, height: int, width: int) -> str:
    """The key of one parity measurement: ``'<output>@<H>x<W>'``, e.g. ``'clip.features@48x80'``."""
    return f"{output}@{int(height)}x{int(width)}"
