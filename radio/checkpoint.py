"""Safe reading of official RADIO checkpoint files (``.pth.tar``).

An official file is a ``torch.save`` archive holding a plain dict with ``args`` (an
``argparse.Namespace`` with the training configuration), ``state_dict`` and, optionally,
``state_dict_ema``. It is read with the weights-only unpickler, memory-mapped, with exactly one extra
allowed global (``argparse.Namespace``): no code stored in a file ever runs. What the stored tensors
become is :mod:`radio.weights`' business.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch

__all__ = ["Checkpoint", "CheckpointError", "CheckpointKeyError", "UnsafeCheckpointError", "load_checkpoint", "read_checkpoint_file"]

StateDict = Dict[str, torch.Tensor]
PathLike = Union[str, Path]

#: The only global an official file needs beyond what the weights-only unpickler accepts.
ALLOWED_GLOBALS = (argparse.Namespace,)


class CheckpointError(ValueError):
    """The file is not a usable RADIO checkpoint (corrupt, truncated, wrong content, missing keys)."""


class CheckpointKeyError(CheckpointError, KeyError):
    """A checkpoint problem the original reports as a failed lookup (e.g. an unknown head variant)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class UnsafeCheckpointError(CheckpointError):
    """The file needs globals beyond the allow-list; unpickling it could run arbitrary code."""


@dataclass
class Checkpoint:
    """A checkpoint after safe reading.

    Attributes:
        path: the file it came from.
        args: the training configuration (``argparse.Namespace``) as stored.
        state_dict: the chosen weights (``state_dict_ema`` when present), as stored (possibly
            memory-mapped, possibly float16/bfloat16, possibly parametrized).
        is_ema: whether ``state_dict_ema`` was chosen.
        raw: the whole top-level dict (returned to callers that ask for it).
    """

    path: Path
    args: argparse.Namespace
    state_dict: StateDict
    is_ema: bool
    raw: Dict[str, Any]


def _unpickler_reason(message: str) -> str:
    """The unpickler's own reason from torch's weights-only error (e.g. ``Unsupported operand 19``),
    without torch's advice to retry with ``weights_only=False``, which this package never does."""
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|\n\s*Check the documentation|$)", message, re.DOTALL)
    return " ".join((m.group(1) if m else message.strip().splitlines()[-1] if message.strip() else message).split())


def _rejected_global(message: str) -> Optional[str]:
    m = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"global:? ([\w.]+)", message, re.IGNORECASE)
    return m.group(1) if m else None


def read_checkpoint_file(path: PathLike, extra_safe_globals: Sequence[type] = ()) -> Dict[str, Any]:
    """Unpickle ``path`` with the weights-only loader (memory-mapped where the format allows).

    Args:
        path: the file.
        extra_safe_globals: further plain-data classes (e.g. ``pathlib.PosixPath``) the caller allows
            for a file it trusts; they are rebuilt by the weights-only unpickler, which still runs
            no other code.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: the file asks for a global outside the allow-list.
        CheckpointError: the file is truncated, corrupt, or not a torch archive.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    for g in extra_safe_globals:
        if not isinstance(g, type):
            raise TypeError(f"extra_safe_globals takes classes, got {g!r}")
    with torch.serialization.safe_globals(list(ALLOWED_GLOBALS) + list(extra_safe_globals)):
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):  # only the legacy (non-zip) format cannot be mapped
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            name = _rejected_global(str(e))
            if name is None:  # not a rejected global: the bytes are not a pickle/torch archive at all
                raise CheckpointError(
                    f"{path} is not a PyTorch checkpoint (the unpickler says: {_unpickler_reason(str(e))}). Check "
                    "the path; a RADIO checkpoint is a .pth.tar file written by torch.save (or a Hugging Face "
                    "directory)."
                ) from None
            raise UnsafeCheckpointError(
                f"Refusing to load {path}: it needs the Python global {name!r}, which is "
                "not on the allow-list of an official RADIO checkpoint (only argparse.Namespace is). "
                "Unpickling such a file can execute arbitrary code, so it was not unpickled. If you "
                "made this file yourself, re-save it with plain Python values in `args` (str, int, "
                "float, bool, list, dict, torch.dtype) and tensors only. If the global is a plain data "
                "class you trust (e.g. pathlib.PosixPath in a training config), allow exactly that class "
                "with radio_model(..., extra_safe_globals=[TheClass])."
            ) from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError,
                IndexError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint, or it is truncated or corrupt (torch.load says "
                f"{type(e).__name__}: {e}). Check the path; if the file was downloaded, delete it and load again "
                "to download a fresh copy."
            ) from e


def load_checkpoint(path: PathLike, extra_safe_globals: Sequence[type] = ()) -> Checkpoint:
    """Read an official RADIO checkpoint safely and pick its weights.

    ``state_dict_ema`` wins over ``state_dict`` when present (its weights are stored realized:
    :func:`radio.args.spectral_settings` knows). ``args`` is returned as stored.

    Raises:
        CheckpointError: not a RADIO checkpoint (no ``args``/``state_dict``), or unreadable.
        UnsafeCheckpointError: see :func:`read_checkpoint_file`.
    """
    path = Path(path)
    raw = read_checkpoint_file(path, extra_safe_globals)
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{path} is not a RADIO checkpoint: its top level is a {type(raw).__name__}, "
            "expected a dict with 'args' and 'state_dict'."
        )
    args = raw.get("args")
    missing = [k for k in ("args",) if k not in raw]
    if "state_dict" not in raw and "state_dict_ema" not in raw:
        missing.append("state_dict")
    if missing or not isinstance(args, argparse.Namespace):
        found = ", ".join(repr(k) for k in list(raw)[:10]) or "nothing"
        raise CheckpointError(
            f"{path} is not a RADIO checkpoint: missing {', '.join(missing) or 'args (not a Namespace)'} "
            f"(found {found}). RADIO files hold 'args' (argparse.Namespace) and 'state_dict'."
        )
    is_ema = raw.get("state_dict_ema") is not None
    state_dict = raw["state_dict_ema"] if is_ema else raw["state_dict"]
    if not isinstance(state_dict, Mapping) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise CheckpointError(f"{path} is not a RADIO checkpoint: its state dict is not a mapping of tensors.")
    return Checkpoint(path=path, args=args, state_dict=dict(state_dict), is_ema=is_ema, raw=raw)
