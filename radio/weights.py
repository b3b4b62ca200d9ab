"""What was read -> one typed record of plain module weights (the weights stage of every load).

Like timm's ``checkpoint_filter_fn``, this module is the one place that turns a stored layout into our
modules' keys: wrapper prefixes, spectral reparametrization and DAMP (folded into plain weights),
LayerScale names, unused keys, dtypes. Its input is a :class:`radio.checkpoint.Checkpoint`-shaped
source (``args`` + a state dict in the official ``.pth.tar`` key layout); readers of other formats
(:mod:`radio.hf`) translate their layout into that form first, so nothing after this stage knows
where the weights came from.
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .checkpoint import CheckpointError
from .config import RadioConfig, TeacherConfig
from .eradio import filter_checkpoint_state_dict

__all__ = [
    "HeadWeights",
    "ModelWeights",
    "clean_prefixes",
    "drop_unused",
    "model_weights",
    "realize_parametrizations",
    "rename_layerscale",
    "spectral_settings",
    "split_prefix",
]

StateDict = Dict[str, torch.Tensor]

_SN_ALPHA = 0.05  # spectral reparametrization version 2: s = softplus(scale) + alpha

#: Backbone keys that the CPE forward never uses (timm's own embedding, tokens and head).
UNUSED_BACKBONE_KEYS = ("reg_token", "cls_token", "pos_embed", "patch_embed", "head", "fc_norm", "norm_pre",
                        "attn_pool", "input_conditioner", "mask_token", "register_tokens")
#: Top-level prefixes of a RADIO state dict; anything else is reported as unexpected.
KNOWN_PREFIXES = ("base_model.", "input_conditioner.", "_heads.", "_feature_projections.", "_feature_normalizer.",
                  "_intermediate_feature_normalizer.")


@dataclass(frozen=True)
class HeadWeights:
    """One adaptor's heads: ``summary`` (the ``_heads`` entry) and ``feature`` (``_feature_projections``),
    keys relative to the head, float32, parametrizations realized; ``teacher`` is the adaptor's teacher."""

    teacher: TeacherConfig
    summary: StateDict
    feature: StateDict


@dataclass(frozen=True)
class ModelWeights:
    """Plain weights per part, keyed as our modules name them, in their final dtype.

    Attributes:
        backbone: backbone keys (``patch_generator.*``, ``blocks.*``, ``norm.*``), ``config.dtype``.
        conditioner: ``norm_mean`` / ``norm_std``, float32.
        heads: adaptor name -> its heads (only the adaptors asked for).
        feature_normalizer: ``mean`` / ``tx`` in ``config.dtype``, or ``None``.
        intermediate_normalizer: ``alphas`` / ``means`` / ``rotation`` in ``config.dtype``, or ``None``.
    """

    backbone: StateDict
    conditioner: StateDict
    heads: Mapping[str, HeadWeights] = field(default_factory=dict)
    feature_normalizer: Optional[StateDict] = None
    intermediate_normalizer: Optional[StateDict] = None

    @property
    def intermediate_normalizer_shape(self) -> Optional[Tuple[int, bool]]:
        """``(num_layers, per_layer_rotation)`` of the intermediate normalizer, or ``None``.

        Raises:
            CheckpointError: the stored normalizer lacks ``means`` or ``rotation``.
        """
        isd = self.intermediate_normalizer
        if isd is None:
            return None
        if "means" not in isd or "rotation" not in isd:
            raise CheckpointError("the intermediate feature normalizer lacks 'means' or 'rotation'")
        return int(isd["means"].shape[0]), isd["rotation"].ndim == 3

    def state_dict(self) -> StateDict:
        """All parts under :class:`radio.model.RADIOModel`'s module names (``model.``, ``adaptors.<name>.`` ...)."""
        out: StateDict = {}
        parts = [("model.", self.backbone), ("input_conditioner.", self.conditioner),
                 ("feature_normalizer.", self.feature_normalizer or {}),
                 ("inter_feature_normalizer.", self.intermediate_normalizer or {})]
        for name, heads in self.heads.items():
            parts += [(f"adaptors.{name}.head_mlp.", heads.summary), (f"adaptors.{name}.feat_mlp.", heads.feature)]
        for prefix, sd in parts:
            out.update({prefix + k: v for k, v in sd.items()})
        return out


def _cast(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype) -> StateDict:
    """Floating tensors to ``dtype`` (no copy when already there); others unchanged."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}


def clean_prefixes(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Remove the ``_orig_mod.`` / ``module.`` wrapper prefixes (torch.compile, DDP) from keys."""
    out: StateDict = {}
    for k, v in state_dict.items():
        for prefix in ("_orig_mod.", "module.", "_orig_mod."):  # either nesting of compile and DDP (timm's order)
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def split_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """The entries whose key starts with ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def rename_layerscale(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Map the original's LayerScale name ``grandma`` to timm's ``gamma`` (``gamma`` wins if both exist)."""
    out = dict(state_dict)
    for k in list(out):
        if k.endswith(".grandma"):
            v = out.pop(k)
            out.setdefault(k[: -len("grandma")] + "gamma", v)
    return out


@dataclass(frozen=True)
class SpectralSettings:
    """Power-iteration settings of a spectral reparametrization."""

    eps: float
    n_power_iterations: int

    @classmethod
    def from_arg(cls, value: Any) -> "SpectralSettings":
        """``True`` means one iteration with eps 1e-6; a dict may give ``eps``/``n_power_iterations``."""
        if isinstance(value, Mapping):
            return cls(float(value.get("eps", 1e-12)), int(value.get("n_power_iterations", 1)))
        return cls(1e-6, 1)


def _realize_spectral(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                      settings: SpectralSettings, versioned: bool = True) -> torch.Tensor:
    """The plain weight of one spectrally reparametrized (chunk of a) matrix, in float32.

    One training-mode power-iteration step (or ``n``) from the stored ``u``, ``v``; then
    ``W * (s / sigma)`` with ``sigma = u . W v + eps`` and ``s = softplus(scale) + 0.05``.
    """
    w, u, v, scale = (t.float() for t in (w, u, v, scale))
    eps = settings.eps
    for _ in range(settings.n_power_iterations):
        u = F.normalize(torch.mv(w, v), dim=0, eps=eps)
        v = F.normalize(torch.mv(w.t(), u), dim=0, eps=eps)
    sigma = torch.dot(u, torch.mv(w, v)) + eps
    s = F.softplus(scale) + _SN_ALPHA if versioned else scale
    return w * (s / sigma)


_PARAM = ".parametrizations.weight."


def _chunk_count(layer: str) -> int:
    if layer.endswith("attn.qkv") or layer == "qkv":
        return 3
    if layer.endswith("mlp.w12") or layer == "w12":
        return 2
    return 1


def realize_parametrizations(
    state_dict: Mapping[str, torch.Tensor],
    spectral: Any = False,
    what: str = "backbone",
) -> StateDict:
    """Fold stored parametrizations (spectral reparametrization, DAMP) into plain ``weight`` keys.

    Args:
        state_dict: keys relative to the module (e.g. ``blocks.0.attn.qkv.parametrizations...``).
        spectral: the ``args.spectral_reparam`` value (truthiness switches it on) or, for heads,
            ``True`` (eps 1e-6, one iteration).
        what: name used in error messages.

    Returns:
        The new state dict (realized weights in float32, every other tensor untouched).

    Raises:
        CheckpointError: a layer has parametrization keys that cannot be realized (spectral entries
            without ``_sn_version``, or a chunk with partial entries).
    """
    layers: Dict[str, Dict[str, torch.Tensor]] = {}
    out: StateDict = {}
    for k, v in state_dict.items():
        if _PARAM in k:
            layer, rest = k.split(_PARAM, 1)
            layers.setdefault(layer, {})[rest] = v
        else:
            out[k] = v
    settings = SpectralSettings.from_arg(spectral)
    for layer, entries in layers.items():
        if "original" not in entries:
            raise CheckpointError(
                f"{what}: layer {layer!r} has parametrization entries but no "
                f"'{layer}{_PARAM}original'; the checkpoint is incomplete or corrupt."
            )
        w = entries["original"]
        spectral_keys = [k for k in entries if k.startswith("0.")]
        if not spectral_keys:  # DAMP (identity) alone: the stored original is the weight
            out[f"{layer}.weight"] = w
            continue
        if not spectral:
            raise CheckpointError(
                f"{what}: layer {layer!r} stores a spectral reparametrization but the checkpoint's "
                "args disable it (spectral_reparam / spectral_heads is falsy); refusing to guess."
            )
        if not any(k.endswith("_sn_version") for k in spectral_keys):
            # The original silently keeps a random weight here; we refuse instead.
            raise CheckpointError(
                f"{what}: layer {layer!r} has spectral parametrization keys without '_sn_version' "
                f"({', '.join(sorted(spectral_keys))}); the original would keep a random weight for "
                "it. The checkpoint is corrupt."
            )
        n_chunks = _chunk_count(layer)
        if n_chunks == 1 or "0.parts.0._u" not in entries:
            need = ("0._u", "0._v", "0.scale")
            lacking = [n for n in need if n not in entries]
            if lacking:
                raise CheckpointError(f"{what}: layer {layer!r} lacks spectral entries {lacking}.")
            out[f"{layer}.weight"] = _realize_spectral(w, entries["0._u"], entries["0._v"], entries["0.scale"],
                                                       settings)
            continue
        rows = w.shape[0] // n_chunks
        parts = []
        for c in range(n_chunks):
            chunk = w[c * rows:(c + 1) * rows]
            names = [f"0.parts.{c}.{n}" for n in ("_u", "_v", "scale", "_sn_version")]
            present = [n in entries for n in names]
            if not any(present):
                # A chunk that was not renormalized in training: keep its rows as stored.
                parts.append(chunk.float())
                continue
            if not all(present):
                raise CheckpointError(f"{what}: layer {layer!r} chunk {c} has partial spectral entries.")
            parts.append(_realize_spectral(chunk, entries[names[0]], entries[names[1]], entries[names[2]],
                                           settings))
        out[f"{layer}.weight"] = torch.cat(parts, dim=0)
    return out


def drop_unused(state_dict: Mapping[str, torch.Tensor], unused: Iterable[str]) -> StateDict:
    """Remove keys equal to, or below, any of the ``unused`` names."""
    names = tuple(unused)
    return {k: v for k, v in state_dict.items()
            if not any(k == n or k.startswith(n + ".") for n in names)}


def spectral_settings(args: argparse.Namespace, is_ema: bool) -> Tuple[Any, bool]:
    """``(spectral_reparam, spectral_heads)`` as stored weights need them.

    EMA weights are stored realized, so both are off for them whatever ``args`` says.
    """
    if is_ema:
        return False, False
    return getattr(args, "spectral_reparam", False), bool(getattr(args, "spectral_heads", False))


def _head_state(sd: Mapping[str, torch.Tensor], group: str, teacher: TeacherConfig) -> StateDict:
    """Keys of one teacher's head (``<group>.<index>.*`` or ``<group>.<name>.*``), relative to the head.

    Index- and name-keyed entries are merged in state-dict order (later keys win).
    """
    out: StateDict = {}
    for key, value in sd.items():
        for tag in (f"{group}.{teacher.index}", f"{group}.{teacher.name}"):
            if key.startswith(tag):
                rest = key[len(tag):]
                if rest.startswith("."):  # `_heads.1` must not take `_heads.10...`
                    out[rest[1:]] = value
    return out


def _backbone(raw: Mapping[str, torch.Tensor], cfg: RadioConfig, spectral: Any) -> StateDict:
    bb = split_prefix(raw, "base_model.")
    if cfg.is_eradio:
        # stale position-bias caches, constant index tables, final norm and classifier: derived or unused
        kept, _ = filter_checkpoint_state_dict(realize_parametrizations(bb, spectral, what="backbone"))
        return _cast(kept, cfg.dtype)
    if cfg.arch.family == "dinov2":
        bb = split_prefix(bb, "inner.")
    bb = rename_layerscale(realize_parametrizations(bb, spectral, what="backbone"))
    unused = list(UNUSED_BACKBONE_KEYS)
    if not cfg.final_norm:
        unused.append("norm")
    return _cast(drop_unused(bb, unused), cfg.dtype)


def _heads(sd: Mapping[str, torch.Tensor], teacher: TeacherConfig, spectral_heads: bool) -> HeadWeights:
    parts = []
    for group, what in (("_heads", "summary"), ("_feature_projections", "feature")):
        hsd = _head_state(sd, group, teacher)
        if not hsd:
            raise CheckpointError(
                f"adaptor {teacher.name!r}: the checkpoint has no {what} head weights "
                f"('{group}.{teacher.index}.*' or '{group}.{teacher.name}.*')."
            )
        hsd = realize_parametrizations(hsd, spectral_heads, what=f"adaptor {teacher.name!r} {what} head")
        parts.append(_cast(hsd, torch.float32))
    return HeadWeights(teacher, *parts)


def _conditioner(sd: Mapping[str, torch.Tensor]) -> StateDict:
    csd = split_prefix(sd, "input_conditioner.")
    missing = [k for k in ("norm_mean", "norm_std") if k not in csd]
    if missing:
        raise CheckpointError(f"The checkpoint lacks input_conditioner.{', input_conditioner.'.join(missing)}.")
    return {k: v.float().clone() for k, v in csd.items()}


def model_weights(args: Any, state_dict: Mapping[str, torch.Tensor], is_ema: bool, cfg: RadioConfig,
                  adaptor_names: Sequence[str] = ()) -> ModelWeights:
    """The weights stage: a state dict in the official layout -> :class:`ModelWeights`.

    Args:
        args: the stored training ``args`` (parametrization flags).
        state_dict: the chosen state dict, official key layout, as stored (maybe memory-mapped).
        is_ema: whether it is the EMA state dict (stored realized).
        cfg: the model configuration (dtype, family, final norm, teachers).
        adaptor_names: the adaptors whose heads to prepare.

    Raises:
        CheckpointError: weights that are missing or cannot be realized.
    """
    spectral, spectral_heads = spectral_settings(args, is_ema)
    # The backbone is read from the state dict *as stored*: the original never strips the
    # `module.` / `_orig_mod.` wrapper prefixes from `base_model.*` keys, so a file whose backbone
    # keys carry them has no usable backbone there either. Everything
    # else is looked up after the wrapper prefixes are removed. Do not unify the two.
    backbone = _backbone(state_dict, cfg, spectral)
    cleaned = clean_prefixes(state_dict)
    stray = sorted({k.split(".")[0] + "." for k in cleaned} - set(KNOWN_PREFIXES))
    if stray:
        warnings.warn(f"Ignoring checkpoint keys with unknown prefixes: {', '.join(stray)}", stacklevel=3)
    heads = {name: _heads(cleaned, cfg.teacher(name), spectral_heads) for name in adaptor_names}
    fsd = split_prefix(cleaned, "_feature_normalizer.")
    isd = split_prefix(cleaned, "_intermediate_feature_normalizer.")
    return ModelWeights(
        backbone=backbone,
        conditioner=_conditioner(cleaned),
        heads=heads,
        feature_normalizer=_cast(fsd, cfg.dtype) if fsd else None,
        intermediate_normalizer=_cast(isd, cfg.dtype) if isd else None,
    )
