"""The extraction loop with a stand-in model: what it stores, what it skips, and Ctrl-C handling."""

import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

from radio.outputs import RadioOutput, Resolution
from radio.tools import extraction
from radio.tools.extraction import extract_features, ignore_interrupts
from radio.tools.images import SizePolicy, find_images, load_image, resize_image
from radio.tools.stores import DirectoryStore, load_features
from tools_data import BAD, GOOD


class MeanColour(nn.Module):
    """summary = per-channel mean (3,), features = 8x8 average-pooled image: easy to recompute."""

    def forward(self, x, feature_fmt="NLC"):
        pooled = nn.functional.avg_pool2d(x, 8)  # (B, 3, h, w)
        return RadioOutput(x.mean(dim=(2, 3)), pooled)


def test_records_hold_the_model_outputs_and_bad_images_are_counted(tiny, tmp_path):
    records = find_images([tiny["images"]])
    policy = SizePolicy("fixed", 16, Resolution(32, 48))
    store = DirectoryStore(tmp_path / "out")
    stats = extract_features(MeanColour(), records, store, policy, batch_size=3, progress=False,
                             base_metadata={"version": "test"})
    assert (stats.assigned, stats.processed, stats.skipped) == (len(GOOD) + len(BAD), len(GOOD), 0)
    assert sorted(name for name, _, _ in stats.failed) == sorted(BAD)
    for name, _, _ in GOOD:
        x = resize_image(load_image(tiny["images"] / name), (32, 48))
        tensors, meta = load_features(store.path_for(name))
        torch.testing.assert_close(tensors["summary"], x.mean(dim=(1, 2)))
        expected = nn.functional.avg_pool2d(x[None], 8)[0].permute(1, 2, 0).reshape(-1, 3)  # NLC
        torch.testing.assert_close(tensors["features"], expected)
        assert meta["grids"] == {"backbone": [4, 6]} and meta["version"] == "test" and meta["name"] == name
    again = extract_features(MeanColour(), records, store, policy, progress=False)
    assert (again.processed, again.skipped, len(again.failed)) == (0, len(GOOD), len(BAD))


def test_summary_only_nchw_and_dtype(tiny, tmp_path):
    records = find_images([tiny["images"] / "a/one.png"])
    store = DirectoryStore(tmp_path / "o", "pt")
    extract_features(MeanColour(), records, store, SizePolicy("fixed", 16, Resolution(16, 32)), feature_fmt="NCHW",
                     save_dtype=torch.float16, progress=False)
    tensors, _ = load_features(store.path_for("one.png"))
    assert tensors["features"].shape == (3, 2, 4) and tensors["features"].dtype == torch.float16
    with pytest.raises(ValueError, match="feature_fmt must be 'NLC' or 'NCHW'"):
        extract_features(MeanColour(), records, store, SizePolicy("native", 16), feature_fmt="NHWC")


_CHILD = "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"


def test_worker_processes_start_with_interrupts_ignored():
    before = signal.getsignal(signal.SIGINT)
    with extraction._interrupts_ignored_by_new_processes(True):
        inside = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True).stdout.strip()
    assert inside == "True"  # a process started meanwhile (any start method) ignores Ctrl-C from birth
    assert signal.getsignal(signal.SIGINT) is before  # and the main process handles it again
    outside = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True).stdout.strip()
    assert outside == "False"


def test_ignore_interrupts_worker_init():
    before = signal.getsignal(signal.SIGINT)
    try:
        ignore_interrupts(0)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
