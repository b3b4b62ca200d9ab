"""Backbone architectures: from ``args.model`` + ``args.model_kwargs`` to a structural description.

The original registers a dozen extra ViT names with timm (``vit_huge_patch16_224``,
``vit_so400m_v2_patch16_224``, ...). We keep them as data (:data:`RADIO_ARCHITECTURES`) instead of
registering anything by side effect. A name is resolved by building the corresponding timm
``VisionTransformer`` on the *meta* device (no memory, no initialization) with the checkpoint's
``model_kwargs``, and reading the structure off it, so that timm's own keyword semantics
(``global_pool`` moving the final norm to ``fc_norm``, ``mlp_ratio`` rounding, ...) hold for every
name, ours and timm's alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Mapping, Tuple, Union

import torch
from torch import nn

from .layers.norms import LN_EPS

if TYPE_CHECKING:
    from .eradio import ERadioSpec

__all__ = ["ArchSpec", "RADIO_ARCHITECTURES", "resolve_architecture", "UnsupportedArchitectureError"]


class UnsupportedArchitectureError(NotImplementedError, ValueError):
    """The checkpoint's ``args.model`` names an architecture this package cannot build."""


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to build the transformer of a RADIO backbone.

    Attributes mirror timm ``VisionTransformer`` options; the last group holds the original's
    architecture extras that timm has no option for.
    """

    name: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    img_size: Tuple[int, int]
    qkv_bias: bool = True
    qk_norm: bool = False
    proj_bias: bool = True
    layerscale: bool = False  # LayerScale after attention and MLP (values come from the file)
    class_token: bool = True
    embed_norm: bool = False
    final_norm: bool = True
    act_approximate: str = "none"
    drop_path_rates: Tuple[float, ...] = ()
    # extras of the original's own architectures
    block_norm: str = "layernorm"  # or "dyt"
    mlp_norm: bool = False  # LayerNorm(hidden, eps=1e-5) between GELU and fc2
    scaled_ln: bool = False  # norm outputs of block j scaled by 1/sqrt(j+1)
    mlp_kind: str = "mlp"  # or "swiglu" (DINOv2-g)
    embed_bias: bool = False
    family: str = "vit"  # or "dinov2"


@dataclass(frozen=True)
class _Registered:
    """One architecture the original registers: timm ViT keyword defaults plus our extras."""

    vit_kwargs: Mapping[str, Any]
    extras: Mapping[str, Any] = field(default_factory=dict)


def _vit(ps: int, d: int, depth: int, heads: int, **kw: Any) -> Dict[str, Any]:
    return dict(patch_size=ps, embed_dim=d, depth=depth, num_heads=heads, **kw)


_V2_OPTS = dict(init_values=1e-5, reg_tokens=4, no_embed_class=True, img_size=518 * 16 // 14)

#: Architectures the original registers besides timm's own.
RADIO_ARCHITECTURES: Dict[str, _Registered] = {
    "vit_tiny_patch14_224": _Registered(_vit(14, 192, 12, 3)),
    "vit_small_patch14_224": _Registered(_vit(14, 384, 12, 6)),
    "vit_base_patch14_224": _Registered(_vit(14, 768, 12, 12)),
    "vit_base_patch16_v2_224": _Registered(_vit(16, 768, 12, 12, **_V2_OPTS)),
    "vit_large_patch16_v2_224": _Registered(_vit(16, 1024, 24, 16, **_V2_OPTS)),
    "vit_so400m_patch16_224": _Registered(_vit(16, 1152, 27, 16, mlp_ratio=4304 / 1152)),
    "vit_so400m_v2_patch16_224": _Registered(_vit(16, 1152, 27, 16, mlp_ratio=4320 / 1152)),
    "vit_huge_patch16_224": _Registered(_vit(16, 1280, 32, 16)),
    "vit_huge_patch16_224_mlpnorm": _Registered(_vit(16, 1280, 32, 16), {"mlp_norm": True}),
    "vit_giant_patch16_224": _Registered(_vit(16, 1536, 40, 24)),
    "vit_bigG_patch14_224": _Registered(_vit(14, 1664, 48, 16, init_values=1e-6)),
    "vit_large_dyt_patch16_224": _Registered(_vit(16, 1024, 24, 16), {"block_norm": "dyt"}),
}

#: The DINOv2-wrapper family: fixed architectures, factory kwargs ignored.
DINOV2_ARCHITECTURES: Dict[str, ArchSpec] = {
    "dino_v2_l_student": ArchSpec("dino_v2_l_student", 14, 1024, 24, 16, 4096, (518, 518), layerscale=True,
                                  embed_bias=True, family="dinov2"),
    "dino_v2_g_student": ArchSpec("dino_v2_g_student", 14, 1536, 40, 24, ((int(1536 * 4 * 2 / 3) + 7) // 8) * 8,
                                  (518, 518), layerscale=True, embed_bias=True, mlp_kind="swiglu",
                                  family="dinov2"),
}


def _meta_vit(name: str, kwargs: Dict[str, Any]) -> nn.Module:
    """Build the timm model on the meta device (no allocation, no init) to read its structure."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    kwargs = dict(kwargs, weight_init="skip")
    with torch.device("meta"):
        if name in RADIO_ARCHITECTURES:
            return VisionTransformer(**{**RADIO_ARCHITECTURES[name].vit_kwargs, **kwargs})
        if not timm.is_model(name):
            raise UnsupportedArchitectureError(
                f"Unknown backbone architecture {name!r}: it is neither one of RADIO's "
                f"({', '.join(sorted(RADIO_ARCHITECTURES) + sorted(DINOV2_ARCHITECTURES))}), an E-RADIO "
                "architecture, nor a timm model."
            )
        module = timm.models.model_entrypoint(name).__module__
        if not module.endswith(".vision_transformer"):
            raise UnsupportedArchitectureError(
                f"Backbone {name!r} is a timm model of {module}, not a timm VisionTransformer; the CPE patch "
                "generator of RADIO only applies to VisionTransformer backbones."
            )
        return timm.create_model(name, pretrained=False, **kwargs)


def _check_block(name: str, blk: nn.Module, kwargs: Mapping[str, Any]) -> str:
    """Refuse block options the package does not build (instead of silently running a different block);
    return the GELU's ``approximate`` mode.

    The model extras (DyT, MLP norm, SwiGLU) replace timm's norm and MLP afterwards, so only the parts
    timm decides are checked: the activation, the block norms, the optional attention/MLP inner
    norms and the MLP type.
    """
    from timm.layers import Mlp

    def refuse(what: str) -> UnsupportedArchitectureError:
        return UnsupportedArchitectureError(
            f"Backbone {name!r} with model_kwargs {dict(kwargs)!r} has {what}, which this package does not "
            "build (RADIO's ViTs use GELU, LayerNorm(eps=1e-6) and timm's Mlp).")

    act = getattr(blk.mlp, "act", None)
    if isinstance(act, nn.GELU):
        approximate = act.approximate
    elif type(act).__name__ == "GELUTanh":  # timm's tanh-approximated GELU
        approximate = "tanh"
    elif type(act).__name__ == "GELU":  # timm's exact GELU
        approximate = "none"
    else:
        raise refuse(f"the activation {type(act).__name__}")
    if type(blk.mlp) is not Mlp:
        raise refuse(f"the MLP {type(blk.mlp).__name__}")
    for part in ("norm1", "norm2"):
        norm = getattr(blk, part)
        if not isinstance(norm, nn.LayerNorm) or norm.eps != LN_EPS:
            raise refuse(f"the block norm {norm!r}")
    for part, inner in (("attn.norm", getattr(blk.attn, "norm", None)), ("mlp.norm", getattr(blk.mlp, "norm", None))):
        if inner is not None and not isinstance(inner, nn.Identity):
            raise refuse(f"an inner norm {part} ({type(inner).__name__})")
    return approximate


def resolve_architecture(name: str, model_kwargs: Mapping[str, Any],
                         factory_kwargs: Mapping[str, Any]) -> Union[ArchSpec, "ERadioSpec"]:
    """Describe the backbone that ``timm.create_model(name, **factory_kwargs, **model_kwargs)`` gives
    (an :class:`radio.eradio.ERadioSpec` for the E-RADIO names).

    Args:
        name: ``args.model``.
        model_kwargs: ``args.model_kwargs`` without ``weight_init`` (they override the defaults).
        factory_kwargs: the other factory keywords the original passes (``drop_path_rate``,
            ``global_pool``, ...); ``None`` values are dropped as timm does.

    Raises:
        UnsupportedArchitectureError: not a ViT this package can build.
    """
    if name in DINOV2_ARCHITECTURES:
        return DINOV2_ARCHITECTURES[name]
    from .eradio import eradio_spec, is_eradio

    if is_eradio(name):
        try:
            return eradio_spec(name, model_kwargs)
        except (ValueError, TypeError) as e:
            raise UnsupportedArchitectureError(f"Cannot build E-RADIO backbone {name!r}: {e}") from e
    if name.endswith("_xpos"):
        raise UnsupportedArchitectureError(
            f"Backbone {name!r} (xpos research architecture) is not supported: only the ViT and E-RADIO "
            "families of RADIO checkpoints can be loaded."
        )
    kwargs = {k: v for k, v in factory_kwargs.items() if v is not None}
    kwargs.update(model_kwargs)
    extras = dict(RADIO_ARCHITECTURES[name].extras) if name in RADIO_ARCHITECTURES else {}
    if "scaled_ln" in kwargs:
        extras["scaled_ln"] = bool(kwargs.pop("scaled_ln"))
    kwargs.pop("pretrained", None)
    try:
        vit = _meta_vit(name, kwargs)
    except UnsupportedArchitectureError:
        raise
    except TypeError as e:
        raise UnsupportedArchitectureError(
            f"Cannot build backbone {name!r} with model_kwargs {dict(model_kwargs)!r}: {e}"
        ) from e
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(vit, VisionTransformer):
        raise UnsupportedArchitectureError(
            f"Backbone {name!r} is a {type(vit).__name__}, not a timm VisionTransformer; the CPE patch "
            "generator of RADIO only applies to VisionTransformer backbones."
        )
    blk = vit.blocks[0]
    act_approximate = _check_block(name, blk, kwargs)
    return ArchSpec(
        name=name,
        patch_size=int(vit.patch_embed.patch_size[0]),
        embed_dim=int(vit.embed_dim),
        depth=len(vit.blocks),
        num_heads=int(blk.attn.num_heads),
        mlp_hidden=int(blk.mlp.fc1.out_features),
        img_size=tuple(int(s) for s in vit.patch_embed.img_size),
        qkv_bias=blk.attn.qkv.bias is not None,
        qk_norm=not isinstance(blk.attn.q_norm, nn.Identity),
        proj_bias=blk.attn.proj.bias is not None,
        layerscale=hasattr(blk.ls1, "gamma"),
        class_token=vit.cls_token is not None,
        embed_norm=not isinstance(getattr(vit.patch_embed, "norm", nn.Identity()), nn.Identity),
        final_norm=not isinstance(vit.norm, nn.Identity),
        act_approximate=act_approximate,
        drop_path_rates=tuple(float(getattr(b.drop_path1, "drop_prob", 0.0)) for b in vit.blocks),
        **extras,
    )
