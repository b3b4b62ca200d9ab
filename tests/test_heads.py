"""radio.heads: adaptor MLP variants (v1, v2, attn), their sizes read from a state dict, and the
feature-head upsampling; the head variants of whole checkpoints against the reference."""

import pytest
import torch
import torch.nn.functional as F

from ckpt_writer import make_checkpoint
from radio_test_utils import assert_outputs_close
from reference import ref_forward

from radio import radio_model
from radio.heads import AttnHead, MlpV1, MlpV2, build_head, head_sizes, upsample_tokens

ALL = ["clip", "dino_v2", "sam"]


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


def _lin(x, layer):
    return x @ layer.weight.T + layer.bias


@pytest.mark.parametrize("h,w,u,c", [(2, 3, 2, 4), (3, 1, 3, 2), (1, 1, 2, 1), (2, 2, 4, 3)])
def test_upsample_tokens_against_a_loop(h, w, u, c):
    b = 2
    x = torch.randn(b, h * w, u * u * c)
    y = upsample_tokens(x, (h, w), u)
    assert y.shape == (b, h * u * w * u, c)
    W = w * u
    for bi in range(b):
        for r in range(h):
            for q in range(w):
                for i in range(u):
                    for j in range(u):
                        out_index = (r * u + i) * W + (q * u + j)
                        k = i * u + j  # row offset slowest within the channel blocks
                        assert torch.equal(y[bi, out_index], x[bi, r * w + q, k * c:(k + 1) * c])


def test_upsample_tokens_identity_and_errors():
    x = torch.randn(1, 6, 8)
    assert upsample_tokens(x, (2, 3), None) is x and upsample_tokens(x, (2, 3), 1) is x
    with pytest.raises(ValueError, match=r"cannot upsample \(1, 6, 8\) tokens on a 3x3 grid by 2"):
        upsample_tokens(x, (3, 3), 2)
    with pytest.raises(ValueError, match="by 3"):
        upsample_tokens(x, (2, 3), 3)  # 8 channels are not 9 blocks


def _sd(module):
    return {k: v for k, v in module.state_dict().items()}


def test_head_sizes_are_read_from_the_state_dict():
    assert head_sizes(_sd(MlpV1(5, 7, 3)), "v1") == (5, 7, 3, 0)
    for n in (0, 1, 3):
        assert head_sizes(_sd(MlpV2(6, 9, 4, n)), "v2") == (6, 9, 4, n)
    assert head_sizes(_sd(AttnHead(16, 12, 5)), "attn") == (16, 12, 5, 0)


def test_head_sizes_errors_name_version_and_missing_key():
    with pytest.raises(ValueError, match=r"Unsupported adaptor MLP version 'v3'; known versions: v1, v2, attn"):
        head_sizes(_sd(MlpV1(5, 7, 3)), "v3")
    with pytest.raises(ValueError, match=r"lack 'final\.2\.weight'"):
        head_sizes(_sd(MlpV1(5, 7, 3)), "v2")  # a v1 layout read as v2
    with pytest.raises(ValueError, match=r"lack 'mlp\.fc1\.weight'"):
        head_sizes(_sd(MlpV2(6, 9, 4, 1)), "attn")


def test_build_head_shapes_match_and_load_strictly():
    for version, head in [("v1", MlpV1(5, 7, 3)), ("v2", MlpV2(6, 9, 4, 2)), ("attn", AttnHead(16, 12, 5))]:
        sd = _sd(_randomize(head))
        with torch.device("meta"):
            built = build_head(sd, version)
        assert type(built) is type(head)
        built.load_state_dict(sd, assign=True, strict=True)
        x = torch.randn(2, 3, head_sizes(sd, version)[0])
        with torch.no_grad():
            assert torch.equal(built.eval()(x), head.eval()(x))


def test_mlp_v1_formula():
    m = _randomize(MlpV1(4, 6, 3).double())
    x = torch.randn(5, 4, dtype=torch.float64)
    h = _lin(x, m.fc1)
    h = torch.relu(F.layer_norm(h, (6,), m.norm.weight, m.norm.bias, 1e-5))
    torch.testing.assert_close(m(x), _lin(h, m.fc2))


def test_mlp_v2_formula_with_residual_inner_blocks():
    m = _randomize(MlpV2(4, 6, 3, num_inner=2).double())
    x = torch.randn(5, 4, dtype=torch.float64)

    def ln_gelu_linear(h, seq):
        return _lin(F.gelu(F.layer_norm(h, (6,), seq[0].weight, seq[0].bias, 1e-5)), seq[2])

    h = _lin(x, m.fc1)
    for blk in m.blocks:
        h = h + ln_gelu_linear(h, blk)
    torch.testing.assert_close(m(x), ln_gelu_linear(h, m.final))


def test_attn_head_structure_and_width_check():
    head = AttnHead(32, 8, 4)
    assert len(head.blocks) == 2 and isinstance(head.mlp, MlpV2) and len(head.mlp.blocks) == 0
    blk = head.blocks[0]
    assert blk.attn.num_heads == 16 and blk.attn.qkv.bias is None and blk.mlp.fc1.out_features == 128
    assert blk.norm1.eps == 1e-6 and torch.all(blk.ls1.gamma == 1e-5)
    with pytest.raises(ValueError, match="width divisible by 16, got 24"):
        AttnHead(24, 8, 4)


@pytest.mark.parametrize("head_kw", [
    dict(mlp_version="v1"),
    dict(mlp_version="v2", spatial_mlp_version="attn"),
    dict(mlp_version="v2", fd_upsample_factor=2),
    dict(mlp_version="v2", spatial_mlp_version="attn", fd_upsample_factor=2),
    dict(mlp_version="v2", head_inner_blocks=3, spectral_heads=True),
    dict(head_variants={"clip": {"mlp_version": "v1"}, "dino_v2": {"spatial_mlp_version": "v1"}}),
])
def test_adaptor_head_variants(head_kw, tmp_path, images):
    ck = make_checkpoint(tmp_path / "h.pth.tar", **head_kw)
    model = radio_model(str(tmp_path / "h.pth.tar"), adaptor_names=ALL)
    x = images(2, 64, 32)
    for fmt in ("NLC", "NCHW"):
        with torch.no_grad():
            out = model(x, feature_fmt=fmt)
        assert_outputs_close(out, ref_forward(ck.realized, ck.args, x, fmt, adaptor_names=ALL))
    u = head_kw.get("fd_upsample_factor") or 1
    assert out["clip"].features.shape[-2:] == (4 * u, 2 * u)
