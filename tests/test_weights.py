"""The weights stage: parametrization folding, key renames, the typed weights record."""

import pytest
import torch

from ckpt_writer import make_checkpoint

from radio.args import config_from_args
from radio.checkpoint import CheckpointError, load_checkpoint
from radio.weights import (clean_prefixes, drop_unused, model_weights, realize_parametrizations, rename_layerscale,
                           split_prefix)


def test_spectral_realization_formula_by_hand():
    torch.manual_seed(0)
    w, u, v, scale = torch.randn(6, 4), torch.randn(6), torch.randn(4), torch.randn(1, 1)
    sd = {"fc.parametrizations.weight.original": w, "fc.parametrizations.weight.0._u": u,
          "fc.parametrizations.weight.0._v": v, "fc.parametrizations.weight.0.scale": scale,
          "fc.parametrizations.weight.0._sn_version": torch.tensor(1), "fc.bias": torch.zeros(6)}
    out = realize_parametrizations(sd, True)
    eps = 1e-6
    u1 = w @ v
    u1 = u1 / max(u1.norm(), eps)
    v1 = w.T @ u1
    v1 = v1 / max(v1.norm(), eps)
    sigma = u1 @ (w @ v1) + eps
    expected = w * ((torch.nn.functional.softplus(scale) + 0.05) / sigma)
    assert set(out) == {"fc.weight", "fc.bias"}
    torch.testing.assert_close(out["fc.weight"], expected, rtol=1e-6, atol=1e-7)


def test_missing_value_chunk_is_identity():
    torch.manual_seed(1)
    w = torch.randn(9, 3)
    sd = {"attn.qkv.parametrizations.weight.original": w}
    for c in range(2):
        sd.update({f"attn.qkv.parametrizations.weight.0.parts.{c}._u": torch.randn(3),
                   f"attn.qkv.parametrizations.weight.0.parts.{c}._v": torch.randn(3),
                   f"attn.qkv.parametrizations.weight.0.parts.{c}.scale": torch.zeros(1, 1),
                   f"attn.qkv.parametrizations.weight.0.parts.{c}._sn_version": torch.tensor(2)})
    out = realize_parametrizations(sd, True)
    assert torch.equal(out["attn.qkv.weight"][6:], w[6:])
    assert not torch.equal(out["attn.qkv.weight"][:3], w[:3])


def test_layerscale_gamma_wins_over_grandma():
    sd = {"ls1.grandma": torch.ones(2), "ls1.gamma": torch.zeros(2), "ls2.grandma": torch.full((2,), 3.0)}
    out = rename_layerscale(sd)
    assert set(out) == {"ls1.gamma", "ls2.gamma"}
    assert torch.equal(out["ls1.gamma"], torch.zeros(2)) and torch.equal(out["ls2.gamma"], torch.full((2,), 3.0))


def test_prefix_helpers():
    sd = {"module.a.x": torch.zeros(1), "_orig_mod.module.b": torch.ones(1), "module._orig_mod.e": torch.ones(1),
          "c.d": torch.ones(1)}
    assert sorted(clean_prefixes(sd)) == ["a.x", "b", "c.d", "e"]  # compile inside DDP and DDP inside compile
    assert list(split_prefix({"a.x": 1, "ab.y": 2, "a.z": 3}, "a.")) == ["x", "z"]
    assert sorted(drop_unused({"norm.w": 1, "norm": 2, "normx": 3, "head.b": 4}, ["norm", "head"])) == ["normx"]


def test_model_weights_match_the_writers_realized_weights(tmp_path):
    """Spectral backbone and heads, EMA off: every part equals what an ideal loader must produce."""
    ck = make_checkpoint(tmp_path / "s.pth.tar", spectral_reparam=True, spectral_heads=True, layerscale="grandma")
    src = load_checkpoint(tmp_path / "s.pth.tar")
    cfg = config_from_args(src.args)
    names = list(ck.realized["heads"])
    w = model_weights(src.args, src.state_dict, src.is_ema, cfg, names)
    want_bb = rename_layerscale(ck.realized["backbone"])
    assert set(w.backbone) == set(want_bb)
    for k, v in want_bb.items():
        assert w.backbone[k].dtype == cfg.dtype
        torch.testing.assert_close(w.backbone[k].float(), v, rtol=1e-5, atol=1e-6)
    assert set(w.heads) == set(names)
    for name in names:
        for part in ("summary", "feature"):
            got, want = getattr(w.heads[name], part), ck.realized["heads"][name][part]
            assert set(got) == set(want)
            for k in want:
                assert got[k].dtype == torch.float32
                torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    for k in ("norm_mean", "norm_std"):
        torch.testing.assert_close(w.conditioner[k], ck.realized["conditioner"][k])


def test_model_weights_errors_name_the_part(tmp_path):
    ck = make_checkpoint(None)
    for k in [k for k in ck.checkpoint["state_dict"] if k.startswith("_feature_projections.")]:
        del ck.checkpoint["state_dict"][k]
    torch.save(ck.checkpoint, tmp_path / "f.pth.tar")
    src = load_checkpoint(tmp_path / "f.pth.tar")
    cfg = config_from_args(src.args)
    name = cfg.teachers[0].name
    with pytest.raises(CheckpointError, match=f"adaptor '{name}': the checkpoint has no feature head"):
        model_weights(src.args, src.state_dict, src.is_ema, cfg, [name])
