"""Bad inputs, bad arguments, bad checkpoints and casts: one table per item of the reliability issue.

Every row is something a user does by mistake (or a cast that used to fail); each test asserts the
exact error type and a message that names the problem and the fix, or, for warnings, that exactly
one ``UserWarning`` with the expected wording is given, and that legitimate inputs give none.
Models are tiny official-format checkpoints written by ``tests/ckpt_writer.py`` (patch 16,
width 32, 2 blocks, teachers clip / dino_v2 / sam): no network.
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest
import torch

from radio import radio_model
from radio.outputs import RadioOutput

from ckpt_writer import make_checkpoint  # tests/ is on sys.path under pytest
from radio_test_utils import assert_close_rel

ADAPTORS = ["clip", "sam"]
H, W = 32, 48  # two by three patches of 16
MAX_RES = 64  # max_resolution given to the "release-like" model (the tiny file has no release)


# ----------------------------------------------------------------------------------------------
# Fixtures: one file, pristine models (tests deep-copy them, so the once-per-model state is fresh)


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad_inputs") / "m.pth.tar"
    written = make_checkpoint(path)
    assert written.patch_size == 16
    return path


@pytest.fixture(scope="module")
def pristine(ckpt_path) -> Dict[str, torch.nn.Module]:
    """Float32 models that no test runs directly: ``plain`` (no adaptors), ``adaptors``, ``capped``."""
    return {
        "plain": radio_model(str(ckpt_path)),
        "adaptors": radio_model(str(ckpt_path), adaptor_names=ADAPTORS),
        "capped": radio_model(str(ckpt_path), max_resolution=MAX_RES),
    }


@pytest.fixture
def fresh(pristine) -> Callable[[str], torch.nn.Module]:
    """``fresh(kind)``: a deep copy of a pristine model (no warnings given yet)."""
    return lambda kind="plain": copy.deepcopy(pristine[kind])


@pytest.fixture(scope="module")
def x01() -> torch.Tensor:
    """A batch of 3 images in [0, 1]."""
    return torch.rand(3, 3, H, W, generator=torch.Generator().manual_seed(0))


def _messages(record) -> List[str]:
    return [str(w.message) for w in record]


def _no_warnings(fn: Callable[[], object]) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


# ----------------------------------------------------------------------------------------------
# 1. Casting the model

CASTS = {
    "half": (lambda m: m.half(), torch.float16),
    "bfloat16": (lambda m: m.bfloat16(), torch.bfloat16),
    "to_float16": (lambda m: m.to(torch.float16), torch.float16),
    "to_bfloat16": (lambda m: m.to(torch.bfloat16), torch.bfloat16),
    "to_cpu_float16": (lambda m: m.to("cpu", torch.float16), torch.float16),
    "to_cpu_then_half": (lambda m: m.to("cpu").half(), torch.float16),
}
# relative-error tolerance against the float32 model (||a - b|| / ||b||); measured on this tiny
# model: ~1e-3 for float16, ~8e-3 for bfloat16
TOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2}
INPUT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _cast(model, cast: str):
    fn, dtype = CASTS[cast]
    out = fn(model)
    assert out is model  # nn.Module casts are in place and return the module
    return dtype


@pytest.mark.parametrize("in_dtype", INPUT_DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("cast", list(CASTS))
def test_cast_forward_backbone(fresh, x01, cast, in_dtype):
    model = fresh("plain")
    expected = model(x01)
    dtype = _cast(model, cast)
    out = model(x01.to(in_dtype))
    assert isinstance(out, RadioOutput)
    # backbone outputs in the module's current dtype, close to the float32 model
    assert_close_rel(out.summary, expected.summary.to(dtype), TOL[dtype])
    assert_close_rel(out.features, expected.features.to(dtype), TOL[dtype])


@pytest.mark.parametrize("cast", list(CASTS))
def test_cast_keeps_conditioner_float32(pristine, fresh, cast):
    """The conditioner's statistics follow device moves but are never rounded to the cast dtype."""
    model = fresh("plain")
    _cast(model, cast)
    ref = pristine["plain"].input_conditioner
    for name in ("norm_mean", "norm_std"):
        buf = getattr(model.input_conditioner, name)
        assert buf.dtype == torch.float32, (name, buf.dtype)
        assert torch.equal(buf, getattr(ref, name))
    assert next(model.blocks.parameters()).dtype == CASTS[cast][1]


def test_to_cpu_round_trip_keeps_conditioner_float32(pristine, fresh, x01):
    model = fresh("plain")
    model.to("cpu").to(torch.device("cpu"))
    ref = pristine["plain"]
    for name in ("norm_mean", "norm_std"):
        buf = getattr(model.input_conditioner, name)
        assert buf.dtype == torch.float32 and buf.device.type == "cpu"
        assert torch.equal(buf, getattr(ref.input_conditioner, name))
    # a float32 model moved to its own device is unchanged: bit-identical outputs
    assert torch.equal(model(x01).features, copy.deepcopy(ref)(x01).features)


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("cast", ["half", "bfloat16", "to_float16"])
def test_cast_forward_adaptors(fresh, x01, cast, in_dtype):
    """adaptors.md §5: backbone outputs in the backbone dtype; adaptor outputs float32, and adaptor
    features pass through the backbone dtype on the way out (exactly representable in it)."""
    model = fresh("adaptors")
    expected = model(x01)
    dtype = _cast(model, cast)
    out = model(x01.to(in_dtype))
    assert list(out) == ["backbone", *ADAPTORS]
    assert_close_rel(out["backbone"].summary, expected["backbone"].summary.to(dtype), TOL[dtype])
    assert_close_rel(out["backbone"].features, expected["backbone"].features.to(dtype), TOL[dtype])
    for name in ADAPTORS:
        assert_close_rel(out[name].summary, expected[name].summary, TOL[dtype])
        assert_close_rel(out[name].features, expected[name].features, TOL[dtype])
        assert torch.equal(out[name].features.to(dtype).float(), out[name].features)


@pytest.mark.parametrize("cast", ["half", "bfloat16", "to_float16"])
def test_cast_forward_intermediates(fresh, x01, cast):
    model = fresh("adaptors")
    exp_final, exp_inter = model.forward_intermediates(x01, indices=[0, 1], return_prefix_tokens=True)
    dtype = _cast(model, cast)
    final, inter = model.forward_intermediates(x01.to(dtype), indices=[0, 1], return_prefix_tokens=True)
    assert len(inter) == len(exp_inter) == 2
    for got, exp in zip(inter, exp_inter):
        assert_close_rel(got.summary, exp.summary.to(dtype), TOL[dtype])
        assert_close_rel(got.features, exp.features.to(dtype), TOL[dtype])
    assert_close_rel(final["backbone"].features, exp_final["backbone"].features.to(dtype), TOL[dtype])
    for name in ADAPTORS:
        assert_close_rel(final[name].features, exp_final[name].features, TOL[dtype])


def test_to_float16_then_forward_intermediates_float32_input(fresh, x01):
    """The issue's exact sequence: ``model.to(torch.float16)`` then ``forward_intermediates(x)`` with a float32 x."""
    model = fresh("plain")
    expected = model.forward_intermediates(x01, indices=2, intermediates_only=True)
    model.to(torch.float16)
    got = model.forward_intermediates(x01, indices=2, intermediates_only=True)
    assert [t.shape for t in got] == [t.shape for t in expected] == [(3, 32, H // 16, W // 16)] * 2
    for g, e in zip(got, expected):
        assert_close_rel(g, e.half(), TOL[torch.float16])


# ----------------------------------------------------------------------------------------------
# 2. Input guard rails


def _standardized(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    return (x - mean) / std


MISTAKES = {
    "0-255": (lambda x: x * 255, r"0-255.*/ 255"),
    "0-255_one_bright_pixel": (lambda x: torch.cat([x[:1] * 0 + 0.5, x[1:]]).index_put_(
        (torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), torch.tensor([0])), torch.tensor(200.0)),
        r"0-255.*/ 255"),
    "standardized": (_standardized, r"standardized.*make_preprocessor_external\(\)"),
}


# a standardized image (CLIP stats: range about [-1.79, 2.15]) must not be mistaken for a 0-255 one
MISTAKES["standardized_dark"] = (lambda x: _standardized(x * 0.3), r"standardized.*make_preprocessor_external\(\)")
MISTAKE_ROWS = list(MISTAKES)


@pytest.mark.parametrize("mistake", MISTAKE_ROWS)
@pytest.mark.parametrize("entry", ["forward", "forward_intermediates"])
def test_value_mistake_warns_once_per_model(fresh, x01, mistake, entry):
    make, pattern = MISTAKES[mistake]
    bad = make(x01.clone())
    model = fresh("plain")
    run = (lambda m: m(bad)) if entry == "forward" else (lambda m: m.forward_intermediates(bad, indices=1))
    with pytest.warns(UserWarning, match=pattern) as record:
        run(model)
    assert len([m for m in _messages(record) if re.search(pattern, m, re.S)]) == 1, _messages(record)
    _no_warnings(lambda: run(model))  # the same mistake on the same model: silent
    with pytest.warns(UserWarning, match=pattern):  # another model warns again
        run(fresh("plain"))


LEGIT = {
    "unit_range": lambda x: x,
    "resampling_overshoot": lambda x: x * 1.04 - 0.02,  # [-0.02, 1.02]
    "zeros": lambda x: torch.zeros_like(x),
    "ones": lambda x: torch.ones_like(x),
    "small_negative": lambda x: x - 0.3,
}


@pytest.mark.parametrize("case", list(LEGIT))
def test_legitimate_inputs_do_not_warn(fresh, x01, case):
    model = fresh("capped")
    x = LEGIT[case](x01)
    out = _no_warnings(lambda: model(x))
    assert torch.isfinite(out.features).all()


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_no_range_warning_after_make_preprocessor_external(fresh, x01, mistake):
    model = fresh("plain")
    reference = copy.deepcopy(model)
    conditioner = model.make_preprocessor_external()
    bad = MISTAKES[mistake][0](x01.clone())
    out = _no_warnings(lambda: model(bad))
    # the caller standardizes now: same result as the model that standardizes internally
    assert_close_rel(model(conditioner(x01)).features, reference(x01).features, 1e-5)
    assert torch.isfinite(out.features).all()


NON_FINITE = {
    "nan_in_1": ([1], float("nan")),
    "inf_in_0_and_2": ([0, 2], float("inf")),
    "neg_inf_in_2": ([2], float("-inf")),
}


@pytest.mark.parametrize("case", list(NON_FINITE))
def test_non_finite_pixels_warn_with_batch_indices(fresh, x01, case):
    bad_idx, value = NON_FINITE[case]
    model = fresh("plain")
    clean = model(x01)
    x = x01.clone()
    for i in bad_idx:
        x[i, 1, 5, 7] = value
    with pytest.warns(UserWarning, match=re.escape(str(bad_idx)) + r".*(NaN|Inf)") as record:
        out = model(x)
    assert not any("0-255" in m or "standardized" in m for m in _messages(record)), _messages(record)
    for i in range(x.shape[0]):
        if i in bad_idx:
            assert torch.isnan(out.features[i]).any()
        else:  # images are independent: the others are exactly what the clean batch gives
            assert_close_rel(out.features[i], clean.features[i], 1e-5)
            assert_close_rel(out.summary[i], clean.summary[i], 1e-5)


@pytest.mark.parametrize("shape", [(1, 3, 80, 32), (1, 3, 32, 80), (1, 3, 96, 96)], ids=["tall", "wide", "both"])
def test_side_above_max_resolution_warns_once(fresh, shape):
    model = fresh("capped")
    assert model.max_resolution == MAX_RES
    x = torch.rand(*shape)
    with pytest.warns(UserWarning, match=r"max_resolution.*degrade") as record:
        out = model(x)
    assert len(_messages(record)) == 1, _messages(record)
    assert out.features.shape == (1, shape[2] // 16 * shape[3] // 16, 32)
    _no_warnings(lambda: model(x))
    _no_warnings(lambda: model(torch.rand(1, 3, MAX_RES, MAX_RES)))  # at the max: fine


NEAREST = [  # (h, w, expected with max_resolution 64, step 16)
    (3000, 3000, (64, 64)),
    (3000, 20, (64, 16)),
    (33, 47, (32, 48)),
    (1, 1, (16, 16)),
    (64, 64, (64, 64)),
    (70, 30.5, (64, 32)),
]


@pytest.mark.parametrize("h,w,expected", NEAREST, ids=[f"{h}x{w}" for h, w, _ in NEAREST])
def test_nearest_supported_resolution_is_capped(pristine, h, w, expected):
    assert tuple(pristine["capped"].get_nearest_supported_resolution(h, w)) == expected


BAD_SIDES = [0, -5, -0.5, float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("side", BAD_SIDES, ids=str)
@pytest.mark.parametrize("which", ["height", "width"])
def test_nearest_supported_resolution_rejects_bad_sizes(pristine, side, which):
    h, w = (side, 32) if which == "height" else (32, side)
    with pytest.raises(ValueError, match=rf"{which} must be a positive finite"):
        pristine["capped"].get_nearest_supported_resolution(h, w)


@pytest.mark.parametrize("shape", [(1, 3, 0, 32), (1, 3, 32, 0), (1, 3, 0, 0)], ids=["h0", "w0", "hw0"])
@pytest.mark.parametrize("entry", ["forward", "forward_intermediates"])
def test_empty_side_is_a_value_error(pristine, shape, entry):
    model = pristine["plain"]
    fn = model if entry == "forward" else (lambda x: model.forward_intermediates(x, indices=1))
    with pytest.raises(ValueError, match=r"empty.*\(1, 3, \d+, \d+\)"):
        fn(torch.rand(*shape))


def test_no_warning_while_compiling_and_none_in_the_graph(fresh):
    """``torch.compile`` (dynamo, eager backend, one graph) of a model fed a 0-255 image: no range warning
    while compiling, none when the compiled graph runs again, and the eager model still warns afterwards
    (compiling did not use up the once-per-model warning). ``torch.jit.trace`` is not used: it fails in
    the position-table resize (see the report)."""
    model = fresh("plain")
    x255 = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(1)) * 255
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = compiled(x255)
        second = compiled(x255 * 0.5)
    assert not [m for m in _messages(record) if "255" in m or "standardized" in m], _messages(record)
    with pytest.warns(UserWarning, match=r"0-255") as record:
        eager = model(x255)
    assert len(_messages(record)) == 1, _messages(record)
    assert_close_rel(first.summary, eager.summary, 1e-5)
    assert_close_rel(first.features, eager.features, 1e-5)
    assert_close_rel(second.features, model(x255 * 0.5).features, 1e-5)


# ----------------------------------------------------------------------------------------------
# 3. Arguments are checked where they enter

BAD_ARGS = [
    ("version_int", dict(version=123), TypeError, r"version.*int 123"),
    ("version_list", dict(version=["radio_v2.5-b"]), TypeError, r"version.*list"),
    ("adaptor_names_int", dict(adaptor_names=123), TypeError, r"adaptor_names.*string or a list of strings"),
    ("adaptor_names_mixed", dict(adaptor_names=["clip", 1]), TypeError, r"adaptor_names.*string or a list of strings"),
    ("vitdet_str", dict(vitdet_window_size="4"), TypeError, r"vitdet_window_size.*positive int.*'4'"),
    ("vitdet_float", dict(vitdet_window_size=2.5), TypeError, r"vitdet_window_size.*positive int.*2\.5"),
    ("vitdet_bool", dict(vitdet_window_size=True), TypeError, r"vitdet_window_size.*positive int"),
    ("vitdet_negative", dict(vitdet_window_size=-2), ValueError, r"vitdet_window_size.*positive"),
    ("vitdet_negative", dict(vitdet_window_size=-2), ValueError, r"vitdet_window_size.*positive"),
]


@pytest.mark.parametrize("kwargs,exc,pattern", [r[1:] for r in BAD_ARGS], ids=[r[0] for r in BAD_ARGS])
def test_bad_radio_model_arguments(ckpt_path, kwargs, exc, pattern):
    kwargs = dict(kwargs)
    version = kwargs.pop("version", str(ckpt_path))
    with pytest.raises(exc, match=pattern):
        radio_model(version, **kwargs)


@pytest.mark.parametrize("window", [5, 100], ids=["step80", "step1600"])
def test_vitdet_window_larger_than_max_resolution(ckpt_path, window):
    """A window of 5 patches of 16 = an 80-pixel step, above max_resolution 64: no input could be valid."""
    with pytest.raises(ValueError, match=r"vitdet_window_size.*max_resolution"):
        radio_model(str(ckpt_path), max_resolution=MAX_RES, vitdet_window_size=window)


def test_vitdet_window_within_max_resolution_is_fine(tmp_path):
    path = tmp_path / "deep.pth.tar"
    make_checkpoint(path, depth=8)  # ViTDet needs a period of at least 2 blocks (depth // 4)
    model = radio_model(str(path), max_resolution=MAX_RES, vitdet_window_size=2)
    assert model.min_resolution_step == 32 and model.window_size == 2
    assert tuple(model.get_nearest_supported_resolution(3000, 40)) == (64, 32)
    assert model(torch.rand(1, 3, 64, 32)).features.shape == (1, 8, 32)


BAD_INDICES = [
    ("float_elem", [1.5], TypeError),
    ("str_elem", ["1"], TypeError),
    ("bool_elem", [True], TypeError),
    ("str", "abc", TypeError),
    ("float", 1.5, TypeError),
    ("bool", True, TypeError),
    ("float_tensor", torch.tensor([1.0]), TypeError),
    ("float_array", np.array([1.0]), TypeError),
    ("out_of_range", [2], ValueError),
    ("last_zero", 0, ValueError),
    ("empty", [], ValueError),
]


@pytest.mark.parametrize("indices,exc", [r[1:] for r in BAD_INDICES], ids=[r[0] for r in BAD_INDICES])
def test_forward_intermediates_bad_indices(pristine, x01, indices, exc):
    with pytest.raises(exc, match=r"indic|block"):
        pristine["plain"].forward_intermediates(x01, indices=indices)


def test_forward_intermediates_int_indices_still_work(pristine, x01):
    model = pristine["plain"]
    by_list = model.forward_intermediates(x01, indices=[1, -2], intermediates_only=True)
    by_count = model.forward_intermediates(x01, indices=2, intermediates_only=True)
    by_tensor = model.forward_intermediates(x01, indices=torch.tensor([0, 1]), intermediates_only=True)
    by_array = model.forward_intermediates(x01, indices=np.array([1, 0]), intermediates_only=True)
    for a, b, c, d in zip(by_list, by_count, by_tensor, by_array):
        assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)


MISSPELLED = [
    ("adaptor_name", "clip", "adaptor_names"),
    ("vitdet_window", 2, "vitdet_window_size"),
    ("checkpoint", "x", "checkpoint_path"),
]


@pytest.mark.parametrize("key,value,closest", MISSPELLED, ids=[m[0] for m in MISSPELLED])
def test_misspelled_keyword_warns_with_closest(ckpt_path, key, value, closest):
    with pytest.warns(UserWarning, match=rf"unknown keyword argument '{key}'.*did you mean '{closest}'"):
        model = radio_model(str(ckpt_path), **{key: value})
    assert len(model.adaptors) == 0  # accepted, ignored


# ----------------------------------------------------------------------------------------------
# 4. Checkpoint errors carry their context

WRONG_SHAPES = [  # (id, stored key, new shape, adaptor to load, pattern)
    ("backbone_qkv", "base_model.blocks.0.attn.qkv.weight", (96, 31), None,
     r"backbone.*blocks\.0\.attn\.qkv\.weight.*expected \(96, 32\), found \(96, 31\)"),
    ("backbone_fc2_bias", "base_model.blocks.1.mlp.fc2.bias", (33,), None,
     r"backbone.*blocks\.1\.mlp\.fc2\.bias.*expected \(32,\), found \(33,\)"),
    ("summary_head", "_heads.1.final.2.weight", (16, 23), "dino_v2",
     r"adaptor 'dino_v2'.*final\.2\.weight.*expected \(16, 24\), found \(16, 23\)"),
    ("feature_head", "_feature_projections.0.blocks.0.2.weight", (24, 25), "clip",
     r"adaptor 'clip'.*blocks\.0\.2\.weight.*expected \(24, 24\), found \(24, 25\)"),
]


@pytest.mark.parametrize("key,shape,adaptor,pattern", [r[1:] for r in WRONG_SHAPES], ids=[r[0] for r in WRONG_SHAPES])
def test_wrong_shape_is_checkpoint_error(tmp_path, key, shape, adaptor, pattern):
    from radio.checkpoint import CheckpointError  # lazily: the package is being restructured

    written = make_checkpoint(None)
    ckpt = written.checkpoint
    ckpt["state_dict"][key] = torch.zeros(shape, dtype=ckpt["state_dict"][key].dtype)
    path = tmp_path / "bad.pth.tar"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=pattern):
        radio_model(str(path), adaptor_names=adaptor)


NOT_CHECKPOINTS = {
    "random_bytes": bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(3),
                                        dtype=torch.uint8).tolist()),
    "text": b"this is not a checkpoint\n" * 10,
    "json": b'{"state_dict": {}}',
    "zip_header_garbage": b"PK\x03\x04" + b"\x00" * 100,
}


@pytest.mark.parametrize("content", list(NOT_CHECKPOINTS.values()), ids=list(NOT_CHECKPOINTS))
def test_non_checkpoint_file(tmp_path, content):
    from radio.checkpoint import CheckpointError, UnsafeCheckpointError

    path = tmp_path / "junk.pth.tar"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"not a (PyTorch|torch) checkpoint") as info:
        radio_model(str(path))
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert "unknown" not in str(info.value)
    assert str(path) in str(info.value)


RELEASE_MISMATCH = [  # (id, make_checkpoint kwargs, release, pattern)
    ("width_depth", dict(), "radio_v2.5-b",
     r"patch 16, width 32, depth 2.*'radio_v2\.5-b' \(patch 16, width 768, depth 12\)"),
    ("patch", dict(model="vit_base_patch14_224"), "radio_v2.5-b",
     r"patch 14, width 32, depth 2.*'radio_v2\.5-b' \(patch 16"),
    ("depth", dict(depth=3), "radio_v2.5-l", r"depth 3.*'radio_v2\.5-l'"),
]


@pytest.mark.parametrize("kwargs,release,pattern", [r[1:] for r in RELEASE_MISMATCH],
                         ids=[r[0] for r in RELEASE_MISMATCH])
def test_checkpoint_path_with_wrong_release(tmp_path, kwargs, release, pattern):
    from radio.checkpoint import CheckpointError

    path = tmp_path / "m.pth.tar"
    make_checkpoint(path, **kwargs)
    with pytest.raises(CheckpointError, match=pattern):
        radio_model(release, checkpoint_path=path)


def test_verify_rejects_nan_tensor(tmp_path):
    from radio.checkpoint import CheckpointError

    written = make_checkpoint(None)
    ckpt = written.checkpoint
    ckpt["state_dict"]["base_model.blocks.1.mlp.fc1.weight"][3, 4] = float("nan")
    path = tmp_path / "nan.pth.tar"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc1\.weight"):
        radio_model(str(path), verify=True)


def test_verify_accepts_clean_file(ckpt_path, pristine, x01):
    model = _no_warnings(lambda: radio_model(str(ckpt_path), verify=True))
    assert torch.equal(model(x01).features, copy.deepcopy(pristine["plain"])(x01).features)
