"""Image files for feature extraction: discovery, decoding, the resize policy and size buckets.

These helpers feed ``radio extract`` / ``radio visualize`` (:mod:`radio.tools.cli`) and the examples, so
that every tool reads, orients and resizes images the same way:

* :func:`find_images` turns files and directories into a sorted list of :class:`ImageRecord`
  whose ``name`` (a relative POSIX path) is the image's identity in every output;
* :func:`load_image` decodes one file to a ``(3, H, W)`` float tensor in ``[0, 1]`` (EXIF
  orientation applied, RGB);
* :class:`SizePolicy` decides the model input size of an image (``preferred``, ``native`` or a
  fixed size) and :func:`resize_image` resizes to it (bilinear, antialiased);
* :class:`ImageDataset` loads and resizes in ``DataLoader`` workers and reports unreadable files
  instead of raising; :class:`SizeBuckets` groups images of equal input size into batches.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Generic, Iterator, List, Literal, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..outputs import Resolution, nearest_multiple

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageRecord",
    "LoadedImage",
    "SizePolicy",
    "SizeBuckets",
    "ImageDataset",
    "collate_single",
    "find_images",
    "load_image",
    "resize_image",
]

_logger = logging.getLogger(__name__)

#: File suffixes (lower case) that directory scans pick up. Files named explicitly are always used.
IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                                     ".ppm", ".pgm", ".pbm")

SizeMode = Literal["preferred", "native", "fixed"]
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class ImageRecord:
    """One image to process.

    Attributes:
        path: the file, as found (absolute).
        name: its identity in outputs: the path relative to the common root of all inputs, with
            ``/`` separators (``cats/001.jpg``). Unique within one discovery.
    """

    path: Path
    name: str


def find_images(inputs: Sequence[PathLike], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[ImageRecord]:
    """Image files named by ``inputs`` (files and directories), sorted by name, without duplicates.

    Directories are scanned recursively for files whose suffix is in ``extensions`` (any case);
    hidden files and directories (``.name``) are skipped and symbolic links to directories are not
    followed. Files given explicitly are kept whatever their suffix (an unreadable one is reported
    when it is loaded). Names are relative to the deepest directory containing every input, so two
    different files never share a name and a single directory maps to paths inside it.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: ``inputs`` is empty.
    """
    if not inputs:
        raise ValueError("No input given: pass image files and/or directories.")
    suffixes = tuple(e.lower() for e in extensions)
    files: List[str] = []
    roots: List[str] = []
    for item in inputs:
        p = os.path.abspath(os.fspath(item))
        if os.path.isdir(p):
            roots.append(p)
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                files.extend(os.path.join(dirpath, f) for f in filenames
                             if not f.startswith(".") and f.lower().endswith(suffixes))
        elif os.path.exists(p):
            roots.append(os.path.dirname(p))
            files.append(p)
        else:
            raise FileNotFoundError(f"Input not found: {item}")
    root = os.path.commonpath(roots)
    records: Dict[str, ImageRecord] = {}
    for f in files:
        name = Path(os.path.relpath(f, root)).as_posix()
        records.setdefault(name, ImageRecord(Path(f), name))
    return [records[n] for n in sorted(records)]


def load_image(path: PathLike) -> torch.Tensor:
    """Decode an image file to RGB ``(3, H, W)`` float32 in ``[0, 1]``.

    EXIF orientation is applied (so ``H, W`` are the upright size); palette, grey and CMYK images
    become RGB and an alpha channel is dropped. Animated images give their first frame.

    Raises:
        OSError: the file cannot be read or is not a (complete) image (PIL's
            ``UnidentifiedImageError`` is an ``OSError``).
    """
    with Image.open(path) as im:
        im.load()  # decode now, so that truncated files fail here and not later
        im = ImageOps.exif_transpose(im)
        rgb = im.convert("RGB")
    arr = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def resize_image(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resize ``(3, H, W)`` (or ``(B, 3, H, W)``) to ``size = (height, width)``.

    Bilinear with antialiasing (``F.interpolate(..., align_corners=False, antialias=True)``),
    clamped to ``[0, 1]``; the image is returned unchanged when it already has that size.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    batched = image if image.ndim == 4 else image.unsqueeze(0)
    out = F.interpolate(batched, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    out = out.clamp_(0.0, 1.0)
    return out if image.ndim == 4 else out[0]


@dataclass(frozen=True)
class SizePolicy:
    """How an image of size ``(H, W)`` becomes a model input size (every side a multiple of ``step``).

    Modes:
        ``preferred``: keep the aspect ratio and scale to the pixel budget of ``size`` (the model's
            preferred resolution, e.g. 512x512), i.e. by ``sqrt(size_h * size_w / (H * W))``, then
            round each side to the nearest multiple of ``step``. Square images get exactly ``size``;
            images of equal aspect ratio share one input size.
        ``native``: the image's own size rounded to the nearest multiple of ``step``.
        ``fixed``: always ``size`` (the aspect ratio is not kept; ``max_side`` does not apply).

    In ``preferred`` and ``native`` mode, an image whose scaled longer side would exceed ``max_side``
    is scaled down (aspect kept) so that it equals ``max_side``, and no side ends above the largest
    multiple of ``step`` not above ``max_side``.

    Attributes:
        mode: one of the above.
        step: the model's ``min_resolution_step`` (patch size, times the ViTDet window size).
        size: the target (``preferred``, ``fixed``).
        max_side: the cap of ``preferred`` and ``native`` (``None``: no cap), e.g. the model's
            ``max_resolution``.
    """

    mode: SizeMode
    step: int
    size: Optional[Resolution] = None
    max_side: Optional[int] = None

    def __post_init__(self) -> None:
        if self.mode not in ("preferred", "native", "fixed"):
            raise ValueError(f"Unknown resize mode {self.mode!r}; use 'preferred', 'native' or 'fixed'.")
        if self.step < 1:
            raise ValueError(f"step must be positive, got {self.step}")
        if self.mode in ("preferred", "fixed") and self.size is None:
            raise ValueError(f"resize mode {self.mode!r} needs a size")
        if self.mode == "fixed" and (self.size.height % self.step or self.size.width % self.step):
            near = Resolution(nearest_multiple(self.size.height, self.step),
                              nearest_multiple(self.size.width, self.step))
            raise ValueError(
                f"Resolution {self.size.height}x{self.size.width} is not supported: both sides must be "
                f"multiples of {self.step}. The nearest supported resolution is {near.height}x{near.width}."
            )

    def target(self, height: int, width: int) -> Resolution:
        """The model input size for an image of ``height x width`` pixels."""
        if self.mode == "fixed":
            return Resolution(*self.size)
        scale = 1.0
        if self.mode == "preferred":
            scale = math.sqrt(self.size.height * self.size.width / float(height * width))
        if self.max_side is not None and max(height, width) * scale > self.max_side:
            scale = self.max_side / float(max(height, width))
        h, w = nearest_multiple(height * scale, self.step), nearest_multiple(width * scale, self.step)
        if self.max_side is not None:
            cap = max((self.max_side // self.step) * self.step, self.step)
            h, w = min(h, cap), min(w, cap)
        return Resolution(h, w)

    def describe(self) -> str:
        """A short human-readable form, e.g. ``'preferred (512x512 pixel budget, step 16)'``."""
        if self.mode == "fixed":
            return f"fixed {self.size.height}x{self.size.width}"
        if self.mode == "preferred":  # (the cap is left out: this text is part of a resumable run's settings)
            return f"preferred ({self.size.height}x{self.size.width} pixel budget, aspect kept, step {self.step})"
        cap = f", longer side <= {self.max_side}" if self.max_side else ""
        return f"native (step {self.step}{cap})"


@dataclass
class LoadedImage:
    """What :class:`ImageDataset` yields for one record.

    Attributes:
        index: position in the dataset's record list.
        image: the resized ``(3, h, w)`` input in ``[0, 1]``, or ``None`` if loading failed.
        original_size: ``(H, W)`` of the decoded (upright) image, or ``None`` if loading failed.
        error: why loading failed (``'<ExceptionType>: message'``), else ``None``.
    """

    index: int
    image: Optional[torch.Tensor]
    original_size: Optional[Tuple[int, int]]
    error: Optional[str] = None


class ImageDataset(torch.utils.data.Dataset):
    """Loads and resizes images; a file that cannot be decoded yields a :class:`LoadedImage` with
    ``error`` set instead of raising, so that one bad file never stops a run.

    Args:
        records: the images.
        policy: decides each image's input size.
    """

    def __init__(self, records: Sequence[ImageRecord], policy: SizePolicy) -> None:
        self.records = list(records)
        self.policy = policy

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> LoadedImage:
        path = self.records[index].path
        try:
            image = load_image(path)
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, ... on corrupt files
            return LoadedImage(index, None, None, f"{type(e).__name__}: {e}")
        h, w = image.shape[-2:]
        return LoadedImage(index, resize_image(image, self.policy.target(h, w)), (int(h), int(w)))


def collate_single(item: LoadedImage) -> LoadedImage:
    """``DataLoader(collate_fn=...)`` for ``batch_size=None``: pass items through untouched."""
    return item


T = TypeVar("T")


class SizeBuckets(Generic[T]):
    """Groups items by input size into batches of at most ``batch_size`` items.

    :meth:`add` returns a full batch as soon as one size has ``batch_size`` items. To bound memory
    when many sizes occur, it also returns the largest waiting group once more than
    ``max_waiting`` items wait in total. :meth:`drain` yields what is left at the end.
    """

    def __init__(self, batch_size: int, max_waiting: Optional[int] = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.max_waiting = max_waiting if max_waiting is not None else 4 * batch_size
        self._groups: Dict[Tuple[int, ...], List[T]] = {}
        self._waiting = 0

    def add(self, size: Tuple[int, ...], item: T) -> Optional[List[T]]:
        """Add ``item`` of input ``size``; return a batch that is ready, if any."""
        group = self._groups.setdefault(tuple(size), [])
        group.append(item)
        self._waiting += 1
        if len(group) >= self.batch_size:
            return self._pop(tuple(size))
        if self._waiting > self.max_waiting:
            return self._pop(max(self._groups, key=lambda k: len(self._groups[k])))
        return None

    def _pop(self, key: Tuple[int, ...]) -> List[T]:
        batch = self._groups.pop(key)
        self._waiting -= len(batch)
        return batch

    def drain(self) -> Iterator[List[T]]:
        """Yield the remaining (partial) batches, largest first."""
        while self._groups:
            yield self._pop(max(self._groups, key=lambda k: len(self._groups[k])))
