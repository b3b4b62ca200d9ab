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
    with pytest.raises(FileNotFoundError, match="not found") as info:
        _resolve_source(str(tmp_path / "missing.pth.tar"), None)
    assert isinstance(info.value, KeyError)  # model.md §1: the original then fails its table lookup
    with pytest.raises(ValueError, match="Unknown RADIO version 'nope'") as info:
        _resolve_source("nope", None)
    assert isinstance(info.value, KeyError)


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


def test_positional_arguments_follow_the_original(tmp_path):
    """model.md §1: ``radio_model(version, progress, adaptor_names, neck_name, vitdet_window_size,
    return_checkpoint)``: code written against the original keeps its meaning."""
    path = tmp_path / "d8.pth.tar"
    make_checkpoint(path, depth=8, teachers=[dict(name="clip", summary_dim=12, feature_dim=10)])
    model, raw = radio_model(str(path), False, ["clip"], None, 2, True)
    assert model.window_size == 2 and list(model.adaptors) == ["clip"] and "args" in raw


@pytest.mark.parametrize("names", [{"clip"}, ("clip",), (n for n in ["clip", "clip"])], ids=["set", "tuple", "generator"])
def test_adaptor_names_take_any_iterable_of_strings(tmp_path, names):
    path = tmp_path / "m.pth.tar"
    make_checkpoint(path, teachers=[dict(name="clip", summary_dim=12, feature_dim=10)])
    assert list(radio_model(str(path), adaptor_names=names).adaptors) == ["clip"]


def test_a_repositorys_vitdet_setting_applies_and_can_be_overridden(tmp_path, images):
    """hf-format.md §5.1 records config.json's vitdet_window_size; the issue asks for it to be applied.
    An explicit argument wins (0: none), and a window the model cannot take is dropped with a warning."""
    ck = make_checkpoint(tmp_path / "d8.pth.tar", depth=8)
    repo = write_remote_code_repo(ck, tmp_path / "repo", extra={"vitdet_window_size": 2})
    x = images(1, 64, 64)
    with torch.no_grad():
        windowed = radio_model(str(tmp_path / "d8.pth.tar"), vitdet_window_size=2)(x).features
        plain = radio_model(str(tmp_path / "d8.pth.tar"))(x).features
        from_repo = radio_model(str(repo))
        assert from_repo.window_size == 2
        torch.testing.assert_close(from_repo(x).features, windowed)
        assert radio_model(str(repo), vitdet_window_size=4).window_size == 4
        opted_out = radio_model(str(repo), vitdet_window_size=0)
        assert opted_out.window_size is None
        torch.testing.assert_close(opted_out(x).features, plain)

    shallow = make_checkpoint(tmp_path / "d2.pth.tar", depth=2)  # too shallow for ViTDet (a period of 1)
    repo2 = write_remote_code_repo(shallow, tmp_path / "repo2", extra={"vitdet_window_size": 2})
    with pytest.warns(UserWarning, match="config.json sets vitdet_window_size=2.*without ViTDet"):
        model = radio_model(str(repo2))
    assert model.window_size is None


def test_a_repository_saved_with_adaptors_enables_them(tmp_path, images):
    """hf-format.md §5.2: the original's from_pretrained builds config.json's adaptor_names; an explicit
    argument (even an empty list) wins."""
    ck = make_checkpoint(tmp_path / "m.pth.tar")
    repo = write_remote_code_repo(ck, tmp_path / "repo", extra={"adaptor_names": ["dino_v2"]})
    model = radio_model(str(repo))
    assert list(model.adaptors) == ["dino_v2"]
    x = images(1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["dino_v2"].features,
                                   radio_model(str(tmp_path / "m.pth.tar"), adaptor_names="dino_v2")(x)["dino_v2"].features)
    assert list(radio_model(str(repo), adaptor_names=[]).adaptors) == []
    assert list(radio_model(str(repo), adaptor_names="clip").adaptors) == ["clip"]


def test_a_revision_without_a_repository_id_is_not_silently_ignored(tmp_path):
    make_checkpoint(tmp_path / "m.pth.tar")
    with pytest.warns(UserWarning, match="revision='v1' applies to Hugging Face repository ids"):
        radio_model(str(tmp_path / "m.pth.tar"), revision="v1")


def test_an_unknown_text_model_fails_a_file_but_not_a_repository(tmp_path, caplog):
    """adaptors.md §7: the original's lookup of an unknown SigLIP2 model fails the load (KeyError);
    hf-format.md §5.1: a repository's original code builds no text towers, so its vision heads load."""
    teacher = {"name": "siglip2-g", "type": "siglip2", "model": "siglip2-huge"}
    ck = make_checkpoint(tmp_path / "m.pth.tar", teachers=[teacher, {"name": "clip", "type": "generic"}])
    with pytest.raises(KeyError, match="unknown siglip2 model 'siglip2-huge'"):
        radio_model(str(tmp_path / "m.pth.tar"), adaptor_names="siglip2-g")
    repo = write_remote_code_repo(ck, tmp_path / "repo")
    with caplog.at_level("WARNING", logger="radio.text_encoders"):
        model = radio_model(str(repo), adaptor_names="siglip2-g")
    assert not model.adaptors["siglip2-g"].has_text and "loaded without a text tower" in caplog.text
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32))
    assert out["siglip2-g"].features.shape[:2] == (1, 4)
