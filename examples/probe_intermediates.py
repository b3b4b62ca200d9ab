"""Intermediate-layer probing: how well does each block of a RADIO backbone classify images?

For a labelled image dataset in ``torchvision.datasets.ImageFolder`` layout (one sub-directory per
class), this script runs the model over every batch once through
``RADIOModel.forward_intermediates``, pools each selected block's tokens into one vector per image,
fits a probe per block on the training split and reports its top-1 accuracy on the validation
split. The result is printed as a table and, with ``--plot``, saved as a PNG of accuracy against
depth.

Probes:
    knn: cosine similarity; each of the ``k`` nearest training images votes for its class with
        weight ``exp(similarity / temperature)`` (the weighted kNN of DINO); the largest sum wins.
    linear: a linear classifier on standardized features, trained with AdamW, a cosine schedule
        and cross-entropy from a zero start (deterministic given ``--seed``).

Usage::

    python examples/probe_intermediates.py --version c-radio_v4-h \\
        --train /data/imagenette/train --val /data/imagenette/val \\
        --layers all --probe knn --k 20 --plot probe.png

    # one directory split into train/val (stratified per class, deterministic given --seed)
    python examples/probe_intermediates.py --version /path/to/checkpoint.pth.tar \\
        --data /data/flowers --val-fraction 0.2 --layers 0,7,15,-1 --aggregation dense \\
        --probe linear --epochs 100 --lr 1e-3

Images are resized to the chosen resolution and converted to ``[0, 1]`` tensors; they are not
normalized here because the model standardizes its inputs itself. With ``--aggregation dense``
each selected block reports the mean over the blocks since the previously selected one (see
``RADIOModel.forward_intermediates``); with ``--layers all`` both aggregations coincide.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms
from tqdm import tqdm

from radio import RADIOModel, Resolution, radio_model
from radio.model import resolve_indices

_logger = logging.getLogger(__name__)

POOLS = ("summary", "mean", "both")
DEFAULT_SIDE = 224


class LayerResult(NamedTuple):
    """Validation accuracy of the probe fitted on one block's features."""

    layer: int
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


def parse_layers(spec: str, depth: int) -> List[int]:
    """Block indices named by ``spec``: ``'all'`` or comma-separated ints (negative = from the end).

    Returns the unique indices in ascending order, the order ``forward_intermediates`` emits them.

    Raises:
        ValueError: an entry that is not an integer or is out of range for ``depth`` blocks.
    """
    if spec.strip().lower() == "all":
        return list(range(depth))
    try:
        entries = [int(item) for item in spec.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"--layers expects 'all' or comma-separated block indices, got {spec!r}") from None
    return resolve_indices(entries, depth)  # the model's own rule (range checks, order)


def parse_resolution(spec: Optional[str], model: RADIOModel) -> Resolution:
    """Input size from ``'S'`` or ``'HxW'``, snapped to the model's step.

    ``None`` means ``model.preferred_resolution``, or 224x224 (snapped) for models without one.
    """
    if spec is None:
        if model.preferred_resolution is not None:
            return Resolution(*model.preferred_resolution)
        return model.get_nearest_supported_resolution(DEFAULT_SIDE, DEFAULT_SIDE)
    try:
        sides = [int(p) for p in spec.lower().split("x")]
    except ValueError:
        raise ValueError(f"--resolution expects 'S' or 'HxW' in pixels, got {spec!r}") from None
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise ValueError(f"--resolution expects 'S' or 'HxW' with positive sides, got {spec!r}")
    height, width = sides if len(sides) == 2 else sides * 2
    snapped = model.get_nearest_supported_resolution(height, width)
    if snapped != (height, width):
        _logger.warning("resolution %dx%d is not a multiple of %d; using %dx%d", height, width,
                        model.min_resolution_step, snapped.height, snapped.width)
    return snapped


def stratified_split(targets: Sequence[int], val_fraction: float,
                     seed: int) -> Tuple[List[int], List[int]]:
    """Split sample indices into (train, val) per class, deterministically for a given ``seed``.

    Each class with ``n >= 2`` samples sends ``round(n * val_fraction)`` of them (at least 1, at
    most ``n - 1``) to validation; a class with a single sample stays in training.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    by_class: Dict[int, List[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(int(target), []).append(index)
    gen = torch.Generator().manual_seed(seed)
    train: List[int] = []
    val: List[int] = []
    for target in sorted(by_class):
        members = by_class[target]
        order = [members[i] for i in torch.randperm(len(members), generator=gen).tolist()]
        n_val = 0
        if len(members) > 1:
            n_val = min(max(round(len(members) * val_fraction), 1), len(members) - 1)
        val.extend(order[:n_val])
        train.extend(order[n_val:])
    return sorted(train), sorted(val)


def load_datasets(args: argparse.Namespace,
                  resolution: Resolution) -> Tuple[Dataset, Dataset, List[str]]:
    """Train and val datasets (images in ``[0, 1]``, resized to ``resolution``) and class names."""
    transform = transforms.Compose([
        transforms.Resize((resolution.height, resolution.width)),
        transforms.ToTensor(),  # [0, 1]; the model's own input conditioner standardizes
    ])
    if args.data is not None:
        full = datasets.ImageFolder(args.data, transform=transform)
        train_idx, val_idx = stratified_split(full.targets, args.val_fraction, args.seed)
        if not val_idx:
            raise ValueError(f"{args.data}: too few images per class for a validation split")
        return Subset(full, train_idx), Subset(full, val_idx), list(full.classes)
    train = datasets.ImageFolder(args.train, transform=transform)
    val = datasets.ImageFolder(args.val, transform=transform)
    if train.classes != val.classes:
        raise ValueError(f"--train and --val must have the same class folders; train has "
                         f"{train.classes}, val has {val.classes}.")
    return train, val, list(train.classes)


def pool_output(summary: torch.Tensor, features: torch.Tensor, pool: str) -> torch.Tensor:
    """One vector per image from a block's summary ``(B, C)`` and patch tokens ``(B, N, D)``."""
    if pool == "summary":
        return summary
    mean = features.mean(dim=1)  # (B, D)
    if pool == "mean":
        return mean
    return torch.cat([summary, mean], dim=1)  # (B, C + D)


@torch.inference_mode()
def extract_features(model: RADIOModel, loader: DataLoader, layers: List[int], aggregation: str,
                     pool: str, device: torch.device, bf16: bool,
                     desc: str) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Pooled features of every selected block for a whole dataset, in one pass over it.

    Returns:
        One float32 CPU tensor ``(num_images, dim)`` per selected block, and the labels
        ``(num_images,)``.
    """
    per_layer: List[List[torch.Tensor]] = [[] for _ in layers]
    labels: List[torch.Tensor] = []
    use_autocast = bf16 and device.type == "cuda"
    for images, targets in tqdm(loader, desc=desc, unit="batch"):
        images = images.to(device, non_blocking=True)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast
                    else contextlib.nullcontext())
        with autocast:
            outputs = model.forward_intermediates(
                images, indices=layers, aggregation=aggregation, output_fmt="NLC",
                return_prefix_tokens=True, intermediates_only=True, stop_early=True,
            )
        for store, out in zip(per_layer, outputs):
            store.append(pool_output(out.summary, out.features, pool).float().cpu())
        labels.append(targets)
    return [torch.cat(store) for store in per_layer], torch.cat(labels)


def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor,
                num_classes: int, k: int, temperature: float, chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN on cosine similarity: each of the ``k`` nearest training samples votes for its
    class with weight ``exp(similarity / temperature)``; the class with the largest sum wins."""
    k = min(k, train_x.shape[0])
    train_x = F.normalize(train_x, dim=1)
    predictions = []
    for start in range(0, query_x.shape[0], chunk):
        sims = F.normalize(query_x[start:start + chunk], dim=1) @ train_x.T  # (q, n_train)
        top_sims, top_idx = sims.topk(k, dim=1)  # (q, k)
        votes = torch.zeros(top_sims.shape[0], num_classes, dtype=sims.dtype, device=sims.device)
        votes.scatter_add_(1, train_y[top_idx], (top_sims / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def linear_predict(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor,
                   num_classes: int, epochs: int, lr: float, weight_decay: float, batch_size: int,
                   seed: int) -> torch.Tensor:
    """Fit a linear classifier (AdamW, cosine schedule, cross-entropy) on standardized features
    and return its predictions for ``query_x``."""
    mean = train_x.mean(dim=0)
    std = train_x.std(dim=0, unbiased=False).clamp_min(1e-6)  # constant features: no divide by 0
    train_x = (train_x - mean) / std
    query_x = (query_x - mean) / std
    head = nn.Linear(train_x.shape[1], num_classes, device=train_x.device)
    nn.init.zeros_(head.weight)  # the problem is convex: a fixed start makes runs reproducible
    nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    n = train_x.shape[0]
    batch_size = min(batch_size, n)
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen).to(train_x.device)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    with torch.no_grad():
        return head(query_x).argmax(dim=1)


def format_table(results: Sequence[LayerResult]) -> str:
    """The per-layer accuracy table printed by :func:`main`."""
    lines = [f"{'layer':>5}  {'top-1':>7}  {'correct':>11}"]
    for r in results:
        lines.append(f"{r.layer:>5}  {100 * r.accuracy:>6.2f}%  {f'{r.correct}/{r.total}':>11}")
    return "\n".join(lines)


def save_plot(results: Sequence[LayerResult], path: str, title: str, num_classes: int) -> None:
    """Save accuracy (%) against block index as a 600x400 PNG, with the chance level dashed."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot([r.layer for r in results], [100 * r.accuracy for r in results], marker="o",
            label="probe")
    ax.axhline(100 / num_classes, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("block index (depth)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--version", default="c-radio_v4-h",
                   help="release name or local checkpoint path")
    p.add_argument("--train", help="ImageFolder directory of training images")
    p.add_argument("--val", help="ImageFolder directory of validation images")
    p.add_argument("--data", help="one ImageFolder directory split with --val-fraction "
                                  "(instead of --train/--val)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of each class held out with --data")
    p.add_argument("--layers", default="all",
                   help="'all' or comma-separated block indices, e.g. '0,3,-1'")
    p.add_argument("--aggregation", choices=("sparse", "dense"), default="sparse",
                   help="per selected block: its output, or the mean since the previous one")
    p.add_argument("--pool", choices=POOLS, default="both",
                   help="per-image vector: summary, mean of patch tokens, or both concatenated")
    p.add_argument("--probe", choices=("knn", "linear"), default="knn")
    p.add_argument("--k", type=int, default=20, help="neighbours for --probe knn")
    p.add_argument("--temperature", type=float, default=0.07,
                   help="kNN vote weight is exp(similarity / temperature)")
    p.add_argument("--epochs", type=int, default=100, help="epochs for --probe linear")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (--probe linear)")
    p.add_argument("--weight-decay", type=float, default=1e-4,
                   help="AdamW weight decay (--probe linear)")
    p.add_argument("--probe-batch-size", type=int, default=1024,
                   help="minibatch size (--probe linear); at least the train size = full batch")
    p.add_argument("--resolution",
                   help="'S' or 'HxW' (default: the model's preferred resolution, else 224)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--plot", help="write a PNG of accuracy vs depth to this path")
    p.add_argument("--seed", type=int, default=0)
    return p


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.data is None and (args.train is None or args.val is None):
        parser.error("pass either --train DIR and --val DIR, or --data DIR (with --val-fraction)")
    if args.data is not None and (args.train is not None or args.val is not None):
        parser.error("--data cannot be combined with --train/--val")
    for name in ("k", "epochs", "batch_size", "probe_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.temperature <= 0:
        parser.error("--temperature must be positive")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    _logger.setLevel(logging.INFO)  # this script's progress notes; libraries keep their levels
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if args.bf16 and device.type != "cuda":
        _logger.warning("--bf16 only applies on CUDA; running in the model's dtype on %s", device)

    if Path(args.version).is_file():
        model = radio_model(checkpoint_path=args.version)
    else:
        model = radio_model(version=args.version, progress=True)
    model = model.to(device).eval()
    layers = parse_layers(args.layers, model.num_intermediates)
    resolution = parse_resolution(args.resolution, model)

    train_ds, val_ds, classes = load_datasets(args, resolution)
    _logger.info("%d classes, %d train / %d val images at %dx%d, blocks %s", len(classes),
                 len(train_ds), len(val_ds), resolution.height, resolution.width, layers)
    loader_kwargs = dict(batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers,
                         pin_memory=device.type == "cuda")
    extract = dict(model=model, layers=layers, aggregation=args.aggregation, pool=args.pool,
                   device=device, bf16=args.bf16)
    train_feats, train_y = extract_features(loader=DataLoader(train_ds, **loader_kwargs),
                                            desc="train", **extract)
    val_feats, val_y = extract_features(loader=DataLoader(val_ds, **loader_kwargs),
                                        desc="val", **extract)

    results = []
    train_y_dev, val_y_dev = train_y.to(device), val_y.to(device)
    per_layer = list(zip(layers, train_feats, val_feats))
    for layer, tr, va in tqdm(per_layer, desc=f"{args.probe} probes", unit="layer"):
        tr, va = tr.to(device), va.to(device)
        if args.probe == "knn":
            pred = knn_predict(tr, train_y_dev, va, len(classes), args.k, args.temperature)
        else:
            pred = linear_predict(tr, train_y_dev, va, len(classes), args.epochs, args.lr,
                                  args.weight_decay, args.probe_batch_size, args.seed)
        results.append(LayerResult(layer, int((pred == val_y_dev).sum()), len(val_y)))

    probe = f"knn (k={min(args.k, len(train_y))})" if args.probe == "knn" else "linear"
    title = (f"{model.version or Path(args.version).name}: {probe} probe, {args.aggregation} "
             f"aggregation, pool={args.pool}, {resolution.height}x{resolution.width}")
    print(title)
    print(format_table(results))
    if args.plot:
        save_plot(results, args.plot, title, len(classes))
        _logger.info("saved %s", args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
