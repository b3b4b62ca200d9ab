"""Independent functional reference of the E-RADIO backbone (spec ``eradio.md`` §3-§4).

Plain torch functions over a flat state dict (keys without ``base_model.``); it does not import the
``radio`` package and is written differently on purpose:

* the architecture is *inferred from the weights* (depths from the keys, heads from the bias MLP,
  groups from the convolution shapes, ``conv_base`` / ``multi_query`` / layer scale / qkv bias
  from which keys exist, ``n0`` from the neck projection count); only ``qk_scale`` and the window
  are arguments;
* BatchNorm is explicit arithmetic (eval: running statistics; training: batch statistics, and the
  running statistics are updated in a returned dict); for half-precision inputs (bfloat16,
  float16) eval-mode BatchNorm is ``F.batch_norm`` after the rounded convolution output, which
  emulates the original's low-precision order (convolution, then BatchNorm, each rounded once);
* the relative position bias is evaluated from its MLP on every call, like the original outside
  deploy mode (the stored ``relative_coords_table`` is used at the construction window, as the
  original does; other windows get a freshly computed table);
* window partition, nearest interpolation and the quadrant split are index gathers built from the
  spec's formulas; attention is explicit ``softmax(q k^T * scale + bias) v``.

It doubles as the emulation of "the original's way" in ``benchmarks/eradio_benchmark.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

BN_EPS = 1e-5
LN_EPS = 1e-5
BN_MOMENTUM = 0.1


@dataclass
class RefOutput:
    """Result of :func:`reference_forward`.

    Attributes:
        neck: ``(B, F, H/s, W/s)``.
        levels: pre-downsample output of each level, ``(B, C_i, H/2**(i+2), W/2**(i+2))``.
        bn_updates: training mode only: new ``running_mean``/``running_var``/``num_batches_tracked``
            of every BatchNorm, keyed like the state dict.
    """

    neck: Tensor
    levels: List[Tensor]
    bn_updates: Dict[str, Tensor] = field(default_factory=dict)


class _Ctx:
    def __init__(self, sd: Dict[str, Tensor], training: bool) -> None:
        self.sd = sd
        self.training = training
        self.updates: Dict[str, Tensor] = {}

    def has(self, key: str) -> bool:
        return key in self.sd

    def __getitem__(self, key: str) -> Tensor:
        return self.sd[key]


# ------------------------------------------------------------------------------------------------
# primitive ops


def batch_norm(ctx: _Ctx, x: Tensor, prefix: str) -> Tensor:
    """Explicit BatchNorm2d over channels of ``x (B, C, H, W)``."""
    w, b = ctx[prefix + '.weight'], ctx[prefix + '.bias']
    if ctx.training:
        n = x.shape[0] * x.shape[2] * x.shape[3]
        mean = x.mean(dim=(0, 2, 3))
        var = ((x - mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))
        rm, rv = ctx[prefix + '.running_mean'], ctx[prefix + '.running_var']
        ctx.updates[prefix + '.running_mean'] = (1 - BN_MOMENTUM) * rm + BN_MOMENTUM * mean.detach()
        ctx.updates[prefix + '.running_var'] = ((1 - BN_MOMENTUM) * rv
                                                + BN_MOMENTUM * var.detach() * n / (n - 1))
        ctx.updates[prefix + '.num_batches_tracked'] = ctx[prefix + '.num_batches_tracked'] + 1
    else:
        mean, var = ctx[prefix + '.running_mean'], ctx[prefix + '.running_var']
        if x.dtype in (torch.bfloat16, torch.float16):  # the original's op, one rounding
            return F.batch_norm(x, mean, var, w, b, False, 0.0, BN_EPS)
    inv = 1.0 / torch.sqrt(var + BN_EPS)
    return (x - mean[None, :, None, None]) * (inv * w)[None, :, None, None] + b[None, :, None, None]


def conv_bn(ctx: _Ctx, x: Tensor, prefix: str, stride: int = 1) -> Tensor:
    """``Conv2d_BN``: padding ``k // 2``, groups inferred from the weight shape."""
    w = ctx[prefix + '.conv.weight']
    groups = x.shape[1] // w.shape[1]
    y = F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups)
    return batch_norm(ctx, y, prefix + '.bn')


def nearest_resize(x: Tensor, out_h: int, out_w: int) -> Tensor:
    """Legacy nearest: ``src = min(floor(o * (in / out)), in - 1)`` in float32 (spec §3.14)."""
    in_h, in_w = x.shape[-2:]

    def src(n_in: int, n_out: int) -> Tensor:
        s = torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out, dtype=torch.float32)
        o = torch.arange(n_out, dtype=torch.float32)
        return torch.clamp(torch.floor(o * s).long(), max=n_in - 1)

    return x[:, :, src(in_h, out_h)][:, :, :, src(in_w, out_w)]


def quadrant_split(x: Tensor) -> Tensor:
    """Spec §3.8, f = 2: output channel ``c*4 + a*2 + b`` at (y, x) = input (a*H/2+y, b*W/2+x)."""
    b, c, h, w = x.shape
    hh, hw = h // 2, w // 2
    chans = []
    for ch in range(c):
        for a in range(2):
            for bb in range(2):
                chans.append(x[:, ch, a * hh:(a + 1) * hh, bb * hw:(bb + 1) * hw])
    return torch.stack(chans, dim=1)


def _partition_index(hp: int, wp: int, w: int) -> Tensor:
    """Flat pixel index of token ``(window, t)`` of one sample (spec §3.10 ordering)."""
    nwx = wp // w
    nw = (hp // w) * nwx
    win = torch.arange(nw)
    wy, wx = win // nwx, win % nwx
    tok = torch.arange(w * w)
    py, px = tok // w, tok % w
    rows = wy[:, None] * w + py[None, :]
    cols = wx[:, None] * w + px[None, :]
    return rows * wp + cols  # (nW, w*w)


def partition(x: Tensor, w: int) -> Tuple[Tensor, Tensor, int, int]:
    """``(B, C, H, W) -> (B*nW, w*w, C)`` with reflect padding; returns the index for reverse."""
    b, c, h, wd = x.shape
    hp, wp = int(math.ceil(h / w)) * w, int(math.ceil(wd / w)) * w
    if hp != h or wp != wd:
        x = F.pad(x, (0, wp - wd, 0, hp - h), mode='reflect')
    idx = _partition_index(hp, wp, w)
    flat = x.reshape(b, c, hp * wp).transpose(1, 2)  # (B, HpWp, C)
    t = flat[:, idx.reshape(-1)]  # (B, nW*w*w, C)
    return t.reshape(b * idx.shape[0], w * w, c), idx, hp, wp


def reverse(t: Tensor, idx: Tensor, b: int, hp: int, wp: int, h: int, wd: int) -> Tensor:
    c = t.shape[-1]
    out = t.new_empty(b, hp * wp, c)
    out[:, idx.reshape(-1)] = t.reshape(b, -1, c)
    return out.transpose(1, 2).reshape(b, c, hp, wp)[:, :, :h, :wd]


def coords_table(w: int, p: int) -> Tensor:
    """``T'`` of spec §3.11 built entry by entry (float32)."""
    vals = []
    for a in range(2 * w - 1):
        row = []
        for bb in range(2 * w - 1):
            row.append([(a - w + 1) / (p - 1), (bb - w + 1) / (p - 1)])
        vals.append(row)
    t = torch.tensor(vals, dtype=torch.float32) * 8
    return torch.sign(t) * torch.log2(t.abs() + 1.0) / math.log2(8)


def relative_index(w: int) -> Tensor:
    rows = []
    for q in range(w * w):
        yq, xq = divmod(q, w)
        rows.append([(yq - k // w + w - 1) * (2 * w - 1) + (xq - k % w + w - 1)
                     for k in range(w * w)])
    return torch.tensor(rows, dtype=torch.long)


_INDEX_MEMO: Dict[int, Tensor] = {}


def position_bias(ctx: _Ctx, prefix: str, w: int) -> Tensor:
    """``(heads, w², w²)`` from the MLP, evaluated on every call."""
    stored = ctx[prefix + '.relative_coords_table']
    p = (stored.shape[1] + 1) // 2
    w1 = ctx[prefix + '.cpb_mlp.0.weight']
    table = stored[0] if w == p else coords_table(w, p)
    table = table.to(w1.dtype)
    hid = torch.relu(table @ w1.t() + ctx[prefix + '.cpb_mlp.0.bias'])
    m = hid @ ctx[prefix + '.cpb_mlp.2.weight'].t()  # (2w-1, 2w-1, heads)
    if w not in _INDEX_MEMO:
        _INDEX_MEMO[w] = relative_index(w)
    idx = _INDEX_MEMO[w]
    heads = m.shape[-1]
    g = m.reshape(-1, heads)[idx.reshape(-1)].reshape(w * w, w * w, heads).permute(2, 0, 1)
    return 16 * torch.sigmoid(g)


def cyclic(x: Tensor, offset: int) -> Tensor:
    """``out[y, x] = in[(y + offset) % H, (x + offset) % W]`` (a roll by ``-offset``)."""
    h, w = x.shape[-2:]
    rows = (torch.arange(h) + offset) % h
    cols = (torch.arange(w) + offset) % w
    return x[:, :, rows][:, :, :, cols]


def swin_mask(hp: int, wp: int, w: int, s: int) -> Tensor:
    """``(nW, w², w²)``: -100 where two tokens of a window lie in different regions."""

    def region(v: int, n: int) -> int:
        return 0 if v < n - w else (1 if v < n - s else 2)

    masks = []
    for wy in range(hp // w):
        for wx in range(wp // w):
            labels = [region(wy * w + t // w, hp) * 3 + region(wx * w + t % w, wp)
                      for t in range(w * w)]
            lab = torch.tensor(labels)
            masks.append(torch.where(lab[:, None] == lab[None, :], 0.0, -100.0))
    return torch.stack(masks)


def layer_norm(ctx: _Ctx, t: Tensor, prefix: str) -> Tensor:
    mu = t.mean(-1, keepdim=True)
    var = ((t - mu) ** 2).mean(-1, keepdim=True)
    return (t - mu) / torch.sqrt(var + LN_EPS) * ctx[prefix + '.weight'] + ctx[prefix + '.bias']


def window_attention(ctx: _Ctx, t: Tensor, prefix: str, heads: int, w: int,
                     qk_scale: Optional[float], mask: Optional[Tensor] = None) -> Tensor:
    n, L, c = t.shape
    d = c // heads
    qkv = t @ ctx[prefix + '.qkv.weight'].t()
    if ctx.has(prefix + '.qkv.bias'):
        qkv = qkv + ctx[prefix + '.qkv.bias']
    if qkv.shape[-1] == 3 * c:
        q = qkv[..., :c].reshape(n, L, heads, d).permute(0, 2, 1, 3)
        k = qkv[..., c:2 * c].reshape(n, L, heads, d).permute(0, 2, 1, 3)
        v = qkv[..., 2 * c:].reshape(n, L, heads, d).permute(0, 2, 1, 3)
    else:  # multi-query: q (C), shared k (d), v (d)
        q = qkv[..., :c].reshape(n, L, heads, d).permute(0, 2, 1, 3)
        k = qkv[..., c:c + d][:, None]
        v = qkv[..., c + d:][:, None]
    scale = qk_scale if qk_scale else d ** -0.5
    logits = (q @ k.transpose(-2, -1)) * scale
    logits = logits + position_bias(ctx, prefix + '.pos_emb_funct', w)[None]
    if mask is not None:
        nw = mask.shape[0]
        logits = (logits.reshape(n // nw, nw, heads, L, L) + mask[None, :, None]).reshape(
            n, heads, L, L)
    attn = logits.softmax(-1)
    out = (attn @ v).permute(0, 2, 1, 3).reshape(n, L, c)
    return out @ ctx[prefix + '.proj.weight'].t()


def attention_block(ctx: _Ctx, x: Tensor, prefix: str, w: int,
                    qk_scale: Optional[float], shift: bool = False) -> Tensor:
    s = x
    heads = ctx[prefix + '.attn.pos_emb_funct.cpb_mlp.2.weight'].shape[0]
    if ctx.has(prefix + '.pre_conv.conv.weight'):
        r = 1
        x = conv_bn(ctx, x, prefix + '.pre_conv') + s
    elif ctx.has(prefix + '.downsample_op.weight'):
        r = ctx[prefix + '.downsample_op.weight'].shape[-1]
        x = F.conv2d(x, ctx[prefix + '.downsample_op.weight'], ctx[prefix + '.downsample_op.bias'],
                     stride=r)
    else:
        r = 2
        x = conv_bn(ctx, F.avg_pool2d(x, r, r), prefix + '.downsample_mixer')
    b, c, h, wd = x.shape
    sh = w // 2 if shift and h > w and wd > w else 0
    if sh:
        x = cyclic(x, sh)
    t, idx, hp, wp = partition(x, w)
    mask = swin_mask(hp, wp, w, sh) if sh else None
    y = window_attention(ctx, layer_norm(ctx, t, prefix + '.norm1'), prefix + '.attn', heads, w,
                         qk_scale, mask)
    if ctx.has(prefix + '.gamma1'):
        y = y * ctx[prefix + '.gamma1']
    t = t + y
    hdn = F.gelu(layer_norm(ctx, t, prefix + '.norm2') @ ctx[prefix + '.mlp.fc1.weight'].t())
    y = hdn @ ctx[prefix + '.mlp.fc2.weight'].t()
    if ctx.has(prefix + '.gamma2'):
        y = y * ctx[prefix + '.gamma2']
    t = t + y
    x = reverse(t, idx, b, hp, wp, h, wd)
    if sh:
        x = cyclic(x, -sh)
    if r > 1:
        if ctx.has(prefix + '.upsample_op.weight'):
            x = F.conv_transpose2d(x, ctx[prefix + '.upsample_op.weight'],
                                   ctx[prefix + '.upsample_op.bias'], stride=r)
        else:
            x = nearest_resize(x, x.shape[-2] * r, x.shape[-1] * r)
            x = conv_bn(ctx, x, prefix + '.upsample_op')
    return 0.5 * x + 0.5 * s


def c2f(ctx: _Ctx, x: Tensor, prefix: str) -> Tensor:
    y = F.silu(conv_bn(ctx, x, prefix + '.cv1'))
    h = y.shape[1] // 2
    outs = [y[:, :h], y[:, h:]]
    k = 0
    z = outs[1]
    while ctx.has(f'{prefix}.m.{k}.cv1.conv.weight'):
        z = z + F.silu(conv_bn(ctx, F.silu(conv_bn(ctx, z, f'{prefix}.m.{k}.cv1')),
                               f'{prefix}.m.{k}.cv2'))
        outs.append(z)
        k += 1
    return F.silu(conv_bn(ctx, torch.cat(outs, 1), prefix + '.cv2'))


def downsample(ctx: _Ctx, x: Tensor, prefix: str) -> Tensor:
    if ctx[prefix + '.reduction.conv.weight'].shape[-1] == 1:
        return conv_bn(ctx, quadrant_split(x), prefix + '.reduction')
    return conv_bn(ctx, x, prefix + '.reduction', stride=2)


def _count(ctx: _Ctx, fmt: str) -> int:
    n = 0
    while any(k.startswith(fmt.format(n) + '.') for k in ctx.sd):
        n += 1
    return n


def default_window(sd: Dict[str, Tensor]) -> int:
    """Construction window ``p``, read from a stored coordinate table."""
    for k, v in sd.items():
        if k.endswith('pos_emb_funct.relative_coords_table'):
            return (v.shape[1] + 1) // 2
    raise ValueError('no relative_coords_table in the state dict')


def reference_forward(sd: Dict[str, Tensor], x: Tensor, window: Optional[int] = None,
                      qk_scale: Optional[float] = None, training: bool = False,
                      use_shift: bool = False) -> RefOutput:
    """E-RADIO ``forward_features`` on backbone weights ``sd`` (keys without ``base_model.``).

    Args:
        sd: backbone state dict (float32 or the working dtype).
        x: conditioned image ``(B, 3, H, W)``, sides multiples of 32.
        window: window side (default: the construction window).
        qk_scale: ``model_kwargs['qk_scale']`` if set.
        training: BatchNorm with batch statistics (running statistics returned updated).
        use_shift: ``model_kwargs['use_shift']`` (shifted windows in odd blocks).
    """
    if x.shape[-1] % 32 or x.shape[-2] % 32:
        raise ValueError('E-RADIO needs input dimensions divisible by 32')
    ctx = _Ctx(sd, training)
    w = window or default_window(sd)
    x = torch.relu(conv_bn(ctx, x, 'patch_embed.conv_down.0', stride=2))
    x = torch.relu(conv_bn(ctx, x, 'patch_embed.conv_down.2', stride=2))
    pres: List[Tensor] = []
    for i in range(4):
        pre_key = f'levels.{i}'
        if i < 2:
            x = c2f(ctx, x, pre_key + '.blocks')
        else:
            nblocks = _count(ctx, pre_key + '.blocks.{}')
            ratios = []
            k = 0
            while ctx.has(f'{pre_key}.blocks.0.attention_blocks.{k}.norm1.weight'):
                ratios.append(2 if not ctx.has(
                    f'{pre_key}.blocks.0.attention_blocks.{k}.pre_conv.conv.weight') else 1)
                k += 1
            m = max(ratios) * w
            h0, w0 = x.shape[-2:]
            hp, wp = int(math.ceil(h0 / m)) * m, int(math.ceil(w0 / m)) * m
            if (hp, wp) != (h0, w0):
                x = nearest_resize(x, hp, wp)
            for j in range(nblocks):
                for k in range(len(ratios)):
                    x = attention_block(ctx, x, f'{pre_key}.blocks.{j}.attention_blocks.{k}', w,
                                        qk_scale, shift=use_shift and j % 2 == 1)
            if (hp, wp) != (h0, w0):
                x = nearest_resize(x, h0, w0)
        pres.append(x)
        if i < 3:
            x = downsample(ctx, x, pre_key + '.downsample')
    nproj = _count(ctx, 'high_res_neck.neck_features_proj.{}')
    n0 = 4 - nproj
    neck = None
    for k in range(nproj):
        p = f'high_res_neck.neck_features_proj.{k}'
        y = pres[n0 + k]
        u = 2 ** k
        if u > 1:
            y = nearest_resize(y, y.shape[-2] * u, y.shape[-1] * u)
        y = F.conv2d(y, ctx[p + '.conv1.weight'], ctx[p + '.conv1.bias'], padding=1,
                     groups=y.shape[1])
        y = batch_norm(ctx, y, p + '.norm')
        y = F.conv2d(y, ctx[p + '.conv2.weight'], ctx[p + '.conv2.bias'])
        neck = y if neck is None else neck + y
    assert neck is not None
    return RefOutput(neck=neck, levels=pres, bn_updates=ctx.updates)


def optimal_window_reference(d: int, max_window_size: int = 16) -> int:
    """Spec §7.1 by brute force over candidate windows (descending)."""
    n = d // 32
    for ws in range(max_window_size, 0, -1):
        if n and n % ws == 0:
            return ws
    raise ValueError('side below 32')
