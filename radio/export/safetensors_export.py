"""Export a loaded RADIO model as a Hugging Face remote-code repository without the code.

The directory holds ``config.json`` (the fields the original's exporter writes: the whole
``args``, ``adaptor_configs``, normalizer configs, release metadata) and ``model.safetensors``
with its ``radio_model.*`` keys (backbone in ``args.dtype``, parametrizations realized,
adaptors and normalizers included). It is a pickle-free copy of an official checkpoint: this
package (and the original's remote code) loads it back to the same outputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .parity import flatten_outputs, parity_key, relative_error

__all__ = ["export_safetensors", "export_safetensors_from", "args_to_json", "verify_safetensors_export",
           "write_repository"]

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: ``args`` attributes the original exporter removes.
_DROPPED_ARGS = ("enable-cudnn-attention", "device", "damp")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _json_value(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value).rsplit(".", 1)[-1]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, (torch.device, os.PathLike)):
        return str(value)
    if torch.is_tensor(value) and value.numel() == 1:
        return value.item()
    raise TypeError(f"cannot write the value {value!r} ({type(value).__name__}) to config.json")


def args_to_json(args: argparse.Namespace) -> Dict[str, Any]:
    """The ``args`` object of a remote-code ``config.json``.

    Dtypes become their names (``torch.bfloat16`` -> ``"bfloat16"``), attributes the original
    exporter deletes are left out, and the weights are realized, so ``spectral_reparam`` and
    ``spectral_heads`` are false. Non-identifier keys are dropped (the remote code needs
    identifiers); values that are not JSON data raise ``TypeError`` naming the field.
    """
    out: Dict[str, Any] = {}
    for key, value in sorted(vars(args).items()):
        if key in _DROPPED_ARGS or not _IDENT.match(key):
            if key not in _DROPPED_ARGS:
                _logger.info("args.%s is not an identifier; left out of config.json", key)
            continue
        try:
            out[key] = _json_value(value)
        except TypeError as e:
            raise TypeError(f"args.{key}: {e}") from None
    out["spectral_reparam"] = False
    out["spectral_heads"] = False
    model_kwargs = out.get("model_kwargs")
    if isinstance(model_kwargs, dict):
        model_kwargs.pop("weight_init", None)
    return out


def _head_sizes(sd: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, Any]:
    """adaptor_configs sizes of one head, from its weights."""
    fc1 = sd.get(prefix + "fc1.weight", sd.get(prefix + "mlp.fc1.weight"))
    last = None
    for name in ("final.2.weight", "fc2.weight", "mlp.final.2.weight"):
        if prefix + name in sd:
            last = sd[prefix + name]
            break
    if fc1 is None or last is None:
        raise ValueError(f"cannot infer the head sizes of {prefix!r}: no fc1/final weights")
    inner = 0
    while f"{prefix}blocks.{inner}.0.weight" in sd:
        inner += 1
    return {"input_dim": int(fc1.shape[1]), "hidden_dim": int(fc1.shape[0]), "output_dim": int(last.shape[0]),
            "num_inner": inner}


def _teacher(args: argparse.Namespace, name: str) -> Mapping[str, Any]:
    for t in getattr(args, "teachers", None) or ():
        if t.get("name") == name:
            return t
    return {}


#: Fallback release names for ``config.json`` ``version`` (hf-format.md §2.1: it must be a key of the
#: version table; the original's default is its default version).
_ERADIO_FALLBACK_VERSION = "e-radio_v2"

#: The remote-code classes a layout-A ``config.json`` points transformers at (hf-format.md §2.1).
_AUTO_MAP = {"AutoConfig": "hf_model.RADIOConfig", "AutoModel": "hf_model.RADIOModel"}
#: transformers version recorded when transformers is not installed (the one the spec was checked with).
_FALLBACK_TRANSFORMERS_VERSION = "5.24.0"


def _transformers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return _FALLBACK_TRANSFORMERS_VERSION


def _is_eradio(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return bool(getattr(config, "is_eradio", False))


def _release_fields(model: nn.Module, version: Optional[str]) -> Dict[str, Any]:
    """``version``, ``patch_size``, ``max_resolution``, ``preferred_resolution``: never null.

    The version is the one given, else the model's, else the default version (``e-radio_v2`` for
    E-RADIO). The sizes are the model's; where the model has none (a file loaded without a
    release), those of the version given, else for a ViT the position table's size (its square as
    the preferred resolution) and for E-RADIO the fallback release's values.

    Raises:
        ValueError: ``version`` is not a key of the version table.
    """
    from ..versions import DEFAULT_VERSION, VERSIONS

    if version is not None and version not in VERSIONS:
        raise ValueError(f"version={version!r} is not a release name; config.json needs one of "
                         f"{', '.join(VERSIONS)} (the original's config looks it up), or leave it out.")
    eradio = _is_eradio(model)
    record = VERSIONS.get(version or getattr(model, "version", None) or "")
    fallback = VERSIONS[_ERADIO_FALLBACK_VERSION if eradio else DEFAULT_VERSION]
    patch_size = int(model.patch_size)
    max_res = getattr(model, "max_resolution", None) or (record or fallback).max_resolution
    preferred = getattr(model, "preferred_resolution", None)
    if preferred is None and (record is not None or eradio):
        preferred = tuple((record or fallback).preferred_resolution)
    if preferred is None:  # the position table's square, on the model's resolution grid
        res = model.get_nearest_supported_resolution(int(max_res), int(max_res))
        preferred = (int(res[0]), int(res[1]))
    return {"version": (record or fallback).name, "patch_size": patch_size, "max_resolution": int(max_res),
            "preferred_resolution": [int(preferred[0]), int(preferred[1])]}


def _config(model: nn.Module, args: argparse.Namespace, sd: Mapping[str, torch.Tensor],
            version: Optional[str]) -> Dict[str, Any]:
    adaptor_configs: Dict[str, Any] = {}
    for name, adaptor in model.adaptors.items():
        summary = _head_sizes(sd, f"radio_model.adaptors.{name}.head_mlp.")
        feature = _head_sizes(sd, f"radio_model.adaptors.{name}.feat_mlp.")
        teacher = _teacher(args, name)
        feature["upsample_factor"] = int(getattr(adaptor, "upsample_factor", None) or 1)
        feature["upsample_rank"] = teacher.get("fd_upsample_rank")
        adaptor_configs[name] = {"summary": summary, "feature": feature, "head_idx": int(adaptor.head_idx)}
    feat = inter = None
    if "radio_model.feature_normalizer.mean" in sd:
        feat = {"embed_dim": int(sd["radio_model.feature_normalizer.mean"].shape[0])}
    if "radio_model.inter_feature_normalizer.means" in sd:
        means = sd["radio_model.inter_feature_normalizer.means"]
        rot = sd["radio_model.inter_feature_normalizer.rotation"]
        inter = {"num_intermediates": int(means.shape[0]), "embed_dim": int(means.shape[1]),
                 "rot_per_layer": rot.ndim == 3}
    return {
        "architectures": ["RADIOModel"],
        # The original's save_pretrained also writes hf_model.py and the modules it imports; this
        # exporter writes no code files, so loading with trust_remote_code needs those files copied
        # in from an official repository. This package (and its reader) needs none.
        "auto_map": dict(_AUTO_MAP),
        "args": args_to_json(args),
        **_release_fields(model, version),
        "adaptor_names": None,
        "adaptor_configs": adaptor_configs,
        "vitdet_window_size": None,
        "feature_normalizer_config": feat,
        "inter_feature_normalizer_config": inter,
        "dtype": str(next(model.model.parameters()).dtype).rsplit(".", 1)[-1],
        "transformers_version": _transformers_version(),
    }


#: Top-level parameters of a timm ``VisionTransformer`` that the hub model keeps (unused under CPE).
_TIMM_UNUSED = ("reg_token", "norm_pre", "fc_norm", "attn_pool")
_LAYER_SCALE = re.compile(r"^(?P<block>blocks\.\d+\.ls[12])\.gamma$")
#: The DINOv2 wrapper's own (unused) conditioner: ImageNet statistics.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _source_tensor(source: Mapping[str, torch.Tensor], key: str, shape: Sequence[int],
                   dtype: torch.dtype) -> Optional[torch.Tensor]:
    value = source.get(key)
    if value is None or tuple(value.shape) != tuple(shape):
        return None
    return value.detach().to("cpu", dtype if value.is_floating_point() else value.dtype).clone()


def _timm_unused_shapes(args: argparse.Namespace) -> Dict[str, Tuple[Tuple[int, ...], bool]]:
    """``{key: (shape, floating)}`` of the unused top-level parameters of the timm ViT ``args`` names.

    Built on the meta device exactly as the architecture is resolved when loading; empty when
    the architecture cannot be built here (the stored values are then all there is).
    """
    from ..architectures import UnsupportedArchitectureError, _meta_vit
    from ..args import _INIT_ONLY_KWARGS, _factory_kwargs

    kwargs = {k: v for k, v in _factory_kwargs(args).items() if v is not None}
    kwargs.update({k: v for k, v in dict(getattr(args, "model_kwargs", None) or {}).items()
                   if k not in _INIT_ONLY_KWARGS})
    kwargs.pop("scaled_ln", None)
    kwargs.pop("pretrained", None)
    try:
        vit = _meta_vit(str(args.model), kwargs)
    except (UnsupportedArchitectureError, TypeError, ValueError) as e:
        _logger.info("cannot list the unused parameters of %s (%s); only stored ones are exported", args.model, e)
        return {}
    return {k: (tuple(v.shape), v.is_floating_point()) for k, v in vit.state_dict().items()
            if k.split(".", 1)[0] in _TIMM_UNUSED}


def _hub_backbone(model: nn.Module, args: argparse.Namespace,
                  source: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The backbone's tensors under the hub model's own names (below ``model.``; hf-format.md §3).

    The inverse of the loader's renames (:mod:`radio.weights`): LayerScale is ``grandma`` for the
    original's own architectures (and the DINOv2 wrapper), ``gamma`` for timm's; the DINOv2 wrapper's
    keys live under ``inner.`` next to its unused ``inner.mask_token`` and ``input_conditioner.*``;
    unused timm parameters the hub model owns (``reg_token``, ...) are written with the stored value
    when ``source`` has it, else zeros. E-RADIO keys are the module's own.
    """
    from ..architectures import RADIO_ARCHITECTURES

    bb = {k[len("model."):]: v for k, v in model.state_dict().items() if k.startswith("model.")}
    if _is_eradio(model) or not bb:
        return bb
    cfg = model.config
    dtype = next(model.model.parameters()).dtype
    dinov2 = cfg.arch.family == "dinov2"
    if dinov2 or str(args.model) in RADIO_ARCHITECTURES:
        bb = {_LAYER_SCALE.sub(r"\g<block>.grandma", k): v for k, v in bb.items()}
    if dinov2:
        out = {"inner." + k: v for k, v in bb.items()}
        dim = int(cfg.arch.embed_dim)
        extra = {"inner.mask_token": ((1, dim), torch.zeros(1, dim)),
                 "input_conditioner.norm_mean": ((3, 1, 1), torch.tensor(_IMAGENET_MEAN).view(3, 1, 1)),
                 "input_conditioner.norm_std": ((3, 1, 1), torch.tensor(_IMAGENET_STD).view(3, 1, 1))}
        for key, (shape, default) in extra.items():
            stored = _source_tensor(source, "base_model." + key, shape, dtype)
            out[key] = stored if stored is not None else default.to(dtype)
        return out
    unused = _timm_unused_shapes(args)
    for key in source:  # stored unused parameters the meta model does not list (e.g. odd kwargs)
        if key.startswith("base_model.") and key[len("base_model."):].split(".", 1)[0] in _TIMM_UNUSED:
            unused.setdefault(key[len("base_model."):], (tuple(source[key].shape), source[key].is_floating_point()))
    for key, (shape, floating) in sorted(unused.items()):
        stored = _source_tensor(source, "base_model." + key, shape, dtype)
        if stored is None:
            _logger.info("%s is not in the source weights; exported as zeros (the hub model never uses it)", key)
            stored = torch.zeros(shape, dtype=dtype if floating else torch.int64)
        bb[key] = stored
    return bb


def _conditioner_state(model: nn.Module, input_conditioner: Optional[nn.Module]) -> Dict[str, torch.Tensor]:
    """``norm_mean`` / ``norm_std`` (float32 ``(3, 1, 1)``) of the model's conditioner.

    Raises:
        ValueError: the conditioner was made external and not passed back.
    """
    cond = input_conditioner if input_conditioner is not None else model.input_conditioner
    mean, std = getattr(cond, "norm_mean", None), getattr(cond, "norm_std", None)
    if mean is None or std is None:
        if input_conditioner is not None:
            raise ValueError(f"input_conditioner is a {type(input_conditioner).__name__} without norm_mean/norm_std; "
                             "pass the module model.make_preprocessor_external() returned.")
        raise ValueError("The model's input conditioner was made external (make_preprocessor_external()), so the "
                         "model no longer holds the mean/std the repository must store. Pass the module it "
                         "returned: export_*(model, ..., input_conditioner=conditioner), or export a model "
                         "loaded afresh.")
    return {"norm_mean": mean.detach().float().reshape(3, 1, 1).cpu().contiguous(),
            "norm_std": std.detach().float().reshape(3, 1, 1).cpu().contiguous()}


def _layout_a_state(model: nn.Module, args: argparse.Namespace,
                    source_state_dict: Optional[Mapping[str, torch.Tensor]] = None,
                    input_conditioner: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
    """``radio_model.*`` tensors: the hub model's state-dict names (hf-format.md §3)."""
    from ..weights import clean_prefixes

    source = clean_prefixes(source_state_dict) if source_state_dict else {}
    out: Dict[str, torch.Tensor] = {}
    for key, value in _hub_backbone(model, args, source).items():
        out["radio_model.model." + key] = value
    for key, value in _conditioner_state(model, input_conditioner).items():
        out["radio_model.input_conditioner." + key] = value
    for key, value in model.state_dict().items():
        if key.startswith("adaptors."):
            parts = key.split(".")
            # only the MLP heads; text towers are not part of the repository
            if len(parts) < 3 or parts[2] not in ("head_mlp", "feat_mlp"):
                continue
        elif not key.startswith(("feature_normalizer.", "inter_feature_normalizer.")):
            continue
        out["radio_model." + key] = value
    out = {k: v.detach().contiguous().cpu() for k, v in out.items()}
    out.update(_eradio_bias_buffers(model))
    out["radio_model.summary_idxs"] = model.summary_idxs.detach().to(torch.int64).cpu().contiguous()
    return out


def _relative_position_index(window: int) -> torch.Tensor:
    """``(w², w²)`` int64: ``(yq - yk + w - 1) * (2w - 1) + (xq - xk + w - 1)``."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return (dy * (2 * window - 1) + dx).contiguous()


def _eradio_bias_buffers(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The two E-RADIO position-bias buffers the original owns and this package derives.

    The original's position-bias module has three persistent buffers; this
    package keeps only ``relative_coords_table`` and derives ``relative_position_index`` and the
    bias cache. A layout-A repository has all three, so they are written here:
    the index table of the construction window ``p`` (int64 ``(p², p²)``) and, for
    ``relative_bias`` ``(1, heads, p², p²)``, the bias of the exported MLP weights at ``p`` (what
    the original's eval forward stores there), so that the original's deploy mode, which uses the
    stored buffer as is, is correct too. Empty for ViT models.
    """
    from ..eradio import PosEmbMLPSwinv2D

    backbone = getattr(model, "model", None)
    if backbone is None:
        return {}
    out: Dict[str, torch.Tensor] = {}
    for name, module in backbone.named_modules():
        if not isinstance(module, PosEmbMLPSwinv2D):
            continue
        p = int(module.pretrained_window)
        dtype = module.relative_coords_table.dtype
        with torch.no_grad():
            bias = module.compute_bias(p)
        out[f"radio_model.model.{name}.relative_position_index"] = _relative_position_index(p)
        out[f"radio_model.model.{name}.relative_bias"] = bias.detach().to(dtype).cpu().contiguous()
    return out


def export_safetensors(model: nn.Module, args: argparse.Namespace, out_dir: PathLike, *,
                       version: Optional[str] = None,
                       source_state_dict: Optional[Mapping[str, torch.Tensor]] = None,
                       input_conditioner: Optional[nn.Module] = None) -> Path:
    """Write ``model`` as a remote-code-layout directory without code.

    Args:
        model: a ``RADIOModel`` loaded with every adaptor to keep (e.g. all teacher names).
        args: the checkpoint's ``args`` (``radio_model(..., return_checkpoint=True)[1]['args']``).
        out_dir: directory to create or fill (``config.json``, ``model.safetensors``).
        version: release name for ``config.json`` (default: the model's own, else the default
            version, ``e-radio_v2`` for E-RADIO); must be a key of the version table.
        source_state_dict: the checkpoint's state dict in the official layout
            (``base_model.*`` ...), for the values of parameters the hub model owns but this
            package does not load (``reg_token``, the DINOv2 wrapper's ``mask_token``); without it
            they are written as zeros (no output depends on them).
        input_conditioner: the module ``model.make_preprocessor_external()`` returned, when the
            model's conditioner was made external (its mean/std are stored in the repository).

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ValueError: the model is in ViTDet mode (the layout records no windowing; load the export
            with ``vitdet_window_size`` instead), has no backbone weights, its conditioner was made
            external and not passed, or ``version`` is not a release name.
    """
    if getattr(model, "window_size", None):
        raise ValueError("The model was loaded with vitdet_window_size; export it without ViTDet (ViTDet is a "
                         "load-time option: pass vitdet_window_size when loading the exported directory).")
    sd = _layout_a_state(model, args, source_state_dict, input_conditioner)
    if not any(k.startswith("radio_model.model.") for k in sd):
        raise ValueError("The model has no backbone weights under 'model.'; is it a RADIOModel?")
    return write_repository(out_dir, sd, _config(model, args, sd, version))


def write_repository(out_dir: PathLike, state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> Path:
    """Write a Hugging Face model directory: ``model.safetensors`` and ``config.json`` (both layouts).

    Returns:
        ``out_dir`` as a ``Path`` (created if needed).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(dict(state), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _logger.info("Wrote %s (%d tensors)", out, len(state))
    return out


def _default_sizes(model: nn.Module) -> List[Tuple[int, int]]:
    """A square and a non-square size within the model's limits (supported sides, at most ``max_resolution``)."""
    step = int(model.min_resolution_step)
    cap = getattr(model, "max_resolution", None)
    cap = max((int(cap) // step) * step, step) if cap else None
    sizes: List[Tuple[int, int]] = []
    for h, w in ((4 * step, 4 * step), (3 * step, 5 * step)):
        res = model.get_nearest_supported_resolution(h, w)
        size = (int(res.height), int(res.width))
        if cap is not None:
            size = (min(size[0], cap), min(size[1], cap))
        if size not in sizes:
            sizes.append(size)
    return sizes


def verify_safetensors_export(model: nn.Module, out_dir: PathLike,
                              sizes: Optional[Sequence[Tuple[int, int]]] = None) -> Dict[str, float]:
    """Relative errors between ``model`` and the model read back from ``out_dir``, per output and size.

    Args:
        model: the exported ``RADIOModel`` (every adaptor it holds is compared).
        out_dir: the directory written by :func:`export_safetensors`.
        sizes: input sizes ``(H, W)`` (default: a square and a non-square size within the model's
            supported resolutions, at most its ``max_resolution``).

    A model whose conditioner was made external is compared with the read-back model's made
    external too (both get the same, already standardized, values).

    Returns:
        ``{'<output>@<H>x<W>': relative error}`` (see :mod:`radio.export.parity`).
    """
    from ..factory import radio_model

    names = list(model.adaptors)
    loaded = radio_model(str(out_dir), adaptor_names=names or None, progress=False)
    if isinstance(model.input_conditioner, nn.Identity):  # made external: feed both standardized inputs
        loaded.make_preprocessor_external()
    errors: Dict[str, float] = {}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for h, w in sizes or _default_sizes(model):
            x = torch.rand(2, 3, h, w, generator=g)
            ref, got = flatten_outputs(model(x), names), flatten_outputs(loaded(x), names)
            for key in ref:
                errors[parity_key(key, h, w)] = relative_error(got[key], ref[key])
    return errors


def export_safetensors_from(src: str, out_dir: PathLike, *, verify: bool = False,
                            sizes: Optional[Sequence[Tuple[int, int]]] = None,
                            progress: bool = True) -> Tuple[Path, Dict[str, float]]:
    """Load ``src`` with every adaptor and export it.

    The checkpoint's ``args`` are read first (without building a model) for the teacher names;
    the model is then built once, with all of them.

    Args:
        src: a release name, a Hugging Face repository id, a checkpoint file or a Hugging Face
            directory (as :func:`radio.radio_model`'s ``version``).
        out_dir: directory to create or fill.
        verify: read the export back and compare every output.
        sizes: the sizes of the check (default: see :func:`verify_safetensors_export`).
        progress: show download progress bars.

    Returns:
        ``(out_dir, errors)``; ``errors`` is empty unless ``verify``, else the relative errors of
        every output (backbone and adaptors) between the source and the re-loaded export.

    Raises:
        WeightsUnavailableError: the weights are neither cached nor downloadable.
        ValueError: an unknown name (``UnknownVersionError``) or a checkpoint that does not load.
    """
    from ..download import resolve_hf_repository, resolve_release
    from ..factory import radio_model, read_source
    from ..sources import resolve_source

    source = resolve_source(src)
    if source.path is not None:
        path = source.path
    elif source.repo_id is not None:
        path = resolve_hf_repository(source.repo_id, progress=progress)
    else:
        path = resolve_release(source.release, progress=progress)
    read = read_source(path, source.repo_id, ())
    teachers = getattr(read.args, "teachers", None) or ()
    names = list(dict.fromkeys(str(t["name"]) for t in teachers if isinstance(t, Mapping) and "name" in t))
    if source.repo_id is not None:  # the snapshot is cached now; the repository id keeps its metadata
        loaded = radio_model(source.repo_id, adaptor_names=names or None, progress=progress,
                             return_checkpoint=True)
    else:
        release = source.release.name if source.release is not None else ""
        loaded = radio_model(release, adaptor_names=names or None, progress=progress, return_checkpoint=True,
                             checkpoint_path=path)
    model, checkpoint = loaded
    path = export_safetensors(model, checkpoint["args"], out_dir, source_state_dict=read.state_dict)
    errors = verify_safetensors_export(model, path, sizes) if verify else {}
    return path, errors
