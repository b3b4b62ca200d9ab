"""radio.backbone: RadioBlock (global or ViTDet-windowed attention) and RadioViT built from an
ArchSpec; the architecture variants of whole checkpoints against the independent reference
(tests/reference.py), ViTDet, the scaled LayerNorm of ViT-g, the DINOv2 wrappers and global pooling."""

import dataclasses

import pytest
import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block

from ckpt_writer import make_checkpoint
from radio_test_utils import assert_close_rel, assert_model_matches_reference, assert_outputs_close
from reference import ref_forward, ref_forward_intermediates

from radio import radio_model
from radio.architectures import ArchSpec
from radio.backbone import RadioBlock, RadioViT
from radio.layers.mlp import NormMlp, SwiGLU
from radio.layers.norms import DyT, ScaledLayerNorm

ALL = ["clip", "dino_v2", "sam"]


def _randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return module.eval()


def _spec(**kw):
    base = dict(name="tiny", patch_size=4, embed_dim=16, depth=4, num_heads=2, mlp_hidden=32, img_size=(224, 224))
    base.update(kw)
    return ArchSpec(**base)


# ---------------------------------------------------------------------------------------------
# RadioBlock


def test_global_block_is_timm_block():
    blk = _randomize(RadioBlock(16, 2, window_size=0, num_prefix_tokens=3).double())
    x = torch.randn(2, 3 + 12, 16, dtype=torch.float64)
    assert torch.equal(blk(x, (3, 4)), Block.forward(blk, x)) and torch.equal(blk(x), Block.forward(blk, x))
    assert blk.extra_repr() == ""


def test_windowed_block_attends_within_each_window_and_passes_prefix_through():
    s, (h, w), ws = 3, (4, 6), 2
    blk = _randomize(RadioBlock(16, 2, window_size=ws, num_prefix_tokens=s).double(), 1)
    x = torch.randn(2, s + h * w, 16, dtype=torch.float64)
    y = blk(x, (h, w))
    assert y.shape == x.shape and torch.equal(y[:, :s], x[:, :s])
    for wy in range(h // ws):
        for wx in range(w // ws):  # every window on its own, through the plain block
            idx = [s + (wy * ws + i) * w + (wx * ws + j) for i in range(ws) for j in range(ws)]
            torch.testing.assert_close(y[:, idx], Block.forward(blk, x[:, idx]))
    assert blk.extra_repr() == "window_size=2"
    with pytest.raises(ValueError, match=r"needs the patch grid size \(grid_hw\)"):
        blk(x)


# ---------------------------------------------------------------------------------------------
# RadioViT construction


def test_windowed_and_global_blocks_are_chosen_at_construction():
    with torch.device("meta"):
        vit = RadioViT(_spec(depth=6), cpe_max_size=32, num_cls_tokens=2, num_registers=2, window_size=3,
                       global_blocks=[2, 5])
        plain = RadioViT(_spec(depth=6), cpe_max_size=32, num_cls_tokens=2, num_registers=2)
    assert [b.window_size for b in vit.blocks] == [3, 3, 0, 3, 3, 0]
    assert [b.window_size for b in plain.blocks] == [0] * 6
    assert {b.num_prefix_tokens for b in vit.blocks} == {4} and vit.num_prefix_tokens == 4
    assert isinstance(plain.norm, torch.nn.Identity)


@pytest.mark.parametrize("kw,norm_type,mlp_type", [
    ({}, torch.nn.LayerNorm, Mlp),
    ({"block_norm": "dyt"}, DyT, Mlp),
    ({"scaled_ln": True}, ScaledLayerNorm, Mlp),
    ({"mlp_norm": True}, torch.nn.LayerNorm, NormMlp),
    ({"mlp_kind": "swiglu", "family": "dinov2", "embed_bias": True}, torch.nn.LayerNorm, SwiGLU),
])
def test_block_layers_follow_the_spec(kw, norm_type, mlp_type):
    with torch.device("meta"):
        vit = RadioViT(_spec(**kw), cpe_max_size=32, num_cls_tokens=1, num_registers=0, final_norm=True)
    for j, blk in enumerate(vit.blocks):
        assert type(blk.norm1) is norm_type and type(blk.mlp) is mlp_type
        if norm_type is torch.nn.LayerNorm:
            assert blk.norm1.eps == 1e-6
        if norm_type is ScaledLayerNorm:
            assert blk.norm1.depth_index == blk.norm2.depth_index == j
    assert isinstance(vit.norm, torch.nn.LayerNorm) and vit.norm.eps == 1e-6
    assert (vit.patch_generator.embedder.bias is not None) == bool(kw.get("embed_bias"))


def test_mlp_hidden_and_cpe_mode_come_from_the_spec():
    with torch.device("meta"):
        so400m = RadioViT(_spec(embed_dim=1152, num_heads=16, depth=1, mlp_hidden=4304), 64, 1, 0)
        crop = RadioViT(_spec(img_size=(32, 32)), cpe_max_size=32, num_cls_tokens=1, num_registers=0)
        resize = RadioViT(_spec(img_size=(224, 224)), cpe_max_size=32, num_cls_tokens=1, num_registers=0)
        dino = RadioViT(_spec(img_size=(32, 32), family="dinov2"), cpe_max_size=32, num_cls_tokens=1, num_registers=0)
    assert so400m.blocks[0].mlp.fc1.out_features == 4304  # 1152 * (4304/1152) must not round down
    assert crop.patch_generator.cpe_mode is False and resize.patch_generator.cpe_mode is True
    assert dino.patch_generator.cpe_mode is True and crop.patch_generator.grid_size == 8


def test_iter_blocks_yields_every_block_and_stops_early():
    vit = _randomize(RadioViT(_spec(depth=3), cpe_max_size=32, num_cls_tokens=1, num_registers=1, final_norm=True))
    x = torch.randn(1, 3, 8, 12)
    with torch.no_grad():
        steps = list(vit.iter_blocks(x))
        early = list(vit.iter_blocks(x, stop=1))
        tokens = vit.patch_generator(x)
        expected = []
        for blk in vit.blocks:
            tokens = blk(tokens, (2, 3))
            expected.append(tokens)
        out = vit(x)
    assert [i for i, _ in steps] == [0, 1, 2] and [i for i, _ in early] == [0, 1]
    for (_, got), ref in zip(steps, expected):
        assert torch.equal(got, ref)
    assert torch.equal(out, vit.norm(expected[-1])) and vit.grid_size(x) == (2, 3)


# ---------------------------------------------------------------------------------------------
# Architecture variants of whole checkpoints against the reference

ARCH_VARIANTS = {
    "base": {},
    "layerscale_gamma": dict(layerscale="gamma"),
    "layerscale_grandma": dict(layerscale="grandma"),
    "qk_norm": dict(qk_norm=True),
    "model_norm": dict(model_norm=True),
    "unused_keys_v2_arch": dict(model="vit_base_patch16_v2_224", unused_keys=True),
    "so400m_v2": dict(model="vit_so400m_v2_patch16_224"),
    "mlpnorm": dict(model="vit_huge_patch16_224_mlpnorm"),
    "dyt": dict(model="vit_large_dyt_patch16_224"),
    "patch14": dict(model="vit_huge_patch14_224", cpe_max_size=98),
    "bigG_patch14": dict(model="vit_bigG_patch14_224", cpe_max_size=70),
    "single_cls": dict(cls_token_per_teacher=False, register_multiple=4),
    "explicit_registers": dict(cpe_num_registers=3),
    "no_registers": dict(register_multiple=None),
}


@pytest.mark.parametrize("variant", list(ARCH_VARIANTS))
def test_forward_matches_reference(variant, tmp_path, images):
    path = tmp_path / f"{variant}.pth.tar"
    ck = make_checkpoint(path, **ARCH_VARIANTS[variant])
    assert_model_matches_reference(path, ck, images)


def test_vitdet_matches_reference_and_intermediates_agree(tmp_path, images, monkeypatch):
    from radio.versions import VERSIONS

    for name in ("radio_v2", "radio_v2.5-b"):  # a tiny file under a release name: skip the size check
        monkeypatch.setitem(VERSIONS, name, dataclasses.replace(VERSIONS[name], width_depth=None))
    ck = make_checkpoint(tmp_path / "d8.pth.tar", depth=8)
    x = images(2, 64, 128)
    for version, windowed, num_global in [(None, None, None), ("radio_v2", 5, None), ("radio_v2.5-b", None, 4)]:
        model = radio_model(version or "", checkpoint_path=tmp_path / "d8.pth.tar", vitdet_window_size=2)
        assert model.window_size == 2 and model.min_resolution_step == 32
        with torch.no_grad():
            out = model(x)
            final, inter = model.forward_intermediates(x, indices=[-1], output_fmt="NLC")
        ref = ref_forward(ck.realized, ck.args, x, vitdet_window_size=2, num_windowed=windowed,
                          num_global=num_global)
        assert_outputs_close(out, ref)
        assert_outputs_close(final, out)
        assert_close_rel(inter[-1], out.features)
        plain = radio_model(str(tmp_path / "d8.pth.tar"))
        with torch.no_grad():
            assert (plain(x).features - out.features).abs().max() > 1e-3  # windowing changes the result


def test_vitdet_window_wider_than_position_table_of_a_file(tmp_path, images):
    """vitdet.md §1: a file takes any window; inputs beyond the position table interpolate it (§3.4)."""
    ck = make_checkpoint(tmp_path / "d8.pth.tar", depth=8)  # cpe_max_size 64: a 4x4 table
    model = radio_model(str(tmp_path / "d8.pth.tar"), vitdet_window_size=8)
    assert model.min_resolution_step == 128
    x = images(1, 128, 256)
    with torch.no_grad():
        out = model(x)
    assert_outputs_close(out, ref_forward(ck.realized, ck.args, x, vitdet_window_size=8))


def test_vitdet_rejects_unwindowable_depth(tmp_path):
    make_checkpoint(tmp_path / "d2.pth.tar", depth=2)
    with pytest.raises(ValueError, match="period of 1"):
        radio_model(str(tmp_path / "d2.pth.tar"), vitdet_window_size=2)


@pytest.mark.parametrize("dtype,tol,qk_norm", [(None, 1e-5, False), (torch.bfloat16, 1e-2, False), (None, 1e-5, True)])
def test_giant_scaled_layernorm(dtype, tol, qk_norm, tmp_path, images):
    """model.md §2.3: only norm1/norm2 are scaled; q/k norms (qk_norm) stay plain LayerNorms."""
    ck = make_checkpoint(tmp_path / "g.pth.tar", model="vit_giant_patch16_224", depth=3, args_dtype=dtype,
                         qk_norm=qk_norm,
                         extra_args={"model_kwargs": {"depth": 3, "embed_dim": 32, "num_heads": 2,
                                                      "scaled_ln": True, "qk_norm": qk_norm}})
    model = radio_model(str(tmp_path / "g.pth.tar"))
    scale = model.model.blocks[2].norm1.ln_scale
    assert torch.equal(scale, torch.tensor(3 ** -0.5).to(dtype or torch.float32))
    x = images(1, 32, 48)
    with torch.no_grad():
        out = model(x)
    assert_outputs_close(out, ref_forward(ck.realized, ck.args, x), tol)


def _write_dinov2_student(tmp_path, monkeypatch, teachers, registers):
    """A shrunk ``dino_v2_l_student`` file (keys under base_model.inner., an embedder bias) and the
    realized reference weights of the equivalent CPE ViT."""
    import copy

    import radio.architectures as archs

    tiny = dataclasses.replace(archs.DINOV2_ARCHITECTURES["dino_v2_l_student"], embed_dim=32, depth=2,
                               num_heads=2, mlp_hidden=128)
    monkeypatch.setitem(archs.DINOV2_ARCHITECTURES, "dino_v2_l_student", tiny)
    ck = make_checkpoint(None, model="vit_huge_patch14_224", cpe_max_size=98, layerscale="grandma",
                         model_norm=True, write_final_norm=True, teachers=teachers, register_multiple=None,
                         cpe_num_registers=registers)
    bias = torch.randn(32, generator=torch.Generator().manual_seed(3)).half()
    realized = copy.deepcopy(ck.realized)
    realized["backbone"]["patch_generator.embedder.bias"] = bias.float()
    sd = {}
    for k, v in ck.checkpoint["state_dict"].items():
        sd[k.replace("base_model.", "base_model.inner.", 1) if k.startswith("base_model.") else k] = v
    sd["base_model.inner.patch_generator.embedder.bias"] = bias
    sd["base_model.inner.mask_token"] = torch.zeros(1, 32).half()
    sd["base_model.input_conditioner.norm_mean"] = torch.zeros(3, 1, 1)
    args = copy.deepcopy(ck.checkpoint["args"])
    args.model, args.model_norm = "dino_v2_l_student", False
    torch.save({"args": args, "state_dict": sd}, tmp_path / "dino.pth.tar")
    return tmp_path / "dino.pth.tar", ck, realized


def test_dinov2_wrapper_family(tmp_path, images, monkeypatch):
    """dino_v2_*_student: keys under base_model.inner., embedder bias, final norm always applied,
    summary = token 0 for every use of forward. The fixed full-size architecture is shrunk for the test."""
    path, ck, realized = _write_dinov2_student(tmp_path, monkeypatch, [{"name": "clip", "type": "generic"}], 4)
    model = radio_model(str(path), adaptor_names="clip")
    assert model.num_summary_tokens == 5 and isinstance(model.model.norm, torch.nn.LayerNorm)
    x = images(2, 56, 84)
    with torch.no_grad():
        out = model(x)
    assert out["backbone"].summary.shape == (2, 32)
    assert_outputs_close(out, ref_forward(realized, ck.args, x, adaptor_names="clip"))


def test_dinov2_wrapper_intermediate_summaries_follow_summary_idxs(tmp_path, images, monkeypatch):
    """intermediates.md §7: forward_intermediates uses the generator's S and T for this family too, so a
    block's summary is its T tokens reduced to summary_idxs (B, k*D), unlike forward's token 0."""
    teachers = [{"name": "clip", "type": "generic"}, {"name": "dino_v2", "type": "generic"}]
    path, ck, realized = _write_dinov2_student(tmp_path, monkeypatch, teachers, 3)
    model = radio_model(str(path))
    x = images(2, 56, 84)
    kw = dict(indices=[0, 1], return_prefix_tokens=True, intermediates_only=True, output_fmt="NLC")
    with torch.no_grad():
        inter = model.forward_intermediates(x, **kw)
        assert model(x).summary.shape == (2, 32)
    ref = ref_forward_intermediates(realized, ck.args, x, **kw)
    assert [o.summary.shape for o in inter] == [(2, 64), (2, 64)]
    for a, b in zip(inter, ref):
        assert_outputs_close(a, b)


def test_global_pool_moves_final_norm_out_of_the_cpe_path(tmp_path, images):
    """With args.gp='avg' timm puts the final norm into fc_norm, which the CPE path never applies."""
    ck = make_checkpoint(tmp_path / "gp.pth.tar", model_norm=True, write_final_norm=True, extra_args={"gp": "avg"})
    model = radio_model(str(tmp_path / "gp.pth.tar"))
    assert isinstance(model.model.norm, torch.nn.Identity)
    x = images(1, 32, 32)
    with torch.no_grad():
        assert_outputs_close(model(x), ref_forward(ck.realized, ck.args, x))
