"""What a ``version`` argument names: a release, a Hugging Face repository id, or a local file or directory.

One rule, used by :func:`radio.radio_model` and by the ``radio`` command (which checks its arguments
before importing torch, so this module imports no torch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .versions import VERSIONS, RadioVersion, get_version, version_for_hf_repo

__all__ = ["CheckpointNotFoundError", "Source", "is_repo_id", "looks_like_path", "resolve_source"]

_FILE_SUFFIXES = (".pth", ".tar", ".pt", ".safetensors")


@dataclass(frozen=True)
class Source:
    """Where the weights come from.

    Attributes:
        path: a local checkpoint file or Hugging Face directory, when given.
        release: the release record named (or implied by a repository id), if any.
        repo_id: a Hugging Face Hub repository id to download, if given.
    """

    path: Optional[Path]
    release: Optional[RadioVersion]
    repo_id: Optional[str] = None


def looks_like_path(text: str) -> bool:
    """Whether ``text`` was meant as a file path (a separator or a checkpoint suffix)."""
    return os.sep in text or "/" in text or text.endswith(_FILE_SUFFIXES)


class CheckpointNotFoundError(FileNotFoundError, KeyError):
    """A ``version`` meant as a local path that does not exist (a ``KeyError`` too: the original,
    finding no such file, looks the text up in its version table)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def is_repo_id(text: str) -> bool:
    """``org/name`` that is not a local path: a Hugging Face Hub model repository."""
    parts = text.split("/")
    return (len(parts) == 2 and all(parts) and not text.startswith((".", "~"))
            and not text.endswith(_FILE_SUFFIXES) and not Path(text).exists())


def resolve_source(version: Any, checkpoint_path: Any = None) -> Source:
    """Classify ``version`` (and ``checkpoint_path``) without touching the network.

    Raises:
        TypeError: arguments that are not strings or paths.
        CheckpointNotFoundError: something meant as a path that does not exist (a
            ``FileNotFoundError`` and a ``KeyError``).
        UnknownVersionError: a name that is neither a release, a repository id nor a path (lists the
            known releases).
    """
    if checkpoint_path is not None and not isinstance(checkpoint_path, (str, os.PathLike)):
        raise TypeError(f"checkpoint_path must be a path (str or os.PathLike), got {type(checkpoint_path).__name__}")
    if version is None:
        version = ""
    if not isinstance(version, (str, os.PathLike)):
        raise TypeError(f"version must be a release name (see radio.list_versions()), a Hugging Face repository id, "
                        f"or a checkpoint path, got {type(version).__name__} {version!r}")
    version = os.fspath(version)
    if checkpoint_path is not None:
        release = get_version(version) if version and not Path(version).exists() else None
        return Source(Path(checkpoint_path), release)
    if version and Path(version).exists():
        return Source(Path(version), None)
    if version in VERSIONS or not version:
        return Source(None, get_version(version))
    if is_repo_id(version):
        return Source(None, version_for_hf_repo(version), repo_id=version)
    if looks_like_path(version):
        raise CheckpointNotFoundError(f"Checkpoint file or directory not found: {version}")
    return Source(None, get_version(version))  # an unknown name: the error lists the known ones
