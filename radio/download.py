"""Resolve a released version to a local checkpoint file.

Order of preference:

1. a file the original implementation already cached under ``<torch hub dir>/checkpoints/``
   (same file name), so that users of the original do not download gigabytes again;
2. the Hugging Face Hub cache, through :func:`huggingface_hub.hf_hub_download`, which owns caching,
   resumable downloads and ``HF_HUB_OFFLINE``.

Nothing here runs at import time, and library code never changes the hub directories.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from .versions import RadioVersion

__all__ = ["WeightsUnavailableError", "resolve_checkpoint", "torch_hub_cached_path"]

_logger = logging.getLogger(__name__)


class WeightsUnavailableError(FileNotFoundError):
    """The weights of a named version are neither cached nor downloadable right now."""


def torch_hub_cached_path(version: RadioVersion) -> Path:
    """Where the original implementation caches ``version``'s file (it may not exist)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / version.filename


def _sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(version: RadioVersion, path: Path) -> None:
    if version.sha256 is None:
        return
    actual = _sha256(path)
    if actual != version.sha256:
        raise WeightsUnavailableError(
            f"{path} does not match the published checksum of {version.name!r} "
            f"(sha256 {actual}, expected {version.sha256}). The file is damaged or not the release: "
            "delete it and load again to download a fresh copy."
        )


def _hf_download(version: RadioVersion, progress: bool) -> str:
    from huggingface_hub import hf_hub_download

    if progress:
        return hf_hub_download(version.repo_id, version.filename)
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        return hf_hub_download(version.repo_id, version.filename)
    finally:
        if not was_disabled:
            enable_progress_bars()


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
    try:
        path = Path(_hf_download(version, progress))
    except ImportError as e:
        raise ImportError(
            "Downloading RADIO weights needs the `huggingface_hub` package: pip install huggingface_hub"
        ) from e
    except Exception as e:  # the hub raises many error types for offline / unreachable cases
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else f"{type(e).__name__}: {e}"
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
