"""Feature records on disk: the record format, the stores that write them, and the readers.

A *record* holds the outputs of one image: tensors

* ``summary`` ``(C,)`` and ``features`` (``(h*w, D)`` for ``NLC``, ``(D, h, w)`` for ``NCHW``),
* ``<adaptor>.summary`` and ``<adaptor>.features`` for every adaptor,

and string metadata (:data:`FORMAT_TAG`, source path, original and model input size, grids, version,
...; values that are not plain strings are JSON). A :class:`DirectoryStore` writes one file per image
(``safetensors``, ``pt`` or ``npy`` + a JSON marker), mirroring the images' relative names; a
:class:`SingleFileStore` collects the same records into one ``.safetensors`` / ``.pt`` file. Every
file is written under a temporary name and renamed into place, so a killed run leaves only complete
records and a rerun (resume) skips exactly those. Files get the usual permissions for the process's
umask (``0644`` under the default ``022``). :func:`load_features` / :func:`load_feature_file` read
records back. User documentation: ``docs/cli.md``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Set, Tuple, Union

import numpy as np
import torch

__all__ = [
    "FORMAT_TAG",
    "MANIFEST",
    "RUN_SUMMARY",
    "STORE_FORMATS",
    "DirectoryStore",
    "ExtractionSettings",
    "FeatureStore",
    "SettingsMismatchError",
    "SingleFileStore",
    "json_metadata",
    "load_feature_file",
    "load_features",
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
#: The run settings file of a directory output.
MANIFEST = "radio_extract.json"
#: The last run's outcome in a directory output.
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


# ------------------------------------------------------------------------------------------------
# Stores


def json_metadata(meta: Mapping[str, Any]) -> Metadata:
    """Metadata as ``str -> str`` (the safetensors rule): strings kept, other values as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _decode_meta(meta: Mapping[str, str]) -> Dict[str, Any]:
    return {k: json.loads(v) if k in JSON_KEYS else v for k, v in meta.items()}


@functools.lru_cache(maxsize=None)
def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the only portable way is to set it and put it back
    os.umask(mask)
    return mask


def _publish(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the permissions of a newly created file and rename it to ``path`` (atomically).

    Some writers (``safetensors.torch.save_file``) create files with mode ``0600``; outputs meant to
    be shared get ``0666 & ~umask`` like any file the user creates (``0644`` by default).
    """
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _write_safetensors(path: Path, tensors: Tensors, meta: Metadata) -> None:
    from safetensors.torch import save_file

    tmp = _partial(path)
    save_file(tensors, str(tmp), metadata=meta)
    _publish(tmp, path)


def _write_pt(path: Path, payload: Dict[str, Any]) -> None:
    tmp = _partial(path)
    torch.save(payload, tmp)
    _publish(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = _partial(path)
    tmp.write_text(text)
    _publish(tmp, path)


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
            _write_text(path, json.dumps(settings.to_json(), indent=2) + "\n")


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
                tmp = _partial(arr_path)
                with open(tmp, "wb") as f:
                    np.save(f, t.numpy())
                _publish(tmp, arr_path)
                files[key] = arr_path.name
            _write_text(path, json.dumps({"metadata": dict(meta), "tensors": files}, indent=1) + "\n")

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        """Write a run's outcome to ``<root>/radio_extract_summary.json`` (atomically); return the path."""
        path = self.root / RUN_SUMMARY
        _write_text(path, json.dumps(summary, indent=2) + "\n")
        return path

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
        tmp = _partial(self.path)
        if self.fmt == "safetensors":
            from safetensors.torch import save_file

            flat = {f"{name}/{k}": t for name in sorted(records) for k, t in records[name][0].items()}
            images = {name: json_metadata(records[name][1]) for name in sorted(records)}
            save_file(flat, str(tmp), metadata={"format": FORMAT_TAG, "run": json.dumps(run),
                                                "images": json.dumps(images)})
        else:
            images_pt = {name: {**records[name][0], "metadata": json_metadata(records[name][1])}
                         for name in sorted(records)}
            torch.save({"format": FORMAT_TAG, "run": run, "images": images_pt}, tmp)
        _publish(tmp, self.path)
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
