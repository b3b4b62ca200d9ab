"""The inference-relevant part of a checkpoint's ``args``, read once into typed records.

Every rule that turns ``args`` into a number lives here exactly once: how many summary tokens and
registers the backbone has, which summary tokens form the backbone summary, which token an adaptor
reads, which head variants a teacher uses. See ``shared/spec/checkpoint-format.md`` §3 and
``model.md`` §3.6 / §6.2.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from .architectures import ArchSpec, resolve_architecture
from .checkpoint import CheckpointError

__all__ = ["RadioConfig", "TeacherConfig", "config_from_args"]

_REQUIRED = ("model", "model_kwargs", "teachers", "cpe_max_size")


@dataclass(frozen=True)
class TeacherConfig:
    """One distillation teacher (``args.teachers[i]``) as far as inference cares."""

    index: int
    name: str
    type: Optional[str]
    use_summary: bool
    token_slot: int
    fd_upsample_factor: int
    mlp_version: Optional[str]
    spatial_mlp_version: Optional[str]
    model: Optional[str]
    pretrained: Any
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class RadioConfig:
    """Typed view of ``args``.

    Attributes:
        arch: backbone structure.
        cpe_max_size: side in pixels of the learned position table.
        num_cls_tokens: ``T``, summary tokens (one per unique teacher name, or 1).
        num_registers: ``R``, register tokens after the summary tokens.
        summary_idxs: summary tokens forming the backbone summary, ascending.
        cls_token_per_teacher: whether each teacher has its own summary token.
        teachers: the teacher list.
        model_norm: keep the backbone's final norm.
        dtype: backbone dtype.
        mlp_version / spatial_mlp_version: default head variants.
        spectral_reparam / spectral_heads / damp: stored-weight layouts.
    """

    arch: ArchSpec
    cpe_max_size: int
    num_cls_tokens: int
    num_registers: int
    summary_idxs: Tuple[int, ...]
    cls_token_per_teacher: bool
    teachers: Tuple[TeacherConfig, ...]
    model_norm: bool
    dtype: torch.dtype
    mlp_version: Optional[str]
    spatial_mlp_version: Optional[str]
    spectral_reparam: Any
    spectral_heads: bool
    damp: bool

    @property
    def final_norm(self) -> bool:
        """Whether the backbone applies its final LayerNorm.

        Only with ``args.model_norm`` and a timm model that has ``norm`` (a global-pool setting moves
        it to ``fc_norm``, which the CPE path never applies); always for the DINOv2 wrapper.
        """
        return self.arch.family == "dinov2" or (self.model_norm and self.arch.final_norm)

    @property
    def num_prefix_tokens(self) -> int:
        """``S = T + R``: tokens before the patch tokens."""
        return self.num_cls_tokens + self.num_registers

    def teacher(self, name: str) -> TeacherConfig:
        """The first teacher called ``name``.

        Raises:
            ValueError: no such teacher; the message lists the names this checkpoint has.
        """
        for t in self.teachers:
            if t.name == name:
                return t
        known = [t.name for t in self.teachers]
        raise ValueError(
            f"Unknown adaptor {name!r}: this checkpoint has the teachers {known}. "
            "Pass one of these names in `adaptor_names`."
        )


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


def _teacher(index: int, raw: Any, per_teacher: bool) -> TeacherConfig:
    if not isinstance(raw, Mapping) or "name" not in raw:
        raise CheckpointError(f"args.teachers[{index}] is not a dict with a 'name': {raw!r}")
    factor = raw.get("fd_upsample_factor") or 1
    return TeacherConfig(
        index=index,
        name=str(raw["name"]),
        type=raw.get("type"),
        use_summary=bool(raw.get("use_summary", True)),
        token_slot=int(raw.get("token_slot", index)) if per_teacher else 0,
        fd_upsample_factor=int(factor),
        mlp_version=raw.get("mlp_version"),
        spatial_mlp_version=raw.get("spatial_mlp_version"),
        model=raw.get("model"),
        pretrained=raw.get("pretrained"),
        raw=dict(raw),
    )


def _factory_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The timm factory keywords the original derives from ``args`` (spec model.md §2.1)."""
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


def config_from_args(args: argparse.Namespace) -> RadioConfig:
    """Read a checkpoint's ``args`` into a :class:`RadioConfig`.

    ``weight_init`` is popped from ``args.model_kwargs`` (as the original does), so callers that
    get the checkpoint back see the same ``args``.

    Raises:
        CheckpointError: a required field is missing or malformed.
        UnsupportedArchitectureError: the backbone is not a ViT this package builds.
    """
    missing = [f for f in _REQUIRED if not hasattr(args, f)]
    if missing:
        raise CheckpointError(
            f"The checkpoint's args lack the required field(s) {missing}; it is not a RADIO ViT checkpoint."
        )
    if args.cpe_max_size is None:
        raise CheckpointError(
            "The checkpoint has cpe_max_size=None (no CPE patch generator); every released RADIO ViT uses "
            "CPE and this package only supports those."
        )
    if not isinstance(args.model_kwargs, dict):
        raise CheckpointError(f"args.model_kwargs must be a dict, got {type(args.model_kwargs).__name__}")
    args.model_kwargs.pop("weight_init", None)
    arch = resolve_architecture(args.model, args.model_kwargs, _factory_kwargs(args))

    per_teacher = bool(getattr(args, "cls_token_per_teacher", True))
    raw_teachers = tuple(args.teachers or ())
    teachers = tuple(_teacher(i, t, per_teacher) for i, t in enumerate(raw_teachers))
    num_cls = _count_summary_tokens(raw_teachers, per_teacher)
    num_reg = _count_registers(num_cls, getattr(args, "register_multiple", None),
                               getattr(args, "cpe_num_registers", None))
    if not arch.class_token:
        num_reg = 0
    dtype = getattr(args, "dtype", torch.float32) or torch.float32
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"args.dtype must be a torch.dtype, got {dtype!r}")
    return RadioConfig(
        arch=arch,
        cpe_max_size=int(args.cpe_max_size),
        num_cls_tokens=num_cls,
        num_registers=num_reg,
        summary_idxs=_summary_idxs(teachers, per_teacher),
        cls_token_per_teacher=per_teacher,
        teachers=teachers,
        model_norm=bool(getattr(args, "model_norm", False)),
        dtype=dtype,
        mlp_version=getattr(args, "mlp_version", None),
        spatial_mlp_version=getattr(args, "spatial_mlp_version", None),
        spectral_reparam=getattr(args, "spectral_reparam", False),
        spectral_heads=bool(getattr(args, "spectral_heads", False)),
        damp=bool(getattr(args, "damp", None)),
    )
