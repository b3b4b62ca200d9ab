"""Fixtures of the ``radio.tools`` tests: one tiny checkpoint and a folder of generated images.

``ckpt_writer`` (in ``tests/``) and ``tools_data`` (here) are importable because pytest's default
"prepend" import mode puts each conftest's and test module's directory (no ``__init__.py``) on
``sys.path``.
"""

import pytest
import torch

import radio
from ckpt_writer import make_checkpoint
from tools_data import BAD, GOOD, MAX_SIDE, draw


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``{'root', 'ckpt', 'images', 'model'}``: a tiny checkpoint (clip, dino_v2, sam adaptors), the
    images of :data:`GOOD` and :data:`BAD` (plus a hidden file and a ``.txt``), and the model."""
    root = tmp_path_factory.mktemp("tools")
    ckpt = root / "tiny.pth.tar"
    make_checkpoint(ckpt, embed_dim=32, depth=2, num_heads=2, cpe_max_size=MAX_SIDE, seed=3)
    images = root / "images"
    for i, (name, shape, mode) in enumerate(GOOD):
        path = images / name
        path.parent.mkdir(parents=True, exist_ok=True)
        draw(shape, mode, i).save(path)
    (images / BAD[0]).write_bytes(b"this is not an image")
    full = (images / "a/one.png").read_bytes()
    (images / BAD[1]).write_bytes(full[: len(full) // 2])
    (images / "b/.hidden.png").write_bytes(full)  # hidden files are not picked up
    (images / "notes.txt").write_text("not an image suffix: ignored in directory scans")
    model = radio.radio_model(str(ckpt), adaptor_names=["clip"])
    return {"root": root, "ckpt": ckpt, "images": images, "model": model}



@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """No cached weights and a Hub that refuses every download (as with HF_HUB_OFFLINE=1)."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def fake(repo_id, *args, **kwargs):
        raise LocalEntryNotFoundError("offline and not in the cache")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RADIO_DEBUG", raising=False)
