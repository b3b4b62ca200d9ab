"""k-nearest-neighbour classification with RADIO summary features on an ImageFolder split.

The summary vector of every training image forms a memory bank; each validation image is given the
class voted by its ``k`` most similar training images (cosine similarity of L2-normalized
summaries, each neighbour voting with weight ``exp(similarity / T)``, the usual kNN protocol for
self-supervised features; ``--temperature 0`` makes it a plain majority vote). Prints top-1 accuracy.

Data layout (torchvision's ImageFolder)::

    DATA_ROOT/train/<class name>/<image files>
    DATA_ROOT/val/<class name>/<image files>

Usage::

    python examples/knn_classification.py DATA_ROOT --version c-radio_v4-h --k 20
    torchrun --nproc_per_node 4 examples/knn_classification.py DATA_ROOT --k 20   # one GPU per process

Every image is resized to one fixed size (``--resolution H W``; default: the release's preferred
resolution). Unreadable images are reported and left out.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from radio import RADIOModel, Resolution, radio_model
from radio.tools.distributed import distributed_context, torchrun_env
from radio.tools.images import ImageDataset, ImageRecord, LoadedImage, SizePolicy, find_images

_logger = logging.getLogger("knn_classification")


def image_folder(root: Path, classes: Optional[Sequence[str]] = None) -> Tuple[List[ImageRecord], List[int], List[str]]:
    """Images and labels of an ImageFolder directory (``root/<class>/...``, scanned recursively).

    Args:
        root: the split directory.
        classes: class names to use (e.g. the training split's); ``None``: ``root``'s subdirectories.

    Returns:
        ``(records, labels, classes)``, records sorted by class then file name.

    Raises:
        ValueError: no class directory, or a class of ``root`` missing from ``classes``.
    """
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise ValueError(f"{root} has no class subdirectories (expected {root}/<class>/<images>).")
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{root} has classes that the training split lacks: {', '.join(unknown)}")
    records: List[ImageRecord] = []
    labels: List[int] = []
    for label, name in enumerate(classes):
        if (root / name).is_dir():
            class_records = find_images([root / name])
            records += class_records
            labels += [label] * len(class_records)
    return records, labels, list(classes)


def _collate(items: List[LoadedImage]) -> List[LoadedImage]:
    return items


@torch.inference_mode()
def extract_summaries(model: RADIOModel, records: Sequence[ImageRecord], size: Resolution, batch_size: int,
                      device: torch.device, bf16: bool = False, workers: int = 0, progress: bool = True,
                      desc: str = "") -> Tuple[torch.Tensor, torch.Tensor]:
    """L2-normalized summaries of ``records`` at input ``size``.

    Returns:
        ``(features (N, C) float32 on CPU, ok (N,) bool)``; rows of unreadable images are zero
        and have ``ok = False``.
    """
    policy = SizePolicy("fixed", model.min_resolution_step, size)
    loader = torch.utils.data.DataLoader(ImageDataset(records, policy), batch_size=batch_size, shuffle=False,
                                         num_workers=workers, collate_fn=_collate)
    feats = torch.zeros(len(records), model.summary_dim)
    ok = torch.zeros(len(records), dtype=torch.bool)
    for batch in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
        good = [item for item in batch if item.error is None]
        for item in batch:
            if item.error is not None:
                _logger.warning("skipping %s: %s", records[item.index].path, item.error)
        if not good:
            continue
        x = torch.stack([item.image for item in good]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        idx = torch.tensor([item.index for item in good])
        feats[idx] = F.normalize(out.summary.float(), dim=-1).cpu()
        ok[idx] = True
    return feats, ok


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int, num_classes: int,
                temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN votes.

    Args:
        bank: ``(N, C)`` L2-normalized training features.
        bank_labels: ``(N,)`` int64 labels.
        queries: ``(Q, C)`` L2-normalized features to classify.
        k: neighbours (at most ``N`` are used).
        num_classes: number of classes.
        temperature: neighbour weight ``exp(sim / T)``; ``0`` gives every neighbour weight 1.
        chunk: queries per similarity block (bounds memory to ``chunk x N``).

    Returns:
        ``(Q,)`` predicted labels (ties go to the lower class index).
    """
    k = min(k, bank.shape[0])
    preds = []
    for start in range(0, queries.shape[0], chunk):
        sims = queries[start:start + chunk] @ bank.t()  # (q, N)
        top_sims, top_idx = sims.topk(k, dim=1)
        weights = (top_sims / temperature).exp() if temperature > 0 else torch.ones_like(top_sims)
        votes = torch.zeros(sims.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def _gather_rows(local: torch.Tensor, sizes: Sequence[int], world_size: int) -> torch.Tensor:
    """Rows of every rank's shard, in global order (shard ``r`` holds global items ``r, r + W, ...``)."""
    pad = max(sizes)
    padded = local.new_zeros((pad,) + tuple(local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    out = local.new_zeros((sum(sizes),) + tuple(local.shape[1:]))
    for r, (part, n) in enumerate(zip(parts, sizes)):
        out[r::world_size] = part[:n]
    return out


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Extract, classify and score; returns ``{'accuracy', 'correct', 'total', 'skipped', 'classes',
    'predictions' (val path -> (predicted, true) class names)}`` (complete on every process)."""
    with distributed_context(args.device) as ctx:
        return _run(args, ctx.rank, ctx.world_size, ctx.device)


def _run(args: argparse.Namespace, rank: int, world_size: int, device: torch.device) -> Dict[str, Any]:
    root = Path(args.data_root)
    train, train_labels, classes = image_folder(root / args.train_split)
    val, val_labels, _ = image_folder(root / args.val_split, classes)
    model = radio_model(args.version, progress=rank == 0, checkpoint_path=args.checkpoint).to(device)
    if args.resolution:
        size = Resolution(*args.resolution)
    elif model.preferred_resolution is not None:
        size = model.preferred_resolution
    else:
        size = model.get_nearest_supported_resolution(224, 224)
    show = not args.no_progress and rank == 0

    def gather(local: torch.Tensor, n: int) -> torch.Tensor:
        if world_size == 1:
            return local
        sizes = [len(range(r, n, world_size)) for r in range(world_size)]
        return _gather_rows(local.to(device), sizes, world_size).cpu()

    # Every process extracts its shard (items rank, rank + W, ...); the bank is shared by all.
    feats, ok = extract_summaries(model, train[rank::world_size], size, args.batch_size, device, args.bf16,
                                  args.workers, show, "train")
    train_ok = gather(ok.to(torch.uint8), len(train)).bool()
    bank = gather(feats, len(train))[train_ok].to(device)
    bank_labels = torch.tensor(train_labels)[train_ok].to(device)
    if bank.shape[0] == 0:
        raise ValueError("No readable training image: the memory bank is empty.")
    feats, ok = extract_summaries(model, val[rank::world_size], size, args.batch_size, device, args.bf16,
                                  args.workers, show, "val")
    local_preds = knn_predict(bank, bank_labels, feats.to(device), args.k, len(classes), args.temperature)
    preds = gather(local_preds, len(val)).cpu()
    val_ok = gather(ok.to(torch.uint8), len(val)).bool()
    targets = torch.tensor(val_labels)
    correct = int((preds == targets)[val_ok].sum())
    total = int(val_ok.sum())
    result = {
        "accuracy": correct / total if total else float("nan"),
        "correct": correct,
        "total": total,
        "skipped": int((~train_ok).sum() + (~val_ok).sum()),
        "classes": classes,
        "predictions": {str(rec.path): (classes[int(p)], classes[int(t)])
                        for rec, p, t, good in zip(val, preds, targets, val_ok.tolist()) if good},
    }
    return result


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_root", help="directory with the train/ and val/ ImageFolder splits")
    p.add_argument("--version", default="", help="RADIO release name or checkpoint path (default: c-radio_v4-h)")
    p.add_argument("--checkpoint", default=None, help="local checkpoint file (instead of downloading)")
    p.add_argument("--k", type=int, default=20, help="neighbours (default: 20)")
    p.add_argument("--temperature", type=float, default=0.07,
                   help="vote weight exp(sim / T) (default: 0.07); 0 = plain majority vote")
    p.add_argument("--resolution", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="input size (default: the release's preferred resolution)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.k < 1:
        p.error(f"--k must be >= 1, got {args.k}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the example; returns what :func:`run` returns."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    result = run(args)
    if torchrun_env().rank == 0:
        skipped = f", {result['skipped']} unreadable image(s) skipped" if result["skipped"] else ""
        print(f"kNN top-1 (k={args.k}, T={args.temperature}): {100 * result['accuracy']:.2f}% "
              f"({result['correct']}/{result['total']} validation images, {len(result['classes'])} classes{skipped})")
    return result


if __name__ == "__main__":
    main()
