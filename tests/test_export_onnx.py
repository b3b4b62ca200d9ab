"""ONNX export (radio/export/onnx_export.py) checked with onnxruntime on tiny official-format checkpoints.

Every comparison runs the exported file with onnxruntime (CPU) and compares it with the PyTorch
model's own forward at the same input, with relative L2 error (the conformance rule). E-RADIO
files (fixed size, the attention window baked in) are also compared with the independent plain
implementation in ``eradio_reference.py``.
"""

import json

import pytest
import torch

from ckpt_writer import make_checkpoint
from eradio_reference import optimal_window_reference, reference_forward
from eradio_writer import make_eradio_checkpoint
from radio_test_utils import require_module
from reference import ref_head

from radio import radio_model

ort = require_module("onnxruntime")
onnx = require_module("onnx")
require_module("onnxscript")

from radio.export import onnx_export  # noqa: E402
from radio.export.onnx_export import (FP32_TOLERANCE, OnnxVerificationError, export_onnx,  # noqa: E402
                                      export_window_size, read_onnx_metadata, supports_dynamic_size,
                                      verify_onnx)

TEACHERS = [
    {"name": "clip", "type": "generic"},
    {"name": "dino_v2", "type": "generic"},
    {"name": "sam", "type": "generic", "use_summary": False, "fd_upsample_factor": 2},
]
ADAPTORS = ["clip", "sam"]
FP16_TEST_TOL = 2e-3  # float16 file vs the float32 model, 2-block D=32 model (measured ~6e-4)


def _rel(actual, expected) -> float:
    a, b = torch.as_tensor(actual).double(), expected.detach().double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).norm() / b.norm())


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _flat(out, adaptors):
    backbone = out["backbone"] if isinstance(out, dict) else out
    flat = [backbone.summary, backbone.features]
    for name in adaptors:
        flat += [out[name].summary, out[name].features]
    return flat


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth.tar"
    make_checkpoint(path, teachers=TEACHERS, cpe_max_size=64, feature_normalizer=True)  # G = 4, table 64 px
    return radio_model(str(path), adaptor_names=["clip", "dino_v2", "sam"])


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    info = export_onnx(model, path, adaptor_names=ADAPTORS)
    return info, _session(path)


# ------------------------------------------------------------------------------------------------
# float32, dynamic sizes


@pytest.mark.parametrize("size", [
    (64, 64),   # h == w == the table (4x4 patches)
    (32, 32),   # square, below the table
    (48, 32),   # h > w
    (32, 80),   # h < w, the long side above the table
    (96, 80),   # both sides above the table
    (16, 16),   # a single patch
])
@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_sizes_match_torch(model, exported, size, batch):
    info, sess = exported
    x = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(batch * 1000 + size[0] + size[1]))
    with torch.no_grad():
        expected = _flat(model(x), ADAPTORS)
    got = sess.run(list(info.output_names), {info.input_name: x.numpy()})
    for name, a, b in zip(info.output_names, got, expected):
        assert _rel(a, b) <= FP32_TOLERANCE, name
    h, w = size[0] // 16, size[1] // 16
    assert got[1].shape == (batch, h * w, 32)            # NLC backbone features
    assert got[5].shape == (batch, 4 * h * w, 16)        # 'sam' features upsampled 2x per side


def test_graph_names_and_dims(model, exported):
    info, sess = exported
    assert info.input_name == "image"
    assert info.output_names == ("summary", "features", "clip.summary", "clip.features",
                                 "sam.summary", "sam.features")
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [o.name for o in sess.get_outputs()] == list(info.output_names)
    shape = sess.get_inputs()[0].shape
    assert shape[1] == 3 and all(isinstance(d, str) for d in (shape[0], shape[2], shape[3]))
    assert sess.get_inputs()[0].type == "tensor(float)"
    assert info.dynamic and info.opset == 18 and info.dtype == "float32"
    assert info.window_size is None and info.export_size == (48, 32)  # traced at 3 x 2 steps


def test_metadata(model, exported):
    info, sess = exported
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta == read_onnx_metadata(info.path) == info.metadata
    assert meta["patch_size"] == "16" and meta["min_resolution_step"] == "16"
    assert meta["position_table_size"] == "64" and meta["max_resolution"] == str(model.max_resolution)
    assert meta["summary_dim"] == str(model.summary_dim) == "64"  # clip + dino_v2 summary tokens, D = 32
    assert meta["feature_dim"] == "32"
    assert json.loads(meta["adaptors"]) == ADAPTORS
    assert json.loads(meta["output_names"]) == list(info.output_names)
    assert json.loads(meta["output_widths"])["sam.features"] == 16
    assert json.loads(meta["feature_upsample"]) == {"clip": 1, "sam": 2}
    assert meta["dtype"] == "float32" and meta["dynamic"] == "true" and meta["external_preprocessing"] == "false"
    assert meta["version"] == (model.version or "")
    assert meta["backbone"] == "vit" and meta["eradio_window_size"] == ""
    torch.testing.assert_close(torch.tensor(json.loads(meta["norm_mean"])),
                               model.input_conditioner.norm_mean.flatten().float())
    torch.testing.assert_close(torch.tensor(json.loads(meta["norm_std"])),
                               model.input_conditioner.norm_std.flatten().float())


def test_verify_onnx_default_sizes(model, exported):
    info, _ = exported
    errors = verify_onnx(model, info.path, batch=1)
    sizes = {key.split("@")[1] for key in errors}
    assert sizes == {"64x64", "64x32", "32x80", "96x80"}  # square, both orientations, above the 64 px table
    assert len(errors) == 4 * len(info.output_names)
    assert max(errors.values()) <= FP32_TOLERANCE


def test_verify_onnx_detects_a_different_model(exported, tmp_path):
    info, _ = exported
    make_checkpoint(tmp_path / "other.pth.tar", teachers=TEACHERS, cpe_max_size=64, feature_normalizer=True, seed=1)
    other = radio_model(str(tmp_path / "other.pth.tar"), adaptor_names=ADAPTORS)
    with pytest.raises(OnnxVerificationError, match="relative error"):
        verify_onnx(other, info.path, sizes=[(32, 32)], batch=1)


# ------------------------------------------------------------------------------------------------
# Options


def test_external_preprocessing_and_external_data(model, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "_EXTERNAL_DATA_BYTES", 0)  # as for a model above 2 GB
    info = export_onnx(model, tmp_path / "ext.onnx", adaptor_names=["clip"], external_preprocessing=True)
    assert info.metadata["external_preprocessing"] == "true"
    data = tmp_path / "ext.onnx.data"
    assert data.stat().st_size > 100_000  # the large weights live beside the graph (small ones stay inline)
    assert read_onnx_metadata(info.path) == info.metadata
    sess = _session(info.path)
    x = torch.rand(2, 3, 48, 80)
    mean = torch.tensor(json.loads(info.metadata["norm_mean"])).view(3, 1, 1)
    std = torch.tensor(json.loads(info.metadata["norm_std"])).view(3, 1, 1)
    with torch.no_grad():
        expected = _flat(model(x), ["clip"])
    got = sess.run(None, {"image": ((x - mean) / std).numpy()})  # the caller standardizes
    for name, a, b in zip(info.output_names, got, expected):
        assert _rel(a, b) <= FP32_TOLERANCE, name
    # the conditioner really is outside: raw pixels give other features
    raw = sess.run(["features"], {"image": x.numpy()})[0]
    assert _rel(raw, expected[1]) > 0.1


def test_float16(model, tmp_path):
    info = export_onnx(model, tmp_path / "half.onnx", adaptor_names=["sam"], dtype="float16")
    sess = _session(info.path)
    assert sess.get_inputs()[0].type == "tensor(float)"  # the input stays float32
    assert [o.type for o in sess.get_outputs()] == ["tensor(float16)"] * 4
    x = torch.rand(2, 3, 80, 48)
    with torch.no_grad():
        expected = _flat(model(x), ["sam"])  # the float32 model
    got = sess.run(None, {"image": x.numpy()})
    errors = [_rel(torch.from_numpy(a).float(), b) for a, b in zip(got, expected)]
    assert max(errors) <= FP16_TEST_TOL, errors
    assert min(errors) > 1e-6  # it really computed in half precision
    assert max(verify_onnx(model, info.path, sizes=[(32, 64)], batch=1).values()) <= FP16_TEST_TOL
    assert next(model.model.parameters()).dtype != torch.float16  # the source model was not cast


def test_fixed_size_opset17_export_from_a_training_model(model, tmp_path):
    model.train()  # the export uses eval-mode numerics and restores every module's mode
    try:
        info = export_onnx(model, tmp_path / "fixed.onnx", dynamic=False, example_size=(48, 64), opset=17)
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    assert info.opset == 17
    assert [(o.domain, o.version) for o in onnx.load(str(info.path)).opset_import if o.domain == ""] == [("", 17)]
    sess = _session(info.path)
    assert sess.get_inputs()[0].shape[2:] == [48, 64]
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # batch stays dynamic
    assert info.metadata["dynamic"] == "false" and info.metadata["export_size"] == "48x64"
    errors = verify_onnx(model, info.path, batch=3)
    assert {k.split("@")[1] for k in errors} == {"48x64"} and max(errors.values()) <= FP32_TOLERANCE


def test_vitdet_dynamic(tmp_path):
    make_checkpoint(tmp_path / "det.pth.tar", depth=8, cpe_max_size=64)
    det = radio_model(str(tmp_path / "det.pth.tar"), adaptor_names=["clip"], vitdet_window_size=2)
    assert det.min_resolution_step == 32
    info = export_onnx(det, tmp_path / "det.onnx", adaptor_names=["clip"])
    assert info.metadata["min_resolution_step"] == "32" and info.metadata["vitdet_window_size"] == "2"
    errors = verify_onnx(det, info.path, sizes=[(64, 64), (128, 64), (32, 96)], batch=1)
    assert max(errors.values()) <= FP32_TOLERANCE


# ------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("kwargs,match", [
    (dict(dtype="bfloat16"), "dtype='bfloat16'.*float32, float16"),
    (dict(dtype="float64"), "dtype='float64'"),
    (dict(adaptor_names=["siglip"]), "Unknown adaptor 'siglip'.*clip"),
    (dict(adaptor_names=["clip", "clip"]), "twice"),
    (dict(opset=16), "opset=16.*>= 17"),
    (dict(example_size=(40, 64)), "example_size=40x64.*min_resolution_step=16.*32x64"),
    # one patch per side would be specialized by torch.export: refused before tracing
    (dict(example_size=(16, 48)), "example_size=16x48 has a side of one step.*at least 32 px"),
])
def test_bad_options(model, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export_onnx(model, tmp_path / "x.onnx", **kwargs)
    assert not (tmp_path / "x.onnx").exists()


def test_opset_must_be_an_int(model, tmp_path):
    with pytest.raises(TypeError, match="opset must be an int.*'18'"):
        export_onnx(model, tmp_path / "x.onnx", opset="18")


def test_adaptor_names_string_is_rejected(model, tmp_path):
    with pytest.raises(TypeError, match=r"adaptor_names=\['clip'\]"):
        export_onnx(model, tmp_path / "x.onnx", adaptor_names="clip")


def test_size_dependent_backbone_needs_fixed_size(model, tmp_path, monkeypatch):
    # A backbone whose structure depends on the input size (E-RADIO) cannot be dynamic.
    monkeypatch.setattr(onnx_export, "supports_dynamic_size", lambda m: False)
    with pytest.raises(ValueError, match="dynamic=False and example_size.*--fixed-size HxW"):
        export_onnx(model, tmp_path / "x.onnx")


# ------------------------------------------------------------------------------------------------
# E-RADIO: fixed size, the window the model would use at that size
# (one export here, under the 'auto' policy; tests/tools/test_export_cmd.py exports under 'fixed')

ERADIO_KW = {"return_full_features": True, "conv_groups_ratio": 1, "cpb_mlp_hidden": 64, "multi_query": True}
ERADIO_ADAPTORS = ["clip", "sam"]
ERADIO_SIZE = (128, 96)   # neck 8 x 6; shorter side 96 -> n = 3 -> optimal window 3
ERADIO_WINDOW = 3         # under window_policy='auto' (the construction window, used by 'fixed', is 16)


@pytest.fixture(scope="module")
def eradio(tmp_path_factory):
    path = tmp_path_factory.mktemp("eradio") / "e.pth.tar"
    written = make_eradio_checkpoint(path, "eradio_xxxtiny", dict(ERADIO_KW), feature_normalizer=True, seed=5)
    model = radio_model(written.path, adaptor_names=ERADIO_ADAPTORS)
    model.window_policy = "auto"
    return written, model


@pytest.fixture(scope="module")
def eradio_exported(eradio, tmp_path_factory):
    _, model = eradio
    path = tmp_path_factory.mktemp("onnx") / "eradio.onnx"
    info = export_onnx(model, path, adaptor_names=ERADIO_ADAPTORS, dynamic=False, example_size=ERADIO_SIZE)
    return info, _session(path)


def _eradio_expected(written, x, window, names=()):
    """Independent computation: plain E-RADIO reference -> token mean summary, normalized features, heads."""
    xc = (x - written.conditioner["norm_mean"]) / written.conditioner["norm_std"]
    neck = reference_forward(written.backbone, xc, window=window).neck
    tokens = neck.flatten(2).transpose(1, 2)
    summary = tokens.mean(dim=1)
    fn = written.feature_normalizer
    feats = (tokens - fn["mean"]) @ fn["tx"].T
    flat = [summary, feats]
    for name in names:
        idx = next(i for i, t in enumerate(written.args.teachers) if t["name"] == name)
        head = written.heads[idx]
        flat += [ref_head("v2", head["summary"], summary), ref_head("v2", head["feature"], feats)]
    return flat


@pytest.mark.parametrize("batch", [1, 3])
def test_eradio_fixed_size_matches_model_and_reference(eradio, eradio_exported, batch):
    written, model = eradio
    info, sess = eradio_exported
    x = torch.rand(batch, 3, *ERADIO_SIZE, generator=torch.Generator().manual_seed(batch))
    got = sess.run(list(info.output_names), {"image": x.numpy()})
    with torch.no_grad():
        from_model = _flat(model(x), ERADIO_ADAPTORS)
    independent = _eradio_expected(written, x, ERADIO_WINDOW, ERADIO_ADAPTORS)
    for name, a, b, c in zip(info.output_names, got, from_model, independent):
        assert _rel(a, b) <= FP32_TOLERANCE, name
        assert _rel(a, c) <= FP32_TOLERANCE, name
    assert got[1].shape == (batch, 8 * 6, model.embed_dim)  # neck stride 16, NLC
    assert got[0].shape == (batch, model.embed_dim)         # token mean, before the normalizer
    construction = _eradio_expected(written, x, 16)
    assert _rel(got[1], construction[1]) > 1e-3  # the window matters: the file did not use 16


def test_eradio_file_is_fixed_size_with_dynamic_batch(eradio, eradio_exported):
    _, model = eradio
    info, sess = eradio_exported
    assert isinstance(sess.get_inputs()[0].shape[0], str) and sess.get_inputs()[0].shape[1:] == [3, 128, 96]
    assert not info.dynamic and info.export_size == ERADIO_SIZE and info.window_size == ERADIO_WINDOW
    meta = read_onnx_metadata(info.path)
    assert meta == info.metadata
    assert (meta["backbone"], meta["eradio_window_size"], meta["export_size"], meta["dynamic"]) == \
        ("eradio", "3", "128x96", "false")
    assert (meta["patch_size"], meta["min_resolution_step"], meta["position_table_size"]) == ("16", "32", "")
    assert meta["summary_dim"] == meta["feature_dim"] == str(model.embed_dim)
    assert json.loads(meta["output_widths"])["sam.features"] == 16
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="Expected: 128"):
        sess.run(None, {"image": torch.rand(1, 3, 96, 96).numpy()})


def test_eradio_verify_at_the_export_size(eradio, eradio_exported):
    _, model = eradio
    info, _ = eradio_exported
    errors = verify_onnx(model, info.path, batch=2)
    assert set(errors) == {f"{n}@128x96" for n in info.output_names}
    assert max(errors.values()) <= FP32_TOLERANCE
    with pytest.raises(ValueError, match=r"fixed-size file \(128x96\).*64x64"):
        verify_onnx(model, info.path, sizes=[(64, 64)])
    model.window_policy = "fixed"  # now the model computes with its window 16, not the file's 3
    try:
        with pytest.raises(ValueError, match="attention window 3, but the model now uses 16.*change_window_size"):
            verify_onnx(model, info.path)
    finally:
        model.window_policy = "auto"


def test_export_window_size_follows_the_policy(eradio, model):
    _, eradio_model = eradio
    assert export_window_size(model, (64, 64)) is None  # ViT: no size-dependent window
    assert [export_window_size(eradio_model, s) for s in [(128, 96), (512, 512), (64, 256), (480, 640)]] == \
        [optimal_window_reference(d) for d in (96, 512, 64, 480)] == [3, 16, 2, 15]
    eradio_model.window_policy = "fixed"
    try:
        assert export_window_size(eradio_model, (128, 96)) == 16  # the current (construction) window
        eradio_model.change_window_size(5)
        assert export_window_size(eradio_model, (128, 96)) == export_window_size(eradio_model, (512, 512)) == 5
    finally:
        eradio_model.change_window_size(16)
        eradio_model.window_policy = "auto"


def test_eradio_errors(eradio, tmp_path):
    _, model = eradio
    assert not supports_dynamic_size(model)
    with pytest.raises(ValueError, match="E-RADIO cannot be exported with dynamic.*--fixed-size HxW"):
        export_onnx(model, tmp_path / "x.onnx")  # dynamic=True is the default
    with pytest.raises(ValueError, match="example_size=48x96 is not a positive multiple of min_resolution_step=32"):
        export_onnx(model, tmp_path / "x.onnx", dynamic=False, example_size=(48, 96))
    with pytest.raises(ValueError, match="Unknown adaptor 'dino_v2'.*clip"):
        export_onnx(model, tmp_path / "x.onnx", dynamic=False, example_size=(64, 64), adaptor_names=["dino_v2"])
    assert not (tmp_path / "x.onnx").exists()
