"""Teacher adaptors: summary and feature heads for one distillation teacher.

An :class:`Adaptor` maps the backbone's output into one teacher's space: its summary head reads
the summary token at ``head_idx`` (the teacher's token slot), its feature head maps every patch
token (optionally onto a finer grid). Teachers with a text tower (``open_clip``, ``siglip2``) also
expose ``tokenizer`` and ``encode_text``; the tower is built lazily on first text use.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .config import TeacherConfig
from .heads import HeadMismatchError, UnknownHeadError, build_head, upsample_tokens
from .outputs import RadioOutput, to_nchw
from .text_encoders import build_text_encoder

if TYPE_CHECKING:
    from .text_encoders import TextEncoder

__all__ = ["Adaptor"]

#: attributes of an adaptor that only teachers with a text tower have
_TEXT_API = ("tokenizer", "encode_text", "oc_model", "text_model")


class Adaptor(nn.Module):
    """Summary head + feature head of one teacher.

    Args:
        name: teacher name (the key in ``model.adaptors`` and in the output dict).
        head_idx: summary token this adaptor reads (the teacher's ``token_slot``).
        head_mlp: summary head.
        feat_mlp: feature head.
        upsample_factor: ``fd_upsample_factor`` of the feature head (1 for none).
        text: the teacher's text encoder, if it has one.
    """

    def __init__(self, name: str, head_idx: int, head_mlp: nn.Module, feat_mlp: nn.Module,
                 upsample_factor: int = 1, text: Optional["TextEncoder"] = None) -> None:
        super().__init__()
        self.name = name
        self.head_idx = head_idx
        self.head_mlp = head_mlp
        self.feat_mlp = feat_mlp
        self.upsample_factor = upsample_factor
        self.text = text

    @classmethod
    def from_config(cls, teacher: TeacherConfig, summary_state: Mapping[str, torch.Tensor],
                    feature_state: Mapping[str, torch.Tensor],
                    text_weights: Union[str, os.PathLike, None] = None, *,
                    lenient_text: bool = False) -> "Adaptor":
        """An adaptor whose heads are shaped after their state dicts (values are not copied).

        Build it under ``torch.device('meta')`` and assign the weights afterwards. With
        ``lenient_text`` a text model this package cannot name leaves the adaptor without a text
        tower (see :func:`radio.text_encoders.build_text_encoder`).

        Raises:
            HeadMismatchError: a head variant that is unknown or does not match its state dict (the
                message names the adaptor and the head; a ``ValueError``).
        """
        heads = []
        for what, variant, sd in (("summary", teacher.summary_head, summary_state),
                                  ("feature", teacher.feature_head, feature_state)):
            label = f"adaptor {teacher.name!r} {what} head"
            if variant is None:
                raise HeadMismatchError(f"{label}: the checkpoint's args give no mlp_version for its heads")
            if what == "summary" and variant == "attn":  # a KeyError too, as the original's lookup fails
                raise UnknownHeadError(f"{label}: 'attn' is not a valid summary head variant")
            try:
                heads.append(build_head(sd, variant))
            except HeadMismatchError as e:
                raise HeadMismatchError(f"{label} ({variant}) does not match the checkpoint: {e}") from None
        text = build_text_encoder(teacher.raw, weights=text_weights, lenient=lenient_text)
        # A v1 head has no upsampling: it runs "with upsample factor 1" (adaptors.md §3.1, §4)
        factor = 1 if teacher.feature_head == "v1" else teacher.fd_upsample_factor
        return cls(teacher.name, teacher.token_slot, heads[0], heads[1], factor, text=text)

    @property
    def has_text(self) -> bool:
        """Whether this teacher comes with a text tower (``tokenizer`` / ``encode_text``)."""
        return self.text is not None

    def __getattr__(self, name: str) -> Any:
        """``tokenizer``, ``encode_text`` and the tower (``oc_model`` / ``text_model``) exist only for
        teachers with a text tower, as in the original, so ``hasattr(adaptor, 'encode_text')`` tells
        which adaptors can embed text. The tower attribute builds the tower on first access."""
        if name in _TEXT_API:
            text = self._modules.get("text")
            if text is None:
                raise AttributeError(
                    f"Adaptor {self.name!r} has no text encoder: only teachers of type 'open_clip' or 'siglip2' "
                    "have tokenizer/encode_text (check adaptor.has_text)."
                )
            if name in ("tokenizer", "encode_text"):
                return getattr(text, name)
            if name == text.tower_attr:
                return text.load()
        return super().__getattr__(name)

    def _param_dtype(self) -> torch.dtype:
        return next(self.head_mlp.parameters()).dtype

    def forward(self, summary: torch.Tensor, features: torch.Tensor, grid_hw: Tuple[int, int],
                feature_fmt: str = "NLC") -> RadioOutput:
        """Run both heads.

        Args:
            summary: the summary tokens ``(B, K, D)`` (or one vector ``(B, D)``), float32.
            features: normalized patch tokens ``(B, h*w, D)`` in the backbone dtype.
            grid_hw: ``(h, w)``.
            feature_fmt: ``'NLC'`` or ``'NCHW'``.

        Returns:
            ``RadioOutput`` in float32: summary ``(B, O)``, features ``(B, h*w*u*u, c)`` or NCHW.
        """
        if summary.ndim == 3:
            summary = summary[:, 0] if summary.shape[1] == 1 else summary[:, self.head_idx]
        dtype = self._param_dtype()
        s = self.head_mlp(summary.to(dtype)).to(summary.dtype)
        f = self.feat_mlp(features.to(dtype)).to(features.dtype)
        f = upsample_tokens(f, grid_hw, self.upsample_factor)
        u = self.upsample_factor
        if feature_fmt == "NCHW":
            f = to_nchw(f, (grid_hw[0] * u, grid_hw[1] * u))
        return RadioOutput(s.float(), f.float())

    def extra_repr(self) -> str:
        return f"name={self.name!r}, head_idx={self.head_idx}, upsample_factor={self.upsample_factor}"
