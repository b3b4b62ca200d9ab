"""radio.layers.normalizers: whitening of final and intermediate features, NLC and NCHW alike."""

import pytest
import torch

from radio.layers.normalizers import FeatureNormalizer, IntermediateFeatureNormalizer, NullIntermediateNormalizer

D = 6


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _feature_normalizer(dtype=torch.float64) -> FeatureNormalizer:
    fn = FeatureNormalizer(D, dtype=dtype)
    fn.load_state_dict({"mean": _rand(D, seed=1, dtype=dtype), "tx": _rand(D, D, seed=2, dtype=dtype)})
    return fn


def test_defaults_are_identity():
    fn = FeatureNormalizer(D)
    x = _rand(2, 5, D, dtype=torch.float32)
    assert torch.equal(fn(x), x)


def test_feature_normalizer_formula_per_token():
    fn = _feature_normalizer()
    x = _rand(2, 5, D, seed=3)
    y = fn(x)
    for b in range(2):
        for n in range(5):  # y = tx @ (x - mean), token by token
            torch.testing.assert_close(y[b, n], fn.tx @ (x[b, n] - fn.mean))


def test_feature_normalizer_nchw_agrees_with_nlc():
    fn = _feature_normalizer()
    h, w = 3, 4
    nlc = _rand(2, h * w, D, seed=4)
    nchw = nlc.reshape(2, h, w, D).permute(0, 3, 1, 2)
    y_nlc, y_nchw = fn(nlc), fn(nchw)
    assert y_nchw.shape == (2, D, h, w)
    torch.testing.assert_close(y_nchw.permute(0, 2, 3, 1).reshape(2, h * w, D), y_nlc, rtol=1e-12, atol=1e-12)


def test_feature_normalizer_accepts_vectors_and_rejects_5d():
    fn = _feature_normalizer()
    v = _rand(3, D, seed=5)
    torch.testing.assert_close(fn(v), (v - fn.mean) @ fn.tx.T)
    with pytest.raises(ValueError, match=r"NLC \(3-D\) or NCHW \(4-D\).*\(1, 6, 2, 2, 2\)"):
        fn(_rand(1, D, 2, 2, 2))


@pytest.fixture(params=[False, True], ids=["shared_rotation", "per_layer_rotation"])
def inter(request):
    layers = 3
    norm = IntermediateFeatureNormalizer(layers, D, per_layer_rotation=request.param, dtype=torch.float64)
    rot_shape = (layers, D, D) if request.param else (D, D)
    norm.load_state_dict({"alphas": torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64),
                          "rotation": _rand(*rot_shape, seed=6), "means": _rand(layers, D, seed=7)})
    return norm


def _rot(norm, i):
    return norm.rotation[i] if norm.rotation.ndim == 3 else norm.rotation


def test_intermediate_normalizer_nlc_nchw_and_alpha(inter):
    assert inter.num_layers == 3
    h, w = 2, 3
    x = _rand(2, h * w, D, seed=8)
    for i in range(3):
        y, alpha = inter(x, i)
        expected = torch.stack([torch.stack([_rot(inter, i) @ (t - inter.means[i]) for t in s]) for s in x])
        torch.testing.assert_close(y, expected)
        assert alpha.shape == (1, h * w, 1) and torch.all(alpha == inter.alphas[i])
        y4, a4 = inter(x.reshape(2, h, w, D).permute(0, 3, 1, 2), i)
        torch.testing.assert_close(y4.permute(0, 2, 3, 1).reshape(2, h * w, D), y, rtol=1e-12, atol=1e-12)
        assert a4.shape == (1, 1, h, w) and torch.all(a4 == inter.alphas[i])


def test_intermediate_normalizer_rot_index_and_prefix_skip(inter):
    x = _rand(1, 2 + 4, D, seed=9)
    y, alpha = inter(x, 0, rot_index=2, skip=2)
    assert torch.equal(y[:, :2], x[:, :2])  # prefix tokens pass through
    expected = (x[:, 2:] - inter.means[0]) @ _rot(inter, 2).T  # mean of block 0, rotation of block 2
    torch.testing.assert_close(y[:, 2:], expected)
    assert alpha.flatten().tolist() == [1.0, 1.0] + [0.5] * 4
    with pytest.raises(ValueError, match="prefix skipping needs NLC tokens"):
        inter(x.reshape(1, D, 2, 3), 0, skip=1)
    with pytest.raises(ValueError, match="3-D or 4-D"):
        inter(x[0, 0], 0)


def test_null_intermediate_normalizer_is_identity_with_unit_alpha():
    x = _rand(2, 4, D, seed=10, dtype=torch.bfloat16)
    y, alpha = NullIntermediateNormalizer()(x, 5, rot_index=1, skip=2)
    assert y is x and alpha.shape == () and alpha.item() == 1.0 and alpha.dtype == torch.bfloat16
