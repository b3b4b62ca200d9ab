"""radio.layers.patch_generator: patchify order, the CPE position table (eval resize-then-crop,
crop-only mode, training viewports and position dropout), prefix tokens, packed embedding."""

import math

import pytest
import torch
import torch.nn.functional as F

# ckpt_writer and reference live in tests/ (on sys.path through tests/conftest.py). Helpers of
# tests/conftest.py are not imported by name here: `conftest` may be another folder's conftest.
from ckpt_writer import make_checkpoint
from reference import ref_forward

from radio import radio_model
from radio.layers.patch_generator import ClsToken, PatchGenerator, position_grid_size

D = 8


def _generator(grid=4, ps=2, num_cls=2, num_registers=1, seed=0, **kw) -> PatchGenerator:
    pg = PatchGenerator(ps, D, grid, num_cls, num_registers, dtype=torch.float64, **kw).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pg.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return pg


def _bilinear(table: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Half-pixel-centre bilinear resize of a ``(G, G, D)`` table, written out as a loop."""
    gh, gw, d = table.shape
    out = torch.empty(out_h, out_w, d, dtype=table.dtype)

    def src(i, n_in, n_out):
        s = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(s)), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), s - i0

    for r in range(out_h):
        r0, r1, fr = src(r, gh, out_h)
        for q in range(out_w):
            q0, q1, fq = src(q, gw, out_w)
            top = table[r0, q0] * (1 - fq) + table[r0, q1] * fq
            bottom = table[r1, q0] * (1 - fq) + table[r1, q1] * fq
            out[r, q] = top * (1 - fr) + bottom * fr
    return out


@pytest.mark.parametrize("cpe_max_size,ps,expected", [(64, 16, 4), (98, 14, 7), (100, 16, 6), (200, 16, 12),
                                                      (2048, 16, 128)])
def test_position_grid_size(cpe_max_size, ps, expected):
    assert position_grid_size(cpe_max_size, ps) == expected  # 12.5 -> 12: Python round


def test_patchify_is_channel_major_within_a_raster_of_patches():
    pg = _generator(ps=2)
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    p = pg.patchify(x)
    assert p.shape == (2, 2 * 3, 3 * 2 * 2)
    for b in range(2):
        for r in range(2):
            for q in range(3):
                expected = [x[b, c, 2 * r + i, 2 * q + j] for c in range(3) for i in range(2) for j in range(2)]
                assert torch.equal(p[b, r * 3 + q], torch.stack(expected))


@pytest.mark.parametrize("h,w", [(2, 3), (3, 2), (4, 4), (6, 2), (5, 5), (1, 1)])
def test_eval_table_is_resized_to_the_long_side_then_cropped(h, w):
    pg = _generator(grid=4)
    table = pg.pos_embed.reshape(4, 4, D)
    m = max(h, w)
    expected = _bilinear(table, m, m)[:h, :w].reshape(h * w, D)
    pos = pg.position_embedding(1, h, w)
    assert pos.shape == (1, h * w, D) and pos.dtype == torch.float64
    # the spec resizes in float32 (then casts back), hence float32 accuracy on a float64 table
    torch.testing.assert_close(pos[0], expected, rtol=0, atol=1e-6)
    if (h, w) == (4, 4):
        assert pos is pg.pos_embed  # the full grid is the table itself


@pytest.mark.parametrize("h,w", [(2, 3), (4, 4), (6, 2), (5, 5)])
def test_crop_only_mode_crops_and_resizes_only_an_overflowing_side(h, w):
    pg = _generator(grid=4, cpe_mode=False)
    table = pg.pos_embed.reshape(4, 4, D)
    crop = table[: min(h, 4), : min(w, 4)]
    expected = crop if crop.shape[:2] == (h, w) else _bilinear(crop, h, w)
    pos = pg.position_embedding(1, h, w)[0]
    torch.testing.assert_close(pos, expected.reshape(h * w, D), rtol=0, atol=1e-6)  # resized in float32
    if expected is crop:
        assert torch.equal(pos, crop.reshape(h * w, D))  # a pure crop is exact


def test_forward_adds_position_then_prepends_prefix_tokens():
    pg = _generator(grid=4, ps=2, num_cls=2, num_registers=1)
    assert pg.num_prefix_tokens == 3 and pg.cls_token.token.shape == (3, D)
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    out = pg(x)
    patches = pg.patchify(x) @ pg.embedder.weight.T + pg.position_embedding(2, 2, 3)
    assert out.shape == (2, 3 + 6, D)
    torch.testing.assert_close(out[:, 3:], patches)
    assert torch.equal(out[:, :3], pg.cls_token.token.expand(2, -1, -1))


def test_cls_token_module_and_no_prefix_variant():
    tok = ClsToken(D, num_cls=1, num_registers=2)
    with torch.no_grad():
        tok.token.copy_(torch.arange(3 * D, dtype=torch.float32).view(3, D))
    x = torch.zeros(2, 5, D)
    y = tok(x)
    assert y.shape == (2, 8, D) and torch.equal(y[1, :3], tok.token) and torch.equal(y[:, 3:], x)
    bare = _generator(class_token=False, num_cls=2, num_registers=4)
    assert bare.cls_token is None and bare.num_prefix_tokens == 0 and bare.num_registers == 0
    assert bare(torch.randn(1, 3, 4, 4, dtype=torch.float64)).shape == (1, 4, D)


def test_patch_normalizer_covers_prefix_tokens():
    pg = _generator(normalize_patches=True)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    out = pg(x)
    patches = pg.patchify(x) @ pg.embedder.weight.T + pg.position_embedding(1, 2, 2)
    raw = torch.cat([pg.cls_token.token[None], patches], 1)
    ln = pg.patch_normalizer
    assert isinstance(ln, torch.nn.LayerNorm) and ln.eps == 1e-5
    torch.testing.assert_close(out, F.layer_norm(raw, (D,), ln.weight, ln.bias, 1e-5))


def test_video_batch_must_be_a_multiple_of_frames_in_training():
    pg = _generator()
    pg.num_video_frames = 3
    eval_pos = pg.position_embedding(4, 2, 2)  # model.md §3.8: no effect in eval mode
    torch.testing.assert_close(eval_pos, _generator().position_embedding(4, 2, 2))
    pg.train()
    with pytest.raises(ValueError, match=r"cpe_video_mode\(3\).*batch \(4\) must be a multiple of 3"):
        pg.position_embedding(4, 2, 2)


def test_forward_packed_equals_per_image_forward_and_refuses_training():
    pg = _generator(grid=4, ps=2)
    a, b = torch.randn(1, 3, 4, 6, dtype=torch.float64), torch.randn(1, 3, 6, 2, dtype=torch.float64)
    packed = pg.forward_packed(torch.cat([pg.patchify(a)[0], pg.patchify(b)[0]]), [(2, 3), (3, 1)])
    assert packed.shape == (1, (3 + 6) + (3 + 3), D)
    torch.testing.assert_close(packed[:, :9], pg(a))
    torch.testing.assert_close(packed[:, 9:], pg(b))
    pg.train()
    with pytest.raises(ValueError, match="eval-mode only"):
        pg.forward_packed(pg.patchify(a)[0], [(2, 3)])


# ---------------------------------------------------------------------------------------------
# Through a loaded model: training viewports, position dropout, crop-only tables of real files.


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


def test_training_mode_random_viewports_and_video_sharing(normalized_ckpt, images):
    model = radio_model(str(normalized_ckpt[0])).train()
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


def test_training_position_dropout(normalized_ckpt, images):
    model = radio_model(str(normalized_ckpt[0])).train()
    pg = model.model.patch_generator
    pg.pos_dropout = 1.0  # every sample loses its position embedding
    x = images(2, 32, 32)
    with torch.no_grad():
        tokens = pg(model.input_conditioner(x))
        model.eval()
        no_pos = pg.cls_token(pg.embedder(pg.patchify(model.input_conditioner(x))))
    assert torch.equal(tokens, no_pos)


def test_training_viewport_matches_spec_draws(normalized_ckpt):
    """The training crop follows the spec's draw order and grid_sample formula."""
    model = radio_model(str(normalized_ckpt[0])).train()
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
            out, ref = model(x), ref_forward(ck.realized, ck.args, x)
        for got, expected in ((out.summary, ref.summary), (out.features, ref.features)):
            assert got.shape == expected.shape and got.dtype == expected.dtype
            assert ((got - expected).double().norm() / expected.double().norm()).item() <= 1e-5
