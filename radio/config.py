"""The one configuration that travels with a model (``model.config``), and the rules derived from it.

A :class:`RadioConfig` is frozen and complete: architecture, token counts, which summary tokens form
the backbone summary, the teachers, the backbone dtype, the release metadata and the ViTDet setting.
Every property of :class:`radio.model.RADIOModel` reads from it, as nanoGPT's ``GPTConfig`` and
timm's ``pretrained_cfg`` do. It is pure data of the model layer: how a checkpoint's ``args``
become one lives in :mod:`radio.args` (loading layer).

The validity rules that depend only on the configuration live here, once each:
:meth:`RadioConfig.vitdet_global_blocks` (ViTDet), :data:`TEXT_TEACHER_TYPES` (text towers),
:meth:`RadioConfig.teacher` (adaptor names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Tuple, Union

import torch

from .architectures import ArchSpec
from .eradio import ERadioSpec
from .layers.patch_generator import position_grid_size
from .outputs import Resolution

__all__ = ["HEAD_VARIANTS", "ReleaseInfo", "RadioConfig", "TEXT_TEACHER_TYPES", "TeacherConfig", "as_resolution",
           "check_vitdet_window_size",
           "vitdet_global_blocks"]

#: Teacher types whose adaptors have a text tower (tokenizer + ``encode_text``).
TEXT_TEACHER_TYPES = ("open_clip", "siglip2")
#: Adaptor MLP variants (``attn`` only for feature heads).
HEAD_VARIANTS = ("v1", "v2", "attn")


@dataclass(frozen=True)
class TeacherConfig:
    """One distillation teacher (``args.teachers[i]``) as far as inference cares.

    Attributes:
        index: position in ``args.teachers`` (heads may be keyed by it).
        name: adaptor name (heads may be keyed by it).
        type: teacher type (``'open_clip'``, ``'siglip2'``, ...), if recorded.
        use_summary: whether its summary token is part of the backbone summary.
        token_slot: the summary token its adaptor reads.
        fd_upsample_factor: feature-head upsampling factor (1 = none).
        summary_head: MLP variant of the summary head (``None``: the checkpoint records none).
        feature_head: MLP variant of the feature head.
        raw: the teacher entry as stored (text towers read ``model``/``pretrained`` from it).
    """

    index: int
    name: str
    type: Optional[str]
    use_summary: bool
    token_slot: int
    fd_upsample_factor: int
    summary_head: Optional[str]
    feature_head: Optional[str]
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def has_text(self) -> bool:
        """Whether this teacher's adaptor has a text tower."""
        return self.type in TEXT_TEACHER_TYPES


@dataclass(frozen=True)
class ReleaseInfo:
    """Release metadata: what the version table (or a Hugging Face config) says about a model.

    Attributes:
        name: the release name (``'c-radio_v4-h'``), or ``None`` for a file without one.
        patch_size: the patch size the release states (``None``: use the architecture's).
        max_resolution: largest trained side, when known.
        preferred_resolution: the resolution the release is tuned for, when known.
        supports_vitdet: whether ViTDet windowed attention may be used.
        vitdet_num_windowed / vitdet_num_global: the release's ViTDet period settings.
    """

    name: Optional[str] = None
    patch_size: Optional[int] = None
    max_resolution: Optional[int] = None
    preferred_resolution: Optional[Resolution] = None
    supports_vitdet: bool = True
    vitdet_num_windowed: Optional[int] = None
    vitdet_num_global: Optional[int] = None


@dataclass(frozen=True)
class RadioConfig:
    """Everything that defines a loaded RADIO model.

    Attributes:
        arch: backbone structure.
        cpe_max_size: side in pixels of the learned position table.
        num_cls_tokens: ``T``, summary tokens (one per unique teacher name, or 1).
        num_registers: ``R``, register tokens after the summary tokens.
        summary_idxs: summary tokens forming the backbone summary, ascending.
        teachers: the teacher list.
        final_norm: whether the backbone applies its final norm.
        dtype: backbone dtype.
        release: release metadata.
        vitdet_window_size: ViTDet window side in patches, or ``None`` (global attention).
    """

    arch: Union[ArchSpec, ERadioSpec]
    cpe_max_size: Optional[int]
    num_cls_tokens: int
    num_registers: int
    summary_idxs: Tuple[int, ...]
    teachers: Tuple[TeacherConfig, ...]
    final_norm: bool
    dtype: torch.dtype
    release: ReleaseInfo = ReleaseInfo()
    vitdet_window_size: Optional[int] = None

    @property
    def is_eradio(self) -> bool:
        """Whether the backbone is E-RADIO (convolutional levels, windowed attention, neck)."""
        return isinstance(self.arch, ERadioSpec)

    @property
    def num_prefix_tokens(self) -> int:
        """``S = T + R``: tokens before the patch tokens (0 without a class token; E-RADIO has none,
        but reports 1 as the original does)."""
        if self.is_eradio:
            return 1
        return self.num_cls_tokens + self.num_registers if self.arch.class_token else 0

    @property
    def single_summary(self) -> bool:
        """The DINOv2-wrapper family summarizes with token 0 alone, whatever the teachers."""
        return not self.is_eradio and self.arch.family == "dinov2"

    @property
    def embed_dim(self) -> int:
        """Feature width ``D`` (the neck width ``F`` for E-RADIO)."""
        return self.arch.full_features_head_dim if self.is_eradio else self.arch.embed_dim

    @property
    def feature_stride(self) -> int:
        """Pixels per feature-grid cell of the architecture: the patch size, or E-RADIO's neck stride."""
        return self.arch.neck_stride if self.is_eradio else self.arch.patch_size

    @property
    def patch_size(self) -> int:
        """The release's patch size, else the architecture's feature stride."""
        return self.release.patch_size or self.feature_stride

    @property
    def position_grid_size(self) -> Optional[int]:
        """Side ``G`` of the position table (Python ``round``, as the original); ``None`` for E-RADIO."""
        if self.cpe_max_size is None:
            return None
        return position_grid_size(self.cpe_max_size, self.arch.patch_size)

    @property
    def max_resolution(self) -> Optional[int]:
        """The release's largest trained side, else the position table's size in pixels (``None`` for an
        E-RADIO file, which has no position table)."""
        grid = self.position_grid_size
        return self.release.max_resolution or (grid * self.arch.patch_size if grid else None)

    @property
    def min_resolution_step(self) -> int:
        """Input sides must be multiples of this: the patch size, times the ViTDet window size if set;
        32 for E-RADIO (its levels halve the size five times)."""
        if self.is_eradio:
            return max(32, self.patch_size)
        return self.patch_size * (self.vitdet_window_size or 1)

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

    def vitdet_global_blocks(self) -> List[int]:
        """Indices of the blocks that stay global under ViTDet; ``[]`` without ViTDet.

        The single check of a ViTDet setting against the model and its release.

        Raises:
            TypeError: the window size is not a positive int.
            ValueError: the release does not support ViTDet, the window is larger than the release's
                trained range, or the release's settings give a period of 1.
        """
        ws = self.vitdet_window_size
        if ws is None:
            return []
        check_vitdet_window_size(ws, self.release)
        if self.is_eradio:
            raise ValueError("vitdet_window_size does not apply to E-RADIO (it has no ViT blocks; the original "
                             "ignores it with a warning). Pass vitdet_window_size=None; E-RADIO's own attention "
                             "window is set with model.set_optimal_window_size() or model.window_policy.")
        # Only a release's trained range bounds the window: for a file the position table (which
        # bounds nothing, larger inputs interpolate it) is all there is, and the original accepts any window.
        top = self.release.max_resolution
        if top is not None and self.min_resolution_step > top:
            raise ValueError(
                f"vitdet_window_size={ws} makes the input step {self.min_resolution_step} px, above this model's "
                f"max_resolution {top}; use a window of at most {top // self.patch_size} patches (typically 8-16)."
            )
        return vitdet_global_blocks(self.arch.depth, self.release.vitdet_num_windowed,
                                    self.release.vitdet_num_global)


def check_vitdet_window_size(window_size: Optional[int], release: ReleaseInfo) -> None:
    """Reject a ViTDet window that is not a positive int (or 0, no ViTDet), or a release without ViTDet support.

    Called before any download (a wrong request costs nothing) and again when the model is built.

    Raises:
        TypeError: not ``None`` and not an int.
        ValueError: the release does not support ViTDet.
    """
    if window_size is None:
        return
    if isinstance(window_size, bool) or not isinstance(window_size, int):
        raise TypeError(f"vitdet_window_size must be a positive int (window side in patches), 0 (no ViTDet) or "
                        f"None, got {window_size!r} ({type(window_size).__name__})")
    if window_size == 0:  # radio_model's explicit "no ViTDet"
        return
    if window_size < 1:
        raise ValueError(f"vitdet_window_size must be a positive number of patches, got {window_size}")
    if not release.supports_vitdet:
        raise ValueError(f"Version {release.name!r} does not support ViTDet windowed attention; pass "
                         "vitdet_window_size=None or use another version.")


def vitdet_global_blocks(depth: int, num_windowed: Optional[int] = None, num_global: Optional[int] = None) -> List[int]:
    """Indices of the global blocks under ViTDet; all others are windowed.

    The blocks are walked in periods: in each, all but the last block are windowed; the last block
    of the network is always global.

    Raises:
        ValueError: the settings give a period of 1 (every block would be global and windowed at once).
    """
    period = num_windowed + 1 if num_windowed is not None else max(depth // (num_global or 4), 1)
    if period <= 1:
        raise ValueError(
            f"ViTDet settings num_windowed={num_windowed}, num_global={num_global} give a period of 1 for "
            f"{depth} blocks, i.e. no windowed block; use fewer global blocks or pass vitdet_window_size=None."
        )
    return sorted({i for i in range(depth) if i % period == period - 1} | {depth - 1})


def as_resolution(value: Union[Tuple[int, int], Resolution, None]) -> Optional[Resolution]:
    """``(h, w)`` as a :class:`Resolution` (``None`` stays ``None``)."""
    return None if value is None else Resolution(int(value[0]), int(value[1]))
