"""``radio_model``: resolve -> read -> config -> weights -> build on meta -> assign.

Modules are created on the meta device (no memory, no random initialization) and receive the
weights stage's tensors with ``load_state_dict(assign=True)``; tensors already in their final dtype
are used as they are, straight from the memory-mapped file.
"""

from __future__ import annotations

import difflib
import inspect
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .adaptors import Adaptor
from .args import args_as_loaded, config_from_args
from .backbone import RadioViT
from .checkpoint import CheckpointError, load_checkpoint
from .config import RadioConfig, ReleaseInfo, as_resolution, check_vitdet_window_size
from .download import resolve_checkpoint
from .heads import build_head
from .layers.conditioner import InputConditioner
from .layers.normalizers import FeatureNormalizer, IntermediateFeatureNormalizer
from .model import RADIOModel
from .text_encoders import build_text_encoder
from .versions import RadioVersion, get_version
from .weights import HeadWeights, ModelWeights, model_weights

__all__ = ["build_model", "radio_model"]


def _assign(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str, *, strict: bool = True) -> None:
    """Give a meta-device ``module`` its weights; every mismatch is a :class:`CheckpointError` with context.

    Missing keys and shape mismatches are errors. Unexpected keys are an error when ``strict``,
    otherwise a warning that lists them (the backbone: the original loads it non-strictly).
    """
    own = module.state_dict(keep_vars=True)
    wrong = [f"{k}: expected {tuple(own[k].shape)}, found {tuple(v.shape)}"
             for k, v in state_dict.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{what}: {len(wrong)} weight(s) of the checkpoint have the wrong shape "
                              f"({'; '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}). The file belongs "
                              "to a different architecture than its args describe, or is corrupt.")
    result = module.load_state_dict(state_dict, strict=False, assign=True)
    if result.missing_keys:
        raise CheckpointError(
            f"The checkpoint lacks {len(result.missing_keys)} {what} weight(s): "
            f"{', '.join(result.missing_keys)}. The file is incomplete or belongs to a different architecture."
        )
    if result.unexpected_keys:
        if strict:
            raise CheckpointError(f"{what} does not match the checkpoint: unexpected keys {result.unexpected_keys}")
        warnings.warn(f"Ignoring {len(result.unexpected_keys)} unexpected {what} key(s) of the checkpoint: "
                      f"{', '.join(result.unexpected_keys)}", stacklevel=3)
    for sub in module.modules():  # constant buffers that are not stored in files
        reset = getattr(sub, "reset_non_persistent_buffers", None)
        if reset is not None:
            reset()
    leftover = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"{what}: no value for {', '.join(leftover)}")


def _build_backbone(cfg: RadioConfig, weights: ModelWeights) -> nn.Module:
    global_blocks = cfg.vitdet_global_blocks()
    with torch.device("meta"):
        backbone = RadioViT(cfg.arch, cfg.cpe_max_size, cfg.num_cls_tokens, cfg.num_registers,
                            final_norm=cfg.final_norm, window_size=cfg.vitdet_window_size,
                            global_blocks=global_blocks, dtype=cfg.dtype)
    _assign(backbone, weights.backbone, "backbone", strict=False)
    return backbone


def _build_head(sd: Mapping[str, torch.Tensor], variant: Optional[str], label: str) -> nn.Module:
    if variant is None:
        raise CheckpointError(f"{label}: the checkpoint's args give no mlp_version for its heads")
    try:
        with torch.device("meta"):
            head = build_head(sd, variant)
    except ValueError as e:
        raise CheckpointError(f"{label} ({variant}) does not match the checkpoint: {e}") from None
    _assign(head, sd, f"{label} ({variant})")
    return head


def _build_adaptor(cfg: RadioConfig, name: str, heads: HeadWeights,
                   text_weights: Optional[Mapping[str, Any]]) -> Adaptor:
    teacher = cfg.teacher(name)
    if teacher.summary_head == "attn":
        raise CheckpointError(f"adaptor {name!r}: 'attn' is not a valid summary head variant")
    summary = _build_head(heads.summary, teacher.summary_head, f"adaptor {name!r} summary head")
    feature = _build_head(heads.feature, teacher.feature_head, f"adaptor {name!r} feature head")
    text = build_text_encoder(teacher.raw, weights=(text_weights or {}).get(name))
    return Adaptor(name, teacher.token_slot, summary, feature, teacher.fd_upsample_factor, text=text)


def _build_normalizers(cfg: RadioConfig, weights: ModelWeights
                       ) -> Tuple[Optional[FeatureNormalizer], Optional[IntermediateFeatureNormalizer]]:
    feat = inter = None
    if weights.feature_normalizer is not None:
        with torch.device("meta"):
            feat = FeatureNormalizer(cfg.arch.embed_dim, dtype=cfg.dtype)
        _assign(feat, weights.feature_normalizer, "feature normalizer")
    isd = weights.intermediate_normalizer
    if isd is not None:
        if "means" not in isd or "rotation" not in isd:
            raise CheckpointError("the intermediate feature normalizer lacks 'means' or 'rotation'")
        with torch.device("meta"):
            inter = IntermediateFeatureNormalizer(isd["means"].shape[0], cfg.arch.embed_dim,
                                                  isd["rotation"].ndim == 3, dtype=cfg.dtype)
        _assign(inter, isd, "intermediate feature normalizer")
    return feat, inter


def build_model(cfg: RadioConfig, weights: ModelWeights,
                text_weights: Optional[Mapping[str, Any]] = None) -> RADIOModel:
    """Assemble a :class:`RADIOModel` (eval mode) from a configuration and its weights.

    Args:
        cfg: the model configuration (from :func:`radio.args.config_from_args`).
        weights: the weights stage's output; its ``heads`` decide which adaptors are attached.
        text_weights: per-adaptor local text-tower weights (see :func:`radio_model`).
    """
    backbone = _build_backbone(cfg, weights)
    conditioner = InputConditioner(dtype=cfg.dtype)
    _assign(conditioner, weights.conditioner, "input conditioner")
    adaptors = {name: _build_adaptor(cfg, name, heads, text_weights) for name, heads in weights.heads.items()}
    feat_norm, inter_norm = _build_normalizers(cfg, weights)
    return RADIOModel(cfg, backbone, conditioner, adaptors, feat_norm, inter_norm).eval()


# ----------------------------------------------------------------------------------------------
# Arguments


def _adaptor_names(adaptor_names: Union[str, Sequence[str], None]) -> List[str]:
    if adaptor_names is None:
        return []
    if isinstance(adaptor_names, str):
        return [adaptor_names]
    if not isinstance(adaptor_names, Sequence):
        raise TypeError(f"adaptor_names must be a string or a list of strings, got {type(adaptor_names).__name__} "
                        f"{adaptor_names!r}")
    names: List[str] = []
    for n in adaptor_names:
        if not isinstance(n, str):
            raise TypeError(f"adaptor_names must be a string or a list of strings, got an element {n!r}")
        if n not in names:
            names.append(n)
    return names


def _looks_like_path(version: str) -> bool:
    return os.sep in version or "/" in version or version.endswith((".pth", ".tar", ".pt", ".pth.tar"))


def _warn_unknown_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Unknown keywords are accepted (the original's callers pass some) but never silently."""
    known = [p for p in inspect.signature(radio_model).parameters if p != "kwargs"]
    for key in sorted(kwargs):
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        warnings.warn(f"radio_model ignores the unknown keyword argument {key!r}{hint}", stacklevel=3)


@dataclass(frozen=True)
class _Source:
    """Where the weights come from: a local file, and the release record when one is named."""

    path: Optional[Path]
    release: Optional[RadioVersion]


def _resolve_source(version: Any, checkpoint_path: Any) -> _Source:
    if checkpoint_path is not None:
        if not isinstance(checkpoint_path, (str, os.PathLike)):
            raise TypeError(f"checkpoint_path must be a path (str or os.PathLike), got {type(checkpoint_path).__name__}")
    if version is None:
        version = ""
    if not isinstance(version, (str, os.PathLike)):
        raise TypeError(f"version must be a release name (see radio.list_versions()) or a checkpoint path, got "
                        f"{type(version).__name__} {version!r}")
    version = os.fspath(version)
    if checkpoint_path is not None:
        release = get_version(version) if version and not Path(version).is_file() else None
        return _Source(Path(checkpoint_path), release)
    if version and Path(version).is_file():
        return _Source(Path(version), None)
    if version and _looks_like_path(version):
        raise FileNotFoundError(f"Checkpoint file not found: {version}")
    return _Source(None, get_version(version))


def _release_info(release: Optional[RadioVersion], patch_size: Optional[int], max_resolution: Optional[int],
                  preferred_resolution: Optional[Tuple[int, int]]) -> ReleaseInfo:
    """Release metadata: the version record, with the caller's overrides on top."""
    base = ReleaseInfo() if release is None else ReleaseInfo(
        name=release.name, patch_size=release.patch_size, max_resolution=release.max_resolution,
        preferred_resolution=as_resolution(release.preferred_resolution), supports_vitdet=release.supports_vitdet,
        vitdet_num_windowed=release.vitdet_num_windowed, vitdet_num_global=release.vitdet_num_global)
    return ReleaseInfo(
        name=base.name,
        patch_size=patch_size or base.patch_size,
        max_resolution=max_resolution or base.max_resolution,
        preferred_resolution=as_resolution(preferred_resolution) or base.preferred_resolution,
        supports_vitdet=base.supports_vitdet,
        vitdet_num_windowed=base.vitdet_num_windowed,
        vitdet_num_global=base.vitdet_num_global,
    )


def _check_release_matches(cfg: RadioConfig, release: Optional[RadioVersion]) -> None:
    """A file loaded under a release name must have that release's patch size."""
    if release is not None and cfg.arch.patch_size != release.patch_size:
        raise CheckpointError(
            f"The checkpoint's backbone ({cfg.arch.name}, patch {cfg.arch.patch_size}, width {cfg.arch.embed_dim}, "
            f"depth {cfg.arch.depth}) does not match release {release.name!r} (patch {release.patch_size}); "
            "pass the version the file belongs to, or no version."
        )


def radio_model(
    version: str = "",
    progress: bool = True,
    adaptor_names: Union[str, Sequence[str], None] = None,
    vitdet_window_size: Optional[int] = None,
    return_checkpoint: bool = False,
    *,
    checkpoint_path: Union[str, os.PathLike, None] = None,
    text_weights: Optional[Mapping[str, Union[str, os.PathLike]]] = None,
    patch_size: Optional[int] = None,
    max_resolution: Optional[int] = None,
    preferred_resolution: Optional[Tuple[int, int]] = None,
    neck_name: Optional[str] = None,
    extra_safe_globals: Sequence[type] = (),
    **kwargs: Any,
) -> Union[RADIOModel, Tuple[RADIOModel, Dict[str, Any]]]:
    """Load a RADIO model (AM-RADIO, RADIOv2.x, C-RADIOv2/v3/v4) in eval mode.

    Args:
        version: a release name (see ``radio.list_versions()``; ``''`` = ``'c-radio_v4-h'``), or the path
            of a local checkpoint file (kept for compatibility; prefer ``checkpoint_path``).
        progress: show a progress bar while downloading.
        adaptor_names: teacher adaptor(s) to attach, e.g. ``'clip'`` or ``['siglip2-g', 'dino_v3']``. With
            adaptors, ``model(x)`` returns a dict with ``'backbone'`` and one entry per adaptor.
        vitdet_window_size: ViTDet windowed attention with windows of this many patches per side
            (inputs must then be multiples of ``patch_size * vitdet_window_size``).
        return_checkpoint: also return the checkpoint dict (with the load-time changes to its ``args``).
        checkpoint_path: a local checkpoint file (overrides ``version``'s download; ``version`` may still
            name the release to get its metadata).
        text_weights: local text-tower weights per adaptor name, for offline zero-shot use
            (an open_clip checkpoint file, or a directory with a saved SigLIP2 model).
        patch_size, max_resolution, preferred_resolution: metadata overrides for local files.
        neck_name: only for RADIO1D research models; must be ``None``.
        extra_safe_globals: plain-data classes to allow when unpickling a file you trust, beyond
            ``argparse.Namespace`` (e.g. ``[pathlib.PosixPath]``); still no code from the file runs.
        **kwargs: accepted for compatibility with callers of the original (ignored, with a warning).

    Returns:
        The model (``RADIOModel``), or ``(model, checkpoint)`` with ``return_checkpoint=True``.

    Raises:
        ValueError: unknown version (lists the known ones) or adaptor (lists the checkpoint's), ViTDet on a
            release that does not support it, or a bad checkpoint (``CheckpointError``).
        TypeError: an argument of the wrong type (``version``, ``adaptor_names``, ``vitdet_window_size``).
        FileNotFoundError: a local file that does not exist, or weights unavailable offline
            (``WeightsUnavailableError``, which says how to pass a local file).
        NotImplementedError: E-RADIO.
    """
    if neck_name is not None:
        raise ValueError(f"neck_name={neck_name!r} only applies to RADIO1D research models; use None for ViTs.")
    if kwargs:
        _warn_unknown_kwargs(kwargs)
    names = _adaptor_names(adaptor_names)
    source = _resolve_source(version, checkpoint_path)
    release = _release_info(source.release, patch_size, max_resolution, preferred_resolution)
    if source.release is not None and source.release.name == "e-radio_v2":
        raise NotImplementedError("E-RADIO (e-radio_v2) is not supported yet: it is a convolutional hybrid, "
                                  "not a ViT. Use a ViT release such as 'c-radio_v4-h'.")
    check_vitdet_window_size(vitdet_window_size, release)  # before any download

    path = source.path or resolve_checkpoint(source.release, progress=progress)
    checkpoint = load_checkpoint(path, extra_safe_globals)
    cfg = config_from_args(checkpoint.args, release=release, vitdet_window_size=vitdet_window_size)
    _check_release_matches(cfg, source.release if source.path is not None else None)
    weights = model_weights(checkpoint.args, checkpoint.state_dict, checkpoint.is_ema, cfg, names)
    model = build_model(cfg, weights, text_weights)
    if return_checkpoint:
        return model, dict(checkpoint.raw, args=args_as_loaded(checkpoint.args, checkpoint.is_ema))
    return model
