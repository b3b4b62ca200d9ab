"""Writers of tiny Hugging Face RADIO repositories in both layouts (test infrastructure).

Built independently of the package's exporters, from what ``tests/ckpt_writer.make_checkpoint``
says a correct loader must end up with (``WrittenCheckpoint.realized``), following
``shared/spec/hf-format.md``: layout A (remote code: ``config.json`` with ``args``, weights under
``radio_model.*``) and layout B (``transformers.RadioModel``: ``RadioConfig`` fields, on-disk or
in-memory names), and layout A of E-RADIO checkpoints (``tests/eradio_writer.make_eradio_checkpoint``).
Also: sharding, a planted Python file that must never run, pickle-only weights.
This module does not import the ``radio`` package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Literal, Optional, Sequence

import torch
from safetensors.torch import save_file

#: Marker file name written by the planted ``hf_model.py`` when it is imported or executed.
MARKER = "CODE_WAS_EXECUTED"


def _args_json(args: Any) -> Dict[str, Any]:
    out = {}
    for k, v in vars(args).items():
        if k in ("damp", "device", "enable-cudnn-attention"):
            continue
        if isinstance(v, torch.dtype):
            v = str(v).rsplit(".", 1)[-1]
        out[k] = v
    out["spectral_reparam"] = False
    out["spectral_heads"] = False
    return json.loads(json.dumps(out))


def _sizes(head: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    last = head.get("final.2.weight", head.get("fc2.weight"))
    inner = 0
    while f"blocks.{inner}.0.weight" in head:
        inner += 1
    return {"input_dim": head["fc1.weight"].shape[1], "hidden_dim": head["fc1.weight"].shape[0],
            "output_dim": last.shape[0], "num_inner": inner}


def _write_repo(out: Path, config: Dict[str, Any], sd: Dict[str, torch.Tensor], extra: Optional[Dict[str, Any]],
                plant_code: bool) -> Path:
    """``config.json`` (with ``extra`` fields on top) + ``model.safetensors``; optionally the planted code."""
    config.update(extra or {})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if plant_code:
        plant_python_files(out)
    return out


#: Backbone parameters the original's CPE installation and head removal take away (never in layout A).
_NOT_OWNED_BY_HUB = ("cls_token", "pos_embed", "patch_embed", "head")


def hub_backbone(written: Any) -> Dict[str, torch.Tensor]:
    """The hub model's backbone state dict (below ``radio_model.model.``) for a ViT ``WrittenCheckpoint``.

    hf-format.md §3: the realized weights under the hub model's own names: LayerScale ``grandma``
    for the architectures the original registers, ``gamma`` for timm's (whatever the file stored);
    ``norm.*`` only with ``model_norm``; unused parameters the hub model still owns (``reg_token``)
    kept; timm's ``cls_token``/``pos_embed``/``patch_embed``/``head`` (removed by CPE) left out.
    """
    from ckpt_writer import ARCHITECTURES

    args = written.args
    arch = ARCHITECTURES.get(args.model)
    ls = "grandma" if arch is not None and arch.own else "gamma"
    out: Dict[str, torch.Tensor] = {}
    for k, v in written.realized["backbone"].items():
        top = k.split(".", 1)[0]
        if top in _NOT_OWNED_BY_HUB or (top == "norm" and not getattr(args, "model_norm", False)):
            continue
        for old in ("gamma", "grandma"):
            for i in ("1", "2"):
                if k.endswith(f".ls{i}.{old}"):
                    k = k[: -len(old)] + ls
        out[k] = v
    return out


def write_remote_code_repo(written: Any, out_dir: os.PathLike, *, adaptors: Optional[Sequence[str]] = None,
                           version: Optional[str] = None, stored_summary_idxs: Optional[Sequence[int]] = None,
                           backbone_dtype: Optional[torch.dtype] = None, plant_code: bool = False,
                           extra: Optional[Dict[str, Any]] = None,
                           backbone: Optional[Dict[str, torch.Tensor]] = None) -> Path:
    """Layout A of a ``WrittenCheckpoint``: ``config.json`` + ``model.safetensors`` (float32 weights).

    Args:
        written: from ``make_checkpoint`` (a plain, i.e. non-parametrized, one is not required:
            the realized weights are written, as the original exporter does).
        adaptors: teacher names to include (default: every unique teacher name).
        version: the ``version`` field.
        stored_summary_idxs: value of ``radio_model.summary_idxs`` (default: remote-code rule).
        backbone_dtype: dtype of the backbone tensors (default: ``args.dtype`` or float32).
        plant_code: also write ``hf_model.py`` whose import writes :data:`MARKER`.
        extra: further ``config.json`` fields (override).
        backbone: the hub backbone state (below ``radio_model.model.``) to write instead of
            :func:`hub_backbone` (e.g. the DINOv2 wrapper's ``inner.*`` keys).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    args = written.args
    real = written.realized
    dtype = backbone_dtype or getattr(args, "dtype", torch.float32) or torch.float32
    sd: Dict[str, torch.Tensor] = {}
    for k, v in (backbone if backbone is not None else hub_backbone(written)).items():
        sd[f"radio_model.model.{k}"] = v.to(dtype) if v.is_floating_point() else v
    for k, v in real["conditioner"].items():
        sd[f"radio_model.input_conditioner.{k}"] = v.float()
    if real["feature_normalizer"]:
        for k, v in real["feature_normalizer"].items():
            sd[f"radio_model.feature_normalizer.{k}"] = v.to(dtype)
    if real["intermediate_normalizer"]:
        for k, v in real["intermediate_normalizer"].items():
            sd[f"radio_model.inter_feature_normalizer.{k}"] = v.to(dtype)
    names = list(adaptors) if adaptors is not None else list(real["heads"])
    teachers = list(args.teachers)
    per_teacher = getattr(args, "cls_token_per_teacher", True)
    adaptor_configs = {}
    for name in names:
        heads = real["heads"][name]
        for kind, part in (("summary", "head_mlp"), ("feature", "feat_mlp")):
            for k, v in heads[kind].items():
                sd[f"radio_model.adaptors.{name}.{part}.{k}"] = v.float()
        index = [t["name"] for t in teachers].index(name)
        teacher = teachers[index]
        feature = _sizes(heads["feature"])
        feature.update(upsample_factor=teacher.get("fd_upsample_factor") or 1,
                       upsample_rank=teacher.get("fd_upsample_rank"))
        adaptor_configs[name] = {"summary": _sizes(heads["summary"]), "feature": feature,
                                 "head_idx": teacher.get("token_slot", index) if per_teacher else 0}
    if stored_summary_idxs is None:  # the remote-code rule (hf-format.md §5.1)
        stored_summary_idxs = [i for i, t in enumerate(teachers) if t.get("use_summary", True)]
    sd["radio_model.summary_idxs"] = torch.tensor(list(stored_summary_idxs), dtype=torch.int64)
    feat_cfg = inter_cfg = None
    if real["feature_normalizer"]:
        feat_cfg = {"embed_dim": real["feature_normalizer"]["mean"].shape[0]}
    if real["intermediate_normalizer"]:
        inter = real["intermediate_normalizer"]
        inter_cfg = {"num_intermediates": inter["means"].shape[0], "embed_dim": inter["means"].shape[1],
                     "rot_per_layer": inter["rotation"].ndim == 3}
    config = {
        "adaptor_configs": adaptor_configs, "adaptor_names": None, "architectures": ["RADIOModel"],
        "args": _args_json(args),
        "auto_map": {"AutoConfig": "hf_model.RADIOConfig", "AutoModel": "hf_model.RADIOModel"},
        "dtype": "float32", "feature_normalizer_config": feat_cfg, "inter_feature_normalizer_config": inter_cfg,
        "max_resolution": 2048, "patch_size": written.patch_size, "preferred_resolution": [512, 512],
        "transformers_version": "5.24.0", "version": version or "c-radio_v4-h", "vitdet_window_size": None,
    }
    return _write_repo(out, config, sd, extra, plant_code)


def write_eradio_remote_code_repo(written: Any, out_dir: os.PathLike, *,
                                  adaptors: Optional[Sequence[str]] = None, version: Optional[str] = "e-radio_v2",
                                  backbone_dtype: Optional[torch.dtype] = None, plant_code: bool = False,
                                  extra: Optional[Dict[str, Any]] = None) -> Path:
    """Layout A of an E-RADIO ``WrittenERadioCheckpoint`` (``tests/eradio_writer.py``), hf-format.md §2-§3.

    The backbone keys are the checkpoint's own E-RADIO keys below ``radio_model.model.`` (BatchNorm
    buffers with ``num_batches_tracked``, the three position-bias buffers of every attention block,
    the stale ``relative_bias`` cache included), minus the raw timm ``norm.*``/``head.*`` keys, which
    the hub model does not own. Floating backbone tensors and the feature normalizer are in
    ``args.dtype`` (or ``backbone_dtype``); integer buffers keep their dtype; the conditioner and the
    adaptor heads are float32. ``adaptor_configs[name]['head_idx']`` is 0 (E-RADIO checkpoints have
    ``cls_token_per_teacher`` false); ``radio_model.summary_idxs`` holds the remote-code value (every
    ``use_summary`` teacher index), which a loader must ignore for E-RADIO (§5.1).

    Args:
        written: from ``make_eradio_checkpoint``.
        adaptors: teacher names to include (default: every unique teacher name).
        version: the ``version`` field (``e-radio_v2`` by default; its table metadata goes with it).
        backbone_dtype: dtype of the floating backbone tensors (default ``args.dtype``).
        plant_code: also write ``hf_model.py`` whose import writes :data:`MARKER`.
        extra: further ``config.json`` fields (override).

    Returns:
        The directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    args = written.args
    dtype = backbone_dtype or getattr(args, "dtype", torch.float32) or torch.float32
    sd: Dict[str, torch.Tensor] = {}
    for k, v in written.backbone.items():
        if k.startswith(("norm.", "head.")):
            continue
        sd[f"radio_model.model.{k}"] = v.to(dtype) if v.is_floating_point() else v
    for k, v in written.conditioner.items():
        sd[f"radio_model.input_conditioner.{k}"] = v.float()
    if written.feature_normalizer:
        for k, v in written.feature_normalizer.items():
            sd[f"radio_model.feature_normalizer.{k}"] = v.to(dtype)
    teachers = list(args.teachers)
    teacher_names = [t["name"] for t in teachers]
    names = list(adaptors) if adaptors is not None else list(dict.fromkeys(teacher_names))
    adaptor_configs = {}
    for name in names:
        index = teacher_names.index(name)
        heads = written.heads[index]
        for kind, part in (("summary", "head_mlp"), ("feature", "feat_mlp")):
            for k, v in heads[kind].items():
                sd[f"radio_model.adaptors.{name}.{part}.{k}"] = v.float()
        feature = _sizes(heads["feature"])
        feature.update(upsample_factor=teachers[index].get("fd_upsample_factor") or 1,
                       upsample_rank=teachers[index].get("fd_upsample_rank"))
        per_teacher = getattr(args, "cls_token_per_teacher", False)
        adaptor_configs[name] = {"summary": _sizes(heads["summary"]), "feature": feature,
                                 "head_idx": teachers[index].get("token_slot", index) if per_teacher else 0}
    idxs = [i for i, t in enumerate(teachers) if t.get("use_summary", True)]
    sd["radio_model.summary_idxs"] = torch.tensor(idxs, dtype=torch.int64)
    feat_cfg = None
    if written.feature_normalizer:
        feat_cfg = {"embed_dim": written.feature_normalizer["mean"].shape[0]}
    config = {
        "adaptor_configs": adaptor_configs, "adaptor_names": None, "architectures": ["RADIOModel"],
        "args": _args_json(args),
        "auto_map": {"AutoConfig": "hf_model.RADIOConfig", "AutoModel": "hf_model.RADIOModel"},
        "dtype": "float32", "feature_normalizer_config": feat_cfg, "inter_feature_normalizer_config": None,
        "max_resolution": 2048, "patch_size": 16, "preferred_resolution": [512, 512],
        "transformers_version": "5.24.0", "version": version, "vitdet_window_size": None,
    }
    return _write_repo(out, config, sd, extra, plant_code)


def write_native_repo(written: Any, out_dir: os.PathLike, *, names: Literal["disk", "memory"] = "disk",
                      num_heads: int = 2, dtype: str = "float32") -> Path:
    """Layout B of a plain CPE ViT ``WrittenCheckpoint`` (no final norm, adaptors or normalizers).

    ``names='disk'`` writes what ``RadioModel.save_pretrained`` writes, ``'memory'`` the module names.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    args = written.args
    bb = written.realized["backbone"]
    dim = bb["patch_generator.embedder.weight"].shape[0]
    depth = len({k.split(".")[1] for k in bb if k.startswith("blocks.")})
    teachers = args.teachers
    first: Dict[str, int] = {}
    for i, t in enumerate(teachers):
        if t.get("use_summary", True) and t["name"] not in first:
            first[t["name"]] = i
    idxs = sorted(first.values()) if getattr(args, "cls_token_per_teacher", True) else [0]
    sd: Dict[str, torch.Tensor] = {}
    for k, v in bb.items():
        if not k.startswith(("patch_generator.", "blocks.")):
            continue
        for old in ("ls1.gamma", "ls1.grandma", "ls2.gamma", "ls2.grandma"):
            if k.endswith(old):
                k = k[: -len(old)] + f"layer_scale{old[2]}.lambda1"
        sd[f"radio_model.model.{k}"] = v.float()
    for k, v in written.realized["conditioner"].items():
        sd[f"radio_model.input_conditioner.{k}"] = v.float()
    sd["radio_model.summary_idxs"] = torch.tensor(idxs)
    if names == "memory":
        mem: Dict[str, torch.Tensor] = {}
        for k, v in sd.items():
            k = (k.replace("radio_model.model.patch_generator.embedder.", "embeddings.patch_projection.")
                 .replace("radio_model.model.patch_generator.pos_embed", "embeddings.position_embedding")
                 .replace("radio_model.model.patch_generator.cls_token.token", "embeddings.cls_register_token")
                 .replace("radio_model.model.blocks.", "encoder.layer.")
                 .replace("radio_model.", "").replace(".attn.proj.", ".attention.o_proj."))
            if ".attn.qkv." in k:
                for part, chunk in zip("qkv", v.chunk(3, dim=0)):
                    mem[k.replace(".attn.qkv.", f".attention.{part}_proj.")] = chunk.contiguous()
            else:
                mem[k] = v
        sd = mem
    grid = written.grid_size
    ps = written.patch_size
    hidden = bb["blocks.0.mlp.fc1.weight"].shape[0]
    config = {
        "model_type": "radio", "architectures": ["RadioModel"], "hidden_size": dim, "num_hidden_layers": depth,
        "num_attention_heads": num_heads, "mlp_ratio": hidden / dim, "qkv_bias": "blocks.0.attn.qkv.bias" in bb,
        "patch_size": ps, "max_img_size": grid * ps, "num_cls_tokens": written.num_cls_tokens,
        "num_registers": written.num_registers, "summary_idxs": idxs, "layerscale_value": 1.0,
        "norm_mean": written.realized["conditioner"]["norm_mean"].flatten().tolist(),
        "norm_std": written.realized["conditioner"]["norm_std"].flatten().tolist(), "dtype": dtype,
    }
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def shard(repo: os.PathLike, num_shards: int = 2) -> None:
    """Split ``model.safetensors`` into ``model-0000i-of-0000n.safetensors`` plus the index."""
    from safetensors.torch import load_file

    repo = Path(repo)
    sd = load_file(str(repo / "model.safetensors"))
    keys = sorted(sd)
    weight_map = {}
    for i in range(num_shards):
        name = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[i::num_shards]}
        save_file(part, str(repo / name))
        weight_map.update({k: name for k in part})
    (repo / "model.safetensors").unlink()
    (repo / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def plant_python_files(repo: os.PathLike) -> Path:
    """Write ``hf_model.py`` (and ``__init__.py``) whose import or execution creates :data:`MARKER`."""
    repo = Path(repo)
    marker = repo / MARKER
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('executed')\n"
    (repo / "hf_model.py").write_text(code)
    (repo / "__init__.py").write_text(code)
    return marker
