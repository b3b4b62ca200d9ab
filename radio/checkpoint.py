"""Safe reading of official RADIO checkpoint files and the pure state-dict transforms.

An official file is a ``torch.save`` archive holding a plain dict with ``args`` (an
``argparse.Namespace`` with the training configuration), ``state_dict`` and, optionally,
``state_dict_ema``. It is read with the weights-only unpickler, memory-mapped, with exactly one extra
allowed global (``argparse.Namespace``): no code stored in a file ever runs.

The transforms below turn the stored tensors into plain module weights in one place each:
EMA choice, wrapper-prefix cleaning, spectral reparametrization and DAMP realization, and LayerScale
key names. They follow ``shared/spec/checkpoint-format.md``.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "UnsafeCheckpointError",
    "clean_prefixes",
    "load_checkpoint",
    "read_checkpoint_file",
    "realize_parametrizations",
    "rename_layerscale",
    "split_prefix",
    "drop_unused",
]

_logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
PathLike = Union[str, Path]

#: The only global an official file needs beyond what the weights-only unpickler accepts.
ALLOWED_GLOBALS = (argparse.Namespace,)

_SN_ALPHA = 0.05  # spectral reparametrization version 2: s = softplus(scale) + alpha


class CheckpointError(ValueError):
    """The file is not a usable RADIO checkpoint (corrupt, truncated, wrong content, missing keys)."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs globals beyond the allow-list; unpickling it could run arbitrary code."""


@dataclass
class Checkpoint:
    """A checkpoint after safe reading.

    Attributes:
        path: the file it came from.
        args: the training configuration (``argparse.Namespace``), already adjusted for EMA.
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
            raise UnsafeCheckpointError(
                f"Refusing to load {path}: it needs the Python global {name or '(unknown)'!r}, which is "
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
                f"Cannot read {path}: the file is truncated or corrupt, or not a torch checkpoint "
                f"({type(e).__name__}: {e}). Download it again (delete the cached copy first)."
            ) from e


def load_checkpoint(path: PathLike, extra_safe_globals: Sequence[type] = ()) -> Checkpoint:
    """Read an official RADIO checkpoint safely and pick its weights.

    ``state_dict_ema`` wins over ``state_dict`` when present; its weights are already realized,
    so the training-time parametrization flags are switched off on the returned ``args``.

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
    if is_ema:
        args.spectral_reparam = False
        args.spectral_heads = False
        args.damp = None
    return Checkpoint(path=path, args=args, state_dict=dict(state_dict), is_ema=is_ema, raw=raw)


# ----------------------------------------------------------------------------------------------
# Pure state-dict transforms


def clean_prefixes(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Remove the ``_orig_mod.`` / ``module.`` wrapper prefixes (torch.compile, DDP) from keys."""
    out: StateDict = {}
    for k, v in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def split_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """The entries whose key starts with ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def rename_layerscale(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Map the original's LayerScale name ``grandma`` to timm's ``gamma`` (``gamma`` wins if both exist)."""
    out = dict(state_dict)
    for k in list(out):
        if k.endswith(".grandma"):
            v = out.pop(k)
            out.setdefault(k[: -len("grandma")] + "gamma", v)
    return out


@dataclass(frozen=True)
class SpectralSettings:
    """Power-iteration settings of a spectral reparametrization."""

    eps: float
    n_power_iterations: int

    @classmethod
    def from_arg(cls, value: Any) -> "SpectralSettings":
        """``True`` means one iteration with eps 1e-6; a dict may give ``eps``/``n_power_iterations``."""
        if isinstance(value, Mapping):
            return cls(float(value.get("eps", 1e-12)), int(value.get("n_power_iterations", 1)))
        return cls(1e-6, 1)


def _realize_spectral(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                      settings: SpectralSettings, versioned: bool = True) -> torch.Tensor:
    """The plain weight of one spectrally reparametrized (chunk of a) matrix, in float32.

    One training-mode power-iteration step (or ``n``) from the stored ``u``, ``v``; then
    ``W * (s / sigma)`` with ``sigma = u . W v + eps`` and ``s = softplus(scale) + 0.05``.
    """
    w, u, v, scale = (t.float() for t in (w, u, v, scale))
    eps = settings.eps
    for _ in range(settings.n_power_iterations):
        u = F.normalize(torch.mv(w, v), dim=0, eps=eps)
        v = F.normalize(torch.mv(w.t(), u), dim=0, eps=eps)
    sigma = torch.dot(u, torch.mv(w, v)) + eps
    s = F.softplus(scale) + _SN_ALPHA if versioned else scale
    return w * (s / sigma)


_PARAM = ".parametrizations.weight."


def _chunk_count(layer: str) -> int:
    if layer.endswith("attn.qkv") or layer == "qkv":
        return 3
    if layer.endswith("mlp.w12") or layer == "w12":
        return 2
    return 1


def realize_parametrizations(
    state_dict: Mapping[str, torch.Tensor],
    spectral: Any = False,
    what: str = "backbone",
) -> Tuple[StateDict, List[str]]:
    """Fold stored parametrizations (spectral reparametrization, DAMP) into plain ``weight`` keys.

    Args:
        state_dict: keys relative to the module (e.g. ``blocks.0.attn.qkv.parametrizations...``).
        spectral: the ``args.spectral_reparam`` value (truthiness switches it on) or, for heads,
            ``True`` (eps 1e-6, one iteration).
        what: name used in error messages.

    Returns:
        The new state dict (realized weights in float32, every other tensor untouched) and the
        list of realized layer names.

    Raises:
        CheckpointError: a layer has parametrization keys that cannot be realized (spectral entries
            without ``_sn_version``, or a chunk with partial entries).
    """
    layers: Dict[str, Dict[str, torch.Tensor]] = {}
    out: StateDict = {}
    for k, v in state_dict.items():
        if _PARAM in k:
            layer, rest = k.split(_PARAM, 1)
            layers.setdefault(layer, {})[rest] = v
        else:
            out[k] = v
    settings = SpectralSettings.from_arg(spectral)
    for layer, entries in layers.items():
        if "original" not in entries:
            raise CheckpointError(
                f"{what}: layer {layer!r} has parametrization entries but no "
                f"'{layer}{_PARAM}original'; the checkpoint is incomplete or corrupt."
            )
        w = entries["original"]
        spectral_keys = [k for k in entries if k.startswith("0.")]
        if not spectral_keys:  # DAMP (identity) alone: the stored original is the weight
            out[f"{layer}.weight"] = w
            continue
        if not spectral:
            raise CheckpointError(
                f"{what}: layer {layer!r} stores a spectral reparametrization but the checkpoint's "
                "args disable it (spectral_reparam / spectral_heads is falsy); refusing to guess."
            )
        if not any(k.endswith("_sn_version") for k in spectral_keys):
            # The original silently keeps a random weight here; we refuse instead.
            raise CheckpointError(
                f"{what}: layer {layer!r} has spectral parametrization keys without '_sn_version' "
                f"({', '.join(sorted(spectral_keys))}); the original would keep a random weight for "
                "it. The checkpoint is corrupt."
            )
        n_chunks = _chunk_count(layer)
        if n_chunks == 1 or "0.parts.0._u" not in entries:
            need = ("0._u", "0._v", "0.scale")
            lacking = [n for n in need if n not in entries]
            if lacking:
                raise CheckpointError(f"{what}: layer {layer!r} lacks spectral entries {lacking}.")
            out[f"{layer}.weight"] = _realize_spectral(w, entries["0._u"], entries["0._v"], entries["0.scale"],
                                                       settings)
            continue
        rows = w.shape[0] // n_chunks
        parts = []
        for c in range(n_chunks):
            chunk = w[c * rows:(c + 1) * rows]
            names = [f"0.parts.{c}.{n}" for n in ("_u", "_v", "scale", "_sn_version")]
            present = [n in entries for n in names]
            if not any(present):
                # A chunk that was not renormalized in training: keep its rows as stored.
                parts.append(chunk.float())
                continue
            if not all(present):
                raise CheckpointError(f"{what}: layer {layer!r} chunk {c} has partial spectral entries.")
            parts.append(_realize_spectral(chunk, entries[names[0]], entries[names[1]], entries[names[2]],
                                           settings))
        out[f"{layer}.weight"] = torch.cat(parts, dim=0)
    return out, sorted(layers)


def drop_unused(state_dict: Mapping[str, torch.Tensor], unused: Iterable[str]) -> StateDict:
    """Remove keys equal to, or below, any of the ``unused`` names."""
    names = tuple(unused)
    return {k: v for k, v in state_dict.items()
            if not any(k == n or k.startswith(n + ".") for n in names)}

