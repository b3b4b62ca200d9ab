"""E-RADIO through the public entry: radio_model(file) -> RADIOModel, against an independent computation.

The backbone itself is tested in test_eradio.py; here the hub-model layer: conditioner, mean-feature
summary before the normalizer, feature normalizer, adaptors (same summary for every head), NCHW,
the feature pyramid, the window API and policy, properties and errors (spec eradio.md §6-§7).
"""

import threading

import pytest
import torch

from radio_test_utils import assert_close_rel
from eradio_reference import reference_forward
from eradio_writer import make_eradio_checkpoint
from reference import ref_head

from radio import radio_model

KW = {"return_full_features": True, "conv_groups_ratio": 1, "cpb_mlp_hidden": 64, "multi_query": True}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("eradio") / "e.pth.tar"
    return make_eradio_checkpoint(path, "eradio_xxxtiny", dict(KW), feature_normalizer=True, seed=3)


def _expected(w, x, window=None, names=()):
    xc = (x - w.conditioner["norm_mean"]) / w.conditioner["norm_std"]
    ref = reference_forward(w.backbone, xc, window=window)
    tokens = ref.neck.flatten(2).transpose(1, 2)
    summary = tokens.mean(dim=1)
    fn = w.feature_normalizer
    feats = (tokens - fn["mean"]) @ fn["tx"].T
    out = {"backbone": (summary, feats), "levels": ref.levels, "neck": ref.neck}
    for name in names:
        idx = next(i for i, t in enumerate(w.args.teachers) if t["name"] == name)
        h = w.heads[idx]
        out[name] = (ref_head("v2", h["summary"], summary), ref_head("v2", h["feature"], feats))
    return out


def test_forward_nlc_nchw_and_adaptors_match_independent_computation(written, images):
    names = [t["name"] for t in written.args.teachers][:2]
    model = radio_model(written.path, adaptor_names=names)
    x = images(2, 64, 96)
    exp = _expected(written, x, names=names)
    with torch.no_grad():
        out = model(x)
        nchw = model(x, feature_fmt="NCHW")
    assert list(out) == ["backbone", *names]
    assert_close_rel(out["backbone"].summary, exp["backbone"][0])
    assert_close_rel(out["backbone"].features, exp["backbone"][1])
    assert nchw["backbone"].features.shape == (2, model.embed_dim, 4, 6)
    assert_close_rel(nchw["backbone"].features.flatten(2).transpose(1, 2), exp["backbone"][1])
    for name in names:
        assert_close_rel(out[name].summary, exp[name][0])
        assert_close_rel(out[name].features, exp[name][1])


def test_properties_follow_the_neck(written):
    model = radio_model(written.path)
    assert (model.patch_size, model.min_resolution_step) == (16, 32)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert model.embed_dim == model.summary_dim == out.features.shape[-1] == out.summary.shape[-1]
    assert model.get_nearest_supported_resolution(100, 200) == (96, 192)
    assert model.blocks is None and model.num_summary_tokens == 1
    with pytest.raises(ValueError, match="multiples of min_resolution_step=32"):
        model(torch.rand(1, 3, 48, 64))
    with pytest.raises(ValueError, match="does not apply to E-RADIO"):
        radio_model(written.path, vitdet_window_size=4)
    with pytest.raises(AttributeError, match="E-RADIO"):
        with model.cpe_video_mode(2):
            pass


def test_pyramid_matches_reference_levels_and_neck(written, images):
    model = radio_model(written.path)
    x = images(1, 64, 128)
    exp = _expected(written, x)
    with torch.no_grad():
        maps = model.forward_intermediates(x, output_fmt="NCHW", intermediates_only=True)
        final, two = model.forward_intermediates(x, indices=[1, -1], output_fmt="NLC")
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
    assert [m.shape[-1] for m in maps] == [128 // s for s in (4, 8, 16, 32, 16)]
    for got, want in zip(maps, exp["levels"] + [exp["neck"]]):
        assert_close_rel(got, want)
    assert_close_rel(two[0], exp["levels"][1].flatten(2).transpose(1, 2))
    assert_close_rel(final.features, exp["backbone"][1])
    assert_close_rel(early[0], exp["levels"][0])
    with pytest.raises(ValueError, match="feature pyramid"):
        model.forward_intermediates(x, aggregation="dense")
    assert model.num_intermediates == 5
    with torch.no_grad():
        pooled = model.forward_intermediates(x, indices=[2], return_prefix_tokens=True, output_fmt="NLC",
                                             intermediates_only=True)
    want = exp["levels"][2]
    assert_close_rel(pooled[0].summary, want.mean(dim=(2, 3)))
    assert_close_rel(pooled[0].features, want.flatten(2).transpose(1, 2))


def test_window_api_and_auto_policy(written, images):
    model = radio_model(written.path)
    x = images(1, 96, 160)
    with torch.no_grad():
        default = model(x).features
        model.set_optimal_window_size(x.shape[2:])
        optimal = model(x).features
        model.change_window_size(7)
        model.window_policy = "auto"
        auto = model(x).features
    assert model.model.window_size == 7  # the policy never changes the stored window
    assert_close_rel(auto, optimal)
    assert default.shape == optimal.shape
    with pytest.raises(ValueError, match="window_policy"):
        model.window_policy = "sometimes"


def test_auto_policy_is_thread_safe(written, images):
    model = radio_model(written.path)
    model.window_policy = "auto"
    xs = [images(1, 64, 64, seed=1), images(1, 128, 96, seed=2)]
    with torch.no_grad():
        sequential = [model(x).features for x in xs]
    results = {}

    def run(i):
        with torch.no_grad():
            for _ in range(3):
                results[i] = model(xs[i]).features

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert torch.equal(results[i], sequential[i])


def test_half_cast_runs(written, images):
    model = radio_model(written.path).half()
    x = images(1, 64, 64)
    with torch.no_grad():
        out = model(x.half())
        ref = radio_model(written.path)(x)
    assert out.features.dtype == torch.float16
    assert_close_rel(out.features.float(), ref.features, tol=1e-2)


def test_one_window_policy_and_vit_only_helpers(written):
    model = radio_model(written.path)
    model.model.window_policy = "auto"  # the original's object (model.model) and the wrapper agree
    assert model.window_policy == "auto"
    model.window_policy = "fixed"
    assert model.model.window_policy == "fixed"
    for call in (lambda: model.set_grad_checkpointing(True), lambda: model.prune_intermediate_layers(2)):
        with pytest.raises(NotImplementedError, match="applies to ViT backbones"):
            call()
    with torch.no_grad():  # indices follow the rule of every forward_intermediates: ascending, unique
        maps = model.forward_intermediates(torch.rand(1, 3, 64, 64), indices=torch.tensor([4, 0, 0]),
                                           intermediates_only=True)
    assert [m.shape[1] for m in maps] == [model.model.pyramid_channels[0], model.embed_dim]


def test_a_position_table_size_in_eradio_args_is_refused(tmp_path):
    """eradio.md §1.3: cpe_max_size must be None for E-RADIO (the original's CPE installation raises)."""
    w = make_eradio_checkpoint(tmp_path / "c.pth.tar", "eradio_xxxtiny", dict(KW), extra_args={"cpe_max_size": 2048})
    with pytest.raises(ValueError, match="cpe_max_size=2048 but an E-RADIO backbone"):
        radio_model(w.path)


def test_eradio_has_one_summary_token_whatever_the_teachers(tmp_path):
    """eradio.md §6.1: num_cls_tokens is 1 (T = 1), widened only by a loaded adaptor's token slot."""
    w = make_eradio_checkpoint(tmp_path / "t.pth.tar", "eradio_xxxtiny", dict(KW),
                               extra_args={"cls_token_per_teacher": True})
    model = radio_model(w.path)
    assert (model.num_cls_tokens, model.num_summary_tokens) == (1, 1)


def test_unknown_model_kwargs_and_zero_layer_scale_load(tmp_path, images):
    """Spec §1.3: unknown constructor keywords are ignored; layer_scale=0 is a (zero) layer scale."""
    kw = dict(KW, ct_size=2, layer_scale=0)
    w = make_eradio_checkpoint(tmp_path / "u.pth.tar", "eradio_xxxtiny", kw, feature_normalizer=True, seed=4)
    assert "levels.3.blocks.0.attention_blocks.0.gamma1" in w.backbone
    model = radio_model(w.path)
    x = images(1, 64, 64)
    with torch.no_grad():
        out = model(x)
    exp = _expected(w, x)
    assert_close_rel(out.summary, exp["backbone"][0])
    assert_close_rel(out.features, exp["backbone"][1])
