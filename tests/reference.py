"""Independent functional reference of the RADIO inference path (test infrastructure).

A deliberately plain re-statement of ``shared/spec`` (model.md, adaptors.md, intermediates.md,
vitdet.md, checkpoint-format.md) written only with torch tensor ops: no timm, no ``nn.Module``,
nothing from the ``radio`` package. Every computation is spelled out (patchify by index layout,
attention head by head, exact GELU, LayerNorm from its definition, windows gathered by explicit
token indices) so that it can be read against the spec line by line. It favours obviousness over
speed and is meant for tiny checkpoints.

Weights are the grouped float32 dict produced by :func:`load_reference` (or returned as
``WrittenCheckpoint.realized`` by ``tests/ckpt_writer.py``)::

    {'backbone': {key: T}, 'conditioner': {'norm_mean', 'norm_std'},
     'heads': {teacher_name: {'summary': {key: T}, 'feature': {key: T}}},
     'feature_normalizer': {'mean', 'tx'} | None,
     'intermediate_normalizer': {'alphas', 'means', 'rotation'} | None}

dtype semantics (checkpoint-format.md §8): the backbone, the conditioner output and the
normalizers run in ``args.dtype``; each primitive (linear, LayerNorm, GELU, attention) is evaluated
in float32 and rounded to that dtype once, as torch's CPU kernels do; adaptors run in float32.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

_logger = logging.getLogger(__name__)

Weights = Dict[str, Any]


class RefOutput(NamedTuple):
    """``(summary, features)`` like the model's ``RadioOutput``."""

    summary: torch.Tensor
    features: torch.Tensor


class LoadedReference(NamedTuple):
    """Result of :func:`load_reference`: realized float32 weights and the (adjusted) args."""

    weights: Weights
    args: argparse.Namespace


# Default number of attention heads per architecture name (model.md §2.2), used when
# ``args.model_kwargs`` has no ``num_heads``. Width, depth, patch size and MLP width are read from
# the weight shapes instead.
_ARCH_HEADS = {
    'vit_tiny_patch14_224': 3, 'vit_small_patch14_224': 6, 'vit_base_patch14_224': 12,
    'vit_base_patch16_v2_224': 12, 'vit_large_patch16_v2_224': 16, 'vit_so400m_patch16_224': 16,
    'vit_so400m_v2_patch16_224': 16, 'vit_huge_patch16_224': 16, 'vit_huge_patch16_224_mlpnorm': 16,
    'vit_giant_patch16_224': 24, 'vit_bigG_patch14_224': 16, 'vit_large_dyt_patch16_224': 16,
    'vit_base_patch16_224': 12, 'vit_large_patch16_224': 16, 'vit_huge_patch14_224': 16,
    'vit_giant_patch14_224': 16, 'vit_large_patch14_224': 16, 'vit_small_patch16_224': 6,
    'vit_tiny_patch16_224': 3,
}
_ARCH_IMG_SIZE = {'vit_base_patch16_v2_224': 591, 'vit_large_patch16_v2_224': 591}

def _single_threaded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` with one intra-op thread (restored afterwards).

    The reference's many tiny matmuls are several times slower with a thread pool, in
    particular on a loaded CI machine; results agree to float32 rounding either way.
    """
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        old = torch.get_num_threads()
        with contextlib.ExitStack() as stack:
            if old != 1:
                torch.set_num_threads(1)
                stack.callback(torch.set_num_threads, old)
            return fn(*args, **kwargs)
    return wrapper


_BACKBONE_LN_EPS = 1e-6
_HEAD_LN_EPS = 1e-5
_ATTN_HEAD_LN_EPS = 1e-6  # timm >= 1.0.16 (adaptors.md §3.3)
_ATTN_HEAD_NUM_HEADS = 16
_SN_ALPHA = 0.05


# ==============================================================================================
# Loading an official file and realizing the stored parametrizations


def spectral_weight(w: torch.Tensor, u: Optional[torch.Tensor], v: torch.Tensor,
                    scale: torch.Tensor, eps: float, n_iter: int, version: int = 2) -> torch.Tensor:
    """Realize one spectrally reparametrized (chunk of a) weight, checkpoint-format.md §6.3.

    Power iteration from the stored ``u``/``v`` (``u`` first, then ``v`` with the new ``u``),
    ``sigma = u . (W v) + eps``, ``s = softplus(scale) + 0.05`` (version 2) or ``scale``
    (version 1), result ``W * (s / sigma)`` with the ratio formed first. All in float32.
    """
    w = w.float()
    u = u.float() if u is not None else None
    v = v.float()
    for _ in range(n_iter):
        wv = w @ v
        u = wv / wv.norm().clamp_min(eps)
        wtu = w.t() @ u
        v = wtu / wtu.norm().clamp_min(eps)
    if u is None:
        raise ValueError('spectral realization needs a stored _u when n_power_iterations is 0')
    sigma = torch.dot(u, w @ v) + eps
    s = F.softplus(scale.float()) + _SN_ALPHA if version == 2 else scale.float()
    ratio = s / sigma
    return w * ratio


def realize_parametrizations(flat: Dict[str, torch.Tensor],
                             spectral: Optional[Tuple[float, int]]) -> Dict[str, torch.Tensor]:
    """Fold ``<layer>.parametrizations.weight.*`` entries into ``<layer>.weight`` (float32).

    ``spectral`` is ``(eps, n_iter)`` when spectral entries are allowed. A layer with spectral
    entries (``_sn_version`` present) is realized per §6.3 (chunked for ``qkv``/``w12``, a missing
    chunk keeps its ``original`` rows); a layer with only ``original`` is the DAMP identity (§7).
    Parametrization entries without ``_sn_version`` are a corrupt file (ValueError).
    """
    marker = '.parametrizations.weight.'
    out: Dict[str, torch.Tensor] = {}
    layers: Dict[str, Dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        if marker in k:
            layer, rest = k.split(marker, 1)
            layers.setdefault(layer, {})[rest] = v
        else:
            out[k] = v.float()
    for layer, entries in layers.items():
        if 'original' not in entries:
            raise ValueError(f'{layer}: parametrization entries without "original"')
        w = entries['original'].float()
        sn = {k[2:]: v for k, v in entries.items() if k.startswith('0.')}
        if not sn:
            out[f'{layer}.weight'] = w
            continue
        if not any(k.endswith('_sn_version') for k in sn):
            raise ValueError(
                f'{layer}: parametrization entries {sorted(sn)} lack _sn_version (corrupt file)')
        if spectral is None:
            raise ValueError(
                f'{layer} is stored spectrally reparametrized but the args say it is not')
        eps, n_iter = spectral
        if any(k.startswith('parts.') for k in sn):
            if layer.endswith('qkv'):
                n_parts = 3
            elif layer.endswith('w12'):
                n_parts = 2
            else:
                n_parts = 1 + max(int(k.split('.')[1]) for k in sn if k.startswith('parts.'))
            rows = w.shape[0] // n_parts
            chunks = []
            for p in range(n_parts):
                wp = w[p * rows:(p + 1) * rows]
                pre = f'parts.{p}.'
                if f'{pre}_v' not in sn:
                    chunks.append(wp)  # not renormalized in training: identity
                    continue
                version = 2 if f'{pre}_sn_version' in sn else 1
                chunks.append(spectral_weight(wp, sn.get(f'{pre}_u'), sn[f'{pre}_v'],
                                              sn[f'{pre}scale'], eps, n_iter, version))
            out[f'{layer}.weight'] = torch.cat(chunks, 0)
        else:
            out[f'{layer}.weight'] = spectral_weight(w, sn.get('_u'), sn['_v'], sn['scale'],
                                                     eps, n_iter, 2)
    return out


def _spectral_args(value: Any) -> Optional[Tuple[float, int]]:
    if not value:
        return None
    if isinstance(value, dict):
        return float(value.get('eps', 1e-12)), int(value.get('n_power_iterations', 1))
    return 1e-6, 1


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in ('module.', '_orig_mod.'):
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def realize_checkpoint(ckpt: Dict[str, Any]) -> LoadedReference:
    """Turn an unpickled official checkpoint dict into grouped float32 weights + args.

    EMA wins and forces the reparametrization flags off (§2); backbone keys are the
    ``base_model.`` ones taken before wrapper cleaning (§4); heads of each unique teacher name are
    those of the first teacher with that name, keyed by index or name (adaptors.md §1).
    """
    if not isinstance(ckpt, dict) or 'args' not in ckpt:
        raise ValueError('not a RADIO checkpoint: no "args" entry')
    args = copy.deepcopy(ckpt['args'])
    if 'state_dict_ema' in ckpt:
        sd = ckpt['state_dict_ema']
        args.spectral_reparam = False
        args.spectral_heads = False
        args.damp = None
    else:
        sd = ckpt['state_dict']
    backbone = {k[len('base_model.'):]: v for k, v in sd.items() if k.startswith('base_model.')}
    backbone = realize_parametrizations(backbone, _spectral_args(args.spectral_reparam))
    clean = {_strip_wrappers(k): v for k, v in sd.items()}

    def group(prefix: str) -> Dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in clean.items() if k.startswith(prefix)}

    cond = group('input_conditioner.')
    if set(cond) != {'norm_mean', 'norm_std'}:
        raise ValueError(f'input_conditioner keys {sorted(cond)} != [norm_mean, norm_std]')
    weights: Weights = {
        'backbone': backbone,
        'conditioner': {k: v.float() for k, v in cond.items()},
        'heads': {},
        'feature_normalizer': None,
        'intermediate_normalizer': None,
    }
    head_sn = (1e-6, 1) if getattr(args, 'spectral_heads', False) else None
    seen = set()
    for tidx, t in enumerate(args.teachers):
        name = t['name']
        if name in seen:
            continue
        seen.add(name)
        summ = {**group(f'_heads.{tidx}.'), **group(f'_heads.{name}.')}
        feat = {**group(f'_feature_projections.{tidx}.'), **group(f'_feature_projections.{name}.')}
        if summ or feat:
            weights['heads'][name] = {'summary': realize_parametrizations(summ, head_sn),
                                      'feature': realize_parametrizations(feat, head_sn)}
    fn = group('_feature_normalizer.')
    if fn:
        weights['feature_normalizer'] = {k: v.float() for k, v in fn.items()}
    inf = group('_intermediate_feature_normalizer.')
    if inf:
        weights['intermediate_normalizer'] = {k: v.float() for k, v in inf.items()}
    return LoadedReference(weights, args)


def load_reference(path: str) -> LoadedReference:
    """Load an official-format file safely (weights only, ``argparse.Namespace`` allow-listed)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    return realize_checkpoint(ckpt)


# ==============================================================================================
# Configuration derived from args + weight shapes


def token_counts(args: argparse.Namespace) -> Tuple[int, int]:
    """``(T, R)``: summary tokens and registers (model.md §3.6)."""
    if getattr(args, 'cls_token_per_teacher', True):
        t = len({tt['name'] for tt in args.teachers})
    else:
        t = 1
    n_reg = getattr(args, 'cpe_num_registers', None)
    mult = getattr(args, 'register_multiple', None)
    if n_reg:
        r = int(n_reg)
    elif mult:
        r = mult - (t % mult)
    else:
        r = 0
    return t, r


def summary_indices(args: argparse.Namespace) -> List[int]:
    """``summary_idxs`` (model.md §6.2): first index of each name with ``use_summary``."""
    if not getattr(args, 'cls_token_per_teacher', True):
        return [0]
    first: Dict[str, int] = {}
    for i, t in enumerate(args.teachers):
        if not t.get('use_summary', True):
            continue
        first.setdefault(t['name'], i)
    return sorted(first.values())


def adaptor_token_slot(args: argparse.Namespace, name: str) -> int:
    """``head_idx`` of the adaptor for teacher ``name`` (adaptors.md §1)."""
    for tidx, t in enumerate(args.teachers):
        if t['name'] == name:
            return t.get('token_slot', tidx) if getattr(args, 'cls_token_per_teacher', True) else 0
    raise ValueError(f'unknown adaptor {name!r}; known: {[t["name"] for t in args.teachers]}')


@dataclass(frozen=True)
class RefConfig:
    """Everything the reference derives from ``args`` and the weight shapes."""

    dtype: torch.dtype
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    grid: int
    cpe_mode: bool
    num_cls_tokens: int  # T
    num_registers: int  # R
    summary_idxs: Tuple[int, ...]
    final_norm: bool
    scaled_ln: bool

    @property
    def num_prefix(self) -> int:
        """``S = T + R``."""
        return self.num_cls_tokens + self.num_registers

    @property
    def summary_dim(self) -> int:
        return self.embed_dim * len(self.summary_idxs)


def ref_config(sd: Weights, args: argparse.Namespace) -> RefConfig:
    """Derive the :class:`RefConfig` of a checkpoint."""
    bb = sd['backbone']
    d, k_in = bb['patch_generator.embedder.weight'].shape
    ps = int(round(math.sqrt(k_in / 3)))
    if 3 * ps * ps != k_in:
        raise ValueError(f'embedder input width {k_in} is not 3*ps*ps')
    n_pos = bb['patch_generator.pos_embed'].shape[1]
    grid = int(round(math.sqrt(n_pos)))
    if grid * grid != n_pos:
        raise ValueError(f'position table of {n_pos} entries is not square')
    depth = 0
    while f'blocks.{depth}.attn.qkv.weight' in bb:
        depth += 1
    mk = dict(args.model_kwargs or {})
    heads = mk.get('num_heads', _ARCH_HEADS.get(args.model))
    if heads is None:
        raise ValueError(f'num_heads unknown for model {args.model!r}')
    if mk.get('class_token', True) is False:
        raise NotImplementedError('models without a class token are not covered by the reference')
    img = mk.get('img_size', _ARCH_IMG_SIZE.get(args.model, 224))
    img = tuple(img) if isinstance(img, (tuple, list)) else (img, img)
    t, r = token_counts(args)
    rows = bb['patch_generator.cls_token.token'].shape[0]
    if rows != t + r:
        raise ValueError(f'cls_token.token has {rows} rows but args imply T + R = {t} + {r}')
    gp = getattr(args, 'gp', None)
    final_norm = bool(getattr(args, 'model_norm', False)) and gp not in ('avg', 'avgmax', 'max')
    return RefConfig(
        dtype=getattr(args, 'dtype', torch.float32), patch_size=ps, embed_dim=d, depth=depth,
        num_heads=int(heads), grid=grid, cpe_mode=(grid * ps, grid * ps) != img,
        num_cls_tokens=t, num_registers=r, summary_idxs=tuple(summary_indices(args)),
        final_norm=final_norm,
        scaled_ln=bool(mk.get('scaled_ln', False)) and args.model == 'vit_giant_patch16_224')


# ==============================================================================================
# Primitives (computed in float32, rounded once to the input dtype)


def _linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
    y = x.float() @ w.float().t()
    if b is not None:
        y = y + b.float()
    return y.to(x.dtype)


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    mu = xf.mean(dim=-1, keepdim=True)
    var = ((xf - mu) ** 2).mean(dim=-1, keepdim=True)
    y = (xf - mu) / torch.sqrt(var + eps) * w.float() + b.float()
    return y.to(x.dtype)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return (0.5 * xf * (1.0 + torch.erf(xf / math.sqrt(2.0)))).to(x.dtype)


def _dyt(x: torch.Tensor, p: Dict[str, torch.Tensor], name: str) -> torch.Tensor:
    xf = x.float()
    alpha, gamma, beta = (p[f'{name}.{k}'].float() for k in ('alpha', 'gamma', 'beta'))
    y = gamma * torch.tanh(alpha * xf) + beta
    return y.to(x.dtype)


def _norm(x: torch.Tensor, p: Dict[str, torch.Tensor], name: str, eps: float) -> torch.Tensor:
    if f'{name}.alpha' in p:
        return _dyt(x, p, name)
    return _layer_norm(x, p[f'{name}.weight'], p[f'{name}.bias'], eps)


def _attention(x: torch.Tensor, p: Dict[str, torch.Tensor], num_heads: int,
               ln_eps: float) -> torch.Tensor:
    """Multi-head self-attention written head by head (model.md §2.3)."""
    _, n, d = x.shape
    hd = d // num_heads
    qkv = _linear(x, p['attn.qkv.weight'], p.get('attn.qkv.bias')).float()  # (B, N, 3D)
    q_all, k_all, v_all = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    outs = []
    for h in range(num_heads):
        q = q_all[..., h * hd:(h + 1) * hd]  # (B, N, hd)
        k = k_all[..., h * hd:(h + 1) * hd]
        v = v_all[..., h * hd:(h + 1) * hd]
        if 'attn.q_norm.weight' in p:  # per-head LayerNorm on the (rounded) q and k
            q = _layer_norm(q.to(x.dtype), p['attn.q_norm.weight'], p['attn.q_norm.bias'],
                            ln_eps).float()
            k = _layer_norm(k.to(x.dtype), p['attn.k_norm.weight'], p['attn.k_norm.bias'],
                            ln_eps).float()
        logits = (q @ k.transpose(-1, -2)) * (hd ** -0.5)  # (B, N, N)
        outs.append(torch.softmax(logits, dim=-1) @ v)  # (B, N, hd)
    merged = torch.cat(outs, dim=-1).to(x.dtype)  # head-major channels
    return _linear(merged, p['attn.proj.weight'], p['attn.proj.bias'])


def _layer_scale(x: torch.Tensor, p: Dict[str, torch.Tensor], name: str) -> torch.Tensor:
    for pname in ('gamma', 'grandma'):  # 'gamma' wins if both are present
        if f'{name}.{pname}' in p:
            return x * p[f'{name}.{pname}'].to(x.dtype)
    return x


def _vit_block(x: torch.Tensor, p: Dict[str, torch.Tensor], num_heads: int, ln_eps: float,
               norm_mult: Optional[float] = None) -> torch.Tensor:
    """Pre-norm ViT block: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``."""
    def normed(name: str) -> torch.Tensor:
        y = _norm(x, p, name, ln_eps)
        if norm_mult is not None:  # scaled LayerNorm (vit_giant_patch16_224, scaled_ln=True)
            y = y * torch.tensor(norm_mult, dtype=torch.float32).to(y.dtype)
        return y

    x = x + _layer_scale(_attention(normed('norm1'), p, num_heads, ln_eps), p, 'ls1')
    h = _linear(normed('norm2'), p['mlp.fc1.weight'], p['mlp.fc1.bias'])
    h = _gelu(h)
    if 'mlp.norm.weight' in p:
        h = _layer_norm(h, p['mlp.norm.weight'], p['mlp.norm.bias'], 1e-5)
    h = _linear(h, p['mlp.fc2.weight'], p['mlp.fc2.bias'])
    return x + _layer_scale(h, p, 'ls2')


def _sub(d: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}


# ==============================================================================================
# Backbone


def ref_condition(sd: Weights, args: argparse.Namespace, x: torch.Tensor) -> torch.Tensor:
    """Input conditioner (model.md §5): ``(x - mean) / std``, float32 buffers, cast to dtype."""
    mean = sd['conditioner']['norm_mean'].float()
    std = sd['conditioner']['norm_std'].float()
    return ((x - mean) / std).to(getattr(args, 'dtype', torch.float32))


def ref_pos_embed(table: torch.Tensor, grid: int, h: int, w: int,
                  cpe_mode: bool = True) -> torch.Tensor:
    """Eval-mode position embedding for an ``h x w`` patch grid (model.md §3.4): ``(1, h*w, D)``.

    ``table`` is the stored ``(1, G*G, D)`` table (in the backbone dtype).
    """
    d = table.shape[-1]
    dt = table.dtype
    p = table.reshape(1, grid, grid, d).permute(0, 3, 1, 2)  # (1, D, G, G)
    if (h, w) != (grid, grid):
        if cpe_mode:
            m = max(h, w)
            p = F.interpolate(p.float(), size=(m, m), mode='bilinear', align_corners=False).to(dt)
            p = p[:, :, :h, :w]
        else:
            p = p[:, :, :min(h, grid), :min(w, grid)]
        if p.shape[-2:] != (h, w):
            p = F.interpolate(p.float(), size=(h, w), mode='bilinear', align_corners=False).to(dt)
    return p.permute(0, 2, 3, 1).reshape(1, h * w, d)


def ref_patchify(x: torch.Tensor, ps: int) -> torch.Tensor:
    """``(B, 3, H, W) -> (B, h*w, 3*ps*ps)``, feature ``ch*ps*ps + i*ps + j`` (model.md §3.2).

    Token ``r*w + c`` holds the pixels ``x[b, ch, r*ps + i, c*ps + j]``.
    """
    b, c, hh, ww = x.shape
    if hh % ps or ww % ps:
        raise ValueError(f'input {hh}x{ww} is not a multiple of the patch size {ps}')
    h, w = hh // ps, ww // ps
    # x[b, ch, r*ps + i, c*ps + j] -> token r*w + c, feature (ch, i, j)
    return x.reshape(b, c, h, ps, w, ps).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * ps * ps)


def ref_tokens(sd: Weights, args: argparse.Namespace, xc: torch.Tensor) -> torch.Tensor:
    """CPE patch generator on a conditioned image: ``(B, S + h*w, D)`` in args.dtype."""
    cfg = ref_config(sd, args)
    bb = {k: v.to(cfg.dtype) for k, v in sd['backbone'].items()}
    ps = cfg.patch_size
    h, w = xc.shape[-2] // ps, xc.shape[-1] // ps
    patches = _linear(ref_patchify(xc, ps), bb['patch_generator.embedder.weight'],
                      bb.get('patch_generator.embedder.bias'))
    patches = patches + ref_pos_embed(bb['patch_generator.pos_embed'], cfg.grid, h, w, cfg.cpe_mode)
    prefix = bb['patch_generator.cls_token.token'].unsqueeze(0).expand(xc.shape[0], -1, -1)
    tokens = torch.cat([prefix, patches], dim=1)
    if 'patch_generator.patch_normalizer.weight' in bb:
        tokens = _layer_norm(tokens, bb['patch_generator.patch_normalizer.weight'],
                             bb['patch_generator.patch_normalizer.bias'], 1e-5)
    return tokens


def vitdet_windowed_blocks(depth: int, num_windowed: Optional[int] = None,
                           num_global: Optional[int] = None) -> List[bool]:
    """Per block, whether it is windowed (vitdet.md §2). ``period == 1`` is rejected."""
    if num_windowed is not None:
        period = num_windowed + 1
    else:
        period = max(depth // (num_global or 4), 1)
    if period == 1:
        raise ValueError('ViTDet period of 1 (no windowed block between global blocks) '
                         'is not supported')
    flags: List[bool] = []
    windowed = False
    for i in range(depth - 1):
        if i % period == 0:
            windowed = True
        elif i % period == period - 1:
            windowed = False
        flags.append(windowed)
    if depth:
        flags.append(False)  # the last block is always global
    return flags


def vitdet_window_indices(h: int, w: int, ws: int) -> List[List[int]]:
    """Raster indices of the patch tokens of each ``ws x ws`` window, windows row-major."""
    if h % ws or w % ws:
        raise ValueError(f'patch grid {h}x{w} is not a multiple of the window size {ws}')
    wins = []
    for wy in range(h // ws):
        for wx in range(w // ws):
            wins.append([(wy * ws + py) * w + (wx * ws + px)
                         for py in range(ws) for px in range(ws)])
    return wins


def _iter_blocks(sd: Weights, args: argparse.Namespace, tokens: torch.Tensor, hw: Tuple[int, int],
                 vitdet_window_size: Optional[int], num_windowed: Optional[int],
                 num_global: Optional[int], last: Optional[int] = None) -> Iterator[torch.Tensor]:
    """Yield the token tensor after each block (raster order; windowed blocks per vitdet.md)."""
    cfg = ref_config(sd, args)
    bb = {k: v.to(cfg.dtype) for k, v in sd['backbone'].items()}
    s = cfg.num_prefix
    if vitdet_window_size:
        flags = vitdet_windowed_blocks(cfg.depth, num_windowed, num_global)
        windows = vitdet_window_indices(hw[0], hw[1], vitdet_window_size)
    else:
        flags = [False] * cfg.depth
        windows = []
    n_run = cfg.depth if last is None else last + 1
    for j in range(n_run):
        p = _sub(bb, f'blocks.{j}.')
        mult = 1.0 / math.sqrt(j + 1) if cfg.scaled_ln else None
        if flags[j]:
            # Prefix tokens sit out windowed blocks; each window is its own sequence.
            prefix, spatial = tokens[:, :s], tokens[:, s:]
            new_spatial = spatial.clone()
            for idx in windows:
                sel = torch.tensor(idx)
                new_spatial[:, sel] = _vit_block(spatial[:, sel], p, cfg.num_heads,
                                                 _BACKBONE_LN_EPS, mult)
            tokens = torch.cat([prefix, new_spatial], dim=1)
        else:
            tokens = _vit_block(tokens, p, cfg.num_heads, _BACKBONE_LN_EPS, mult)
        yield tokens


def _final_norm(sd: Weights, args: argparse.Namespace, y: torch.Tensor) -> torch.Tensor:
    cfg = ref_config(sd, args)
    if not cfg.final_norm:
        return y
    bb = sd['backbone']
    d = cfg.embed_dim
    p = {k: v.to(cfg.dtype) for k, v in _sub(bb, 'norm.').items()}
    if 'alpha' in p:
        return _dyt(y, {f'norm.{k}': v for k, v in p.items()}, 'norm')
    weight = p.get('weight', torch.ones(d, dtype=cfg.dtype))  # timm's LayerNorm init if absent
    bias = p.get('bias', torch.zeros(d, dtype=cfg.dtype))
    return _layer_norm(y, weight, bias, _BACKBONE_LN_EPS)


def ref_backbone(sd: Weights, args: argparse.Namespace, xc: torch.Tensor, *,
                 vitdet_window_size: Optional[int] = None, num_windowed: Optional[int] = None,
                 num_global: Optional[int] = None) -> torch.Tensor:
    """Backbone output ``(B, S + h*w, D)`` (final norm included when it applies)."""
    cfg = ref_config(sd, args)
    hw = (xc.shape[-2] // cfg.patch_size, xc.shape[-1] // cfg.patch_size)
    y = ref_tokens(sd, args, xc)
    for y in _iter_blocks(sd, args, y, hw, vitdet_window_size, num_windowed, num_global):
        pass
    return _final_norm(sd, args, y)


# ==============================================================================================
# Normalizers and adaptor heads


def ref_feature_normalizer(sd: Weights, args: argparse.Namespace, f: torch.Tensor) -> torch.Tensor:
    """``(f - mean) @ tx^T`` in args.dtype (model.md §10), identity if absent."""
    fn = sd.get('feature_normalizer')
    if fn is None:
        return f
    dt = f.dtype
    return _linear(f - fn['mean'].to(dt), fn['tx'].to(dt))


def _head_variants(args: argparse.Namespace, name: str) -> Tuple[str, str]:
    t = next(tt for tt in args.teachers if tt['name'] == name)
    mv = getattr(args, 'mlp_version', None)
    summary = t.get('mlp_version', mv)
    feature = t.get('spatial_mlp_version', getattr(args, 'spatial_mlp_version', None) or mv)
    return summary, feature


def _expected_head_keys(variant: str, p: Dict[str, torch.Tensor]) -> List[str]:
    if variant == 'v1':
        return [f'{a}.{b}' for a in ('fc1', 'norm', 'fc2') for b in ('weight', 'bias')]
    if variant == 'v2':
        keys = ['fc1.weight', 'fc1.bias']
        k = 0
        while f'blocks.{k}.0.weight' in p:
            keys += [f'blocks.{k}.{i}.{b}' for i in (0, 2) for b in ('weight', 'bias')]
            k += 1
        return keys + [f'final.{i}.{b}' for i in (0, 2) for b in ('weight', 'bias')]
    if variant == 'attn':
        keys = []
        for blk in ('blocks.0', 'blocks.1'):
            keys += [f'{blk}.norm1.weight', f'{blk}.norm1.bias', f'{blk}.attn.qkv.weight',
                     f'{blk}.attn.proj.weight', f'{blk}.attn.proj.bias', f'{blk}.ls1.gamma',
                     f'{blk}.norm2.weight', f'{blk}.norm2.bias', f'{blk}.mlp.fc1.weight',
                     f'{blk}.mlp.fc1.bias', f'{blk}.mlp.fc2.weight', f'{blk}.mlp.fc2.bias',
                     f'{blk}.ls2.gamma']
        return keys + ['mlp.fc1.weight', 'mlp.fc1.bias'] + \
            [f'mlp.final.{i}.{b}' for i in (0, 2) for b in ('weight', 'bias')]
    raise ValueError(f'unsupported head version {variant!r}')


def _mlp_v2(x: torch.Tensor, p: Dict[str, torch.Tensor]) -> torch.Tensor:
    h = _linear(x, p['fc1.weight'], p['fc1.bias'])
    k = 0
    while f'blocks.{k}.0.weight' in p:
        r = _layer_norm(h, p[f'blocks.{k}.0.weight'], p[f'blocks.{k}.0.bias'], _HEAD_LN_EPS)
        h = h + _linear(_gelu(r), p[f'blocks.{k}.2.weight'], p[f'blocks.{k}.2.bias'])
        k += 1
    r = _layer_norm(h, p['final.0.weight'], p['final.0.bias'], _HEAD_LN_EPS)
    return _linear(_gelu(r), p['final.2.weight'], p['final.2.bias'])


def ref_head(variant: str, p: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """One adaptor head (adaptors.md §3) on ``x`` (float32), strict about its keys."""
    expected = _expected_head_keys(variant, p)
    if sorted(expected) != sorted(p):
        raise ValueError(f'{variant} head keys mismatch: missing {sorted(set(expected) - set(p))}, '
                         f'unexpected {sorted(set(p) - set(expected))}')
    if variant == 'v1':
        h = _linear(x, p['fc1.weight'], p['fc1.bias'])
        h = torch.relu(_layer_norm(h, p['norm.weight'], p['norm.bias'], _HEAD_LN_EPS))
        return _linear(h, p['fc2.weight'], p['fc2.bias'])
    if variant == 'v2':
        return _mlp_v2(x, p)
    for blk in ('blocks.0', 'blocks.1'):
        x = _vit_block(x, _sub(p, f'{blk}.'), _ATTN_HEAD_NUM_HEADS, _ATTN_HEAD_LN_EPS)
    return _mlp_v2(x, _sub(p, 'mlp.'))


def ref_upsample_tokens(f: torch.Tensor, h: int, w: int, u: int) -> torch.Tensor:
    """``(B, h*w, u*u*c) -> (B, (h*u)*(w*u), c)`` by explicit index gathering (adaptors.md §4).

    Output token ``(r*u + i, q*u + j)`` takes channels ``[(i*u + j)*c, (i*u + j + 1)*c)`` of input
    token ``(r, q)``.
    """
    if u == 1:
        return f
    b, n, uuc = f.shape
    c = uuc // (u * u)
    out = f.new_empty(b, h * u * w * u, c)
    for rr in range(h * u):
        for qq in range(w * u):
            r, i, q, j = rr // u, rr % u, qq // u, qq % u
            out[:, rr * (w * u) + qq] = f[:, r * w + q, (i * u + j) * c:(i * u + j + 1) * c]
    return out


def ref_adaptor(sd: Weights, args: argparse.Namespace, name: str, all_summary: torch.Tensor,
                features: torch.Tensor, hw: Tuple[int, int], feature_fmt: str = 'NLC') -> RefOutput:
    """Run adaptor ``name`` (adaptors.md §5) on the backbone's summary tokens and NLC features."""
    if name not in sd['heads']:
        raise ValueError(f'no heads for adaptor {name!r}')
    sv, fv = _head_variants(args, name)
    if sv not in ('v1', 'v2'):
        raise ValueError(f'summary head version {sv!r} is not supported')
    slot = adaptor_token_slot(args, name)
    t = next(tt for tt in args.teachers if tt['name'] == name)
    u = int(t.get('fd_upsample_factor') or 1)
    s_in = all_summary.float()
    s_in = s_in[:, 0] if s_in.shape[1] == 1 else s_in[:, slot]
    summary = ref_head(sv, sd['heads'][name]['summary'], s_in).float()
    back_dt = features.dtype
    f = ref_head(fv, sd['heads'][name]['feature'], features.float()).to(back_dt).float()
    h, w = hw
    f = ref_upsample_tokens(f, h, w, u)
    if feature_fmt == 'NCHW':
        f = f.reshape(f.shape[0], h * u, w * u, f.shape[-1]).permute(0, 3, 1, 2)
    return RefOutput(summary, f)


# ==============================================================================================
# forward


def _adaptor_list(adaptor_names: Union[None, str, Sequence[str]]) -> List[str]:
    if adaptor_names is None:
        return []
    names = [adaptor_names] if isinstance(adaptor_names, str) else list(adaptor_names)
    return list(dict.fromkeys(names))


def _num_cls_tokens(cfg: RefConfig, args: argparse.Namespace, names: Sequence[str]) -> int:
    slots = [adaptor_token_slot(args, n) for n in names]
    return max(cfg.num_cls_tokens, max(slots, default=-1) + 1)


def _extract(sd: Weights, args: argparse.Namespace, y: torch.Tensor, hw: Tuple[int, int],
             feature_fmt: str, names: Sequence[str]) -> Union[RefOutput, Dict[str, RefOutput]]:
    """Summary / features / adaptors from a final token tensor (model.md §6.2-6.4)."""
    cfg = ref_config(sd, args)
    n_cls = _num_cls_tokens(cfg, args, names)
    all_summary = y[:, :n_cls]
    if cfg.summary_idxs and max(cfg.summary_idxs) >= n_cls:
        raise IndexError(f'summary index {max(cfg.summary_idxs)} >= num_cls_tokens {n_cls}')
    summary = all_summary[:, list(cfg.summary_idxs)].flatten(1)  # (B, k*D), ascending index order
    feats = ref_feature_normalizer(sd, args, y[:, cfg.num_prefix:])
    h, w = hw
    if feature_fmt == 'NLC':
        out_f = feats
    elif feature_fmt == 'NCHW':
        out_f = feats.reshape(feats.shape[0], h, w, feats.shape[-1]).permute(0, 3, 1, 2)
    else:
        raise ValueError(f"feature_fmt must be 'NLC' or 'NCHW', got {feature_fmt!r}")
    backbone = RefOutput(summary, out_f)
    if not names:
        return backbone
    out: Dict[str, RefOutput] = {'backbone': backbone}
    for n in names:
        out[n] = ref_adaptor(sd, args, n, all_summary, feats, hw, feature_fmt)
    return out


@_single_threaded
def ref_forward(sd: Weights, args: argparse.Namespace, x: torch.Tensor, feature_fmt: str = 'NLC',
                adaptor_names: Union[None, str, Sequence[str]] = None, *,
                vitdet_window_size: Optional[int] = None, num_windowed: Optional[int] = None,
                num_global: Optional[int] = None) -> Union[RefOutput, Dict[str, RefOutput]]:
    """Eval-mode ``RADIOModel.forward`` (model.md §6).

    Args:
        sd: grouped realized weights; args: the checkpoint's args.
        x: ``(B, 3, H, W)`` in ``[0, 1]``.
        feature_fmt: ``'NLC'`` or ``'NCHW'``.
        adaptor_names: ``None``, a name or a list of names.
        vitdet_window_size, num_windowed, num_global: ViTDet windowing (vitdet.md).

    Returns:
        ``RefOutput(summary, features)`` in args.dtype, or with adaptors a dict
        ``{'backbone': RefOutput, name: RefOutput (float32), ...}``.
    """
    cfg = ref_config(sd, args)
    names = _adaptor_list(adaptor_names)
    for n in names:
        adaptor_token_slot(args, n)
    step = cfg.patch_size * (vitdet_window_size or 1)
    if x.shape[-2] % step or x.shape[-1] % step:
        raise ValueError(f'input {tuple(x.shape[-2:])} is not a multiple of {step}')
    xc = ref_condition(sd, args, x)
    hw = (xc.shape[-2] // cfg.patch_size, xc.shape[-1] // cfg.patch_size)
    y = ref_backbone(sd, args, xc, vitdet_window_size=vitdet_window_size,
                     num_windowed=num_windowed, num_global=num_global)
    return _extract(sd, args, y, hw, feature_fmt, names)


# ==============================================================================================
# forward_intermediates


def resolve_indices(indices: Union[int, Sequence[int]], depth: int) -> List[int]:
    """intermediates.md §2, with validation: last ``n`` blocks or a sorted set of block indices."""
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f'indices={indices} must be in [1, {depth}]')
        return list(range(depth - indices, depth))
    out = sorted({i + depth if i < 0 else i for i in indices})
    if not out or out[0] < 0 or out[-1] >= depth:
        raise ValueError(f'indices {list(indices)} out of range for {depth} blocks')
    return out


def _inter_normalize(nz: Optional[Dict[str, torch.Tensor]], x: torch.Tensor, index: int,
                     rot_index: int, skip: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Intermediate feature normalizer ``N`` (intermediates.md §4); ``nz=None`` is the null one."""
    dt = x.dtype
    if nz is None:
        return x, torch.ones((), dtype=dt)
    rot = nz['rotation'].to(dt)
    rot = rot if rot.dim() == 2 else rot[rot_index]
    mu = nz['means'][index].to(dt)
    a = nz['alphas'][index].to(dt)
    n = x.shape[1]
    if skip:
        y_sp = _linear(x[:, skip:] - mu, rot)
        y = torch.cat([x[:, :skip], y_sp], dim=1)
        alpha = torch.ones(1, n, 1, dtype=dt)
        alpha[:, skip:] = a
    else:
        y = _linear(x - mu, rot)
        alpha = a.expand(1, n, 1)
    return y, alpha


@_single_threaded
def ref_forward_intermediates(
    sd: Weights, args: argparse.Namespace, x: torch.Tensor, indices: Union[int, Sequence[int]],
    aggregation: str = 'sparse', norm_alpha_scheme: str = 'post-alpha', *,
    return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
    output_fmt: str = 'NCHW', intermediates_only: bool = False,
    adaptor_names: Union[None, str, Sequence[str]] = None,
    vitdet_window_size: Optional[int] = None, num_windowed: Optional[int] = None,
    num_global: Optional[int] = None,
) -> Any:
    """``RADIOModel.forward_intermediates`` (intermediates.md), eval mode.

    Returns the list of intermediates (spatial tensors, or ``RefOutput(summary, features)`` with
    ``return_prefix_tokens``), or ``(final, list)`` unless ``intermediates_only``. Defaults match
    the model's (``output_fmt='NCHW'``). Indices are validated (ValueError when out of range),
    unlike the original. With ViTDet arguments the blocks are windowed exactly as in
    :func:`ref_forward` (outputs in raster order; the original does not support this pairing).
    """
    if aggregation not in ('sparse', 'dense'):
        raise ValueError(f'aggregation {aggregation!r}')
    if norm_alpha_scheme not in ('post-alpha', 'pre-alpha', 'none'):
        raise ValueError(f'norm_alpha_scheme {norm_alpha_scheme!r}')
    if output_fmt not in ('NLC', 'NCHW'):
        raise ValueError(f'output_fmt {output_fmt!r}')
    cfg = ref_config(sd, args)
    names = _adaptor_list(adaptor_names)
    sel = resolve_indices(indices, cfg.depth)
    xc = ref_condition(sd, args, x)
    hw = (xc.shape[-2] // cfg.patch_size, xc.shape[-1] // cfg.patch_size)
    s, t = cfg.num_prefix, cfg.num_cls_tokens
    nz = None if norm_alpha_scheme == 'none' else sd.get('intermediate_normalizer')

    def fnorm(z: torch.Tensor) -> torch.Tensor:
        return _final_norm(sd, args, z) if norm else z

    def fmt(z: torch.Tensor) -> Any:
        sp = z[:, s:]
        if output_fmt == 'NCHW':
            sp = to_nchw(sp, hw[0], hw[1])
        if not return_prefix_tokens:
            return sp
        prefix = z[:, :t]
        if prefix.shape[1] > 1:
            prefix = torch.stack([prefix[:, i] for i in cfg.summary_idxs], dim=1)
        return RefOutput(prefix.flatten(1), sp)

    emitted: List[Any] = []
    acc: Any = 0
    asum: Any = 0
    count = 0
    tokens = ref_tokens(sd, args, xc)
    last = sel[-1] if stop_early else None
    for i, tokens in enumerate(_iter_blocks(sd, args, tokens, hw, vitdet_window_size, num_windowed,
                                            num_global, last)):
        if aggregation == 'dense':
            g = next((k for k in sel if k >= i), sel[-1])
            y, a = _inter_normalize(nz, tokens, i, g, s)
            if norm_alpha_scheme == 'post-alpha':
                acc = acc + y
                asum = asum + a
            else:
                acc = acc + a * y
                asum = asum + 1
            count += 1
        if i in sel:
            if aggregation == 'dense':
                a_bar = asum / count
                out = (a_bar * acc) / count
                acc, asum, count = 0, 0, 0
            else:
                y, a = _inter_normalize(nz, tokens, i, i, s)
                out = a * y
            emitted.append(fmt(fnorm(out)))
    if intermediates_only:
        return emitted
    final = _extract(sd, args, fnorm(tokens), hw, output_fmt, names)
    return final, emitted


def to_nchw(features: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """NLC ``(B, h*w, C)`` -> contiguous NCHW ``(B, C, h, w)``."""
    b, _, c = features.shape
    return features.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()


__all__ = [
    'LoadedReference', 'RefConfig', 'RefOutput', 'adaptor_token_slot', 'load_reference',
    'realize_checkpoint', 'realize_parametrizations', 'ref_adaptor', 'ref_backbone',
    'ref_condition', 'ref_config', 'ref_feature_normalizer', 'ref_forward',
    'ref_forward_intermediates', 'ref_head',
    'ref_patchify', 'ref_pos_embed', 'ref_tokens', 'ref_upsample_tokens', 'resolve_indices',
    'spectral_weight', 'summary_indices', 'to_nchw', 'token_counts', 'vitdet_window_indices',
    'vitdet_windowed_blocks',
]
