"""Opt-in integrity check of a checkpoint file: its SHA-256 against the release table, and finite weights.

A download can be damaged, a copy truncated, a fine-tuning run can save NaNs. :func:`verify_checkpoint`
checks what can be checked and says what it checked:

* the file's SHA-256, when the release record (:class:`radio.versions.RadioVersion`) has one;
* every floating-point tensor in the file is finite (no NaN, no infinity).

The file is read like any checkpoint: with the weights-only unpickler, memory-mapped
(:func:`radio.checkpoint.read_checkpoint_file`), so checking runs no code stored in it. A
``.safetensors`` file, or a directory of them, is read with ``safetensors``. ``radio verify FILE``
prints the report; ``radio_model(..., verify=True)`` raises when it fails.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple, Union

import torch

from .versions import RadioVersion

__all__ = ["IntegrityReport", "sha256_of_file", "verify_checkpoint"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntegrityReport:
    """What :func:`verify_checkpoint` checked, and what it found.

    Attributes:
        path: the file (or directory of ``.safetensors`` files) checked.
        release: the release name the file was checked against, or ``None``.
        sha256_expected: the release's published SHA-256, or ``None`` when it has none (or no release
            was given): then the checksum was not checked.
        sha256_actual: the file's SHA-256; ``None`` when the checksum was not checked.
        tensors_checked: number of tensors read (all of them; integer tensors are always finite).
        non_finite: names of the floating-point tensors holding NaN or infinite values.
    """

    path: Path
    release: Optional[str]
    sha256_expected: Optional[str]
    sha256_actual: Optional[str]
    tensors_checked: int
    non_finite: Tuple[str, ...]

    @property
    def sha256_checked(self) -> bool:
        """Whether the checksum was compared with a published one."""
        return self.sha256_expected is not None

    @property
    def sha256_ok(self) -> Optional[bool]:
        """``True``/``False`` when the checksum was checked, ``None`` when it was not."""
        if self.sha256_expected is None:
            return None
        return self.sha256_actual == self.sha256_expected

    @property
    def ok(self) -> bool:
        """No check failed (a checksum that could not be checked does not fail)."""
        return self.sha256_ok is not False and not self.non_finite and self.tensors_checked > 0

    def describe(self) -> List[str]:
        """The report as lines of text: one per check, then the verdict."""
        lines = [f"file: {self.path}"]
        if self.sha256_expected is None:
            why = "no release given" if self.release is None else f"the release {self.release} publishes no checksum"
            lines.append(f"sha256: not checked ({why})")
        elif self.sha256_ok:
            lines.append(f"sha256: ok ({self.sha256_actual}, as published for {self.release})")
        else:
            lines.append(f"sha256: MISMATCH: {self.sha256_actual}, published for {self.release}: "
                         f"{self.sha256_expected}")
        if not self.non_finite:
            lines.append(f"tensors: {self.tensors_checked} read, all values finite")
        else:
            shown = ", ".join(self.non_finite[:5]) + (", ..." if len(self.non_finite) > 5 else "")
            lines.append(f"tensors: {self.tensors_checked} read, {len(self.non_finite)} hold NaN or infinite "
                         f"values: {shown}")
        if self.tensors_checked == 0:
            lines.append("tensors: the file holds no tensors")
        lines.append("result: ok" if self.ok else "result: FAILED")
        return lines


def sha256_of_file(path: Union[str, Path], chunk_size: int = 1 << 24) -> str:
    """The hexadecimal SHA-256 of a file, read in chunks of ``chunk_size`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def _walk(obj: Any, prefix: str) -> Iterator[Tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts / lists / tuples, with a ``/``-separated name."""
    if torch.is_tensor(obj):
        yield prefix or "<root>", obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _walk(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _walk(value, f"{prefix}/{i}" if prefix else str(i))


def _safetensors_tensors(files: List[Path], root: Path) -> Iterator[Tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for file in files:
        label = file.relative_to(root).as_posix() if file != root else ""
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                yield (f"{label}/{key}" if label else key), f.get_tensor(key)


def _tensors(path: Path) -> Iterator[Tuple[str, torch.Tensor]]:
    if path.is_dir():
        files = sorted(path.rglob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path} is a directory without .safetensors files; pass a checkpoint file.")
        yield from _safetensors_tensors(files, path)
    elif path.suffix.lower() == ".safetensors":
        yield from _safetensors_tensors([path], path)
    else:
        from .checkpoint import read_checkpoint_file

        yield from _walk(read_checkpoint_file(path), "")


def _is_finite(t: torch.Tensor) -> bool:
    if not (t.is_floating_point() or t.is_complex()):
        return True
    return bool(torch.isfinite(t).all())


def verify_checkpoint(path: Union[str, Path], release: Optional[RadioVersion] = None) -> IntegrityReport:
    """Check a checkpoint file: SHA-256 against ``release`` (when it publishes one) and finite tensors.

    Args:
        path: a checkpoint file (``torch.save`` archive or ``.safetensors``), or a directory of
            ``.safetensors`` files.
        release: the release the file should be; its ``sha256`` (if set) is compared with the file's.

    Returns:
        An :class:`IntegrityReport`; ``report.ok`` is False when a check failed. Checking does not
        raise on bad *values*: the report lists them.

    Raises:
        FileNotFoundError: ``path`` does not exist (or is a directory without ``.safetensors``).
        radio.checkpoint.CheckpointError: the file cannot be read as a checkpoint at all.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    # a directory of shards has no single checksum to compare
    has_sum = release is not None and bool(release.sha256) and path.is_file()
    expected = release.sha256.lower() if has_sum else None
    actual = None
    if expected is not None:
        actual = sha256_of_file(path)
        if actual != expected:
            _logger.warning("%s: sha256 %s does not match the published %s of %s", path, actual, expected,
                            release.name if release else "?")
    count = 0
    bad: List[str] = []
    for name, tensor in _tensors(path):
        count += 1
        if not _is_finite(tensor):
            bad.append(name)
    return IntegrityReport(path=path, release=release.name if release is not None else None,
                           sha256_expected=expected, sha256_actual=actual, tensors_checked=count,
                           non_finite=tuple(bad))
