"""radio.layers.norms: DyT and the depth-scaled LayerNorm of ViT-g, against their formulas."""

import math

import torch
import torch.nn.functional as F

from radio.layers.norms import LN_EPS, DyT, ScaledLayerNorm


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_dyt_formula_and_defaults():
    dyt = DyT(4).double()
    assert dyt.alpha.shape == (1,) and dyt.alpha.item() == torch.tensor(0.9).item()  # float32 0.9
    assert torch.equal(dyt.gamma, torch.ones(4, dtype=torch.float64))
    assert torch.equal(dyt.beta, torch.zeros(4, dtype=torch.float64))
    with torch.no_grad():
        dyt.alpha.fill_(0.3)
        dyt.gamma.copy_(_rand(4, seed=1))
        dyt.beta.copy_(_rand(4, seed=2))
    x = _rand(2, 3, 4, seed=3)
    y = dyt(x)
    for idx in torch.cartesian_prod(torch.arange(2), torch.arange(3), torch.arange(4)).tolist():
        b, n, c = idx
        expected = dyt.gamma[c].item() * math.tanh(0.3 * x[b, n, c].item()) + dyt.beta[c].item()
        assert abs(y[b, n, c].item() - expected) < 1e-12


def test_scaled_layernorm_formula():
    for j in (0, 1, 3):
        ln = ScaledLayerNorm(5, depth_index=j, dtype=torch.float64)
        assert ln.eps == LN_EPS == 1e-6
        with torch.no_grad():
            ln.weight.copy_(_rand(5, seed=4))
            ln.bias.copy_(_rand(5, seed=5))
        x = _rand(2, 3, 5, seed=6)
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        expected = ((x - mu) / torch.sqrt(var + 1e-6) * ln.weight + ln.bias) / math.sqrt(j + 1)
        torch.testing.assert_close(ln(x), expected)
        assert ln.ln_scale.dtype == torch.float64
        assert ln.ln_scale.item() == torch.tensor((j + 1) ** -0.5).double().item()  # a float32 constant


def test_scaled_layernorm_scale_is_a_float32_constant_rounded_to_the_weight_dtype():
    ln = ScaledLayerNorm(4, depth_index=2, dtype=torch.bfloat16)
    assert ln.ln_scale.dtype == torch.bfloat16
    assert torch.equal(ln.ln_scale, torch.tensor(3 ** -0.5, dtype=torch.float32).bfloat16())
    assert "ln_scale" not in ln.state_dict()  # not persistent: never read from or written to a file


def test_scaled_layernorm_built_on_meta_is_filled_after_assignment():
    with torch.device("meta"):
        ln = ScaledLayerNorm(4, depth_index=8)
    assert ln.ln_scale.is_meta
    ln.load_state_dict({"weight": torch.ones(4), "bias": torch.zeros(4)}, assign=True)
    ln.ln_scale = torch.empty((), device="cpu")  # as to_empty() would leave it
    ln.reset_non_persistent_buffers()
    assert ln.ln_scale.item() == torch.tensor(1 / 3, dtype=torch.float32).item()
    x = _rand(1, 4, seed=7).float()
    torch.testing.assert_close(ln(x), F.layer_norm(x, (4,), eps=1e-6) / 3)
