"""radio.model: the RADIOModel API (properties, resolution helpers, input errors, preprocessing,
video mode, forward_intermediates rules, pruning, gradient checkpointing), loading through
radio_model / torch.hub, and whole-model outputs against the independent reference
(tests/reference.py) for the checkpoint layouts (spectral, damp, EMA, storage dtypes, normalizers).

The reference itself is validated against the original implementation's outputs in
test_reference_selfcheck.py.
"""

import warnings
from pathlib import Path

import pytest
import torch

from ckpt_writer import make_checkpoint
from radio_test_utils import assert_close_rel, assert_model_matches_reference, assert_outputs_close
from reference import ref_forward, ref_forward_intermediates

from radio import RadioOutput, Resolution, radio_model

ROOT = Path(__file__).resolve().parents[1]
ALL = ["clip", "dino_v2", "sam"]


@pytest.fixture
def model(normalized_ckpt):
    return radio_model(str(normalized_ckpt[0]))


def test_properties(model, normalized_ckpt):
    _, w = normalized_ckpt
    assert model.patch_size == 16 and model.window_size is None and model.min_resolution_step == 16
    assert model.num_cls_tokens == w.num_cls_tokens == 3
    assert model.num_summary_tokens == w.num_cls_tokens + w.num_registers == 8
    assert model.embed_dim == 32 and model.summary_dim == 2 * 32  # sam has use_summary=False
    assert model.summary_idxs.tolist() == [0, 1]
    assert len(model.blocks) == 4
    assert model.max_resolution == 64 and model.preferred_resolution is None
    assert not model.training


def test_nearest_resolution_rounds_half_to_even(model):
    r = model.get_nearest_supported_resolution(40, 56)
    assert isinstance(r, Resolution) and tuple(r) == (32, 64) and (r.height, r.width) == (32, 64)
    assert model.get_nearest_supported_resolution(1, 1000) == (16, 992)


def test_resolution_error_names_nearest_size(model, images):
    with pytest.raises(ValueError) as info:
        model(images(1, 40, 64))
    msg = str(info.value)
    assert "min_resolution_step=16" in msg and "32x64" in msg and "get_nearest_supported_resolution(40, 64)" in msg


@pytest.mark.parametrize("x,exc,fragment", [
    (torch.rand(3, 32, 32), ValueError, "unsqueeze"),
    (torch.rand(1, 1, 32, 32), ValueError, "3 (RGB) channels"),
    (torch.rand(1, 32, 32, 3), ValueError, "3 (RGB) channels"),
    (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), TypeError, "/ 255"),
])
def test_bad_inputs(model, x, exc, fragment):
    with pytest.raises(exc, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        model(x)


def test_bad_feature_format(model, images):
    with pytest.raises(ValueError, match="'NHWC'"):
        model(images(1, 32, 32), feature_fmt="NHWC")


def test_nchw_is_a_view_of_nlc(model, images):
    x = images(2, 48, 64)
    with torch.no_grad():
        nlc, nchw = model(x), model(x, feature_fmt="NCHW")
    assert isinstance(nlc, RadioOutput) and nchw.features.shape == (2, 32, 3, 4)
    assert torch.equal(nchw.features.permute(0, 2, 3, 1).reshape(2, 12, 32), nlc.features)
    assert torch.equal(nchw.summary, nlc.summary)


def test_external_preprocessor(model, images):
    x = images(2, 32, 48)
    with torch.no_grad():
        expected = model(x)
        cond = model.make_preprocessor_external()
        got = model(cond(x))
    assert_close_rel(got.features, expected.features, 1e-6)
    assert isinstance(model.make_preprocessor_external(), torch.nn.Identity)


def test_video_mode_restores_and_is_noop_in_eval(model, images):
    x = images(4, 32, 32)
    with torch.no_grad():
        plain = model(x)
        with model.cpe_video_mode(2):
            assert model.model.patch_generator.num_video_frames == 2
            video = model(x)
        with pytest.raises(RuntimeError):
            with model.cpe_video_mode(4):
                raise RuntimeError("boom")
    assert model.model.patch_generator.num_video_frames == 1
    assert torch.equal(plain.features, video.features)
    with torch.no_grad(), model.cpe_video_mode(3):  # model.md §3.8: no effect in eval, whatever the batch
        assert torch.equal(model(x).features, plain.features)
    model.train()
    try:
        with pytest.raises(ValueError, match="multiple of 3"):
            with model.cpe_video_mode(3):
                model(x)
    finally:
        model.eval()


def test_forward_intermediates_last_sparse_equals_features(model, images):
    x = images(2, 48, 32)
    with torch.no_grad():
        feats = model(x).features
        final, inter = model.forward_intermediates(x, indices=[-1], norm_alpha_scheme="none", output_fmt="NLC")
    # the feature normalizer applies to `final` only; the raw last intermediate normalizes to it
    assert_close_rel(final.features, feats, 1e-6)
    assert not torch.allclose(inter[-1], feats, atol=1e-3)
    assert_close_rel(model.feature_normalizer(inter[-1]), feats, 1e-6)


@pytest.mark.parametrize("bad,exc,pattern", [
    (0, ValueError, r"indices=0 asks for the last 0 blocks; the model has 4, so use 1\.\.4"),
    (5, ValueError, r"indices=5 asks for the last 5 blocks"),
    ([4], ValueError, r"block index 4 is out of range for a model with 4 blocks \(valid: -4\.\.3\)"),
    ([-5], ValueError, r"block index -5 is out of range"),
    ([], ValueError, r"indices selects no block"),
    ("x", TypeError, r"indices must be None, an int or a sequence of ints .*got str 'x'"),
])
def test_forward_intermediates_bad_indices_name_the_problem(model, images, bad, exc, pattern):
    with pytest.raises(exc, match=pattern):
        model.forward_intermediates(images(1, 32, 32), indices=bad)


def test_forward_intermediates_indices(model, images):
    x = images(1, 32, 32)
    with torch.no_grad():
        all_blocks = model.forward_intermediates(x, intermediates_only=True, output_fmt="NLC")
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True, output_fmt="NLC")
        picked = model.forward_intermediates(x, indices=[3, 1, 1, -3], intermediates_only=True, output_fmt="NLC")
        early_final, early = model.forward_intermediates(x, indices=[1], stop_early=True, output_fmt="NCHW")
    assert len(all_blocks) == 4 and len(last2) == 2 and len(picked) == 2
    assert torch.equal(last2[0], all_blocks[2]) and torch.equal(picked[0], all_blocks[1])
    assert early[0].shape == (1, 32, 2, 2) and early[0].is_contiguous()
    with pytest.raises(ValueError, match="aggregation"):
        model.forward_intermediates(x, indices=1, aggregation="mean")
    with pytest.raises(ValueError, match="norm_alpha_scheme"):
        model.forward_intermediates(x, indices=1, norm_alpha_scheme="post")


def test_forward_intermediates_checks_input_like_forward(model, images):
    with pytest.raises(ValueError, match="nearest supported size is 32x48"):
        model.forward_intermediates(images(1, 40, 48), indices=1)
    with pytest.raises(TypeError, match="/ 255"):
        model.forward_intermediates(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), indices=1)


def test_num_tokens_is_not_for_vits(model, images):
    with pytest.raises(TypeError, match="RADIO1D"):
        model(images(1, 32, 32), num_tokens=64)


def test_grad_checkpointing_keeps_outputs_and_gradients(normalized_ckpt, images):
    x = images(2, 32, 48)
    grads = []
    for enable in (False, True):
        model = radio_model(str(normalized_ckpt[0])).train()
        model.model.patch_generator.pos_dropout = 0.0
        model.set_grad_checkpointing(enable)
        assert model.model.grad_checkpointing is enable
        torch.manual_seed(0)
        out = model(x)
        out.features.square().mean().backward()
        grads.append((out.features.detach(), model.model.blocks[0].attn.qkv.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_prune_intermediate_layers(normalized_ckpt, images):
    model = radio_model(str(normalized_ckpt[0]))
    x = images(1, 32, 32)
    with torch.no_grad():
        inter = model.forward_intermediates(x, indices=[1], intermediates_only=True, output_fmt="NLC")
        assert model.prune_intermediate_layers([0, 1]) == [0, 1]
        assert len(model.blocks) == 2
        again = model.forward_intermediates(x, indices=[1], intermediates_only=True, output_fmt="NLC")
    assert torch.equal(inter[0], again[0])


# ---------------------------------------------------------------------------------------------
# Loading: radio_model keywords, torch.hub


def test_checkpoint_path_kwarg_and_metadata_overrides(normalized_ckpt, monkeypatch):
    import dataclasses

    from radio import CheckpointError
    from radio.versions import VERSIONS

    m = radio_model(checkpoint_path=normalized_ckpt[0], preferred_resolution=(64, 32), max_resolution=512)
    assert m.preferred_resolution == Resolution(64, 32) and m.max_resolution == 512
    # the tiny file is not a ViT-B: under the release's name it is refused, naming both architectures
    with pytest.raises(CheckpointError, match=r"does not match release 'radio_v2.5-b' \(patch 16, width 768, depth 12\)"):
        radio_model("radio_v2.5-b", checkpoint_path=normalized_ckpt[0])
    monkeypatch.setitem(VERSIONS, "radio_v2.5-b", dataclasses.replace(VERSIONS["radio_v2.5-b"], width_depth=None))
    named = radio_model("radio_v2.5-b", checkpoint_path=normalized_ckpt[0])
    assert named.preferred_resolution == (768, 768) and named.version == "radio_v2.5-b"
    with pytest.raises(CheckpointError, match="patch 16"):
        radio_model("radio_v2.5-g", checkpoint_path=normalized_ckpt[0])  # a patch-14 release


def test_extra_kwargs_are_accepted_but_neck_is_checked(normalized_ckpt, model, images):
    with pytest.warns(UserWarning, match="ignores the unknown keyword argument 'return_spatial_features'"):
        extra = radio_model(str(normalized_ckpt[0]), return_spatial_features=True)
    x = images(1, 32, 32)
    with torch.no_grad():
        a, b = extra(x), model(x)
    assert torch.equal(a.summary, b.summary) and torch.equal(a.features, b.features)  # the keyword changes nothing
    with pytest.raises(ValueError, match="neck_name='neck' only applies to RADIO1D"):
        radio_model(str(normalized_ckpt[0]), neck_name="neck")


def test_torch_hub_load_local(normalized_ckpt, images):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.hub.load(str(ROOT), "radio_model", source="local", version=str(normalized_ckpt[0]), progress=False)
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf_under_test", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    doc = hubconf.radio_model.__doc__  # what torch.hub.help shows
    assert "adaptor_names" in doc and "vitdet_window_size" in doc
    direct = radio_model(str(normalized_ckpt[0]))
    x = images(1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x).features, direct(x).features)


def test_hubconf_is_thin():
    src = (ROOT / "hubconf.py").read_text()
    code = [line for line in src.splitlines() if line.strip() and not line.strip().startswith(("#", '"""'))]
    assert code == ['dependencies = ["torch", "timm"]', "from radio import radio_model  # noqa: E402,F401"]


# ---------------------------------------------------------------------------------------------
# Whole-model outputs against the reference, per checkpoint layout

CHECKPOINTS = {
    "base": {},
    "model_norm": dict(model_norm=True),
    "single_cls": dict(cls_token_per_teacher=False, register_multiple=4),
    "spectral_true": dict(spectral_reparam=True),
    "spectral_dict": dict(spectral_reparam={"n_power_iterations": 3, "eps": 1e-12}),
    "damp": dict(damp=True),
    "spectral_damp": dict(spectral_reparam=True, damp=True),
    "ema": dict(ema=True, spectral_reparam=True, damp=True),
    "heads_by_name": dict(heads_keyed_by="name", prefix_wrappers=True),
    "feature_normalizer": dict(feature_normalizer=True, intermediate_normalizer="per_layer"),
    "float32_storage": dict(storage_dtype=torch.float32),
    "bf16_storage": dict(storage_dtype=torch.bfloat16),
    # one summary token that no teacher uses: forward's summary is empty, a block's is (B, D)
    "no_summary": dict(teachers=[{"name": "sam", "type": "generic", "use_summary": False}]),
}
#: the architecture variants (base, model_norm, single_cls, ...) are compared in test_backbone.py
LAYOUTS = [name for name in CHECKPOINTS if name not in ("base", "model_norm", "single_cls", "no_summary")]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            path = tmp_path_factory.mktemp("ckpt") / f"{name}.pth.tar"
            cache[name] = (make_checkpoint(path, **CHECKPOINTS[name]), path)
        return cache[name]
    return get


@pytest.mark.parametrize("variant", LAYOUTS)
def test_forward_matches_reference(variant, written, images):
    ck, path = written(variant)
    assert_model_matches_reference(path, ck, images)


@pytest.mark.parametrize("variant", ["base", "feature_normalizer", "model_norm", "single_cls", "no_summary"])
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


@pytest.mark.parametrize("cpe_max_size", [64, 224], ids=["resize_then_crop", "crop_only"])
def test_torch_jit_trace_follows_the_input_size(tmp_path, cpe_max_size):
    """torch.jit.trace hands the patch grid over as 0-d tensors: the traced model must keep computing
    the position embedding from the input size (both table modes), not freeze the traced one."""
    path = tmp_path / "m.pth.tar"
    make_checkpoint(path, cpe_max_size=cpe_max_size)
    model = radio_model(str(path))
    assert model.model.patch_generator.cpe_mode is (cpe_max_size != 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's own warnings about Python values
        traced = torch.jit.trace(model, torch.rand(1, 3, 64, 96), strict=False)
        for shape in [(1, 3, 64, 96), (2, 3, 128, 48), (1, 3, 16, 16), (1, 3, 320, 256)]:
            x = torch.rand(*shape)
            with torch.no_grad():
                summary, features = traced(x)
                expected = model(x)
            assert_close_rel(summary, expected.summary, 1e-6)
            assert_close_rel(features, expected.features, 1e-6)


def test_an_intermediate_normalizer_covering_fewer_blocks_serves_the_blocks_it_covers(tmp_path, images):
    """intermediates.md §4: the normalizer must cover every block index *used*, not every block."""
    make_checkpoint(tmp_path / "full.pth.tar", depth=4, intermediate_normalizer="per_layer")
    raw = torch.load(tmp_path / "full.pth.tar", weights_only=False)
    sd = raw["state_dict"]
    for key in [k for k in sd if k.startswith("_intermediate_feature_normalizer.")]:
        sd[key] = sd[key][:2]  # alphas, means and the per-layer rotations of blocks 0 and 1 only
    torch.save(raw, tmp_path / "partial.pth.tar")
    full, partial = radio_model(str(tmp_path / "full.pth.tar")), radio_model(str(tmp_path / "partial.pth.tar"))
    assert (full.inter_feature_normalizer.num_layers, partial.inter_feature_normalizer.num_layers) == (4, 2)
    x = images(1, 32, 48)
    with torch.no_grad():
        for kw in (dict(indices=[0, 1]), dict(indices=[1], aggregation="dense", stop_early=True)):
            got = partial.forward_intermediates(x, intermediates_only=True, **kw)
            expected = full.forward_intermediates(x, intermediates_only=True, **kw)
            assert all(torch.equal(a, b) for a, b in zip(got, expected))
        for kw in (dict(indices=[2]), dict(indices=[1], aggregation="dense")):  # dense runs every block
            with pytest.raises(ValueError, match=r"covers blocks 0..1 of 4.*normalizes block [23]"):
                partial.forward_intermediates(x, **kw)

