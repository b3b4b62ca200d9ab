"""Image discovery, decoding (EXIF), the resize policy and size buckets of ``radio.tools.images``."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import radio
from radio.tools.images import ImageDataset, SizeBuckets, SizePolicy, find_images, load_image, resize_image
from tools_data import STEP


def test_find_images_names(tmp_path):
    for rel in ("x/1.png", "x/sub/2.JPG", "y/3.png", "x/.git/4.png", "x/5.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert [r.name for r in find_images([tmp_path / "x"])] == ["1.png", "sub/2.JPG"]
    both = find_images([tmp_path / "y", tmp_path / "x", tmp_path / "x/1.png"])  # duplicates merged
    assert [r.name for r in both] == ["x/1.png", "x/sub/2.JPG", "y/3.png"]
    assert both[0].path == tmp_path / "x/1.png"
    assert [r.name for r in find_images([tmp_path / "x/5.txt"])] == ["5.txt"]  # explicit files are kept
    with pytest.raises(FileNotFoundError, match="Input not found: .*nope"):
        find_images([tmp_path / "nope"])


def test_size_policy_rules(tiny):
    model = tiny["model"]
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
    # the cap applies in preferred mode too (not in fixed mode): the longer side becomes max_side
    capped_pref = SizePolicy("preferred", 16, radio.Resolution(512, 512), max_side=2048)
    assert capped_pref.target(10, 10000) == (16, 2048)  # uncapped: 16 x 16192
    assert capped_pref.target(100, 5000) == (48, 2048)  # uncapped: 80 x 3616; capped: 40.96 -> 48
    assert capped_pref.target(480, 640) == pref.target(480, 640)  # within the cap: unchanged
    assert SizePolicy("native", 16, max_side=100).target(300, 30) == (96, 16)  # cap 100 -> at most 96
    assert SizePolicy("fixed", STEP, radio.Resolution(32, 48), max_side=16).target(7, 900) == (32, 48)
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


def test_dataset_reports_unreadable_files_and_resizes(tmp_path):
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    ds = ImageDataset(find_images([tmp_path]), SizePolicy("native", STEP))
    bad, ok = ds[0], ds[1]  # sorted: bad.png, ok.png
    assert bad.image is None and bad.original_size is None and bad.error.startswith("UnidentifiedImageError")
    assert ok.error is None and ok.original_size == (20, 30) and ok.image.shape == (3, 16, 32)
    torch.testing.assert_close(ok.image, torch.full((3, 16, 32), 200 / 255))


def test_resize_image_matches_interpolate():
    x = torch.rand(3, 30, 50, generator=torch.Generator().manual_seed(0))
    ref = F.interpolate(x[None], size=(16, 32), mode="bilinear", align_corners=False, antialias=True)[0]
    torch.testing.assert_close(resize_image(x, (16, 32)), ref.clamp(0, 1))
    assert resize_image(x, (30, 50)) is x
