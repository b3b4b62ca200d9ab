"""End-to-end test of ``examples/probe_intermediates.py`` on a tiny checkpoint and generated images.

The per-layer kNN accuracies the script prints are compared exactly with an independent
computation: features straight from ``RADIOModel.forward_intermediates`` on the same pixels (read
and resized with PIL, not torchvision) and a kNN written as plain Python loops.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from ckpt_writer import make_checkpoint  # noqa: E402  (tests/ is on sys.path under pytest)

from radio import radio_model  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "probe_intermediates.py"
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], dtype=np.float64)
IMAGE_HW = (40, 48)  # stored size; the script resizes to RES x RES
RES = 32
ROW = re.compile(r"^\s*(\d+)\s+(\d+\.\d+)%\s+(\d+)/(\d+)\s*$")


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("probe_intermediates", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return _load_example()


def _write_split(root: Path, per_class: int, noise: float, rng: np.random.Generator) -> None:
    """Class ``c`` = colour ``c`` blended with uniform noise (weight ``noise``)."""
    for c, colour in enumerate(COLOURS):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = (1 - noise) * colour + noise * rng.uniform(0, 255, (*IMAGE_HW, 3))
            Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("probe")
    ckpt = root / "tiny.pth.tar"
    make_checkpoint(ckpt, depth=4, embed_dim=32, num_heads=2, intermediate_normalizer="per_layer",
                    seed=3)
    rng = np.random.default_rng(0)
    paths = {"ckpt": ckpt}
    # 'hard': mostly noise, so accuracies differ between layers and from 100%; 'easy': clean colours
    for name, noise in (("hard", 0.9), ("easy", 0.3)):
        for split, n in (("train", 8), ("val", 4)):
            _write_split(root / name / split, n, noise, rng)
        paths[name] = root / name
    return paths


def _read_split(folder: Path) -> Tuple[torch.Tensor, List[int]]:
    """Images as ``(N, 3, RES, RES)`` in [0, 1] and labels, in sorted class / file order."""
    images, labels = [], []
    for label, class_dir in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())):
        for file in sorted(class_dir.iterdir()):
            img = Image.open(file).convert("RGB").resize((RES, RES), Image.Resampling.BILINEAR)
            images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255)
            labels.append(label)
    return torch.stack(images), labels


def _reference_features(model, images: torch.Tensor, layers: List[int],
                        aggregation: str) -> List[torch.Tensor]:
    """Summary and mean patch token of each block, for all images in one batch."""
    with torch.no_grad():
        outs = model.forward_intermediates(images, indices=layers, aggregation=aggregation,
                                           output_fmt="NLC", return_prefix_tokens=True,
                                           intermediates_only=True)
    return [torch.cat([o.summary, o.features.mean(dim=1)], dim=1).float() for o in outs]


def _reference_knn_correct(train: torch.Tensor, train_y: List[int], val: torch.Tensor,
                           val_y: List[int], k: int, temperature: float) -> int:
    """Cosine-similarity kNN, votes ``exp(sim / T)`` per neighbour, spelled out per sample."""
    norms_t = train.norm(dim=1)
    correct = 0
    for v, label in zip(val, val_y):
        sims = [(float(v @ t) / float(v.norm() * n), j)
                for j, (t, n) in enumerate(zip(train, norms_t))]
        sims.sort(key=lambda s: -s[0])
        votes: Dict[int, float] = {}
        for sim, j in sims[:k]:
            votes[train_y[j]] = votes.get(train_y[j], 0.0) + math.exp(sim / temperature)
        correct += int(max(votes, key=votes.get) == label)
    return correct


def _parse_table(out: str) -> List[Tuple[int, float, int, int]]:
    rows = [ROW.match(line) for line in out.splitlines()]
    return [(int(m[1]), float(m[2]), int(m[3]), int(m[4])) for m in rows if m]


def _assert_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (600, 400)
        pixels = np.asarray(img.convert("L"))
    # a blank figure is one colour; the plot has axes, line and text in a minority of dark pixels
    assert pixels.std() > 5
    assert 0.005 < (pixels < 128).mean() < 0.3


def test_knn_dense_matches_independent_computation(example, workspace, tmp_path, capsys):
    data, plot = workspace["hard"], tmp_path / "acc.png"
    k, temperature = 3, 0.07
    code = example.main([
        "--version", str(workspace["ckpt"]),
        "--train", str(data / "train"), "--val", str(data / "val"),
        "--layers", "0,2,-1", "--aggregation", "dense", "--probe", "knn", "--k", str(k),
        "--resolution", str(RES), "--batch-size", "5", "--num-workers", "0", "--device", "cpu",
        "--plot", str(plot),
    ])
    assert code == 0
    rows = _parse_table(capsys.readouterr().out)
    assert [r[0] for r in rows] == [0, 2, 3]

    model = radio_model(checkpoint_path=workspace["ckpt"])
    train_x, train_y = _read_split(data / "train")
    val_x, val_y = _read_split(data / "val")
    train_f = _reference_features(model, train_x, [0, 2, 3], "dense")
    val_f = _reference_features(model, val_x, [0, 2, 3], "dense")
    expected = [_reference_knn_correct(t, train_y, v, val_y, k, temperature)
                for t, v in zip(train_f, val_f)]

    assert [r[2] for r in rows] == expected
    assert all(r[3] == len(val_y) == 12 for r in rows)
    assert [r[1] for r in rows] == [round(100 * c / 12, 2) for c in expected]
    # the data is hard enough that the check discriminates: not every layer is perfect
    assert min(expected) < 12
    _assert_png(plot)


def test_linear_probe_all_layers_separates_clean_colours(example, workspace, tmp_path, capsys):
    data, plot = workspace["easy"], tmp_path / "linear.png"
    code = example.main([
        "--version", str(workspace["ckpt"]),
        "--train", str(data / "train"), "--val", str(data / "val"),
        "--layers", "all", "--aggregation", "sparse", "--probe", "linear", "--pool", "mean",
        "--epochs", "30", "--lr", "0.05", "--resolution", str(RES), "--batch-size", "16",
        "--num-workers", "0", "--device", "cpu", "--plot", str(plot), "--seed", "1",
    ])
    assert code == 0
    rows = _parse_table(capsys.readouterr().out)
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    assert all(r[2:] == (12, 12) for r in rows), rows
    _assert_png(plot)


def test_stratified_split_is_deterministic_and_per_class(example):
    targets = [0] * 10 + [1] * 5 + [2] * 1
    train, val = example.stratified_split(targets, 0.2, seed=0)
    assert example.stratified_split(targets, 0.2, seed=0) == (train, val)
    assert example.stratified_split(targets, 0.2, seed=1) != (train, val)
    assert sorted(train + val) == list(range(len(targets)))
    assert [sum(targets[i] == c for i in val) for c in range(3)] == [2, 1, 0]


def test_parse_layers(example):
    assert example.parse_layers("all", 4) == [0, 1, 2, 3]
    assert example.parse_layers("3, 0,-1,-4", 4) == [0, 3]
    with pytest.raises(ValueError, match="out of range"):
        example.parse_layers("4", 4)
    with pytest.raises(ValueError, match="block indices"):
        example.parse_layers("first", 4)


def test_eradio_probes_its_feature_pyramid(example, workspace, tmp_path, capsys):
    """E-RADIO: the probe's "layers" are the five pyramid maps (strides 4, 8, 16, 32 and the neck)."""
    from eradio_writer import make_eradio_checkpoint

    ckpt = tmp_path / "eradio.pth.tar"
    make_eradio_checkpoint(ckpt, "eradio_xxxtiny", {"return_full_features": True, "conv_groups_ratio": 1,
                                                    "cpb_mlp_hidden": 64, "multi_query": True}, seed=2)
    data = workspace["easy"]
    code = example.main([
        "--version", str(ckpt), "--train", str(data / "train"), "--val", str(data / "val"),
        "--layers", "all", "--probe", "knn", "--k", "3", "--resolution", "64", "--batch-size", "16",
        "--num-workers", "0", "--device", "cpu", "--seed", "1",
    ])
    assert code == 0
    rows = _parse_table(capsys.readouterr().out)
    assert [r[0] for r in rows] == [0, 1, 2, 3, 4]
    assert all(r[2:] == (12, 12) for r in rows), rows
