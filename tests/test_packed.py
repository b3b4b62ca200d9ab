"""Packed variable-resolution batches: ``model.forward_packed`` / ``radio.pack_images``.

Every packed output is compared with the dense forward of the same image alone (itself validated
against the reference in test_model.py / test_backbone.py), and the packed layout with transformers'
``RadioModel(pixel_values, image_grid_hw=...)`` on an exported model.
"""

import copy

import pytest
import torch
from torch import nn

from ckpt_writer import make_checkpoint
from radio_test_utils import all_tensors, assert_close_rel, assert_outputs_close

import radio
from radio import PackedImages, pack_images, radio_model

ALL = ["clip", "dino_v2", "sam"]
PS = 16
# grid 4x4 position table (cpe_max_size 64): 96x160 and 128x48 force interpolation, non-square sizes crop
SIZES = [(64, 96), (128, 48), (32, 32), (64, 96), (96, 160), (64, 64)]


def _images(sizes, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g).to(dtype) for h, w in sizes]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("packed") / "tiny.pth.tar"
    make_checkpoint(path, storage_dtype=torch.float32, fd_upsample_factor=2, feature_normalizer=True,
                    intermediate_normalizer="per_layer", model_norm=True)
    return str(path)


@pytest.fixture(scope="module")
def model(ckpt):
    return radio_model(ckpt, adaptor_names=ALL)


def _dense(model, img, fmt="NLC"):
    with torch.no_grad():
        return model(img[None], feature_fmt=fmt)


@pytest.mark.parametrize("fmt", ["NLC", "NCHW"])
def test_mixed_sizes_match_dense_with_adaptors(model, fmt):
    imgs = _images(SIZES)
    with torch.no_grad():
        outs = model.forward_packed(imgs, feature_fmt=fmt)
    assert isinstance(outs, list) and len(outs) == len(imgs)
    for img, out in zip(imgs, outs):
        ref = _dense(model, img, fmt)
        assert_outputs_close(out, ref)  # includes upsampling feature heads (u=2) and the feature normalizer
    h, w = SIZES[4]
    assert outs[4]["sam"].features.shape[-2:] == (2 * h // PS, 2 * w // PS) if fmt == "NCHW" else True


def test_single_image_and_packed_tensor_input(model):
    img = _images([(96, 160)])
    with torch.no_grad():
        (one,) = model.forward_packed(img)
        assert_outputs_close(one, _dense(model, img[0]))
        imgs = _images(SIZES, seed=1)
        packed = pack_images(imgs, model.patch_size)
        from_list = model.forward_packed(imgs)
        from_packed = model.forward_packed(packed)
        from_tuple = model.forward_packed((packed.patches, packed.grid_hw))
    for a, b, c in zip(from_list, from_packed, from_tuple):
        assert_outputs_close(b, a, tol=0)
        assert_outputs_close(c, a, tol=0)


def test_pack_images_layout():
    imgs = _images([(32, 48), (16, 32)])
    packed = pack_images(imgs, PS)
    assert isinstance(packed, radio.PackedImages)
    assert packed.grid_hw.dtype == torch.int64 and packed.grid_hw.tolist() == [[2, 3], [1, 2]]
    assert packed.patches.shape == (6 + 2, 3 * PS * PS)
    # row k of image 0 is patch (k // 3, k % 3), channel-major (C, ps, ps) flattened
    for k in range(6):
        r, c = divmod(k, 3)
        expect = imgs[0][:, r * PS:(r + 1) * PS, c * PS:(c + 1) * PS].reshape(-1)
        assert torch.equal(packed.patches[k], expect)
    assert torch.equal(packed.patches[7], imgs[1][:, :, PS:].reshape(-1))


def test_forward_intermediates_packed(model):
    imgs = _images([(64, 96), (32, 32), (96, 160)], seed=2)
    for kw in (dict(indices=[0, -1], aggregation="sparse", output_fmt="NLC", return_prefix_tokens=True, norm=True),
               dict(indices=[1], aggregation="dense", norm_alpha_scheme="pre-alpha"),
               dict(indices=2, aggregation="dense", norm_alpha_scheme="post-alpha", return_prefix_tokens=True)):
        with torch.no_grad():
            packed = model.forward_intermediates_packed(imgs, **kw)
            only = model.forward_intermediates_packed(imgs, intermediates_only=True, **kw)
            for img, (final, inter), inter_only in zip(imgs, packed, only):
                ref_final, ref_inter = model.forward_intermediates(img[None], **kw)
                assert_outputs_close(final, ref_final)
                assert len(inter) == len(ref_inter) == len(inter_only)
                for a, b, c in zip(inter, ref_inter, inter_only):
                    if kw.get("return_prefix_tokens"):
                        assert_outputs_close(a, b)
                        assert_outputs_close(c, b)
                    else:
                        assert_close_rel(a, b)
                        assert_close_rel(c, b)


def test_vitdet_windows_per_image(tmp_path):
    path = tmp_path / "deep.pth.tar"
    make_checkpoint(path, depth=8, storage_dtype=torch.float32, fd_upsample_factor=2)
    model = radio_model(str(path), adaptor_names=["sam"], vitdet_window_size=2)
    assert model.min_resolution_step == 32
    assert sum(bool(b.window_size) for b in model.model.blocks) == 4
    imgs = _images([(64, 128), (128, 64), (64, 64), (64, 128)], seed=3)
    with torch.no_grad():
        outs = model.forward_packed(imgs, feature_fmt="NCHW")
        for img, out in zip(imgs, outs):
            assert_outputs_close(out, _dense(model, img, "NCHW"))
    with pytest.raises(ValueError, match="multiples of min_resolution_step=32"):
        model.forward_packed(_images([(64, 64), (48, 64)]))


def test_bf16_model(ckpt):
    model = radio_model(ckpt, adaptor_names=["clip"]).to(torch.bfloat16)
    imgs = _images([(64, 96), (32, 32), (96, 160)], seed=4)
    with torch.no_grad():
        outs = model.forward_packed(imgs)
        for img, out in zip(imgs, outs):
            ref = _dense(model, img)
            assert out["backbone"].features.dtype == torch.bfloat16
            assert_outputs_close(out, ref)


def test_transformers_packed_input_matches(tmp_path):
    transformers = pytest.importorskip("transformers")
    from radio.export.transformers_export import export_transformers

    w = make_checkpoint(tmp_path / "hf.pth.tar", layerscale="grandma", embed_dim=32, num_heads=4, cpe_max_size=64,
                        storage_dtype=torch.float32)
    model = radio_model(w.path)
    out_dir = export_transformers(model, tmp_path / "tf")
    hf = transformers.RadioModel.from_pretrained(str(out_dir)).eval()
    imgs = _images([(64, 96), (128, 48), (32, 32)], seed=5)
    packed = pack_images(imgs, model.patch_size)
    with torch.no_grad():
        ours = model.forward_packed(packed)
        got = hf(pixel_values=packed.patches, image_grid_hw=packed.grid_hw)
    assert_close_rel(got.summary, torch.cat([o.summary for o in ours]))
    assert_close_rel(got.features, torch.cat([o.features[0] for o in ours]))


def test_torch_compile_dense_and_packed(ckpt):
    model = radio_model(ckpt)
    imgs = _images([(64, 96), (32, 32)], seed=6)
    with torch.no_grad():
        eager_packed = model.forward_packed(imgs)
        eager_dense = model(imgs[0][None])
        torch._dynamo.reset()
        packed_c = torch.compile(model.forward_packed, backend="aot_eager")(imgs)
        dense_c = torch.compile(model, backend="aot_eager")(imgs[0][None])
    for a, b in zip(packed_c, eager_packed):
        assert_outputs_close(a, b)
    assert_outputs_close(dense_c, eager_dense)


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="empty list"):
        model.forward_packed([])
    with pytest.raises(ValueError, match=r"image 1: Input size 40x64 is not supported"):
        model.forward_packed(_images([(32, 32), (40, 64)]))
    with pytest.raises(TypeError, match="mixed inputs"):
        model.forward_packed([_images([(32, 32)])[0], _images([(32, 32)], dtype=torch.float64)[0]])
    with pytest.raises(ValueError, match=r"image 0 has shape \(1, 3, 32, 32\).*drop the batch axis"):
        model.forward_packed([torch.rand(1, 3, 32, 32)])
    with pytest.raises(TypeError, match="for an equal-size batch"):
        model.forward_packed(torch.rand(2, 3, 32, 32))
    with pytest.raises(TypeError, match="dtype torch.uint8"):
        model.forward_packed([torch.zeros(3, 32, 32, dtype=torch.uint8)])
    packed = pack_images(_images([(32, 32), (64, 32)]), PS)
    with pytest.raises(ValueError, match="describes 12 patches but patches holds 6"):
        model.forward_packed(PackedImages(packed.patches[:6], packed.grid_hw))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        model.forward_packed(PackedImages(packed.patches, packed.grid_hw[:0]))
    with pytest.raises(TypeError, match="must hold integers"):
        model.forward_packed(PackedImages(packed.patches, packed.grid_hw.float()))
    with pytest.raises(ValueError, match="feature_fmt|NLC"):
        model.forward_packed(_images([(32, 32)]), feature_fmt="NHWC")
    with pytest.raises(ValueError, match="positive multiples of the patch size"):
        pack_images(_images([(32, 40)]), PS)
    with pytest.raises(ValueError, match=r"packed patches have a batch axis.*pass patches\[0\]"):
        model.forward_packed((packed.patches[None], packed.grid_hw))


def test_packed_pair_as_list_with_a_list_grid(model):
    """(patches, grid) as a list, the grid as nested lists (as vLLM passes it): the same packed batch."""
    images = _images([(32, 32), (64, 32)])
    packed = pack_images(images, PS)
    with torch.no_grad():
        expected = model.forward_packed(packed)
        got = model.forward_packed([packed.patches, packed.grid_hw.tolist()])
    flat_got, flat_expected = all_tensors(got), all_tensors(expected)
    assert len(flat_got) == len(flat_expected) > 0
    assert all(torch.equal(a, b) for a, b in zip(flat_got, flat_expected))


def test_training_mode_and_non_vit_refused(model):
    m = copy.deepcopy(model)
    m.train()
    with pytest.raises(ValueError, match="eval mode only"):
        m.forward_packed(_images([(32, 32)]))
    m.eval()
    m.model = nn.Identity()  # stands in for a convolutional (E-RADIO) backbone
    with pytest.raises(NotImplementedError, match="needs a ViT backbone"):
        m.forward_packed(_images([(32, 32)]))


def test_packed_input_warnings_name_images_and_sizes(model):
    """The guard rails of forward apply per image: NaN names the image, not a patch row; sizes count whole images."""
    import dataclasses
    import warnings

    imgs = _images([(32, 32), (64, 32), (32, 48)])
    imgs[2][0, 5, 5] = float("nan")
    with pytest.warns(UserWarning, match=r"Images \[2\] of the batch contain NaN"):
        model.forward_packed(imgs)
    capped = copy.deepcopy(model)
    capped.config = dataclasses.replace(capped.config, release=dataclasses.replace(capped.config.release,
                                                                                   max_resolution=48))
    with pytest.warns(UserWarning, match="Input size 64x32 exceeds this model's max_resolution 48"):
        capped.forward_packed(_images([(32, 32), (64, 32)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        capped.forward_packed(_images([(32, 32), (48, 32)]))
