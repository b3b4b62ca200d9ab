"""Feature records on disk: round trips in every format, resume bookkeeping, atomic writes, permissions."""

import json
import os
import stat

import pytest
import torch

from radio.tools.stores import (FORMAT_TAG, DirectoryStore, ExtractionSettings, SettingsMismatchError,
                                SingleFileStore, json_metadata, load_feature_file, load_features, tensor_key)


def _record(seed):
    g = torch.Generator().manual_seed(seed)
    tensors = {"summary": torch.randn(4, generator=g), "features": torch.randn(6, 3, generator=g),
               "clip.summary": torch.randn(2, generator=g)}
    meta = json_metadata({"format": FORMAT_TAG, "name": f"img{seed}.png", "input_size": [32, 48],
                          "grids": {"backbone": [2, 3]}})
    return tensors, meta


def _settings(**changes):
    base = dict(version="v", checkpoint="", adaptors=("clip",), resolution="fixed 32x48", feature_fmt="NLC",
                save_dtype="float32", summary_only=False, bf16=False, vitdet_window_size=None, format="safetensors")
    base.update(changes)
    return ExtractionSettings(**base)


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "npy"])
def test_directory_store_round_trip(tmp_path, fmt):
    store = DirectoryStore(tmp_path, fmt)
    tensors, meta = _record(1)
    assert not store.is_done("sub/img1.png")
    store.write("sub/img1.png", tensors, meta)
    assert store.is_done("sub/img1.png") and store.names() == ["sub/img1.png"]
    back, back_meta = load_features(store.path_for("sub/img1.png"))
    assert sorted(back) == sorted(tensors)
    for k, v in tensors.items():
        torch.testing.assert_close(back[k], v, rtol=0, atol=0)
    assert back_meta["input_size"] == [32, 48] and back_meta["grids"] == {"backbone": [2, 3]}
    assert not list(tmp_path.rglob("*.partial"))
    modes = {oct(stat.S_IMODE(p.stat().st_mode)) for p in tmp_path.rglob("*") if p.is_file()}
    assert modes == {oct(0o666 & ~_umask())}


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_single_file_store_merges_and_resumes(tmp_path):
    path = tmp_path / "all.safetensors"
    store = SingleFileStore(path)
    store.prepare(_settings(), overwrite=False, is_main=True)
    store.write("a.png", *_record(1))
    store.finalize()
    assert not store.parts.root.exists() and oct(stat.S_IMODE(path.stat().st_mode)) == oct(0o666 & ~_umask())
    again = SingleFileStore(path)
    assert again.is_done("a.png") and not again.is_done("b.png")
    again.prepare(_settings(), overwrite=False, is_main=True)
    again.write("b.png", *_record(2))
    again.finalize()
    records = load_feature_file(path)
    assert sorted(records) == ["a.png", "b.png"]
    torch.testing.assert_close(records["b.png"][0]["features"], _record(2)[0]["features"], rtol=0, atol=0)
    with pytest.raises(SettingsMismatchError, match=r"feature_fmt: 'NLC' there, 'NCHW' now.*--overwrite"):
        SingleFileStore(path).prepare(_settings(feature_fmt="NCHW"), overwrite=False, is_main=True)


def test_manifest_guards_resume(tmp_path):
    store = DirectoryStore(tmp_path)
    store.prepare(_settings(), overwrite=False, is_main=True)
    assert json.loads((tmp_path / "radio_extract.json").read_text())["adaptors"] == ["clip"]
    store.prepare(_settings(), overwrite=False, is_main=True)  # the same settings resume
    with pytest.raises(SettingsMismatchError, match="version: 'v' there, 'w' now"):
        store.prepare(_settings(version="w"), overwrite=False, is_main=True)
    store.prepare(_settings(version="w"), overwrite=True, is_main=True)
    assert json.loads((tmp_path / "radio_extract.json").read_text())["version"] == "w"


def test_errors_and_keys(tmp_path):
    assert tensor_key("backbone", "summary") == "summary" and tensor_key("clip", "features") == "clip.features"
    with pytest.raises(ValueError, match="Unknown output format 'tif'"):
        DirectoryStore(tmp_path, "tif")
    with pytest.raises(ValueError, match="must end with .safetensors or .pt"):
        SingleFileStore(tmp_path / "x.npz")
    with pytest.raises(TypeError, match="npy cannot store bfloat16"):
        DirectoryStore(tmp_path, "npy").write("a", {"summary": torch.zeros(2, dtype=torch.bfloat16)}, {})
    (tmp_path / "x.txt").write_text("{}")
    with pytest.raises(ValueError, match="Not a RADIO feature record"):
        load_features(tmp_path / "x.txt")
