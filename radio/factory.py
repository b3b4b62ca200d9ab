"""``radio_model``: resolve -> read -> config -> weights -> build on meta -> assign.

Modules are created on the meta device (no memory, no random initialization) and receive the
weights stage's tensors with ``load_state_dict(assign=True)``; tensors already in their final dtype
are used as they are, straight from the memory-mapped file.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .args import args_as_loaded, config_from_args, release_info
from .checkpoint import CheckpointError, CheckpointKeyError, load_checkpoint
from .config import RadioConfig, check_vitdet_window_size
from .download import resolve_hf_repository, resolve_release
from .heads import HeadMismatchError
from .hf import HFMetadata, read_hf_directory
from .model import RADIOModel
from .sources import resolve_source
from .versions import VERSIONS, RadioVersion
from .weights import ModelWeights, model_weights

__all__ = ["ReadSource", "build_model", "radio_model", "read_source"]

_logger = logging.getLogger(__name__)


def _part(key: str) -> str:
    """The model part a state-dict key belongs to, for error messages."""
    if key.startswith("adaptors."):
        name, head = key.split(".")[1:3]
        return f"adaptor {name!r} {'summary' if head == 'head_mlp' else 'feature'} head"
    return {"model": "backbone", "input_conditioner": "input conditioner", "feature_normalizer": "feature normalizer",
            "inter_feature_normalizer": "intermediate feature normalizer"}.get(key.split(".")[0], key.split(".")[0])


def _assign(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Give a meta-device model its weights; every mismatch is a :class:`CheckpointError` with context.

    Missing keys and shape mismatches are errors. Unexpected keys are errors too, except the
    backbone's, which are listed in a warning (the original loads the backbone non-strictly).
    """
    own = model.state_dict(keep_vars=True)
    wrong = [f"{_part(k)} weight {k.split('.', 3 if k.startswith('adaptors.') else 1)[-1]!r}: expected "
             f"{tuple(own[k].shape)}, found {tuple(v.shape)}"
             for k, v in state_dict.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{len(wrong)} weight(s) of the checkpoint have the wrong shape: "
                              f"{'; '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}. The file belongs "
                              "to a different architecture than its args describe, or is corrupt.")
    result = model.load_state_dict(state_dict, strict=False, assign=True)
    if result.missing_keys:
        parts = sorted({_part(k) for k in result.missing_keys})
        raise CheckpointError(
            f"The checkpoint lacks {len(result.missing_keys)} weight(s) of the {', '.join(parts)}: "
            f"{', '.join(result.missing_keys)}. The file is incomplete or belongs to a different architecture."
        )
    extra = [k for k in result.unexpected_keys if not k.startswith("model.")]
    if extra:
        raise CheckpointError(f"Unexpected weights for the {', '.join(sorted({_part(k) for k in extra}))}: {extra}")
    if result.unexpected_keys:
        keys = [k[len("model."):] for k in result.unexpected_keys]
        warnings.warn(f"Ignoring {len(keys)} unexpected backbone key(s) of the checkpoint: {', '.join(keys)}",
                      stacklevel=3)
    for sub in model.modules():  # constant buffers that are not stored in files
        reset = getattr(sub, "reset_non_persistent_buffers", None)
        if reset is not None:
            reset()
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"no value for {', '.join(leftover)}")


def build_model(cfg: RadioConfig, weights: ModelWeights,
                text_weights: Optional[Mapping[str, Any]] = None, lenient_text: bool = False) -> RADIOModel:
    """Build a :class:`RADIOModel` on the meta device and give it its weights (eval mode).

    Args:
        cfg: the model configuration (from :func:`radio.args.config_from_args`).
        weights: the weights stage's output; its ``heads`` decide which adaptors are attached.
        text_weights: per-adaptor local text-tower weights (see :func:`radio_model`).
        lenient_text: adaptors whose text model cannot be named get no text tower (a warning)
            instead of failing the load.

    Raises:
        CheckpointError: the weights do not fit the configuration.
    """
    heads = {name: (h.teacher, h.summary, h.feature) for name, h in weights.heads.items()}
    try:
        with torch.device("meta"):
            model = RADIOModel.from_config(cfg, heads, feature_normalizer=weights.feature_normalizer is not None,
                                           intermediate_normalizer=weights.intermediate_normalizer_shape,
                                           text_weights=text_weights, lenient_text=lenient_text)
    except HeadMismatchError as e:  # the file's heads do not fit its args: a checkpoint problem
        raise (CheckpointKeyError if isinstance(e, KeyError) else CheckpointError)(str(e)) from None
    _assign(model, weights.state_dict())
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Arguments


def _adaptor_names(adaptor_names: Union[str, Iterable[str], None]) -> List[str]:
    if adaptor_names is None:
        return []
    if isinstance(adaptor_names, str):
        return [adaptor_names]
    if isinstance(adaptor_names, (bytes, Mapping)) or not isinstance(adaptor_names, Iterable):
        raise TypeError(f"adaptor_names must be a string or a list of strings, got {type(adaptor_names).__name__} "
                        f"{adaptor_names!r}")
    names: List[str] = []
    for n in adaptor_names:
        if not isinstance(n, str):
            raise TypeError(f"adaptor_names must be a string or a list of strings, got an element {n!r}")
        if n not in names:
            names.append(n)
    return names


def _warn_unknown_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Unknown keywords are accepted (the original's callers pass some) but never silently."""
    known = [p for p in inspect.signature(radio_model).parameters if p != "kwargs"]
    for key in sorted(kwargs):
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        warnings.warn(f"radio_model ignores the unknown keyword argument {key!r}{hint}", stacklevel=3)


@dataclass(frozen=True)
class ReadSource:
    """What a reader returned, in the official layout (the weights stage's input)."""

    args: Any
    state_dict: Mapping[str, torch.Tensor]
    is_ema: bool
    raw: Dict[str, Any]
    metadata: Optional[HFMetadata] = None


def read_source(path: Path, repo_id: Optional[str], extra_safe_globals: Sequence[type]) -> ReadSource:
    """Read a ``.pth.tar`` file (weights-only unpickler) or a Hugging Face directory (safetensors only)."""
    if path.is_dir():
        repo = read_hf_directory(path, repo_id=repo_id)
        return ReadSource(repo.args, repo.state_dict, False, {"args": repo.args, "config": repo.config,
                                                          "state_dict": repo.state_dict}, repo.metadata)
    ckpt = load_checkpoint(path, extra_safe_globals)
    return ReadSource(ckpt.args, ckpt.state_dict, ckpt.is_ema, ckpt.raw)


def _verify(path: Path, release: Optional[RadioVersion]) -> None:
    """The opt-in integrity check: log what was checked, raise if anything failed."""
    from .integrity import verify_checkpoint

    report = verify_checkpoint(path, release)
    for line in report.describe():
        _logger.info("verify: %s", line)
    if not report.ok:
        raise CheckpointError(f"Integrity check of {path} failed: " + "; ".join(report.describe()[1:]))


def radio_model(
    version: str = "",
    progress: bool = True,
    adaptor_names: Union[str, Iterable[str], None] = None,
    neck_name: Optional[str] = None,
    vitdet_window_size: Optional[int] = None,
    return_checkpoint: bool = False,
    *,
    checkpoint_path: Union[str, os.PathLike, None] = None,
    text_weights: Optional[Mapping[str, Union[str, os.PathLike]]] = None,
    patch_size: Optional[int] = None,
    max_resolution: Optional[int] = None,
    preferred_resolution: Optional[Tuple[int, int]] = None,
    extra_safe_globals: Sequence[type] = (),
    revision: Optional[str] = None,
    verify: bool = False,
    **kwargs: Any,
) -> Union[RADIOModel, Tuple[RADIOModel, Dict[str, Any]]]:
    """Load a RADIO model (AM-RADIO, RADIOv2.x, E-RADIO, C-RADIOv2/v3/v4) in eval mode.

    Args:
        version: a release name (see ``radio.list_versions()``; ``''`` = ``'c-radio_v4-h'``), a Hugging Face
            Hub repository id (``'nvidia/C-RADIOv4-H'``; only ``config.json`` and ``*.safetensors`` are
            fetched, no code), a local Hugging Face directory (either layout), or the path of a local
            checkpoint file (kept for compatibility; prefer ``checkpoint_path``).
        progress: show a progress bar while downloading.
        adaptor_names: teacher adaptor(s) to attach, e.g. ``'clip'`` or ``['siglip2-g', 'dino_v3']``. With
            adaptors, ``model(x)`` returns a dict with ``'backbone'`` and one entry per adaptor.
        neck_name: only for RADIO1D research models; must be ``None``.
        vitdet_window_size: ViTDet windowed attention with windows of this many patches per side
            (inputs must then be multiples of ``patch_size * vitdet_window_size``). ``None`` takes a
            Hugging Face repository's ``config.json`` setting (none for other sources); ``0`` means no
            ViTDet whatever the repository says.
        return_checkpoint: also return the checkpoint dict (with the load-time changes to its ``args``).
        checkpoint_path: a local checkpoint file (overrides ``version``'s download; ``version`` may still
            name the release to get its metadata).
        text_weights: local text-tower weights per adaptor name, for offline zero-shot use
            (an open_clip checkpoint file, or a directory with a saved SigLIP2 model).
        patch_size, max_resolution, preferred_resolution: metadata overrides for local files.
        extra_safe_globals: plain-data classes to allow when unpickling a file you trust, beyond
            ``argparse.Namespace`` (e.g. ``[pathlib.PosixPath]``); still no code from the file runs.
        revision: branch, tag or commit of a Hugging Face repository id.
        verify: check the weights before building: the file's SHA-256 where the release publishes one,
            and that every tensor is finite (logged; a failed check raises ``CheckpointError``).
        **kwargs: accepted for compatibility with callers of the original (ignored, with a warning).

    Returns:
        The model (``RADIOModel``), or ``(model, checkpoint)`` with ``return_checkpoint=True``.

    Raises:
        ValueError: unknown version (lists the known ones) or adaptor (lists the checkpoint's), ViTDet on a
            release that does not support it, or a bad checkpoint (``CheckpointError``).
        TypeError: an argument of the wrong type (``version``, ``adaptor_names``, ``vitdet_window_size``).
        FileNotFoundError: a local file that does not exist, or weights unavailable offline
            (``WeightsUnavailableError``, which says how to pass a local file).
    """
    if neck_name is not None:
        raise ValueError(f"neck_name={neck_name!r} only applies to RADIO1D research models; use None for ViTs.")
    if kwargs:
        _warn_unknown_kwargs(kwargs)
    names = _adaptor_names(adaptor_names)
    source = resolve_source(version, checkpoint_path)
    check_vitdet_window_size(vitdet_window_size, release_info(source.release))  # before any download
    if revision is not None and source.repo_id is None:
        warnings.warn(f"revision={revision!r} applies to Hugging Face repository ids ('org/name'); {version!r} is "
                      "a release name or a local path, so it is ignored.", stacklevel=2)

    if source.path is not None:
        path = source.path
    elif source.repo_id is not None:
        path = resolve_hf_repository(source.repo_id, revision=revision, progress=progress)
    else:
        path = resolve_release(source.release, progress=progress)
    if verify:
        _verify(path, source.release)
    read = read_source(path, source.repo_id, extra_safe_globals)
    meta = read.metadata
    if adaptor_names is None and meta is not None and meta.adaptor_names:
        names = list(meta.adaptor_names)  # a repository saved with adaptors enabled (from_pretrained builds them)
    record = source.release if source.release is not None or meta is None else VERSIONS.get(meta.version or "")
    release = release_info(record, patch_size or (meta and meta.patch_size),
                           max_resolution or (meta and meta.max_resolution),
                           preferred_resolution or (meta and meta.preferred_resolution))
    named = source.release if source.path is not None else None
    cfg = config_from_args(read.args, release=release, vitdet_window_size=vitdet_window_size or None,
                           named_release=named)
    if vitdet_window_size is None and meta is not None and meta.vitdet_window_size:
        # A repository's config.json asks for ViTDet: applied (the original's remote code records it
        # but never installs it); 0 opts out, and a window this model cannot take is dropped with a warning.
        windowed = replace(cfg, vitdet_window_size=meta.vitdet_window_size)
        try:
            windowed.vitdet_global_blocks()  # the window checked against this model
            cfg = windowed
        except (TypeError, ValueError) as e:
            warnings.warn(f"The repository's config.json sets vitdet_window_size={meta.vitdet_window_size}, which "
                          f"this model cannot use ({e}); loading it without ViTDet.", stacklevel=2)
    weights = model_weights(read.args, read.state_dict, read.is_ema, cfg, names)
    # A repository's original code builds no text towers: one this package cannot name must not fail its load
    model = build_model(cfg, weights, text_weights, lenient_text=meta is not None)
    if return_checkpoint:
        return model, dict(read.raw, args=args_as_loaded(read.args, read.is_ema))
    return model
