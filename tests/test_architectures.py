"""radio.architectures: ``args.model`` + ``model_kwargs`` -> ArchSpec, for RADIO's registered names
(spec model.md §2.2), timm's own ViTs, the DINOv2 wrappers, and the refused families."""

import pytest

from radio.architectures import (DINOV2_ARCHITECTURES, RADIO_ARCHITECTURES, ArchSpec,
                                 UnsupportedArchitectureError, resolve_architecture)

# name -> (patch, width, depth, heads, MLP hidden, LayerScale), from the spec's table (model.md §2.2)
SPEC_TABLE = {
    "vit_base_patch16_v2_224": (16, 768, 12, 12, 3072, True),
    "vit_so400m_patch16_224": (16, 1152, 27, 16, 4304, False),
    "vit_so400m_v2_patch16_224": (16, 1152, 27, 16, 4320, False),
    "vit_huge_patch16_224": (16, 1280, 32, 16, 5120, False),
    "vit_giant_patch16_224": (16, 1536, 40, 24, 6144, False),
    "vit_bigG_patch14_224": (14, 1664, 48, 16, 6656, True),
    "vit_tiny_patch14_224": (14, 192, 12, 3, 768, False),
    "vit_base_patch16_224": (16, 768, 12, 12, 3072, False),  # timm's own
}


@pytest.mark.parametrize("name", list(SPEC_TABLE))
def test_registered_and_timm_names_match_the_spec_table(name):
    spec = resolve_architecture(name, {}, {})
    assert isinstance(spec, ArchSpec) and spec.name == name and spec.family == "vit"
    ps, d, depth, heads, hidden, layerscale = SPEC_TABLE[name]
    got = (spec.patch_size, spec.embed_dim, spec.depth, spec.num_heads, spec.mlp_hidden)
    assert got == (ps, d, depth, heads, hidden)
    assert spec.layerscale is layerscale
    assert spec.qkv_bias and spec.class_token and spec.final_norm and not spec.qk_norm
    assert (spec.block_norm, spec.mlp_norm, spec.scaled_ln, spec.mlp_kind) == ("layernorm", False, False, "mlp")
    assert spec.drop_path_rates == (0.0,) * depth


def test_v2_image_size_and_extras():
    assert resolve_architecture("vit_base_patch16_v2_224", {}, {}).img_size == (518 * 16 // 14,) * 2 == (592, 592)
    assert resolve_architecture("vit_huge_patch16_224", {}, {}).img_size == (224, 224)
    small = {"depth": 2, "embed_dim": 32, "num_heads": 2}
    assert resolve_architecture("vit_huge_patch16_224_mlpnorm", small, {}).mlp_norm is True
    assert resolve_architecture("vit_large_dyt_patch16_224", small, {}).block_norm == "dyt"
    assert resolve_architecture("vit_giant_patch16_224", {**small, "scaled_ln": True}, {}).scaled_ln is True
    assert resolve_architecture("vit_giant_patch16_224", small, {}).scaled_ln is False


def test_model_kwargs_override_and_factory_kwargs_follow_timm():
    spec = resolve_architecture(
        "vit_huge_patch16_224", {"depth": 3, "embed_dim": 48, "num_heads": 3, "qk_norm": True, "init_values": 0.1},
        {"global_pool": "avg", "drop_path_rate": 0.2, "num_classes": None, "pretrained": False})
    assert (spec.depth, spec.embed_dim, spec.num_heads, spec.mlp_hidden) == (3, 48, 3, 192)
    assert spec.qk_norm and spec.layerscale
    assert spec.final_norm is False  # global_pool='avg' moves timm's final norm into fc_norm (spec §2.4)
    assert spec.drop_path_rates == pytest.approx((0.0, 0.1, 0.2))  # timm's linear drop-path schedule
    # model_kwargs win over factory kwargs, and None factory values are dropped as timm does
    assert resolve_architecture("vit_tiny_patch14_224", {"depth": 2}, {"depth": 5, "global_pool": None}).depth == 2


def test_timm_layerscale_only_with_init_values():
    assert resolve_architecture("vit_base_patch16_224", {"depth": 1}, {}).layerscale is False
    assert resolve_architecture("vit_base_patch16_224", {"depth": 1, "init_values": 1e-5}, {}).layerscale is True


def test_dinov2_wrappers_are_fixed_specs():
    for name in ("dino_v2_l_student", "dino_v2_g_student"):
        spec = resolve_architecture(name, {"depth": 2, "embed_dim": 32}, {"drop_path_rate": 0.5})
        assert spec is DINOV2_ARCHITECTURES[name]  # the factory kwargs are ignored
        assert spec.family == "dinov2" and spec.embed_bias and spec.layerscale and spec.patch_size == 14
    g = DINOV2_ARCHITECTURES["dino_v2_g_student"]
    assert (g.embed_dim, g.depth, g.num_heads, g.mlp_kind, g.mlp_hidden) == (1536, 40, 24, "swiglu", 4096)
    large = DINOV2_ARCHITECTURES["dino_v2_l_student"]
    got = (large.embed_dim, large.depth, large.num_heads, large.mlp_kind, large.mlp_hidden)
    assert got == (1024, 24, 16, "mlp", 4096)


def test_eradio_names_resolve_to_their_own_spec():
    from radio.eradio import ERadioSpec, list_eradio_models

    name = list_eradio_models()[0]
    assert isinstance(resolve_architecture(name, {}, {}), ERadioSpec)
    # eradio.md §1.3: unknown keywords are ignored, a conflicting fixed hyperparameter is not
    assert resolve_architecture(name, {"no_such_option": 1}, {}) == resolve_architecture(name, {}, {})
    with pytest.raises(UnsupportedArchitectureError, match=f"Cannot build E-RADIO backbone '{name}'"):
        resolve_architecture(name, {"dim": 12345}, {})


@pytest.mark.parametrize("name,kwargs,pattern", [
    ("vit_nonexistent_patch16_224", {},
     r"Unknown backbone architecture 'vit_nonexistent_patch16_224'.*vit_huge_patch16_224"),
    ("vit_huge_patch16_224_xpos", {}, r"'vit_huge_patch16_224_xpos' \(xpos research architecture\) is not supported"),
    # a timm model of another class: refused by its class, before timm's constructor sees our kwargs
    ("resnet18", {}, r"Backbone 'resnet18' is a timm model of timm.models.resnet, not a timm VisionTransformer"),
    ("vit_huge_patch16_224", {"no_such_option": 1}, r"Cannot build backbone 'vit_huge_patch16_224' with model_kwargs"),
    # options timm builds but the package does not: refused rather than run as a different block
    ("vit_base_patch16_224", {"act_layer": "quick_gelu"}, r"has the activation QuickGELU"),
    ("vit_base_patch16_224", {"scale_mlp_norm": True}, r"has an inner norm mlp.norm"),
    ("vit_base_patch16_224", {"scale_attn_norm": True}, r"has an inner norm attn.norm"),
    ("vit_base_patch16_224", {"norm_layer": "rmsnorm"}, r"has the block norm RmsNorm"),
])
def test_unsupported_architectures(name, kwargs, pattern):
    with pytest.raises(UnsupportedArchitectureError, match=pattern) as info:
        resolve_architecture(name, kwargs, {})
    assert isinstance(info.value, ValueError) and isinstance(info.value, NotImplementedError)


@pytest.mark.parametrize("act,expected", [("gelu", "none"), ("gelu_tanh", "tanh")])
def test_gelu_variants_keep_their_approximation(act, expected):
    """model.md §2.1: model_kwargs go to timm unchanged, so timm's GELUTanh is a tanh-approximated GELU."""
    assert resolve_architecture("vit_base_patch16_224", {"act_layer": act}, {}).act_approximate == expected


def test_registered_table_covers_the_spec():
    assert set(RADIO_ARCHITECTURES) == {
        "vit_tiny_patch14_224", "vit_small_patch14_224", "vit_base_patch14_224", "vit_base_patch16_v2_224",
        "vit_large_patch16_v2_224", "vit_so400m_patch16_224", "vit_so400m_v2_patch16_224",
        "vit_huge_patch16_224", "vit_huge_patch16_224_mlpnorm", "vit_giant_patch16_224", "vit_bigG_patch14_224",
        "vit_large_dyt_patch16_224"}
