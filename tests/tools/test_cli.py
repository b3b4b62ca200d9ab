"""``radio`` end to end on a tiny checkpoint and generated images, and how the command talks.

``radio extract`` outputs are compared with direct model calls on independently loaded and resized
images; resume, unreadable files, output formats, a 2-process ``torchrun`` run (gloo, CPU) and the
``radio visualize`` PCA picture are checked. Then the command-line contract: one-line errors with the
CLI's flag names and exit status 2 (usage) or 1 (run failure), ``--debug`` tracebacks, Ctrl-C with
DataLoader workers, output file permissions, ``radio verify``, and that ``--help`` / ``versions`` /
argument errors import no torch. No network: offline errors use a fake Hub.
"""

import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import radio
from radio.tools import cli
from radio.tools.cli import main
from radio.tools.images import find_images
from radio.tools.stores import STORE_FORMATS, load_feature_file, load_features
from tools_data import BAD, GOOD, ROOT, STEP, draw, reference_input


def _extract(tiny, out, *extra):
    return main(["extract", str(tiny["images"]), "--version", str(tiny["ckpt"]), "--out", str(out),
                 "--device", "cpu", "--workers", "0", "--no-progress", *extra])


def _summary(out):
    return json.loads((Path(out) / "radio_extract_summary.json").read_text())


@pytest.fixture(scope="module")
def extracted(tiny):
    out = tiny["root"] / "out_main"
    assert _extract(tiny, out, "--adaptor", "clip", "--batch-size", "2") == 0
    return out


def test_extract_matches_direct_model_calls(tiny, extracted):
    model = tiny["model"]
    for name, _, _ in GOOD:
        tensors, meta = load_features(extracted / (name + ".safetensors"))
        x, orig = reference_input(tiny["images"] / name)
        with torch.no_grad():
            ref = model(x)
        for head in ("backbone", "clip"):
            prefix = "" if head == "backbone" else "clip."
            torch.testing.assert_close(tensors[prefix + "summary"], ref[head].summary[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(tensors[prefix + "features"], ref[head].features[0], rtol=1e-4, atol=1e-5)
        h, w = x.shape[-2:]
        assert meta["original_size"] == list(orig)
        assert meta["input_size"] == [h, w]
        assert meta["grids"] == {"backbone": [h // STEP, w // STEP], "clip": [h // STEP, w // STEP]}
        assert meta["source"] == str(tiny["images"] / name)
        assert meta["name"] == name and meta["feature_fmt"] == "NLC" and meta["adaptors"] == ["clip"]
        assert meta["version"] == str(tiny["ckpt"])
    # exactly the readable images were written (hidden file and .txt ignored), plus the run files
    written = sorted(p.relative_to(extracted).as_posix() for p in extracted.rglob("*.safetensors"))
    assert written == sorted(n + ".safetensors" for n, _, _ in GOOD)
    assert not list(extracted.rglob("*.partial"))


def test_corrupt_images_are_reported_and_skipped(tiny, extracted, tmp_path, capfd):
    summary = _summary(extracted)
    assert summary["total"] == len(GOOD) + len(BAD)
    assert summary["processed"] == len(GOOD) and summary["skipped"] == 0
    assert sorted(f["name"] for f in summary["failed"]) == sorted(BAD)
    assert all(f["error"] for f in summary["failed"])
    # the run reports them on stderr and in its final line
    out = tmp_path / "o"
    assert _extract(tiny, out, "--summary-only") == 0
    err = capfd.readouterr().err
    assert f"{len(GOOD)} extracted, 0 already done, {len(BAD)} unreadable" in err
    for bad in BAD:
        assert str(tiny["images"] / bad) in err
    assert "Traceback" not in err
    tensors, _ = load_features(out / "a/one.png.safetensors")
    assert sorted(tensors) == ["summary"]  # --summary-only


def test_resume_skips_finished_work(tiny, tmp_path):
    out = tmp_path / "out"
    assert _extract(tiny, out) == 0
    files = {n: out / (n + ".safetensors") for n, _, _ in GOOD}
    stamps = {n: (p.stat().st_mtime_ns, p.read_bytes()) for n, p in files.items()}
    before = {n: load_features(p) for n, p in files.items()}
    files["b/four.png"].unlink()  # lost work ...
    (out / "a/one.png.safetensors.partial").write_bytes(b"half-written")  # ... and a crash leftover
    files["a/one.png"].rename(out / "a/one.png.safetensors.partial")
    assert _extract(tiny, out) == 0
    summary = _summary(out)
    assert summary["processed"] == 2 and summary["skipped"] == len(GOOD) - 2
    for n, p in files.items():
        if n in ("b/four.png", "a/one.png"):
            tensors, meta = load_features(p)  # recomputed identically
            assert meta == before[n][1] and tensors.keys() == before[n][0].keys()
            for key, value in tensors.items():
                torch.testing.assert_close(value, before[n][0][key], rtol=0, atol=0)
        else:
            assert (p.stat().st_mtime_ns, p.read_bytes()) == stamps[n]  # untouched
    assert not list(out.rglob("*.partial"))
    # a third run has nothing left to do
    assert _extract(tiny, out) == 0
    assert _summary(out)["processed"] == 0 and _summary(out)["skipped"] == len(GOOD)


def test_resume_refuses_other_settings_unless_overwrite(tiny, tmp_path, capfd):
    out = tmp_path / "out"
    assert _extract(tiny, out, "--summary-only") == 0
    capfd.readouterr()
    assert _extract(tiny, out, "--feature-fmt", "NCHW") == 1
    err = capfd.readouterr().err
    assert "different settings" in err and "--overwrite" in err and "Traceback" not in err
    assert _extract(tiny, out, "--feature-fmt", "NCHW", "--overwrite") == 0
    assert _summary(out)["processed"] == len(GOOD)
    tensors, meta = load_features(out / "a/two.png.safetensors")
    assert meta["feature_fmt"] == "NCHW" and tensors["features"].shape == (32, 3, 4)


def test_formats_and_single_file(tiny, extracted, tmp_path):
    files = [str(tiny["images"] / "a/one.png"), str(tiny["images"] / "b/four.png")]
    names = ["a/one.png", "b/four.png"]  # relative to the inputs' common directory
    ref = {n: load_features(extracted / (n + ".safetensors"))[0] for n in names}

    def run(out, *extra):
        return main(["extract", *files, "--version", str(tiny["ckpt"]), "--out", str(out), "--device", "cpu",
                     "--workers", "0", "--no-progress", "--adaptor", "clip", *extra])

    assert run(tmp_path / "npy", "--format", "npy", "--save-dtype", "float16") == 0
    assert run(tmp_path / "pt", "--format", "pt", "--feature-fmt", "NCHW") == 0
    assert run(tmp_path / "all.safetensors") == 0
    assert run(tmp_path / "all.pt") == 0
    single = load_feature_file(tmp_path / "all.safetensors")
    single_pt = load_feature_file(tmp_path / "all.pt")
    assert sorted(single) == sorted(single_pt) == names
    assert not (tmp_path / "all.safetensors.parts").exists()
    for n in names:
        npy, meta = load_features(tmp_path / "npy" / (n + ".json"))
        assert meta["name"] == n and (tmp_path / "npy" / f"{n}.clip.features.npy").is_file()
        pt, meta_pt = load_features(tmp_path / "pt" / (n + ".pt"))
        gh, gw = meta_pt["grids"]["backbone"]
        for key, value in ref[n].items():
            assert npy[key].dtype == torch.float16
            torch.testing.assert_close(npy[key].float(), value, rtol=1e-3, atol=1e-3)
            torch.testing.assert_close(single[n][0][key], value)
            torch.testing.assert_close(single_pt[n][0][key], value)
            expect = value.reshape(gh, gw, -1).permute(2, 0, 1) if key.endswith("features") else value
            torch.testing.assert_close(pt[key], expect)
        assert single[n][1]["input_size"] == meta_pt["input_size"]
    # a single file resumes too: a rerun with one more image keeps the old records
    assert main(["extract", *files, str(tiny["images"] / "a/two.png"), "--version", str(tiny["ckpt"]),
                 "--out", str(tmp_path / "all.safetensors"), "--device", "cpu", "--workers", "0",
                 "--no-progress", "--adaptor", "clip"]) == 0
    grown = load_feature_file(tmp_path / "all.safetensors")
    assert sorted(grown) == sorted(names + ["a/two.png"])
    torch.testing.assert_close(grown["a/one.png"][0]["summary"], ref["a/one.png"]["summary"])


def test_fixed_and_preferred_resolution(tiny, tmp_path, monkeypatch):
    import dataclasses

    from radio.versions import VERSIONS

    # the tiny file stands in for the release: skip the release's width/depth check
    monkeypatch.setitem(VERSIONS, "c-radio_v3-b", dataclasses.replace(VERSIONS["c-radio_v3-b"], width_depth=None))
    one = tiny["images"] / "a/one.png"  # 40 x 60
    # (--resolution before the inputs: its two numbers are taken, the rest are inputs)
    assert main(["extract", "--resolution", "32", "48", str(one), "--version", str(tiny["ckpt"]), "--out",
                 str(tmp_path / "f"), "--device", "cpu", "--workers", "0", "--no-progress"]) == 0
    tensors, meta = load_features(tmp_path / "f/one.png.safetensors")
    x, _ = reference_input(one, (32, 48))
    with torch.no_grad():
        ref = tiny["model"](x)["backbone"]
    torch.testing.assert_close(tensors["summary"], ref.summary[0], rtol=1e-4, atol=1e-5)
    assert meta["input_size"] == [32, 48]
    # preferred: the release's pixel budget (c-radio_v3-b: 512 x 512) with the aspect ratio kept
    assert main(["extract", str(one), "--checkpoint", str(tiny["ckpt"]), "--version", "c-radio_v3-b",
                 "--out", str(tmp_path / "p"), "--device", "cpu", "--workers", "0", "--no-progress",
                 "--summary-only"]) == 0
    _, meta = load_features(tmp_path / "p/one.png.safetensors")
    scale = math.sqrt(512 * 512 / (40 * 60))
    assert meta["input_size"] == [round(40 * scale / 16) * 16, round(60 * scale / 16) * 16] == [416, 624]
    assert meta["version"] == "c-radio_v3-b" and meta["checkpoint"] == str(tiny["ckpt"])


def test_torchrun_two_processes_cover_every_image_once(tiny, extracted, tmp_path):
    out = tmp_path / "dist"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "radio", "extract", str(tiny["images"]), "--version", str(tiny["ckpt"]), "--out", str(out),
           "--adaptor", "clip", "--device", "cpu", "--workers", "0", "--batch-size", "2", "--no-progress"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = _summary(out)
    every = [r.name for r in find_images([tiny["images"]])]
    assert summary["total"] == len(every) == len(GOOD) + len(BAD)
    assert [r["assigned"] for r in summary["ranks"]] == [len(every[0::2]), len(every[1::2])]
    # each readable image processed exactly once: per-rank counts add up, and each file names its rank
    assert summary["processed"] == sum(r["processed"] for r in summary["ranks"]) == len(GOOD)
    assert sorted(f["name"] for f in summary["failed"]) == sorted(BAD)
    for index, name in enumerate(every):
        if name in BAD:
            continue
        tensors, meta = load_features(out / (name + ".safetensors"))
        assert (meta["rank"], meta["world_size"]) == (index % 2, 2)
        for key, value in load_features(extracted / (name + ".safetensors"))[0].items():
            torch.testing.assert_close(tensors[key], value, rtol=1e-4, atol=1e-5)
    assert proc.stderr.count("Done:") == 1  # one summary, from rank 0


def _pca_reference(features):
    """Top-3 PCA projections with numpy (independent of radio.visualization)."""
    d, h, w = features.shape
    x = features.reshape(d, -1).T.astype(np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return (x @ vt[:3].T).reshape(h, w, 3)


def test_visualize_pca_picture(tiny, tmp_path):
    src = tiny["images"] / "b/five.png"  # 33 x 47
    png = tmp_path / "five_pca.png"
    assert main(["visualize", str(src), "--version", str(tiny["ckpt"]), "--out", str(png),
                 "--resolution", "48", "64", "--device", "cpu", "--no-progress"]) == 0
    pic = np.asarray(Image.open(png))
    original = np.asarray(Image.open(src).convert("RGB"))
    assert pic.shape == (33, 2 * 47, 3)
    np.testing.assert_array_equal(pic[:, :47], original)
    right = pic[:, 47:].reshape(-1, 3)
    assert len(np.unique(right, axis=0)) > 3  # not constant
    # each channel is one principal component of the features (up to sign and percentile clipping)
    x, _ = reference_input(src, (48, 64))
    with torch.no_grad():
        feats = tiny["model"](x, feature_fmt="NCHW")["backbone"].features[0].numpy()
    ref = _pca_reference(feats)  # (3, 4, 3) patch grid
    rows = ((np.arange(33) + 0.5) * 3 / 33).astype(int)  # nearest upsampling of the 3 x 4 grid to 33 x 47
    cols = ((np.arange(47) + 0.5) * 4 / 47).astype(int)
    ref_up = ref[rows][:, cols].reshape(-1, 3)
    for c in range(3):
        r = np.corrcoef(ref_up[:, c], right[:, c].astype(np.float64))[0, 1]
        assert abs(r) > 0.9, (c, r)
    # an adaptor's features, into a directory
    assert main(["visualize", str(src), str(tiny["images"] / "a/one.png"), "--version", str(tiny["ckpt"]),
                 "--adaptor", "clip", "--out", str(tmp_path / "pics"), "--device", "cpu", "--no-progress"]) == 0
    assert Image.open(tmp_path / "pics/b/five_pca.png").size == (2 * 47, 33)
    assert Image.open(tmp_path / "pics/a/one_pca.png").size == (2 * 60, 40)


# ------------------------------------------------------------------------------------------------
# How the command talks: one-line errors, exit status, flag names


def _error_cases(tiny, tmp_path):
    """(arguments after the image, exit status, fragments the one-line message must contain)."""
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    ck = ["--checkpoint", str(tiny["ckpt"])]
    return [
        ([], 1, ["c-radio_v4-h", "not cached", "--checkpoint FILE --version c-radio_v4-h",
                 "https://huggingface.co/nvidia/C-RADIOv4-H"]),
        (["--version", "no-such-version"], 2, ["--version no-such-version", "c-radio_v4-h", "radio versions"]),
        (["--version", str(tmp_path / "missing.pth.tar")], 2, ["--version", "no such file"]),
        (["--checkpoint", str(bad)], 1, [str(bad), "checkpoint"]),
        (["--checkpoint", str(tmp_path / "missing.pth.tar")], 2, ["--checkpoint", "does not exist"]),
        ([*ck, "--adaptor", "nope"], 2, ["--adaptor nope", "clip, dino_v2, sam"]),
        ([*ck, "--resolution", "40", "64"], 2, ["--resolution 40 64", "32x64"]),
        ([*ck, "--device", "cuda"], 2, ["--device cuda", "not available", "cpu"]),
        ([*ck, "--device", "tpu9"], 2, ["--device tpu9", "Unknown device"]),
        ([*ck, "--out", str(a_file)], 2, ["--out", "existing file"]),
        ([*ck, "--out", str(a_file / "sub")], 2, ["--out", "is a file, not a directory"]),
        ([*ck, "--version", "c-radio_v3-b", "--vitdet-window-size", "2"], 2,
         ["--vitdet-window-size", "c-radio_v3-b"]),
    ]


@pytest.mark.parametrize("command", ["extract", "visualize"])
def test_errors_are_one_line_with_cli_flags_and_status(tiny, tmp_path, capfd, offline_hub, command):
    img = str(tiny["images"] / "a/one.png")
    default_out = [] if command == "visualize" else ["--out", str(tmp_path / "o")]
    for extra, status, fragments in _error_cases(tiny, tmp_path):
        out = [] if "--out" in extra else default_out
        code = main([command, img, *extra, *out, "--no-progress"])
        err = capfd.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("radio: error: ")]
        assert code == status, (extra, code, err)
        assert len(lines) == 1, (extra, err)
        for fragment in fragments:
            assert fragment in lines[0], (extra, fragment, lines[0])
        # Python argument names never leak into the command line's messages
        for python_name in ("adaptor_names", "version=", "checkpoint_path", "vitdet_window_size="):
            assert python_name not in err, (extra, err)
        assert "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing was written by a failed run


def test_missing_input_and_unwritable_out(tiny, tmp_path, capfd, monkeypatch):
    code = main(["extract", str(tmp_path / "missing.png"), "--checkpoint", str(tiny["ckpt"])])
    err = capfd.readouterr().err
    assert code == 2 and "missing.png" in err and err.count("\n") == 1
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    # root may write to read-only directories: ask os.access what a normal user would be told
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and real_access(path, mode, **kw))
    code = main(["extract", str(tiny["images"] / "a/one.png"), "--checkpoint", str(tiny["ckpt"]),
                 "--out", str(locked / "features")])
    err = capfd.readouterr().err
    assert code == 2 and f"--out {locked / 'features'}: cannot create it, {locked} is not writable" in err
    assert not (locked / "features").exists()


def test_extract_loads_the_model_on_rank_zero_first(tiny, tmp_path, monkeypatch):
    import contextlib

    import radio.factory
    from radio.tools import distributed

    inside = []
    calls = []

    @contextlib.contextmanager
    def recording(ctx):
        inside.append(ctx.is_main)
        yield
        inside.pop()

    def load(*args, **kwargs):
        calls.append((list(inside), kwargs["progress"]))
        return real(*args, **kwargs)

    real = radio.factory.radio_model
    monkeypatch.setattr(distributed, "rank_zero_first", recording)
    monkeypatch.setattr(radio.factory, "radio_model", load)
    assert main(["extract", str(tiny["images"] / "a/one.png"), "--version", str(tiny["ckpt"]), "--out",
                 str(tmp_path / "o"), "--device", "cpu", "--workers", "0", "--summary-only"]) == 0
    assert calls == [([True], True)]  # inside rank_zero_first, download progress on the main rank
    calls.clear()
    assert main(["extract", str(tiny["images"] / "a/one.png"), "--version", str(tiny["ckpt"]), "--out",
                 str(tmp_path / "o2"), "--device", "cpu", "--workers", "0", "--summary-only", "--no-progress"]) == 0
    assert calls == [([True], False)]


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["extract", "x.png", "--no-such-flag"])
    assert e.value.code == 2 and "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["extract"])
    assert e.value.code == 2 and "no image given" in capsys.readouterr().err


def test_debug_shows_the_traceback(tiny, tmp_path, monkeypatch):
    args = ["extract", str(tiny["images"] / "a/one.png"), "--version", "no-such-version"]
    with pytest.raises(cli.UsageError, match="--version no-such-version: no such release"):
        main([*args, "--debug"])
    monkeypatch.setenv("RADIO_DEBUG", "1")
    with pytest.raises(cli.UsageError, match="no such release"):
        main(args)


def test_exit_status_table():
    from radio.checkpoint import CheckpointError
    from radio.download import WeightsUnavailableError
    from radio.tools.distributed import DeviceError
    from radio.tools.stores import SettingsMismatchError
    from radio.versions import UnknownVersionError

    assert cli.exit_status(cli.UsageError("x")) == 2
    assert cli.exit_status(DeviceError("x")) == 2
    assert cli.exit_status(UnknownVersionError("x")) == 2
    assert cli.exit_status(FileNotFoundError("x")) == 2
    assert cli.exit_status(WeightsUnavailableError("x")) == 1  # a FileNotFoundError, but a run failure
    assert cli.exit_status(CheckpointError("x")) == 1
    assert cli.exit_status(SettingsMismatchError("x")) == 1
    assert cli.exit_status(RuntimeError("a bug")) is None  # unexpected: the traceback is shown
    assert cli.STORE_FORMATS == STORE_FORMATS


# ------------------------------------------------------------------------------------------------
# Start-up without torch


_PROBE = """
import json, sys
from radio.tools.cli import main
code = None
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "timm", "PIL", "numpy") if m in sys.modules)
sys.stderr.write("PROBE " + json.dumps({"code": code, "heavy": heavy}) + "\\n")
"""


@pytest.mark.parametrize("argv, status", [
    (["--help"], 0),
    (["versions"], 0),
    (["extract", "--help"], 0),
    (["visualize", "--help"], 0),
    (["verify", "--help"], 0),
    (["extract", "img.png", "--no-such-flag"], 2),  # argparse error
    (["extract", "img.png", "--version", "no-such-version"], 2),  # checked before torch is needed
    (["extract", "img.png", "--resolution", "0"], 2),
    (["export", "--help"], 0),
    (["export", "c-radio_v4-h", "--to", "onnx", "x.onnx", "--opset", "16"], 2),
    (["export", "c-radio_v4-h", "--to", "onnx", "x.onnx", "--fixed-size", "12by3"], 2),
    (["export", "c-radio_v4-h", "--to", "safetensors", "out", "--adaptor", "clip"], 2),
    (["export", "no-such-release", "--to", "onnx", "x.onnx"], 2),
])
def test_help_versions_and_argument_errors_import_no_torch(argv, status):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    probe = json.loads(proc.stderr.rsplit("PROBE ", 1)[1])
    assert probe["code"] in (status, None if status == 0 else status), proc.stderr
    assert probe["heavy"] == [], proc.stderr


# ------------------------------------------------------------------------------------------------
# Output permissions, Ctrl-C, verify, versions


def test_output_files_get_the_usual_permissions(tiny, tmp_path):
    mask = os.umask(0o022)
    try:
        for out, extra in ((tmp_path / "dir", []), (tmp_path / "npy", ["--format", "npy"]),
                           (tmp_path / "one.safetensors", []), (tmp_path / "one.pt", [])):
            assert _extract(tiny, out, "--summary-only", *extra) == 0
            files = [out] if out.is_file() else [p for p in out.rglob("*") if p.is_file()]
            assert files
            modes = {p.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
            assert set(modes.values()) == {"0o644"}, modes
        png = tmp_path / "pic.png"
        assert main(["visualize", str(tiny["images"] / "a/one.png"), "--version", str(tiny["ckpt"]),
                     "--out", str(png), "--no-progress", "--device", "cpu"]) == 0
        assert stat.S_IMODE(png.stat().st_mode) == 0o644
    finally:
        os.umask(mask)


def test_ctrl_c_with_dataloader_workers_exits_cleanly(tiny, tmp_path):
    images = tmp_path / "many"
    images.mkdir()
    for i in range(300):
        draw((48, 48), "RGB", i).save(images / f"{i:03d}.png")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("RADIO_DEBUG", None)
    cmd = [sys.executable, "-m", "radio", "extract", str(images), "--version", str(tiny["ckpt"]), "--out", str(out),
           "--device", "cpu", "--workers", "2", "--batch-size", "1", "--no-progress", "--resolution", "64", "64"]
    # a terminal's Ctrl-C signals the whole foreground process group: the main process and its workers
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not list(out.glob("*.safetensors")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "ConnectionResetError" not in stderr and "KeyboardInterrupt" not in stderr
    assert stderr.strip().splitlines()[-1] == "radio: error: interrupted; rerun the same command to resume"
    done = len(list(out.glob("*.safetensors")))
    assert 0 < done < 300 and not list(out.glob("*.partial"))  # only complete records remain


def test_verify_command(tiny, tmp_path, capsys):
    assert main(["verify", str(tiny["ckpt"])]) == 0
    report = capsys.readouterr().out.splitlines()
    payload = torch.load(tiny["ckpt"], weights_only=False)  # our own test file
    n = sum(torch.is_tensor(v) for part in payload.values() if isinstance(part, dict) for v in part.values())
    assert report[0] == f"file: {tiny['ckpt']}"
    assert report[1] == "sha256: not checked (no release given)"
    assert report[2] == f"tensors: {n} read, all values finite"
    assert report[-1] == "result: ok"
    assert main(["verify", str(tiny["ckpt"]), "--version", "c-radio_v3-b"]) == 0
    assert "sha256: not checked (the release c-radio_v3-b publishes no checksum)" in capsys.readouterr().out
    # a weight with a NaN fails the check
    key = sorted(payload["state_dict"])[0]
    payload["state_dict"][key] = payload["state_dict"][key].clone().flatten().index_fill(0, torch.tensor([0]),
                                                                                         float("nan"))
    broken = tmp_path / "nan.pth.tar"
    torch.save(payload, broken)
    assert main(["verify", str(broken)]) == 1
    out = capsys.readouterr().out
    assert f"tensors: {n} read, 1 hold NaN or infinite values: state_dict/{key}" in out
    assert out.splitlines()[-1] == "result: FAILED"
    assert main(["verify", str(tmp_path / "missing.pth.tar")]) == 2
    assert main(["verify", str(broken), "--version", "nope"]) == 2


def test_versions_command(capsys):
    assert main(["versions"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[2:].split()[0] for line in lines] == radio.list_versions()
    assert [line[2:].split()[0] for line in lines if line.startswith("*")] == [radio.DEFAULT_VERSION]
