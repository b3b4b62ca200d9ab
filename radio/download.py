"""Resolve a released version to a local checkpoint file.

Order of preference:

1. a file the original implementation already cached under ``<torch hub dir>/checkpoints/``
   (same file name), so that users of the original do not download gigabytes again;
2. the Hugging Face Hub cache, through :func:`huggingface_hub.hf_hub_download`, which owns caching,
   resumable downloads and ``HF_HUB_OFFLINE``.

Nothing here runs at import time, and library code never changes the hub directories.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import List, Optional
from urllib.parse import urlparse

import torch

from .integrity import sha256_of_file
from .versions import RadioVersion

__all__ = ["WeightsUnavailableError", "HF_REPOSITORY_FILES", "cached_hf_snapshot", "hub_unreachable_reason",
           "resolve_checkpoint", "resolve_release",
           "resolve_hf_repository", "torch_hub_cached_path"]

#: The only files fetched from a Hugging Face model repository (no code, no pickles).
HF_REPOSITORY_FILES: List[str] = ["config.json", "*.safetensors", "model.safetensors.index.json"]

#: Seconds the reachability probe of the Hub waits (name lookup and TCP connect, each).
PROBE_TIMEOUT_S = 3.0

_logger = logging.getLogger(__name__)


class WeightsUnavailableError(FileNotFoundError):
    """The weights of a named version are neither cached nor downloadable right now."""


def torch_hub_cached_path(version: RadioVersion) -> Path:
    """Where the original implementation caches ``version``'s file (it may not exist)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / version.filename


def _verify(version: RadioVersion, path: Path) -> None:
    if version.sha256 is None:
        return
    actual = sha256_of_file(path)
    if actual != version.sha256:
        raise WeightsUnavailableError(
            f"{path} does not match the published checksum of {version.name!r} "
            f"(sha256 {actual}, expected {version.sha256}). The file is damaged or not the release: "
            "delete it and load again to download a fresh copy."
        )


def _offline_env() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set now (read at call time, unlike huggingface_hub's constant)."""
    value = os.environ.get("HF_HUB_OFFLINE") or ""
    return value.strip().lower() in ("1", "true", "yes", "on")


def hub_unreachable_reason(timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """One short probe of the Hub endpoint: ``None`` when a TCP connection opens, else the reason.

    The name lookup runs in a daemon thread so that a hanging resolver costs at most ``timeout``
    seconds; the connection attempt has the same limit. This replaces huggingface_hub's own
    retries (about 25 s with backoff) by a single attempt when the network is down.
    """
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    found: List[object] = []

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as e:
            found.append(e)

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    if not found:
        return f"no answer from the name lookup of {host} within {timeout:g} s"
    if isinstance(found[0], OSError):
        return f"cannot resolve {host} ({found[0]})"
    family, kind, proto, _, address = found[0][0]  # type: ignore[index]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
    except OSError as e:
        return f"cannot connect to {host}:{port} ({e or type(e).__name__})"
    return None


class _QuietProgress:
    """Disable huggingface_hub progress bars inside the block unless ``progress``."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self.was_disabled = True

    def __enter__(self) -> None:
        if self.progress:
            return
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

        self.was_disabled = are_progress_bars_disabled()
        disable_progress_bars()

    def __exit__(self, *exc: object) -> None:
        if not self.progress and not self.was_disabled:
            from huggingface_hub.utils import enable_progress_bars

            enable_progress_bars()


def _hf_download(version: RadioVersion, progress: bool, local_only: bool = False) -> str:
    from huggingface_hub import hf_hub_download

    kwargs = {"local_files_only": True} if local_only else {}
    with _QuietProgress(progress):
        return hf_hub_download(version.repo_id, version.filename, **kwargs)


def resolve_checkpoint(version: RadioVersion, progress: bool = True) -> Path:
    """Return a local path holding ``version``'s checkpoint, downloading it if needed.

    Args:
        version: the release record.
        progress: show a progress bar while downloading.

    Raises:
        WeightsUnavailableError: offline (``HF_HUB_OFFLINE=1``) or the Hub cannot be reached and
            the file is not cached; the message names the file and how to use a local copy.
    """
    legacy = torch_hub_cached_path(version)
    if legacy.is_file():
        _logger.info("Using %s (cached by the torch hub)", legacy)
        _verify(version, legacy)
        return legacy
    offline = _offline_env()
    unreachable = None
    try:
        if not offline:
            unreachable = hub_unreachable_reason()
        path = Path(_hf_download(version, progress, local_only=offline or unreachable is not None))
    except ImportError as e:
        raise ImportError(
            "Downloading RADIO weights needs the `huggingface_hub` package: pip install huggingface_hub"
        ) from e
    except Exception as e:  # the hub raises many error types for offline / unreachable cases
        if offline:
            why = "HF_HUB_OFFLINE is set"
        elif unreachable is not None:
            why = f"the Hub is unreachable: {unreachable}; {type(e).__name__}: {e}"
        else:
            why = f"{type(e).__name__}: {e}"
        raise WeightsUnavailableError(
            f"Cannot get the weights of RADIO version {version.name!r}: the file "
            f"{version.filename!r} of the Hugging Face repository {version.repo_id!r} is not cached "
            f"and could not be downloaded ({why}).\n"
            f"Either connect to the network once (it is then cached), or download {version.url} "
            "yourself and load the local file with "
            "`torch.hub.load(repo, 'radio_model', version='/path/to/" + version.filename + "')` "
            f"(or place it at {legacy}, which is reused automatically)."
        ) from e
    _verify(version, path)
    return path


def resolve_hf_repository(repo_id: str, revision: Optional[str] = None, progress: bool = True) -> Path:
    """Return a local snapshot of a Hugging Face model repository, downloading what is missing.

    Only ``config.json`` and the safetensors weights (plus their shard index) are fetched: Python
    files and pickled weights in the repository are never downloaded. The huggingface_hub cache
    is used (and reused offline).

    Args:
        repo_id: e.g. ``'nvidia/C-RADIOv4-H'``.
        revision: branch, tag or commit (default: the main branch).
        progress: show progress bars while downloading.

    Returns:
        The snapshot directory.

    Raises:
        WeightsUnavailableError: offline (``HF_HUB_OFFLINE=1``) or the Hub is unreachable and the
            repository is not cached; the message names the repository and the local-directory fix.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ImportError(
            "Loading a Hugging Face repository needs the `huggingface_hub` package: pip install huggingface_hub"
        ) from e
    offline = _offline_env()
    unreachable = None if offline else hub_unreachable_reason()
    local_only = offline or unreachable is not None
    try:
        with _QuietProgress(progress):
            path = snapshot_download(repo_id, revision=revision, allow_patterns=list(HF_REPOSITORY_FILES),
                                     local_files_only=local_only)
    except Exception as e:  # RepositoryNotFound, LocalEntryNotFound, IncompleteSnapshot, HTTP errors, ...
        if offline:
            why = "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
        elif unreachable is not None:
            why = f"it is not cached and the Hub is unreachable ({unreachable})"
        else:
            why = f"{type(e).__name__}: {e}"
        rev = f" (revision {revision!r})" if revision else ""
        raise WeightsUnavailableError(
            f"Cannot get the Hugging Face repository {repo_id!r}{rev}: {why}.\n"
            "Either connect to the network once (unset HF_HUB_OFFLINE; the files are then cached), or copy "
            "the repository's config.json and *.safetensors files into a local directory and pass that "
            "directory instead, e.g. radio_model('/path/to/dir')."
        ) from e
    return Path(path)


def cached_hf_snapshot(repo_id: str, revision: Optional[str] = None) -> Optional[Path]:
    """A complete local snapshot of ``repo_id`` in the huggingface_hub cache, or ``None`` (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(HF_REPOSITORY_FILES),
                                      local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError and friends) or no huggingface_hub
        return None
    return path if (path / "config.json").is_file() and any(path.glob("*.safetensors")) else None


def resolve_release(version: RadioVersion, progress: bool = True) -> Path:
    """A local copy of a release: its ``.pth.tar`` or Hub snapshot if either is on disk, else the ``.pth.tar``.

    The ``.pth.tar`` is what gets downloaded by default: every release has one (only the C-RADIO
    releases also have a Hugging Face model repository), and it is the file the original caches.
    """
    if torch_hub_cached_path(version).is_file() or version.hf_repo_id is None:
        return resolve_checkpoint(version, progress=progress)
    try:
        from huggingface_hub import try_to_load_from_cache

        pth_cached = isinstance(try_to_load_from_cache(version.repo_id, version.filename), str)
    except Exception:
        pth_cached = False
    if not pth_cached:
        snapshot = cached_hf_snapshot(version.hf_repo_id)
        if snapshot is not None:
            _logger.info("Using the cached Hugging Face snapshot %s of %s", snapshot, version.name)
            return snapshot
    return resolve_checkpoint(version, progress=progress)
