"""Zero-shot ImageNet classification with a text-capable RADIO adaptor (top-1 / top-5 accuracy).

A RADIO model distilled from a CLIP-like teacher (an ``open_clip`` or ``siglip2`` adaptor, e.g.
``clip`` or ``siglip2-g``) maps an image into that teacher's embedding space, where it can be
compared with the teacher's text embeddings (Radford et al., "Learning Transferable Visual Models
From Natural Language Supervision", https://arxiv.org/abs/2103.00020). Each class gets one text
embedding: the mean of its normalized prompt embeddings (one prompt per template), normalized
again. An image is classified by the cosine similarity between the adaptor's summary and these
class embeddings.

Data:
    * ``--data DIR``: an ImageFolder-style directory (one sub-folder per class). Folders named by
      WordNet ids (``n01440764``, ...) get the ImageNet class names that open_clip ships (with
      all 1000 folders, this is the standard ImageNet validation layout); any other folder name is
      used as the class name, with ``_`` replaced by spaces. Labels follow the sorted folder
      names, so a subset of ImageNet is classified among its own classes only.
    * ``--hf-dataset NAME [--split validation]``: a Hugging Face dataset with an image and a
      ``label`` column (needs the ``datasets`` package and network access or a local cache).

Multi-process runs with ``torchrun`` shard the images by rank (image ``i`` goes to rank
``i % world_size``, so nothing is counted twice) and sum the counts over ranks (gloo on CPU, NCCL on
GPU); only rank 0 prints. With ``--classifier-cache``, rank 0 builds (or reads) the text classifier
and the other ranks read the file it leaves; without it, every rank builds the same classifier.

Usage::

    python examples/zero_shot_imagenet.py --version c-radio_v4-h --adaptor clip \\
        --data /datasets/imagenet/val --batch-size 64 --bf16
    torchrun --nproc_per_node 8 examples/zero_shot_imagenet.py --version c-radio_v4-h \\
        --adaptor siglip2-g --data /datasets/imagenet/val --classifier-cache /tmp/siglip2-g.pt

The input resolution defaults to the release's preferred one (224, snapped to the patch size, for
a checkpoint file). The last line printed has the form ``top1 = 12.50%  top5 = 50.00%  (n = 16)``;
"top5" is the top-k accuracy with ``k = min(5, number of classes)``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from radio import radio_model
from radio.tools.distributed import DistributedContext, distributed_context, rank_zero_first

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
WNID_PATTERN = re.compile(r"^n\d{8}$")
TEMPLATE_SETS = ("openai", "simple")
DEFAULT_RESOLUTION = 224
CACHE_FORMAT = 1

Template = Callable[[str], str]


# ------------------------------------------------------------------------------------------------
# Class names and prompts


def _open_clip_metadata() -> Any:
    """open_clip's zero-shot metadata module (ImageNet class names and prompt templates)."""
    try:
        from open_clip import zero_shot_metadata
    except ImportError as err:
        raise ImportError("The ImageNet class names and prompt templates come from open_clip: "
                          "pip install open_clip_torch") from err
    return zero_shot_metadata


def get_templates(name: str) -> List[Template]:
    """The prompt templates ``'openai'`` (80 prompts, CLIP paper) or ``'simple'`` (7 of them)."""
    meta = _open_clip_metadata()
    if name == "openai":
        return list(meta.OPENAI_IMAGENET_TEMPLATES)
    if name == "simple":
        return list(meta.SIMPLE_IMAGENET_TEMPLATES)
    raise ValueError(f"Unknown template set {name!r}; use one of {TEMPLATE_SETS}.")


def imagenet_wnids() -> List[str]:
    """The 1000 ImageNet-1k WordNet ids in the standard (sorted) class order, from timm."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def class_names_for_folders(folders: Sequence[str]) -> List[str]:
    """Class names for ImageFolder sub-folder names (in the given order).

    WordNet ids become open_clip's ImageNet class names; anything else is used as written, with
    ``_`` replaced by spaces.

    Raises:
        ValueError: folder names that look like WordNet ids but are not ImageNet-1k classes.
    """
    if folders and all(WNID_PATTERN.match(f) for f in folders):
        index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
        unknown = [f for f in folders if f not in index]
        if unknown:
            raise ValueError(f"Folder names {unknown[:5]} look like WordNet ids but are not "
                             "ImageNet-1k classes; rename the folders to the class names instead.")
        names = _open_clip_metadata().IMAGENET_CLASSNAMES
        return [names[index[f]] for f in folders]
    return [f.replace("_", " ") for f in folders]


# ------------------------------------------------------------------------------------------------
# Data


def resize_center_crop(image: Image.Image, size: Tuple[int, int],
                       crop_pct: float = 1.0) -> torch.Tensor:
    """Resize (bicubic) so that the image covers ``size / crop_pct``, center-crop ``size``.

    Returns:
        ``(3, H, W)`` float32 RGB in ``[0, 1]``, the input range of RADIO models.
    """
    height, width = size
    image = image.convert("RGB")
    scale = max(height / image.height, width / image.width) / crop_pct
    new_w = max(width, round(image.width * scale))
    new_h = max(height, round(image.height * scale))
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    image = image.crop((left, top, left + width, top + height))
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(height, width, 3).permute(2, 0, 1).float().div(255)


class ImageFolderDataset(Dataset):
    """Images under ``root/<class folder>/...``, labelled by sorted folder name.

    Args:
        root: the directory.
        size: output ``(H, W)``.
        crop_pct: see :func:`resize_center_crop`.
    """

    def __init__(self, root: str, size: Tuple[int, int], crop_pct: float = 1.0) -> None:
        base = Path(root)
        if not base.is_dir():
            raise FileNotFoundError(f"--data {root}: no such directory")
        self.folders = sorted(p.name for p in base.iterdir() if p.is_dir())
        self.samples: List[Tuple[Path, int]] = []
        for label, folder in enumerate(self.folders):
            files = sorted(p for p in (base / folder).rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            self.samples.extend((p, label) for p in files)
        if not self.samples:
            raise ValueError(f"--data {root}: found no images in class sub-folders (expected "
                             f"{root}/<class>/<image>{{{','.join(IMAGE_EXTENSIONS)}}})")
        self.class_names = class_names_for_folders(self.folders)
        self.size, self.crop_pct = size, crop_pct

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return resize_center_crop(image, self.size, self.crop_pct), label


class HFImageDataset(Dataset):
    """A Hugging Face image-classification dataset (an image column and a ``label`` column)."""

    def __init__(self, name: str, split: str, size: Tuple[int, int], crop_pct: float = 1.0) -> None:
        try:
            import datasets
        except ImportError as err:
            raise ImportError("--hf-dataset needs the Hugging Face `datasets` package: pip install "
                              "datasets (or pass an ImageFolder directory with --data).") from err
        self.data = datasets.load_dataset(name, split=split)
        features = self.data.features
        images = [k for k, v in features.items() if isinstance(v, datasets.Image)]
        labels = features.get("label")
        if not images or not isinstance(labels, datasets.ClassLabel):
            raise ValueError(f"--hf-dataset {name}: expected an image column and a ClassLabel "
                             f"'label' column, got {dict(features)}")
        self.image_key = images[0]
        names = list(labels.names)
        if len(names) == 1000:  # ImageNet-1k: labels are the sorted WordNet ids
            self.class_names = list(_open_clip_metadata().IMAGENET_CLASSNAMES)
        else:
            self.class_names = [n.replace("_", " ") for n in names]
        self.size, self.crop_pct = size, crop_pct

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        item = self.data[index]
        label = int(item["label"])
        if label < 0:
            raise ValueError("This split has no labels (label -1); use a labelled split such as "
                             "'validation'.")
        return resize_center_crop(item[self.image_key], self.size, self.crop_pct), label


# ------------------------------------------------------------------------------------------------
# Text classifier


def _file_fingerprint(path: Optional[str]) -> Optional[List[Any]]:
    """Absolute path, size and modification time of a local file (None if not a file)."""
    if path is None or not os.path.isfile(path):
        return None
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def classifier_key(version: str, adaptor: str, text_weights: Optional[str], templates: str,
                   class_names: Sequence[str]) -> str:
    """Hash identifying a text classifier: model, adaptor, text weights, templates, class names.

    Local files (checkpoint, text weights) count by path, size and modification time, so that a
    rewritten file invalidates the cache.
    """
    desc = {"format": CACHE_FORMAT, "version": _file_fingerprint(version) or version,
            "adaptor": adaptor, "text_weights": _file_fingerprint(text_weights) or text_weights,
            "templates": templates, "class_names": list(class_names)}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def build_classifier(adaptor: torch.nn.Module, class_names: Sequence[str],
                     templates: Sequence[Template], progress: bool = True) -> torch.Tensor:
    """Class embeddings ``(C, D)``: per class, the normalized mean of its normalized prompts."""
    rows = []
    for name in tqdm(class_names, desc="text classifier", disable=not progress):
        prompts = [template(name) for template in templates]
        tokens = adaptor.tokenizer(prompts)
        embeddings = adaptor.encode_text(tokens, normalize=True).float()  # (P, D)
        rows.append(F.normalize(embeddings.mean(dim=0), dim=-1))
    return torch.stack(rows)


def load_cached_classifier(path: str, key: str) -> Optional[torch.Tensor]:
    """The classifier stored at ``path`` if its key matches, else ``None``."""
    if not os.path.isfile(path):
        return None
    cached = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(cached, dict) or cached.get("key") != key:
        _logger.warning("The classifier cache %s was made for another model, adaptor, templates "
                        "or classes; rebuilding it.", path)
        return None
    _logger.info("Reusing the text classifier cached in %s", path)
    return cached["classifier"]


def save_cached_classifier(path: str, key: str, classifier: torch.Tensor) -> None:
    """Write the classifier atomically (a partial file is never read by another process)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save({"key": key, "classifier": classifier.cpu()}, tmp)
    os.replace(tmp, path)
    _logger.info("Saved the text classifier to %s", path)


# ------------------------------------------------------------------------------------------------
# Main


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="c-radio_v4-h", help="release name or checkpoint path")
    parser.add_argument("--adaptor", default="clip",
                        help="text-capable adaptor, e.g. clip or siglip2-g")
    parser.add_argument("--text-weights", default=None,
                        help="local text-tower weights for the adaptor (open_clip checkpoint "
                             "file or SigLIP2 save_pretrained directory), for offline use")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data",
                        help="ImageFolder-style directory (e.g. ImageNet val with wnid folders)")
    source.add_argument("--hf-dataset", help="Hugging Face dataset name, e.g. ILSVRC/imagenet-1k")
    parser.add_argument("--split", default="validation", help="split of --hf-dataset")
    parser.add_argument("--templates", choices=TEMPLATE_SETS, default="openai",
                        help="prompt templates")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch and process")
    parser.add_argument("--resolution", type=int, nargs="+", metavar="PX",
                        help="input size: one value (square) or height width; default the model's "
                             f"preferred resolution, else {DEFAULT_RESOLUTION}")
    parser.add_argument("--crop-pct", type=float, default=1.0,
                        help="center-crop fraction (resize to resolution / crop_pct first)")
    parser.add_argument("--bf16", action="store_true",
                        help="run the image model under bfloat16 autocast")
    parser.add_argument("--classifier-cache", default=None, metavar="PATH",
                        help="file caching the text classifier (reused when model, adaptor, "
                             "templates and classes match)")
    parser.add_argument("--workers", type=int, default=4, help="data-loading worker processes")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="use only the first N images")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args(argv)
    if args.resolution is not None and len(args.resolution) > 2:
        parser.error("--resolution takes one value (square) or two (height width)")
    if args.batch_size < 1 or args.workers < 0 or (args.limit is not None and args.limit < 1):
        parser.error("--batch-size and --limit must be positive, --workers non-negative")
    if not 0 < args.crop_pct <= 1:
        parser.error("--crop-pct must be in (0, 1]")
    if args.hf_dataset is not None:
        try:
            import datasets  # noqa: F401
        except ImportError:
            parser.error("--hf-dataset needs the Hugging Face `datasets` package (pip install "
                         "datasets); or pass an ImageFolder directory with --data")
    return args


def _resolution(model: torch.nn.Module, requested: Optional[Sequence[int]]) -> Tuple[int, int]:
    if requested is None:
        if model.preferred_resolution is not None:
            return tuple(model.preferred_resolution)
        requested = [DEFAULT_RESOLUTION]
    height, width = requested[0], requested[-1]
    snapped = tuple(model.get_nearest_supported_resolution(height, width))
    if snapped != (height, width):
        _logger.warning("Resolution %dx%d is not supported by the model; using %dx%d.",
                        height, width, *snapped)
    return snapped


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Evaluate zero-shot accuracy; prints it (rank 0) and returns accuracies and counts.

    Returns:
        ``{'top1': %, 'top5': %, 'top1_correct': int, 'top5_correct': int, 'n': int}``, summed
        over all processes.
    """
    args = _parse_args(argv)
    with distributed_context(args.device) as ctx:
        logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        return _evaluate(args, ctx)


def _evaluate(args: argparse.Namespace, ctx: DistributedContext) -> Dict[str, float]:
    rank, world, device = ctx.rank, ctx.world_size, ctx.device
    text_weights = {args.adaptor: args.text_weights} if args.text_weights else None
    model = radio_model(version=args.version, adaptor_names=[args.adaptor],
                        text_weights=text_weights, progress=rank == 0)
    adaptor = model.adaptors[args.adaptor]
    if not adaptor.has_text:
        raise SystemExit(f"Adaptor {args.adaptor!r} has no text tower; zero-shot classification "
                         "needs an 'open_clip' or 'siglip2' adaptor such as 'clip' or 'siglip2-g'.")
    model.to(device)
    size = _resolution(model, args.resolution)

    if args.data is not None:
        dataset: Dataset = ImageFolderDataset(args.data, size, args.crop_pct)
    else:
        dataset = HFImageDataset(args.hf_dataset, args.split, size, args.crop_pct)
    class_names = dataset.class_names
    total = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    if rank == 0:
        _logger.info("%d images, %d classes, resolution %dx%d, %d process(es)", total,
                     len(class_names), *size, world)

    key = classifier_key(args.version, args.adaptor, args.text_weights, args.templates, class_names)
    templates = get_templates(args.templates)
    if args.classifier_cache is None:
        classifier = build_classifier(adaptor, class_names, templates, progress=rank == 0)
    else:
        with rank_zero_first(ctx):
            classifier = load_cached_classifier(args.classifier_cache, key)
            if classifier is None:
                if rank != 0:
                    raise RuntimeError(f"rank {rank}: rank 0 did not write {args.classifier_cache}")
                classifier = build_classifier(adaptor, class_names, templates)
                save_cached_classifier(args.classifier_cache, key, classifier)
    classifier = classifier.to(device=device, dtype=torch.float32)  # (C, D)

    # Image i belongs to rank i % world: no padding, so no image is counted twice.
    shard = Subset(dataset, list(range(rank, total, world)))
    loader = DataLoader(shard, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        pin_memory=device.type == "cuda")
    k = min(5, len(class_names))
    counts = torch.zeros(3, dtype=torch.int64, device=device)  # top-1, top-k, images
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=args.bf16)
    with torch.inference_mode():
        for images, labels in tqdm(loader, desc="images", disable=rank != 0):
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            with autocast:
                summary = model(images)[args.adaptor].summary
            logits = F.normalize(summary.float(), dim=-1) @ classifier.T  # (B, C)
            topk = logits.topk(k, dim=-1).indices  # (B, k)
            hits = topk == labels[:, None]
            counts += torch.stack([hits[:, 0].sum(), hits.any(dim=-1).sum(),
                                   labels.new_tensor(len(labels))])
    if world > 1:
        dist.all_reduce(counts)
    top1, topk_hits, n = counts.tolist()
    result = {"top1": 100.0 * top1 / max(n, 1), "top5": 100.0 * topk_hits / max(n, 1),
              "top1_correct": top1, "top5_correct": topk_hits, "n": n}
    if rank == 0:
        print(f"top1 = {result['top1']:.2f}%  top5 = {result['top5']:.2f}%  (n = {n})")
    return result


if __name__ == "__main__":
    main()
