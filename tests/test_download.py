"""Resolving a named version to a file: torch-hub cache reuse, the HF Hub layer, offline errors.

The network is never reached: ``hf_hub_download`` is replaced by fakes.
"""

import hashlib

import pytest
import torch

import radio.download as download
from radio.download import WeightsUnavailableError, resolve_checkpoint, torch_hub_cached_path
from radio.versions import get_version


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


def _fake_hf(calls, result=None, error=None):
    def fake(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        if error is not None:
            raise error
        return str(result)
    return fake


def test_torch_hub_cache_is_reused_without_download(hub_dir, monkeypatch):
    v = get_version("radio_v2.5-b")
    cached = hub_dir / "checkpoints" / "radio-v2.5-b_half.pth.tar"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    calls = []
    monkeypatch.setattr(download, "_hf_download", _fake_hf(calls))
    assert torch_hub_cached_path(v) == cached
    assert resolve_checkpoint(v) == cached
    assert calls == []


def test_hf_hub_download_is_called_with_repo_and_filename(hub_dir, tmp_path, monkeypatch):
    import huggingface_hub

    target = tmp_path / "blob"
    target.write_bytes(b"weights")
    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_hf(calls, target))
    v = get_version("c-radio_v3-l")
    assert resolve_checkpoint(v, progress=False) == target
    assert calls[0][:2] == ("nvidia/C-RADIOv3-L", "c-radio-v3_l_half.pth.tar")
    assert resolve_checkpoint(v, progress=True) == target


def test_offline_error_names_file_and_local_path_fix(hub_dir, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        _fake_hf([], error=LocalEntryNotFoundError("not in cache")))
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_checkpoint(get_version("c-radio_v4-h"))
    msg = str(info.value)
    assert "c-radio_v4-h_half.pth.tar" in msg and "nvidia/C-RADIOv4-H" in msg
    assert "HF_HUB_OFFLINE" in msg and "version='/path/to/" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_unreachable_network_error(hub_dir, monkeypatch):
    import huggingface_hub

    from radio import download

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_hf(calls, error=ConnectionError("no route")))
    # the reachability probe is faked too: a test never touches the network (not even a name lookup)
    monkeypatch.setattr(download, "hub_unreachable_reason", lambda timeout=3.0: "cannot resolve huggingface.co")
    with pytest.raises(WeightsUnavailableError, match="unreachable: cannot resolve huggingface.co") as info:
        resolve_checkpoint(get_version("radio_v2"))
    assert "no route" in str(info.value)
    assert len(calls) == 1 and calls[0][2] == {"local_files_only": True}  # one cache lookup, no retry loop


def test_checksum_mismatch_is_reported(hub_dir, tmp_path, monkeypatch):
    import dataclasses

    v = dataclasses.replace(get_version("radio_v2"), sha256=hashlib.sha256(b"good").hexdigest())
    cached = torch_hub_cached_path(v)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"bad")
    with pytest.raises(WeightsUnavailableError, match="checksum"):
        resolve_checkpoint(v)
    cached.write_bytes(b"good")
    assert resolve_checkpoint(v) == cached


def test_radio_model_offline_error_end_to_end(hub_dir, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from radio import radio_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        _fake_hf([], error=LocalEntryNotFoundError("not in cache")))
    with pytest.raises(WeightsUnavailableError, match="c-radio_v4-h_half.pth.tar"):
        radio_model()  # default version


def test_eradio_vitdet_is_refused_before_any_download(hub_dir, monkeypatch):
    from radio import radio_model

    calls = []
    monkeypatch.setattr(download, "_hf_download", _fake_hf(calls))
    with pytest.raises(ValueError, match="'e-radio_v2' does not support ViTDet"):
        radio_model("e-radio_v2", vitdet_window_size=4)
    assert calls == []


def test_vitdet_refused_for_c_radio_v3_before_download(hub_dir, monkeypatch):
    from radio import radio_model

    calls = []
    monkeypatch.setattr(download, "_hf_download", _fake_hf(calls))
    with pytest.raises(ValueError, match="does not support ViTDet"):
        radio_model("c-radio_v3-b", vitdet_window_size=8)
    assert calls == []


def test_missing_local_path_is_file_not_found(tmp_path):
    from radio import radio_model

    with pytest.raises(FileNotFoundError, match="nope.pth.tar"):
        radio_model(str(tmp_path / "nope.pth.tar"))
