"""Reading Hugging Face model directories of RADIO, in both layouts, without running their code.

A directory (a Hub snapshot or a local copy) is translated into exactly what an official
``.pth.tar`` carries: an ``argparse.Namespace`` ``args`` and a state dict in the official key layout
(``base_model.*``, ``input_conditioner.*``, ``_heads.<name>.*``, ``_feature_projections.<name>.*``,
``_feature_normalizer.*``, ``_intermediate_feature_normalizer.*``). Everything downstream (the
shared weights stage, module assembly) is the one used for official files.

Layouts:

* **remote code** (layout A): ``config.json`` with the whole training ``args`` and
  ``adaptor_configs``; weights under ``radio_model.*``.
* **native** (layout B): ``transformers.RadioModel`` (``model_type: "radio"``) with the
  ``RadioConfig`` fields; weights under the remote-code names or the in-memory names
  (``embeddings.*``, ``encoder.layer.*``), LayerScale as ``layer_scale{1,2}.lambda1``.

Only ``config.json`` and ``*.safetensors`` are read: Python files in the directory are never
imported or executed and nothing is unpickled. Tensors are memory-mapped views of the safetensors files
(read by a small header parser here, so nothing is copied).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

import torch

from .args import summary_indices
from .checkpoint import CheckpointError

__all__ = ["HFMetadata", "HFRepository", "is_hf_directory", "read_hf_directory", "repo_id_from_path"]

_logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
PathLike = Union[str, Path]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_PICKLED = ("pytorch_model.bin", "*.bin", "*.pt", "*.pth", "*.pth.tar", "*.ckpt")

#: Layout-A prefixes (below ``radio_model.``) -> official ``.pth.tar`` prefixes.
_REMOTE_PREFIXES = (
    ("model.", "base_model."),
    ("input_conditioner.", "input_conditioner."),
    ("feature_normalizer.", "_feature_normalizer."),
    ("inter_feature_normalizer.", "_intermediate_feature_normalizer."),
)
_ADAPTOR_KEY = re.compile(r"^adaptors\.(?P<name>.+)\.(?P<part>head_mlp|feat_mlp)\.(?P<rest>.+)$")

#: Layout-B in-memory names -> on-disk (remote-code) names, applied in order.
_NATIVE_RENAMES = (
    (re.compile(r"^embeddings\.patch_projection\."), "radio_model.model.patch_generator.embedder."),
    (re.compile(r"^embeddings\.video_patch_projection\."), "radio_model.model.patch_generator.video_embedder."),
    (re.compile(r"^embeddings\.position_embedding$"), "radio_model.model.patch_generator.pos_embed"),
    (re.compile(r"^embeddings\.cls_register_token$"), "radio_model.model.patch_generator.cls_token.token"),
    (re.compile(r"^encoder\.layer\."), "radio_model.model.blocks."),
    (re.compile(r"^input_conditioner\."), "radio_model.input_conditioner."),
    (re.compile(r"^summary_idxs$"), "radio_model.summary_idxs"),
    (re.compile(r"\.attention\.o_proj\."), ".attn.proj."),
)
_QKV = re.compile(r"^(?P<block>radio_model\.model\.blocks\.\d+)\.attention\.(?P<which>[qkv])_proj\.(?P<what>weight|bias)$")
_LAYER_SCALE = re.compile(r"\.layer_scale(?P<i>[12])\.lambda1$")


@dataclass(frozen=True)
class HFMetadata:
    """Release metadata recorded by a repository.

    Attributes:
        version: the release name (a key of ``radio.versions.VERSIONS``) when known.
        patch_size: patch size in pixels, if recorded.
        max_resolution: largest supported side, if recorded.
        preferred_resolution: ``(height, width)``, if recorded.
        vitdet_window_size: ViTDet window size recorded in ``config.json`` (layout A), else ``None``.
        layout: ``'remote_code'`` or ``'native'``.
        adaptor_names: the adaptors ``config.json`` enables (layout A's non-null ``adaptor_names``,
            restricted to those ``adaptor_configs`` describes): the original's ``from_pretrained``
            builds exactly these when the caller names none. Empty otherwise (pushed repositories
            have ``null``).
    """

    version: Optional[str]
    patch_size: Optional[int]
    max_resolution: Optional[int]
    preferred_resolution: Optional[Tuple[int, int]]
    vitdet_window_size: Optional[int]
    layout: str
    adaptor_names: Tuple[str, ...] = ()


@dataclass
class HFRepository:
    """A RADIO Hugging Face directory translated to the official checkpoint form.

    Attributes:
        path: the directory.
        layout: ``'remote_code'`` (layout A) or ``'native'`` (layout B).
        config: the parsed ``config.json``.
        args: the training namespace as an official file carries it (dtypes as ``torch.dtype``;
            teachers' ``token_slot`` from ``adaptor_configs``; synthesized for layout B).
        state_dict: official key layout, memory-mapped tensors as stored (dtype unchanged).
        metadata: release metadata.
    """

    path: Path
    layout: Literal["remote_code", "native"]
    config: Dict[str, Any]
    args: argparse.Namespace
    state_dict: StateDict
    metadata: HFMetadata


# ----------------------------------------------------------------------------------------------
# Directory and files


def is_hf_directory(path: PathLike) -> bool:
    """Whether ``path`` is a directory with a ``config.json`` (a Hugging Face model directory).

    Whether it is a usable RADIO repository is decided by :func:`read_hf_directory`, which
    raises a clear error otherwise.
    """
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file()


def repo_id_from_path(path: PathLike) -> Optional[str]:
    """The Hub repository id of a huggingface_hub cache snapshot (``models--org--name/snapshots/<rev>``)."""
    for part in Path(path).resolve().parts[::-1]:
        if part.startswith("models--"):
            return "/".join(part[len("models--"):].split("--", 1))
    return None


def _fail(path: Path, problem: str, fix: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a usable RADIO Hugging Face directory: {problem}. {fix}")


def _read_config(path: Path) -> Dict[str, Any]:
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise _fail(path, f"it has no {CONFIG_NAME}",
                    "Pass a directory holding a RADIO repository's config.json and *.safetensors files "
                    "(e.g. a copy of nvidia/C-RADIOv4-H), or a .pth.tar file.")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(path, f"{CONFIG_NAME} is not valid JSON ({e})", "Download the repository again.") from None
    if not isinstance(config, dict):
        raise _fail(path, f"{CONFIG_NAME} holds a {type(config).__name__}, not an object",
                    "Download the repository again.")
    return config


def _weight_files(path: Path) -> List[Path]:
    index = path / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise _fail(path, f"{INDEX_NAME} is unreadable or has no 'weight_map' ({e!r})",
                        "Download the repository again.") from None
        names = sorted(set(weight_map.values()))
        files = [path / n for n in names]
        missing = [n for n, f in zip(names, files) if not f.is_file()]
        if missing:
            raise _fail(path, f"the shard(s) {', '.join(missing)} listed in {INDEX_NAME} are missing",
                        "Download the missing files (all *.safetensors of the repository).")
        return files
    single = path / WEIGHTS_NAME
    if single.is_file():
        return [single]
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickled = sorted({p.name for pattern in _PICKLED for p in path.glob(pattern)})
    if pickled:
        raise _fail(path, f"its weights are only in pickle files ({', '.join(pickled)}), which are refused "
                          "because unpickling can execute arbitrary code",
                    "Use the repository's model.safetensors (or convert the weights to safetensors), or load "
                    "an official .pth.tar file, which is read with the restricted weights-only unpickler.")
    raise _fail(path, f"it has no weights ({WEIGHTS_NAME}, {INDEX_NAME} or any *.safetensors)",
                "Download the repository's *.safetensors files into the directory.")


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
}


def _mmap_safetensors(file: Path) -> StateDict:
    """The tensors of one safetensors file, as views of a private memory map (nothing is read yet).

    The format is an 8-byte little-endian header length, a JSON header (``dtype``, ``shape``,
    ``data_offsets`` per tensor) and the raw little-endian data; no code and no pickles.
    """
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("file shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise ValueError(f"header length {n} beyond the end of the file")
        header = json.loads(f.read(n).decode("utf-8"))
    base = 8 + n
    storage = torch.UntypedStorage.from_file(str(file), shared=False, nbytes=size) if size > base else None
    out: StateDict = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"tensor {key!r} has the unsupported dtype {info['dtype']}")
        start, end = (int(v) for v in info["data_offsets"])
        shape = [int(v) for v in info["shape"]]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - start != math.prod(shape) * itemsize or base + end > size:
            raise ValueError(f"tensor {key!r} has inconsistent offsets {info['data_offsets']}")
        if start == end:
            out[key] = torch.empty(shape, dtype=dtype)
            continue
        offset = base + start
        if offset % itemsize == 0:
            t = torch.empty(0, dtype=dtype)
            t.set_(storage, offset // itemsize, shape)
        else:  # unaligned data cannot be viewed in place: copy it
            raw = torch.empty(0, dtype=torch.uint8)
            raw.set_(storage, offset, (end - start,))
            t = raw.clone().view(dtype).reshape(shape)
        out[key] = t
    return out


def _read_weights(path: Path) -> StateDict:
    """All tensors of the directory's safetensors file(s), memory-mapped."""
    out: StateDict = {}
    for file in _weight_files(path):
        try:
            tensors = _mmap_safetensors(file)
        except (ValueError, KeyError, TypeError, OSError, RuntimeError, UnicodeDecodeError) as e:
            raise _fail(path, f"{file.name} is not a readable safetensors file ({type(e).__name__}: {e})",
                        "Download the repository again.") from None
        for key, value in tensors.items():
            if key in out:
                raise _fail(path, f"the tensor {key!r} appears in more than one shard",
                            "Download the repository again.")
            out[key] = value
    return out


# ----------------------------------------------------------------------------------------------
# Shared rules


def _dtype(value: Any, what: str, path: Path) -> Any:
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        dt = getattr(torch, value.rsplit(".", 1)[-1], None)
        if isinstance(dt, torch.dtype):
            return dt
    raise _fail(path, f"{what}={value!r} is not a torch dtype name", "Use e.g. \"float32\" or \"bfloat16\".")


def _release(name: Optional[str], repo_id: Optional[str]) -> Any:
    from .versions import VERSIONS, version_for_hf_repo

    if name and name in VERSIONS:
        return VERSIONS[name]
    if name:
        _logger.info("config.json names version %r, which is not in the release table", name)
    return version_for_hf_repo(repo_id) if repo_id else None


def _resolution(value: Any) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value), int(value)
    h, w = value
    return int(h), int(w)


# ----------------------------------------------------------------------------------------------
# Layout A (remote code)


def _remote_state(path: Path, raw: Mapping[str, torch.Tensor], adaptor_names: List[str]) -> StateDict:
    out: StateDict = {}
    dropped: List[str] = []
    for key, value in raw.items():
        if not key.startswith("radio_model."):
            dropped.append(key)
            continue
        rest = key[len("radio_model."):]
        if rest == "summary_idxs":
            continue
        m = _ADAPTOR_KEY.match(rest)
        if m is not None:
            if m["name"] not in adaptor_names:
                dropped.append(key)
                continue
            group = "_heads" if m["part"] == "head_mlp" else "_feature_projections"
            out[f"{group}.{m['name']}.{m['rest']}"] = value
            continue
        for src, dst in _REMOTE_PREFIXES:
            if rest.startswith(src):
                out[dst + rest[len(src):]] = value
                break
        else:
            dropped.append(key)
    if not any(k.startswith("base_model.") for k in out):
        raise _fail(path, "its safetensors hold no 'radio_model.model.*' backbone weights",
                    "This is not a RADIO remote-code repository; download its model.safetensors again.")
    if dropped:
        _logger.warning("%s: ignoring %d tensor(s) outside the RADIO layout: %s", path, len(dropped),
                        ", ".join(dropped[:10]) + (" ..." if len(dropped) > 10 else ""))
    return out


def _check_head_sizes(path: Path, name: str, cfg: Mapping[str, Any], sd: Mapping[str, torch.Tensor]) -> None:
    """``adaptor_configs[name]`` sizes must agree with the stored head weights."""
    for part, group in (("summary", "_heads"), ("feature", "_feature_projections")):
        spec = cfg.get(part)
        if not isinstance(spec, Mapping):
            continue
        prefix = f"{group}.{name}."
        fc1 = sd.get(prefix + "fc1.weight", sd.get(prefix + "mlp.fc1.weight"))
        if fc1 is None:
            raise _fail(path, f"adaptor {name!r} has an adaptor_configs entry but no {part} head weights "
                              f"('radio_model.adaptors.{name}.{'head_mlp' if part == 'summary' else 'feat_mlp'}.*')",
                        "Download the repository's model.safetensors again.")
        found = {"hidden_dim": fc1.shape[0], "input_dim": fc1.shape[1]}
        for k, v in found.items():
            if k in spec and spec[k] is not None and int(spec[k]) != int(v):
                raise _fail(path, f"adaptor {name!r} {part} head: adaptor_configs says {k}={spec[k]} but the "
                                  f"weights have {v}", "The config.json and the weights do not belong together.")


def _enabled_adaptors(path: Path, value: Any, usable: List[str]) -> Tuple[str, ...]:
    """``config.json`` ``adaptor_names`` (``null``, a name or a list) as a tuple of usable names.

    Names without an ``adaptor_configs`` entry (matching a teacher of ``args``) are left out with a
    warning: they have no head sizes to build from.

    Raises:
        CheckpointError: the value is not ``null``, a name or a list of names.
    """
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _fail(path, f"config.json adaptor_names={value!r} is not null or a list of names",
                    "Set it to null or to a list of names of adaptor_configs.")
    unknown = [n for n in names if n not in usable]
    if unknown:
        _logger.warning("%s: config.json adaptor_names lists %s, which adaptor_configs does not describe (it "
                        "describes %s); left out", path, unknown, usable)
    return tuple(dict.fromkeys(n for n in names if n in usable))


def _read_remote_code(path: Path, config: Dict[str, Any], raw: StateDict,
                      repo_id: Optional[str]) -> HFRepository:
    args_dict = config["args"]
    if not isinstance(args_dict, dict) or "model" not in args_dict:
        raise _fail(path, "config.json 'args' is not the training namespace of a RADIO model (no 'model')",
                    "This is not a RADIO repository.")
    args = argparse.Namespace(**copy.deepcopy(args_dict))
    for field in ("dtype", "amp_dtype"):
        if hasattr(args, field):
            setattr(args, field, _dtype(getattr(args, field), f"args.{field}", path))
    teachers = [dict(t) for t in (getattr(args, "teachers", None) or ())]
    args.teachers = teachers
    names = [t.get("name") for t in teachers]

    adaptor_configs = config.get("adaptor_configs") or {}
    if not isinstance(adaptor_configs, dict):
        raise _fail(path, "adaptor_configs is not an object", "Download the repository again.")
    per_teacher = bool(getattr(args, "cls_token_per_teacher", True))
    usable: List[str] = []
    for name, acfg in adaptor_configs.items():
        if name not in names:
            _logger.warning("%s: adaptor %r of adaptor_configs is not a teacher of args.teachers %s; ignored",
                            path, name, names)
            continue
        usable.append(name)
        teacher = teachers[names.index(name)]
        slot = acfg.get("head_idx") if isinstance(acfg, Mapping) else None
        if per_teacher and slot is not None:
            if int(teacher.get("token_slot", names.index(name))) != int(slot):
                _logger.info("%s: adaptor %r reads token %s (adaptor_configs head_idx), args say %s", path, name,
                             slot, teacher.get("token_slot", names.index(name)))
            teacher["token_slot"] = int(slot)
        feature = acfg.get("feature") if isinstance(acfg, Mapping) else None
        factor = feature.get("upsample_factor") if isinstance(feature, Mapping) else None
        if factor is not None and int(factor) != int(teacher.get("fd_upsample_factor") or 1):
            teacher["fd_upsample_factor"] = int(factor)

    sd = _remote_state(path, raw, usable)
    for name in usable:
        _check_head_sizes(path, name, adaptor_configs[name], sd)

    stored = raw.get("radio_model.summary_idxs")
    if stored is not None:
        hub = list(summary_indices(args))
        if stored.tolist() != hub:
            from .eradio import is_eradio

            # E-RADIO's summary is the mean of the neck features: the indices have no effect there,
            # and every exported E-RADIO repository differs, so no warning.
            log = _logger.info if is_eradio(str(args.model)) else _logger.warning
            log("%s: the stored summary_idxs %s differ from the hub rule %s (remote-code defect); "
                "the hub rule is used", path, stored.tolist(), hub)
    release = _release(config.get("version"), repo_id)
    vitdet = config.get("vitdet_window_size")
    enabled = _enabled_adaptors(path, config.get("adaptor_names"), usable)
    metadata = HFMetadata(
        version=release.name if release is not None else None,
        patch_size=int(config["patch_size"]) if config.get("patch_size") is not None else
        (release.patch_size if release is not None else None),
        max_resolution=int(config["max_resolution"]) if config.get("max_resolution") is not None else
        (release.max_resolution if release is not None else None),
        preferred_resolution=_resolution(config.get("preferred_resolution")) or
        (tuple(release.preferred_resolution) if release is not None else None),
        vitdet_window_size=int(vitdet) if vitdet is not None else None,
        layout="remote_code",
        adaptor_names=enabled,
    )
    return HFRepository(path, "remote_code", config, args, sd, metadata)


# ----------------------------------------------------------------------------------------------
# Layout B (transformers-native)


def _native_disk_names(raw: Mapping[str, torch.Tensor]) -> StateDict:
    """In-memory names -> on-disk names (q/k/v re-concatenated into qkv)."""
    out: StateDict = {}
    qkv: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
    for key, value in raw.items():
        new = key
        for pattern, repl in _NATIVE_RENAMES:
            new = pattern.sub(repl, new)
        m = _QKV.match(new)
        if m is not None:
            qkv.setdefault((m["block"], m["what"]), {})[m["which"]] = value
            continue
        out[new] = value
    for (block, what), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{block}: attention {what} has only the {sorted(parts)} projections")
        out[f"{block}.attn.qkv.{what}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def mlp_ratio_for(embed_dim: int, hidden: int) -> float:
    """An ``mlp_ratio`` with ``int(embed_dim * ratio) == hidden`` (timm / transformers rounding)."""
    ratio = hidden / embed_dim
    if int(embed_dim * ratio) != hidden:
        ratio = (hidden + 0.5) / embed_dim
    return ratio


def _read_native(path: Path, config: Dict[str, Any], raw: StateDict, repo_id: Optional[str]) -> HFRepository:
    def get(name: str, default: Any) -> Any:
        value = config.get(name, default)
        return default if value is None else value

    blockers = []
    if get("hidden_act", "gelu") != "gelu":
        blockers.append(f"hidden_act={config['hidden_act']!r} (only exact 'gelu')")
    if get("use_swiglu_ffn", False):
        blockers.append("use_swiglu_ffn=true")
    if not math.isclose(float(get("layer_norm_eps", 1e-6)), 1e-6, rel_tol=1e-9):
        blockers.append(f"layer_norm_eps={config['layer_norm_eps']} (only 1e-6)")
    if int(get("num_channels", 3)) != 3:
        blockers.append(f"num_channels={config['num_channels']} (only 3)")
    if blockers:
        raise _fail(path, "its RadioConfig uses options this package does not build: " + "; ".join(blockers),
                    "Only the RADIO CPE ViT configuration is supported.")

    sd = _native_disk_names(raw)
    video = [k for k in sd if ".video_embedder." in k]
    for k in video:  # tubelet projection: not part of RADIO
        sd.pop(k)
    if video:
        _logger.info("%s: ignoring the video tubelet projection (not part of RADIO)", path)
    stored_idxs = sd.pop("radio_model.summary_idxs", None)

    prefix = "radio_model.model.patch_generator."
    for need in ("embedder.weight", "pos_embed", "cls_token.token"):
        if prefix + need not in sd:
            raise _fail(path, f"its safetensors lack the patch generator weight {prefix + need!r} "
                              "(or its in-memory name)", "Download the repository's model.safetensors again.")
    dim = int(get("hidden_size", 1280))
    ps = int(get("patch_size", 16))
    depth = int(get("num_hidden_layers", 32))
    heads = int(get("num_attention_heads", 16))
    t_count = int(get("num_cls_tokens", 3))
    r_count = int(get("num_registers", 7))
    pos = sd[prefix + "pos_embed"]
    grid = math.isqrt(pos.shape[1])
    if pos.ndim != 3 or grid * grid != pos.shape[1] or pos.shape[2] != dim:
        raise _fail(path, f"pos_embed has shape {tuple(pos.shape)}, not (1, G*G, {dim})",
                    "The config.json and the weights do not belong together.")
    if grid != int(get("max_img_size", 2048)) // ps:
        raise _fail(path, f"pos_embed holds a {grid}x{grid} grid but max_img_size // patch_size = "
                          f"{int(get('max_img_size', 2048)) // ps}", "The config.json and the weights do not match.")
    rows = sd[prefix + "cls_token.token"].shape[0]
    if rows != t_count + r_count:
        raise _fail(path, f"cls_token.token has {rows} rows but num_cls_tokens + num_registers = "
                          f"{t_count + r_count}", "The config.json and the weights do not match.")
    idxs = [int(i) for i in (config.get("summary_idxs") or [0, 1])]
    if stored_idxs is not None and stored_idxs.tolist() != idxs:
        # transformers loads the persistent buffer over the value the config initialized it with
        _logger.warning("%s: stored summary_idxs %s differ from config.json %s; using the stored buffer (as "
                        "transformers does)", path, stored_idxs.tolist(), idxs)
        idxs = [int(i) for i in stored_idxs.flatten().tolist()]
    if idxs != sorted(set(idxs)) or not idxs or idxs[-1] >= t_count or idxs[0] < 0:
        raise _fail(path, f"summary_idxs={idxs} is not an ascending selection of the {t_count} summary tokens",
                    "RADIO summaries concatenate distinct summary tokens in ascending order.")
    hidden = sd.get("radio_model.model.blocks.0.mlp.fc1.weight")
    hidden_dim = int(hidden.shape[0]) if hidden is not None else int(dim * float(get("mlp_ratio", 4.0)))

    out: StateDict = {}
    ls_present = any(_LAYER_SCALE.search(k) for k in sd)
    ls_value = float(get("layerscale_value", 1.0))
    for key, value in sd.items():
        if key.startswith("radio_model.model."):
            key = "base_model." + key[len("radio_model.model."):]
            key = _LAYER_SCALE.sub(lambda m: f".ls{m['i']}.gamma", key)
        elif key.startswith("radio_model.input_conditioner."):
            key = key[len("radio_model."):]
        else:
            _logger.warning("%s: ignoring tensor %r outside the RadioModel layout", path, key)
            continue
        out[key] = value
    layerscale = ls_present or ls_value != 1.0
    if layerscale:  # missing LayerScale vectors get the configured initial value, as transformers does
        for j in range(depth):
            for i in (1, 2):
                out.setdefault(f"base_model.blocks.{j}.ls{i}.gamma", torch.full((dim,), ls_value))
    for name, default in (("norm_mean", (0.48145466, 0.4578275, 0.40821073)),
                          ("norm_std", (0.26862954, 0.26130258, 0.27577711))):
        if f"input_conditioner.{name}" not in out:
            out[f"input_conditioner.{name}"] = torch.tensor([float(v) for v in get(name, default)]).reshape(3, 1, 1)

    model_kwargs: Dict[str, Any] = {
        "patch_size": ps, "embed_dim": dim, "depth": depth, "num_heads": heads,
        "mlp_ratio": mlp_ratio_for(dim, hidden_dim), "qkv_bias": bool(get("qkv_bias", True)),
    }
    if layerscale:
        model_kwargs["init_values"] = ls_value
    if grid * ps == 224:  # keep the CPE mode (timm img_size must differ from the table size)
        model_kwargs["img_size"] = (grid + 1) * ps
    teachers = [{"name": f"summary_{i}", "type": "generic", "use_summary": i in idxs, "token_slot": i}
                for i in range(t_count)]
    args = argparse.Namespace(
        model="vit_base_patch16_224", model_kwargs=model_kwargs, pretrained=False, in_chans=None,
        input_size=None, num_classes=0, drop=0.0, drop_path=0.0, drop_block=None, gp=None, bn_momentum=None,
        bn_eps=None, torchscript=False, initial_checkpoint=None, cpe_max_size=grid * ps,
        cls_token_per_teacher=True, teachers=teachers, register_multiple=None,
        cpe_num_registers=r_count or None, model_norm=False, mlp_version=None, spatial_mlp_version=None,
        spectral_reparam=False, spectral_heads=False, damp=None,
        dtype=_dtype(config.get("dtype") or config.get("torch_dtype") or "float32", "dtype", path),
    )
    release = _release(None, repo_id)
    metadata = HFMetadata(
        version=release.name if release is not None else None,
        patch_size=ps,
        max_resolution=release.max_resolution if release is not None else grid * ps,
        preferred_resolution=tuple(release.preferred_resolution) if release is not None else None,
        vitdet_window_size=None,
        layout="native",
    )
    return HFRepository(path, "native", config, args, out, metadata)


# ----------------------------------------------------------------------------------------------
# Entry point


def read_hf_directory(path: PathLike, repo_id: Optional[str] = None) -> HFRepository:
    """Read a RADIO Hugging Face model directory (either layout) into the official checkpoint form.

    Args:
        path: the directory (a Hub snapshot or a local copy).
        repo_id: the Hub repository id, if known (used for release metadata; inferred from a
            huggingface_hub cache path otherwise).

    Returns:
        An :class:`HFRepository` whose ``args``/``state_dict`` go through the same weights stage as
        an official ``.pth.tar``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: not a RADIO repository (no ``config.json``, neither layout, no weights,
            pickle-only weights, inconsistent config and weights); the message says what to do.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Hugging Face model directory not found: {path}")
    if not path.is_dir():
        raise _fail(path, "it is not a directory", "Pass the directory that holds config.json.")
    config = _read_config(path)
    if "args" in config:
        layout = "remote_code"
    elif config.get("model_type") == "radio":
        layout = "native"
    else:
        found = config.get("model_type") or ", ".join(sorted(config)[:8]) or "an empty object"
        raise _fail(path, f"its config.json is neither a RADIO remote-code config (no 'args') nor a "
                          f"transformers RadioConfig (model_type 'radio'); found {found}",
                    "Pass a RADIO repository such as nvidia/C-RADIOv4-H.")
    raw = _read_weights(path)
    repo_id = repo_id or repo_id_from_path(path)
    if layout == "remote_code":
        return _read_remote_code(path, config, raw, repo_id)
    return _read_native(path, config, raw, repo_id)
