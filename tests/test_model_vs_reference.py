"""The model against the independent functional reference (tests/reference.py), over many
official-format checkpoint variants written by tests/ckpt_writer.py.

The reference itself is validated against the original implementation's outputs in
test_reference_selfcheck.py.
"""

import pytest
import torch

from ckpt_writer import make_checkpoint
from conftest import assert_close_rel, assert_outputs_close
from reference import ref_forward, ref_forward_intermediates

from radio import radio_model

ALL = ["clip", "dino_v2", "sam"]

VARIANTS = {
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
    "spectral_true": dict(spectral_reparam=True),
    "spectral_dict": dict(spectral_reparam={"n_power_iterations": 3, "eps": 1e-12}),
    "damp": dict(damp=True),
    "spectral_damp": dict(spectral_reparam=True, damp=True),
    "ema": dict(ema=True, spectral_reparam=True, damp=True),
    "single_cls": dict(cls_token_per_teacher=False, register_multiple=4),
    "explicit_registers": dict(cpe_num_registers=3),
    "no_registers": dict(register_multiple=None),
    "heads_by_name": dict(heads_keyed_by="name", prefix_wrappers=True),
    "feature_normalizer": dict(feature_normalizer=True, intermediate_normalizer="per_layer"),
    "float32_storage": dict(storage_dtype=torch.float32),
    "bf16_storage": dict(storage_dtype=torch.bfloat16),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            path = tmp_path_factory.mktemp("ckpt") / f"{name}.pth.tar"
            cache[name] = (make_checkpoint(path, **VARIANTS[name]), path)
        return cache[name]
    return get


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_matches_reference(variant, written, images):
    ck, path = written(variant)
    model = radio_model(str(path), adaptor_names=ALL)
    assert not model.training
    ps = model.patch_size
    for h, w in [(4 * ps, 6 * ps), (3 * ps, 2 * ps)]:
        x = images(2, h, w)
        with torch.no_grad():
            out = model(x)
            out_nchw = model(x, feature_fmt="NCHW")
        assert_outputs_close(out, ref_forward(ck.realized, ck.args, x, adaptor_names=ALL))
        assert_outputs_close(out_nchw, ref_forward(ck.realized, ck.args, x, "NCHW", adaptor_names=ALL))


@pytest.mark.parametrize("variant", ["base", "feature_normalizer", "model_norm", "single_cls"])
@pytest.mark.parametrize("aggregation,scheme", [("sparse", "post-alpha"), ("dense", "post-alpha"),
                                                ("dense", "pre-alpha"), ("dense", "none")])
def test_forward_intermediates_match_reference(variant, aggregation, scheme, written, images):
    ck, path = written(variant)
    model = radio_model(str(path))
    x = images(2, 64, 48)
    kw = dict(indices=[0, -1], aggregation=aggregation, norm_alpha_scheme=scheme, output_fmt="NLC",
              return_prefix_tokens=True)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, **kw)
    ref_final, ref_inter = ref_forward_intermediates(ck.realized, ck.args, x, **kw)
    assert_outputs_close(final, ref_final)
    assert len(inter) == len(ref_inter) == 2
    for a, b in zip(inter, ref_inter):
        assert_outputs_close(a, b)


def test_bfloat16_checkpoint_dtype_flow(tmp_path, images):
    ck = make_checkpoint(tmp_path / "bf16.pth.tar", storage_dtype=torch.bfloat16, args_dtype=torch.bfloat16,
                         feature_normalizer=True)
    model = radio_model(str(tmp_path / "bf16.pth.tar"), adaptor_names=["clip"])
    assert model.model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert model.input_conditioner.norm_mean.dtype == torch.float32
    assert model.feature_normalizer.tx.dtype == torch.bfloat16
    assert next(model.adaptors["clip"].parameters()).dtype == torch.float32
    x = images(2, 64, 64)
    with torch.no_grad():
        out = model(x)
    ref = ref_forward(ck.realized, ck.args, x, adaptor_names=["clip"])
    assert out["backbone"].features.dtype == torch.bfloat16
    assert out["clip"].features.dtype == torch.float32
    # adaptor features are rounded through the backbone dtype on the way out, summaries are not
    assert torch.equal(out["clip"].features, out["clip"].features.bfloat16().float())
    assert_outputs_close(out, ref, tol=1e-2)


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


def test_token_slot_widens_summary_window(tmp_path, images):
    teachers = [{"name": "clip", "type": "generic"}, {"name": "dino_v2", "type": "generic", "token_slot": 5},
                {"name": "sam", "type": "generic", "use_summary": False, "token_slot": 1}]
    ck = make_checkpoint(tmp_path / "slot.pth.tar", teachers=teachers)
    model = radio_model(str(tmp_path / "slot.pth.tar"), adaptor_names=["dino_v2", "sam"])
    assert model.model.num_cls_tokens == 3 and model.num_cls_tokens == 6
    assert [a.head_idx for a in model.adaptors.values()] == [5, 1]
    x = images(1, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert_outputs_close(out, ref_forward(ck.realized, ck.args, x, adaptor_names=["dino_v2", "sam"]))


def test_vitdet_matches_reference_and_intermediates_agree(tmp_path, images, monkeypatch):
    import dataclasses

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


def test_vitdet_rejects_unwindowable_depth(tmp_path):
    make_checkpoint(tmp_path / "d2.pth.tar", depth=2)
    with pytest.raises(ValueError, match="period of 1"):
        radio_model(str(tmp_path / "d2.pth.tar"), vitdet_window_size=2)


@pytest.mark.parametrize("dtype,tol", [(None, 1e-5), (torch.bfloat16, 1e-2)])
def test_giant_scaled_layernorm(dtype, tol, tmp_path, images):
    ck = make_checkpoint(tmp_path / "g.pth.tar", model="vit_giant_patch16_224", depth=3, args_dtype=dtype,
                         extra_args={"model_kwargs": {"depth": 3, "embed_dim": 32, "num_heads": 2,
                                                      "scaled_ln": True}})
    model = radio_model(str(tmp_path / "g.pth.tar"))
    scale = model.model.blocks[2].norm1.ln_scale
    assert torch.equal(scale, torch.tensor(3 ** -0.5).to(dtype or torch.float32))
    x = images(1, 32, 48)
    with torch.no_grad():
        out = model(x)
    assert_outputs_close(out, ref_forward(ck.realized, ck.args, x), tol)


def test_dinov2_wrapper_family(tmp_path, images, monkeypatch):
    """dino_v2_*_student: keys under base_model.inner., embedder bias, final norm always applied,
    summary = token 0 for every use. The fixed full-size architecture is shrunk for the test."""
    import copy
    import dataclasses

    import radio.architectures as archs

    tiny = dataclasses.replace(archs.DINOV2_ARCHITECTURES["dino_v2_l_student"], embed_dim=32, depth=2,
                               num_heads=2, mlp_hidden=128)
    monkeypatch.setitem(archs.DINOV2_ARCHITECTURES, "dino_v2_l_student", tiny)
    teachers = [{"name": "clip", "type": "generic"}]
    ck = make_checkpoint(None, model="vit_huge_patch14_224", cpe_max_size=98, layerscale="grandma",
                         model_norm=True, write_final_norm=True, teachers=teachers, register_multiple=None,
                         cpe_num_registers=4)
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

    model = radio_model(str(tmp_path / "dino.pth.tar"), adaptor_names="clip")
    assert model.num_summary_tokens == 5 and isinstance(model.model.norm, torch.nn.LayerNorm)
    x = images(2, 56, 84)
    with torch.no_grad():
        out = model(x)
    assert out["backbone"].summary.shape == (2, 32)
    assert_outputs_close(out, ref_forward(realized, ck.args, x, adaptor_names="clip"))


def test_global_pool_moves_final_norm_out_of_the_cpe_path(tmp_path, images):
    """With args.gp='avg' timm puts the final norm into fc_norm, which the CPE path never applies."""
    ck = make_checkpoint(tmp_path / "gp.pth.tar", model_norm=True, write_final_norm=True, extra_args={"gp": "avg"})
    model = radio_model(str(tmp_path / "gp.pth.tar"))
    assert isinstance(model.model.norm, torch.nn.Identity)
    x = images(1, 32, 32)
    with torch.no_grad():
        assert_outputs_close(model(x), ref_forward(ck.realized, ck.args, x))


def test_crop_only_position_table_when_img_size_equals_cpe_size(tmp_path, images):
    """cpe_mode is off when timm's img_size equals the CPE size: the table is cropped, not resized
    (and resized only where a side exceeds it)."""
    kwargs = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 64}
    ck = make_checkpoint(tmp_path / "crop.pth.tar", cpe_max_size=64, extra_args={"model_kwargs": kwargs})
    model = radio_model(str(tmp_path / "crop.pth.tar"))
    assert model.model.patch_generator.cpe_mode is False
    for h, w in [(32, 48), (64, 64), (96, 32)]:
        x = images(1, h, w)
        with torch.no_grad():
            assert_outputs_close(model(x), ref_forward(ck.realized, ck.args, x))
