"""The ``radio`` command line end to end, on a tiny checkpoint and generated images.

``radio extract`` outputs are compared with direct model calls on independently loaded and resized
images; resume, unreadable files, output formats, a 2-process ``torchrun`` run (gloo, CPU) and the
``radio visualize`` PCA picture are checked. No network: offline errors use a fake Hub.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import radio
from radio.cli import main
from radio.extraction import load_feature_file, load_features
from radio.images import SizeBuckets, SizePolicy, find_images, load_image

from ckpt_writer import make_checkpoint  # tests/ is on sys.path under pytest

ROOT = Path(__file__).resolve().parents[1]
STEP = 16  # patch size of the tiny checkpoint
MAX_SIDE = 64  # cpe_max_size of the tiny checkpoint = its max_resolution
# (relative name, (H, W), mode): images of several sizes, two of equal size, grey and RGBA ones.
GOOD = [
    ("a/one.png", (40, 60), "RGB"),
    ("a/two.png", (48, 64), "RGB"),
    ("a/deeper/three.jpg", (48, 64), "L"),
    ("b/four.png", (64, 48), "RGBA"),
    ("b/five.png", (33, 47), "RGB"),
    ("six.bmp", (100, 50), "RGB"),
]
BAD = ["a/garbage.jpg", "b/truncated.png"]


def _draw(shape, mode, seed):
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 3) % 256], -1).astype(np.int64)
    arr = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    if mode == "L":
        return img.convert("L")
    if mode == "RGBA":
        return Image.fromarray(np.concatenate([arr, rng.integers(0, 255, (h, w, 1), dtype=np.uint8)], -1))
    return img


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ckpt = root / "tiny.pth.tar"
    make_checkpoint(ckpt, embed_dim=32, depth=2, num_heads=2, cpe_max_size=MAX_SIDE, seed=3)
    images = root / "images"
    for i, (name, shape, mode) in enumerate(GOOD):
        path = images / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _draw(shape, mode, i).save(path)
    (images / BAD[0]).write_bytes(b"this is not an image")
    full = (images / "a/one.png").read_bytes()
    (images / BAD[1]).write_bytes(full[: len(full) // 2])
    (images / "b/.hidden.png").write_bytes(full)  # hidden files are not picked up
    (images / "notes.txt").write_text("not an image suffix: ignored in directory scans")
    model = radio.radio_model(str(ckpt), adaptor_names=["clip"])
    return {"root": root, "ckpt": ckpt, "images": images, "model": model}


def _reference_input(path, size=None):
    """Decode with PIL and resize with F.interpolate, independently of radio.images."""
    img = Image.open(path)
    img.load()
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]
    h, w = arr.shape[:2]
    if size is None:  # native: round to multiples of 16, longer side capped at 64 (aspect kept)
        s = min(1.0, MAX_SIDE / max(h, w))
        size = tuple(max(STEP, int(round(v * s / STEP)) * STEP) for v in (h, w))
    if tuple(size) != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return x, (h, w)


def _extract(setup, out, *extra):
    return main(["extract", str(setup["images"]), "--version", str(setup["ckpt"]), "--out", str(out),
                 "--device", "cpu", "--workers", "0", "--no-progress", *extra])


def _summary(out):
    return json.loads((Path(out) / "radio_extract_summary.json").read_text())


@pytest.fixture(scope="module")
def extracted(setup):
    out = setup["root"] / "out_main"
    assert _extract(setup, out, "--adaptor", "clip", "--batch-size", "2") == 0
    return out


def test_extract_matches_direct_model_calls(setup, extracted):
    model = setup["model"]
    for name, _, _ in GOOD:
        tensors, meta = load_features(extracted / (name + ".safetensors"))
        x, orig = _reference_input(setup["images"] / name)
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
        assert meta["source"] == str(setup["images"] / name)
        assert meta["name"] == name and meta["feature_fmt"] == "NLC" and meta["adaptors"] == ["clip"]
        assert meta["version"] == str(setup["ckpt"])
    # exactly the readable images were written (hidden file and .txt ignored), plus the run files
    written = sorted(p.relative_to(extracted).as_posix() for p in extracted.rglob("*.safetensors"))
    assert written == sorted(n + ".safetensors" for n, _, _ in GOOD)
    assert not list(extracted.rglob("*.partial"))


def test_corrupt_images_are_reported_and_skipped(setup, extracted, tmp_path, capfd):
    summary = _summary(extracted)
    assert summary["total"] == len(GOOD) + len(BAD)
    assert summary["processed"] == len(GOOD) and summary["skipped"] == 0
    assert sorted(f["name"] for f in summary["failed"]) == sorted(BAD)
    assert all(f["error"] for f in summary["failed"])
    # the run reports them on stderr and in its final line
    out = tmp_path / "o"
    assert _extract(setup, out, "--summary-only") == 0
    err = capfd.readouterr().err
    assert f"{len(GOOD)} extracted, 0 already done, {len(BAD)} unreadable" in err
    for bad in BAD:
        assert str(setup["images"] / bad) in err
    assert "Traceback" not in err
    tensors, _ = load_features(out / "a/one.png.safetensors")
    assert sorted(tensors) == ["summary"]  # --summary-only


def test_resume_skips_finished_work(setup, tmp_path):
    out = tmp_path / "out"
    assert _extract(setup, out) == 0
    files = {n: out / (n + ".safetensors") for n, _, _ in GOOD}
    stamps = {n: (p.stat().st_mtime_ns, p.read_bytes()) for n, p in files.items()}
    before = {n: load_features(p) for n, p in files.items()}
    files["b/four.png"].unlink()  # lost work ...
    (out / "a/one.png.safetensors.partial").write_bytes(b"half-written")  # ... and a crash leftover
    files["a/one.png"].rename(out / "a/one.png.safetensors.partial")
    assert _extract(setup, out) == 0
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
    assert _extract(setup, out) == 0
    assert _summary(out)["processed"] == 0 and _summary(out)["skipped"] == len(GOOD)


def test_resume_refuses_other_settings_unless_overwrite(setup, tmp_path, capfd):
    out = tmp_path / "out"
    assert _extract(setup, out, "--summary-only") == 0
    capfd.readouterr()
    assert _extract(setup, out, "--feature-fmt", "NCHW") == 1
    err = capfd.readouterr().err
    assert "different settings" in err and "--overwrite" in err and "Traceback" not in err
    assert _extract(setup, out, "--feature-fmt", "NCHW", "--overwrite") == 0
    assert _summary(out)["processed"] == len(GOOD)
    tensors, meta = load_features(out / "a/two.png.safetensors")
    assert meta["feature_fmt"] == "NCHW" and tensors["features"].shape == (32, 3, 4)


def test_formats_and_single_file(setup, extracted, tmp_path):
    files = [str(setup["images"] / "a/one.png"), str(setup["images"] / "b/four.png")]
    names = ["a/one.png", "b/four.png"]  # relative to the inputs' common directory
    ref = {n: load_features(extracted / (n + ".safetensors"))[0] for n in names}

    def run(out, *extra):
        return main(["extract", *files, "--version", str(setup["ckpt"]), "--out", str(out), "--device", "cpu",
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
    assert main(["extract", *files, str(setup["images"] / "a/two.png"), "--version", str(setup["ckpt"]),
                 "--out", str(tmp_path / "all.safetensors"), "--device", "cpu", "--workers", "0",
                 "--no-progress", "--adaptor", "clip"]) == 0
    grown = load_feature_file(tmp_path / "all.safetensors")
    assert sorted(grown) == sorted(names + ["a/two.png"])
    torch.testing.assert_close(grown["a/one.png"][0]["summary"], ref["a/one.png"]["summary"])


def test_fixed_and_preferred_resolution(setup, tmp_path):
    one = setup["images"] / "a/one.png"  # 40 x 60
    # (--resolution before the inputs: its two numbers are taken, the rest are inputs)
    assert main(["extract", "--resolution", "32", "48", str(one), "--version", str(setup["ckpt"]), "--out",
                 str(tmp_path / "f"), "--device", "cpu", "--workers", "0", "--no-progress"]) == 0
    tensors, meta = load_features(tmp_path / "f/one.png.safetensors")
    x, _ = _reference_input(one, (32, 48))
    with torch.no_grad():
        ref = setup["model"](x)["backbone"]
    torch.testing.assert_close(tensors["summary"], ref.summary[0], rtol=1e-4, atol=1e-5)
    assert meta["input_size"] == [32, 48]
    # preferred: the release's pixel budget (c-radio_v3-b: 512 x 512) with the aspect ratio kept
    assert main(["extract", str(one), "--checkpoint", str(setup["ckpt"]), "--version", "c-radio_v3-b",
                 "--out", str(tmp_path / "p"), "--device", "cpu", "--workers", "0", "--no-progress",
                 "--summary-only"]) == 0
    _, meta = load_features(tmp_path / "p/one.png.safetensors")
    scale = math.sqrt(512 * 512 / (40 * 60))
    assert meta["input_size"] == [round(40 * scale / 16) * 16, round(60 * scale / 16) * 16] == [416, 624]
    assert meta["version"] == "c-radio_v3-b" and meta["checkpoint"] == str(setup["ckpt"])


def test_torchrun_two_processes_cover_every_image_once(setup, extracted, tmp_path):
    out = tmp_path / "dist"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "radio", "extract", str(setup["images"]), "--version", str(setup["ckpt"]), "--out", str(out),
           "--adaptor", "clip", "--device", "cpu", "--workers", "0", "--batch-size", "2", "--no-progress"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = _summary(out)
    every = [r.name for r in find_images([setup["images"]])]
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


def test_visualize_pca_picture(setup, tmp_path):
    src = setup["images"] / "b/five.png"  # 33 x 47
    png = tmp_path / "five_pca.png"
    assert main(["visualize", str(src), "--version", str(setup["ckpt"]), "--out", str(png),
                 "--resolution", "48", "64", "--device", "cpu", "--no-progress"]) == 0
    pic = np.asarray(Image.open(png))
    original = np.asarray(Image.open(src).convert("RGB"))
    assert pic.shape == (33, 2 * 47, 3)
    np.testing.assert_array_equal(pic[:, :47], original)
    right = pic[:, 47:].reshape(-1, 3)
    assert len(np.unique(right, axis=0)) > 3  # not constant
    # each channel is one principal component of the features (up to sign and percentile clipping)
    x, _ = _reference_input(src, (48, 64))
    with torch.no_grad():
        feats = setup["model"](x, feature_fmt="NCHW")["backbone"].features[0].numpy()
    ref = _pca_reference(feats)  # (3, 4, 3) patch grid
    rows = ((np.arange(33) + 0.5) * 3 / 33).astype(int)  # nearest upsampling of the 3 x 4 grid to 33 x 47
    cols = ((np.arange(47) + 0.5) * 4 / 47).astype(int)
    ref_up = ref[rows][:, cols].reshape(-1, 3)
    for c in range(3):
        r = np.corrcoef(ref_up[:, c], right[:, c].astype(np.float64))[0, 1]
        assert abs(r) > 0.9, (c, r)
    # an adaptor's features, into a directory
    assert main(["visualize", str(src), str(setup["images"] / "a/one.png"), "--version", str(setup["ckpt"]),
                 "--adaptor", "clip", "--out", str(tmp_path / "pics"), "--device", "cpu", "--no-progress"]) == 0
    assert Image.open(tmp_path / "pics/b/five_pca.png").size == (2 * 47, 33)
    assert Image.open(tmp_path / "pics/a/one_pca.png").size == (2 * 60, 40)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def fake(repo_id, filename, **kwargs):
        raise LocalEntryNotFoundError("offline and not in the cache")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("command", ["extract", "visualize"])
def test_clear_errors_without_traceback(setup, tmp_path, capfd, offline_hub, command):
    img = str(setup["images"] / "a/one.png")
    common = ["--device", "cpu", "--no-progress"] + (["--out", str(tmp_path / "o")] if command == "extract" else [])

    def run(*args):
        code = main([command, *args, *common])
        return code, capfd.readouterr().err

    code, err = run(img)  # default version, weights unavailable offline
    assert code == 1 and "c-radio_v4-h" in err and "HF_HUB_OFFLINE" in err and "--checkpoint" in err
    code, err = run(img, "--version", "no-such-version")
    assert code == 1 and "Known versions" in err
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    code, err = run(img, "--checkpoint", str(bad))
    assert code == 1 and str(bad) in err
    code, err = run(img, "--checkpoint", str(tmp_path / "missing.pth.tar"))
    assert code == 1 and "not found" in err
    code, err = run(img, "--version", str(setup["ckpt"]), "--adaptor", "nope")
    assert code == 1 and "nope" in err
    code, err = run(img, "--version", str(setup["ckpt"]), "--resolution", "40", "64")
    assert code == 1 and "32x64" in err  # the nearest supported resolution is suggested
    code, err = run(str(tmp_path / "missing.png"), "--version", str(setup["ckpt"]))
    assert code == 1 and "missing.png" in err
    assert "Traceback" not in err


def test_versions_command(capsys):
    # (`python -m radio` itself runs in the torchrun test above, through `torchrun -m radio`)
    assert main(["versions"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[2:].split()[0] for line in lines] == radio.list_versions()
    assert [line[2:].split()[0] for line in lines if line.startswith("*")] == [radio.DEFAULT_VERSION]


# ------------------------------------------------------------------------------------------------
# radio.images helpers


def test_find_images_names(tmp_path):
    for rel in ("x/1.png", "x/sub/2.JPG", "y/3.png", "x/.git/4.png", "x/5.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert [r.name for r in find_images([tmp_path / "x"])] == ["1.png", "sub/2.JPG"]
    both = find_images([tmp_path / "y", tmp_path / "x", tmp_path / "x/1.png"])  # duplicates merged
    assert [r.name for r in both] == ["x/1.png", "x/sub/2.JPG", "y/3.png"]
    assert both[0].path == tmp_path / "x/1.png"
    assert [r.name for r in find_images([tmp_path / "x/5.txt"])] == ["5.txt"]  # explicit files are kept
    with pytest.raises(FileNotFoundError):
        find_images([tmp_path / "nope"])


def test_size_policy_rules(setup):
    model = setup["model"]
    native = SizePolicy("native", STEP)
    for h in range(1, 90, 7):
        for w in range(1, 90, 11):
            assert native.target(h, w) == model.get_nearest_supported_resolution(h, w)
    capped = SizePolicy("native", STEP, max_side=64)
    assert capped.target(100, 50) == (64, 32) and capped.target(40, 60) == (32, 64)
    pref = SizePolicy("preferred", STEP, radio.Resolution(512, 512))
    assert pref.target(1000, 1000) == (512, 512) and pref.target(30, 30) == (512, 512)
    assert pref.target(480, 640) == pref.target(300, 400) == (448, 592)  # sqrt(512*512/(3*4)) * (3, 4)
    assert SizePolicy("fixed", STEP, radio.Resolution(32, 48)).target(7, 900) == (32, 48)
    with pytest.raises(ValueError, match="nearest supported resolution is 32x64"):
        SizePolicy("fixed", STEP, radio.Resolution(40, 60))


def test_size_buckets():
    b = SizeBuckets(batch_size=2, max_waiting=3)
    assert b.add((1, 1), "a") is None
    assert b.add((2, 2), "b") is None
    assert b.add((1, 1), "c") == ["a", "c"]  # full batch of one size
    assert b.add((3, 3), "d") is None
    assert b.add((4, 4), "e") is None
    assert b.add((5, 5), "f") == ["b"]  # too many waiting: the largest group (first of equals) goes
    assert sorted(map(tuple, b.drain())) == [("d",), ("e",), ("f",)]


def test_load_image_applies_exif_orientation(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :5] = 255  # white band on the left
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    x = load_image(tmp_path / "r.jpg")
    assert x.shape == (3, 20, 10) and x.dtype == torch.float32
    assert x[:, :5].mean() > 0.9 and x[:, -5:].mean() < 0.1  # the band is now at the top
