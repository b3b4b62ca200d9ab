"""End-to-end test of examples/zero_shot_imagenet.py: tiny checkpoint, random text tower.

The example runs on a generated ImageFolder (WordNet-id folders), once in this process and once as
a 2-process ``torchrun`` on CPU (gloo). Its printed top-1/top-5 counts are compared with counts
computed here without its code: class embeddings from open_clip's own model (``encode_text``),
images resized with PIL, the adaptor summary from ``radio_model`` and the ranking in plain torch.
The image folder is laid out so that the expected counts are known in advance (4/12 and 8/12).
"""

import importlib.util
import json
import logging
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

from ckpt_writer import make_checkpoint  # tests/ is on sys.path under pytest
from radio import radio_model

open_clip = pytest.importorskip("open_clip")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "zero_shot_imagenet.py"
RESULT_LINE = re.compile(r"^top1 = ([\d.]+)%  top5 = ([\d.]+)%  \(n = (\d+)\)$", re.M)

# A tiny open_clip config registered under a new name (open_clip's own BPE tokenizer, no download).
TINY_CLIP = "radio-test-zero-shot-clip"
TINY_CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
# The first six ImageNet-1k classes (sorted WordNet ids) and their open_clip class names.
CLASSES = {
    "n01440764": "tench",
    "n01443537": "goldfish",
    "n01484850": "great white shark",
    "n01491361": "tiger shark",
    "n01494475": "hammerhead shark",
    "n01496331": "electric ray",
}
RESOLUTION = 224  # the fallback: a checkpoint file has no preferred resolution


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


def _load_example():
    spec = importlib.util.spec_from_file_location("zero_shot_imagenet", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text_classifier(clip, templates):
    """(6, D) class embeddings from open_clip's own model: normalized mean of normalized prompts."""
    tokenizer = open_clip.get_tokenizer(TINY_CLIP)
    with torch.no_grad():
        rows = []
        for name in CLASSES.values():
            emb = clip.encode_text(tokenizer([t(name) for t in templates]), normalize=True)
            rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


def _pixels(img):
    """Square PIL image -> (3, R, R) in [0, 1] (for a square image, resize + crop = resize)."""
    img = img.convert("RGB").resize((RESOLUTION, RESOLUTION), Image.BICUBIC)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255


def _logits(model, classifier, images, bf16=False):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        summary = model(torch.stack(images))["clip"].summary
    return F.normalize(summary.float(), dim=-1) @ classifier.T  # (B, 6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny RADIO checkpoint with a 'clip' open_clip teacher, its text weights and an image folder.

    A random model ranks the classes arbitrarily, so the folder is laid out to make the answer
    known: of 12 images, 4 go to the class ranked first (top-1 and top-5 hits), 4 to the class
    ranked third (top-5 hit only) and 4 to the class ranked last (miss), each with a clear margin
    so that batch composition and thread count cannot change the ranking.
    """
    root = tmp_path_factory.mktemp("zero_shot")
    (root / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(root / f"{TINY_CLIP}.json")
    torch.manual_seed(0)
    clip = open_clip.create_model(TINY_CLIP).eval()
    text_weights = root / "clip.pt"
    torch.save(clip.state_dict(), text_weights)

    ckpt = root / "radio.pth.tar"
    make_checkpoint(
        ckpt, model="vit_tiny_patch16_224", embed_dim=32, depth=2, num_heads=2, cpe_max_size=256,
        teachers=[{"name": "dino_v2", "type": "generic"},
                  {"name": "clip", "type": "open_clip", "model": TINY_CLIP, "pretrained": "none"}],
        head_variants={"clip": {"out": TINY_CONFIG["embed_dim"]}}, seed=3,
    )
    model = radio_model(str(ckpt), adaptor_names=["clip"])
    classifier = _text_classifier(clip, open_clip.OPENAI_IMAGENET_TEMPLATES)

    # Candidate images: smooth random color fields of various square sizes.
    gen = torch.Generator().manual_seed(1)
    pool = []
    for i in range(48):
        side = (32, 40, 48, 64)[i % 4]
        grid = torch.randint(0, 256, (3, 3, 3), generator=gen, dtype=torch.uint8).numpy()
        pool.append(Image.fromarray(grid).resize((side, side), Image.BILINEAR))
    logits = _logits(model, classifier, [_pixels(img) for img in pool])  # (48, 6)
    values, ranks = logits.sort(dim=-1, descending=True)
    margin = 1e-3
    wanted = {0: 4, 2: 4, 5: 4}  # rank of the true class -> number of images
    data = root / "val"
    for wnid in CLASSES:
        (data / wnid).mkdir(parents=True)
    for i, (v, r) in enumerate(zip(values.tolist(), ranks.tolist())):
        for rank, left in wanted.items():
            # A clear gap on each side of the true class keeps its rank fixed.
            above = rank == 0 or v[rank - 1] - v[rank] > margin
            below = rank == 5 or v[rank] - v[rank + 1] > margin
            clear = above and below
            if left and clear:
                pool[i].save(data / list(CLASSES)[r[rank]] / f"img{i:02d}.png")
                wanted[rank] -= 1
                break
    assert not any(wanted.values()), "not enough candidate images with clear margins"
    return {"root": root, "ckpt": ckpt, "text_weights": text_weights, "data": data, "clip": clip,
            "model": model, "expected": (4, 8, 12)}


def _reference_counts(setup, templates, limit=None, bf16=False):
    """(top-1 hits, top-5 hits, n) of the image folder, computed without the example's code."""
    images, labels = [], []
    for label, wnid in enumerate(sorted(CLASSES)):
        for path in sorted((setup["data"] / wnid).iterdir()):
            with Image.open(path) as img:
                images.append(_pixels(img))
            labels.append(label)
    images, labels = images[:limit], torch.tensor(labels[:limit])
    logits = _logits(setup["model"], _text_classifier(setup["clip"], templates), images, bf16)
    top1 = int((logits.argmax(-1) == labels).sum())
    top5 = int((logits.topk(5, dim=-1).indices == labels[:, None]).any(-1).sum())
    return top1, top5, len(labels)


def _parse_counts(output):
    """Counts from the example's result line (exactly one such line)."""
    lines = RESULT_LINE.findall(output)
    assert len(lines) == 1, output
    p1, p5, n = float(lines[0][0]), float(lines[0][1]), int(lines[0][2])
    return round(p1 * n / 100), round(p5 * n / 100), n


def _args(setup, *extra):
    return ["--version", str(setup["ckpt"]), "--adaptor", "clip",
            "--text-weights", str(setup["text_weights"]), "--data", str(setup["data"]),
            "--batch-size", "5", "--workers", "0", "--device", "cpu", *extra]


def test_zero_shot_single_process_and_torchrun(setup, capsys):
    expected = _reference_counts(setup, open_clip.OPENAI_IMAGENET_TEMPLATES)
    assert expected == setup["expected"]
    cache = setup["root"] / "classifier.pt"

    # Single process, in this process (the tiny open_clip config is registered here only).
    result = _load_example().main(_args(setup, "--classifier-cache", str(cache)))
    assert _parse_counts(capsys.readouterr().out) == expected
    assert (result["top1_correct"], result["top5_correct"], result["n"]) == expected
    # The cached classifier is the normalized mean of the normalized prompt embeddings per class.
    cached = torch.load(cache, weights_only=True)["classifier"]
    reference = _text_classifier(setup["clip"], open_clip.OPENAI_IMAGENET_TEMPLATES)
    torch.testing.assert_close(cached, reference)

    # Two CPU processes (gloo). The text classifier comes from the cache that rank 0 reads, as the
    # child processes do not know the tiny open_clip config.
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(EXAMPLE), *_args(setup, "--classifier-cache", str(cache))]
    proc = subprocess.run(cmd, env=env, cwd=setup["root"], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _parse_counts(proc.stdout) == expected  # printed once (rank 0), counts summed over ranks
    assert "Reusing the text classifier cached in" in proc.stderr


def test_zero_shot_bf16_limit_and_cache_key(setup, capsys, caplog):
    cache = str(setup["root"] / "classifier-simple.pt")
    example = _load_example()
    simple = _args(setup, "--classifier-cache", cache, "--limit", "5", "--templates", "simple")
    with caplog.at_level(logging.INFO):
        example.main(simple)
        assert "Saved the text classifier" in caplog.text
        caplog.clear()
        capsys.readouterr()
        result = example.main([*simple, "--bf16"])
        assert "Reusing the text classifier" in caplog.text
    assert result["n"] == 5
    assert _parse_counts(capsys.readouterr().out) == _reference_counts(
        setup, open_clip.SIMPLE_IMAGENET_TEMPLATES, limit=5, bf16=True)

    # Other templates: the cached classifier does not fit, so it is rebuilt.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        example.main(_args(setup, "--classifier-cache", cache, "--limit", "7"))
        assert "rebuilding it" in caplog.text
    assert _parse_counts(capsys.readouterr().out) == _reference_counts(
        setup, open_clip.OPENAI_IMAGENET_TEMPLATES, limit=7)


def test_class_names_for_folders():
    example = _load_example()
    assert example.class_names_for_folders(list(CLASSES)) == list(CLASSES.values())
    assert example.class_names_for_folders(["n01440764", "n15075141"]) == ["tench", "toilet paper"]
    names = example.class_names_for_folders(["golden_retriever", "cat"])
    assert names == ["golden retriever", "cat"]
    with pytest.raises(ValueError, match="not ImageNet-1k"):
        example.class_names_for_folders(["n00000001"])


def test_resize_center_crop_non_square():
    example = _load_example()
    img = Image.fromarray((np.arange(20 * 40 * 3) % 256).astype(np.uint8).reshape(20, 40, 3))
    out = example.resize_center_crop(img, (10, 10))
    ref = img.resize((20, 10), Image.BICUBIC).crop((5, 0, 15, 10))
    assert out.shape == (3, 10, 10)
    torch.testing.assert_close(out, torch.from_numpy(np.array(ref)).permute(2, 0, 1).float() / 255)


def test_cache_key_depends_on_inputs(setup):
    key = _load_example().classifier_key
    base = key(str(setup["ckpt"]), "clip", None, "openai", ["a", "b"])
    assert base == key(str(setup["ckpt"]), "clip", None, "openai", ["a", "b"])
    assert base != key(str(setup["ckpt"]), "clip", None, "simple", ["a", "b"])
    assert base != key(str(setup["ckpt"]), "clip", None, "openai", ["b", "a"])
    assert base != key(str(setup["ckpt"]), "siglip2-g", None, "openai", ["a", "b"])
    assert base != key(str(setup["text_weights"]), "clip", None, "openai", ["a", "b"])


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None,
                    reason="datasets is installed")
def test_hf_dataset_without_datasets_package(setup, capsys):
    with pytest.raises(SystemExit):
        _load_example().main(["--version", str(setup["ckpt"]),
                              "--hf-dataset", "ILSVRC/imagenet-1k"])
    assert "pip install datasets" in capsys.readouterr().err


def test_adaptor_without_text_tower(setup):
    args = _args(setup)
    args[args.index("clip")] = "dino_v2"
    with pytest.raises(SystemExit, match="has no text tower"):
        _load_example().main(args)
