"""Dataset-scale feature extraction: the loop behind ``radio extract``, its output stores and reader.

Output layout (documented for users in ``docs/cli.md``): one record per image holding tensors

* ``summary`` ``(C,)`` and ``features`` (``(h*w, D)`` for ``NLC``, ``(D, h, w)`` for ``NCHW``),
* ``<adaptor>.summary`` and ``<adaptor>.features`` for every adaptor,

and string metadata (:data:`FORMAT_TAG`, source path, original and model input size, grids, version,
...; values that are not plain strings are JSON). A :class:`DirectoryStore` writes one file per image
(``safetensors``, ``pt`` or ``npy`` + a JSON marker), mirroring the images' relative names; a
:class:`SingleFileStore` collects the same records into one ``.safetensors`` / ``.pt`` file. Every
file is written under a temporary name and renamed into place, so a killed run leaves only complete
records and a rerun (resume) skips exactly those. :func:`load_features` reads a record back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, List, Literal, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .images import ImageDataset, ImageRecord, LoadedImage, SizeBuckets, SizePolicy, collate_single

__all__ = [
    "FORMAT_TAG",
    "STORE_FORMATS",
    "ExtractionSettings",
    "ExtractionStats",
    "FeatureStore",
    "DirectoryStore",
    "SingleFileStore",
    "SettingsMismatchError",
    "extract_features",
    "load_features",
    "load_feature_file",
    "tensor_key",
]

_logger = logging.getLogger(__name__)

#: Value of the ``format`` metadata entry of every record (bumped on incompatible layout changes).
FORMAT_TAG = "radio-features/1"
STORE_FORMATS = ("safetensors", "pt", "npy")
StoreFormat = Literal["safetensors", "pt", "npy"]
SUFFIXES = {"safetensors": ".safetensors", "pt": ".pt", "npy": ".json"}
#: Metadata entries stored as JSON text (decoded by :func:`load_features`).
JSON_KEYS = ("original_size", "input_size", "grids", "adaptors", "rank", "world_size")
MANIFEST = "radio_extract.json"
RUN_SUMMARY = "radio_extract_summary.json"

Tensors = Dict[str, torch.Tensor]
Metadata = Dict[str, str]


class SettingsMismatchError(ValueError):
    """An output location holds results made with different settings than this run's."""


def tensor_key(head: str, part: str) -> str:
    """Record key of ``part`` (``'summary'`` / ``'features'``) of ``head`` (``'backbone'`` or an adaptor)."""
    return part if head == "backbone" else f"{head}.{part}"


@dataclass(frozen=True)
class ExtractionSettings:
    """Everything that changes the numbers in the outputs; a resumed run must match it exactly.

    Attributes:
        version: release name, or the checkpoint path for file loads.
        checkpoint: the local checkpoint file given with ``--checkpoint`` (``''`` if none).
        adaptors: adaptor names, in order.
        resolution: :meth:`SizePolicy.describe` of the resize policy.
        feature_fmt: ``'NLC'`` or ``'NCHW'``.
        save_dtype: dtype name of the stored tensors.
        summary_only: whether ``features`` tensors are left out.
        bf16: whether the model ran under bfloat16 autocast.
        vitdet_window_size: ViTDet window size or ``None``.
        format: the store format.
    """

    version: str
    checkpoint: str
    adaptors: Tuple[str, ...]
    resolution: str
    feature_fmt: str
    save_dtype: str
    summary_only: bool
    bf16: bool
    vitdet_window_size: Optional[int]
    format: str

    def to_json(self) -> Dict[str, Any]:
        """A JSON-friendly dict."""
        d = asdict(self)
        d["adaptors"] = list(self.adaptors)
        return d

    def check_against(self, stored: Mapping[str, Any], where: Union[str, Path]) -> None:
        """Raise :class:`SettingsMismatchError` if ``stored`` (an earlier run's) differs from ``self``."""
        mine = self.to_json()
        diffs = [f"{k}: {stored.get(k)!r} there, {mine[k]!r} now" for k in mine if stored.get(k) != mine[k]]
        if diffs:
            raise SettingsMismatchError(
                f"{where} holds features made with different settings ({'; '.join(diffs)}). Resuming would "
                "mix incompatible results: choose another --out, or pass --overwrite to recompute everything."
            )


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


# ------------------------------------------------------------------------------------------------
# Stores


def _json_meta(meta: Mapping[str, Any]) -> Metadata:
    """Metadata as ``str -> str`` (the safetensors rule): strings kept, other values as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _decode_meta(meta: Mapping[str, str]) -> Dict[str, Any]:
    return {k: json.loads(v) if k in JSON_KEYS else v for k, v in meta.items()}


def _write_safetensors(path: Path, tensors: Tensors, meta: Metadata) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _write_pt(path: Path, payload: Dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(payload, tmp)
    os.replace(tmp, path)


class FeatureStore:
    """Where extracted records go. Subclasses implement :meth:`is_done`, :meth:`write`, :meth:`finalize`."""

    #: the settings file of this store (its run manifest)
    manifest_path: Path
    #: the file format of the records
    fmt: str

    def is_done(self, name: str) -> bool:
        """Whether the record of image ``name`` is complete (resume skips it)."""
        raise NotImplementedError

    def write(self, name: str, tensors: Tensors, meta: Metadata) -> None:
        """Store the record of image ``name`` (atomically)."""
        raise NotImplementedError

    def finalize(self) -> None:
        """Called once, by one process, after every process has written its records."""

    def prepare(self, settings: ExtractionSettings, overwrite: bool, is_main: bool) -> None:
        """Check ``settings`` against an earlier run's manifest (unless ``overwrite``) and record them.

        Every process checks; only the main process writes the manifest (atomically).

        Raises:
            SettingsMismatchError: an earlier run used different settings and ``overwrite`` is False.
        """
        path = self.manifest_path
        if path.is_file() and not overwrite:
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError):
                stored = None
            if stored is not None:
                settings.check_against(stored, path.parent)
        if is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".partial")
            tmp.write_text(json.dumps(settings.to_json(), indent=2) + "\n")
            os.replace(tmp, path)


class DirectoryStore(FeatureStore):
    """One file per image under ``root``, at ``<root>/<name><suffix>`` (subdirectories mirrored).

    Formats: ``safetensors`` (``<name>.safetensors``, metadata in its header), ``pt``
    (``<name>.pt``: ``{tensor_key: Tensor, ..., 'metadata': {str: str}}``) and ``npy`` (one
    ``<name>.<tensor_key>.npy`` per tensor plus ``<name>.json`` = ``{'metadata', 'tensors'}``,
    written last as the completion marker; bfloat16 cannot be stored as ``.npy``).
    """

    def __init__(self, root: Union[str, os.PathLike], fmt: StoreFormat = "safetensors") -> None:
        if fmt not in STORE_FORMATS:
            raise ValueError(f"Unknown output format {fmt!r}; use one of {', '.join(STORE_FORMATS)}.")
        self.root = Path(root)
        self.fmt = fmt
        self.manifest_path = self.root / MANIFEST

    def path_for(self, name: str) -> Path:
        """The file that marks ``name`` as done (the record itself, or the ``npy`` JSON marker)."""
        return self.root / (name + SUFFIXES[self.fmt])

    def is_done(self, name: str) -> bool:
        return self.path_for(name).is_file()

    def write(self, name: str, tensors: Tensors, meta: Metadata) -> None:
        path = self.path_for(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.fmt == "safetensors":
            _write_safetensors(path, tensors, meta)
        elif self.fmt == "pt":
            _write_pt(path, {**tensors, "metadata": dict(meta)})
        else:
            files = {}
            for key, t in tensors.items():
                if t.dtype == torch.bfloat16:
                    raise TypeError("npy cannot store bfloat16 tensors; save as float16 or float32")
                arr_path = self.root / f"{name}.{key}.npy"
                tmp = arr_path.with_name(arr_path.name + ".partial")
                with open(tmp, "wb") as f:
                    np.save(f, t.numpy())
                os.replace(tmp, arr_path)
                files[key] = arr_path.name
            tmp = path.with_name(path.name + ".partial")
            tmp.write_text(json.dumps({"metadata": dict(meta), "tensors": files}, indent=1) + "\n")
            os.replace(tmp, path)

    def names(self) -> List[str]:
        """Names of the complete records under ``root``, sorted."""
        suffix = SUFFIXES[self.fmt]
        out = []
        if not self.root.is_dir():
            return out
        for path in self.root.rglob("*" + suffix):
            if path.is_file() and path != self.manifest_path and path.name != RUN_SUMMARY:
                out.append(path.relative_to(self.root).as_posix()[: -len(suffix)])
        return sorted(out)


class SingleFileStore(FeatureStore):
    """All records in one ``.safetensors`` or ``.pt`` file.

    Records are first written one per image to ``<file>.parts/`` (which makes the run resumable);
    :meth:`finalize` merges them, and the records of an existing ``<file>``, into ``<file>`` and
    removes the parts directory. Layout: safetensors keys ``'<name>/<tensor_key>'`` with metadata
    ``{'format', 'run' (JSON settings), 'images' (JSON: name -> record metadata)}``; ``.pt`` a dict
    ``{'format', 'run', 'images': {name: {tensor_key: Tensor, ..., 'metadata': {...}}}}``.
    """

    def __init__(self, path: Union[str, os.PathLike], overwrite: bool = False) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".safetensors", ".pt"):
            raise ValueError(f"A single output file must end with .safetensors or .pt, got {self.path.name!r}.")
        self.fmt: StoreFormat = "safetensors" if suffix == ".safetensors" else "pt"
        self.parts = DirectoryStore(self.path.with_name(self.path.name + ".parts"), self.fmt)
        self.manifest_path = self.parts.manifest_path
        self.overwrite = overwrite
        self._existing: Set[str] = set()
        self._existing_run: Optional[Dict[str, Any]] = None
        if self.path.is_file() and not overwrite:
            self._existing, self._existing_run = _single_file_index(self.path)

    def prepare(self, settings: ExtractionSettings, overwrite: bool, is_main: bool) -> None:
        if self._existing_run is not None and not overwrite:
            settings.check_against(self._existing_run, self.path)
        super().prepare(settings, overwrite, is_main)

    def is_done(self, name: str) -> bool:
        return name in self._existing or self.parts.is_done(name)

    def write(self, name: str, tensors: Tensors, meta: Metadata) -> None:
        self.parts.write(name, tensors, meta)

    def finalize(self) -> None:
        run = json.loads(self.manifest_path.read_text()) if self.manifest_path.is_file() else {}
        records = {} if self.overwrite or not self.path.is_file() else _read_single_file(self.path)[0]
        for name in self.parts.names():
            records[name] = load_features(self.parts.path_for(name))
        tmp = self.path.with_name(self.path.name + ".partial")
        if self.fmt == "safetensors":
            from safetensors.torch import save_file

            flat = {f"{name}/{k}": t for name in sorted(records) for k, t in records[name][0].items()}
            images = {name: _json_meta(records[name][1]) for name in sorted(records)}
            save_file(flat, str(tmp), metadata={"format": FORMAT_TAG, "run": json.dumps(run),
                                                "images": json.dumps(images)})
        else:
            images_pt = {name: {**records[name][0], "metadata": _json_meta(records[name][1])}
                         for name in sorted(records)}
            torch.save({"format": FORMAT_TAG, "run": run, "images": images_pt}, tmp)
        os.replace(tmp, self.path)
        shutil.rmtree(self.parts.root)
        _logger.info("Wrote %d record(s) to %s", len(records), self.path)


def _single_file_index(path: Path) -> Tuple[Set[str], Dict[str, Any]]:
    """Record names and run settings of a single-file output, without reading the tensors."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        if header.get("format") != FORMAT_TAG:
            raise ValueError(f"{path} is not a RADIO feature file (format {header.get('format')!r}).")
        return set(json.loads(header["images"])), json.loads(header.get("run", "{}"))
    payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise ValueError(f"{path} is not a RADIO feature file.")
    return set(payload["images"]), payload.get("run", {})


def _read_single_file(path: Path) -> Tuple[Dict[str, Tuple[Tensors, Dict[str, Any]]], Dict[str, Any]]:
    """Records and run settings of a file written by :class:`SingleFileStore`."""
    out: Dict[str, Tuple[Tensors, Dict[str, Any]]] = {}
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT_TAG:
                raise ValueError(f"{path} is not a RADIO feature file (format {header.get('format')!r}).")
            images = json.loads(header["images"])
            for name, meta in images.items():
                out[name] = ({}, _decode_meta(meta))
            for key in f.keys():
                name, _, tkey = key.rpartition("/")
                out[name][0][tkey] = f.get_tensor(key)
        return out, json.loads(header.get("run", "{}"))
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise ValueError(f"{path} is not a RADIO feature file.")
    for name, rec in payload["images"].items():
        rec = dict(rec)
        meta = rec.pop("metadata")
        out[name] = (rec, _decode_meta(meta))
    return out, payload.get("run", {})


def load_features(path: Union[str, os.PathLike]) -> Tuple[Tensors, Dict[str, Any]]:
    """Read one per-image record written by ``radio extract`` (any format).

    Args:
        path: a ``.safetensors`` / ``.pt`` record, or the ``.json`` marker of an ``npy`` record.

    Returns:
        ``(tensors, metadata)``: tensors by key (``'summary'``, ``'features'``, ``'clip.summary'``,
        ...) and metadata with sizes, grids and lists decoded from JSON.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    elif suffix == ".pt":
        payload = torch.load(path, map_location="cpu", weights_only=True)
        meta = payload.pop("metadata")
        tensors = payload
    elif suffix == ".json":
        marker = json.loads(path.read_text())
        meta = marker["metadata"]
        tensors = {k: torch.from_numpy(np.load(path.parent / f)) for k, f in marker["tensors"].items()}
    else:
        raise ValueError(f"Not a RADIO feature record: {path} (expected .safetensors, .pt or .json).")
    if meta.get("format") != FORMAT_TAG:
        raise ValueError(f"{path} is not a RADIO feature record (format {meta.get('format')!r}).")
    return tensors, _decode_meta(meta)


def load_feature_file(path: Union[str, os.PathLike]) -> Dict[str, Tuple[Tensors, Dict[str, Any]]]:
    """Read a single-file output (``--out features.safetensors`` / ``.pt``): ``{name: (tensors, metadata)}``."""
    return _read_single_file(Path(path))[0]


# ------------------------------------------------------------------------------------------------
# The extraction loop


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
            meta = _json_meta({**base, "name": rec.name, "source": str(rec.path),
                               "original_size": list(item.original_size),
                               "input_size": [int(x.shape[-2]), int(x.shape[-1])], "grids": grids})
            writes.append(pool.submit(store.write, rec.name, tensors, meta))
        while len(writes) > 4 * batch_size:
            writes.popleft().result()
        stats.processed += len(batch)
        bar.update(len(batch))

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="radio-write") as pool:
        try:
            for item in loader:
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
