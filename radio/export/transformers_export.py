"""Export a RADIO ViT to the transformers-native layout (``transformers.RadioModel``).

The directory holds a ``RadioConfig`` ``config.json`` (``model_type: "radio"``) and a
``model.safetensors`` with the names ``RadioModel.save_pretrained`` writes (``radio_model.model.*``,
``attn.qkv`` concatenated, LayerScale as ``layer_scale{1,2}.lambda1``). Layout B represents only
the CPE ViT backbone: every feature it cannot hold that would change the
outputs blocks the export, with an explicit opt-in to drop adaptors and normalizers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .parity import parity_key, relative_error

__all__ = ["export_transformers", "parity_tolerance", "transformers_export_blockers", "verify_transformers_export"]

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

_LN_EPS = 1e-6


def _spec(model: nn.Module):
    """The ViT's :class:`radio.architectures.ArchSpec`, or ``None`` for any other backbone (E-RADIO)."""
    from ..architectures import ArchSpec

    spec = getattr(getattr(model, "model", None), "spec", None)
    return spec if isinstance(spec, ArchSpec) else None


def transformers_export_blockers(model: nn.Module) -> Tuple[List[str], List[str]]:
    """What prevents an exact layout-B export of ``model``.

    Returns:
        ``(blockers, droppable)``: features layout B cannot represent at all, and features
        (adaptors, normalizers) that can be left out with ``drop_unsupported=True``.
    """
    blockers: List[str] = []
    droppable: List[str] = []
    spec = _spec(model)
    if spec is None:
        return [f"backbone {type(getattr(model, 'model', None)).__name__} is not a RADIO CPE ViT (e.g. E-RADIO); "
                "transformers.RadioModel only implements the CPE ViT"], []
    if spec.family != "vit":
        blockers.append(f"{spec.family} backbone family (embedder bias, always-on final norm, fixed prefix)")
    if getattr(model, "window_size", None):
        blockers.append(f"ViTDet windowed attention (vitdet_window_size={model.window_size})")
    if not isinstance(getattr(model.model, "norm", nn.Identity()), nn.Identity):
        blockers.append("final norm (model_norm=True)")
    if spec.mlp_norm:
        blockers.append("MLP norm (vit_huge_patch16_224_mlpnorm)")
    if spec.block_norm != "layernorm":
        blockers.append(f"{spec.block_norm} instead of LayerNorm (DyT)")
    if spec.scaled_ln:
        blockers.append("scaled LayerNorm (scaled_ln)")
    if spec.qk_norm:
        blockers.append("qk_norm")
    if spec.embed_norm:
        blockers.append("patch normalizer")
    if spec.embed_bias:
        blockers.append("patch embedder bias")
    if spec.mlp_kind != "mlp":
        blockers.append(f"{spec.mlp_kind} MLP")
    if not spec.class_token:
        blockers.append("no class token")
    if spec.act_approximate != "none":
        blockers.append(f"GELU approximation {spec.act_approximate!r}")
    pg = model.model.patch_generator
    if hasattr(pg, "cpe_mode") and not pg.cpe_mode:
        blockers.append("non-CPE crop mode (timm img_size equals the CPE table size)")
    eps = {float(m.eps) for m in model.model.blocks.modules() if isinstance(m, nn.LayerNorm)}
    if eps - {_LN_EPS}:
        blockers.append(f"LayerNorm eps {sorted(eps)} (transformers uses one eps, {_LN_EPS})")
    if len(model.adaptors):
        droppable.append(f"adaptors {list(model.adaptors)}")
    if not isinstance(model.feature_normalizer, nn.Identity):
        droppable.append("feature normalizer")
    if model.inter_feature_normalizer is not None:
        droppable.append("intermediate feature normalizer")
    return blockers, droppable


def export_transformers(model: nn.Module, out_dir: PathLike, *, drop_unsupported: bool = False,
                        input_conditioner: Optional[nn.Module] = None) -> Path:
    """Write ``model`` as a directory ``transformers.RadioModel.from_pretrained`` loads.

    Args:
        model: a ``RADIOModel`` with a CPE ViT backbone.
        out_dir: directory to create or fill.
        drop_unsupported: leave adaptors and feature normalizers out (logged as a warning) instead of
            refusing; the exported ``features`` are then the raw backbone features.
        input_conditioner: the module ``model.make_preprocessor_external()`` returned, when the
            model's conditioner was made external (``RadioModel`` stores its mean/std).

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ValueError: the model uses features layout B cannot represent (the message lists all of
            them), or its conditioner was made external and not passed.
    """

    from ..hf import mlp_ratio_for
    from .safetensors_export import _conditioner_state, write_repository

    blockers, droppable = transformers_export_blockers(model)
    if droppable and not drop_unsupported:
        blockers += [f"{d} (pass drop_unsupported=True to export without it)" for d in droppable]
    if blockers:
        raise ValueError("Cannot export this model to transformers.RadioModel, which cannot represent: "
                         + "; ".join(blockers) + ". Export the remote-code layout (safetensors) instead.")
    if droppable:
        _logger.warning("Exporting without: %s. transformers.RadioModel outputs only the raw backbone summary "
                        "and features.", ", ".join(droppable))
    spec = model.model.spec
    bb = model.model.state_dict()
    dim = spec.embed_dim
    pos = bb["patch_generator.pos_embed"]
    grid = int(round(pos.shape[1] ** 0.5))
    dtype = pos.dtype
    sd: Dict[str, torch.Tensor] = {}
    for key, value in bb.items():
        if not key.startswith(("patch_generator.embedder.", "patch_generator.pos_embed",
                               "patch_generator.cls_token.token", "blocks.")):
            continue
        if key.endswith((".ls1.gamma", ".ls2.gamma", ".ls1.grandma", ".ls2.grandma")):
            i = key.split(".")[-2][-1]
            key = key.rsplit(".", 2)[0] + f".layer_scale{i}.lambda1"
        sd["radio_model.model." + key] = value
    for j in range(spec.depth):  # transformers always has biases here: zero is exact
        for name, rows in (("attn.qkv.bias", 3 * dim if spec.qkv_bias else 0), ("attn.proj.bias", dim),
                           ("mlp.fc1.bias", spec.mlp_hidden), ("mlp.fc2.bias", dim)):
            key = f"radio_model.model.blocks.{j}.{name}"
            if rows and key not in sd:
                sd[key] = torch.zeros(rows, dtype=dtype)
    cond = _conditioner_state(model, input_conditioner)
    mean, std = cond["norm_mean"], cond["norm_std"]
    sd["radio_model.input_conditioner.norm_mean"] = mean
    sd["radio_model.input_conditioner.norm_std"] = std
    idxs = [int(i) for i in model.summary_idxs.tolist()]
    sd["radio_model.summary_idxs"] = torch.tensor(idxs, dtype=torch.int64)
    sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    config = {
        "model_type": "radio",
        "architectures": ["RadioModel"],
        "hidden_size": dim,
        "num_hidden_layers": spec.depth,
        "num_attention_heads": spec.num_heads,
        "mlp_ratio": mlp_ratio_for(dim, spec.mlp_hidden),
        "hidden_act": "gelu",
        "layer_norm_eps": _LN_EPS,
        "qkv_bias": bool(spec.qkv_bias),
        "use_swiglu_ffn": False,
        "layerscale_value": 1.0,
        "num_channels": 3,
        "patch_size": spec.patch_size,
        "image_size": spec.img_size[0],
        "max_img_size": grid * spec.patch_size,
        "num_cls_tokens": model.model.num_cls_tokens,
        "num_registers": model.model.num_registers,
        "summary_idxs": idxs,
        "norm_mean": mean.flatten().tolist(),
        "norm_std": std.flatten().tolist(),
        "video_temporal_patch_size": None,
        "attention_probs_dropout_prob": 0.0,
        "hidden_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
        "initializer_range": 0.02,
        "dtype": str(dtype).rsplit(".", 1)[-1],
    }
    return write_repository(out_dir, sd, config)


#: Relative-error limits of a parity check per backbone dtype (bf16/fp16 round every activation).
_TOLERANCES = {torch.float32: 1e-5, torch.float64: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def parity_tolerance(model: nn.Module) -> float:
    """The relative error a faithful export of ``model`` stays within: 1e-5 for a float32 backbone,
    2e-2 for bfloat16 (8 significant bits, ~4e-3 per rounding; measured 6e-3 to 8e-3 on tiny
    models), 5e-3 for float16.

    Args:
        model: the exported ``RADIOModel``.

    Returns:
        The limit for every entry of :func:`verify_transformers_export`'s result.
    """
    dtype = next(model.model.parameters()).dtype
    return _TOLERANCES.get(dtype, 2e-2)


def _backbone_reference(model: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """This package's raw backbone summary and features (normalizer and adaptors left out)."""
    out = model(x)
    if isinstance(out, dict):
        out = out["backbone"]
    summary, features = out.summary, out.features
    fn = model.feature_normalizer
    if not isinstance(fn, nn.Identity):  # undo nothing: recompute without the normalizer
        tokens = model.model(model.input_conditioner(x).to(next(model.model.parameters()).dtype))
        prefix = model.model.num_prefix_tokens
        features = tokens[:, prefix:]
    return summary, features


def verify_transformers_export(model: nn.Module, out_dir: PathLike,
                               sizes: Optional[Sequence[Tuple[int, int]]] = None) -> Dict[str, float]:
    """Relative errors of ``summary``/``features`` between ``model`` and ``RadioModel.from_pretrained(out_dir)``.

    Both get the same pixels: random values rounded to the dtype of the transformers model (which
    loads in the export's dtype, e.g. bfloat16), so only the arithmetic differs; compare the
    result with :func:`parity_tolerance`. A model whose conditioner was made external is compared
    with the transformers model's conditioner made external too (both get the same values).

    Args:
        model: the exported model.
        out_dir: the directory written by :func:`export_transformers`.
        sizes: input sizes ``(H, W)`` (default: the grid size, a square and a non-square size).

    Returns:
        ``{'summary@<H>x<W>': err, 'features@<H>x<W>': err, ...}`` (see :mod:`radio.export.parity`).
    """
    from transformers import RadioModel

    hf = RadioModel.from_pretrained(str(out_dir)).eval()
    if isinstance(model.input_conditioner, nn.Identity):
        hf.make_preprocessor_external()
    hf_dtype = next(hf.parameters()).dtype
    ps = model.patch_size
    if sizes is None:
        grid = int(round(model.model.patch_generator.pos_embed.shape[1] ** 0.5))
        sizes = [(grid * ps, grid * ps), (4 * ps, 6 * ps), ((grid + 2) * ps, 3 * ps)]
    errors: Dict[str, float] = {}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for h, w in sizes:
            x = torch.rand(2, 3, h, w, generator=g).to(hf_dtype)
            ref_summary, ref_features = _backbone_reference(model, x.float())
            got = hf(pixel_values=x)
            errors[parity_key("summary", h, w)] = relative_error(got.summary.to(ref_summary.dtype), ref_summary)
            errors[parity_key("features", h, w)] = relative_error(got.features.to(ref_features.dtype), ref_features)
    return errors
