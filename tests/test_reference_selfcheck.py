"""Self-checks of the test infrastructure: ``tests/reference.py`` and ``tests/ckpt_writer.py``.

The reference is compared with the outputs of the original implementation stored in the
conformance fixtures (``../shared/conformance`` beside the repository; skipped when absent, a failure in CI) at a relative error of
1e-5. Code paths the fixtures do not reach (spectral realization, DAMP, EMA, LayerScale, q/k norm,
attn heads, upsampling, ViTDet, dense pre-alpha, bfloat16) are checked against independent
computations: timm blocks, the largest singular value, alternative formulas, and properties from
the spec. The writer's file layouts are checked key by key against checkpoint-format.md.
"""

import argparse
import json
import math
import os
import pickle
from pathlib import Path
from collections import namedtuple
from functools import lru_cache, partial
from typing import Any, Dict, List

import pytest
import torch
import torch.nn.functional as F

try:  # tests/ on sys.path (pytest rootdir insertion without tests/__init__.py)
    import ckpt_writer as W
    import reference as R
except ImportError:  # tests/ is a package
    from tests import ckpt_writer as W
    from tests import reference as R

from radio_test_utils import CONFORMANCE_CASES, require_shared

CONFORMANCE = str(CONFORMANCE_CASES)
MANIFEST = os.path.join(CONFORMANCE, 'manifest.json')
TOL = 1e-5
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------------------------
# Conformance fixtures


def _manifest_cases() -> List[Dict[str, Any]]:
    """The ViT ``.pth.tar`` cases of the fixtures (the reference covers the ViT family of the spec)."""
    if not os.path.isfile(MANIFEST):
        return []
    with open(MANIFEST) as f:
        cases = json.load(f)['cases']
    return [c for c in cases if c['ckpt'].endswith('.pth.tar') and not c['variant'].startswith('eradio')]


def _cases(ops) -> List[Any]:
    cases = [c for c in _manifest_cases() if c['op'] in ops]
    if not cases:  # collected as one test that skips, or fails in CI (require_shared)
        return [pytest.param(None, id='fixtures-missing')]
    return [pytest.param(c, id=c['name']) for c in cases]


@lru_cache(maxsize=None)
def _load_fixture_ckpt(rel: str) -> R.LoadedReference:
    return R.load_reference(os.path.join(CONFORMANCE, rel))


def _load_case_data(case: Dict[str, Any]) -> Dict[str, Any]:
    path = os.path.join(CONFORMANCE, case['file'])
    return torch.load(path, map_location='cpu', weights_only=True)


def decode_inputs(inputs: Dict[str, Any]) -> Dict[str, Any]:
    """Stored inputs -> call arguments (``x_u8`` uint8 -> float32 in [0, 1]), as check.py does."""
    out = dict(inputs)
    if 'x_u8' in out:
        out['x'] = out.pop('x_u8').float() / 255.0
    return out


def decode_expected(obj: Any) -> Any:
    """Undo check.py's ``encode``: NamedTuples, tuples and dicts are tagged dicts there."""
    if torch.is_tensor(obj):
        return obj
    if isinstance(obj, dict) and '__nt__' in obj:
        cls = namedtuple(obj['__nt__'], obj['fields'])
        return cls(*[decode_expected(v) for v in obj['values']])
    if isinstance(obj, dict) and '__tuple__' in obj:
        return tuple(decode_expected(v) for v in obj['__tuple__'])
    if isinstance(obj, dict) and '__dict__' in obj:
        return {k: decode_expected(v) for k, v in obj['__dict__'].items()}
    if isinstance(obj, list):
        return [decode_expected(v) for v in obj]
    return obj


def assert_tree_close(actual: Any, expected: Any, tol: float, path: str = 'out') -> List[float]:
    """Same structure, shapes and dtypes; floating tensors within ``||a-b||/||b|| <= tol``.

    Returns the relative errors of the compared tensors.
    """
    if torch.is_tensor(expected):
        assert torch.is_tensor(actual), f'{path}: expected a tensor, got {type(actual).__name__}'
        assert actual.shape == expected.shape, \
            f'{path}: shape {tuple(actual.shape)} != {tuple(expected.shape)}'
        assert actual.dtype == expected.dtype, f'{path}: dtype {actual.dtype} != {expected.dtype}'
        a, b = actual.double(), expected.double()
        rel = ((a - b).norm() / b.norm().clamp_min(1e-300)).item()
        assert rel <= tol, f'{path}: relative error {rel:.3e} > {tol:g}'
        return [rel]
    if isinstance(expected, tuple) and hasattr(expected, '_fields'):
        assert isinstance(actual, tuple) and len(actual) == len(expected), f'{path}: {type(actual)}'
        rels = []
        for f, e in zip(expected._fields, expected):
            assert hasattr(actual, f), f'{path}: no field {f}'
            rels += assert_tree_close(getattr(actual, f), e, tol, f'{path}.{f}')
        return rels
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f'{path}: expected a dict, got {type(actual).__name__}'
        assert sorted(actual) == sorted(expected), \
            f'{path}: keys {sorted(actual)} != {sorted(expected)}'
        return [r for k in expected
                for r in assert_tree_close(actual[k], expected[k], tol, f'{path}[{k!r}]')]
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), \
            f'{path}: expected {len(expected)} entries, got {type(actual).__name__}'
        return [r for i, (a, e) in enumerate(zip(actual, expected))
                for r in assert_tree_close(a, e, tol, f'{path}[{i}]')]
    assert actual == expected, f'{path}: {actual!r} != {expected!r}'
    return []


def _run_case(case: Dict[str, Any]) -> Any:
    sd, args = _load_fixture_ckpt(case['ckpt'])
    data = _load_case_data(case)
    x = decode_inputs(data['inputs']).get('x')
    kw = dict(case.get('kwargs') or {})
    adaptors = (case.get('load') or {}).get('adaptor_names')
    if case['op'] == 'forward':
        out = R.ref_forward(sd, args, x, adaptor_names=adaptors, **kw)
    elif case['op'] == 'video_eval':  # cpe_video_mode has no effect in eval mode
        out = R.ref_forward(sd, args, x, adaptor_names=adaptors)
    else:
        indices = kw.pop('indices')
        out = R.ref_forward_intermediates(sd, args, x, indices, adaptor_names=adaptors, **kw)
    return out, decode_expected(data['expected'])


@pytest.mark.parametrize('case', _cases(('forward', 'video_eval', 'forward_intermediates')))
def test_reference_matches_original(case):
    if case is None:
        require_shared(Path(MANIFEST))
    out, expected = _run_case(case)
    rels = assert_tree_close(out, expected, min(TOL, case['tol']))
    assert rels, 'nothing was compared'


@pytest.mark.parametrize('case', _cases(('props',)))
def test_reference_token_bookkeeping_matches_original(case):
    if case is None:
        require_shared(Path(MANIFEST))
    sd, args = _load_fixture_ckpt(case['ckpt'])
    exp = decode_expected(_load_case_data(case)['expected'])
    cfg = R.ref_config(sd, args)
    names = R._adaptor_list((case.get('load') or {}).get('adaptor_names'))
    assert cfg.patch_size == exp['patch_size']
    assert cfg.embed_dim == exp['embed_dim']
    assert cfg.num_prefix == exp['num_summary_tokens']
    assert R._num_cls_tokens(cfg, args, names) == exp['num_cls_tokens']
    assert cfg.summary_dim == exp['summary_dim']
    assert sorted(names) == exp['adaptor_names']


def test_reference_detects_a_wrong_conditioner():
    """The comparison is sensitive: using CLIP's mean/std instead of the checkpoint's fails."""
    cases = [c for c in _manifest_cases() if c['name'] == 'v25_small/fwd_224']
    if not cases:
        require_shared(Path(MANIFEST))
    sd, args = _load_fixture_ckpt(cases[0]['ckpt'])
    clip = {'norm_mean': torch.tensor(CLIP_MEAN).reshape(3, 1, 1),
            'norm_std': torch.tensor(CLIP_STD).reshape(3, 1, 1)}
    data = _load_case_data(cases[0])
    out = R.ref_forward({**sd, 'conditioner': clip}, args, decode_inputs(data['inputs'])['x'])
    with pytest.raises(AssertionError):
        assert_tree_close(out, decode_expected(data['expected']), TOL)


# ----------------------------------------------------------------------------------------------
# Writer: layouts


def _load_raw(path) -> Dict[str, Any]:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


def _assert_weights_equal(a: Any, b: Any, path: str = 'w') -> None:
    """Exact equality of two grouped float32 weight dicts."""
    if a is None or b is None:
        assert a is None and b is None, path
        return
    if torch.is_tensor(a):
        assert a.dtype == torch.float32 and b.dtype == torch.float32, path
        assert torch.equal(a, b), f'{path}: max diff {(a - b).abs().max().item():.3e}'
        return
    assert sorted(a) == sorted(b), f'{path}: {sorted(a)} != {sorted(b)}'
    for k in a:
        _assert_weights_equal(a[k], b[k], f'{path}.{k}')


def test_default_checkpoint_layout(tmp_path):
    ck = W.make_checkpoint(tmp_path / 'c.pth.tar')
    raw = _load_raw(ck.path)
    assert set(raw) == {'arch', 'epoch', 'args', 'state_dict'}
    a = raw['args']
    assert isinstance(a, argparse.Namespace)
    assert a.model == 'vit_base_patch16_224'
    assert a.model_kwargs == {'depth': 2, 'embed_dim': 32, 'num_heads': 2}
    assert [t['name'] for t in a.teachers] == ['clip', 'dino_v2', 'sam']
    assert not hasattr(a, 'dtype')
    sd = raw['state_dict']
    d, ps, g = 32, 16, 4  # G = round(64 / 16)
    assert (ck.num_cls_tokens, ck.num_registers, ck.grid_size) == (3, 5, g)
    assert sd['base_model.patch_generator.embedder.weight'].shape == (d, 3 * ps * ps)
    assert 'base_model.patch_generator.embedder.bias' not in sd
    assert sd['base_model.patch_generator.pos_embed'].shape == (1, g * g, d)
    assert sd['base_model.patch_generator.cls_token.token'].shape == (8, d)
    pre = 'base_model.blocks.0.'
    blk = {k[len(pre):]: v.shape for k, v in sd.items() if k.startswith(pre)}
    assert blk == {'norm1.weight': (d,), 'norm1.bias': (d,), 'attn.qkv.weight': (3 * d, d),
                   'attn.qkv.bias': (3 * d,), 'attn.proj.weight': (d, d), 'attn.proj.bias': (d,),
                   'norm2.weight': (d,), 'norm2.bias': (d,), 'mlp.fc1.weight': (4 * d, d),
                   'mlp.fc1.bias': (4 * d,), 'mlp.fc2.weight': (d, 4 * d), 'mlp.fc2.bias': (d,)}
    assert not any(k.startswith('base_model.norm.') for k in sd)
    assert sd['input_conditioner.norm_mean'].shape == (3, 1, 1)
    assert not torch.allclose(sd['input_conditioner.norm_mean'].float().flatten(),
                              torch.tensor(CLIP_MEAN), atol=1e-3)
    assert sd['_heads.2.final.2.weight'].shape == (16, 24)
    assert sd['_feature_projections.0.blocks.0.2.weight'].shape == (24, 24)
    assert all(v.dtype == torch.float16 for v in sd.values())
    _assert_weights_equal(R.load_reference(ck.path).weights, ck.realized)
    _assert_weights_equal(W.make_checkpoint(None).realized, ck.realized)  # deterministic
    other = W.make_checkpoint(None, seed=1).realized['backbone']
    assert not torch.equal(other['blocks.0.norm1.weight'],
                           ck.realized['backbone']['blocks.0.norm1.weight'])


@pytest.mark.parametrize('model,hidden,extra', [
    ('vit_so400m_v2_patch16_224', int(32 * 4320 / 1152), ()),
    ('vit_so400m_patch16_224', int(32 * 4304 / 1152), ()),
    ('vit_huge_patch14_224', 128, ()),
    ('vit_huge_patch16_224_mlpnorm', 128, ('mlp.norm.weight', 'mlp.norm.bias')),
    ('vit_large_dyt_patch16_224', 128, ('norm1.alpha', 'norm1.gamma', 'norm2.beta')),
    ('vit_base_patch16_v2_224', 128, ('ls1.grandma', 'ls2.grandma')),
])
def test_architecture_layouts(model, hidden, extra):
    ck = W.make_checkpoint(None, model=model, embed_dim=32, depth=1)
    bb = ck.realized['backbone']
    ps = W.ARCHITECTURES[model].patch_size
    assert bb['patch_generator.embedder.weight'].shape == (32, 3 * ps * ps)
    assert bb['blocks.0.mlp.fc1.weight'].shape == (hidden, 32)
    for k in extra:
        assert f'blocks.0.{k}' in bb
    if 'dyt' in model:
        assert bb['blocks.0.norm1.alpha'].shape == (1,) and 'blocks.0.norm1.weight' not in bb
    if model.endswith('_v2_224'):
        assert bb['reg_token'].shape == (1, 4, 32)
        assert 'init_values' not in ck.args.model_kwargs
    # the reference runs every layout
    out = R.ref_forward(ck.realized, ck.args, torch.rand(1, 3, 2 * ps, 3 * ps))
    assert out.features.shape == (1, 6, 32) and torch.isfinite(out.features).all()


def test_layerscale_qk_norm_and_final_norm_keys():
    ck = W.make_checkpoint(None, layerscale='gamma', qk_norm=True, model_norm=True)
    assert ck.args.model_kwargs['init_values'] == 1e-5
    assert ck.args.model_kwargs['qk_norm'] is True
    bb = ck.realized['backbone']
    assert bb['blocks.1.ls2.gamma'].shape == (32,)
    assert bb['blocks.0.attn.q_norm.weight'].shape == (16,)
    assert bb['norm.weight'].shape == (32,)
    ck2 = W.make_checkpoint(None, layerscale='grandma', write_final_norm=True, unused_keys=True)
    bb2 = ck2.realized['backbone']
    assert 'blocks.0.ls1.grandma' in bb2 and 'norm.bias' in bb2 and 'patch_embed.proj.weight' in bb2
    assert ck2.args.model_norm is False


def test_spectral_layout_and_realization(tmp_path):
    ck = W.make_checkpoint(tmp_path / 's.pth.tar', spectral_reparam=True, sn_version_value=1)
    sd = ck.raw_state_dict
    p = 'base_model.blocks.0.mlp.fc1.parametrizations.weight'
    assert sd[f'{p}.original'].shape == (128, 32) and sd[f'{p}.0._u'].shape == (128,)
    assert sd[f'{p}.0._v'].shape == (32,) and sd[f'{p}.0.scale'].shape == (1, 1)
    ver = sd[f'{p}.0._sn_version']
    assert ver.dim() == 0 and not ver.is_floating_point()
    q = 'base_model.blocks.1.attn.qkv.parametrizations.weight'
    assert sd[f'{q}.original'].shape == (96, 32)
    for k in range(3):
        assert sd[f'{q}.0.parts.{k}._u'].shape == (32,)
        assert sd[f'{q}.0.parts.{k}.scale'].shape == (1, 1)
        assert f'{q}.0.parts.{k}._sn_version' in sd
    assert 'base_model.blocks.0.attn.qkv.weight' not in sd
    assert 'base_model.blocks.0.attn.qkv.bias' in sd
    assert 'base_model.patch_generator.embedder.weight' in sd  # never reparametrized
    assert not any('_heads' in k and 'parametrizations' in k for k in sd)
    # The writer's realization (F.normalize / mv) and the reference's agree.
    loaded = R.load_reference(ck.path)
    _assert_weights_equal(loaded.weights, ck.realized)
    # ... and follow the formula: W * ((softplus(scale) + 0.05) / sigma) after one power step.
    w = sd[f'{p}.original'].float()
    v = sd[f'{p}.0._v'].float()
    u = F.normalize(w @ v, dim=0, eps=1e-6)
    v = F.normalize(w.t() @ u, dim=0, eps=1e-6)
    ratio = (F.softplus(sd[f'{p}.0.scale'].float()) + 0.05) / (torch.dot(u, w @ v) + 1e-6)
    assert torch.equal(ck.realized['backbone']['blocks.0.mlp.fc1.weight'], w * ratio)


def test_spectral_realization_normalizes_the_spectral_norm():
    """Independent check: with many power steps sigma is the top singular value, so the
    realized weight's spectral norm is softplus(scale) + 0.05."""
    ck = W.make_checkpoint(None, spectral_reparam={'n_power_iterations': 300, 'eps': 1e-12},
                           storage_dtype=torch.float32, depth=1)
    sd = ck.raw_state_dict
    for layer, parts in (('mlp.fc2', ['0']), ('attn.qkv', ['0.parts.0', '0.parts.1', '0.parts.2'])):
        real = ck.realized['backbone'][f'blocks.0.{layer}.weight']
        rows = real.shape[0] // len(parts)
        for k, part in enumerate(parts):
            scale = sd[f'base_model.blocks.0.{layer}.parametrizations.weight.{part}.scale']
            target = (F.softplus(scale) + 0.05).item()
            chunk = real[k * rows:(k + 1) * rows].double()
            got = torch.linalg.matrix_norm(chunk, ord=2).item()
            assert math.isclose(got, target, rel_tol=1e-4), (layer, part, got, target)
    one = W.make_checkpoint(None, spectral_reparam=True, storage_dtype=torch.float32, depth=1)
    assert not torch.allclose(one.realized['backbone']['blocks.0.mlp.fc2.weight'],
                              ck.realized['backbone']['blocks.0.mlp.fc2.weight'], rtol=1e-3)


def test_damp_layouts():
    sd = W.make_checkpoint(None, damp=True).raw_state_dict
    names = ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2')
    linears = ['patch_generator.embedder'] + [f'blocks.{j}.{n}' for j in range(2) for n in names]
    for lin in linears:
        assert f'base_model.{lin}.parametrizations.weight.original' in sd
        assert f'base_model.{lin}.weight' not in sd
        assert not any(k.startswith(f'base_model.{lin}.parametrizations.weight.0') for k in sd)
    both = W.make_checkpoint(None, damp=True, spectral_reparam=True)
    sd2 = both.raw_state_dict
    emb = 'base_model.patch_generator.embedder.parametrizations.weight'
    assert f'{emb}.original' in sd2
    assert not any(k.startswith(f'{emb}.0') for k in sd2)
    assert 'base_model.blocks.0.mlp.fc1.parametrizations.weight.0._sn_version' in sd2
    assert not any('.parametrizations.weight.1' in k for k in sd2)
    assert both.args.damp is True
    _assert_weights_equal(R.realize_checkpoint(both.checkpoint).weights, both.realized)


def test_ema_layout(tmp_path):
    ck = W.make_checkpoint(tmp_path / 'e.pth.tar', ema=True, spectral_reparam=True, damp=True,
                           spectral_heads=True, prefix_wrappers=True)
    raw = _load_raw(ck.path)
    assert set(raw) >= {'state_dict', 'state_dict_ema', 'args'}
    ema, junk = raw['state_dict_ema'], raw['state_dict']
    assert not any('parametrizations' in k for k in ema)
    assert any('parametrizations' in k for k in junk)
    assert raw['args'].spectral_reparam is True and raw['args'].damp is True  # loader forces off
    assert torch.equal(ema['base_model.blocks.0.mlp.fc1.weight'].float(),
                       ck.realized['backbone']['blocks.0.mlp.fc1.weight'])
    pos = 'base_model.patch_generator.pos_embed'
    assert not torch.equal(junk[pos], ema[pos])
    assert all(k.startswith('module.') for k in ema if not k.startswith('base_model.'))
    loaded = R.load_reference(ck.path)
    _assert_weights_equal(loaded.weights, ck.realized)
    assert loaded.args.spectral_reparam is False and loaded.args.damp is None


@pytest.mark.parametrize('keyed_by', ['index', 'name'])
def test_head_layouts(keyed_by):
    teachers = [{'name': 'a', 'type': 'generic'},
                {'name': 'b', 'type': 'generic', 'mlp_version': 'v1'},
                {'name': 'a', 'type': 'generic'},
                {'name': 'c', 'type': 'x', 'fd_upsample_factor': 2}]
    ck = W.make_checkpoint(None, embed_dim=32, teachers=teachers, heads_keyed_by=keyed_by,
                           head_variants={'a': {'spatial_mlp_version': 'attn', 'inner_blocks': 2},
                                          'c': {'out': 8}},
                           spectral_heads=True, prefix_wrappers=True)
    sd = ck.raw_state_dict
    keys = ['0', '1', '2', '3'] if keyed_by == 'index' else ['a', 'b', 'c']
    assert sorted({k.split('.')[2] for k in sd if k.startswith('module._heads.')}) == keys
    a = ck.realized['heads']['a']
    assert a['summary']['blocks.1.2.weight'].shape == (24, 24)
    assert a['feature']['blocks.0.attn.qkv.weight'].shape == (96, 32)
    assert 'blocks.0.attn.qkv.bias' not in a['feature'] and 'blocks.1.ls2.gamma' in a['feature']
    assert a['feature']['mlp.final.2.weight'].shape == (16, 24)
    assert ck.realized['heads']['b']['summary']['norm.weight'].shape == (24,)
    assert ck.realized['heads']['b']['feature']['final.2.weight'].shape == (16, 24)
    assert ck.realized['heads']['c']['feature']['final.2.weight'].shape == (2 * 2 * 8, 24)
    kp = '0' if keyed_by == 'index' else 'a'
    qkv = f'module._feature_projections.{kp}.blocks.0.attn.qkv.parametrizations.weight'
    assert f'{qkv}.0.parts.2._v' in sd
    assert f'module._heads.{kp}.fc1.parametrizations.weight.0._sn_version' in sd
    assert ck.args.teachers[0]['spatial_mlp_version'] == 'attn'
    _assert_weights_equal(R.realize_checkpoint(ck.checkpoint).weights, ck.realized)
    if keyed_by == 'index':  # the first teacher named 'a' (index 0) wins over index 2
        assert not torch.equal(sd['module._heads.2.fc1.parametrizations.weight.original'].float(),
                               sd['module._heads.0.fc1.parametrizations.weight.original'].float())


def test_normalizers_and_dtypes():
    ck = W.make_checkpoint(None, feature_normalizer=True, intermediate_normalizer='per_layer',
                           depth=3, storage_dtype=torch.bfloat16, args_dtype=torch.bfloat16,
                           extra_args={'register_multiple': W.DROP, 'foo': 1})
    assert ck.args.dtype == torch.bfloat16 and ck.args.foo == 1
    assert not hasattr(ck.args, 'register_multiple')
    assert ck.num_registers == 0
    assert ck.realized['backbone']['patch_generator.cls_token.token'].shape == (3, 32)
    assert all(v.dtype == torch.bfloat16 for v in ck.raw_state_dict.values())
    assert ck.realized['feature_normalizer']['tx'].shape == (32, 32)
    inter = ck.realized['intermediate_normalizer']
    assert inter['rotation'].shape == (3, 32, 32)
    assert inter['means'].shape == (3, 32) and inter['alphas'].shape == (3,)
    shared = W.make_checkpoint(None, intermediate_normalizer='shared')
    assert shared.realized['intermediate_normalizer']['rotation'].shape == (32, 32)


def test_hostile_truncated_and_foreign_files(tmp_path):
    marker = tmp_path / 'pwned'
    W.write_hostile_checkpoint(tmp_path / 'h.pth.tar', marker)
    with pytest.raises(pickle.UnpicklingError):
        R.load_reference(str(tmp_path / 'h.pth.tar'))
    assert not marker.exists()
    torch.load(tmp_path / 'h.pth.tar', weights_only=False)  # proves the payload is live
    assert marker.exists()

    good = W.make_checkpoint(tmp_path / 'g.pth.tar')
    W.write_truncated_checkpoint(good.path, tmp_path / 't.pth.tar')
    assert os.path.getsize(tmp_path / 't.pth.tar') < os.path.getsize(good.path)
    with pytest.raises(RuntimeError, match='central directory'):
        R.load_reference(str(tmp_path / 't.pth.tar'))

    W.write_not_radio_checkpoint(tmp_path / 'n.pth.tar')
    assert 'args' not in torch.load(tmp_path / 'n.pth.tar', weights_only=True)
    with pytest.raises(ValueError, match='args'):
        R.load_reference(str(tmp_path / 'n.pth.tar'))


def test_reference_rejects_inconsistent_files():
    ck = W.make_checkpoint(None, spectral_reparam=True)
    bad = dict(ck.checkpoint)
    bad['args'] = argparse.Namespace(**{**vars(ck.args), 'spectral_reparam': False})
    with pytest.raises(ValueError, match='spectrally'):
        R.realize_checkpoint(bad)
    sd = {k: v for k, v in ck.raw_state_dict.items() if not k.endswith('_sn_version')}
    with pytest.raises(ValueError, match='_sn_version'):
        R.realize_checkpoint({**ck.checkpoint, 'state_dict': sd})


# ----------------------------------------------------------------------------------------------
# Reference: paths the fixtures do not reach, against independent computations


def _timm_block(p: Dict[str, torch.Tensor], dim: int, heads: int, hidden: int, eps: float,
                qkv_bias: bool) -> torch.nn.Module:
    from timm.models.vision_transformer import Block

    ls = any(k.startswith('ls1.') for k in p)
    blk = Block(dim, heads, mlp_ratio=hidden / dim, qkv_bias=qkv_bias,
                qk_norm='attn.q_norm.weight' in p, init_values=1.0 if ls else None,
                norm_layer=partial(torch.nn.LayerNorm, eps=eps))
    blk.load_state_dict({k.replace('.grandma', '.gamma'): v for k, v in p.items()}, strict=True)
    return blk.eval()


@pytest.mark.parametrize('layerscale,qk_norm', [(None, False), ('gamma', True), ('grandma', False)])
def test_block_matches_timm(layerscale, qk_norm):
    ck = W.make_checkpoint(None, embed_dim=32, num_heads=4, depth=1, layerscale=layerscale,
                           qk_norm=qk_norm, storage_dtype=torch.float32)
    p = R._sub(ck.realized['backbone'], 'blocks.0.')
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = _timm_block(p, 32, 4, 128, 1e-6, True)(x)
    got = R._vit_block(x, p, 4, 1e-6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_attn_head_matches_timm_and_runs_in_forward():
    ck = W.make_checkpoint(None, embed_dim=32, storage_dtype=torch.float32,
                           head_variants={'clip': {'spatial_mlp_version': 'attn'}})
    p = ck.realized['heads']['clip']['feature']
    x = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = x
        for b in ('blocks.0.', 'blocks.1.'):
            y = _timm_block(R._sub(p, b), 32, 16, 128, 1e-6, False)(y)
    want = R._mlp_v2(y, R._sub(p, 'mlp.'))
    torch.testing.assert_close(R.ref_head('attn', p, x), want, rtol=1e-5, atol=1e-5)
    out = R.ref_forward(ck.realized, ck.args, torch.rand(1, 3, 32, 48), 'NCHW', ['clip'])
    assert out['clip'].features.shape == (1, 16, 2, 3)


def test_v1_heads_and_upsampling():
    teachers = [{'name': 'a', 'type': 'generic', 'fd_upsample_factor': 2},
                {'name': 'b', 'type': 'generic'}]
    ck = W.make_checkpoint(None, teachers=teachers, mlp_version='v1', head_out=5)
    x = torch.rand(2, 3, 48, 32)
    out = R.ref_forward(ck.realized, ck.args, x, 'NLC', ['a', 'b'])
    assert out['a'].summary.shape == (2, 5)
    assert out['a'].features.shape == (2, 3 * 2 * 2 * 2, 5)
    nchw = R.ref_forward(ck.realized, ck.args, x, 'NCHW', ['a'])
    assert nchw['a'].features.shape == (2, 5, 6, 4)
    # An independent formulation of the rearrangement (adaptors.md §4).
    f = torch.randn(2, 3 * 2, 3 * 3 * 4)
    alt = f.reshape(2, 3, 2, 3, 3, 4).permute(0, 1, 3, 2, 4, 5).reshape(2, 3 * 3 * 2 * 3, 4)
    assert torch.equal(R.ref_upsample_tokens(f, 3, 2, 3), alt)
    # v1 summary head: fc1 -> LayerNorm(1e-5) -> ReLU -> fc2
    p = ck.realized['heads']['b']['summary']
    s = torch.randn(3, 32)
    h = F.layer_norm(F.linear(s, p['fc1.weight'], p['fc1.bias']), (24,), p['norm.weight'],
                     p['norm.bias'], 1e-5)
    want = F.linear(torch.relu(h), p['fc2.weight'], p['fc2.bias'])
    torch.testing.assert_close(R.ref_head('v1', p, s), want)


@pytest.mark.parametrize('depth,kw,globals_', [
    (12, {'num_global': 4}, [2, 5, 8, 11]),
    (24, {'num_global': 4}, [5, 11, 17, 23]),
    (32, {'num_global': 4}, [7, 15, 23, 31]),
    (32, {'num_windowed': 5}, [5, 11, 17, 23, 29, 31]),
    (32, {'num_global': 8}, [3, 7, 11, 15, 19, 23, 27, 31]),
    (40, {'num_global': 8}, [4, 9, 14, 19, 24, 29, 34, 39]),
    (27, {}, [5, 11, 17, 23, 26]),
    (8, {'num_windowed': 1}, [1, 3, 5, 7]),
])
def test_vitdet_global_blocks_match_spec_table(depth, kw, globals_):
    flags = R.vitdet_windowed_blocks(depth, **kw)
    assert [i for i, f in enumerate(flags) if not f] == globals_
    with pytest.raises(ValueError):
        R.vitdet_windowed_blocks(4, num_windowed=0)


def test_vitdet_window_locality_and_prefix_stash():
    ck = W.make_checkpoint(None, depth=3, storage_dtype=torch.float32)
    sd, args = ck.realized, ck.args
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))  # 4x4 patches
    kw = dict(vitdet_window_size=2, num_windowed=1, output_fmt='NLC', intermediates_only=True)
    assert R.vitdet_windowed_blocks(3, num_windowed=1) == [True, False, False]
    y0 = R.ref_forward_intermediates(sd, args, x, [0], 'sparse', 'none',
                                     return_prefix_tokens=True, **kw)[0]
    s_ = ck.num_cls_tokens + ck.num_registers
    token = sd['backbone']['patch_generator.cls_token.token']
    # Prefix tokens sit out block 0: the summary is summary_idxs [0, 1] of the stored tokens.
    torch.testing.assert_close(y0.summary, token[[0, 1]].reshape(1, -1), rtol=0, atol=0)
    # Changing the pixels of window (0, 0) changes only that window's tokens after block 0.
    x2 = x.clone()
    x2[..., :32, :32] = torch.rand(1, 3, 32, 32)
    y0b = R.ref_forward_intermediates(sd, args, x2, [0], 'sparse', 'none', **kw)[0]
    changed = ((y0b - y0.features).abs().amax(-1) > 0)[0]
    win0 = R.vitdet_window_indices(4, 4, 2)[0]
    assert changed.nonzero().flatten().tolist() == sorted(win0)
    # A windowed block equals the plain block applied to the window alone.
    toks = R.ref_tokens(sd, args, R.ref_condition(sd, args, x))
    p = R._sub(sd['backbone'], 'blocks.0.')
    win3 = R.vitdet_window_indices(4, 4, 2)[3]
    alone = R._vit_block(toks[:, s_ + torch.tensor(win3)], p, 2, 1e-6)
    torch.testing.assert_close(y0.features[:, win3], alone, rtol=0, atol=0)
    # The full forward differs from the global one and rejects sizes off the window step.
    vd = dict(vitdet_window_size=2, num_windowed=1)
    assert not torch.allclose(R.ref_forward(sd, args, x, **vd).features,
                              R.ref_forward(sd, args, x).features)
    with pytest.raises(ValueError):
        R.ref_forward(sd, args, torch.rand(1, 3, 48, 64), **vd)


def test_dense_aggregation_formulas():
    ck = W.make_checkpoint(None, depth=4, intermediate_normalizer='per_layer',
                           storage_dtype=torch.float32)
    sd, args = ck.realized, ck.args
    x = torch.rand(1, 3, 32, 48)

    def fi(indices, aggregation, scheme):
        return R.ref_forward_intermediates(sd, args, x, indices, aggregation, scheme,
                                           output_fmt='NLC', intermediates_only=True)

    t = fi([0, 1, 2, 3], 'sparse', 'none')  # raw spatial tokens after each block
    nz = sd['intermediate_normalizer']
    pre, post, none = fi([1, 3], 'dense', 'pre-alpha'), fi([1, 3], 'dense', 'post-alpha'), \
        fi([1, 3], 'dense', 'none')
    for gi, grp in enumerate([[0, 1], [2, 3]]):
        g = grp[-1]  # the group's last layer's rotation for every member
        centred = [(t[k] - nz['means'][k]) @ nz['rotation'][g].t() for k in grp]
        want_pre = sum(nz['alphas'][k] * c for k, c in zip(grp, centred)) / len(grp)
        want_post = (sum(nz['alphas'][k] for k in grp) / len(grp)) * sum(centred) / len(grp)
        want_none = sum(t[k] for k in grp) / len(grp)
        torch.testing.assert_close(pre[gi], want_pre, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(post[gi], want_post, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(none[gi], want_none, rtol=1e-5, atol=1e-5)
    sparse = fi([2], 'sparse', 'post-alpha')[0]
    want = nz['alphas'][2] * ((t[2] - nz['means'][2]) @ nz['rotation'][2].t())
    torch.testing.assert_close(sparse, want, rtol=1e-5, atol=1e-5)
    final, _ = R.ref_forward_intermediates(sd, args, x, [3], 'sparse', 'none', output_fmt='NLC')
    torch.testing.assert_close(final.features, R.ref_forward(sd, args, x).features, rtol=0, atol=0)


def test_bfloat16_dtype_flow():
    ck = W.make_checkpoint(None, args_dtype=torch.bfloat16, feature_normalizer=True)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = R.ref_forward(ck.realized, ck.args, x, 'NLC', ['clip'])
    assert out['backbone'].summary.dtype == torch.bfloat16
    assert out['backbone'].features.dtype == torch.bfloat16
    f, s = out['clip'].features, out['clip'].summary
    assert f.dtype == torch.float32 and s.dtype == torch.float32
    assert torch.equal(f, f.bfloat16().float())  # rounded through the backbone dtype
    assert not torch.equal(s, s.bfloat16().float())
    args32 = argparse.Namespace(**{**vars(ck.args), 'dtype': torch.float32})
    ref32 = R.ref_forward(ck.realized, args32, x)
    rel = (out['backbone'].features.float() - ref32.features).norm() / ref32.features.norm()
    assert 1e-5 < rel.item() < 5e-2


def test_outputs_are_not_degenerate():
    ck = W.make_checkpoint(None, model_norm=True, depth=2)
    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    out = R.ref_forward(ck.realized, ck.args, x)
    assert out.summary.shape == (2, 2 * 32) and out.features.shape == (2, 12, 32)
    f = out.features
    assert f.std() > 0.1
    assert (f[0] - f[1]).abs().mean() > 0.05 and (f[0, 0] - f[0, 1]).abs().mean() > 0.05
    # The grid size uses the table as stored; other sizes resize then crop.
    table = ck.realized['backbone']['patch_generator.pos_embed']
    torch.testing.assert_close(R.ref_pos_embed(table, 4, 4, 4), table, rtol=0, atol=0)
    assert R.ref_pos_embed(table, 4, 2, 6).shape == (1, 12, 32)
