"""``radio export SRC --to onnx|safetensors|transformers OUT`` in-process on tiny checkpoints: files, exit
codes, printed parity lines, messages.

Every written file is run with onnxruntime and compared with an independently loaded model
(relative L2 error, the conformance rule); the printed parity lines are parsed and checked against
the tolerance. Then the command-line contract of the ONNX flags (``--opset``, ``--fixed-size``,
``--vitdet-window-size``): errors in the CLI's words, exit status 2 for a wrong command line and
1 for a failed parity check; ``--to transformers`` / ``--to safetensors`` errors and warnings in the
CLI's words, offline errors, and that argument errors import no torch.
"""

import dataclasses
import json
import re

import pytest
import torch

from ckpt_writer import make_checkpoint
from eradio_writer import make_eradio_checkpoint
from radio_test_utils import require_module

import radio.factory
from radio import radio_model
from radio.outputs import Resolution
from radio.tools import cli
from radio.tools.cli import EXIT_FAILURE, EXIT_USAGE, main

ort = require_module("onnxruntime")
onnx = require_module("onnx")
require_module("onnxscript")

from radio.export import onnx_export  # noqa: E402

ERADIO_KW = {"return_full_features": True, "conv_groups_ratio": 1, "cpb_mlp_hidden": 64, "multi_query": True}
_PARITY_LINE = re.compile(r"^\s+(\S+@\d+x\d+)\s+relative error (\S+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit") / "vit.pth.tar"
    make_checkpoint(path, depth=4, cpe_max_size=64, feature_normalizer=True, seed=2)
    return path


@pytest.fixture(scope="module")
def eradio(tmp_path_factory):
    path = tmp_path_factory.mktemp("eradio") / "e.pth.tar"
    make_eradio_checkpoint(path, "eradio_xxxtiny", dict(ERADIO_KW), feature_normalizer=True, seed=4)
    return path


def _export(src, out, *flags):
    return main(["export", str(src), "--to", "onnx", str(out), "--no-progress", *flags])


def _parity(stdout):
    """The printed ``<output>@<H>x<W>  relative error <e>`` lines as a dict."""
    return {key: float(err) for key, err in _PARITY_LINE.findall(stdout)}


def _rel(actual, expected) -> float:
    a, b = torch.as_tensor(actual).double(), expected.detach().double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).norm() / b.norm())


def _compare(path, model, x, adaptors):
    """onnxruntime on ``path`` vs ``model(x)``: relative error per output name."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = sess.run(names, {"image": x.numpy()})
    with torch.no_grad():
        out = model(x)
    backbone = out["backbone"] if isinstance(out, dict) else out
    expected = [backbone.summary, backbone.features]
    for name in adaptors:
        expected += [out[name].summary, out[name].features]
    return {n: _rel(a, b) for n, a, b in zip(names, got, expected)}


# ------------------------------------------------------------------------------------------------
# Files


def test_vit_fixed_size_opset17_adaptor_verify(vit, tmp_path, capsys):
    out = tmp_path / "vit.onnx"
    assert _export(vit, out, "--adaptor", "clip", "--fixed-size", "48x64", "--opset", "17", "--verify") == 0
    stdout = capsys.readouterr().out
    assert f"wrote {out} (opset 17, float32, fixed size 48x64, any batch" in stdout
    assert "outputs: summary, features, clip.summary, clip.features" in stdout
    parity = _parity(stdout)
    assert set(parity) == {f"{n}@48x64" for n in ("summary", "features", "clip.summary", "clip.features")}
    assert max(parity.values()) <= 1e-5 and "parity: ok" in stdout
    proto = onnx.load(str(out))
    assert [o.version for o in proto.opset_import if o.domain == ""] == [17]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert (meta["dynamic"], meta["export_size"], json.loads(meta["adaptors"])) == ("false", "48x64", ["clip"])
    model = radio_model(str(vit), adaptor_names=["clip"])
    errors = _compare(out, model, torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(1)), ["clip"])
    assert max(errors.values()) <= 1e-5, errors


def test_vit_dynamic_with_vitdet_window(tmp_path, capsys):
    vit = tmp_path / "deep.pth.tar"
    make_checkpoint(vit, depth=8, cpe_max_size=64, seed=5)  # 8 blocks: windowed blocks between global ones
    out = tmp_path / "det.onnx"
    assert _export(vit, out, "--vitdet-window-size", "2") == 0
    assert "dynamic height and width" in capsys.readouterr().out
    meta = onnx_export.read_onnx_metadata(out)
    assert (meta["vitdet_window_size"], meta["min_resolution_step"], meta["dynamic"]) == ("2", "32", "true")
    det = radio_model(str(vit), vitdet_window_size=2)
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))  # 4 x 6 patches: 2 x 3 windows
    assert max(_compare(out, det, x, []).values()) <= 1e-5
    assert _compare(out, radio_model(str(vit)), x, [])["features"] > 1e-3  # the windows are really in the graph


def test_eradio_defaults_to_its_preferred_resolution(eradio, tmp_path, capsys, monkeypatch):
    # a release states a preferred resolution; a bare file does not, so give the loaded model one
    def with_preferred(*args, **kwargs):
        model = load(*args, **kwargs)
        release = dataclasses.replace(model.config.release, preferred_resolution=Resolution(64, 96))
        model.config = dataclasses.replace(model.config, release=release)
        return model

    load = radio.factory.radio_model
    monkeypatch.setattr(radio.factory, "radio_model", with_preferred)
    out = tmp_path / "e.onnx"
    assert _export(eradio, out, "--adaptor", "clip", "--verify") == 0
    stdout = capsys.readouterr().out
    assert "fixed size 64x96, E-RADIO attention window 16, any batch" in stdout  # 'fixed' policy: current window
    parity = _parity(stdout)
    assert set(parity) == {f"{n}@64x96" for n in ("summary", "features", "clip.summary", "clip.features")}
    assert max(parity.values()) <= 1e-5 and "parity: ok" in stdout
    meta = onnx_export.read_onnx_metadata(out)
    assert (meta["backbone"], meta["export_size"], meta["eradio_window_size"]) == ("eradio", "64x96", "16")
    model = load(str(eradio), adaptor_names=["clip"])
    x = torch.rand(3, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    assert max(_compare(out, model, x, ["clip"]).values()) <= 1e-5


# ------------------------------------------------------------------------------------------------
# Errors: CLI wording and exit status


@pytest.mark.parametrize("flags,match", [
    (["--opset", "16"], r"--opset 16 is too old.*use --opset 17 or higher \(default 18\)"),
    (["--fixed-size", "48by64"], r"--fixed-size expects HxW in pixels, e.g. --fixed-size 512x512; got '48by64'"),
    (["--fixed-size", "40x64"],
     r"--fixed-size 40x64 is not a positive multiple of min_resolution_step=16; use e.g. --fixed-size 32x64"),
    (["--adaptor", "siglip"], r"--adaptor siglip: not in this checkpoint; it has clip, dino_v2, sam\.$"),
    (["--vitdet-window-size", "0"], r"--vitdet-window-size must be a positive number of patches, got 0"),
    (["--vitdet-window-size", "2"], r"period of 1 for 4 blocks.*drop --vitdet-window-size\.$"),
])
def test_vit_usage_errors(vit, tmp_path, capsys, flags, match):
    assert _export(vit, tmp_path / "x.onnx", *flags) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("radio: error: ") and err.count("\n") == 1
    assert re.search(match, err), err
    assert "example_size" not in err and "adaptor_names" not in err and "opset=" not in err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("flags,match", [
    ([], r"E-RADIO is exported at one fixed size .* no preferred resolution: pass --fixed-size HxW "
         r"\(multiples of 32"),
    (["--vitdet-window-size", "2"], r"--vitdet-window-size does not apply to E-RADIO.*Drop --vitdet-window-size"),
    (["--fixed-size", "48x96"], r"--fixed-size 48x96 is not a positive multiple of min_resolution_step=32"),
])
def test_eradio_usage_errors(eradio, tmp_path, capsys, flags, match):
    assert _export(eradio, tmp_path / "x.onnx", *flags) == EXIT_USAGE
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("flag", [["--opset", "18"], ["--fixed-size", "64x64"], ["--vitdet-window-size", "2"],
                                  ["--dtype", "float16"], ["--dtype", "float32"], ["--external-preprocessing"]])
def test_onnx_flags_need_to_onnx(vit, tmp_path, capsys, flag):
    code = main(["export", str(vit), "--to", "safetensors", str(tmp_path / "st"), *flag])
    assert code == EXIT_USAGE
    assert f"{flag[0]} applies to --to onnx" in capsys.readouterr().err
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize("to,out", [("safetensors", "st"), ("onnx", "x.onnx")])
def test_drop_unsupported_needs_to_transformers(vit, tmp_path, capsys, to, out):
    assert main(["export", str(vit), "--to", to, str(tmp_path / out), "--drop-unsupported"]) == EXIT_USAGE
    assert "--drop-unsupported applies to --to transformers" in capsys.readouterr().err
    assert not (tmp_path / out).exists()


def test_parity_failure_exits_1(vit, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(onnx_export, "FP32_TOLERANCE", 1e-12)  # real errors (~1e-7) now exceed the limit
    assert _export(vit, tmp_path / "x.onnx", "--fixed-size", "32x32", "--verify") == EXIT_FAILURE
    stdout = capsys.readouterr().out
    parity = _parity(stdout)
    assert set(parity) == {"summary@32x32", "features@32x32"} and 0 < max(parity.values()) <= 1e-5
    assert "parity: FAILED" in stdout and "limit 1e-12" in stdout
    assert (tmp_path / "x.onnx").exists()  # the file is kept for inspection


def test_verification_error_is_a_run_error(vit, tmp_path, capsys, monkeypatch):
    def wrong_shape(model, path, **kwargs):
        raise onnx_export.OnnxVerificationError(f"{path} does not reproduce the model: features@32x32: shape (1,)")

    monkeypatch.setattr(onnx_export, "verify_onnx", wrong_shape)
    assert _export(vit, tmp_path / "x.onnx", "--fixed-size", "32x32", "--verify") == EXIT_FAILURE
    err = capsys.readouterr().err
    assert re.search(r"^radio: error: --verify failed: .*x\.onnx does not reproduce the model: features@32x32", err,
                     re.MULTILINE), err


def test_opset_constants_match_the_exporter():
    assert (cli.MIN_OPSET, cli.DEFAULT_OPSET) == (onnx_export.MIN_OPSET, onnx_export.DEFAULT_OPSET)


# ------------------------------------------------------------------------------------------------
# --adaptor parsing, logging


def test_adaptor_list_is_stripped_and_deduplicated_and_info_lines_show(vit, tmp_path, capsys, monkeypatch):
    assert cli._adaptor_names([" clip, sam", "clip", ",", "sam "]) == ["clip", "sam"]  # extract's rule too
    monkeypatch.setattr(onnx_export, "_MAX_VERIFY_TOKENS", 1)  # the above-table size is now left out
    out = tmp_path / "a.onnx"
    assert _export(vit, out, "--adaptor", "clip, sam", "--adaptor", "clip", "--verify") == 0
    captured = capsys.readouterr()
    assert "outputs: summary, features, clip.summary, clip.features, sam.summary, sam.features)" in captured.out
    # the info line of verify_onnx reaches the user (the command sets up logging)
    assert re.search(r"^radio: verify_onnx: skipping the size above the 64 px position table \(96x80 is too large",
                     captured.err, re.MULTILINE), captured.err
    parity = _parity(captured.out)
    sizes = {key.split("@")[1] for key in parity}
    assert sizes == {"64x64", "64x32", "32x80"} and len(parity) == 3 * 6 and max(parity.values()) <= 1e-5
    model = radio_model(str(vit), adaptor_names=["clip", "sam"])
    x = torch.rand(2, 3, 48, 80, generator=torch.Generator().manual_seed(4))
    assert max(_compare(out, model, x, ["clip", "sam"]).values()) <= 1e-5


# ------------------------------------------------------------------------------------------------
# --to transformers, --to safetensors


def test_transformers_export_names_the_flag_to_drop_unsupported_parts(vit, tmp_path, capsys):
    out = tmp_path / "tf"
    assert main(["export", str(vit), "--to", "transformers", str(out), "--no-progress"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("radio: error: Cannot export this model to transformers.RadioModel") and err.count("\n") == 1
    assert "feature normalizer (pass --drop-unsupported to export without it)" in err
    assert "Use --to safetensors instead" in err and "drop_unsupported" not in err
    assert not out.exists()


def test_transformers_export_with_drop_unsupported_warns_and_verifies(vit, tmp_path, capsys):
    out = tmp_path / "tf"
    assert main(["export", str(vit), "--to", "transformers", str(out), "--no-progress", "--drop-unsupported",
                 "--verify"]) == 0
    captured = capsys.readouterr()
    assert "radio: warning: Exporting without: feature normalizer." in captured.err
    assert f"radio: Wrote {out}" in captured.err  # info lines show by default ...
    parity = _parity(captured.out)
    assert {k.split("@")[0] for k in parity} == {"summary", "features"} and max(parity.values()) <= 1e-5
    assert "parity: ok" in captured.out
    # independently: transformers' own model gives this package's backbone summary
    transformers = require_module("transformers")
    hf = transformers.RadioModel.from_pretrained(str(out)).eval()
    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got, ref = hf(pixel_values=x).summary, radio_model(str(vit))(x).summary
    assert _rel(got, ref) <= 1e-5
    # ... and -q keeps only warnings
    assert main(["export", str(vit), "--to", "transformers", str(tmp_path / "tf2"), "--no-progress",
                 "--drop-unsupported", "-q"]) == 0
    err = capsys.readouterr().err
    assert "radio: warning: Exporting without" in err and "Wrote" not in err


def test_safetensors_export_builds_the_model_once(vit, tmp_path, capsys, monkeypatch, recwarn):
    calls = []

    def counting(*args, **kwargs):
        calls.append((args, kwargs))
        return load(*args, **kwargs)

    load = radio.factory.radio_model
    monkeypatch.setattr(radio.factory, "radio_model", counting)
    out = tmp_path / "st"
    assert main(["export", str(vit), "--to", "safetensors", str(out), "--no-progress"]) == 0
    assert len(calls) == 1, calls
    assert calls[0][1]["adaptor_names"] == ["clip", "dino_v2", "sam"] and calls[0][1]["progress"] is False
    assert f"wrote {out}" in capsys.readouterr().out
    calls.clear()
    assert main(["export", str(vit), "--to", "safetensors", str(tmp_path / "st2"), "--no-progress",
                 "--verify"]) == 0
    assert len(calls) == 2  # the source, and the export read back
    parity = _parity(capsys.readouterr().out)
    # sizes within the model's limits (max_resolution 64 for this file): no out-of-range warning
    assert {k.split("@")[1] for k in parity} == {"64x64", "48x64"}
    assert {k.split("@")[0] for k in parity} == {f"{p}{o}" for p in ("", "clip.", "dino_v2.", "sam.")
                                                 for o in ("summary", "features")}
    assert max(parity.values()) == 0.0
    assert not [w for w in recwarn if "max_resolution" in str(w.message)]
    names = ["clip", "dino_v2", "sam"]
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        a, b = load(str(vit), adaptor_names=names)(x), load(str(out), adaptor_names=names)(x)
    for name in ["backbone", *names]:
        assert torch.equal(a[name].features, b[name].features) and torch.equal(a[name].summary, b[name].summary)


# ------------------------------------------------------------------------------------------------
# Offline


@pytest.mark.parametrize("src,to,fragments", [
    ("c-radio_v4-h", "onnx", ["not cached", "Fix: download https://huggingface.co/nvidia/C-RADIOv4-H",
                              "`radio export FILE --to onnx "]),
    ("c-radio_v4-h", "safetensors", ["not cached", "`radio export FILE --to safetensors "]),
    ("nvidia/C-RADIOv4-H", "transformers", ["Cannot get the Hugging Face repository 'nvidia/C-RADIOv4-H'",
                                            "Fix: copy the repository's config.json and *.safetensors",
                                            "`radio export DIR --to transformers "]),
])
def test_offline_export_is_a_run_error_with_the_fix(offline_hub, tmp_path, capsys, src, to, fragments):
    out = tmp_path / ("x.onnx" if to == "onnx" else "x")
    assert main(["export", src, "--to", to, str(out), "--no-progress"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("radio: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()


def test_unknown_source_is_a_usage_error(tmp_path, capsys):
    for src in ("no-such-release", str(tmp_path / "missing.pth.tar")):
        assert main(["export", src, "--to", "safetensors", str(tmp_path / "x")]) == EXIT_USAGE
        assert f"SRC {src!r} is neither a release name" in capsys.readouterr().err
