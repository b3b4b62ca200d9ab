"""The dataset-scale extraction loop behind ``radio extract``.

:func:`extract_features` decodes and resizes images in ``DataLoader`` worker processes, groups them by
input size into batches (:class:`radio.tools.images.SizeBuckets`), runs the model, and hands each
image's record to a :class:`radio.tools.stores.FeatureStore` from a background thread. Unreadable
images are counted and skipped; images the store already has are skipped (resume). Worker processes
ignore ``SIGINT``, so Ctrl-C in a terminal (which signals the whole process group) interrupts only the
main process, which then shuts the workers down: no worker tracebacks.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .images import ImageDataset, ImageRecord, LoadedImage, SizeBuckets, SizePolicy, collate_single
from .stores import FORMAT_TAG, FeatureStore, Tensors, json_metadata, tensor_key

__all__ = ["ExtractionStats", "extract_features", "ignore_interrupts"]

_logger = logging.getLogger(__name__)


@dataclass
class ExtractionStats:
    """The outcome of one process's share of a run.

    Attributes:
        rank: the process rank.
        assigned: images this process was responsible for.
        processed: images extracted and written in this run.
        skipped: images already done by an earlier run (resume).
        failed: ``(name, source path, reason)`` of the images that could not be read.
    """

    rank: int = 0
    assigned: int = 0
    processed: int = 0
    skipped: int = 0
    failed: List[Tuple[str, str, str]] = field(default_factory=list)


def ignore_interrupts(worker_id: int = 0) -> None:
    """``DataLoader(worker_init_fn=...)``: the worker ignores ``SIGINT``; the main process handles Ctrl-C.

    A terminal delivers Ctrl-C to every process of the foreground group. Without this, each worker
    raises ``KeyboardInterrupt`` and prints a traceback, and the main process then reports the
    workers' broken pipes (``ConnectionResetError``) on top of its own interruption.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _interrupts_ignored_by_new_processes(enabled: bool) -> Iterator[None]:
    """Ignore ``SIGINT`` while worker processes start, so that they inherit "ignore" from birth.

    ``worker_init_fn`` runs only after a worker has started (and, with the ``spawn`` /
    ``forkserver`` start methods, after it has imported torch for seconds); a Ctrl-C in that window
    would still kill it with a traceback. An ignored signal stays ignored in a child process (Python
    keeps an inherited ``SIG_IGN``), so workers are covered from their first instruction. The main
    process's own handler is back as soon as the workers exist.
    """
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _heads(out: Union[Any, Dict[str, Any]]) -> Dict[str, Any]:
    return out if isinstance(out, dict) else {"backbone": out}


def extract_features(
    model: nn.Module,
    records: Sequence[ImageRecord],
    store: FeatureStore,
    policy: SizePolicy,
    *,
    batch_size: int = 16,
    device: Union[str, torch.device] = "cpu",
    feature_fmt: str = "NLC",
    bf16: bool = False,
    save_dtype: torch.dtype = torch.float32,
    summary_only: bool = False,
    workers: int = 0,
    progress: bool = True,
    base_metadata: Optional[Mapping[str, Any]] = None,
    rank: int = 0,
    world_size: int = 1,
    overwrite: bool = False,
) -> ExtractionStats:
    """Extract and store the features of every image in ``records`` that ``store`` does not have yet.

    Images are decoded and resized in ``workers`` ``DataLoader`` processes, grouped by input size
    into batches of at most ``batch_size`` (see :class:`SizeBuckets`), run through ``model`` and
    written by a background thread. An image that cannot be decoded is logged, counted in
    ``ExtractionStats.failed`` and skipped.

    Args:
        model: a :class:`radio.RADIOModel` (eval mode, on ``device``).
        records: this process's images.
        store: where records go.
        policy: the resize policy.
        batch_size: largest batch.
        device: where the model runs.
        feature_fmt: ``'NLC'`` (features ``(h*w, D)``) or ``'NCHW'`` (``(D, h, w)``).
        bf16: run under bfloat16 autocast.
        save_dtype: dtype of the stored tensors.
        summary_only: store only the summaries.
        workers: ``DataLoader`` worker processes (0: load in this process).
        progress: show a tqdm bar.
        base_metadata: metadata added to every record (version, settings).
        rank, world_size: recorded in each record's metadata.
        overwrite: extract every image, even those ``store`` already has.

    Returns:
        The :class:`ExtractionStats` of this process.
    """
    if feature_fmt not in ("NLC", "NCHW"):
        raise ValueError(f"feature_fmt must be 'NLC' or 'NCHW', got {feature_fmt!r}")
    device = torch.device(device)
    stats = ExtractionStats(rank=rank, assigned=len(records))
    pending = list(records) if overwrite else [r for r in records if not store.is_done(r.name)]
    stats.skipped = len(records) - len(pending)
    if stats.skipped:
        _logger.info("Resuming: %d of %d image(s) already done", stats.skipped, len(records))
    if not pending:
        return stats
    base = dict(base_metadata or {})
    base.update(format=FORMAT_TAG, feature_fmt=feature_fmt, rank=rank, world_size=world_size)
    loader = torch.utils.data.DataLoader(
        ImageDataset(pending, policy), batch_size=None, shuffle=False, num_workers=workers,
        collate_fn=collate_single, prefetch_factor=(4 if workers > 0 else None),
        worker_init_fn=ignore_interrupts if workers > 0 else None,
    )
    buckets: SizeBuckets[LoadedImage] = SizeBuckets(batch_size)
    bar = tqdm(total=len(pending), unit="img", disable=not progress, dynamic_ncols=True,
               desc="extract" if world_size == 1 else f"extract [rank {rank}/{world_size}]")
    writes: Deque[Future] = deque()

    def run(batch: List[LoadedImage], pool: ThreadPoolExecutor) -> None:
        x = torch.stack([item.image for item in batch]).to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = _heads(model(x, feature_fmt="NCHW"))
        batch_tensors: Tensors = {}
        grids: Dict[str, List[int]] = {}
        for head, (summary, features) in out.items():
            batch_tensors[tensor_key(head, "summary")] = summary
            grids[head] = [int(features.shape[-2]), int(features.shape[-1])]
            if not summary_only:
                if feature_fmt == "NLC":  # the inverse of to_nchw: (B, D, h, w) -> (B, h*w, D)
                    features = features.permute(0, 2, 3, 1).reshape(features.shape[0], -1, features.shape[1])
                batch_tensors[tensor_key(head, "features")] = features
        batch_tensors = {k: v.to(save_dtype).cpu() for k, v in batch_tensors.items()}
        for i, item in enumerate(batch):
            rec = pending[item.index]
            tensors = {k: v[i].clone(memory_format=torch.contiguous_format) for k, v in batch_tensors.items()}
            meta = json_metadata({**base, "name": rec.name, "source": str(rec.path),
                                  "original_size": list(item.original_size),
                                  "input_size": [int(x.shape[-2]), int(x.shape[-1])], "grids": grids})
            writes.append(pool.submit(store.write, rec.name, tensors, meta))
        while len(writes) > 4 * batch_size:
            writes.popleft().result()
        stats.processed += len(batch)
        bar.update(len(batch))

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="radio-write") as pool:
        try:
            with _interrupts_ignored_by_new_processes(workers > 0):
                items = iter(loader)  # starts the worker processes
            for item in items:
                if item.error is not None:
                    rec = pending[item.index]
                    stats.failed.append((rec.name, str(rec.path), item.error))
                    _logger.warning("Skipping %s: cannot read the image (%s)", rec.path, item.error)
                    bar.update(1)
                    bar.set_postfix(failed=len(stats.failed))
                    continue
                batch = buckets.add(tuple(item.image.shape[-2:]), item)
                if batch:
                    run(batch, pool)
            for batch in buckets.drain():
                run(batch, pool)
        finally:
            while writes:
                writes.popleft().result()
            bar.close()
    return stats
