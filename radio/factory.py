"""``radio_model``: version or file -> safe checkpoint -> typed config -> modules -> ``RADIOModel``.

Modules are created on the meta device (no memory, no random initialization) and receive the
checkpoint's tensors with ``load_state_dict(assign=True)``; tensors already in their final dtype
are used as they are, straight from the memory-mapped file.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .adaptors import Adaptor
from .backbone import RadioViT, vitdet_global_blocks
from .checkpoint import (Checkpoint, CheckpointError, clean_prefixes, drop_unused, load_checkpoint,
                         realize_parametrizations, rename_layerscale, split_prefix)
from .config import RadioConfig, TeacherConfig, config_from_args
from .download import resolve_checkpoint
from .heads import build_head
from .layers.conditioner import InputConditioner
from .layers.normalizers import FeatureNormalizer, IntermediateFeatureNormalizer
from .layers.patch_generator import position_grid_size
from .model import RADIOModel
from .versions import RadioVersion, get_version

__all__ = ["radio_model", "build_model"]

_logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]

#: Backbone keys that the CPE forward never uses (timm's own embedding, tokens and head).
UNUSED_BACKBONE_KEYS = ("reg_token", "cls_token", "pos_embed", "patch_embed", "head", "fc_norm", "norm_pre",
                        "attn_pool", "input_conditioner", "mask_token", "register_tokens")
#: Top-level prefixes of a RADIO state dict; anything else is reported as unexpected.
KNOWN_PREFIXES = ("base_model.", "input_conditioner.", "_heads.", "_feature_projections.", "_feature_normalizer.",
                  "_intermediate_feature_normalizer.")


def _load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Assign ``state_dict`` to a meta-device ``module``; missing keys are an error, extras a warning."""
    result = module.load_state_dict(state_dict, strict=False, assign=True)
    if result.missing_keys:
        raise CheckpointError(
            f"The checkpoint lacks {len(result.missing_keys)} {what} weight(s): "
            f"{', '.join(result.missing_keys)}. The file is incomplete or belongs to a different architecture."
        )
    if result.unexpected_keys:
        warnings.warn(f"Ignoring {len(result.unexpected_keys)} unexpected {what} key(s) of the checkpoint: "
                      f"{', '.join(result.unexpected_keys)}", stacklevel=3)
    for sub in module.modules():  # constant buffers that are not stored in files
        reset = getattr(sub, "reset_non_persistent_buffers", None)
        if reset is not None:
            reset()
    leftover = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"{what}: no value for {', '.join(leftover)}")


def _cast(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype) -> StateDict:
    """Floating tensors to ``dtype`` (no copy when already there); others unchanged."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}


def _backbone_state(sd: Mapping[str, torch.Tensor], cfg: RadioConfig) -> StateDict:
    """The backbone's plain weights (realized, renamed, cast), without the keys it never uses."""
    bb = split_prefix(sd, "base_model.")
    if cfg.arch.family == "dinov2":
        bb = split_prefix(bb, "inner.")
    bb, _ = realize_parametrizations(bb, cfg.spectral_reparam, what="backbone")
    bb = rename_layerscale(bb)
    unused = list(UNUSED_BACKBONE_KEYS)
    if not cfg.final_norm:
        unused.append("norm")
    return _cast(drop_unused(bb, unused), cfg.dtype)


def _head_state(sd: Mapping[str, torch.Tensor], group: str, teacher: TeacherConfig) -> StateDict:
    """Keys of one teacher's head (``<group>.<index>.*`` or ``<group>.<name>.*``), relative to the head.

    Index- and name-keyed entries are merged in state-dict order (later keys win).
    """
    out: StateDict = {}
    for key, value in sd.items():
        for tag in (f"{group}.{teacher.index}", f"{group}.{teacher.name}"):
            if key.startswith(tag):
                rest = key[len(tag):]
                if rest.startswith("."):  # `_heads.1` must not take `_heads.10...`
                    out[rest[1:]] = value
    return out


def _build_adaptor(sd: Mapping[str, torch.Tensor], cfg: RadioConfig, name: str,
                   text_weights: Optional[Mapping[str, Any]]) -> Adaptor:
    teacher = cfg.teacher(name)
    summary_version = teacher.mlp_version or cfg.mlp_version
    feature_version = teacher.spatial_mlp_version or cfg.spatial_mlp_version or cfg.mlp_version
    if summary_version is None or feature_version is None:
        raise CheckpointError(f"adaptor {name!r}: the checkpoint's args give no mlp_version for its heads")
    if summary_version == "attn":
        raise CheckpointError(f"adaptor {name!r}: 'attn' is not a valid summary head variant")
    heads = []
    for group, version, what in (("_heads", summary_version, "summary"),
                                 ("_feature_projections", feature_version, "feature")):
        hsd = _head_state(sd, group, teacher)
        if not hsd:
            raise CheckpointError(
                f"adaptor {name!r}: the checkpoint has no {what} head weights "
                f"('{group}.{teacher.index}.*' or '{group}.{teacher.name}.*')."
            )
        hsd, _ = realize_parametrizations(hsd, cfg.spectral_heads, what=f"adaptor {name!r} {what} head")
        label = f"adaptor {name!r} {what} head ({version})"
        try:
            with torch.device("meta"):
                head = build_head(hsd, version)
        except CheckpointError as e:
            raise CheckpointError(f"{label} does not match the checkpoint: {e}") from None
        _strict(head, _cast(hsd, torch.float32), label)
        heads.append(head)
    text = None
    if teacher.type in ("open_clip", "siglip2"):
        from .text_encoders import build_text_encoder

        text = build_text_encoder(teacher.raw, weights=(text_weights or {}).get(name))
    return Adaptor(name, teacher.token_slot, heads[0], heads[1], teacher.fd_upsample_factor, text=text)


def _normalizers(sd: Mapping[str, torch.Tensor], cfg: RadioConfig) -> Tuple[Optional[nn.Module],
                                                                           Optional[IntermediateFeatureNormalizer]]:
    feat = inter = None
    fsd = split_prefix(sd, "_feature_normalizer.")
    if fsd:
        with torch.device("meta"):
            feat = FeatureNormalizer(cfg.arch.embed_dim, dtype=cfg.dtype)
        _strict(feat, _cast(fsd, cfg.dtype), "feature normalizer")
    isd = split_prefix(sd, "_intermediate_feature_normalizer.")
    if isd:
        if "means" not in isd or "rotation" not in isd:
            raise CheckpointError("the intermediate feature normalizer lacks 'means' or 'rotation'")
        with torch.device("meta"):
            inter = IntermediateFeatureNormalizer(isd["means"].shape[0], cfg.arch.embed_dim,
                                                  isd["rotation"].ndim == 3, dtype=cfg.dtype)
        _strict(inter, _cast(isd, cfg.dtype), "intermediate feature normalizer")
    return feat, inter


def _strict(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """Assign ``sd`` to ``module``; any missing or extra key is a :class:`CheckpointError`."""
    result = module.load_state_dict(sd, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{what} does not match the checkpoint: missing keys {result.missing_keys}, "
                              f"unexpected keys {result.unexpected_keys}")


def _conditioner(sd: Mapping[str, torch.Tensor], dtype: torch.dtype) -> InputConditioner:
    csd = split_prefix(sd, "input_conditioner.")
    missing = [k for k in ("norm_mean", "norm_std") if k not in csd]
    if missing:
        raise CheckpointError(f"The checkpoint lacks input_conditioner.{', input_conditioner.'.join(missing)}.")
    cond = InputConditioner(dtype=dtype)
    _strict(cond, {k: v.float().clone() for k, v in csd.items()}, "input conditioner")
    return cond


def _normalize_names(adaptor_names: Union[str, Sequence[str], None]) -> List[str]:
    if adaptor_names is None:
        return []
    if isinstance(adaptor_names, str):
        return [adaptor_names]
    names: List[str] = []
    for n in adaptor_names:
        if not isinstance(n, str):
            raise TypeError(f"adaptor_names must be a string or a list of strings, got an element {n!r}")
        if n not in names:
            names.append(n)
    return names


def build_model(checkpoint: Checkpoint, adaptor_names: Union[str, Sequence[str], None] = None,
                vitdet_window_size: Optional[int] = None, version: Optional[RadioVersion] = None,
                text_weights: Optional[Mapping[str, Any]] = None, patch_size: Optional[int] = None,
                max_resolution: Optional[int] = None,
                preferred_resolution: Optional[Tuple[int, int]] = None) -> RADIOModel:
    """Assemble a :class:`RADIOModel` (eval mode) from a safely read checkpoint.

    Args:
        checkpoint: from :func:`radio.checkpoint.load_checkpoint`.
        adaptor_names: teacher adaptors to attach.
        vitdet_window_size: ViTDet window size in patches, or ``None`` for global attention.
        version: the release record, when loading a named version.
        text_weights: per-adaptor local text-tower weights (see ``radio_model``).
        patch_size, max_resolution, preferred_resolution: metadata overrides.
    """
    cfg = config_from_args(checkpoint.args)
    sd = checkpoint.state_dict
    cleaned = clean_prefixes(sd)
    stray = sorted({k.split(".")[0] + "." for k in cleaned} - set(KNOWN_PREFIXES))
    if stray:
        warnings.warn(f"Ignoring checkpoint keys with unknown prefixes: {', '.join(stray)}", stacklevel=2)

    global_blocks: List[int] = []
    if vitdet_window_size is not None:
        if int(vitdet_window_size) < 1:
            raise ValueError(f"vitdet_window_size must be a positive number of patches, got {vitdet_window_size}")
        global_blocks = vitdet_global_blocks(cfg.arch.depth, version.vitdet_num_windowed if version else None,
                                             version.vitdet_num_global if version else None)

    bb_sd = _backbone_state(sd, cfg)
    with torch.device("meta"):
        backbone = RadioViT(cfg.arch, cfg.cpe_max_size, cfg.num_cls_tokens, cfg.num_registers,
                            final_norm=cfg.final_norm,
                            window_size=vitdet_window_size, global_blocks=global_blocks, dtype=cfg.dtype)
    _load_into(backbone, bb_sd, "backbone")
    if cfg.spectral_reparam:
        checkpoint.args.spectral_reparam = False

    conditioner = _conditioner(cleaned, cfg.dtype)
    adaptors = {name: _build_adaptor(cleaned, cfg, name, text_weights) for name in _normalize_names(adaptor_names)}
    feat_norm, inter_norm = _normalizers(cleaned, cfg)

    grid = position_grid_size(cfg.cpe_max_size, cfg.arch.patch_size)
    model = RADIOModel(
        backbone, conditioner, cfg.summary_idxs, adaptors, feat_norm, inter_norm,
        patch_size=patch_size or (version.patch_size if version else None),
        max_resolution=max_resolution or (version.max_resolution if version else grid * cfg.arch.patch_size),
        preferred_resolution=preferred_resolution or (version.preferred_resolution if version else None),
        window_size=vitdet_window_size, version=version.name if version else None,
    )
    return model.eval()


def _looks_like_path(version: str) -> bool:
    return os.sep in version or "/" in version or version.endswith((".pth", ".tar", ".pt", ".pth.tar"))


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
        **kwargs: accepted for compatibility with callers of the original (ignored, logged).

    Returns:
        The model (``RADIOModel``), or ``(model, checkpoint)`` with ``return_checkpoint=True``.

    Raises:
        ValueError: unknown version (lists the known ones) or adaptor (lists the checkpoint's), ViTDet on a
            release that does not support it, or a bad checkpoint (``CheckpointError``).
        FileNotFoundError: a local file that does not exist, or weights unavailable offline
            (``WeightsUnavailableError``, which says how to pass a local file).
        NotImplementedError: E-RADIO.
    """
    if neck_name is not None:
        raise ValueError(f"neck_name={neck_name!r} only applies to RADIO1D research models; use None for ViTs.")
    if kwargs:
        _logger.info("radio_model ignores the keyword argument(s): %s", ", ".join(sorted(kwargs)))
    release: Optional[RadioVersion] = None
    if checkpoint_path is not None:
        path = Path(checkpoint_path)
        if version and not Path(version).is_file():
            release = get_version(version)
    elif version and Path(version).is_file():
        path = Path(version)
    elif version and _looks_like_path(version):
        raise FileNotFoundError(f"Checkpoint file not found: {version}")
    else:
        release = get_version(version)
        path = None
    if release is not None:
        if release.name == "e-radio_v2":
            raise NotImplementedError("E-RADIO (e-radio_v2) is not supported yet: it is a convolutional hybrid, "
                                      "not a ViT. Use a ViT release such as 'c-radio_v4-h'.")
        if vitdet_window_size is not None and not release.supports_vitdet:
            raise ValueError(f"Version {release.name!r} does not support ViTDet windowed attention; pass "
                             "vitdet_window_size=None or use another version.")
    if path is None:
        path = resolve_checkpoint(release, progress=progress)
    checkpoint = load_checkpoint(path, extra_safe_globals)
    model = build_model(checkpoint, adaptor_names, vitdet_window_size, release, text_weights,
                        patch_size, max_resolution, preferred_resolution)
    if return_checkpoint:
        return model, checkpoint.raw
    return model
