"""Writers of tiny checkpoints in the official RADIO file format (test infrastructure).

An official RADIO checkpoint is a ``torch.save``'d plain dict with ``args`` (an
``argparse.Namespace`` holding the training configuration), ``state_dict`` (and optionally
``state_dict_ema``) and some training metadata (``arch``, ``epoch``). The layout written here
follows ``shared/spec/checkpoint-format.md`` (key names, spectral reparametrization, DAMP, EMA)
and ``shared/spec/adaptors.md`` (head layouts), so that the loader under test can be exercised on
every storage variant without network access.

Besides the file, :func:`make_checkpoint` returns the weights that an ideal loader must end up
with (float32, parametrizations realized, wrapper prefixes removed), grouped the same way as
``tests.reference.load_reference`` groups them. This module does not import the ``radio`` package.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

_logger = logging.getLogger(__name__)

# Value for ``extra_args`` entries: remove that field from ``args`` (old-style checkpoints).
DROP = object()

_SN_ALPHA = 0.05  # version-2 spectral reparametrization offset (checkpoint-format.md §6.3)


@dataclass(frozen=True)
class _Arch:
    """Architecture defaults of a model name (model.md §2.2)."""

    patch_size: int
    mlp_ratio: float = 4.0
    own: bool = False  # registered by the original (LayerScale parameter named 'grandma')
    init_values: Optional[float] = None  # built-in LayerScale
    reg_tokens: int = 0  # timm's own (unused under CPE) 'reg_token' parameter
    img_size: int = 224
    mlp_norm: bool = False
    dyt: bool = False


ARCHITECTURES: Dict[str, _Arch] = {
    # registered by the original
    'vit_tiny_patch14_224': _Arch(14, own=True),
    'vit_small_patch14_224': _Arch(14, own=True),
    'vit_base_patch14_224': _Arch(14, own=True),
    'vit_base_patch16_v2_224': _Arch(16, own=True, init_values=1e-5, reg_tokens=4, img_size=591),
    'vit_large_patch16_v2_224': _Arch(16, own=True, init_values=1e-5, reg_tokens=4, img_size=591),
    'vit_so400m_patch16_224': _Arch(16, 4304 / 1152, own=True),
    'vit_so400m_v2_patch16_224': _Arch(16, 4320 / 1152, own=True),
    'vit_huge_patch16_224': _Arch(16, own=True),
    'vit_huge_patch16_224_mlpnorm': _Arch(16, own=True, mlp_norm=True),
    'vit_giant_patch16_224': _Arch(16, own=True),
    'vit_bigG_patch14_224': _Arch(14, own=True, init_values=1e-6),
    'vit_large_dyt_patch16_224': _Arch(16, own=True, dyt=True),
    # timm built-ins
    'vit_base_patch16_224': _Arch(16),
    'vit_large_patch16_224': _Arch(16),
    'vit_huge_patch14_224': _Arch(14),
    'vit_giant_patch14_224': _Arch(14, 48 / 11),
    'vit_large_patch14_224': _Arch(14),
    'vit_small_patch16_224': _Arch(16),
    'vit_tiny_patch16_224': _Arch(16),
}

DEFAULT_TEACHERS: Tuple[Dict[str, Any], ...] = (
    {'name': 'clip', 'type': 'generic'},
    {'name': 'dino_v2', 'type': 'generic'},
    {'name': 'sam', 'type': 'generic', 'use_summary': False},
)


@dataclass
class WrittenCheckpoint:
    """What :func:`make_checkpoint` wrote and what a correct loader must produce from it.

    Attributes:
        path: file written, or ``None`` when no path was given.
        args: a deep copy of the ``args`` namespace stored in the file.
        realized: float32 weights after realization, grouped as
            ``{'backbone': {key: T}, 'conditioner': {'norm_mean', 'norm_std'},
            'heads': {teacher_name: {'summary': {key: T}, 'feature': {key: T}}},
            'feature_normalizer': {'mean', 'tx'} or None,
            'intermediate_normalizer': {'alphas', 'means', 'rotation'} or None}``.
            Backbone keys have no ``base_model.`` prefix and use plain ``weight`` names (no
            parametrizations); LayerScale keeps the name stored in the file. ``heads`` holds, for
            each unique teacher name, the heads of the first teacher with that name (the ones
            the loader must pick).
        checkpoint: the whole dict passed to ``torch.save``.
        raw_state_dict: the flat state dict that carries the real weights (``state_dict_ema``
            when ``ema=True``, else ``state_dict``), as stored (e.g. float16).
        num_cls_tokens: ``T`` (summary tokens) implied by ``args``.
        num_registers: ``R`` implied by ``args``.
        patch_size: CPE patch size.
        grid_size: side ``G`` of the position table.
    """

    path: Optional[str]
    args: argparse.Namespace
    realized: Dict[str, Any]
    checkpoint: Dict[str, Any]
    raw_state_dict: Dict[str, torch.Tensor]
    num_cls_tokens: int
    num_registers: int
    patch_size: int
    grid_size: int


# ----------------------------------------------------------------------------------------------
# Small helpers


def _patch_size_from_name(model: str) -> int:
    if model in ARCHITECTURES:
        return ARCHITECTURES[model].patch_size
    m = re.search(r'patch(\d+)', model)
    if m is None:
        raise ValueError(f'cannot infer the patch size of model {model!r}; pass patch_size=...')
    return int(m.group(1))


def token_counts(
    teachers: Sequence[Dict[str, Any]],
    cls_token_per_teacher: bool,
    register_multiple: Optional[int],
    cpe_num_registers: Optional[int],
) -> Tuple[int, int]:
    """``(T, R)``: summary tokens and registers implied by the args (model.md §3.6)."""
    t = len({tt['name'] for tt in teachers}) if cls_token_per_teacher else 1
    if cpe_num_registers:
        r = int(cpe_num_registers)
    elif register_multiple:
        r = register_multiple - (t % register_multiple)
    else:
        r = 0
    return t, r


class _Rng:
    """Deterministic random tensors (float32) with sensible scales."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, *shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g) * std + mean

    def uniform(self, *shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g) * (hi - lo) + lo

    def unit(self, n: int) -> torch.Tensor:
        z = self.normal(n)
        return z / z.norm()

    def linear(
        self, out_f: int, in_f: int, bias: bool = True, gain: float = 1.0
    ) -> Dict[str, torch.Tensor]:
        d = {'weight': self.normal(out_f, in_f, std=gain / math.sqrt(in_f))}
        if bias:
            d['bias'] = self.normal(out_f, std=0.05)
        return d

    def layer_norm(self, n: int) -> Dict[str, torch.Tensor]:
        return {'weight': self.normal(n, std=0.1, mean=1.0), 'bias': self.normal(n, std=0.05)}


def _put(dst: Dict[str, torch.Tensor], prefix: str, d: Dict[str, torch.Tensor]) -> None:
    for k, v in d.items():
        dst[f'{prefix}.{k}'] = v


def _spectral_realize(w: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, eps: float,
                      n_iter: int) -> torch.Tensor:
    """checkpoint-format.md §6.3 on float32 upcasts (the stored ``u`` is overwritten at step 1)."""
    w, v, scale = w.float(), v.float(), scale.float()
    u = None
    for _ in range(n_iter):
        u = F.normalize(torch.mv(w, v), dim=0, eps=eps)
        v = F.normalize(torch.mv(w.t(), u), dim=0, eps=eps)
    if u is None:
        raise ValueError('n_power_iterations must be >= 1 for this writer')
    sigma = torch.dot(u, torch.mv(w, v)) + eps
    s = F.softplus(scale) + _SN_ALPHA
    return w * (s / sigma)


def _spectral_cfg(value: Union[bool, Dict[str, Any]]) -> Tuple[float, int]:
    if isinstance(value, dict):
        return float(value.get('eps', 1e-12)), int(value.get('n_power_iterations', 1))
    return 1e-6, 1


def _store_linear_weights(params: Dict[str, torch.Tensor], linears: Dict[str, int], *,
                          storage_dtype: torch.dtype, rng: _Rng,
                          spectral: Optional[Tuple[float, int]], spectral_skip: Sequence[str] = (),
                          damp: bool = False, sn_version_value: int = 2,
                          ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Turn float32 ``params`` into (stored dict, realized float32 dict).

    ``linears`` maps each ``nn.Linear`` name to its chunk count (1 = plain form). With
    ``spectral``, those layers (except names containing an entry of ``spectral_skip``) are stored
    parametrized (§6.2); with ``damp``, every listed layer stores
    ``parametrizations.weight.original``.
    """
    stored: Dict[str, torch.Tensor] = {}
    realized: Dict[str, torch.Tensor] = {}
    for key, val in params.items():
        layer = key[:-len('.weight')] if key.endswith('.weight') else None
        if layer is None or layer not in linears:
            stored[key] = val.to(storage_dtype)
            realized[key] = stored[key].float()
            continue
        use_sn = spectral is not None and not any(s in layer for s in spectral_skip)
        if not use_sn and not damp:
            stored[key] = val.to(storage_dtype)
            realized[key] = stored[key].float()
            continue
        base = f'{layer}.parametrizations.weight'
        w = val.to(storage_dtype)
        stored[f'{base}.original'] = w
        if not use_sn:
            realized[key] = w.float()
            continue
        eps, n_iter = spectral
        k_parts = linears[layer]
        out_f, in_f = w.shape
        rows = out_f // k_parts
        chunks = []
        for k in range(k_parts):
            sub = f'{base}.0.parts.{k}' if k_parts > 1 else f'{base}.0'
            u = rng.unit(rows).to(storage_dtype)
            v = rng.unit(in_f).to(storage_dtype)
            scale = rng.uniform(1, 1, lo=-0.5, hi=1.0).to(storage_dtype)
            stored[f'{sub}._u'] = u
            stored[f'{sub}._v'] = v
            stored[f'{sub}.scale'] = scale
            stored[f'{sub}._sn_version'] = torch.tensor(sn_version_value, dtype=torch.int64)
            chunks.append(_spectral_realize(w[k * rows:(k + 1) * rows], v, scale, eps, n_iter))
        realized[key] = torch.cat(chunks, 0)
    return stored, realized


# ----------------------------------------------------------------------------------------------
# Parameter generation (float32, plain names)


def _backbone_params(rng: _Rng, *, arch: _Arch, ps: int, d: int, depth: int, num_heads: int,
                     hidden: int, grid: int, n_prefix: int, layerscale: Optional[str],
                     qk_norm: bool, final_norm: bool,
                     unused_keys: bool) -> Tuple[Dict[str, torch.Tensor], Dict[str, int]]:
    p: Dict[str, torch.Tensor] = {}
    linears: Dict[str, int] = {'patch_generator.embedder': 1}
    k_in = 3 * ps * ps
    p['patch_generator.embedder.weight'] = rng.normal(d, k_in, std=1.0 / math.sqrt(k_in))
    p['patch_generator.pos_embed'] = rng.normal(1, grid * grid, d, std=0.5)
    p['patch_generator.cls_token.token'] = rng.normal(n_prefix, d, std=1.0)
    hd = d // num_heads
    for j in range(depth):
        b = f'blocks.{j}'
        if arch.dyt:
            for n in ('norm1', 'norm2'):
                p[f'{b}.{n}.alpha'] = rng.normal(1, std=0.1, mean=0.9)
                p[f'{b}.{n}.gamma'] = rng.normal(d, std=0.1, mean=1.0)
                p[f'{b}.{n}.beta'] = rng.normal(d, std=0.05)
        else:
            _put(p, f'{b}.norm1', rng.layer_norm(d))
        _put(p, f'{b}.attn.qkv', rng.linear(3 * d, d))
        linears[f'{b}.attn.qkv'] = 3
        if qk_norm:
            _put(p, f'{b}.attn.q_norm', rng.layer_norm(hd))
            _put(p, f'{b}.attn.k_norm', rng.layer_norm(hd))
        _put(p, f'{b}.attn.proj', rng.linear(d, d))
        linears[f'{b}.attn.proj'] = 1
        if layerscale:
            p[f'{b}.ls1.{layerscale}'] = rng.normal(d, std=0.2, mean=0.6)
        if not arch.dyt:
            _put(p, f'{b}.norm2', rng.layer_norm(d))
        _put(p, f'{b}.mlp.fc1', rng.linear(hidden, d))
        linears[f'{b}.mlp.fc1'] = 1
        if arch.mlp_norm:
            _put(p, f'{b}.mlp.norm', rng.layer_norm(hidden))
        _put(p, f'{b}.mlp.fc2', rng.linear(d, hidden))
        linears[f'{b}.mlp.fc2'] = 1
        if layerscale:
            p[f'{b}.ls2.{layerscale}'] = rng.normal(d, std=0.2, mean=0.6)
    if final_norm:
        _put(p, 'norm', rng.layer_norm(d))
    if arch.reg_tokens:
        p['reg_token'] = rng.normal(1, arch.reg_tokens, d, std=1.0)
    if unused_keys:
        # Keys of the stock timm ViT that the CPE path never uses.
        p['cls_token'] = rng.normal(1, 1, d)
        p['pos_embed'] = rng.normal(1, 197, d)
        p['patch_embed.proj.weight'] = rng.normal(d, 3, ps, ps)
        p['patch_embed.proj.bias'] = rng.normal(d)
        p['head.weight'] = rng.normal(10, d)
        p['head.bias'] = rng.normal(10)
    return p, linears


def _head_params(rng: _Rng, variant: str, in_f: int, hidden: int, out_f: int,
                 inner: int) -> Tuple[Dict[str, torch.Tensor], Dict[str, int]]:
    p: Dict[str, torch.Tensor] = {}
    lin: Dict[str, int] = {}
    if variant == 'v1':
        _put(p, 'fc1', rng.linear(hidden, in_f))
        _put(p, 'norm', rng.layer_norm(hidden))
        _put(p, 'fc2', rng.linear(out_f, hidden))
        lin.update({'fc1': 1, 'fc2': 1})
    elif variant == 'v2':
        _put(p, 'fc1', rng.linear(hidden, in_f))
        lin['fc1'] = 1
        for k in range(inner):
            _put(p, f'blocks.{k}.0', rng.layer_norm(hidden))
            _put(p, f'blocks.{k}.2', rng.linear(hidden, hidden))
            lin[f'blocks.{k}.2'] = 1
        _put(p, 'final.0', rng.layer_norm(hidden))
        _put(p, 'final.2', rng.linear(out_f, hidden))
        lin['final.2'] = 1
    elif variant == 'attn':
        if in_f % 16:
            raise ValueError(
                f"an 'attn' head has 16 heads, so embed_dim={in_f} must be divisible by 16")
        for b in ('blocks.0', 'blocks.1'):
            _put(p, f'{b}.norm1', rng.layer_norm(in_f))
            p[f'{b}.attn.qkv.weight'] = rng.normal(3 * in_f, in_f, std=1.0 / math.sqrt(in_f))
            _put(p, f'{b}.attn.proj', rng.linear(in_f, in_f))
            p[f'{b}.ls1.gamma'] = rng.normal(in_f, std=0.2, mean=0.6)
            _put(p, f'{b}.norm2', rng.layer_norm(in_f))
            _put(p, f'{b}.mlp.fc1', rng.linear(4 * in_f, in_f))
            _put(p, f'{b}.mlp.fc2', rng.linear(in_f, 4 * in_f))
            p[f'{b}.ls2.gamma'] = rng.normal(in_f, std=0.2, mean=0.6)
            lin.update({f'{b}.attn.qkv': 3, f'{b}.attn.proj': 1,
                        f'{b}.mlp.fc1': 1, f'{b}.mlp.fc2': 1})
        _put(p, 'mlp.fc1', rng.linear(hidden, in_f))
        _put(p, 'mlp.final.0', rng.layer_norm(hidden))
        _put(p, 'mlp.final.2', rng.linear(out_f, hidden))
        lin.update({'mlp.fc1': 1, 'mlp.final.2': 1})
    else:
        raise ValueError(f"unknown head variant {variant!r}; use 'v1', 'v2' or 'attn'")
    return p, lin


# ----------------------------------------------------------------------------------------------
# The checkpoint writer


def make_checkpoint(
    path: Optional[Union[str, os.PathLike]] = None,
    *,
    model: str = 'vit_base_patch16_224',
    embed_dim: int = 32,
    depth: int = 2,
    num_heads: int = 2,
    patch_size: Optional[int] = None,
    mlp_ratio: Optional[float] = None,
    cpe_max_size: int = 64,
    teachers: Optional[Sequence[Dict[str, Any]]] = None,
    cls_token_per_teacher: bool = True,
    register_multiple: Optional[int] = 8,
    cpe_num_registers: Optional[int] = None,
    mlp_version: str = 'v2',
    spatial_mlp_version: Optional[str] = None,
    head_variants: Optional[Dict[str, Dict[str, Any]]] = None,
    head_hidden: int = 24,
    head_out: int = 16,
    head_inner_blocks: int = 1,
    fd_upsample_factor: Optional[int] = None,
    heads_keyed_by: Literal['index', 'name'] = 'index',
    layerscale: Optional[Literal['gamma', 'grandma']] = None,
    qk_norm: bool = False,
    model_norm: bool = False,
    write_final_norm: Optional[bool] = None,
    unused_keys: bool = False,
    feature_normalizer: bool = False,
    intermediate_normalizer: Optional[Literal['shared', 'per_layer']] = None,
    spectral_reparam: Union[bool, Dict[str, Any]] = False,
    spectral_heads: bool = False,
    sn_version_value: int = 2,
    damp: bool = False,
    ema: bool = False,
    storage_dtype: torch.dtype = torch.float16,
    args_dtype: Optional[torch.dtype] = None,
    extra_args: Optional[Dict[str, Any]] = None,
    seed: int = 0,
    prefix_wrappers: bool = False,
) -> WrittenCheckpoint:
    """Write (optionally) and describe a tiny random-weight checkpoint in the official format.

    Args:
        path: where to ``torch.save`` the checkpoint; ``None`` builds it in memory only.
        model: ``args.model`` (model.md §2.2). Architecture defaults (patch size, MLP ratio,
            built-in LayerScale, MLP norm, DyT, timm ``reg_token``) come from :data:`ARCHITECTURES`.
        embed_dim, depth, num_heads: go to ``args.model_kwargs``.
        patch_size, mlp_ratio: override the architecture defaults (the file then describes a
            shape the named architecture would not build; only for loader-robustness tests).
        cpe_max_size: ``args.cpe_max_size``; the table side is ``G = round(cpe_max_size / ps)``.
        teachers: ``args.teachers`` (default: clip, dino_v2, sam with ``use_summary=False``).
        cls_token_per_teacher, register_multiple, cpe_num_registers: token counting args.
        mlp_version, spatial_mlp_version: ``args`` defaults of the head variants.
        head_variants: per teacher name, overrides among ``mlp_version`` and
            ``spatial_mlp_version`` (written into that teacher's dict) and ``hidden``, ``out``,
            ``inner_blocks`` (head sizes).
        head_hidden, head_out, head_inner_blocks: default head sizes (``inner_blocks`` for v2).
        fd_upsample_factor: sets ``fd_upsample_factor`` on every teacher lacking one; the
            feature head then outputs ``u*u*out`` channels.
        heads_keyed_by: ``'index'`` writes ``_heads.<i>.`` for every teacher, ``'name'`` writes
            ``_heads.<name>.`` once per unique name.
        layerscale: LayerScale parameter name; ``None`` means the architecture default
            (``'grandma'`` for built-in LayerScale of the original's architectures, else none).
            When the architecture has no built-in LayerScale, ``init_values`` is added to
            ``model_kwargs``.
        qk_norm: per-head q/k LayerNorms (``model_kwargs['qk_norm'] = True``).
        model_norm: ``args.model_norm``.
        write_final_norm: write ``norm.*`` keys (default: ``model_norm``); writing them with
            ``model_norm=False`` checks that they are ignored.
        unused_keys: add stock-timm keys the CPE path never uses (``cls_token``, ``pos_embed``,
            ``patch_embed.*``, ``head.*``).
        feature_normalizer: add ``_feature_normalizer.mean/tx``.
        intermediate_normalizer: add ``_intermediate_feature_normalizer.*`` with a shared
            ``(D, D)`` or per-layer ``(L, D, D)`` rotation.
        spectral_reparam: ``args.spectral_reparam`` (``False``, ``True`` or a dict with ``eps`` /
            ``n_power_iterations``); truthy stores every backbone Linear except the patch embedder
            parametrized (qkv in chunked form).
        spectral_heads: store head Linear layers parametrized (eps 1e-6, one iteration).
        sn_version_value: value stored in ``_sn_version`` (never read back by the original).
        damp: ``args.damp = True`` and every backbone Linear stored as
            ``parametrizations.weight.original``.
        ema: put the realized plain weights into ``state_dict_ema`` and unrelated random weights
            (in the parametrized layout the args describe) into ``state_dict``.
        storage_dtype: dtype of the stored floating tensors (float16 like ``*_half`` files).
        args_dtype: ``args.dtype``; ``None`` leaves the field out (old-style args).
        extra_args: further ``args`` fields (override; the value :data:`DROP` removes a field).
        seed: random seed (deterministic output).
        prefix_wrappers: prepend ``module.`` to every non-backbone key.

    Returns:
        A :class:`WrittenCheckpoint`.
    """
    arch = ARCHITECTURES.get(model, _Arch(_patch_size_from_name(model)))
    ps = patch_size or arch.patch_size
    ratio = mlp_ratio if mlp_ratio is not None else arch.mlp_ratio
    hidden = int(embed_dim * ratio)
    if embed_dim % num_heads:
        raise ValueError(f'embed_dim={embed_dim} must be divisible by num_heads={num_heads}')
    teachers = [dict(t) for t in (teachers if teachers is not None else DEFAULT_TEACHERS)]
    for t in teachers:
        hv = (head_variants or {}).get(t['name'], {})
        for key in ('mlp_version', 'spatial_mlp_version'):
            if key in hv:
                t[key] = hv[key]
        if fd_upsample_factor is not None:
            t.setdefault('fd_upsample_factor', fd_upsample_factor)

    model_kwargs: Dict[str, Any] = {'depth': depth, 'embed_dim': embed_dim, 'num_heads': num_heads}
    ls_name = layerscale
    if arch.init_values is not None:
        ls_name = layerscale or 'grandma'
    elif layerscale is not None:
        model_kwargs['init_values'] = 1e-5
    if qk_norm:
        model_kwargs['qk_norm'] = True

    args = argparse.Namespace(
        model=model, model_kwargs=model_kwargs, pretrained=False, in_chans=None, input_size=None,
        num_classes=0, drop=0.0, drop_path=0.0, drop_block=None, gp=None, bn_momentum=None,
        bn_eps=None, torchscript=False, initial_checkpoint=None, cpe_max_size=cpe_max_size,
        cls_token_per_teacher=cls_token_per_teacher, teachers=teachers,
        register_multiple=register_multiple, cpe_num_registers=cpe_num_registers,
        model_norm=model_norm, mlp_version=mlp_version, spatial_mlp_version=spatial_mlp_version,
        spectral_reparam=spectral_reparam, spectral_heads=spectral_heads,
        damp=True if damp else None,
    )
    if args_dtype is not None:
        args.dtype = args_dtype
    for k, v in (extra_args or {}).items():
        if v is DROP:
            if hasattr(args, k):
                delattr(args, k)
        else:
            setattr(args, k, v)
    # Token counts and table size follow the final args (extra_args may change them).
    teachers = args.teachers
    t_count, r_count = token_counts(teachers, getattr(args, 'cls_token_per_teacher', True),
                                    getattr(args, 'register_multiple', None),
                                    getattr(args, 'cpe_num_registers', None))
    grid = round(args.cpe_max_size / ps)

    def build(rng: _Rng) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], Dict[str, Any]]:
        """One full weight set: (stored state dict, realized flat dict, groups of flat keys)."""
        spectral = _spectral_cfg(spectral_reparam) if spectral_reparam else None
        wrap = 'module.' if prefix_wrappers else ''
        sd: Dict[str, torch.Tensor] = {}
        real: Dict[str, torch.Tensor] = {}
        bb, lin = _backbone_params(
            rng, arch=arch, ps=ps, d=embed_dim, depth=depth, num_heads=num_heads, hidden=hidden,
            grid=grid, n_prefix=t_count + r_count, layerscale=ls_name, qk_norm=qk_norm,
            final_norm=model_norm if write_final_norm is None else write_final_norm,
            unused_keys=unused_keys)
        bb_st, bb_real = _store_linear_weights(
            bb, lin, storage_dtype=storage_dtype, rng=rng, spectral=spectral,
            spectral_skip=('patch_generator',), damp=damp, sn_version_value=sn_version_value)
        sd.update({f'base_model.{k}': v for k, v in bb_st.items()})
        real.update({f'base_model.{k}': v for k, v in bb_real.items()})
        groups: Dict[str, Any] = {
            'backbone': {k: f'base_model.{k}' for k in bb_real},
            'conditioner': {}, 'heads': {}, 'feature_normalizer': None,
            'intermediate_normalizer': None}

        def add_plain(group: Dict[str, str], prefix: str, tensors: Dict[str, torch.Tensor]) -> None:
            for k, v in tensors.items():
                full = f'{wrap}{prefix}.{k}'
                sd[full] = v.to(storage_dtype)
                real[full] = sd[full].float()
                group[k] = full

        mean = torch.tensor([0.45, 0.40, 0.35]) + rng.normal(3, std=0.02)
        std = torch.tensor([0.22, 0.25, 0.28]) + rng.normal(3, std=0.01).abs()
        add_plain(groups['conditioner'], 'input_conditioner',
                  {'norm_mean': mean.reshape(3, 1, 1), 'norm_std': std.reshape(3, 1, 1)})

        head_sn = (1e-6, 1) if spectral_heads else None
        seen = set()
        for i, t in enumerate(teachers):
            name = t['name']
            first = name not in seen
            seen.add(name)
            if heads_keyed_by == 'name' and not first:
                continue
            key = str(i) if heads_keyed_by == 'index' else name
            hv = (head_variants or {}).get(name, {})
            hid = hv.get('hidden', head_hidden)
            out = hv.get('out', head_out)
            inner = hv.get('inner_blocks', head_inner_blocks)
            u = int(t.get('fd_upsample_factor') or 1)
            sv = t.get('mlp_version', mlp_version)
            fv = t.get('spatial_mlp_version', spatial_mlp_version or mlp_version)
            entry: Dict[str, Dict[str, str]] = {}
            for kind, variant, prefix, o in (('summary', sv, '_heads', out),
                                             ('feature', fv, '_feature_projections', u * u * out)):
                hp, hlin = _head_params(rng, variant, embed_dim, hid, o, inner)
                h_st, h_real = _store_linear_weights(
                    hp, hlin, storage_dtype=storage_dtype, rng=rng, spectral=head_sn,
                    sn_version_value=sn_version_value)
                sd.update({f'{wrap}{prefix}.{key}.{k}': v for k, v in h_st.items()})
                real.update({f'{wrap}{prefix}.{key}.{k}': v for k, v in h_real.items()})
                entry[kind] = {k: f'{wrap}{prefix}.{key}.{k}' for k in h_real}
            if first:
                groups['heads'][name] = entry

        if feature_normalizer:
            groups['feature_normalizer'] = {}
            add_plain(groups['feature_normalizer'], '_feature_normalizer', {
                'mean': rng.normal(embed_dim, std=0.1),
                'tx': rng.normal(embed_dim, embed_dim, std=1.0 / math.sqrt(embed_dim))})
        if intermediate_normalizer is not None:
            if intermediate_normalizer not in ('shared', 'per_layer'):
                raise ValueError("intermediate_normalizer must be None, 'shared' or 'per_layer'")
            rot_shape = (embed_dim, embed_dim) if intermediate_normalizer == 'shared' else \
                (depth, embed_dim, embed_dim)
            groups['intermediate_normalizer'] = {}
            add_plain(groups['intermediate_normalizer'], '_intermediate_feature_normalizer', {
                'alphas': rng.uniform(depth, lo=0.5, hi=1.5),
                'rotation': rng.normal(*rot_shape, std=1.0 / math.sqrt(embed_dim)),
                'means': rng.normal(depth, embed_dim, std=0.1)})
        return sd, real, groups

    sd, real, groups = build(_Rng(seed))
    ckpt: Dict[str, Any] = {'arch': model, 'epoch': 0, 'args': args}
    if ema:
        junk, _, _ = build(_Rng(seed + 7919))
        raw = {k: v.to(storage_dtype) for k, v in real.items()}
        ckpt['state_dict'] = junk
        ckpt['state_dict_ema'] = raw
        source = {k: v.float() for k, v in raw.items()}
    else:
        ckpt['state_dict'] = sd
        raw = sd
        source = real
    realized = _map_groups(groups, source)
    if path is not None:
        torch.save(ckpt, os.fspath(path))
    return WrittenCheckpoint(
        path=os.fspath(path) if path is not None else None, args=copy.deepcopy(args),
        realized=realized, checkpoint=ckpt, raw_state_dict=raw, num_cls_tokens=t_count,
        num_registers=r_count, patch_size=ps, grid_size=grid)


def _map_groups(groups: Any, source: Dict[str, torch.Tensor]) -> Any:
    """Replace the flat-key leaves of ``groups`` with the tensors of ``source``."""
    if groups is None:
        return None
    if isinstance(groups, str):
        return source[groups]
    return {k: _map_groups(v, source) for k, v in groups.items()}


# ----------------------------------------------------------------------------------------------
# Broken / hostile files


class _Hostile:
    """Unpickling this object opens (creates) ``marker`` for writing."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        return open, (self.marker, 'w')


def write_hostile_checkpoint(path: Union[str, os.PathLike],
                             marker_file: Union[str, os.PathLike]) -> None:
    """Write an official-looking checkpoint whose full unpickling creates ``marker_file``.

    The payload is a ``builtins.open(marker_file, 'w')`` call hidden in the top-level dict next to
    valid ``args``/``state_dict`` entries. A safe (weights-only) loader must reject the file and the
    marker must not appear; a full ``pickle`` load creates it.
    """
    good = make_checkpoint(None, depth=1, embed_dim=16, num_heads=2)
    ckpt = dict(good.checkpoint)
    ckpt['payload'] = _Hostile(os.fspath(marker_file))
    torch.save(ckpt, os.fspath(path))


def write_truncated_checkpoint(src: Union[str, os.PathLike], dst: Union[str, os.PathLike],
                               fraction: float = 0.5) -> None:
    """Copy the first ``fraction`` of the bytes of ``src`` to ``dst`` (a corrupt archive)."""
    with open(src, 'rb') as f:
        data = f.read()
    with open(dst, 'wb') as f:
        f.write(data[:max(1, int(len(data) * fraction))])


def write_not_radio_checkpoint(path: Union[str, os.PathLike], *,
                               wrap_in_state_dict: bool = False) -> None:
    """Write a valid torch file that is not a RADIO checkpoint (no ``args``).

    By default it is a flat timm-like state dict (``torch.save(model.state_dict())``); with
    ``wrap_in_state_dict`` it is ``{'state_dict': {...}}`` without ``args``.
    """
    rng = _Rng(1)
    sd = {'patch_embed.proj.weight': rng.normal(16, 3, 16, 16), 'cls_token': rng.normal(1, 1, 16),
          'blocks.0.attn.qkv.weight': rng.normal(48, 16)}
    torch.save({'state_dict': sd} if wrap_in_state_dict else sd, os.fspath(path))


__all__: List[str] = [
    'ARCHITECTURES', 'DEFAULT_TEACHERS', 'DROP', 'WrittenCheckpoint', 'make_checkpoint',
    'token_counts', 'write_hostile_checkpoint', 'write_not_radio_checkpoint',
    'write_truncated_checkpoint',
]
