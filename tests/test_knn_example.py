"""examples/knn_classification.py: the kNN vote by hand, and the whole example (single process and a
2-process torchrun on CPU) against a brute-force kNN over direct model calls."""

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import radio

from ckpt_writer import make_checkpoint  # tests/ is on sys.path under pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "knn_classification.py"
CLASSES = ["blue", "green", "red"]
K, T = 3, 0.07


def _load_example():
    spec = importlib.util.spec_from_file_location("knn_classification", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("knn")
    ckpt = root / "tiny.pth.tar"
    make_checkpoint(ckpt, embed_dim=32, depth=2, num_heads=2, cpe_max_size=64, seed=5)
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 3)):
        for c, name in enumerate(CLASSES):
            d = root / "data" / split / name
            d.mkdir(parents=True)
            for i in range(count):
                arr = rng.integers(0, 120, (40, 44, 3))
                arr[..., c] += 120  # a dominant colour per class, so that neighbours mostly agree
                Image.fromarray(arr.astype(np.uint8)).save(d / f"{i}.png")
    (root / "data/val/red/broken.png").write_bytes(b"not a png")
    return {"root": root, "ckpt": ckpt, "data": root / "data"}


def _args(setup, *extra):
    return [str(setup["data"]), "--checkpoint", str(setup["ckpt"]), "--k", str(K), "--temperature", str(T),
            "--resolution", "32", "32", "--device", "cpu", "--workers", "0", "--batch-size", "4",
            "--no-progress", *extra]


def _brute_force(setup):
    """Summaries from direct model calls and the weighted vote with explicit loops."""
    model = radio.radio_model(str(setup["ckpt"]))

    def summaries(split):
        out = []
        for label, name in enumerate(CLASSES):
            for path in sorted((setup["data"] / split / name).iterdir()):
                try:
                    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
                except OSError:
                    continue
                x = torch.from_numpy(arr).permute(2, 0, 1)[None]
                x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
                with torch.no_grad():
                    s = model(x.clamp(0, 1)).summary[0].double().numpy()
                out.append((str(path), label, s / np.linalg.norm(s)))
        return out

    bank = summaries("train")
    preds = {}
    for path, label, q in summaries("val"):
        sims = sorted(((float(q @ b), bl) for _, bl, b in bank), reverse=True)[:K]
        votes = [0.0] * len(CLASSES)
        for sim, bl in sims:
            votes[bl] += math.exp(sim / T)
        preds[path] = (CLASSES[int(np.argmax(votes))], CLASSES[label])
    return preds


def test_knn_predict_votes():
    knn = _load_example().knn_predict
    angles = torch.tensor([0.0, 1.0, 1.05, 3.0])
    bank = torch.stack([angles.cos(), angles.sin()], 1)
    labels = torch.tensor([0, 1, 1, 2])
    q = torch.tensor([[1.0, 0.0], [math.cos(2.9), math.sin(2.9)], [math.cos(0.1), math.sin(0.1)]])
    assert knn(bank, labels, q, 1, 3).tolist() == [0, 2, 0]
    # q[2] is near label 0 (sim ~0.995) and far from both label-1 items (sim ~0.6): a uniform vote picks
    # 1, the exp(sim / 0.07) weights pick 0
    assert knn(bank, labels, q[2:], 3, 3, temperature=0).tolist() == [1]
    assert knn(bank, labels, q[2:], 3, 3, temperature=0.07).tolist() == [0]
    # k larger than the bank, chunking and ties (equal votes -> lower class index)
    assert knn(bank, labels, q, 10, 3, chunk=1).tolist() == knn(bank, labels, q, 4, 3).tolist()
    tie = knn(bank[[0, 3]], torch.tensor([2, 1]), torch.tensor([[0.0, 1.0]]), 2, 3, temperature=0)
    assert tie.tolist() == [1]


def test_knn_example_matches_brute_force(setup, capsys):
    expected = _brute_force(setup)
    correct = sum(p == t for p, t in expected.values())
    result = _load_example().main(_args(setup))
    assert result["predictions"] == expected
    assert (result["correct"], result["total"], result["skipped"]) == (correct, 9, 1)
    line = capsys.readouterr().out
    assert f"({correct}/9 validation images, 3 classes, 1 unreadable image(s) skipped)" in line
    assert f"{100 * correct / 9:.2f}%" in line


def test_knn_example_torchrun_two_processes(setup):
    single = _load_example().run(_load_example().parse_args(_args(setup)))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(EXAMPLE),
           *_args(setup)]
    proc = subprocess.run(cmd, env=env, cwd=setup["root"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("kNN top-1")]
    assert len(lines) == 1  # printed by rank 0 only
    counts = re.search(r"\((\d+)/(\d+) validation images", lines[0]).groups()
    assert (int(counts[0]), int(counts[1])) == (single["correct"], single["total"])


def test_knn_example_accepts_eradio(setup, tmp_path, capsys):
    """E-RADIO checkpoints work the same way (sizes must be multiples of 32; the summary is the token mean)."""
    from eradio_writer import make_eradio_checkpoint

    ckpt = tmp_path / "eradio.pth.tar"
    make_eradio_checkpoint(ckpt, "eradio_xxxtiny", {"return_full_features": True, "conv_groups_ratio": 1,
                                                    "cpb_mlp_hidden": 64, "multi_query": True}, seed=4)
    eradio = dict(setup, ckpt=ckpt)
    expected = _brute_force(eradio)
    result = _load_example().main(_args(eradio))
    assert result["predictions"] == expected
