"""Shared data of the ``radio.tools`` tests: the generated images and independent reference helpers.

Imported as ``tools_data`` (``tests/tools`` is on ``sys.path`` under pytest's default "prepend"
import mode, as ``tests/`` is for ``ckpt_writer``).
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


STEP = 16  # patch size of the tiny checkpoint
MAX_SIDE = 64  # cpe_max_size of the tiny checkpoint = its max_resolution
# (relative name, (H, W), mode): images of several sizes, two of equal size, grey and RGBA ones.
GOOD = [
    ("a/one.png", (40, 60), "RGB"),
    ("a/two.png", (48, 64), "RGB"),
    ("a/deeper/three.jpg", (48, 64), "L"),
    ("b/four.png", (64, 48), "RGBA"),
    ("b/five.png", (33, 47), "RGB"),
    ("six.bmp", (100, 50), "RGB"),
]
BAD = ["a/garbage.jpg", "b/truncated.png"]


def draw(shape, mode="RGB", seed=0):
    """A smooth gradient with noise (so that features differ between patches)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 3) % 256], -1).astype(np.int64)
    arr = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    if mode == "L":
        return img.convert("L")
    if mode == "RGBA":
        return Image.fromarray(np.concatenate([arr, rng.integers(0, 255, (h, w, 1), dtype=np.uint8)], -1))
    return img


def reference_input(path, size=None):
    """Decode with PIL and resize with F.interpolate, independently of radio.tools.images."""
    img = Image.open(path)
    img.load()
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]
    h, w = arr.shape[:2]
    if size is None:  # native: round to multiples of 16, longer side capped at 64 (aspect kept)
        s = min(1.0, MAX_SIDE / max(h, w))
        size = tuple(max(STEP, int(round(v * s / STEP)) * STEP) for v in (h, w))
    if tuple(size) != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return x, (h, w)



ROOT = Path(__file__).resolve().parents[2]
