"""radio.factory and radio.sources: which source a `version` names, and the straight load line it starts."""

import pytest
import torch

from ckpt_writer import make_checkpoint
from hf_writer import write_remote_code_repo

from radio import WeightsUnavailableError, radio_model
from radio import download
from radio.sources import is_repo_id as _is_repo_id, resolve_source as _resolve_source
from radio.versions import VERSIONS


@pytest.mark.parametrize("text,expected", [
    ("nvidia/C-RADIOv4-H", True), ("org/name", True), ("./org/name", False), ("org/name.pth.tar", False),
    ("a/b/c", False), ("c-radio_v4-h", False), ("/abs", False),
])
def test_is_repo_id(text, expected):
    assert _is_repo_id(text) is expected


def test_source_kinds(tmp_path):
    f = tmp_path / "m.pth.tar"
    f.write_bytes(b"x")
    assert _resolve_source(str(f), None).path == f
    assert _resolve_source("", None).release is VERSIONS["c-radio_v4-h"]
    src = _resolve_source("nvidia/C-RADIOv3-B", None)
    assert src.repo_id == "nvidia/C-RADIOv3-B" and src.release is VERSIONS["c-radio_v3-b"]
    assert _resolve_source("radio_v2.5-b", f).release is VERSIONS["radio_v2.5-b"]
    with pytest.raises(FileNotFoundError, match="not found"):
        _resolve_source(str(tmp_path / "missing.pth.tar"), None)
    with pytest.raises(ValueError, match="Unknown RADIO version 'nope'"):
        _resolve_source("nope", None)


def test_repo_id_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(download, "hub_unreachable_reason", lambda timeout=3.0: pytest.fail("probed the network"))
    with pytest.raises(WeightsUnavailableError, match="org-that-is-not-cached/model.*HF_HUB_OFFLINE"):
        radio_model("org-that-is-not-cached/model")


def test_release_prefers_a_cached_hub_snapshot_when_the_pth_is_absent(tmp_path, monkeypatch, images):
    written = make_checkpoint(tmp_path / "m.pth.tar")
    snap = write_remote_code_repo(written, tmp_path / "snap")
    calls = []
    monkeypatch.setattr(download, "torch_hub_cached_path", lambda v: tmp_path / "absent.pth.tar")
    monkeypatch.setattr(download, "cached_hf_snapshot", lambda repo, revision=None: calls.append(repo) or snap)
    monkeypatch.setattr(download, "resolve_checkpoint", lambda *a, **k: pytest.fail("downloaded the .pth.tar"))
    assert download.resolve_release(VERSIONS["c-radio_v4-h"], progress=False) == snap
    assert calls == ["nvidia/C-RADIOv4-H"]
    x = images(1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(radio_model(str(snap))(x).features, radio_model(written.path)(x).features)


def test_return_checkpoint_of_a_directory_holds_args_and_config(tmp_path):
    snap = write_remote_code_repo(make_checkpoint(tmp_path / "m.pth.tar"), tmp_path / "snap")
    model, raw = radio_model(str(snap), return_checkpoint=True)
    assert set(raw) >= {"args", "config", "state_dict"} and raw["args"].model == "vit_base_patch16_224"
