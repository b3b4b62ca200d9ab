"""radio.layers.mlp: SwiGLU (DINOv2-g) and the mlpnorm MLP of ViT-H, against their formulas."""

import torch
import torch.nn.functional as F
from timm.layers import Mlp

from radio.layers.mlp import NormMlp, SwiGLU


def _init(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_swiglu_formula_and_layout():
    m = SwiGLU(4, 6, dtype=torch.float64, drop=0.0, act_layer=None)  # timm's extra kwargs are accepted
    assert dict((n, tuple(p.shape)) for n, p in m.named_parameters()) == {
        "w12.weight": (12, 4), "w12.bias": (12,), "w3.weight": (4, 6), "w3.bias": (4,)}
    _init(m, 0)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = x @ m.w12.weight.T + m.w12.bias
    a, b = h[..., :6], h[..., 6:]  # first half gated by SiLU, second half linear
    expected = (a * torch.sigmoid(a) * b) @ m.w3.weight.T + m.w3.bias
    torch.testing.assert_close(m(x), expected)


def test_norm_mlp_puts_a_layernorm_before_fc2():
    m = NormMlp(4, 8, norm_layer=None).double()
    assert isinstance(m, Mlp) and isinstance(m.norm, torch.nn.LayerNorm)
    assert m.norm.eps == 1e-5 and m.norm.normalized_shape == (8,)
    _init(m, 2)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h = F.gelu(x @ m.fc1.weight.T + m.fc1.bias)
    h = F.layer_norm(h, (8,), m.norm.weight, m.norm.bias, eps=1e-5)
    torch.testing.assert_close(m.eval()(x), h @ m.fc2.weight.T + m.fc2.bias)
    assert [n for n, _ in m.state_dict().items()] == [
        "fc1.weight", "fc1.bias", "norm.weight", "norm.bias", "fc2.weight", "fc2.bias"]
