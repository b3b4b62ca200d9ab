"""Writer of random-weight E-RADIO checkpoints in the official RADIO file format (tests only).

The file is ``torch.save({'arch', 'epoch', 'args': argparse.Namespace(...), 'state_dict': {...}})``
with the backbone under ``base_model.`` exactly as spec ``eradio.md`` §5 names it, including the
position-bias buffers the original stores (``relative_coords_table``, ``relative_position_index``
and the stale ``relative_bias`` cache, filled with noise by default so that a loader trusting it
is caught), the input conditioner, per-teacher adaptor heads (layouts of ``adaptors.md``, via
``tests/ckpt_writer.py``) and optionally a feature normalizer. BatchNorm running statistics are
random (positive variances) so that folding is really exercised.

The structure is derived here from the spec tables, independently of the ``radio`` package.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from ckpt_writer import DEFAULT_TEACHERS, _head_params, _Rng

# name -> (depths, heads, window, dim, in_dim, n0, F, conv_base, cpb_hidden, groups_ratio)
_ARCHS: Dict[str, tuple] = {
    'eradio_large_fullres_ws16': ((3, 3, 5, 5), (2, 4, 8, 16), 16, 192, 64, 2, 1536, True, 512, 0),
    'eradio_xxxtiny': ((1, 3, 4, 5), (2, 4, 8, 16), 16, 32, 32, 2, 256, True, 512, 0),
    'eradio_xxxtiny_8x_ws12': ((1, 3, 4, 5), (2, 4, 8, 16), 12, 32, 32, 2, 256, False, 64, 1),
    'eradio_xxxtiny_8x_ws16': ((1, 3, 4, 5), (2, 4, 8, 16), 16, 32, 32, 1, 256, False, 64, 1),
}
_ARCHS['eradio'] = _ARCHS['eradio_large_fullres_ws16']

ALL_MODELS: List[str] = sorted(_ARCHS)


@dataclass
class WrittenERadioCheckpoint:
    """What :func:`make_eradio_checkpoint` wrote.

    Attributes:
        path: the file, or ``None`` when built in memory only.
        args: deep copy of the stored ``args``.
        backbone: float32 backbone weights as a loader ends up with them before the dtype cast
            (stored values upcast), keys without ``base_model.``, stale buffers included.
        conditioner: ``{'norm_mean', 'norm_std'}`` float32 ``(3, 1, 1)``.
        heads: ``{teacher index: {'summary': {...}, 'feature': {...}}}`` float32.
        feature_normalizer: ``{'mean', 'tx'}`` float32, or ``None``.
        checkpoint: the dict passed to ``torch.save``.
    """

    path: Optional[str]
    args: argparse.Namespace
    backbone: Dict[str, torch.Tensor]
    conditioner: Dict[str, torch.Tensor]
    heads: Dict[int, Dict[str, Dict[str, torch.Tensor]]]
    feature_normalizer: Optional[Dict[str, torch.Tensor]]
    checkpoint: Dict[str, Any]


def _coords_table(w: int, p: int) -> torch.Tensor:
    r = torch.arange(-(w - 1), w, dtype=torch.float32) / (p - 1) * 8
    t = torch.stack(torch.meshgrid(r, r, indexing='ij'), -1)
    return (torch.sign(t) * torch.log2(t.abs() + 1.0) / 3.0).unsqueeze(0)


def _rel_index(w: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing='ij')).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (w - 1)
    return rel[0] * (2 * w - 1) + rel[1]


class _Backbone:
    def __init__(self, rng: _Rng, stale_bias: str) -> None:
        self.rng = rng
        self.stale_bias = stale_bias
        self.p: Dict[str, torch.Tensor] = {}

    def conv(self, key: str, out_c: int, in_c: int, k: int, bias: bool = False,
             gain: float = 1.0) -> None:
        self.p[key + '.weight'] = self.rng.normal(out_c, in_c, k, k,
                                                  std=gain / math.sqrt(in_c * k * k))
        if bias:
            self.p[key + '.bias'] = self.rng.normal(out_c, std=0.05)

    def bn(self, key: str, c: int) -> None:
        self.p[key + '.weight'] = self.rng.uniform(c, lo=0.5, hi=1.3)
        self.p[key + '.bias'] = self.rng.normal(c, std=0.1)
        self.p[key + '.running_mean'] = self.rng.normal(c, std=0.2)
        self.p[key + '.running_var'] = self.rng.uniform(c, lo=0.5, hi=2.0)
        self.p[key + '.num_batches_tracked'] = torch.tensor(1000, dtype=torch.int64)

    def conv_bn(self, key: str, out_c: int, in_c: int, k: int) -> None:
        self.conv(key + '.conv', out_c, in_c, k)
        self.bn(key + '.bn', out_c)

    def linear(self, key: str, out_f: int, in_f: int, bias: bool = False) -> None:
        self.p[key + '.weight'] = self.rng.normal(out_f, in_f, std=1.0 / math.sqrt(in_f))
        if bias:
            self.p[key + '.bias'] = self.rng.normal(out_f, std=0.05)

    def layer_norm(self, key: str, c: int) -> None:
        self.p[key + '.weight'] = self.rng.normal(c, std=0.1, mean=1.0)
        self.p[key + '.bias'] = self.rng.normal(c, std=0.05)

    def pos_emb(self, key: str, heads: int, hid: int, p: int) -> None:
        self.p[key + '.cpb_mlp.0.weight'] = self.rng.normal(hid, 2, std=1.0)
        self.p[key + '.cpb_mlp.0.bias'] = self.rng.normal(hid, std=0.5)
        self.p[key + '.cpb_mlp.2.weight'] = self.rng.normal(heads, hid, std=1.0 / math.sqrt(hid))
        self.p[key + '.relative_coords_table'] = _coords_table(p, p)
        self.p[key + '.relative_position_index'] = _rel_index(p)
        if self.stale_bias == 'zeros':
            self.p[key + '.relative_bias'] = torch.zeros(1, heads, p * p, p * p)
        else:
            # A separate stream, so that the stale cache does not shift the real weights.
            g = torch.Generator().manual_seed(len(self.p))
            self.p[key + '.relative_bias'] = torch.randn(1, heads, p * p, p * p, generator=g) * 3


def _backbone_params(rng: _Rng, model: str, kw: Dict[str, Any], stale_bias: str,
                     timm_extras: bool) -> Dict[str, torch.Tensor]:
    depths, heads, ws, dim, in_dim, n0, feat, conv_base, cpb, cgr = _ARCHS[model]
    conv_base = bool(kw.get('conv_base', conv_base))
    cpb = int(kw.get('cpb_mlp_hidden', cpb))
    cgr = float(kw.get('conv_groups_ratio', cgr))
    qkv_bias = bool(kw.get('qkv_bias', False))
    layer_scale = kw.get('layer_scale')
    multi_query = bool(kw.get('multi_query', False))
    shuffle = bool(kw.get('downsample_shuffle', False))
    b = _Backbone(rng, stale_bias)
    b.conv_bn('patch_embed.conv_down.0', in_dim, 3, 3)
    b.conv_bn('patch_embed.conv_down.2', dim, in_dim, 3)
    widths = [dim * 2 ** i for i in range(4)]
    for i, c in enumerate(widths):
        lv = f'levels.{i}'
        if i < 2:
            h = c // 2
            b.conv_bn(f'{lv}.blocks.cv1', 2 * h, c, 1)
            b.conv_bn(f'{lv}.blocks.cv2', c, (2 + depths[i]) * h, 1)
            for k in range(depths[i]):
                b.conv_bn(f'{lv}.blocks.m.{k}.cv1', h, h, 3)
                b.conv_bn(f'{lv}.blocks.m.{k}.cv2', h, h, 3)
        else:
            ratios = (2, 1) if i == 2 else (1,)
            hd = c // heads[i]
            for j in range(depths[i]):
                for k, r in enumerate(ratios):
                    ab = f'{lv}.blocks.{j}.attention_blocks.{k}'
                    if r == 1:
                        g = max(1, int(cgr * c))
                        b.conv_bn(f'{ab}.pre_conv', c, c // g, 3)
                    elif conv_base:
                        b.conv(f'{ab}.downsample_op', c, c, r, bias=True)
                        # ConvTranspose2d layout (in, out, k, k)
                        b.conv(f'{ab}.upsample_op', c, c, r, bias=True)
                    else:
                        b.conv_bn(f'{ab}.downsample_mixer', c, c, 1)
                        b.conv_bn(f'{ab}.upsample_op', c, c, 1)
                    b.layer_norm(f'{ab}.norm1', c)
                    b.linear(f'{ab}.attn.qkv', c + 2 * hd if multi_query else 3 * c, c,
                             bias=qkv_bias)
                    b.linear(f'{ab}.attn.proj', c, c)
                    b.pos_emb(f'{ab}.attn.pos_emb_funct', heads[i], cpb, ws)
                    b.layer_norm(f'{ab}.norm2', c)
                    b.linear(f'{ab}.mlp.fc1', 4 * c, c)
                    b.linear(f'{ab}.mlp.fc2', c, 4 * c)
                    if layer_scale is not None:  # the original tests `is not None`: 0 counts
                        b.p[f'{ab}.gamma1'] = rng.normal(c, std=0.1, mean=float(layer_scale))
                        b.p[f'{ab}.gamma2'] = rng.normal(c, std=0.1, mean=float(layer_scale))
        if i < 3:
            if shuffle:
                b.conv_bn(f'{lv}.downsample.reduction', 2 * c, 4 * c, 1)
            else:
                b.conv_bn(f'{lv}.downsample.reduction', 2 * c, c, 3)
    for k, i in enumerate(range(n0, 4)):
        pr = f'high_res_neck.neck_features_proj.{k}'
        b.conv(f'{pr}.conv1', widths[i], 1, 3, bias=True)
        b.bn(f'{pr}.norm', widths[i])
        b.conv(f'{pr}.conv2', feat, widths[i], 1, bias=True)
    if timm_extras:
        b.bn('norm', widths[3])
        b.linear('head', 1000, widths[3], bias=True)
    return b.p


def make_eradio_checkpoint(
    path: Optional[Union[str, os.PathLike]] = None,
    model: str = 'eradio_xxxtiny',
    model_kwargs: Optional[Dict[str, Any]] = None,
    teachers: Optional[Sequence[Dict[str, Any]]] = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    store_dtype: Optional[torch.dtype] = None,
    feature_normalizer: bool = False,
    *,
    stale_bias: str = 'noise',
    timm_extras: bool = False,
    mlp_version: str = 'v2',
    head_hidden: int = 24,
    head_out: int = 16,
    drop_path: Optional[float] = None,
    extra_args: Optional[Dict[str, Any]] = None,
    coords_tables: bool = True,
) -> WrittenERadioCheckpoint:
    """Write (optionally) a random-weight E-RADIO checkpoint in the official format.

    Args:
        path: where to ``torch.save``; ``None`` builds it in memory only.
        model: ``args.model`` (any name of spec §2, alias ``'eradio'`` included).
        model_kwargs: ``args.model_kwargs`` (default ``{'return_full_features': True}``); the
            structural ones (``conv_base``, ``cpb_mlp_hidden``, ``conv_groups_ratio``,
            ``qkv_bias``, ``layer_scale``, ``multi_query``, ``downsample_shuffle``) shape the keys.
        teachers: ``args.teachers`` (default: clip, dino_v2, sam).
        seed: random seed.
        dtype: ``args.dtype``.
        store_dtype: dtype of the stored floating tensors (default ``dtype``; float16 for a
            ``*_half`` style file).
        feature_normalizer: add ``_feature_normalizer.mean/tx`` of width ``F``.
        stale_bias: ``'noise'`` or ``'zeros'`` for the stored ``relative_bias`` caches.
        timm_extras: also write the raw timm ``norm.*`` and ``head.*`` keys.
        mlp_version: ``args.mlp_version`` (head layout).
        head_hidden, head_out: adaptor head sizes.
        drop_path: ``args.drop_path``.
        extra_args: further ``args`` fields.
        coords_tables: ``False`` leaves every ``relative_coords_table`` out of the file (as in a
            checkpoint saved without those buffers); ``backbone`` then holds the exact float32
            construction table, which the original rebuilds at construction.

    Returns:
        A :class:`WrittenERadioCheckpoint`.
    """
    if model not in _ARCHS:
        raise ValueError(f'unknown E-RADIO model {model!r}; known: {ALL_MODELS}')
    if stale_bias not in ('noise', 'zeros'):
        raise ValueError("stale_bias must be 'noise' or 'zeros'")
    kw = dict({'return_full_features': True} if model_kwargs is None else model_kwargs)
    store = store_dtype or dtype
    feat = _ARCHS[model][6]
    rng = _Rng(seed)
    teachers = [dict(t) for t in (teachers if teachers is not None else DEFAULT_TEACHERS)]

    sd: Dict[str, torch.Tensor] = {}
    real: Dict[str, torch.Tensor] = {}

    def put(key: str, value: torch.Tensor) -> None:
        stored = value.to(store) if value.is_floating_point() else value
        sd[key] = stored
        real[key] = stored.float() if value.is_floating_point() else stored

    omitted: Dict[str, torch.Tensor] = {}
    for k, v in _backbone_params(rng, model, kw, stale_bias, timm_extras).items():
        if not coords_tables and k.endswith('.relative_coords_table'):
            omitted[k] = v.float()
            continue
        put('base_model.' + k, v)
    mean = torch.tensor([0.485, 0.456, 0.406]) + rng.normal(3, std=0.02)
    std = torch.tensor([0.229, 0.224, 0.225]) + rng.normal(3, std=0.01).abs()
    put('input_conditioner.norm_mean', mean.reshape(3, 1, 1))
    put('input_conditioner.norm_std', std.reshape(3, 1, 1))
    heads: Dict[int, Dict[str, Dict[str, torch.Tensor]]] = {}
    for i, t in enumerate(teachers):
        heads[i] = {}
        for kind, prefix in (('summary', '_heads'), ('feature', '_feature_projections')):
            variant = t.get('mlp_version', mlp_version) if kind == 'summary' else \
                t.get('spatial_mlp_version', mlp_version)
            hp, _ = _head_params(rng, variant, feat, head_hidden, head_out, 1)
            for k, v in hp.items():
                put(f'{prefix}.{i}.{k}', v)
            heads[i][kind] = {k: real[f'{prefix}.{i}.{k}'] for k in hp}
    fn = None
    if feature_normalizer:
        put('_feature_normalizer.mean', rng.normal(feat, std=0.1))
        put('_feature_normalizer.tx', rng.normal(feat, feat, std=1.0 / math.sqrt(feat)))
        fn = {'mean': real['_feature_normalizer.mean'], 'tx': real['_feature_normalizer.tx']}

    args = argparse.Namespace(
        model=model, model_kwargs=kw, pretrained=False, in_chans=None, input_size=None,
        num_classes=None, drop=0.0, drop_path=drop_path, drop_block=None, gp=None,
        bn_momentum=None, bn_eps=None, torchscript=False, initial_checkpoint=None,
        cpe_max_size=None, cls_token_per_teacher=False, teachers=teachers, register_multiple=0,
        cpe_num_registers=None, model_norm=False, mlp_version=mlp_version,
        spatial_mlp_version=None, spectral_reparam=False, spectral_heads=False, damp=None,
        dtype=dtype)
    for k, v in (extra_args or {}).items():
        setattr(args, k, v)
    ckpt: Dict[str, Any] = {'arch': model, 'epoch': 0, 'args': args, 'state_dict': sd}
    if path is not None:
        torch.save(ckpt, os.fspath(path))
    backbone = {k[len('base_model.'):]: v for k, v in real.items() if k.startswith('base_model.')}
    backbone.update(omitted)
    return WrittenERadioCheckpoint(
        path=os.fspath(path) if path is not None else None, args=copy.deepcopy(args),
        backbone=backbone,
        conditioner={'norm_mean': real['input_conditioner.norm_mean'],
                     'norm_std': real['input_conditioner.norm_std']},
        heads=heads, feature_normalizer=fn, checkpoint=ckpt)


__all__ = ['ALL_MODELS', 'WrittenERadioCheckpoint', 'make_eradio_checkpoint']
