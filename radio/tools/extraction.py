"""The dataset-scale extraction loop behind ``radio extract``.

:func:`extract_features` decodes and resizes images in ``DataLoader`` worker processes, groups them
into model calls, runs the model, and hands each image's record to a
:class:`radio.tools.stores.FeatureStore` from a background thread. Images of different sizes
(``native`` / ``preferred`` resize policies) are packed up to a token budget (:class:`TokenPacks`)
and run with ``model.forward_packed``; a fixed size, a model without packed support (E-RADIO) or a
model in training mode uses equal-size batches (:class:`radio.tools.images.SizeBuckets`). Both give
each image what ``model(image[None])`` gives. Unreadable images are counted and skipped; images the
store already has are skipped (resume). Worker processes ignore ``SIGINT``, so Ctrl-C in a terminal
(which signals the whole process group) interrupts only the main process, which then shuts the
workers down: no worker tracebacks.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Generic, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .images import ImageDataset, ImageRecord, LoadedImage, SizeBuckets, SizePolicy, collate_single
from .stores import FORMAT_TAG, FeatureStore, Tensors, json_metadata, tensor_key

__all__ = ["DEFAULT_MAX_TOKENS", "ExtractionStats", "TokenPacks", "extract_features", "ignore_interrupts",
           "image_tokens"]

_logger = logging.getLogger(__name__)

#: Default token budget of one packed model call (``radio extract --max-tokens``).
DEFAULT_MAX_TOKENS = 16384

T = TypeVar("T")


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

    The worker also hands its tensors over through shared-memory files instead of passing file
    descriptors: the descriptor server thread of ``multiprocessing.resource_sharer`` prints a
    traceback when the main process exits in the middle of a hand-over (seen on about one Ctrl-C in
    three). The setting is per process, so only this worker is affected.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.multiprocessing.set_sharing_strategy("file_system")


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


def image_tokens(height: int, width: int, patch_size: int, num_prefix_tokens: int) -> int:
    """Tokens the backbone runs for one ``height x width`` input: ``prefix + (H/ps) * (W/ps)``."""
    return int(num_prefix_tokens) + (int(height) // int(patch_size)) * (int(width) // int(patch_size))


class TokenPacks(Generic[T]):
    """Groups a stream of items into packs whose token counts add up to at most ``max_tokens``.

    Items keep their arrival order. :meth:`add` returns the packs that are complete: the waiting pack
    when the new item would overflow it, and the new item alone when it exceeds the budget by itself
    (such an item always goes alone). At most one pack waits, so memory stays bounded by the budget.
    :meth:`drain` yields the last, partial pack.

    Args:
        max_tokens: the budget of one pack, a positive int.

    Raises:
        TypeError: ``max_tokens`` is not an int.
        ValueError: ``max_tokens`` < 1.
    """

    def __init__(self, max_tokens: int) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise TypeError(f"max_tokens must be an int, got {type(max_tokens).__name__}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}; pass a positive token budget.")
        self.max_tokens = max_tokens
        self._items: List[T] = []
        self._tokens = 0

    @property
    def waiting_tokens(self) -> int:
        """Tokens of the items waiting in the current pack."""
        return self._tokens

    def add(self, tokens: int, item: T) -> List[List[T]]:
        """Add ``item`` of ``tokens`` tokens; return the packs that are now complete (0, 1 or 2)."""
        if tokens < 1:
            raise ValueError(f"an item must have at least one token, got {tokens}")
        ready: List[List[T]] = []
        if self._items and self._tokens + tokens > self.max_tokens:
            ready.append(self._pop())
        self._items.append(item)
        self._tokens += tokens
        if self._tokens >= self.max_tokens:  # full, or a single item over the budget
            ready.append(self._pop())
        return ready

    def _pop(self) -> List[T]:
        pack, self._items, self._tokens = self._items, [], 0
        return pack

    def drain(self) -> Iterator[List[T]]:
        """Yield the waiting pack, if any."""
        if self._items:
            yield self._pop()


def _packing_unavailable(model: nn.Module) -> Optional[str]:
    """Why ``model`` cannot run packed batches (``None`` if it can; E-RADIO is found on the first call)."""
    if not callable(getattr(model, "forward_packed", None)):
        return f"{type(model).__name__} has no forward_packed"
    if model.training:
        return "the model is in training mode"
    for attr in ("patch_size", "num_summary_tokens"):
        if not isinstance(getattr(model, attr, None), int):
            return f"{type(model).__name__} has no integer {attr}"
    return None


def _heads(out: Union[Any, Dict[str, Any]]) -> Dict[str, Any]:
    return out if isinstance(out, dict) else {"backbone": out}


def _batch_tensors(out: Union[Any, Dict[str, Any]], feature_fmt: str, summary_only: bool,
                   save_dtype: torch.dtype) -> Tuple[Tensors, Dict[str, List[int]]]:
    """A model output (``NCHW`` features, batch axis ``B``) as batched record tensors on the CPU.

    Returns:
        ``({tensor_key: (B, ...)}, {head: [h, w]})``: summaries ``(B, C)``, features ``(B, h*w, D)``
        (``NLC``) or ``(B, D, h, w)`` (``NCHW``), in ``save_dtype``.
    """
    tensors: Tensors = {}
    grids: Dict[str, List[int]] = {}
    for head, (summary, features) in _heads(out).items():
        tensors[tensor_key(head, "summary")] = summary
        grids[head] = [int(features.shape[-2]), int(features.shape[-1])]
        if not summary_only:
            if feature_fmt == "NLC":  # the inverse of to_nchw: (B, D, h, w) -> (B, h*w, D)
                features = features.permute(0, 2, 3, 1).reshape(features.shape[0], -1, features.shape[1])
            tensors[tensor_key(head, "features")] = features
    return {k: v.to(save_dtype).cpu() for k, v in tensors.items()}, grids


def extract_features(
    model: nn.Module,
    records: Sequence[ImageRecord],
    store: FeatureStore,
    policy: SizePolicy,
    *,
    batch_size: int = 16,
    max_tokens: Optional[int] = DEFAULT_MAX_TOKENS,
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

    Images are decoded and resized in ``workers`` ``DataLoader`` processes (streamed, never all in
    memory), grouped into model calls, run through ``model`` and written by a background thread. With
    a ``native`` or ``preferred`` ``policy`` (sizes differ) images are packed in arrival order until
    their tokens (``num_summary_tokens + (H/ps)*(W/ps)`` each) would exceed ``max_tokens``, and each
    pack is one ``model.forward_packed`` call (an image over the budget goes alone). A ``fixed``
    policy, ``max_tokens=None``, a model in training mode or one without packed support (E-RADIO)
    use equal-size batches of at most ``batch_size`` (see :class:`SizeBuckets`). Either way each
    record holds what ``model(image[None])`` gives (to float rounding). An image that cannot be
    decoded is logged, counted in ``ExtractionStats.failed`` and skipped. The progress bar counts
    images.

    Args:
        model: a :class:`radio.RADIOModel` (eval mode, on ``device``).
        records: this process's images.
        store: where records go.
        policy: the resize policy.
        batch_size: largest equal-size batch (the non-packed path).
        max_tokens: token budget of one packed call; ``None`` disables packing.
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

    Raises:
        ValueError: an unknown ``feature_fmt``, ``batch_size`` < 1 or ``max_tokens`` < 1.
        TypeError: ``max_tokens`` is neither an int nor ``None``.
    """
    if feature_fmt not in ("NLC", "NCHW"):
        raise ValueError(f"feature_fmt must be 'NLC' or 'NCHW', got {feature_fmt!r}")
    buckets: SizeBuckets[LoadedImage] = SizeBuckets(batch_size)
    packs: Optional[TokenPacks[LoadedImage]] = None if max_tokens is None else TokenPacks(max_tokens)
    packing = packs is not None
    device = torch.device(device)
    stats = ExtractionStats(rank=rank, assigned=len(records))
    pending = list(records) if overwrite else [r for r in records if not store.is_done(r.name)]
    stats.skipped = len(records) - len(pending)
    if stats.skipped:
        _logger.info("Resuming: %d of %d image(s) already done", stats.skipped, len(records))
    if not pending:
        return stats
    if packing and policy.mode == "fixed":
        packing = False  # one input size: plain batches
    if packing:
        why = _packing_unavailable(model)
        if why is not None:
            _logger.info("Equal-size batches instead of packed ones: %s", why)
            packing = False
        else:
            _logger.debug("Packing images of different sizes, up to %d tokens per model call", max_tokens)
    base = dict(base_metadata or {})
    base.update(format=FORMAT_TAG, feature_fmt=feature_fmt, rank=rank, world_size=world_size)
    loader = torch.utils.data.DataLoader(
        ImageDataset(pending, policy), batch_size=None, shuffle=False, num_workers=workers,
        collate_fn=collate_single, prefetch_factor=(4 if workers > 0 else None),
        worker_init_fn=ignore_interrupts if workers > 0 else None,
    )
    bar = tqdm(total=len(pending), unit="img", disable=not progress, dynamic_ncols=True,
               desc="extract" if world_size == 1 else f"extract [rank {rank}/{world_size}]")
    writes: Deque[Future] = deque()

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def submit(batch: List[LoadedImage], outputs: List[Tuple[Tensors, Dict[str, List[int]], int]],
               pool: ThreadPoolExecutor) -> None:
        """Queue the records of ``batch``: ``outputs[j] = (batched tensors, grids, row)`` of image ``j``."""
        for item, (batch_tensors, grids, row) in zip(batch, outputs):
            rec = pending[item.index]
            tensors = {k: v[row].clone(memory_format=torch.contiguous_format) for k, v in batch_tensors.items()}
            meta = json_metadata({**base, "name": rec.name, "source": str(rec.path),
                                  "original_size": list(item.original_size),
                                  "input_size": [int(item.image.shape[-2]), int(item.image.shape[-1])],
                                  "grids": grids})
            writes.append(pool.submit(store.write, rec.name, tensors, meta))
        while len(writes) > 4 * max(batch_size, len(batch)):
            writes.popleft().result()
        stats.processed += len(batch)
        bar.update(len(batch))

    def run_batch(batch: List[LoadedImage], pool: ThreadPoolExecutor) -> None:
        x = torch.stack([item.image for item in batch]).to(device)
        with torch.inference_mode(), autocast():
            out = model(x, feature_fmt="NCHW")
        batch_tensors, grids = _batch_tensors(out, feature_fmt, summary_only, save_dtype)
        submit(batch, [(batch_tensors, grids, i) for i in range(len(batch))], pool)

    def run_pack(pack: List[LoadedImage], pool: ThreadPoolExecutor) -> None:
        nonlocal packing
        if not packing:  # given up on an earlier pack
            for item in pack:
                batch = buckets.add(tuple(item.image.shape[-2:]), item)
                if batch:
                    run_batch(batch, pool)
            return
        images = [item.image.to(device) for item in pack]
        try:
            with torch.inference_mode(), autocast():
                outs = model.forward_packed(images, feature_fmt="NCHW")
        except NotImplementedError as e:  # a backbone that cannot mix sizes (E-RADIO)
            _logger.info("Equal-size batches instead of packed ones: %s", str(e).split(";")[0])
            packing = False
            run_pack(pack, pool)
            return
        submit(pack, [(*_batch_tensors(out, feature_fmt, summary_only, save_dtype), 0) for out in outs], pool)

    def tokens_of(item: LoadedImage) -> int:
        h, w = item.image.shape[-2:]
        return image_tokens(h, w, model.patch_size, model.num_summary_tokens)

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
                if packing:
                    for pack in packs.add(tokens_of(item), item):
                        run_pack(pack, pool)
                else:
                    batch = buckets.add(tuple(item.image.shape[-2:]), item)
                    if batch:
                        run_batch(batch, pool)
            if packs is not None:  # what waits there is run packed, or batched if packing was given up
                for pack in packs.drain():
                    run_pack(pack, pool)
            for batch in buckets.drain():
                run_batch(batch, pool)
        finally:
            while writes:
                writes.popleft().result()
            bar.close()
    return stats
