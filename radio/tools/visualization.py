"""Feature pictures: the first three principal components of dense features shown as RGB.

Each patch's feature vector is projected on the top three principal directions of all patches of
the image; each component is scaled to ``[0, 1]`` between its 1st and 99th percentile (so a few
extreme patches do not wash out the rest) and becomes one colour channel. Patches with similar
features get similar colours, which makes the model's grouping of the image visible.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

__all__ = ["pca_components", "pca_rgb", "side_by_side"]

_logger = logging.getLogger(__name__)


def pca_components(features: torch.Tensor, n: int = 3) -> torch.Tensor:
    """Projections of every patch on the top ``n`` principal directions.

    Args:
        features: ``(D, h, w)`` dense features of one image.
        n: number of components (missing ones, when ``min(D, h*w) < n``, are zero).

    Returns:
        ``(h, w, n)`` float32. Each component's sign is chosen so that its largest-magnitude
        projection is positive (PCA signs are otherwise arbitrary).
    """
    d, h, w = features.shape
    x = features.float().reshape(d, h * w).t()  # (N, D)
    x = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # vh: (min(N, D), D)
    proj = x @ vh[:n].t()  # (N, k)
    idx = proj.abs().argmax(dim=0)
    signs = torch.sign(proj[idx, torch.arange(proj.shape[1])])
    proj = proj * torch.where(signs == 0, torch.ones_like(signs), signs)
    if proj.shape[1] < n:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], n - proj.shape[1])], dim=1)
    return proj.reshape(h, w, n)


def pca_rgb(features: torch.Tensor, low: float = 0.01, high: float = 0.99) -> np.ndarray:
    """The feature picture: ``(h, w, 3)`` uint8, one PCA component per channel.

    Args:
        features: ``(D, h, w)`` dense features of one image.
        low, high: quantiles mapped to 0 and 255 (values beyond are clipped).
    """
    comps = pca_components(features, 3).reshape(-1, 3)
    lo = torch.quantile(comps, low, dim=0)
    hi = torch.quantile(comps, high, dim=0)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    scaled = ((comps - lo) / span).clamp(0, 1)
    scaled = torch.where(hi > lo, scaled, torch.full_like(scaled, 0.5))
    h, w = features.shape[-2:]
    return (scaled * 255).round().to(torch.uint8).reshape(h, w, 3).numpy()


def side_by_side(image: Image.Image, picture: np.ndarray) -> Image.Image:
    """``image`` on the left and ``picture`` (upsampled to the image's size, nearest) on the right.

    Returns:
        An RGB image of size ``(2 * W, H)`` for an input image of size ``(W, H)``.
    """
    w, h = image.size
    right = Image.fromarray(np.ascontiguousarray(picture)).resize((w, h), Image.NEAREST)
    canvas = Image.new("RGB", (2 * w, h))
    canvas.paste(image.convert("RGB"), (0, 0))
    canvas.paste(right, (w, 0))
    return canvas
