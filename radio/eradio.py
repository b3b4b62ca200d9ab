"""E-RADIO backbone: the efficient hybrid (CNN + windowed attention) member of the RADIO family.

A four-level network: a strided convolutional stem, two convolutional levels
of YOLOv8-style CSP blocks (``C2f``), two levels of windowed attention with a continuous
(Swin-v2 style) relative position bias, and a "high-resolution neck" that sums projections of the
last levels into one dense feature map. References: RADIO (Ranzinger et al., "AM-RADIO:
Agglomerative Vision Foundation Model", CVPR 2024, https://arxiv.org/abs/2312.06709),
FasterViT (https://arxiv.org/abs/2306.06189), Swin Transformer V2
(https://arxiv.org/abs/2111.09883) and YOLOv8 (https://github.com/ultralytics/ultralytics).

Written from the specification; attribute names follow the released checkpoint keys, so
``load_state_dict`` works without remapping once :func:`filter_checkpoint_state_dict` has removed
the stale caches that the original stores.

Differences from the original, all deliberate:

* In eval mode, for float32 (and float64) weights, BatchNorm is folded into the preceding
  convolution lazily (computed in at least float32, cached and re-validated against the
  parameters' identity, storage pointer and version counter on every call); half-precision
  weights (bfloat16, float16) are not folded, because rounding the folded weights to the low
  dtype is less precise than the original's convolution followed by BatchNorm. The relative
  position bias is computed from its MLP once per (window size, dtype, device) and cached. There
  is no stale stored bias buffer. Caveat: in-place edits made through ``.data`` (an alias with
  its own version counter) do not bump the parameter's version counter, so the caches cannot
  see them; call :meth:`ERadioBackbone.clear_caches` after such edits.
* The window size is a per-call argument (``forward(x, window_size=...)``); the backbone's
  ``window_size`` attribute is only the default, so concurrent calls never interfere.
* Errors are ``ValueError``/``TypeError`` with actionable messages; logging replaces prints.
"""

from __future__ import annotations

import logging
import math
import numbers
import operator
from dataclasses import dataclass
from functools import lru_cache
from typing import (Any, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Set, Tuple,
                    Union)

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .input_checks import check_image_batch, is_tracing, resolve_indices

__all__ = [
    'ERadioSpec',
    'ERadioBackbone',
    'eradio_spec',
    'is_eradio',
    'list_eradio_models',
    'optimal_window_size',
    'filter_checkpoint_state_dict',
]

_logger = logging.getLogger(__name__)

_BN_EPS = 1e-5
_LN_EPS = 1e-5
_MIN_INPUT_STEP = 32  # total stride of the deepest level
_BIAS_CACHE_LIMIT = 8  # distinct window sizes whose position bias stays cached per module

WindowArg = Union[int, Literal['optimal'], None]
#: How the attention window of a forward call is chosen (see :attr:`ERadioBackbone.window_policy`).
WINDOW_POLICIES = ('fixed', 'auto')

# ------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ERadioSpec:
    """Everything structural about an E-RADIO backbone.

    Attributes:
        name: registered architecture name (``args.model``), aliases resolved
            (``'eradio'`` -> ``'eradio_large_fullres_ws16'``).
        depths: blocks per level (levels 0, 1 are ``C2f`` repeats, levels 2, 3 attention blocks).
        num_heads: attention heads per level (only levels 2 and 3 use them).
        window_size: construction ("pretrained") window side ``p`` of levels 2 and 3.
        dim: width ``C_0`` of level 0; level ``i`` has ``dim * 2**i`` channels.
        in_dim: width of the first stem convolution.
        sr_ratios: subsample ratios of the attention blocks of each level (one attention block
            per entry); levels 0 and 1 carry ``(1,)`` and ignore it.
        conv_base: ``r > 1`` blocks reduce/expand with strided (transposed) convolutions instead
            of average pooling / nearest upsampling plus 1x1 ``Conv2d_BN``.
        cpb_mlp_hidden: hidden width of the position-bias MLP.
        conv_groups_ratio: groups of the ``r == 1`` pre-convolution: ``max(1, int(ratio * C))``.
        neck_start_stage: first level ``n0`` feeding the neck.
        full_features_head_dim: neck width ``F``.
        qkv_bias: ``qkv`` projection has a bias.
        qk_scale: attention scale override (``None``: ``head_dim ** -0.5``).
        layer_scale: initial value of per-channel ``gamma1``/``gamma2`` (``None``: no layer scale;
            ``0.0`` is a zero layer scale, as the original tests ``is not None``).
        multi_query: one shared key/value head.
        downsample_shuffle: the between-level downsample is a quadrant split + 1x1 ``Conv2d_BN``.
        use_shift: Swin-style cyclic window shift in the odd-numbered blocks of levels 2 and 3 (the
            original's numerics for it are unverified).
    """

    name: str
    depths: Tuple[int, int, int, int]
    num_heads: Tuple[int, int, int, int]
    window_size: int
    dim: int
    in_dim: int
    sr_ratios: Tuple[Tuple[int, ...], ...]
    conv_base: bool
    cpb_mlp_hidden: int
    conv_groups_ratio: float
    neck_start_stage: int
    full_features_head_dim: int
    qkv_bias: bool = False
    qk_scale: Optional[float] = None
    layer_scale: Optional[float] = None
    multi_query: bool = False
    downsample_shuffle: bool = False
    use_shift: bool = False

    @property
    def widths(self) -> Tuple[int, int, int, int]:
        """Channel width ``C_i = dim * 2**i`` of each level."""
        return tuple(self.dim * 2 ** i for i in range(4))  # type: ignore[return-value]

    @property
    def neck_stride(self) -> int:
        """Output stride ``2 ** (n0 + 2)`` of the neck."""
        return 2 ** (self.neck_start_stage + 2)


# Hyperparameters fixed by each registered function: model_kwargs may repeat them
# only with the same value. `settable` are constructor defaults that model_kwargs may change.
_COMMON_FIXED: Dict[str, Any] = {
    'mlp_ratio': 4, 'use_swiglu': False, 'yolo_arch': True, 'shuffle_down': False,
    'use_neck': True,
}
_REGISTERED: Dict[str, Dict[str, Any]] = {
    'eradio_large_fullres_ws16': dict(
        depths=(3, 3, 5, 5), num_heads=(2, 4, 8, 16), window_size=16, dim=192, in_dim=64,
        neck_start_stage=2, full_features_head_dim=1536,
        fixed={'conv_base': True},
        settable={'cpb_mlp_hidden': 512, 'conv_groups_ratio': 0, 'downsample_shuffle': False}),
    'eradio_xxxtiny': dict(
        depths=(1, 3, 4, 5), num_heads=(2, 4, 8, 16), window_size=16, dim=32, in_dim=32,
        neck_start_stage=2, full_features_head_dim=256,
        fixed={'conv_base': True},
        settable={'cpb_mlp_hidden': 512, 'conv_groups_ratio': 0, 'downsample_shuffle': False}),
    'eradio_xxxtiny_8x_ws12': dict(
        depths=(1, 3, 4, 5), num_heads=(2, 4, 8, 16), window_size=12, dim=32, in_dim=32,
        neck_start_stage=2, full_features_head_dim=256,
        fixed={'cpb_mlp_hidden': 64, 'conv_groups_ratio': 1, 'downsample_shuffle': False},
        settable={'conv_base': False}),
    'eradio_xxxtiny_8x_ws16': dict(
        depths=(1, 3, 4, 5), num_heads=(2, 4, 8, 16), window_size=16, dim=32, in_dim=32,
        neck_start_stage=1, full_features_head_dim=256,
        fixed={'cpb_mlp_hidden': 64, 'conv_groups_ratio': 1, 'downsample_shuffle': False},
        settable={'conv_base': False}),
}
_ALIASES: Dict[str, str] = {'eradio': 'eradio_large_fullres_ws16'}
_SR_RATIOS: Tuple[Tuple[int, ...], ...] = ((1,), (1,), (2, 1), (1,))

# Keyword arguments that are accepted and ignored: training-only rates, timm factory plumbing, and
# constructor switches without effect on the hub outputs.
_IGNORED_KWARGS = frozenset({
    'drop_path_rate', 'drop_path', 'drop_rate', 'drop_block_rate', 'attn_drop_rate',
    'proj_drop_rate', 'weight_init', 'pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir',
    'pretrained', 'num_classes', 'global_pool', 'bn_momentum', 'bn_eps', 'scriptable',
    'checkpoint_path', 'layer_scale_conv', 'layer_norm_last', 'verbose', 'max_depth',
    'drop_uniform', 'return_full_features', 'img_size', 'resolution',
})
# Settable on every registered name.
_GENERAL_SETTABLE: Dict[str, Any] = {
    'qkv_bias': False, 'qk_scale': None, 'layer_scale': None, 'multi_query': False,
    'use_shift': False, 'norm_layer': None, 'in_chans': 3,
}
# Unknown model_kwargs keys already reported (one warning per key and process).
_WARNED_UNKNOWN_KWARGS: Set[str] = set()
# Fixed structural names (listed in error messages).
_STRUCTURAL = ('depths', 'num_heads', 'window_size', 'dim', 'in_dim', 'sr_ratio',
               'neck_start_stage', 'full_features_head_dim')


def list_eradio_models() -> List[str]:
    """Registered E-RADIO names (aliases included), sorted."""
    return sorted(set(_REGISTERED) | set(_ALIASES))


def is_eradio(name: str) -> bool:
    """Whether ``name`` (an ``args.model`` value) is a registered E-RADIO architecture."""
    return isinstance(name, str) and (name in _REGISTERED or name in _ALIASES)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def eradio_spec(name: str, model_kwargs: Optional[Mapping[str, Any]] = None) -> ERadioSpec:
    """The :class:`ERadioSpec` of a registered architecture with checkpoint ``model_kwargs``.

    Args:
        name: ``args.model``: one of :func:`list_eradio_models`.
        model_kwargs: ``args.model_kwargs``. Training-only and factory keywords (``drop_path_rate``,
            ``weight_init``, ...) are ignored; unknown keywords are ignored too, like the
            original's constructor does (spec §1.3), with one logged warning per key and
            process; hyperparameters fixed by the registered function (``dim``, ``depths``,
            ``neck_start_stage``, ...) are accepted only with the fixed value.
            ``layer_scale`` follows the original's ``is not None`` test: any number, ``0``
            included, adds ``gamma1``/``gamma2`` (initialized to it).

    Returns:
        The frozen spec.

    Raises:
        ValueError: unknown name, a conflicting fixed hyperparameter, or an unsupported value
            (``conv_groups_ratio=-1``, a non-LayerNorm ``norm_layer``, ``in_chans != 3``, a
            ``layer_scale`` that is not a number).
    """
    if not isinstance(name, str) or not is_eradio(name):
        raise ValueError(f'unknown E-RADIO architecture {name!r}; known: {list_eradio_models()}')
    canonical = _ALIASES.get(name, name)
    reg = _REGISTERED[canonical]
    kwargs = dict(model_kwargs or {})
    fixed: Dict[str, Any] = dict(_COMMON_FIXED)
    fixed.update(reg['fixed'])
    fixed.update({'depths': reg['depths'], 'num_heads': reg['num_heads'],
                  'window_size': reg['window_size'], 'dim': reg['dim'], 'in_dim': reg['in_dim'],
                  'neck_start_stage': reg['neck_start_stage'],
                  'full_features_head_dim': reg['full_features_head_dim']})
    settable: Dict[str, Any] = dict(_GENERAL_SETTABLE)
    settable.update(reg['settable'])
    values: Dict[str, Any] = dict(settable)
    for key, value in kwargs.items():
        if key in _IGNORED_KWARGS:
            _logger.debug('E-RADIO %s: ignoring model_kwargs[%r]=%r', canonical, key, value)
            continue
        if key == 'sr_ratio':
            if _as_tuple(value) not in ((1, 1, (2, 1), 1), _SR_RATIOS):
                raise ValueError(f'model_kwargs sr_ratio={value!r} conflicts with {canonical}, '
                                 'which fixes [1, 1, [2, 1], 1]; remove it')
            continue
        if key in fixed:
            want = fixed[key]
            got = _as_tuple(value)
            if key == 'window_size' and isinstance(got, tuple):
                got = tuple(g for g in got if g is not None)
                ok = all(g == want or g == (want, want) for g in got)
            else:
                ok = got == want
            if not ok:
                raise ValueError(
                    f'model_kwargs {key}={value!r} conflicts with {canonical}, which fixes '
                    f'{key}={want!r}; remove it from model_kwargs')
            continue
        if key not in settable:
            if key not in _WARNED_UNKNOWN_KWARGS:
                _WARNED_UNKNOWN_KWARGS.add(key)
                _logger.warning('E-RADIO %s: ignoring unknown model_kwargs key %r (value %r); the '
                                "original's constructor ignores unknown keywords too",
                                canonical, key, value)
            continue
        values[key] = value
    for key in ('conv_base', 'cpb_mlp_hidden', 'conv_groups_ratio', 'downsample_shuffle'):
        values.setdefault(key, fixed.get(key))
    if values['norm_layer'] not in (None, nn.LayerNorm, 'LayerNorm', 'layernorm'):
        raise ValueError(f'model_kwargs norm_layer={values["norm_layer"]!r} is not supported; '
                         'only torch.nn.LayerNorm (the default)')
    if values['in_chans'] not in (None, 3):
        raise ValueError(f'model_kwargs in_chans={values["in_chans"]!r}: E-RADIO takes 3 channels')
    ratio = float(values['conv_groups_ratio'])
    if ratio < 0:
        raise ValueError(f'conv_groups_ratio={ratio} (identity pre-convolution and level-wide '
                         'windowing) is not supported; use a ratio >= 0')
    hidden = int(values['cpb_mlp_hidden'])
    if hidden < 1:
        raise ValueError(f'cpb_mlp_hidden must be >= 1, got {hidden}')
    for key in ('qkv_bias', 'multi_query', 'conv_base', 'downsample_shuffle', 'use_shift'):
        if key in values and not isinstance(values[key], (bool, int)):
            raise ValueError(f'model_kwargs {key} must be a bool, got {values[key]!r}')
    layer_scale = values['layer_scale']
    if layer_scale is not None and (isinstance(layer_scale, bool)
                                    or not isinstance(layer_scale, numbers.Real)):
        raise ValueError(f'model_kwargs layer_scale={layer_scale!r} must be a number (the initial '
                         'value of gamma1/gamma2, 0 included) or None (no layer scale)')
    return ERadioSpec(
        name=canonical,
        depths=tuple(reg['depths']),
        num_heads=tuple(reg['num_heads']),
        window_size=int(reg['window_size']),
        dim=int(reg['dim']),
        in_dim=int(reg['in_dim']),
        sr_ratios=_SR_RATIOS,
        conv_base=bool(values['conv_base']),
        cpb_mlp_hidden=hidden,
        conv_groups_ratio=ratio,
        neck_start_stage=int(reg['neck_start_stage']),
        full_features_head_dim=int(reg['full_features_head_dim']),
        qkv_bias=bool(values['qkv_bias']),
        qk_scale=float(values['qk_scale']) if values['qk_scale'] else None,
        layer_scale=None if layer_scale is None else float(layer_scale),
        multi_query=bool(values['multi_query']),
        downsample_shuffle=bool(values['downsample_shuffle']),
        use_shift=bool(values['use_shift']),
    )


# ------------------------------------------------------------------------------------------------
# Window rules


def _as_int(value: Any, what: str) -> int:
    """``value`` as a Python int: ints, numpy integers, 0-d integer tensors and integral floats.

    Raises:
        TypeError: a bool, a non-number, a tensor with more than one element, or a non-integral
            number (``224.5``, ``nan``).
    """
    if isinstance(value, bool) or type(value).__name__ in ('bool_', 'bool'):
        raise TypeError(f'{what} must be an integer, got the bool {value!r}')
    if isinstance(value, Tensor):
        if value.dim() != 0:
            raise TypeError(f'{what} must be an integer or a 0-d tensor, got a tensor of shape '
                            f'{tuple(value.shape)}')
        if value.dtype == torch.bool:
            raise TypeError(f'{what} must be an integer, got a bool tensor')
        value = value.item()
    try:
        return operator.index(value)
    except TypeError:
        pass
    if isinstance(value, numbers.Real):
        f = float(value)
        if math.isfinite(f) and f.is_integer():
            return int(f)
        raise TypeError(f'{what} must be an integer, got {value!r}, which is not integral')
    raise TypeError(f'{what} must be an integer, got {type(value).__name__} {value!r}')


def optimal_window_size(image_hw: Union[int, Sequence[int]], max_window_size: int = 16) -> int:
    """The window the original's ``set_optimal_window_size`` picks.

    ``d`` = the shorter side (or ``image_hw`` itself when it is a number), ``n = floor(d / 32)``,
    and the result is the largest divisor of ``n`` that is ``<= max_window_size``.

    Args:
        image_hw: ``(H, W)`` in pixels (a list, tuple or ``torch.Size``), or a single side. Each
            side, and ``max_window_size``, may be an int, a numpy integer, a 0-d integer tensor or
            an integral float (``224.0``).
        max_window_size: upper bound for the window side (>= 1).

    Returns:
        The window side.

    Raises:
        ValueError: an empty ``image_hw``, a side that is not positive or is below 32 pixels, or
            ``max_window_size < 1``.
        TypeError: a side or ``max_window_size`` that is not an integer (a bool, a string, a
            non-integral float such as ``224.5``, a tensor with several elements).
    """
    if isinstance(image_hw, (list, tuple)):
        if not image_hw:
            raise ValueError('image_hw must not be empty; pass (H, W) or a single side')
        sides = [_as_int(v, 'image side') for v in image_hw]
    else:
        sides = [_as_int(image_hw, 'image_hw (an (H, W) tuple or a single side)')]
    ws_max = _as_int(max_window_size, 'max_window_size')
    if ws_max < 1:
        raise ValueError(f'max_window_size must be >= 1, got {ws_max}')
    d = min(sides)
    if d < 1:
        raise ValueError(f'image sides must be positive numbers of pixels, got {sides}')
    n = d // _MIN_INPUT_STEP
    if n < 1:
        raise ValueError(f'image side {d} is below the E-RADIO minimum of {_MIN_INPUT_STEP} '
                         f'pixels; use sides of at least {_MIN_INPUT_STEP}')
    return max(k for k in range(1, min(n, ws_max) + 1) if n % k == 0)


def _check_window(ws: Any) -> int:
    try:
        w = _as_int(ws, 'window size')
    except TypeError:
        raise TypeError(f"window size must be an int >= 1 or 'optimal' (numpy integers, 0-d "
                        f"integer tensors and integral floats are accepted), got {ws!r}") from None
    if w < 1:
        raise ValueError(f'window size must be >= 1, got {w}')
    return w


# ------------------------------------------------------------------------------------------------
# Cached derived tensors


def _tensor_key(tensors: Iterable[Optional[Tensor]]) -> Tuple[Any, ...]:
    """Identity + in-place version of each tensor: changes whenever a weight could have changed."""
    return tuple((None if t is None else (id(t), t.data_ptr(), t._version, t.dtype, t.device))
                 for t in tensors)


def _needs_autograd(tensors: Iterable[Optional[Tensor]]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _uncached(tensors: Iterable[Optional[Tensor]]) -> bool:
    """Compute derived weights directly (no cache): autograd needs them, or a tracer / compiler
    is running (caches keyed on storage pointers mean nothing to fake tensors)."""
    if is_tracing():
        return True
    return _needs_autograd(tensors)


class _WindowCell:
    """The backbone's default window side, shared (not copied) by the submodules that report it.

    One mutable value object: :attr:`ERadioBackbone.window_size` writes it and the read-only
    ``window_size`` properties of the transformer levels, attention blocks and position-bias
    modules read it, so they cannot drift apart.
    """

    __slots__ = ('value',)

    def __init__(self, value: int) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f'_WindowCell({self.value})'

    def __deepcopy__(self, memo: Dict[int, Any]) -> '_WindowCell':
        # deepcopy shares one copy among the copied modules through ``memo``
        return memo.setdefault(id(self), _WindowCell(self.value))


#: Parameter dtypes whose eval-mode BatchNorm is folded into the preceding convolution. In half
#: precision the folded weights would be rounded to the low dtype, which loses more than the
#: original's order (convolution, then BatchNorm, each rounded once), so those stay unfolded.
_FOLD_DTYPES = (torch.float32, torch.float64)


def _folds(dtype: torch.dtype) -> bool:
    """Whether eval-mode BatchNorm is folded for parameters of ``dtype``."""
    return dtype in _FOLD_DTYPES


def _fold_bn(weight: Tensor, bias: Optional[Tensor], bn: nn.BatchNorm2d) -> Tuple[Tensor, Tensor]:
    """Fold eval-mode ``bn`` into a conv ``(weight, bias)``: math in at least float32, module dtype
    out (only used for the dtypes of :data:`_FOLD_DTYPES`)."""
    ct = torch.promote_types(weight.dtype, torch.float32)
    scale = bn.weight.to(ct) / torch.sqrt(bn.running_var.to(ct) + bn.eps)
    w = weight.to(ct) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b0 = bias.to(ct) if bias is not None else torch.zeros_like(scale)
    b = (b0 - bn.running_mean.to(ct)) * scale + bn.bias.to(ct)
    w = w.to(weight.dtype).contiguous(memory_format=torch.channels_last)
    return w, b.to(weight.dtype)


class _FoldedConvMixin:
    """Shared eval-mode cache of a convolution's BatchNorm-folded weight and bias.

    The cache key is each source tensor's ``id``, storage pointer, version counter, dtype and
    device: replacing a parameter, ``load_state_dict``, ``.to()`` and in-place edits made with
    autograd tracking (``p.mul_()`` under ``torch.no_grad()``) all invalidate it. In-place edits
    through ``p.data`` (or any alias that does not share the version counter) are invisible to it,
    exactly like to torch's own version-counter checks: call :meth:`clear_cache` after those.
    """

    _fold_cache: Optional[Tuple[Tuple[Any, ...], Tensor, Tensor]]

    def _fold_sources(self) -> Tuple[Optional[Tensor], ...]:
        raise NotImplementedError

    def _compute_fold(self) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _folded(self) -> Tuple[Tensor, Tensor]:
        sources = self._fold_sources()
        if _uncached(sources):
            return self._compute_fold()  # differentiable, never cached
        key = _tensor_key(sources)
        cache = self._fold_cache
        if cache is not None and cache[0] == key:
            return cache[1], cache[2]
        with torch.inference_mode(False), torch.no_grad():
            w, b = self._compute_fold()
        self._fold_cache = (key, w, b)
        return w, b

    def clear_cache(self) -> None:
        """Drop the folded weights (recomputed at the next eval forward).

        Needed after in-place edits through ``.data``, which the cache key cannot detect.
        """
        self._fold_cache = None


# ------------------------------------------------------------------------------------------------
# Convolutional building blocks


class Conv2dBN(_FoldedConvMixin, nn.Module):
    """``Conv2d`` (no bias) -> ``BatchNorm2d`` -> optional activation.

    In eval mode with float32/float64 weights the BatchNorm is folded into the convolution
    (cached); with half-precision weights the convolution is followed by BatchNorm with the
    running statistics, as in the original. In training mode it is a plain BatchNorm that
    normalizes with batch statistics and updates its running statistics.
    Keys: ``conv.weight``, ``bn.{weight,bias,running_mean,running_var,num_batches_tracked}``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, act: Optional[str] = None, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        fk = {'device': device, 'dtype': dtype}
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False,
                              **fk)
        self.bn = nn.BatchNorm2d(out_ch, eps=_BN_EPS, **fk)
        self.act = act
        self._fold_cache = None

    def _fold_sources(self) -> Tuple[Optional[Tensor], ...]:
        bn = self.bn
        return (self.conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)

    def _compute_fold(self) -> Tuple[Tensor, Tensor]:
        return _fold_bn(self.conv.weight, None, self.bn)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in, H, W) -> (B, out, H', W')``."""
        if self.training or not _folds(self.conv.weight.dtype):
            y = self.bn(self.conv(x))  # eval mode: F.batch_norm with the running statistics
        else:
            w, b = self._folded()
            c = self.conv
            y = F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)
        if self.act == 'silu':
            return F.silu(y)
        if self.act == 'relu':
            return F.relu(y)
        return y


class Bottleneck(nn.Module):
    """``x + Conv3x3(Conv3x3(x))`` with SiLU convolutions."""

    def __init__(self, ch: int, device: Any = None, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.cv1 = Conv2dBN(ch, ch, 3, 1, 1, act='silu', device=device, dtype=dtype)
        self.cv2 = Conv2dBN(ch, ch, 3, 1, 1, act='silu', device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8 CSP block with ``n`` bottlenecks."""

    def __init__(self, ch: int, n: int, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.hidden = int(0.5 * ch)
        h = self.hidden
        self.cv1 = Conv2dBN(ch, 2 * h, 1, act='silu', device=device, dtype=dtype)
        self.cv2 = Conv2dBN((2 + n) * h, ch, 1, act='silu', device=device, dtype=dtype)
        self.m = nn.ModuleList(Bottleneck(h, device=device, dtype=dtype) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        y = self.cv1(x)
        parts = [y]  # y0 and y1 are its channel halves, concatenated first in that order
        z = y[:, self.hidden:]
        for m in self.m:
            z = m(z)
            parts.append(z)
        return self.cv2(torch.cat(parts, dim=1))


def _quadrant_split(x: Tensor, f: int) -> Tensor:
    """The original's "pixel unshuffle": stacks the ``f x f`` quadrants.

    ``(B, C, H, W) -> (B, C*f*f, H/f, W/f)``; channel ``c*f*f + a*f + b`` holds quadrant ``(a, b)``.
    """
    b, c, h, w = x.shape
    x = x.reshape(b, c, f, h // f, f, w // f).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(b, c * f * f, h // f, w // f)


class PatchEmbed(nn.Module):
    """Stem: two stride-2 ``Conv2d_BN`` + ReLU; output stride 4."""

    def __init__(self, in_dim: int, dim: int, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.conv_down = nn.ModuleList([
            Conv2dBN(3, in_dim, 3, 2, 1, device=device, dtype=dtype), nn.ReLU(),
            Conv2dBN(in_dim, dim, 3, 2, 1, device=device, dtype=dtype), nn.ReLU()])

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, dim, H/4, W/4)``."""
        for layer in self.conv_down:
            x = layer(x)
        return x


class Downsample(nn.Module):
    """Between-level downsample ``C -> 2C``."""

    def __init__(self, ch: int, shuffle: bool, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.shuffle = shuffle
        if shuffle:
            self.reduction = Conv2dBN(4 * ch, 2 * ch, 1, device=device, dtype=dtype)
        else:
            self.reduction = Conv2dBN(ch, 2 * ch, 3, 2, 1, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, 2C, H/2, W/2)``."""
        return self.reduction(_quadrant_split(x, 2) if self.shuffle else x)


# ------------------------------------------------------------------------------------------------
# Attention building blocks


@lru_cache(maxsize=64)
def _log_coords_table(window: int, pretrained: int) -> Tensor:
    """Log-spaced relative coordinates ``T'`` (2w-1, 2w-1, 2), float32.

    Normalization uses the pretrained window ``p`` whatever the current window ``w`` is.
    """
    with torch.inference_mode(False), torch.no_grad():  # memoized: never an inference tensor
        r = torch.arange(-(window - 1), window, dtype=torch.float32) / max(pretrained - 1, 1)
        r = r * 8
        rows, cols = torch.meshgrid(r, r, indexing='ij')
        t = torch.stack([rows, cols], dim=-1)
        return torch.sign(t) * torch.log2(torch.abs(t) + 1.0) / 3.0


@lru_cache(maxsize=64)
def _relative_index(window: int) -> Tensor:
    """Flat index ``(w², w²)`` into the ``(2w-1)²`` bias table."""
    with torch.inference_mode(False):
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing='ij')
        ys, xs = ys.reshape(-1), xs.reshape(-1)
        dy = ys[:, None] - ys[None, :] + window - 1
        dx = xs[:, None] - xs[None, :] + window - 1
        return (dy * (2 * window - 1) + dx).contiguous()


@lru_cache(maxsize=32)
def _shift_mask(hp: int, wp: int, window: int, shift: int) -> Tensor:
    """Swin attention mask ``(nW, w², w²)``: -100 between tokens of different regions.

    The regions are the 3 x 3 split of the ``hp x wp`` map at ``-window`` and ``-shift`` from the
    bottom/right edges.
    """
    with torch.inference_mode(False):
        label = torch.zeros(1, 1, hp, wp)
        cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
        n = 0
        for hs in cuts:
            for ws in cuts:
                label[:, :, hs, ws] = n
                n += 1
        win, _, _ = _window_partition(label, window)  # (nW, w², 1)
        win = win.squeeze(-1)
        diff = win[:, :, None] != win[:, None, :]
        return torch.zeros(diff.shape).masked_fill(diff, -100.0)


class PosEmbMLPSwinv2D(nn.Module):
    """Continuous relative position bias, evaluable for any window size.

    The index table and the coordinate tables of other windows are pure functions of ``(w, p)``
    (memoized, not buffers). In eval mode the bias of each window size is cached per
    (dtype, device) and re-validated against the MLP weights and the table (identity, storage
    pointer and version counter: in-place edits through ``.data`` are not seen, call
    :meth:`clear_cache`); in training mode it is recomputed on every call.

    Coordinate table at the construction window ``p`` (spec §7.2): until this module has run at
    another window, the *loaded* ``relative_coords_table`` is used (a half-precision checkpoint
    stores it rounded). The first forward at a window ``w != p`` replaces the buffer by the exact
    float32 table (cast to the buffer's dtype), as the original rebuilds its table then, so a
    later return to ``p`` uses the rebuilt table. Loading a state dict restores the loaded
    table; a state dict without the table fills it with the exact construction table (the
    original builds it at construction and loads non-strictly). Under a tracer or compiler the
    buffer is never replaced.

    Keys: ``cpb_mlp.0.weight (hid, 2)``, ``cpb_mlp.0.bias (hid)``, ``cpb_mlp.2.weight (heads, hid)``
    and the persistent buffer ``relative_coords_table (1, 2p-1, 2p-1, 2)`` (optional on load).

    Attributes:
        window_size: read-only ``[w, w]``, the default window of the owning backbone (the
            original's attribute; ``[p, p]`` for a module used on its own).
    """

    _window_cell: Optional[_WindowCell] = None

    def __init__(self, pretrained_window: int, num_heads: int, hidden: int, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        fk = {'device': device, 'dtype': dtype}
        self.pretrained_window = pretrained_window
        self.num_heads = num_heads
        self.cpb_mlp = nn.Sequential(nn.Linear(2, hidden, bias=True, **fk), nn.ReLU(),
                                     nn.Linear(hidden, num_heads, bias=False, **fk))
        # Persistent on purpose: the original evaluates the MLP on the *loaded* table at the
        # construction window, and half-precision checkpoints store it rounded (the difference
        # is ~5e-5 relative in the features). Other windows use a fresh float32 table.
        table = torch.empty(1, 2 * pretrained_window - 1, 2 * pretrained_window - 1, 2, **fk)
        self.register_buffer('relative_coords_table', table)
        if table.device.type != 'meta':
            self.reset_coords_table()
        self._table_rebuilt = False  # set by the first forward at a window other than p
        self._bias_cache: Dict[int, Tuple[Tuple[Any, ...], Tensor]] = {}

    @property
    def window_size(self) -> List[int]:
        """``[w, w]``: the owning backbone's default window (read-only; see the class doc)."""
        w = self._window_cell.value if self._window_cell is not None else self.pretrained_window
        return [w, w]

    def reset_coords_table(self) -> None:
        """Fill ``relative_coords_table`` with the exact table of the construction window."""
        p = self.pretrained_window
        with torch.no_grad():
            self.relative_coords_table.copy_(_log_coords_table(p, p).unsqueeze(0))

    def _exact_table(self, like: Tensor) -> Tensor:
        """A new ``(1, 2p-1, 2p-1, 2)`` exact table with the dtype and device of ``like``."""
        p = self.pretrained_window
        with torch.inference_mode(False), torch.no_grad():
            return _log_coords_table(p, p).unsqueeze(0).to(device=like.device, dtype=like.dtype,
                                                           copy=True)

    def _rebuild_coords_table(self) -> None:
        # A new tensor, never an in-place write: the loaded buffer may be a memory-mapped file.
        self.relative_coords_table = self._exact_table(self.relative_coords_table)
        self._table_rebuilt = True

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str,
                              local_metadata: Dict[str, Any], strict: bool,
                              missing_keys: List[str], unexpected_keys: List[str],
                              error_msgs: List[str]) -> None:
        key = prefix + 'relative_coords_table'
        filled = key not in state_dict and any(k.startswith(prefix) for k in state_dict)
        if filled:  # optional key: like BatchNorm's num_batches_tracked, supply the default
            like = state_dict.get(prefix + 'cpb_mlp.0.weight')
            if not isinstance(like, Tensor):
                like = self.relative_coords_table
            state_dict[key] = self._exact_table(like)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if filled or key in state_dict:
            self._table_rebuilt = filled
            self._bias_cache = {}

    def _table(self, window: int) -> Tensor:
        w0 = self.cpb_mlp[0].weight
        if window == self.pretrained_window:
            return self.relative_coords_table[0].to(w0.dtype)
        return _log_coords_table(window, self.pretrained_window).to(w0.device, w0.dtype)

    def compute_bias(self, window: int) -> Tensor:
        """The bias ``(1, heads, w², w²)`` for window ``w``, straight from the MLP."""
        w0 = self.cpb_mlp[0].weight
        # (2w-1, 2w-1, heads); the sigmoid is elementwise, so it can precede the gather
        m = torch.sigmoid(self.cpb_mlp(self._table(window))) * 16
        idx = _relative_index(window).to(w0.device)
        n = window * window
        bias = m.reshape(-1, self.num_heads)[idx.reshape(-1)].reshape(n, n, self.num_heads)
        return bias.permute(2, 0, 1).unsqueeze(0).contiguous()

    def forward(self, window: int) -> Tensor:
        """The bias ``(1, heads, w², w²)`` (cached in eval mode).

        The first call at a window other than the construction window rebuilds the coordinate
        table of the construction window (see the class doc).
        """
        if window != self.pretrained_window and not self._table_rebuilt and not is_tracing():
            self._rebuild_coords_table()
        params = tuple(self.cpb_mlp.parameters()) + (self.relative_coords_table,)
        if self.training or _uncached(params):
            return self.compute_bias(window)
        key = _tensor_key(params)
        hit = self._bias_cache.get(window)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.inference_mode(False), torch.no_grad():
            bias = self.compute_bias(window)
        if len(self._bias_cache) >= _BIAS_CACHE_LIMIT:
            self._bias_cache = {}
        self._bias_cache[window] = (key, bias)
        return bias

    def clear_cache(self) -> None:
        """Drop the cached biases (needed after in-place edits through ``.data``)."""
        self._bias_cache = {}


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with the continuous position bias."""

    def __init__(self, dim: int, num_heads: int, spec: ERadioSpec, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        fk = {'device': device, 'dtype': dtype}
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.multi_query = spec.multi_query
        self.scale = spec.qk_scale if spec.qk_scale else self.head_dim ** -0.5
        out = dim + 2 * self.head_dim if spec.multi_query else 3 * dim
        self.qkv = nn.Linear(dim, out, bias=spec.qkv_bias, **fk)
        self.proj = nn.Linear(dim, dim, bias=False, **fk)
        self.pos_emb_funct = PosEmbMLPSwinv2D(spec.window_size, num_heads, spec.cpb_mlp_hidden,
                                              **fk)

    def forward(self, t: Tensor, window: int, mask: Optional[Tensor] = None) -> Tensor:
        """``(N, w², C) -> (N, w², C)`` for ``N`` windows of side ``window``.

        ``mask`` (optional, shifted windows): ``(nW, w², w²)`` additive, windows sample-major.
        """
        n, L, c = t.shape
        h, d = self.num_heads, self.head_dim
        qkv = self.qkv(t)
        if self.multi_query:
            q = qkv[..., :c].reshape(n, L, h, d).transpose(1, 2)  # (N, h, L, d)
            k = qkv[..., c:c + d].unsqueeze(1).expand(n, h, L, d)
            v = qkv[..., c + d:].unsqueeze(1).expand(n, h, L, d)
        else:
            q, k, v = qkv.reshape(n, L, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.pos_emb_funct(window)  # (1, h, L, L)
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias + mask.to(bias.dtype).unsqueeze(1)).repeat(n // nw, 1, 1, 1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(o.transpose(1, 2).reshape(n, L, c))


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))``, hidden ``4C``, no biases."""

    def __init__(self, dim: int, device: Any = None, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim, bias=False, device=device, dtype=dtype)
        self.fc2 = nn.Linear(4 * dim, dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _window_partition(x: Tensor, w: int) -> Tuple[Tensor, int, int]:
    """``(B, C, H, W) -> (B*nW, w², C)``; reflect-pads to multiples of ``w``."""
    b, c, h, wd = x.shape
    hp, wp = -(-h // w) * w, -(-wd // w) * w
    if (hp, wp) != (h, wd):
        x = F.pad(x, (0, wp - wd, 0, hp - h), mode='reflect')
    x = x.reshape(b, c, hp // w, w, wp // w, w).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(-1, w * w, c), hp, wp


def _window_reverse(t: Tensor, w: int, b: int, hp: int, wp: int, h: int, wd: int) -> Tensor:
    """Inverse of :func:`_window_partition`, cropped to ``(h, wd)``: ``-> (B, C, h, wd)``."""
    c = t.shape[-1]
    x = t.reshape(b, hp // w, wp // w, w, w, c).permute(0, 5, 1, 3, 2, 4)
    x = x.reshape(b, c, hp, wp)
    return x[:, :, :h, :wd] if (hp, wp) != (h, wd) else x


class AttentionBlock(nn.Module):
    """One windowed-attention block with subsample ratio ``r`` (the original's
    ``GRAAttentionBlock``).

    Attributes:
        window_size: read-only, the owning backbone's default window (the construction window
            for a block used on its own); the window of a call is the ``window`` argument.
    """

    _window_cell: Optional[_WindowCell] = None

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, spec: ERadioSpec,
                 shift: bool = False, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        fk = {'device': device, 'dtype': dtype}
        self.sr_ratio = sr_ratio
        self.shift = shift
        self.conv_base = spec.conv_base
        self._construction_window = spec.window_size
        if sr_ratio == 1:
            groups = max(1, int(spec.conv_groups_ratio * dim))
            self.pre_conv = Conv2dBN(dim, dim, 3, 1, 1, groups=groups, **fk)
        elif spec.conv_base:
            self.downsample_op = nn.Conv2d(dim, dim, sr_ratio, sr_ratio, bias=True, **fk)
            self.upsample_op = nn.ConvTranspose2d(dim, dim, sr_ratio, sr_ratio, bias=True, **fk)
        else:
            self.downsample_mixer = Conv2dBN(dim, dim, 1, **fk)
            self.upsample_op = Conv2dBN(dim, dim, 1, **fk)
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS, **fk)
        self.attn = WindowAttention(dim, num_heads, spec, **fk)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS, **fk)
        self.mlp = Mlp(dim, **fk)
        if spec.layer_scale is not None:
            self.gamma1 = nn.Parameter(torch.full((dim,), spec.layer_scale, **fk))
            self.gamma2 = nn.Parameter(torch.full((dim,), spec.layer_scale, **fk))
        else:
            self.gamma1 = None
            self.gamma2 = None

    @property
    def window_size(self) -> int:
        """The owning backbone's default window side (read-only)."""
        cell = self._window_cell
        return cell.value if cell is not None else self._construction_window

    def forward(self, x: Tensor, window: int) -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``; ``H, W`` multiples of ``r * window``."""
        s = x
        r = self.sr_ratio
        if r == 1:
            x = self.pre_conv(x) + s
        elif self.conv_base:
            x = self.downsample_op(x)
        else:
            x = self.downsample_mixer(F.avg_pool2d(x, r, r))
        b, _, h, wd = x.shape
        shift = window // 2 if self.shift and h > window and wd > window else 0
        mask = None
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(2, 3))
        t, hp, wp = _window_partition(x, window)
        if shift:
            mask = _shift_mask(hp, wp, window, shift).to(x.device)
        y = self.attn(self.norm1(t), window, mask)
        t = t + (y * self.gamma1 if self.gamma1 is not None else y)
        y = self.mlp(self.norm2(t))
        t = t + (y * self.gamma2 if self.gamma2 is not None else y)
        x = _window_reverse(t, window, b, hp, wp, h, wd)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(2, 3))
        if r > 1:
            if self.conv_base:
                x = self.upsample_op(x)
            elif self.training:
                # BatchNorm statistics must see the upsampled map (unbiased variance count).
                x = self.upsample_op(F.interpolate(x, scale_factor=r, mode='nearest'))
            else:
                # A 1x1 conv with eval-mode BatchNorm (folded or not) acts per pixel, so it
                # commutes with pixel replication: cheaper first.
                x = F.interpolate(self.upsample_op(x), scale_factor=r, mode='nearest')
        if x.shape[-2:] != s.shape[-2:]:
            dh, dw = s.shape[-2] - x.shape[-2], s.shape[-1] - x.shape[-1]
            if dh > 0 or dw > 0:
                x = F.pad(x, (0, max(dw, 0), 0, max(dh, 0)), mode='reflect')
            x = x[:, :, :s.shape[-2], :s.shape[-1]]
        # (x + s) * 0.5 rounds exactly like 0.5 * x + 0.5 * s (scaling by 2**-1 is exact).
        return (x + s) * 0.5


class MultiResolutionAttention(nn.Module):
    """A sequence of attention blocks, one per subsample ratio of the level."""

    def __init__(self, dim: int, num_heads: int, sr_ratios: Sequence[int], spec: ERadioSpec,
                 shift: bool = False, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            AttentionBlock(dim, num_heads, r, spec, shift, device=device, dtype=dtype)
            for r in sr_ratios)

    def forward(self, x: Tensor, window: int) -> Tensor:
        for blk in self.attention_blocks:
            x = blk(x, window)
        return x


# ------------------------------------------------------------------------------------------------
# Levels and neck


class ConvLevel(nn.Module):
    """Levels 0 and 1: ``C2f`` then the downsample; returns ``(downsampled, pre)``."""

    def __init__(self, dim: int, depth: int, spec: ERadioSpec, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.blocks = C2f(dim, depth, device=device, dtype=dtype)
        self.downsample = Downsample(dim, spec.downsample_shuffle, device=device, dtype=dtype)

    def forward(self, x: Tensor, window: int,
                last: bool = False) -> Tuple[Optional[Tensor], Tensor]:
        """``(B, C, H, W) -> ((B, 2C, H/2, W/2) or None when last, (B, C, H, W))``."""
        pre = self.blocks(x)
        return (None if last else self.downsample(pre)), pre


class TransformerLevel(nn.Module):
    """Levels 2 and 3: windowed attention blocks (the original's ``ERADIOLayer``).

    Attributes:
        window_size: read-only, the owning backbone's default window (the construction window
            for a level used on its own); the window of a call is the ``window`` argument.
    """

    _window_cell: Optional[_WindowCell] = None

    def __init__(self, dim: int, depth: int, num_heads: int, sr_ratios: Sequence[int],
                 downsample: bool, spec: ERadioSpec, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.sr_ratios = tuple(sr_ratios)
        self._construction_window = spec.window_size
        self.blocks = nn.ModuleList(
            MultiResolutionAttention(dim, num_heads, sr_ratios, spec,
                                     shift=spec.use_shift and j % 2 == 1, device=device,
                                     dtype=dtype)
            for j in range(depth))
        self.downsample = (Downsample(dim, spec.downsample_shuffle, device=device, dtype=dtype)
                           if downsample else None)

    @property
    def window_size(self) -> int:
        """The owning backbone's default window side (read-only)."""
        cell = self._window_cell
        return cell.value if cell is not None else self._construction_window

    def forward(self, x: Tensor, window: int,
                last: bool = False) -> Tuple[Optional[Tensor], Tensor]:
        """``(B, C, H, W) -> (next-level input or None, pre (B, C, H, W))``."""
        h, w = x.shape[-2:]
        m = max(self.sr_ratios) * window
        hp, wp = -(-h // m) * m, -(-w // m) * m
        if (hp, wp) != (h, w):
            x = F.interpolate(x, size=(hp, wp), mode='nearest')
        for blk in self.blocks:
            x = blk(x, window)
        if (hp, wp) != (h, w):
            x = F.interpolate(x, size=(h, w), mode='nearest')
        if self.downsample is None or last:
            return None, x
        return self.downsample(x), x


class NeckProjection(_FoldedConvMixin, nn.Module):
    """``upsample(u) -> depthwise 3x3 (bias) -> BatchNorm -> 1x1 conv (bias)``."""

    def __init__(self, in_ch: int, out_ch: int, upsample: int, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        fk = {'device': device, 'dtype': dtype}
        self.upsample_factor = upsample
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, 1, 1, groups=in_ch, bias=True, **fk)
        self.norm = nn.BatchNorm2d(in_ch, eps=_BN_EPS, **fk)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 1, bias=True, **fk)
        self._fold_cache = None

    def _fold_sources(self) -> Tuple[Optional[Tensor], ...]:
        n = self.norm
        return (self.conv1.weight, self.conv1.bias, n.weight, n.bias, n.running_mean,
                n.running_var)

    def _compute_fold(self) -> Tuple[Tensor, Tensor]:
        return _fold_bn(self.conv1.weight, self.conv1.bias, self.norm)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_i, h, w) -> (B, F, u*h, u*w)``."""
        if self.upsample_factor > 1:
            x = F.interpolate(x, scale_factor=self.upsample_factor, mode='nearest')
        if self.training or not _folds(self.conv1.weight.dtype):
            x = self.norm(self.conv1(x))
        else:
            w, b = self._folded()
            x = F.conv2d(x, w, b, 1, 1, 1, self.conv1.groups)
        return self.conv2(x)


class HiResNeck(nn.Module):
    """Sum of projected level outputs ``i >= n0`` at the resolution of level ``n0``."""

    def __init__(self, widths: Sequence[int], start: int, out_dim: int, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.start = start
        projections: List[nn.Module] = []
        for i in range(start, len(widths)):
            u = 2 ** (i - start)  # the original's 1, 1, 2, ... for start 0 is a defect
            if u == 1 and widths[i] == out_dim:
                projections.append(nn.Identity())
            else:
                projections.append(NeckProjection(widths[i], out_dim, u, device=device,
                                                  dtype=dtype))
        self.neck_features_proj = nn.ModuleList(projections)

    def forward(self, pres: Sequence[Tensor]) -> Tensor:
        """``pres[i]`` for every level ``i`` (only ``i >= n0`` read) -> ``(B, F, h0, w0)``."""
        out = self.neck_features_proj[0](pres[self.start])
        for k in range(1, len(self.neck_features_proj)):
            out = out + self.neck_features_proj[k](pres[self.start + k])
        return out


# ------------------------------------------------------------------------------------------------
# The backbone

_STALE_SUFFIXES = ('.relative_bias', '.relative_position_index')


def filter_checkpoint_state_dict(
        state_dict: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor], List[str]]:
    """Split a checkpoint's backbone sub-dict (``base_model.`` removed) for :class:`ERadioBackbone`.

    Removes what the original stores but this implementation derives or never uses: two of the
    position-bias buffers of every attention block (``...pos_emb_funct.relative_bias``, a stale
    cache, and ``relative_position_index``, a constant table), the final norm ``norm.*`` and the
    classifier ``head.*`` (never part of the hub outputs). ``relative_coords_table`` is
    kept: the original evaluates its MLP on the loaded table at the construction window.

    Args:
        state_dict: backbone keys without the ``base_model.`` prefix.

    Returns:
        ``(kept, dropped_keys)``.
    """
    kept: Dict[str, Tensor] = {}
    dropped: List[str] = []
    for k, v in state_dict.items():
        stale = '.pos_emb_funct.' in k and k.endswith(_STALE_SUFFIXES)
        if stale or k.startswith(('norm.', 'head.')):
            dropped.append(k)
        else:
            kept[k] = v
    return kept, dropped


class ERadioBackbone(nn.Module):
    """The E-RADIO backbone as the RADIO hub uses it: conditioned image -> neck features.

    Attributes:
        spec: the :class:`ERadioSpec`.
        stride: neck output stride (16 for ``e-radio_v2``).
        embed_dim: neck width ``F``.
        min_input_step: input sides must be multiples of this (32).
        window_size: default window side for forward calls (the construction window until
            :meth:`change_window_size` / :meth:`set_optimal_window_size`).
        window_policy: ``'fixed'`` uses ``window_size``; ``'auto'`` picks
            :func:`optimal_window_size` of each call's input (with ``max_window_size=16``).
        num_pyramid_levels: 5 (four levels and the neck).
        pyramid_strides: ``(4, 8, 16, 32, stride)``.
        pyramid_channels: ``(C0, C1, C2, C3, F)``.

    Numerics: in eval mode, float32/float64 models fold BatchNorm into the convolutions;
    bfloat16/float16 models run convolution then BatchNorm (more precise in the low dtype, and the
    original's order). Position biases are computed from their MLPs and cached per window.

    Cache caveat: the folded weights and cached biases are re-validated on every call against
    the identity, storage pointer and version counter of their source tensors. In-place edits
    through ``.data`` do not bump the version counter, so after ``p.data.mul_(...)`` or
    ``p.data.copy_(...)`` on a BatchNorm, convolution or position-bias MLP tensor, call
    :meth:`clear_caches` (or edit under ``torch.no_grad()`` without ``.data``); otherwise eval
    outputs silently keep the old values.
    """

    min_input_step: int = _MIN_INPUT_STEP
    num_pyramid_levels: int = 5

    def __init__(self, spec: ERadioSpec, device: Any = None, dtype: Optional[torch.dtype] = None,
                 *, window_policy: Literal['fixed', 'auto'] = 'fixed') -> None:
        super().__init__()
        if not isinstance(spec, ERadioSpec):
            raise TypeError(f'spec must be an ERadioSpec (see eradio_spec()), got {type(spec)}')
        fk = {'device': device, 'dtype': dtype}
        self.spec = spec
        widths = spec.widths
        self.patch_embed = PatchEmbed(spec.in_dim, spec.dim, **fk)
        self.levels = nn.ModuleList([
            ConvLevel(widths[0], spec.depths[0], spec, **fk),
            ConvLevel(widths[1], spec.depths[1], spec, **fk),
            TransformerLevel(widths[2], spec.depths[2], spec.num_heads[2], spec.sr_ratios[2],
                             True, spec, **fk),
            TransformerLevel(widths[3], spec.depths[3], spec.num_heads[3], spec.sr_ratios[3],
                             False, spec, **fk),
        ])
        self.high_res_neck = HiResNeck(widths, spec.neck_start_stage,
                                       spec.full_features_head_dim, **fk)
        self.stride = spec.neck_stride
        self.embed_dim = spec.full_features_head_dim
        self._window_cell = _WindowCell(spec.window_size)
        for m in self.modules():  # the original's per-module window_size, as read-only views
            if isinstance(m, (TransformerLevel, AttentionBlock, PosEmbMLPSwinv2D)):
                m._window_cell = self._window_cell
        self.window_policy = window_policy  # validated by the property setter
        self.pyramid_strides: Tuple[int, ...] = (4, 8, 16, 32, self.stride)
        self.pyramid_channels: Tuple[int, ...] = tuple(widths) + (self.embed_dim,)

    # -- window size ------------------------------------------------------------------------

    @property
    def window_size(self) -> int:
        """Default window side of forward calls (see :meth:`change_window_size`).

        The transformer levels, attention blocks and position-bias modules report the same value
        through their read-only ``window_size`` (``[w, w]`` for the position-bias modules), as the
        original's ``change_window_size`` sets it on them.
        """
        return self._window_cell.value

    @window_size.setter
    def window_size(self, value: int) -> None:
        self._window_cell.value = _check_window(value)

    @property
    def window_policy(self) -> str:
        """``'fixed'`` (use :attr:`window_size`) or ``'auto'`` (the optimal window of each call's input)."""
        return self._window_policy

    @window_policy.setter
    def window_policy(self, value: str) -> None:
        if value not in WINDOW_POLICIES:
            raise ValueError(f"window_policy must be one of {WINDOW_POLICIES}, got {value!r}")
        self._window_policy = value

    def change_window_size(self, new_window_size: int) -> None:
        """Set the default window side of the attention levels.

        The position-bias normalization keeps using the construction window; the bias for the new
        window is computed from the MLP at the next forward (never a stale stored buffer). The
        first forward at a window other than the construction window ``p`` also makes every
        position-bias module rebuild its ``p`` coordinate table (spec §7.2), so coming back to
        ``p`` later uses the exact float32 table, not the loaded one. The ``window_size`` views
        of the levels, attention blocks and position-bias modules follow.

        Args:
            new_window_size: window side >= 1 (an int, numpy integer, 0-d integer tensor or
                integral float).

        Raises:
            TypeError: not an integer. ValueError: below 1.
        """
        ws = _check_window(new_window_size)
        _logger.info('Setting E-RADIO window size to %d', ws)
        self.window_size = ws

    def set_optimal_window_size(self, image_dim: Union[int, Sequence[int]],
                                max_window_size: int = 16) -> None:
        """``change_window_size(optimal_window_size(image_dim, max_window_size))``.

        Args:
            image_dim: ``(H, W)`` (the shorter side decides) or one side, in pixels; ints,
                numpy integers, 0-d integer tensors or integral floats.
            max_window_size: upper bound of the window side.

        Raises:
            ValueError: a side that is not positive or is below 32 pixels, ``max_window_size < 1``.
            TypeError: a side or bound that is not an integer (``224.5``, a bool, a string).
        """
        self.change_window_size(optimal_window_size(image_dim, max_window_size))

    def _resolve_window(self, window_size: WindowArg, hw: Tuple[int, int]) -> int:
        if window_size is None:
            if self.window_policy == 'auto':
                return optimal_window_size(hw)
            return self.window_size
        if isinstance(window_size, str) and window_size == 'optimal':
            return optimal_window_size(hw)
        return _check_window(window_size)

    # -- modes and caches -------------------------------------------------------------------

    def switch_to_deploy(self) -> None:
        """Kept for API compatibility: BatchNorm folding and bias caching are automatic in eval."""
        _logger.debug('switch_to_deploy() is a no-op: folding happens automatically in eval mode')

    def clear_caches(self) -> None:
        """Drop every folded weight and cached position bias.

        The caches are validated on every call against each source tensor's identity, storage
        pointer and version counter, which covers ``load_state_dict``, ``.to()``, replacing a
        parameter and in-place edits such as ``p.mul_(2)`` under ``torch.no_grad()``. Edits
        through ``p.data`` (``p.data.mul_(2)``, ``p.data.copy_(...)``) do **not** bump the version
        counter and so are invisible to the caches (the same limitation as torch's own
        version-counter checks): call this method after such edits, or the eval outputs keep
        using the old folded weights and position biases.
        """
        for m in self.modules():
            if isinstance(m, (_FoldedConvMixin, PosEmbMLPSwinv2D)):
                m.clear_cache()

    def reset_non_persistent_buffers(self) -> None:
        """Loader hook after ``load_state_dict(assign=True)``: there are no derived buffers to
        rebuild (index tables are memoized functions), so this only drops the caches."""
        self.clear_caches()

    # -- forward ----------------------------------------------------------------------------

    def _check_input(self, x: Tensor) -> Tuple[int, int]:
        check_image_batch(x, self.min_input_step)
        return int(x.shape[-2]), int(x.shape[-1])

    def _run_levels(self, x: Tensor, window: int, last_level: int) -> List[Tensor]:
        # Channels-last activations: the convolutions (half the time at 512x512) run markedly
        # faster in NHWC with oneDNN / cuDNN; results are equal to float rounding.
        x = x.to(self.levels[0].blocks.cv1.conv.weight.dtype)
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        pres: List[Tensor] = []
        for i in range(last_level + 1):
            nxt, pre = self.levels[i](x, window, last=(i == last_level))
            pres.append(pre)
            if nxt is not None:
                x = nxt
        return pres

    def forward(self, x: Tensor, window_size: WindowArg = None) -> Tensor:
        """Neck features of a conditioned image.

        Args:
            x: ``(B, 3, H, W)``, ``H`` and ``W`` multiples of 32; cast to the module dtype.
            window_size: window side for this call only (an int, or ``'optimal'`` for
                :func:`optimal_window_size` of ``(H, W)``); ``None`` follows ``window_policy``.
                No module state is changed.

        Returns:
            ``(B, F, H/stride, W/stride)``.
        """
        hw = self._check_input(x)
        window = self._resolve_window(window_size, hw)
        pres = self._run_levels(x, window, 3)
        return self.high_res_neck(pres).contiguous()

    def forward_pyramid(self, x: Tensor, indices: Union[None, int, Sequence[int]] = None,
                        stop_early: bool = False, window_size: WindowArg = None) -> List[Tensor]:
        """Multi-scale feature maps.

        Output ``k`` for ``k in 0..3`` is level ``k``'s pre-downsample map
        ``(B, C_k, H/2**(k+2), W/2**(k+2))``; output 4 is the neck ``(B, F, H/stride, W/stride)``.

        Args:
            x: ``(B, 3, H, W)`` conditioned image, sides multiples of 32.
            indices: ``None`` (all five), an int ``n`` (the last ``n``), or a sequence of indices
                in ``-5..4`` (negative counts from the end). Outputs are in ascending order, each once
                (the rule of every ``forward_intermediates``).
            stop_early: do not run levels after the deepest selected one. The neck consumes
                levels ``n0..3``, so selecting it (index 4) always runs all levels. With
                ``stop_early=False`` the whole network (neck included) runs, like ``forward``.
            window_size: as in :meth:`forward`.

        Returns:
            The selected maps, NCHW.

        Raises:
            ValueError / TypeError: bad indices or input size.
        """
        take = resolve_indices(indices, self.num_pyramid_levels)
        hw = self._check_input(x)
        window = self._resolve_window(window_size, hw)
        want_neck = 4 in take or not stop_early
        last = 3 if want_neck else max(take)
        pres = self._run_levels(x, window, last)
        neck = self.high_res_neck(pres) if want_neck else None
        outs = [neck if i == 4 else pres[i] for i in take]
        return [t.contiguous() for t in outs if t is not None]

    def extra_repr(self) -> str:
        return (f'name={self.spec.name}, window_size={self.window_size}, '
                f'policy={self.window_policy}, stride={self.stride}, embed_dim={self.embed_dim}')
