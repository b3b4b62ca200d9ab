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

__all__ = ["export_safetensors", "export_safetensors_from", "args_to_json", "verify_safetensors_export"]

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
    preferred = getattr(model, "preferred_resolution", None)
    return {
        "architectures": ["RADIOModel"],
        "args": args_to_json(args),
        "version": version or getattr(model, "version", None),
        "patch_size": int(model.patch_size),
        "max_resolution": getattr(model, "max_resolution", None),
        "preferred_resolution": [int(preferred[0]), int(preferred[1])] if preferred is not None else None,
        "adaptor_names": None,
        "adaptor_configs": adaptor_configs,
        "vitdet_window_size": None,
        "feature_normalizer_config": feat,
        "inter_feature_normalizer_config": inter,
        "dtype": str(next(model.model.parameters()).dtype).rsplit(".", 1)[-1],
    }


def _layout_a_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``radio_model.*`` tensors from the built model's state dict."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("adaptors."):
            parts = key.split(".")
            # only the MLP heads; text towers are not part of the repository
            if len(parts) < 3 or parts[2] not in ("head_mlp", "feat_mlp"):
                continue
        elif not key.startswith(("model.", "input_conditioner.", "feature_normalizer.",
                                 "inter_feature_normalizer.")):
            continue
        out["radio_model." + key] = value.detach().contiguous().cpu()
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
                       version: Optional[str] = None) -> Path:
    """Write ``model`` as a remote-code-layout directory without code.

    Args:
        model: a ``RADIOModel`` loaded with every adaptor to keep (e.g. all teacher names).
        args: the checkpoint's ``args`` (``radio_model(..., return_checkpoint=True)[1]['args']``).
        out_dir: directory to create or fill (``config.json``, ``model.safetensors``).
        version: release name for ``config.json`` (default: the model's own).

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ValueError: the model is in ViTDet mode (the layout records no windowing; load the export
            with ``vitdet_window_size`` instead) or has no backbone weights.
    """
    from safetensors.torch import save_file

    if getattr(model, "window_size", None):
        raise ValueError("The model was loaded with vitdet_window_size; export it without ViTDet (ViTDet is a "
                         "load-time option: pass vitdet_window_size when loading the exported directory).")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = _layout_a_state(model)
    if not any(k.startswith("radio_model.model.") for k in sd):
        raise ValueError("The model has no backbone weights under 'model.'; is it a RADIOModel?")
    config = _config(model, args, sd, version)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _logger.info("Wrote %s (%d tensors)", out, len(sd))
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

    Returns:
        ``{'<output>@<H>x<W>': relative error}`` (see :mod:`radio.export.parity`).
    """
    from ..factory import radio_model

    names = list(model.adaptors)
    loaded = radio_model(str(out_dir), adaptor_names=names or None, progress=False)
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
    teachers = getattr(read_source(path, source.repo_id, ()).args, "teachers", None) or ()
    names = list(dict.fromkeys(str(t["name"]) for t in teachers if isinstance(t, Mapping) and "name" in t))
    if source.repo_id is not None:  # the snapshot is cached now; the repository id keeps its metadata
        loaded = radio_model(source.repo_id, adaptor_names=names or None, progress=progress,
                             return_checkpoint=True)
    else:
        release = source.release.name if source.release is not None else ""
        loaded = radio_model(release, adaptor_names=names or None, progress=progress, return_checkpoint=True,
                             checkpoint_path=path)
    model, checkpoint = loaded
    path = export_safetensors(model, checkpoint["args"], out_dir)
    errors = verify_safetensors_export(model, path, sizes) if verify else {}
    return path, errors
