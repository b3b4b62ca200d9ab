"""The extraction loop: what it stores, what it skips, Ctrl-C handling, and packed batches.

A stand-in model checks storage and fallbacks; the tiny checkpoint checks that packed calls
(``forward_packed``, counted with a spy installed by the test) give each image's own output.
"""

import math
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torch import nn

from radio.outputs import RadioOutput, Resolution
from radio.tools import extraction
from radio.tools.extraction import extract_features, ignore_interrupts
from radio.tools.images import SizePolicy, find_images, load_image, resize_image
from radio.tools.stores import DirectoryStore, load_features
from tools_data import BAD, GOOD, MAX_SIDE, STEP, draw, reference_input


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


# ------------------------------------------------------------------------------------------------
# Packed variable-resolution batches (--resolution native / preferred)


def _rel(actual, expected):
    """``||a - b|| / ||b||`` in float64."""
    a, b = actual.double(), expected.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.fixture
def packed_calls(tiny, monkeypatch):
    """Spy (test only) on ``forward_packed`` of the model class: the input sizes and autocast state per call."""
    cls = type(tiny["model"])
    original = cls.forward_packed
    calls = []

    def spy(self, images, feature_fmt="NLC"):
        calls.append({"sizes": [tuple(img.shape[-2:]) for img in images],
                      "autocast": torch.is_autocast_enabled("cpu")})
        return original(self, images, feature_fmt=feature_fmt)

    monkeypatch.setattr(cls, "forward_packed", spy)
    return calls


def _tokens(model, size):
    return model.num_summary_tokens + (size[0] // STEP) * (size[1] // STEP)


def _preferred_size(path, budget=(32, 48)):
    """The ``preferred`` input size, computed here: sides scaled to the pixel budget, rounded to 16."""
    with Image.open(path) as im:
        w, h = im.size
    scale = math.sqrt(budget[0] * budget[1] / (h * w))
    return tuple(max(STEP, int(round(v * scale / STEP)) * STEP) for v in (h, w))


def _check_records(model, images, store, feature_fmt, names, tol=1e-5, preferred=False):
    """Every record equals ``model(x[None])`` on an independently loaded and resized input."""
    for name in names:
        x, orig = reference_input(images / name, _preferred_size(images / name) if preferred else None)
        with torch.no_grad():
            ref = model(x, feature_fmt=feature_fmt)
        tensors, meta = load_features(store.path_for(name))
        for head in ("backbone", "clip"):
            prefix = "" if head == "backbone" else "clip."
            for part in ("summary", "features"):
                expected = getattr(ref[head], part)[0]
                assert tensors[prefix + part].shape == expected.shape
                assert _rel(tensors[prefix + part], expected) <= tol, (name, head, part)
        assert meta["input_size"] == list(x.shape[-2:]) and meta["original_size"] == list(orig)
        assert meta["grids"]["backbone"] == [x.shape[-2] // STEP, x.shape[-1] // STEP]


@pytest.mark.parametrize("mode, feature_fmt", [("native", "NLC"), ("native", "NCHW"), ("preferred", "NLC")])
def test_mixed_sizes_are_packed_within_the_budget_and_match_per_image_outputs(tiny, tmp_path, packed_calls,
                                                                              mode, feature_fmt):
    model = tiny["model"]
    records = find_images([tiny["images"]])
    store = DirectoryStore(tmp_path / "out")
    policy = (SizePolicy("native", STEP, max_side=MAX_SIDE) if mode == "native"
              else SizePolicy("preferred", STEP, Resolution(32, 48)))
    budget = 3 * _tokens(model, (32, 48))  # a few images per pack: several packs, several sizes in one
    stats = extract_features(model, records, store, policy, max_tokens=budget, feature_fmt=feature_fmt,
                             progress=False)
    assert (stats.processed, len(stats.failed)) == (len(GOOD), len(BAD))
    sizes = [s for call in packed_calls for s in call["sizes"]]
    expected_sizes = [_preferred_size(tiny["images"] / n) if mode == "preferred"
                      else tuple(reference_input(tiny["images"] / n)[0].shape[-2:]) for n, _, _ in GOOD]
    assert sorted(sizes) == sorted(expected_sizes)
    assert 1 < len(packed_calls) < len(GOOD)  # images were grouped, not run one by one
    assert any(len(set(call["sizes"])) > 1 for call in packed_calls)  # mixed sizes in one call
    for call in packed_calls:
        assert sum(_tokens(model, s) for s in call["sizes"]) <= budget
    for first, second in zip(packed_calls, packed_calls[1:]):  # a pack closes only when the next image overflows
        assert sum(_tokens(model, s) for s in first["sizes"]) + _tokens(model, second["sizes"][0]) > budget
    _check_records(model, tiny["images"], store, feature_fmt, [n for n, _, _ in GOOD], preferred=mode == "preferred")


def test_an_image_over_the_budget_runs_alone_and_resume_skips_done_images(tiny, tmp_path, packed_calls):
    model = tiny["model"]
    records = find_images([tiny["images"]])
    store = DirectoryStore(tmp_path / "out", "pt")
    policy = SizePolicy("native", STEP, max_side=MAX_SIDE)
    first = extract_features(model, records[:4], store, policy, max_tokens=1, progress=False)
    assert all(len(call["sizes"]) == 1 for call in packed_calls) and len(packed_calls) == first.processed
    packed_calls.clear()
    again = extract_features(model, records, store, policy, progress=False)  # default budget: one pack
    assert (again.skipped, again.processed) == (first.processed, len(GOOD) - first.processed)
    assert len(packed_calls) == 1 and len(packed_calls[0]["sizes"]) == again.processed
    _check_records(model, tiny["images"], store, "NLC", [n for n, _, _ in GOOD])


def test_fixed_size_and_training_mode_keep_equal_size_batches(tiny, tmp_path, packed_calls):
    model = tiny["model"]
    records = find_images([tiny["images"]])
    stats = extract_features(model, records, DirectoryStore(tmp_path / "fixed"), SizePolicy("fixed", STEP,
                             Resolution(32, 48)), batch_size=4, progress=False)
    assert stats.processed == len(GOOD) and packed_calls == []
    x = resize_image(load_image(tiny["images"] / "a/one.png"), (32, 48))
    with torch.no_grad():
        ref = model(x[None])
    tensors, _ = load_features(DirectoryStore(tmp_path / "fixed").path_for("a/one.png"))
    assert _rel(tensors["clip.features"], ref["clip"].features[0]) <= 1e-5
    mixed = find_images([tiny["images"] / n for n in ("a/one.png", "six.bmp", "b/five.png")])
    model.train()
    try:
        stats = extract_features(model, mixed, DirectoryStore(tmp_path / "train"),
                                 SizePolicy("native", STEP, max_side=MAX_SIDE), progress=False)
    finally:
        model.eval()
    assert stats.processed == 3 and packed_calls == []


class NoPacking(MeanColour):
    """A stand-in whose forward_packed refuses, like E-RADIO's."""

    patch_size = 8
    num_summary_tokens = 1

    def __init__(self):
        super().__init__()
        self.packed_tries = 0

    def forward_packed(self, images, feature_fmt="NLC"):
        self.packed_tries += 1
        raise NotImplementedError("forward_packed needs a ViT backbone; run equal-size batches")


def test_a_model_that_cannot_pack_falls_back_to_equal_size_batches(tiny, tmp_path):
    model = NoPacking().eval()  # (a module in training mode would not even try)
    records = find_images([tiny["images"]])
    store = DirectoryStore(tmp_path / "out")
    stats = extract_features(model, records, store, SizePolicy("native", STEP, max_side=MAX_SIDE), max_tokens=40,
                             batch_size=2, progress=False)
    assert stats.processed == len(GOOD) and model.packed_tries == 1  # tried once, then batches
    for name, _, _ in GOOD:
        x, _ = reference_input(tiny["images"] / name)
        tensors, _ = load_features(store.path_for(name))
        torch.testing.assert_close(tensors["summary"], x[0].mean(dim=(1, 2)))
        torch.testing.assert_close(tensors["features"], nn.functional.avg_pool2d(x, 8)[0].flatten(1).T)


def test_eradio_extracts_with_equal_size_batches(tmp_path):
    from tests.eradio_writer import make_eradio_checkpoint

    import radio

    make_eradio_checkpoint(tmp_path / "er.pth.tar")
    model = radio.radio_model(str(tmp_path / "er.pth.tar"))
    images = tmp_path / "img"
    images.mkdir()
    sizes = [(32, 64), (70, 30)]  # two input sizes (step 32): two batches
    for i, shape in enumerate(sizes):
        draw(shape, "RGB", i).save(images / f"{i}.png")
    store = DirectoryStore(tmp_path / "out")
    step = model.min_resolution_step
    stats = extract_features(model, find_images([images]), store, SizePolicy("native", step), progress=False)
    assert stats.processed == len(sizes)
    for i, (h, w) in enumerate(sizes):
        x, _ = reference_input(images / f"{i}.png", (round(h / step) * step, round(w / step) * step))
        with torch.no_grad():
            ref = model(x)
        tensors, _ = load_features(store.path_for(f"{i}.png"))
        assert _rel(tensors["summary"], ref.summary[0]) <= 1e-5
        assert _rel(tensors["features"], ref.features[0]) <= 1e-5


def test_bf16_autocast_runs_the_packed_calls(tiny, tmp_path, packed_calls):
    model = tiny["model"]
    records = find_images([tiny["images"] / n for n, _, _ in GOOD[:3]])
    store = DirectoryStore(tmp_path / "out")
    extract_features(model, records, store, SizePolicy("native", STEP, max_side=MAX_SIDE), bf16=True, progress=False)
    assert len(packed_calls) == 1 and packed_calls[0]["autocast"]
    for record in records:
        x, _ = reference_input(record.path)
        with torch.no_grad():
            ref32 = model(x)["backbone"]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                ref16 = model(x)["backbone"]
        tensors, _ = load_features(store.path_for(record.name))
        assert tensors["features"].dtype == torch.float32
        assert _rel(tensors["features"], ref16.features[0].float()) <= 2e-2  # bf16 rounding, order may differ
        assert _rel(tensors["features"], ref32.features[0]) <= 5e-2
        assert _rel(tensors["features"], ref32.features[0]) > 1e-6  # autocast really ran in bfloat16


class Bar:
    """Records what the extraction loop tells its tqdm bar."""

    made = []

    def __init__(self, total=None, **kwargs):
        self.total, self.updates = total, []
        Bar.made.append(self)

    def update(self, n=1):
        self.updates.append(n)

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def test_progress_counts_images_and_loading_streams(tiny, tmp_path, monkeypatch, packed_calls):
    from radio.tools import images as images_module

    loaded = []
    original_getitem = images_module.ImageDataset.__getitem__

    def counting_getitem(self, index):
        loaded.append(index)
        return original_getitem(self, index)

    monkeypatch.setattr(images_module.ImageDataset, "__getitem__", counting_getitem)
    original_spy = type(tiny["model"]).forward_packed
    loaded_at_call = []

    def at_call(self, images, feature_fmt="NLC"):
        loaded_at_call.append(len(loaded))
        return original_spy(self, images, feature_fmt=feature_fmt)

    monkeypatch.setattr(type(tiny["model"]), "forward_packed", at_call)
    monkeypatch.setattr(extraction, "tqdm", Bar)
    Bar.made.clear()
    records = find_images([tiny["images"]])
    model = tiny["model"]
    extract_features(model, records, DirectoryStore(tmp_path / "out"), SizePolicy("native", STEP, max_side=MAX_SIDE),
                     max_tokens=2 * _tokens(model, (48, 64)), progress=True)
    (bar,) = Bar.made
    assert bar.total == len(records) == sum(bar.updates)  # images (readable or not), not packs
    assert [n for n in bar.updates if n > 1] == [len(c["sizes"]) for c in packed_calls if len(c["sizes"]) > 1]
    assert loaded_at_call[0] < len(records)  # the first pack ran before every image was loaded


def test_token_packs_group_in_order_within_the_budget():
    packs = extraction.TokenPacks(10)
    assert packs.add(4, "a") == [] and packs.add(5, "b") == [] and packs.waiting_tokens == 9
    assert packs.add(2, "c") == [["a", "b"]]
    assert packs.add(25, "big") == [["c"], ["big"]]  # over the budget: alone
    assert packs.add(10, "d") == [["d"]]  # exactly full
    assert packs.add(3, "e") == [] and list(packs.drain()) == [["e"]] and list(packs.drain()) == []
    assert extraction.image_tokens(48, 64, 16, 5) == 5 + 3 * 4
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        extraction.TokenPacks(0)
    with pytest.raises(TypeError, match="max_tokens must be an int"):
        extraction.TokenPacks(1.5)


def test_cli_max_tokens(tiny, tmp_path, packed_calls, capfd):
    from radio.tools.cli import build_parser, main

    assert build_parser().parse_args(["extract", "x.png"]).max_tokens == extraction.DEFAULT_MAX_TOKENS
    args = ["extract", str(tiny["images"]), "--version", str(tiny["ckpt"]), "--device", "cpu", "--workers", "0",
            "--no-progress", "--out"]
    assert main([*args, str(tmp_path / "bad"), "--max-tokens", "0"]) == 2
    assert "--max-tokens must be >= 1, got 0" in capfd.readouterr().err
    assert packed_calls == [] and not (tmp_path / "bad").exists()
    assert main([*args, str(tmp_path / "out"), "--max-tokens", "1"]) == 0  # native (no release): packed, one each
    assert len(packed_calls) == len(GOOD) and all(len(c["sizes"]) == 1 for c in packed_calls)
