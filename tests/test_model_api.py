"""The wrapper API: properties, resolution helpers, input errors, preprocessing, video and training
mode, forward_intermediates rules, hub loading."""

import warnings
from pathlib import Path

import pytest
import torch

from ckpt_writer import make_checkpoint
from conftest import assert_close_rel

from radio import RadioOutput, Resolution, radio_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "tiny.pth.tar"
    written = make_checkpoint(path, depth=4, cpe_max_size=64, intermediate_normalizer="shared",
                              feature_normalizer=True)
    return path, written


@pytest.fixture
def model(ckpt):
    return radio_model(str(ckpt[0]))


def test_properties(model, ckpt):
    _, w = ckpt
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
    with pytest.raises(ValueError, match="multiple of 3"):
        with model.cpe_video_mode(3):
            model(x)


def _viewport_groups(feats):
    """Indices of equal rows (numerically) of a (B, ...) tensor."""
    labels, reps = [], []
    for f in feats.flatten(1):
        for i, r in enumerate(reps):
            if torch.allclose(f, r, atol=1e-5):
                labels.append(i)
                break
        else:
            reps.append(f)
            labels.append(len(reps) - 1)
    return labels


def test_training_mode_random_viewports_and_video_sharing(ckpt, images):
    model = radio_model(str(ckpt[0])).train()
    model.model.patch_generator.pos_dropout = 0.0  # isolate the viewport draw
    x = images(1, 32, 48).expand(6, -1, -1, -1)
    torch.manual_seed(0)
    with torch.no_grad():
        free = model(x).features
        with model.cpe_video_mode(3):
            video = model(x).features
    assert len(set(_viewport_groups(free))) == 6  # every sample its own viewport
    labels = _viewport_groups(video)
    assert labels[0] == labels[1] == labels[2] and labels[3] == labels[4] == labels[5] and labels[0] != labels[3]
    model.eval()
    with torch.no_grad():
        ev = model(x).features
    assert len(set(_viewport_groups(ev))) == 1


def test_training_position_dropout(ckpt, images):
    model = radio_model(str(ckpt[0])).train()
    pg = model.model.patch_generator
    pg.pos_dropout = 1.0  # every sample loses its position embedding
    x = images(2, 32, 32)
    with torch.no_grad():
        tokens = pg(model.input_conditioner(x))
        model.eval()
        no_pos = pg.cls_token(pg.embedder(pg.patchify(model.input_conditioner(x))))
    assert torch.equal(tokens, no_pos)


def test_training_viewport_matches_spec_draws(ckpt):
    """The training crop follows the spec's draw order and grid_sample formula."""
    import math

    import torch.nn.functional as F

    model = radio_model(str(ckpt[0])).train()
    pg = model.model.patch_generator
    pg.pos_dropout = 0.0
    torch.manual_seed(5)
    pos = pg.position_embedding(2, 3, 5)
    torch.manual_seed(5)
    scale = torch.rand(2, 1, 1) * (1 - math.sqrt(0.1)) + math.sqrt(0.1)
    aspect = torch.exp(torch.rand(2, 1, 1) * 2 * math.log(4 / 3) + math.log(3 / 4))
    sxy = torch.stack([scale * aspect, scale / aspect], -1).clamp(0, 1)
    pxy = torch.rand(2, 1, 1, 2) * (1 - sxy)
    ys, xs = torch.linspace(0, 1, 3), torch.linspace(0, 1, 5)
    lin = torch.stack([xs.view(1, 5).expand(3, 5), ys.view(3, 1).expand(3, 5)], -1)[None]
    grid = (lin * sxy + pxy) * 2 - 1
    g = pg.grid_size
    table = pg.pos_embed.reshape(1, g, g, -1).permute(0, 3, 1, 2).float().expand(2, -1, -1, -1)
    ref = F.grid_sample(table, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    torch.testing.assert_close(pos, ref.flatten(2).transpose(1, 2))


def test_forward_intermediates_last_sparse_equals_features(model, images):
    x = images(2, 48, 32)
    with torch.no_grad():
        feats = model(x).features
        final, inter = model.forward_intermediates(x, indices=[-1], norm_alpha_scheme="none", output_fmt="NLC")
    # the feature normalizer applies to `final` only; the raw last intermediate normalizes to it
    assert_close_rel(final.features, feats, 1e-6)
    assert not torch.allclose(inter[-1], feats, atol=1e-3)
    assert_close_rel(model.feature_normalizer(inter[-1]), feats, 1e-6)


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
    for bad in (0, 5, [4], [-5], [], "x"):
        with pytest.raises((ValueError, TypeError)):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match="aggregation"):
        model.forward_intermediates(x, indices=1, aggregation="mean")
    with pytest.raises(ValueError, match="norm_alpha_scheme"):
        model.forward_intermediates(x, indices=1, norm_alpha_scheme="post")


def test_unknown_adaptor_lists_checkpoint_teachers(ckpt):
    with pytest.raises(ValueError) as info:
        radio_model(str(ckpt[0]), adaptor_names=["clip", "siglip"])
    assert "'siglip'" in str(info.value) and "['clip', 'dino_v2', 'sam']" in str(info.value)


def test_adaptor_string_and_duplicates(ckpt, images):
    m1 = radio_model(str(ckpt[0]), adaptor_names="dino_v2")
    m2 = radio_model(str(ckpt[0]), adaptor_names=["dino_v2", "dino_v2"])
    assert list(m1.adaptors) == list(m2.adaptors) == ["dino_v2"]
    with torch.no_grad():
        out = m1(images(1, 32, 32))
    assert list(out) == ["backbone", "dino_v2"]
    with pytest.raises(AttributeError, match="no text encoder"):
        m1.adaptors["dino_v2"].tokenizer(["a dog"])


def test_checkpoint_path_kwarg_and_metadata_overrides(ckpt, monkeypatch):
    import dataclasses

    from radio import CheckpointError
    from radio.versions import VERSIONS

    m = radio_model(checkpoint_path=ckpt[0], preferred_resolution=(64, 32), max_resolution=512)
    assert m.preferred_resolution == Resolution(64, 32) and m.max_resolution == 512
    # the tiny file is not a ViT-B: under the release's name it is refused, naming both architectures
    with pytest.raises(CheckpointError, match=r"does not match release 'radio_v2.5-b' \(patch 16, width 768, depth 12\)"):
        radio_model("radio_v2.5-b", checkpoint_path=ckpt[0])
    monkeypatch.setitem(VERSIONS, "radio_v2.5-b", dataclasses.replace(VERSIONS["radio_v2.5-b"], width_depth=None))
    named = radio_model("radio_v2.5-b", checkpoint_path=ckpt[0])
    assert named.preferred_resolution == (768, 768) and named.version == "radio_v2.5-b"
    with pytest.raises(CheckpointError, match="patch 16"):
        radio_model("radio_v2.5-g", checkpoint_path=ckpt[0])  # a patch-14 release


def test_extra_kwargs_are_accepted_but_neck_is_checked(ckpt):
    radio_model(str(ckpt[0]), return_spatial_features=True)
    with pytest.raises(ValueError, match="neck_name"):
        radio_model(str(ckpt[0]), neck_name="neck")


def test_torch_hub_load_local(ckpt, images):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.hub.load(str(ROOT), "radio_model", source="local", version=str(ckpt[0]), progress=False)
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf_under_test", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    doc = hubconf.radio_model.__doc__  # what torch.hub.help shows
    assert "adaptor_names" in doc and "vitdet_window_size" in doc
    direct = radio_model(str(ckpt[0]))
    x = images(1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x).features, direct(x).features)


def test_hubconf_is_thin():
    src = (ROOT / "hubconf.py").read_text()
    code = [line for line in src.splitlines() if line.strip() and not line.strip().startswith(("#", '"""'))]
    assert code == ['dependencies = ["torch", "timm"]', "from radio import radio_model  # noqa: E402,F401"]


def test_grad_checkpointing_keeps_outputs_and_gradients(ckpt, images):
    x = images(2, 32, 48)
    grads = []
    for enable in (False, True):
        model = radio_model(str(ckpt[0])).train()
        model.model.patch_generator.pos_dropout = 0.0
        model.set_grad_checkpointing(enable)
        torch.manual_seed(0)
        out = model(x)
        out.features.square().mean().backward()
        grads.append((out.features.detach(), model.model.blocks[0].attn.qkv.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_prune_intermediate_layers(ckpt, images):
    model = radio_model(str(ckpt[0]))
    x = images(1, 32, 32)
    with torch.no_grad():
        inter = model.forward_intermediates(x, indices=[1], intermediates_only=True, output_fmt="NLC")
        assert model.prune_intermediate_layers([0, 1]) == [0, 1]
        assert len(model.blocks) == 2
        again = model.forward_intermediates(x, indices=[1], intermediates_only=True, output_fmt="NLC")
    assert torch.equal(inter[0], again[0])


def test_num_tokens_is_not_for_vits(model, images):
    with pytest.raises(TypeError, match="RADIO1D"):
        model(images(1, 32, 32), num_tokens=64)


def test_forward_intermediates_checks_input_like_forward(model, images):
    with pytest.raises(ValueError, match="nearest supported size is 32x48"):
        model.forward_intermediates(images(1, 40, 48), indices=1)
    with pytest.raises(TypeError, match="/ 255"):
        model.forward_intermediates(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), indices=1)
