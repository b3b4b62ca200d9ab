"""A checkpoint's training ``args`` -> :class:`radio.config.RadioConfig` (loading layer).

Every rule that turns ``args`` into a number lives here exactly once: how many summary tokens and
registers the backbone has, which summary tokens form the backbone summary, which token an adaptor
reads, which head variants a teacher uses.
``args`` is never modified here; the edits the original makes to it at load time are gathered in
:func:`args_as_loaded`, which only ``radio_model(..., return_checkpoint=True)`` uses.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from .architectures import resolve_architecture
from .eradio import ERadioSpec
from .checkpoint import CheckpointError
from .config import RadioConfig, ReleaseInfo, TeacherConfig, as_resolution
from .versions import RadioVersion

__all__ = ["args_as_loaded", "config_from_args", "release_info", "summary_indices"]

_REQUIRED = ("model", "model_kwargs", "teachers", "cpe_max_size")
#: ``model_kwargs`` entries that only matter for training-time initialization.
_INIT_ONLY_KWARGS = ("weight_init",)


def _count_summary_tokens(teachers: Tuple[Mapping[str, Any], ...], per_teacher: bool) -> int:
    return len({t["name"] for t in teachers}) if per_teacher else 1


def _count_registers(num_cls: int, register_multiple: Optional[int], num_registers: Optional[int]) -> int:
    if num_registers:
        return int(num_registers)
    if register_multiple:
        # A full extra multiple when num_cls is already a multiple (the original's rule).
        return int(register_multiple) - (num_cls % int(register_multiple))
    return 0


def _summary_idxs(teachers: Tuple[TeacherConfig, ...], per_teacher: bool) -> Tuple[int, ...]:
    if not per_teacher:
        return (0,)
    first: Dict[str, int] = {}
    for t in teachers:
        if t.use_summary and t.name not in first:
            first[t.name] = t.index
    return tuple(sorted(first.values()))


def summary_indices(args: argparse.Namespace) -> Tuple[int, ...]:
    """The summary tokens that form the backbone summary (first teacher of each name that has
    ``use_summary``; ``(0,)`` with one shared summary token): the one rule, also for Hugging Face args."""
    per_teacher = bool(getattr(args, "cls_token_per_teacher", True))
    teachers = tuple(_teacher(i, t, per_teacher, args) for i, t in enumerate(getattr(args, "teachers", None) or ()))
    return _summary_idxs(teachers, per_teacher)


def _teacher(index: int, raw: Any, per_teacher: bool, args: argparse.Namespace) -> TeacherConfig:
    if not isinstance(raw, Mapping) or "name" not in raw:
        raise CheckpointError(f"args.teachers[{index}] is not a dict with a 'name': {raw!r}")
    default_mlp = getattr(args, "mlp_version", None)
    default_spatial = getattr(args, "spatial_mlp_version", None)
    return TeacherConfig(
        index=index,
        name=str(raw["name"]),
        type=raw.get("type"),
        use_summary=bool(raw.get("use_summary", True)),
        token_slot=int(raw.get("token_slot", index)) if per_teacher else 0,
        fd_upsample_factor=int(raw.get("fd_upsample_factor") or 1),
        summary_head=raw.get("mlp_version") or default_mlp,
        feature_head=raw.get("spatial_mlp_version") or default_spatial or default_mlp,
        raw=dict(raw),
    )


def _factory_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The timm factory keywords the original derives from ``args``."""
    if getattr(args, "in_chans", None) is not None:
        in_chans = args.in_chans
    elif getattr(args, "input_size", None) is not None:
        in_chans = args.input_size[0]
    else:
        in_chans = 3
    return dict(
        in_chans=in_chans,
        num_classes=getattr(args, "num_classes", None),
        drop_rate=getattr(args, "drop", None),
        drop_path_rate=getattr(args, "drop_path", None),
        global_pool=getattr(args, "gp", None),
    )


def config_from_args(args: argparse.Namespace, *, release: ReleaseInfo = ReleaseInfo(),
                     vitdet_window_size: Optional[int] = None,
                     named_release: Optional[RadioVersion] = None) -> RadioConfig:
    """Read a checkpoint's ``args`` into a :class:`RadioConfig` (``args`` is left unchanged).

    Args:
        args: the training configuration stored in the file.
        release: release metadata (version table, Hugging Face config or user overrides).
        vitdet_window_size: ViTDet window side in patches, or ``None``.
        named_release: the release a local file was loaded under; its record must fit the file.

    Raises:
        CheckpointError: a required field is missing or malformed.
        UnsupportedArchitectureError: the backbone is not an architecture this package builds.
    """
    missing = [f for f in _REQUIRED if not hasattr(args, f)]
    if missing:
        raise CheckpointError(
            f"The checkpoint's args lack the required field(s) {missing}; it is not a RADIO checkpoint."
        )
    if not isinstance(args.model_kwargs, dict):
        raise CheckpointError(f"args.model_kwargs must be a dict, got {type(args.model_kwargs).__name__}")
    model_kwargs = {k: v for k, v in args.model_kwargs.items() if k not in _INIT_ONLY_KWARGS}
    arch = resolve_architecture(args.model, model_kwargs, _factory_kwargs(args))
    eradio = isinstance(arch, ERadioSpec)
    if eradio and args.cpe_max_size is not None:
        raise CheckpointError(
            f"The checkpoint has cpe_max_size={args.cpe_max_size!r} but an E-RADIO backbone ({args.model}); CPE is not "
            "supported for E-RADIO (the original refuses it too), so cpe_max_size must be None."
        )
    if args.cpe_max_size is None and not eradio:
        raise CheckpointError(
            "The checkpoint has cpe_max_size=None (no CPE patch generator) but a ViT backbone; every released "
            "RADIO ViT uses CPE and this package only supports those."
        )

    per_teacher = bool(getattr(args, "cls_token_per_teacher", True))
    raw_teachers = tuple(args.teachers or ())
    teachers = tuple(_teacher(i, t, per_teacher, args) for i, t in enumerate(raw_teachers))
    # E-RADIO has one summary (its token mean) whatever the teachers
    num_cls = 1 if eradio else _count_summary_tokens(raw_teachers, per_teacher)
    num_reg = _count_registers(num_cls, getattr(args, "register_multiple", None),
                               getattr(args, "cpe_num_registers", None))
    if eradio or not arch.class_token:
        num_reg = 0
    dtype = getattr(args, "dtype", torch.float32) or torch.float32
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"args.dtype must be a torch.dtype, got {dtype!r}")
    # E-RADIO's final norm acts on a map the hub outputs never use.
    final_norm = not eradio and (arch.family == "dinov2" or (bool(getattr(args, "model_norm", False))
                                                             and arch.final_norm))
    cfg = RadioConfig(
        arch=arch,
        cpe_max_size=None if args.cpe_max_size is None else int(args.cpe_max_size),
        num_cls_tokens=num_cls,
        num_registers=num_reg,
        summary_idxs=_summary_idxs(teachers, per_teacher),
        teachers=teachers,
        final_norm=final_norm,
        dtype=dtype,
        release=release,
        vitdet_window_size=vitdet_window_size,
    )
    _check_release_matches(cfg, named_release)
    return cfg


def release_info(release: Optional[RadioVersion], patch_size: Optional[int] = None,
                 max_resolution: Optional[int] = None,
                 preferred_resolution: Optional[Tuple[int, int]] = None) -> ReleaseInfo:
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
    """A file loaded under a release name must have that release's patch size, width and depth.

    Raises:
        CheckpointError: the file's backbone differs from the release record.
    """
    if release is None:
        return
    found = (cfg.feature_stride, cfg.embed_dim, None if cfg.is_eradio else cfg.arch.depth)
    expected = (release.patch_size, *(release.width_depth or found[1:]))
    if found != expected:
        raise CheckpointError(
            f"The checkpoint's backbone ({cfg.arch.name}: patch {found[0]}, width {found[1]}, depth {found[2]}) does "
            f"not match release {release.name!r} (patch {expected[0]}, width {expected[1]}, depth {expected[2]}); "
            "pass the version the file belongs to (see `radio versions`), or no version."
        )


def args_as_loaded(args: argparse.Namespace, is_ema: bool) -> argparse.Namespace:
    """A copy of ``args`` with the edits the original makes while loading.

    ``weight_init`` leaves ``model_kwargs``, and the parametrization flags are off once the stored
    weights are realized (always for EMA weights). Only ``return_checkpoint=True`` callers see this.
    """
    out = copy.copy(args)
    if isinstance(getattr(out, "model_kwargs", None), dict):
        out.model_kwargs = {k: v for k, v in out.model_kwargs.items() if k not in _INIT_ONLY_KWARGS}
    if is_ema:
        out.spectral_heads = False
        out.damp = None
    if is_ema or getattr(out, "spectral_reparam", False):
        out.spectral_reparam = False
    return out
