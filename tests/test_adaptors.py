"""radio.adaptors: one teacher's summary and feature heads (token slot, upsampling, output format and
dtypes, head checks), and adaptor selection through radio_model."""

import pytest
import torch

from ckpt_writer import make_checkpoint
from radio_test_utils import assert_outputs_close
from reference import ref_forward

from radio import RadioOutput, radio_model
from radio.adaptors import Adaptor
from radio.heads import MlpV1, MlpV2
from radio.outputs import to_nchw


def _teacher(**kw):
    from radio.config import TeacherConfig

    base = dict(index=0, name="clip", type="generic", use_summary=True, token_slot=1, fd_upsample_factor=1,
                summary_head="v2", feature_head="v1", raw={"name": "clip", "type": "generic"})
    base.update(kw)
    return TeacherConfig(**base)


def _randomized(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module.eval()


def _adaptor(u=1, head_idx=1):
    head = _randomized(MlpV2(8, 12, 5, 1), 0)
    feat = _randomized(MlpV1(8, 10, 3 * u * u), 1)
    return Adaptor("clip", head_idx, head, feat, upsample_factor=u), head, feat


def test_summary_token_is_chosen_by_head_idx():
    ad, head, _ = _adaptor(head_idx=2)
    summary = torch.randn(2, 4, 8)
    feats = torch.randn(2, 6, 8)
    with torch.no_grad():
        out = ad(summary, feats, (2, 3))
        assert isinstance(out, RadioOutput)
        torch.testing.assert_close(out.summary, head(summary[:, 2]))
        # a single summary token is used whatever the slot; a (B, D) summary as it is
        torch.testing.assert_close(ad(summary[:, 3:4], feats, (2, 3)).summary, head(summary[:, 3]))
        torch.testing.assert_close(ad(summary[:, 0], feats, (2, 3)).summary, head(summary[:, 0]))


@pytest.mark.parametrize("u", [1, 2])
def test_features_are_upsampled_then_formatted(u):
    ad, _, feat = _adaptor(u=u)
    feats = torch.randn(2, 6, 8)
    with torch.no_grad():
        nlc = ad(torch.randn(2, 2, 8), feats, (2, 3)).features
        nchw = ad(torch.randn(2, 2, 8), feats, (2, 3), feature_fmt="NCHW").features
        raw = feat(feats)  # (2, 6, 3*u*u)
    assert nlc.shape == (2, 6 * u * u, 3) and nchw.shape == (2, 3, 2 * u, 3 * u)
    for r in range(2 * u):  # an independent sub-pixel scatter: token (r, q) <- block of token (r//u, q//u)
        for q in range(3 * u):
            k = (r % u) * u + (q % u)
            expected = raw[:, (r // u) * 3 + q // u, 3 * k:3 * (k + 1)]
            torch.testing.assert_close(nlc[:, r * 3 * u + q], expected)
            torch.testing.assert_close(nchw[:, :, r, q], expected)
    assert torch.equal(to_nchw(nlc, (2 * u, 3 * u)), nchw)


def test_heads_run_in_their_own_dtype_and_outputs_are_float32():
    ad, head, feat = _adaptor()
    summary = torch.randn(1, 2, 8)
    feats = torch.randn(1, 6, 8).bfloat16()
    with torch.no_grad():
        out = ad(summary, feats, (2, 3))
        expected_features = feat(feats.float()).bfloat16().float()  # rounded through the backbone dtype
        expected_summary = head(summary[:, 1])  # summaries are float32 throughout
    assert out.summary.dtype == out.features.dtype == torch.float32
    assert torch.equal(out.features, expected_features) and torch.equal(out.summary, expected_summary)


def test_from_config_builds_heads_shaped_after_their_state_dicts():
    head, feat = MlpV2(8, 12, 5, 2), MlpV1(8, 10, 12)
    with torch.device("meta"):
        ad = Adaptor.from_config(_teacher(token_slot=3, fd_upsample_factor=2), head.state_dict(), feat.state_dict())
        v2 = Adaptor.from_config(_teacher(feature_head="v2", fd_upsample_factor=2), head.state_dict(),
                                 MlpV2(8, 12, 12, 1).state_dict())
    # adaptors.md §3.1/§4: a v1 feature head runs with upsample factor 1; upsampling is a v2 (or attn) feature
    assert (ad.name, ad.head_idx, ad.upsample_factor, ad.has_text) == ("clip", 3, 1, False)
    assert v2.upsample_factor == 2 and "name='clip', head_idx=1, upsample_factor=2" in repr(v2)
    assert isinstance(ad.head_mlp, MlpV2) and len(ad.head_mlp.blocks) == 2 and isinstance(ad.feat_mlp, MlpV1)
    assert ad.head_mlp.final[2].out_features == 5 and ad.feat_mlp.fc2.out_features == 12


def test_from_config_errors_name_the_adaptor_and_head():
    v2, v1 = MlpV2(8, 12, 5).state_dict(), MlpV1(8, 10, 4).state_dict()
    with pytest.raises(ValueError, match=r"adaptor 'clip' summary head: the checkpoint's args give no mlp_version"):
        Adaptor.from_config(_teacher(summary_head=None), v2, v1)
    with pytest.raises(KeyError, match=r"adaptor 'clip' summary head: 'attn' is not a valid summary head") as info:
        Adaptor.from_config(_teacher(summary_head="attn"), v2, v1)
    assert isinstance(info.value, ValueError)  # adaptors.md §2: the original fails with a KeyError
    mismatch = r"adaptor 'clip' feature head \(v2\) does not match the checkpoint: .*final\.2"
    with pytest.raises(ValueError, match=mismatch):
        Adaptor.from_config(_teacher(feature_head="v2"), v2, v1)


def test_adaptor_without_text_tower():
    ad, _, _ = _adaptor()
    assert not ad.has_text
    # adaptors.md §8: a generic adaptor has no tokenizer/encode_text, so hasattr says which adaptors embed text
    assert not any(hasattr(ad, a) for a in ("tokenizer", "encode_text", "oc_model", "text_model"))
    with pytest.raises(AttributeError, match="'clip' has no text encoder.*'open_clip' or 'siglip2'"):
        ad.tokenizer(["a dog"])
    with pytest.raises(AttributeError, match="has no text encoder"):
        ad.encode_text(torch.zeros(1, 4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# Adaptor selection and token slots through radio_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("adaptors") / "tiny.pth.tar"
    return path, make_checkpoint(path, depth=2, cpe_max_size=64)


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
