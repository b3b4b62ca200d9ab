"""Tests of the E-RADIO backbone (``radio/eradio.py``) against an independent reference.

Weights come from ``tests/eradio_writer.py`` (official checkpoint layout, random BatchNorm
statistics, noisy stale bias caches); numbers are compared with ``tests/eradio_reference.py`` and
with the conformance fixture produced by the original implementation.
"""

from __future__ import annotations

import argparse
import os
import threading
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch

from radio.eradio import (
    ERadioBackbone,
    ERadioSpec,
    eradio_spec,
    filter_checkpoint_state_dict,
    is_eradio,
    list_eradio_models,
    optimal_window_size,
)
from eradio_reference import optimal_window_reference, reference_forward
from eradio_writer import make_eradio_checkpoint
from radio_test_utils import CONFORMANCE_CASES, require_shared

TINY = ['eradio_xxxtiny', 'eradio_xxxtiny_8x_ws12', 'eradio_xxxtiny_8x_ws16']
LARGE = ['eradio_large_fullres_ws16', 'eradio']
RUN_LARGE = bool(os.environ.get('RADIO_RUN_SLOW') or os.environ.get('CI'))  # every configuration runs in CI
FIXTURE = CONFORMANCE_CASES


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    # The tensors here are tiny: extra intra-op threads only add spinning on a shared CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def build(written, *, model_kwargs=None, meta: bool = False, **kw) -> ERadioBackbone:
    spec = eradio_spec(written.args.model, written.args.model_kwargs
                       if model_kwargs is None else model_kwargs)
    kept, _ = filter_checkpoint_state_dict(written.backbone)
    if meta:
        with torch.device('meta'):
            m = ERadioBackbone(spec, **kw)
        m.load_state_dict(kept, assign=True)
        for mod in m.modules():
            if hasattr(mod, 'reset_non_persistent_buffers'):
                mod.reset_non_persistent_buffers()
    else:
        m = ERadioBackbone(spec, **kw)
        m.load_state_dict(kept)
    return m.eval()


_CACHE: Dict[Tuple, object] = {}


def written(name: str = 'eradio_xxxtiny', kwargs=None, **kw):
    key = (name, repr(kwargs), repr(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = make_eradio_checkpoint(None, name, kwargs, **kw)
    return _CACHE[key]


def image(b: int = 2, h: int = 64, w: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------
# configuration


def test_registry_and_parameter_counts():
    assert list_eradio_models() == sorted(TINY + LARGE)
    assert is_eradio('eradio') and not is_eradio('vit_base_patch16_224')
    expected = {'eradio_large_fullres_ws16': 389_598_784, 'eradio': 389_598_784,
                'eradio_xxxtiny': 10_255_008, 'eradio_xxxtiny_8x_ws12': 6_258_016,
                'eradio_xxxtiny_8x_ws16': 6_275_424}
    entries = {'eradio': 434, 'eradio_large_fullres_ws16': 434, 'eradio_xxxtiny': 372,
               'eradio_xxxtiny_8x_ws12': 404, 'eradio_xxxtiny_8x_ws16': 413}
    for name, count in expected.items():
        spec = eradio_spec(name, {'return_full_features': True})
        with torch.device('meta'):
            m = ERadioBackbone(spec)
        assert sum(p.numel() for p in m.parameters()) == count
        blocks = sum(1 for k in m.state_dict() if k.endswith('relative_coords_table'))
        # The checkpoint has two more buffers per attention block (filtered out).
        assert len(m.state_dict()) + 2 * blocks == entries[name]
    s = eradio_spec('eradio', {})
    assert s.name == 'eradio_large_fullres_ws16' and s.neck_stride == 16
    assert eradio_spec('eradio_xxxtiny_8x_ws16', {}).neck_stride == 8


@pytest.mark.parametrize('name', TINY)
def test_state_dict_keys_match_checkpoint(name):
    w = written(name)
    m = build(w, meta=True)
    kept, dropped = filter_checkpoint_state_dict(w.backbone)
    assert set(m.state_dict()) == set(kept)
    assert all(k.endswith(('relative_bias', 'relative_position_index')) for k in dropped)
    for k, v in m.state_dict().items():
        assert v.shape == kept[k].shape, k


def test_spec_kwargs_validation():
    s = eradio_spec('eradio_xxxtiny', {'return_full_features': True, 'drop_path_rate': 0.1,
                                       'conv_groups_ratio': 1, 'cpb_mlp_hidden': 64,
                                       'multi_query': True, 'dim': 32})
    assert (s.conv_groups_ratio, s.cpb_mlp_hidden, s.multi_query, s.dim) == (1.0, 64, True, 32)
    with pytest.raises(ValueError, match='dim=64 conflicts'):
        eradio_spec('eradio_xxxtiny', {'dim': 64})
    with pytest.raises(ValueError, match='cpb_mlp_hidden=512 conflicts'):
        eradio_spec('eradio_xxxtiny_8x_ws12', {'cpb_mlp_hidden': 512})
    with pytest.raises(ValueError, match='conv_base=False conflicts'):
        eradio_spec('eradio_xxxtiny', {'conv_base': False})
    assert eradio_spec('eradio_xxxtiny_8x_ws12', {'conv_base': True}).conv_base
    with pytest.raises(ValueError, match="unknown E-RADIO architecture 'eradio_small'"):
        eradio_spec('eradio_small', {})
    assert eradio_spec('eradio_xxxtiny', {'use_shift': True}).use_shift
    with pytest.raises(TypeError, match='ERadioSpec'):
        ERadioBackbone('eradio_xxxtiny')  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# numerics against the independent reference


@pytest.mark.parametrize('name', TINY + [pytest.param(n, marks=pytest.mark.skipif(
    not RUN_LARGE, reason='large weights take ~15 s; set RADIO_RUN_SLOW=1')) for n in LARGE])
def test_eval_matches_reference(name):
    w = written(name)
    m = build(w)
    # default (construction) window, then a small per-call window on the transposed size
    for x, ws in ((image(2, 64, 96), None), (image(2, 96, 64, seed=1), 2)):
        with torch.no_grad():
            out = m(x, window_size=ws)
        ref = reference_forward(w.backbone, x, window=ws)
        assert out.shape == (2, m.embed_dim, x.shape[2] // m.stride, x.shape[3] // m.stride)
        assert rel_err(out, ref.neck) <= 1e-5


@pytest.mark.parametrize('kwargs', [
    {'multi_query': True, 'conv_groups_ratio': 1, 'cpb_mlp_hidden': 64},
    {'qkv_bias': True, 'layer_scale': 0.5, 'qk_scale': 0.3, 'downsample_shuffle': True},
])
def test_model_kwargs_variants_match_reference(kwargs):
    w = written('eradio_xxxtiny', dict(kwargs, return_full_features=True))
    m = build(w)
    x = image(2, 64, 64)
    with torch.no_grad():
        out = m(x, window_size=2)
    ref = reference_forward(w.backbone, x, window=2, qk_scale=kwargs.get('qk_scale'))
    assert rel_err(out, ref.neck) <= 1e-5


def test_conv_base_variant_of_8x_matches_reference():
    w = written('eradio_xxxtiny_8x_ws12', {'conv_base': True})
    m = build(w)
    x = image(1, 64, 96)
    with torch.no_grad():
        out = m(x, window_size=2)
    assert rel_err(out, reference_forward(w.backbone, x, window=2).neck) <= 1e-5


@pytest.mark.parametrize('name', TINY)
def test_training_mode_matches_reference_and_updates_bn(name):
    w = written(name)
    m = build(w).train()
    x = image(2, 64, 64, seed=3)
    out = m(x, window_size=2)
    ref = reference_forward(w.backbone, x, window=2, training=True)
    assert rel_err(out, ref.neck) <= 1e-5
    sd = m.state_dict()
    for k, v in ref.bn_updates.items():
        if k.endswith('num_batches_tracked'):
            assert int(sd[k]) == int(v) == 1001, k
        else:
            assert rel_err(sd[k], v) <= 1e-5, k
            assert not torch.equal(sd[k], w.backbone[k]), k
    # eval refolds with the new statistics
    m.eval()
    updated = dict(w.backbone)
    updated.update(ref.bn_updates)
    with torch.no_grad():
        out_eval = m(x, window_size=2)
    assert rel_err(out_eval, reference_forward(updated, x, window=2).neck) <= 1e-5


def test_float16_stored_checkpoint_uses_stored_coordinate_table():
    w = written('eradio_xxxtiny_8x_ws12', store_dtype=torch.float16)
    m = build(w)
    x = image(1, 64, 64, seed=4)
    with torch.no_grad():
        out = m(x)
    assert rel_err(out, reference_forward(w.backbone, x).neck) <= 1e-5


def test_stale_bias_buffer_is_irrelevant():
    a = make_eradio_checkpoint(None, 'eradio_xxxtiny_8x_ws16', stale_bias='noise', seed=5)
    b = make_eradio_checkpoint(None, 'eradio_xxxtiny_8x_ws16', stale_bias='zeros', seed=5)
    x = image(1, 64, 64)
    with torch.no_grad():
        ya, yb = build(a)(x, window_size=2), build(b)(x, window_size=2)
    assert torch.equal(ya, yb)


# ------------------------------------------------------------------------------------------------
# conformance fixture of the original


def _fixture_or_skip() -> Path:
    ckpt = FIXTURE / 'ckpt' / 'eradio_tiny.pth.tar'
    require_shared(ckpt)
    return ckpt


@pytest.mark.parametrize('case', ['fwd_96x160', 'set_window_224'])
def test_conformance_fixture(case):
    path = _fixture_or_skip()
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    args, sd = ckpt['args'], ckpt['state_dict']
    assert is_eradio(args.model)
    bb = {k[len('base_model.'):]: v for k, v in sd.items() if k.startswith('base_model.')}
    kept, _ = filter_checkpoint_state_dict(bb)
    m = ERadioBackbone(eradio_spec(args.model, args.model_kwargs))
    m.load_state_dict(kept)
    m = m.to(args.dtype).eval()
    data = torch.load(FIXTURE / 'eradio_tiny' / f'{case}.pt', weights_only=True)
    x = data['inputs']['x_u8'].float() / 255.0
    x = ((x - sd['input_conditioner.norm_mean'].float())
         / sd['input_conditioner.norm_std'].float()).to(args.dtype)
    if case == 'set_window_224':
        m.set_optimal_window_size((224, 224))
        assert m.window_size == 7
    with torch.no_grad():
        feats = m(x).flatten(2).transpose(1, 2)
    summary = feats.mean(dim=1)
    if '_feature_normalizer.mean' in sd:
        fn_mean = sd['_feature_normalizer.mean'].float()
        feats = (feats - fn_mean) @ sd['_feature_normalizer.tx'].float().T
    exp_summary, exp_features = data['expected']['values']
    assert summary.shape == exp_summary.shape and feats.shape == exp_features.shape
    assert rel_err(summary, exp_summary) <= 1e-5
    assert rel_err(feats, exp_features) <= 1e-5


# ------------------------------------------------------------------------------------------------
# folding, caches, modes


def test_folded_conv_bn_equals_unfolded():
    from radio.eradio import Conv2dBN
    torch.manual_seed(0)
    c = Conv2dBN(8, 16, 3, 1, 1, groups=2, act='silu')
    with torch.no_grad():
        c.bn.running_mean.normal_()
        c.bn.running_var.uniform_(0.3, 3.0)
        c.bn.weight.uniform_(0.5, 1.5)
        c.bn.bias.normal_()
    c.eval()
    x = torch.randn(2, 8, 10, 12)
    with torch.no_grad():
        expected = torch.nn.functional.silu(c.bn(c.conv(x)))  # BatchNorm2d in eval mode
        got = c(x)
    assert rel_err(got, expected) <= 1e-6
    assert c._fold_cache is not None
    # in-place edits invalidate the cache (version counters)
    with torch.no_grad():
        c.bn.running_var.mul_(2.0)
        expected = torch.nn.functional.silu(c.bn(c.conv(x)))
        got = c(x)
    assert rel_err(got, expected) <= 1e-6
    # autograd through the folded path reaches the BatchNorm parameters
    c.bn.weight.grad = None
    c(x).sum().backward()
    assert c.bn.weight.grad is not None and c.bn.weight.grad.abs().sum() > 0


def test_load_state_dict_invalidates_caches():
    a, b = written('eradio_xxxtiny_8x_ws12'), written('eradio_xxxtiny_8x_ws12', seed=1)
    m = build(a)
    x = image(1, 64, 64)
    with torch.no_grad():
        m(x, window_size=2)
        m.load_state_dict(filter_checkpoint_state_dict(b.backbone)[0])
        out = m(x, window_size=2)
    assert rel_err(out, reference_forward(b.backbone, x, window=2).neck) <= 1e-5


def test_meta_construction_and_assign():
    w = written('eradio_xxxtiny_8x_ws16')
    m = build(w, meta=True)
    assert all(p.device.type == 'cpu' for p in m.parameters())
    x = image(1, 64, 96)
    with torch.no_grad():
        out = m(x, window_size=2)
    assert rel_err(out, reference_forward(w.backbone, x, window=2).neck) <= 1e-5


def test_bfloat16_with_window_change():
    w = written('eradio_xxxtiny')
    m32 = build(w)
    m16 = build(w).to(torch.bfloat16)
    m16.change_window_size(4)
    x = image(1, 64, 64)
    with torch.no_grad():
        y16 = m16(x.to(torch.bfloat16))
        y32 = m32(x, window_size=4)
    assert y16.dtype == torch.bfloat16
    assert rel_err(y16.float(), y32) <= 5e-2


# ------------------------------------------------------------------------------------------------
# windows


@pytest.mark.parametrize('dim, ws', [
    (224, 7), (256, 8), (384, 12), (512, 16), (768, 12), (1024, 16), ((448, 640), 14),
    ((640, 448), 14), ((480, 800), 15), (64, 2), (96, 3), (128, 4), (160, 5), (320, 10),
    (2048, 16), ([32, 4096], 1)])
def test_optimal_window_table(dim, ws):
    assert optimal_window_size(dim) == ws
    side = min(dim) if isinstance(dim, (tuple, list)) else dim
    assert optimal_window_reference(side) == ws


def test_set_optimal_and_change_window_size(caplog):
    m = build(written('eradio_xxxtiny_8x_ws12'))
    assert m.window_size == 12
    with caplog.at_level('INFO', logger='radio.eradio'):
        m.set_optimal_window_size(224)
    assert m.window_size == 7 and 'window size to 7' in caplog.text
    m.set_optimal_window_size((480, 800))
    assert m.window_size == 15
    m.set_optimal_window_size((480, 800), max_window_size=8)
    assert m.window_size == 5
    for bad in (16, 31, (31, 640)):
        with pytest.raises(ValueError, match='minimum of 32'):
            m.set_optimal_window_size(bad)
    with pytest.raises(ValueError, match='>= 1'):
        m.change_window_size(0)
    with pytest.raises(TypeError, match='window size must be an int'):
        m.change_window_size(2.5)  # type: ignore[arg-type]
    assert m.window_size == 5


def test_per_call_window_equals_change_window_size():
    w = written('eradio_xxxtiny')
    m = build(w)
    x = image(1, 64, 96)
    with torch.no_grad():
        per_call = m(x, window_size=3)
        assert m.window_size == 16
        m.change_window_size(3)
        changed = m(x)
        optimal = m(x, window_size='optimal')  # min side 64 -> 2
        m.change_window_size(2)
        two = m(x)
    assert torch.equal(per_call, changed)
    assert torch.equal(optimal, two)
    assert rel_err(per_call, reference_forward(w.backbone, x, window=3).neck) <= 1e-5
    policy = build(w, window_policy='auto')
    with torch.no_grad():
        assert torch.equal(policy(x), two)


def test_threads_with_different_windows_do_not_interfere():
    m = build(written('eradio_xxxtiny_8x_ws12'))
    jobs = [(image(1, 64, 64, seed=7), 2), (image(2, 64, 96, seed=8), 4),
            (image(1, 96, 64, seed=9), 'optimal'), (image(1, 64, 64, seed=10), 1)]
    with torch.no_grad():
        sequential = [m(x, window_size=ws) for x, ws in jobs]
    m.clear_caches()
    results: Dict[int, torch.Tensor] = {}

    def run(i: int) -> None:
        with torch.no_grad():
            for _ in range(2):
                results[i] = m(jobs[i][0], window_size=jobs[i][1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, expected in enumerate(sequential):
        assert torch.equal(results[i], expected)
    assert m.window_size == 12


# ------------------------------------------------------------------------------------------------
# pyramid and input checks


def test_pyramid_shapes_strides_and_values():
    w = written('eradio_xxxtiny_8x_ws16')
    m = build(w)
    x = image(2, 64, 96)
    with torch.no_grad():
        pyr = m.forward_pyramid(x, window_size=2)
    ref = reference_forward(w.backbone, x, window=2)
    assert m.num_pyramid_levels == 5 and m.pyramid_strides == (4, 8, 16, 32, 8)
    assert m.pyramid_channels == (32, 64, 128, 256, 256)
    for t, s, c, r in zip(pyr, m.pyramid_strides, m.pyramid_channels, ref.levels + [ref.neck]):
        assert t.shape == (2, c, 64 // s, 96 // s)
        assert rel_err(t, r) <= 1e-5
    with torch.no_grad():
        assert torch.equal(m.forward_pyramid(x, indices=[-1], window_size=2)[0],
                           m(x, window_size=2))
        last2 = m.forward_pyramid(x, indices=2, window_size=2)
        early = m.forward_pyramid(x, indices=[1, 0], stop_early=True, window_size=2)
    assert [t.shape[1] for t in last2] == [256, 256]
    assert torch.equal(early[0], pyr[0]) and torch.equal(early[1], pyr[1])  # ascending, as every forward_intermediates
    with pytest.raises(ValueError, match='out of range'):
        m.forward_pyramid(x, indices=[5])
    with pytest.raises(ValueError, match='last 6'):
        m.forward_pyramid(x, indices=6)
    with pytest.raises(TypeError, match='ints'):
        m.forward_pyramid(x, indices=[1.0])  # type: ignore[list-item]
    with pytest.raises(TypeError, match='bool'):
        m.forward_pyramid(x, indices=True)


def test_stop_early_does_not_update_later_bn_in_training():
    w = written('eradio_xxxtiny_8x_ws16')
    m = build(w).train()
    before = m.state_dict()['levels.2.downsample.reduction.bn.running_mean'].clone()
    m.forward_pyramid(image(2, 64, 64), indices=[0, 1], stop_early=True, window_size=2)
    sd = m.state_dict()
    assert torch.equal(sd['levels.2.downsample.reduction.bn.running_mean'], before)
    assert int(sd['levels.0.blocks.cv1.bn.num_batches_tracked']) == 1001
    assert int(sd['high_res_neck.neck_features_proj.0.norm.num_batches_tracked']) == 1000


@pytest.mark.parametrize('hw,match', [((48, 64), 'Input size 48x64 .* multiples of min_resolution_step=32'),
                                      ((64, 80), 'Input size 64x80 .* nearest supported size is 64x64'),
                                      ((0, 64), 'empty')])
def test_input_size_must_be_multiple_of_32(hw, match):
    m = build(written('eradio_xxxtiny_8x_ws12'))
    with pytest.raises(ValueError, match=match):  # the one input check every forward path shares
        m(torch.zeros(1, 3, *hw))


def test_spec_is_frozen_dataclass():
    s = eradio_spec('eradio_xxxtiny', {})
    assert isinstance(s, ERadioSpec)
    with pytest.raises(AttributeError):
        s.dim = 3  # type: ignore[misc]
    assert s.widths == (32, 64, 128, 256)


def test_inference_mode_caches_do_not_break_autograd():
    w = written('eradio_xxxtiny_8x_ws12')
    m = build(w)
    x = image(1, 64, 64, seed=11)
    with torch.inference_mode():
        a = m(x, window_size=5)  # first use of window 5: memoized tables are created here
    with torch.no_grad():
        b = m(x, window_size=5)
    assert torch.equal(a, b)
    # eval mode with autograd: folded weights are computed differentiably, not cached
    y = m(x.clone().requires_grad_(), window_size=5)
    assert rel_err(y, b) <= 1e-6
    y.square().mean().backward()
    blk = m.levels[3].blocks[0].attention_blocks[0]
    assert blk.attn.pos_emb_funct.cpb_mlp[0].weight.grad is not None
    assert blk.pre_conv.bn.weight.grad is not None


@pytest.mark.parametrize('name, window, hw', [('eradio_xxxtiny', 2, (64, 96)),
                                              ('eradio_xxxtiny_8x_ws12', 3, (96, 96))])
def test_shifted_windows_match_reference(name, window, hw):
    # level 2 reduced map 4x6 (> window 2) and level 3 2x3: shift only where the map is larger
    w = written(name, {'return_full_features': True, 'use_shift': True})
    m = build(w)
    x = image(1, *hw, seed=12)
    with torch.no_grad():
        out = m(x, window_size=window)
        plain = build(written(name))(x, window_size=window)
    ref = reference_forward(w.backbone, x, window=window, use_shift=True)
    assert rel_err(out, ref.neck) <= 1e-5
    assert rel_err(out, plain) > 1e-3  # the shift really changes the result


def test_writer_file_round_trip(tmp_path):
    path = tmp_path / 'eradio.pth.tar'
    w = make_eradio_checkpoint(path, 'eradio_xxxtiny_8x_ws12', teachers=[{'name': 'a'}],
                               store_dtype=torch.float16, feature_normalizer=True,
                               timm_extras=True)
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    args, sd = ckpt['args'], ckpt['state_dict']
    assert (args.model, args.cpe_max_size, args.cls_token_per_teacher, args.dtype) == (
        'eradio_xxxtiny_8x_ws12', None, False, torch.float32)
    assert args.model_kwargs == {'return_full_features': True}
    p = 'base_model.levels.3.blocks.0.attention_blocks.0.attn.pos_emb_funct.'
    assert sd[p + 'relative_coords_table'].shape == (1, 23, 23, 2)
    assert sd[p + 'relative_coords_table'].dtype == torch.float16
    assert sd[p + 'relative_position_index'].shape == (144, 144)
    assert sd[p + 'relative_bias'].shape == (1, 16, 144, 144)
    assert sd['input_conditioner.norm_mean'].shape == (3, 1, 1)
    assert sd['_feature_normalizer.tx'].shape == (256, 256)
    assert sd['_heads.0.fc1.weight'].shape[1] == 256
    var = sd['base_model.levels.0.blocks.cv1.bn.running_var'].float()
    assert (var > 0).all() and var.std() > 0.1
    bb = {k[len('base_model.'):]: v for k, v in sd.items() if k.startswith('base_model.')}
    kept, dropped = filter_checkpoint_state_dict(bb)
    assert {'norm.weight', 'head.weight', 'head.bias'} <= set(dropped)
    m = ERadioBackbone(eradio_spec(args.model, args.model_kwargs))
    m.load_state_dict(kept)
    x = image(1, 64, 64, seed=13)
    with torch.no_grad():
        out = m.eval()(x, window_size=2)
    assert rel_err(out, reference_forward(w.backbone, x, window=2).neck) <= 1e-5


# ------------------------------------------------------------------------------------------------
# audit fixes: unknown kwargs, half-precision BatchNorm, window round trip, optional tables,
# cache caveat, integer-like window arguments, layer_scale=0, window_size views


def test_unknown_model_kwargs_are_ignored_with_one_warning(caplog, monkeypatch):
    import radio.eradio as eradio_module
    monkeypatch.setattr(eradio_module, '_WARNED_UNKNOWN_KWARGS', set(), raising=False)
    plain = eradio_spec('eradio_xxxtiny', {'return_full_features': True})
    with caplog.at_level('WARNING', logger='radio.eradio'):
        a = eradio_spec('eradio_xxxtiny', {'return_full_features': True, 'ct_size': 2,
                                           'hat': [True], 'dim': 32})
        b = eradio_spec('eradio_xxxtiny', {'ct_size': 3})  # same key again: no second warning
    assert a == plain and b == eradio_spec('eradio_xxxtiny', {})
    warned = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert len(warned) == 2
    assert "'ct_size'" in warned[0] and "'hat'" in warned[1]
    # fixed hyperparameters with a conflicting value are still rejected, naming the keyword
    with pytest.raises(ValueError, match='dim=64 conflicts with eradio_xxxtiny'):
        eradio_spec('eradio_xxxtiny', {'ct_size': 2, 'dim': 64})
    # and the numbers are those of the plain model
    w = written('eradio_xxxtiny_8x_ws12')
    m = build(w, model_kwargs={'return_full_features': True, 'ct_size': 2})
    x = image(1, 64, 64)
    with torch.no_grad():
        out = m(x, window_size=2)
    assert rel_err(out, reference_forward(w.backbone, x, window=2).neck) <= 1e-5


def test_half_precision_batchnorm_is_not_folded():
    import torch.nn.functional as F
    from radio.eradio import Conv2dBN, NeckProjection

    g = torch.Generator().manual_seed(0)
    conv = Conv2dBN(32, 64, 3, 1, 1)
    neck = NeckProjection(32, 48, 2)
    with torch.no_grad():
        conv.conv.weight.copy_(torch.randn(64, 32, 3, 3, generator=g) / 17.0)
        for bn in (conv.bn, neck.norm):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            bn.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
            bn.weight.copy_(torch.randn(c, generator=g) * 0.5 + 1)
            bn.bias.copy_(torch.randn(c, generator=g) * 0.2)
    x = torch.randn(4, 32, 24, 24, generator=g)

    def original_order(x, weight, bn):  # conv, then F.batch_norm with the running statistics
        y = F.conv2d(x, weight, None, 1, 1)
        return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                            bn.eps)

    def folded_bf16(x, weight, bn):  # what eval mode did before: fold in float32, round to bf16
        k = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
        w = (weight.float() * k[:, None, None, None]).bfloat16()
        b = (bn.bias.float() - bn.running_mean.float() * k).bfloat16()
        return F.conv2d(x, w, b, 1, 1)

    for dtype in (torch.bfloat16, torch.float16):
        c16 = Conv2dBN(32, 64, 3, 1, 1)
        c16.load_state_dict(conv.state_dict())
        c16 = c16.to(dtype).eval()
        with torch.no_grad():
            got = c16(x.to(dtype))
            assert torch.equal(got, original_order(x.to(dtype), c16.conv.weight, c16.bn))
        assert c16._fold_cache is None
        if dtype == torch.bfloat16:
            d = {k: v.double() for k, v in c16.state_dict().items() if v.is_floating_point()}
            bn64 = torch.nn.BatchNorm2d(64).double().eval()
            bn64.load_state_dict({k[3:]: v for k, v in d.items() if k.startswith('bn.')},
                                 strict=False)
            with torch.no_grad():
                exact = original_order(x.to(dtype).double(), d['conv.weight'], bn64)
                folded = folded_bf16(x.to(dtype), c16.conv.weight, c16.bn)
            assert rel_err(got, exact) < rel_err(folded, exact)
    # the neck projection too (depthwise conv with bias, then BatchNorm, then 1x1)
    n16 = NeckProjection(32, 48, 2)
    n16.load_state_dict(neck.state_dict())
    n16 = n16.bfloat16().eval()
    xb = torch.randn(2, 32, 6, 8, generator=g).bfloat16()
    with torch.no_grad():
        up = F.interpolate(xb, scale_factor=2, mode='nearest')
        y = F.conv2d(up, n16.conv1.weight, n16.conv1.bias, 1, 1, 1, 32)
        n = n16.norm
        y = F.batch_norm(y, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0, n.eps)
        assert torch.equal(n16(xb), n16.conv2(y))
    # float32 still folds (and matches)
    c32 = conv.eval()
    with torch.no_grad():
        assert rel_err(c32(x), original_order(x, c32.conv.weight, c32.bn)) <= 1e-6
    assert c32._fold_cache is not None


def test_bfloat16_model_is_no_less_precise_than_the_original_order():
    # bf16 checkpoint; reference in float64, and the original's order emulated in bf16
    # (eradio_reference: rounded conv output, then F.batch_norm)
    name = 'eradio_xxxtiny_8x_ws16'
    w = written(name, dtype=torch.bfloat16, seed=1)
    m = build(w).to(torch.bfloat16)
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(64))
    x = (x - w.conditioner['norm_mean']) / w.conditioner['norm_std']
    f64 = {k: v.double() if v.is_floating_point() else v for k, v in w.backbone.items()}
    bf16 = {k: v.bfloat16() if v.is_floating_point() else v for k, v in w.backbone.items()}
    with torch.no_grad():
        out = m(x.bfloat16())
        exact = reference_forward(f64, x.double()).neck
        original = reference_forward(bf16, x.bfloat16()).neck
    assert out.dtype == torch.bfloat16
    # measured: 9.7e-3 (model) vs 1.2e-2 (original order); folding in bf16 gave 1.29e-2
    assert rel_err(out, exact) <= rel_err(original, exact)


def _table_ref(w, table_fn):
    """The written backbone with every relative_coords_table replaced by ``table_fn(t)``."""
    return {k: (table_fn(v) if k.endswith('relative_coords_table') else v)
            for k, v in w.backbone.items()}


def test_window_round_trip_uses_the_rebuilt_table():
    from radio.eradio import _log_coords_table
    w = written('eradio_xxxtiny_8x_ws12', store_dtype=torch.float16)  # table stored rounded
    exact_table = _log_coords_table(12, 12).unsqueeze(0)
    rebuilt = _table_ref(w, lambda t: exact_table)
    stored = w.backbone['levels.3.blocks.0.attention_blocks.0.attn.pos_emb_funct.'
                        'relative_coords_table']
    assert not torch.equal(stored, exact_table)  # the float16 rounding is real
    x = image(1, 64, 64, seed=4)
    loaded_ref = reference_forward(w.backbone, x).neck
    rebuilt_ref = reference_forward(rebuilt, x).neck
    assert rel_err(loaded_ref, rebuilt_ref) > 2e-5  # measured 4.6e-5
    for path in ('change_window_size', 'per_call'):
        m = build(w)
        pe = m.levels[3].blocks[0].attention_blocks[0].attn.pos_emb_funct
        with torch.no_grad():
            before = m(x)  # construction window, nothing changed yet: the loaded table
            if path == 'change_window_size':
                m.change_window_size(5)
                m(x)
                m.change_window_size(12)
                after = m(x)
            else:
                m(x, window_size=5)
                after = m(x, window_size=12)
        assert rel_err(before, loaded_ref) <= 2e-6
        assert rel_err(after, rebuilt_ref) <= 2e-6, path
        assert torch.equal(pe.relative_coords_table, exact_table)
        assert pe.relative_coords_table.dtype == torch.float32
    # a change of the window attribute alone (no forward at another window) keeps the loaded table
    m = build(w)
    m.change_window_size(5)
    m.change_window_size(12)
    with torch.no_grad():
        assert rel_err(m(x), loaded_ref) <= 2e-6
        m(x, window_size=5)
        # loading a state dict restores the loaded table
        m.load_state_dict(filter_checkpoint_state_dict(w.backbone)[0])
        assert rel_err(m(x), loaded_ref) <= 2e-6


def test_checkpoint_without_coordinate_tables_loads(tmp_path):
    from radio import radio_model
    from radio.eradio import _log_coords_table
    path = tmp_path / 'no_tables.pth.tar'
    w = make_eradio_checkpoint(path, 'eradio_xxxtiny_8x_ws12', store_dtype=torch.float16,
                               coords_tables=False, seed=2)
    assert not any(k.endswith('relative_coords_table') for k in w.checkpoint['state_dict'])
    x01 = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    x = (x01 - w.conditioner['norm_mean']) / w.conditioner['norm_std']
    ref = reference_forward(w.backbone, x).neck  # the exact construction table (writer doc)
    file_keys = {k: v for k, v in w.backbone.items() if not k.endswith('relative_coords_table')}
    kept, _ = filter_checkpoint_state_dict(file_keys)
    exact = _log_coords_table(12, 12).unsqueeze(0)
    spec = eradio_spec(w.args.model, w.args.model_kwargs)
    # strict load into a built model whose tables were spoiled, and assign=True on meta
    m = ERadioBackbone(spec)
    with torch.no_grad():
        for name, buf in m.named_buffers():
            if name.endswith('relative_coords_table'):
                buf.zero_()
    result = m.load_state_dict(kept)
    assert result.missing_keys == [] and result.unexpected_keys == []
    with torch.device('meta'):
        mm = ERadioBackbone(spec)
    assert mm.load_state_dict(kept, assign=True).missing_keys == []
    for model in (m, mm):
        tables = [b for k, b in model.named_buffers() if k.endswith('relative_coords_table')]
        assert len(tables) == 4 * 2 + 5 and all(torch.equal(t, exact) for t in tables)
        with torch.no_grad():
            assert rel_err(model.eval()(x), ref) <= 1e-5
    # through the public loader (strict about missing weights)
    hub = radio_model(str(path))
    with torch.no_grad():
        feats = hub(x01).features
    assert rel_err(feats, ref.flatten(2).transpose(1, 2)) <= 1e-5


def test_in_place_data_edits_need_clear_caches():
    """Documented limitation: `.data` edits do not bump version counters (see clear_caches)."""
    for doc in (ERadioBackbone.__doc__, ERadioBackbone.clear_caches.__doc__):
        assert '.data' in doc and ('clear_caches' in doc or 'this method' in doc)
    w = written('eradio_xxxtiny_8x_ws12')
    m = build(w)
    x = image(1, 64, 64)
    key_bn = 'patch_embed.conv_down.0.bn.weight'
    key_mlp = 'levels.2.blocks.0.attention_blocks.0.attn.pos_emb_funct.cpb_mlp.2.weight'
    edited = dict(w.backbone)
    edited[key_bn] = w.backbone[key_bn] * 2
    edited[key_mlp] = -w.backbone[key_mlp]
    with torch.no_grad():
        before = m(x, window_size=2)
        m.patch_embed.conv_down[0].bn.weight.data.mul_(2.0)
        m.levels[2].blocks[0].attention_blocks[0].attn.pos_emb_funct.cpb_mlp[2].weight.data.neg_()
        stale = m(x, window_size=2)
        m.clear_caches()
        fresh = m(x, window_size=2)
    assert torch.equal(stale, before)  # the caveat the docstrings describe
    assert rel_err(fresh, reference_forward(edited, x, window=2).neck) <= 1e-5
    assert rel_err(fresh, before) > 1e-2


def test_integer_like_window_arguments():
    np = pytest.importorskip('numpy')
    assert optimal_window_size(np.int64(224)) == 7
    assert optimal_window_size(torch.tensor(224)) == 7
    assert optimal_window_size(224.0) == 7
    assert optimal_window_size(torch.tensor(224.0)) == 7
    assert optimal_window_size((np.int32(448), torch.tensor(640))) == 14
    assert optimal_window_size(torch.Size([480, 800]), max_window_size=np.int64(8)) == 5
    assert optimal_window_size(480, max_window_size=8.0) == 5
    m = build(written('eradio_xxxtiny_8x_ws12'))
    m.set_optimal_window_size(torch.tensor(224))
    assert m.window_size == 7 and type(m.window_size) is int
    m.set_optimal_window_size((np.int64(480), 800.0), max_window_size=torch.tensor(16))
    assert m.window_size == 15
    m.change_window_size(np.int64(5))
    assert m.window_size == 5 and type(m.window_size) is int
    for bad, err, match in ((224.5, TypeError, 'not integral'),
                            (float('nan'), TypeError, 'not integral'),
                            (True, TypeError, 'bool'), ('224', TypeError, 'must be an integer'),
                            (torch.tensor([224, 224]), TypeError, 'shape'),
                            (np.float64(100.25), TypeError, 'not integral'),
                            (0, ValueError, 'positive'), (-64, ValueError, 'positive'),
                            ((224, -1), ValueError, 'positive'), (16, ValueError, 'minimum of 32')):
        with pytest.raises(err, match=match):
            optimal_window_size(bad)
        with pytest.raises(err, match=match):
            m.set_optimal_window_size(bad)
    for bad, err in ((0, ValueError), (-3, ValueError), (2.5, TypeError), (False, TypeError)):
        with pytest.raises(err, match='max_window_size'):
            optimal_window_size(224, max_window_size=bad)
    assert m.window_size == 5


def test_layer_scale_zero_means_a_zero_layer_scale():
    s = eradio_spec('eradio_xxxtiny', {'layer_scale': 0})
    assert s.layer_scale == 0.0
    assert eradio_spec('eradio_xxxtiny', {'layer_scale': None}).layer_scale is None
    for bad in (False, 'small'):
        with pytest.raises(ValueError, match='layer_scale'):
            eradio_spec('eradio_xxxtiny', {'layer_scale': bad})
    m = ERadioBackbone(s)
    blk = m.levels[3].blocks[0].attention_blocks[0]
    assert blk.gamma1.shape == (256,) and torch.equal(blk.gamma1, torch.zeros(256))
    # a checkpoint written with layer_scale=0 carries gamma1/gamma2 and loads strictly
    w = written('eradio_xxxtiny', {'return_full_features': True, 'layer_scale': 0})
    assert 'levels.2.blocks.0.attention_blocks.1.gamma2' in w.backbone
    mw = build(w)
    x = image(1, 64, 64)
    with torch.no_grad():
        out = mw(x, window_size=2)
    assert rel_err(out, reference_forward(w.backbone, x, window=2).neck) <= 1e-5


def test_window_size_views_on_submodules():
    import copy
    m = build(written('eradio_xxxtiny_8x_ws12'))
    levels = [m.levels[2], m.levels[3]]
    blocks = [b for lv in levels for mra in lv.blocks for b in mra.attention_blocks]
    pes = [b.attn.pos_emb_funct for b in blocks]
    assert len(blocks) == 4 * 2 + 5
    assert [lv.window_size for lv in levels] == [12, 12]
    assert {b.window_size for b in blocks} == {12} and all(p.window_size == [12, 12] for p in pes)
    m.change_window_size(7)
    assert [lv.window_size for lv in levels] == [7, 7]
    assert {b.window_size for b in blocks} == {7} and all(p.window_size == [7, 7] for p in pes)
    assert all(p.pretrained_window == 12 for p in pes)  # p is not changed
    with torch.no_grad():
        m(image(1, 64, 64), window_size=3)  # a per-call window changes no attribute
    assert m.window_size == 7 and levels[0].window_size == 7
    with pytest.raises(AttributeError):
        levels[0].window_size = 3
    with pytest.raises(AttributeError):
        pes[0].window_size = [3, 3]
    c = copy.deepcopy(m)
    c.change_window_size(4)
    assert c.levels[3].blocks[4].attention_blocks[0].attn.pos_emb_funct.window_size == [4, 4]
    assert c.levels[2].window_size == 4 and m.levels[2].window_size == 7
    # a module on its own reports its construction window
    from radio.eradio import PosEmbMLPSwinv2D
    assert PosEmbMLPSwinv2D(16, 2, 8).window_size == [16, 16]
