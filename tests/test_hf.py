"""Reading Hugging Face RADIO directories (remote-code and transformers-native layouts), no network.

Repositories are written by ``tests/hf_writer.py`` from tiny official checkpoints
(``tests/ckpt_writer.py``); the reader's canonical state dict is compared with the official file's,
and models built from both are compared output by output.
"""

import logging

import pytest
import torch

from ckpt_writer import make_checkpoint
from radio_test_utils import CONFORMANCE_CASES, all_tensors, assert_close_rel, require_shared
from hf_writer import MARKER, plant_python_files, shard, write_native_repo, write_remote_code_repo
from radio.checkpoint import CheckpointError, load_checkpoint
from radio.hf import is_hf_directory, read_hf_directory, repo_id_from_path

ALL = ["clip", "dino_v2", "sam"]


def _build(path, adaptor_names=None):
    from radio import radio_model

    return radio_model(str(path), adaptor_names=adaptor_names)


def _assert_heads_by_name_equal_heads_by_index(by_name, by_index, names):
    """The HF layout keys heads by teacher name, the official file by teacher index: same tensors."""
    for i, name in enumerate(names):
        for group in ("_heads", "_feature_projections"):
            ours = {k[len(f"{group}.{name}."):]: v for k, v in by_name.items() if k.startswith(f"{group}.{name}.")}
            theirs = {k[len(f"{group}.{i}."):]: v for k, v in by_index.items() if k.startswith(f"{group}.{i}.")}
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _compare_models(a, b, x, tol=1e-6):
    with torch.no_grad():
        oa, ob = a(x), b(x)
        if isinstance(oa, dict):
            assert sorted(oa) == sorted(ob)
            pairs = [(oa[k], ob[k]) for k in oa]
        else:
            pairs = [(oa, ob)]
        for pa, pb in pairs:
            assert_close_rel(pb.summary, pa.summary, tol)
            assert_close_rel(pb.features, pa.features, tol)


@pytest.fixture
def plain(tmp_path):
    w = make_checkpoint(tmp_path / "plain.pth.tar", layerscale="gamma", feature_normalizer=True,
                        intermediate_normalizer="per_layer", storage_dtype=torch.float32,
                        teachers=[{"name": "clip", "type": "generic"}, {"name": "dino_v2", "type": "generic"},
                                  {"name": "sam", "type": "generic", "use_summary": False, "token_slot": 5}])
    return w


def test_remote_code_state_dict_equals_official(plain, tmp_path):
    repo = write_remote_code_repo(plain, tmp_path / "repo")
    assert is_hf_directory(repo) and not is_hf_directory(plain.path)
    got = read_hf_directory(repo)
    assert got.layout == "remote_code"
    official = dict(load_checkpoint(plain.path).state_dict)
    shared = [k for k in official if not k.startswith(("_heads.", "_feature_projections."))]
    hf_non_head = [k for k in got.state_dict if not k.startswith(("_heads.", "_feature_projections."))]
    assert sorted(shared) == sorted(hf_non_head)
    for k in shared:
        assert torch.equal(got.state_dict[k], official[k].float()), k
    # heads are keyed by name in the HF layout and by index in the official file
    _assert_heads_by_name_equal_heads_by_index(got.state_dict, official, ALL)
    assert got.args.teachers[2]["token_slot"] == 5
    assert vars(got.args).keys() - {"damp"} == vars(plain.args).keys() - {"damp"}
    assert got.metadata.version == "c-radio_v4-h" and got.metadata.patch_size == 16
    assert got.metadata.preferred_resolution == (512, 512)


def test_remote_code_outputs_equal_official_and_code_never_runs(plain, tmp_path, images):
    from radio import radio_model

    repo = write_remote_code_repo(plain, tmp_path / "repo", plant_code=True)
    marker = repo / MARKER
    official = radio_model(plain.path, adaptor_names=ALL)
    model = _build(repo, ALL)
    x = images(2, 64, 96)
    _compare_models(official, model, x, tol=0.0)
    assert model.adaptors["sam"].head_idx == 5
    with torch.no_grad():
        a = official.forward_intermediates(x, indices=[0, -1], output_fmt="NLC", aggregation="dense")
        b = model.forward_intermediates(x, indices=[0, -1], output_fmt="NLC", aggregation="dense")
    flat_a = torch.cat([t.flatten() for t in all_tensors(a)])
    flat_b = torch.cat([t.flatten() for t in all_tensors(b)])
    assert torch.equal(flat_a, flat_b)
    assert not marker.exists()


def test_sharded_equals_single(plain, tmp_path):
    single = read_hf_directory(write_remote_code_repo(plain, tmp_path / "a"))
    repo = write_remote_code_repo(plain, tmp_path / "b")
    shard(repo, 3)
    assert not (repo / "model.safetensors").exists()
    sharded = read_hf_directory(repo)
    assert sharded.state_dict.keys() == single.state_dict.keys()
    assert all(torch.equal(sharded.state_dict[k], single.state_dict[k]) for k in single.state_dict)


def test_bf16_remote_code_matches_official(tmp_path, images):
    from radio import radio_model

    w = make_checkpoint(tmp_path / "bf.pth.tar", args_dtype=torch.bfloat16, storage_dtype=torch.float32)
    repo = write_remote_code_repo(w, tmp_path / "repo")
    got = read_hf_directory(repo)
    assert got.args.dtype is torch.bfloat16
    assert got.state_dict["base_model.blocks.0.attn.qkv.weight"].dtype is torch.bfloat16
    _compare_models(radio_model(w.path, adaptor_names="clip"), _build(repo, ["clip"]), images(1, 32, 48), 0.0)


def test_single_cls_token_follows_hub_summary_rule(tmp_path, caplog):
    w = make_checkpoint(tmp_path / "s.pth.tar", cls_token_per_teacher=False, register_multiple=4)
    repo = write_remote_code_repo(w, tmp_path / "repo")  # stores the remote-code value [0, 1]
    with caplog.at_level(logging.WARNING, logger="radio.hf"):
        model = _build(repo)
    assert "hub rule" in caplog.text
    assert model.summary_idxs.tolist() == [0]
    assert model.num_cls_tokens == 1


def test_adaptor_missing_from_adaptor_configs_is_refused(plain, tmp_path):
    repo = write_remote_code_repo(plain, tmp_path / "repo", adaptors=["clip"])
    model = _build(repo, ["clip"])
    assert list(model.adaptors) == ["clip"]
    with pytest.raises(ValueError, match="dino_v2"):
        _build(repo, ["dino_v2"])


@pytest.mark.parametrize("names", ["disk", "memory"])
def test_native_layout_reads_both_name_sets(tmp_path, images, names):
    from radio import radio_model

    w = make_checkpoint(tmp_path / "ls.pth.tar", layerscale="grandma", storage_dtype=torch.float32)
    repo = write_native_repo(w, tmp_path / names, names=names)
    got = read_hf_directory(repo)
    assert got.layout == "native"
    for k, v in w.realized["backbone"].items():
        k = k.replace(".grandma", ".gamma")
        assert torch.equal(got.state_dict[f"base_model.{k}"], v), k
    official = radio_model(w.path)
    _compare_models(official, _build(repo), images(2, 48, 64), tol=0.0)


def test_native_metadata_from_hub_cache_path(tmp_path):
    w = make_checkpoint(None)
    snap = tmp_path / "models--nvidia--C-RADIOv4-SO400M" / "snapshots" / ("a" * 40)
    write_native_repo(w, snap)
    assert repo_id_from_path(snap) == "nvidia/C-RADIOv4-SO400M"
    meta = read_hf_directory(snap).metadata
    assert meta.version == "c-radio_v4-so400m" and meta.preferred_resolution == (512, 512)


def test_error_cases(plain, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        read_hf_directory(empty)
    with pytest.raises(FileNotFoundError):
        read_hf_directory(tmp_path / "nope")

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="neither a RADIO remote-code config"):
        read_hf_directory(bert)

    repo = write_remote_code_repo(plain, tmp_path / "noweights")
    (repo / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no weights"):
        read_hf_directory(repo)
    (repo / "pytorch_model.bin").write_bytes(b"\x80\x04N.")
    marker = plant_python_files(repo)
    with pytest.raises(CheckpointError, match="pickle files .*pytorch_model.bin.*refused"):
        read_hf_directory(repo)
    assert not marker.exists()

    repo = write_remote_code_repo(plain, tmp_path / "shards")
    shard(repo, 2)
    (repo / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors.*missing"):
        read_hf_directory(repo)

    repo = write_remote_code_repo(plain, tmp_path / "corrupt")
    (repo / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_hf_directory(repo)

    repo = write_remote_code_repo(plain, tmp_path / "badmodel", extra={})
    cfg = (repo / "config.json").read_text().replace('"vit_base_patch16_224"', '"no_such_vit"')
    (repo / "config.json").write_text(cfg)
    from radio.architectures import UnsupportedArchitectureError

    with pytest.raises(UnsupportedArchitectureError, match="no_such_vit"):  # conformance wants a ValueError too
        _build(repo)


def test_missing_backbone_weight_is_a_value_error(plain, tmp_path):
    from safetensors.torch import load_file, save_file

    repo = write_remote_code_repo(plain, tmp_path / "repo")
    sd = load_file(str(repo / "model.safetensors"))
    del sd["radio_model.model.blocks.1.mlp.fc2.weight"]
    save_file(sd, str(repo / "model.safetensors"))
    with pytest.raises(ValueError, match="blocks.1.mlp.fc2.weight"):
        _build(repo)


def test_tensors_are_memory_mapped(plain, tmp_path):
    repo = write_remote_code_repo(plain, tmp_path / "repo")
    sd = read_hf_directory(repo).state_dict
    storages = {t.untyped_storage().data_ptr() for t in sd.values()}
    assert len(storages) == 1  # every tensor is a view of the one mapping of the file
    assert next(iter(sd.values())).untyped_storage().nbytes() == (repo / "model.safetensors").stat().st_size


def test_conformance_hf_directory(images):
    case = CONFORMANCE_CASES / "hf" / "hf_cradio_v4"
    require_shared(case)
    repo = read_hf_directory(case)
    assert repo.metadata.version == "c-radio_v4-so400m" and repo.metadata.max_resolution == 2048
    assert [t["token_slot"] for t in repo.args.teachers] == [0, 1, 5]
    expected_dir = CONFORMANCE_CASES / "hf_cradio_v4"
    require_shared(expected_dir)
    model = _build(case, ["siglip2-g", "dino_v3", "sam3"])
    data = torch.load(expected_dir / "adaptors_all.pt", weights_only=True)
    x = data["inputs"]["x_u8"].float() / 255.0
    with torch.no_grad():
        out = model(x)
    for name, value in data["expected"]["__dict__"].items():
        exp = value["values"] if "values" in value else None
        assert exp is not None, value.keys()
        assert_close_rel(out[name].summary, exp[0], 1e-5)
        assert_close_rel(out[name].features, exp[1], 1e-5)


def test_resolve_hf_repository_fetches_only_config_and_safetensors(tmp_path, monkeypatch):
    import huggingface_hub

    import radio.download as download
    from radio.versions import version_for_hf_repo

    calls = []

    def fake(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setattr(download, "hub_unreachable_reason", lambda timeout=3.0: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert download.resolve_hf_repository("nvidia/C-RADIOv4-H", revision="v1", progress=False) == tmp_path
    repo_id, kwargs = calls[0]
    assert repo_id == "nvidia/C-RADIOv4-H" and kwargs["revision"] == "v1"
    assert sorted(kwargs["allow_patterns"]) == ["*.safetensors", "config.json", "model.safetensors.index.json"]
    assert kwargs["local_files_only"] is False
    assert version_for_hf_repo("nvidia/c-radiov4-h").name == "c-radio_v4-h"
    assert version_for_hf_repo("nvidia/RADIO") is None


def test_resolve_hf_repository_offline_and_unreachable_errors(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    import radio.download as download
    from radio.download import WeightsUnavailableError

    seen = []

    def fake(repo_id, **kwargs):
        seen.append(kwargs["local_files_only"])
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="(?s)nvidia/C-RADIOv3-B.*HF_HUB_OFFLINE.*local directory"):
        download.resolve_hf_repository("nvidia/C-RADIOv3-B")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(download, "hub_unreachable_reason", lambda timeout=3.0: "cannot resolve example")
    with pytest.raises(WeightsUnavailableError, match="unreachable \\(cannot resolve example\\)"):
        download.resolve_hf_repository("nvidia/C-RADIOv3-B")
    assert seen == [True, True]  # the cache only: no retries against an unreachable Hub


# ----------------------------------------------------------------------------------------------
# E-RADIO layout-A repositories (hf-format.md §3, eradio.md §5)

ERADIO_KW = {"return_full_features": True, "conv_groups_ratio": 1, "cpb_mlp_hidden": 64, "multi_query": True}
ERADIO_NAMES = ["clip", "dino_v2", "sam"]


@pytest.fixture(scope="module")
def eradio(tmp_path_factory):
    """An E-RADIO checkpoint (feature normalizer, raw timm norm/head keys, noisy stale bias caches),
    the model loaded from it with every adaptor, and its layout-A repository (sharded, with code planted)."""
    from eradio_writer import make_eradio_checkpoint
    from radio import radio_model

    from hf_writer import write_eradio_remote_code_repo

    d = tmp_path_factory.mktemp("eradio_hf")
    w = make_eradio_checkpoint(d / "e.pth.tar", "eradio_xxxtiny", dict(ERADIO_KW), feature_normalizer=True,
                               seed=3, timm_extras=True)
    repo = write_eradio_remote_code_repo(w, d / "repo", plant_code=True)
    shard(repo, 2)
    return w, repo, radio_model(w.path, adaptor_names=ERADIO_NAMES)


def _eradio_outputs(model, x):
    """Every output of the public API the issue names: NLC/NCHW with adaptors, and the pyramid."""
    with torch.no_grad():
        nlc = model(x)
        nchw = model(x, feature_fmt="NCHW")
        pyramid = model.forward_intermediates(x, output_fmt="NCHW", intermediates_only=True)
        final, picked = model.forward_intermediates(x, indices=[1, -1], output_fmt="NLC")
    return {"nlc": nlc, "nchw": nchw, "pyramid": pyramid, "final": final, "picked": picked}


def test_eradio_remote_code_repo_state_dict_equals_official(eradio, caplog):
    w, repo, _ = eradio
    with caplog.at_level(logging.INFO, logger="radio.hf"):
        got = read_hf_directory(repo)
    assert got.layout == "remote_code" and got.args.model == "eradio_xxxtiny"
    official = dict(load_checkpoint(w.path).state_dict)
    # the hub model owns no timm norm/head: the repository has none, everything else is the file's
    expected = {k: v for k, v in official.items()
                if not k.startswith(("base_model.norm.", "base_model.head.", "_heads.", "_feature_projections."))}
    non_head = {k: v for k, v in got.state_dict.items() if not k.startswith(("_heads.", "_feature_projections."))}
    assert sorted(non_head) == sorted(expected)
    for k, v in expected.items():
        assert non_head[k].dtype == v.dtype and torch.equal(non_head[k], v), k
    _assert_heads_by_name_equal_heads_by_index(got.state_dict, official, ERADIO_NAMES)
    # the remote-code summary_idxs [0, 1] has no effect on E-RADIO: noted, not warned about
    assert "hub rule" in caplog.text and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert got.metadata.version == "e-radio_v2" and got.metadata.preferred_resolution == (512, 512)


def test_eradio_remote_code_repo_outputs_identical_to_pth(eradio, images):
    w, repo, official = eradio
    model = _build(repo, ERADIO_NAMES)
    assert type(model.model) is type(official.model)
    assert (model.version, model.max_resolution, tuple(model.preferred_resolution)) == ("e-radio_v2", 2048, (512, 512))
    assert (model.patch_size, model.min_resolution_step, model.embed_dim) == (16, 32, official.embed_dim)
    x = images(2, 64, 96)
    a, b = _eradio_outputs(official, x), _eradio_outputs(model, x)
    assert list(b["nlc"]) == ["backbone", *ERADIO_NAMES]
    assert b["nchw"]["backbone"].features.shape == (2, official.embed_dim, 4, 6)
    assert [m.shape[-1] for m in b["pyramid"]] == [96 // s for s in (4, 8, 16, 32, 16)]
    flat_a, flat_b = all_tensors(a), all_tensors(b)
    assert len(flat_a) == len(flat_b) == 2 * 4 * 2 + 5 + 2 * 4 + 2  # final: one RadioOutput per head
    for ta, tb in zip(flat_a, flat_b):
        assert ta.dtype == tb.dtype and torch.equal(ta, tb)
    # the pyramid API agrees with the plain forward of the same model
    assert_close_rel(b["final"]["backbone"].features, a["nlc"]["backbone"].features, 0.0)
    assert_close_rel(b["picked"][0], b["pyramid"][1].flatten(2).transpose(1, 2), 0.0)
    assert_close_rel(b["picked"][1], b["pyramid"][4].flatten(2).transpose(1, 2), 0.0)
    from radio import radio_model

    with pytest.raises(ValueError, match="ViTDet|E-RADIO"):
        radio_model(str(repo), vitdet_window_size=4)
    assert not (repo / MARKER).exists()


def test_eradio_bf16_repository_matches_pth(tmp_path, images):
    from eradio_writer import make_eradio_checkpoint
    from radio import radio_model

    from hf_writer import write_eradio_remote_code_repo

    w = make_eradio_checkpoint(tmp_path / "bf.pth.tar", "eradio_xxxtiny", dict(ERADIO_KW), seed=4,
                               dtype=torch.bfloat16, store_dtype=torch.float32)
    repo = write_eradio_remote_code_repo(w, tmp_path / "repo", adaptors=["clip"])
    got = read_hf_directory(repo)
    assert got.args.dtype is torch.bfloat16
    assert got.state_dict["base_model.levels.2.blocks.0.attention_blocks.0.attn.qkv.weight"].dtype is torch.bfloat16
    x = images(1, 64, 64)
    with torch.no_grad():
        a, b = radio_model(w.path, adaptor_names="clip")(x), _build(repo, ["clip"])(x)
    assert b["backbone"].features.dtype is torch.bfloat16
    for ta, tb in zip(all_tensors(a), all_tensors(b)):
        assert torch.equal(ta, tb)


def test_eradio_safetensors_export_round_trip(eradio, tmp_path, images):
    from safetensors.torch import load_file

    from eradio_reference import _Ctx, position_bias
    from radio import radio_model
    from radio.export.safetensors_export import export_safetensors, verify_safetensors_export

    w, _, official = eradio
    _, checkpoint = radio_model(w.path, adaptor_names=ERADIO_NAMES, return_checkpoint=True)
    out = export_safetensors(official, checkpoint["args"], tmp_path / "export", version="e-radio_v2")
    sd = load_file(str(out / "model.safetensors"))
    # hf-format.md §3: the E-RADIO backbone keys of the file, the three position-bias buffers of
    # every attention block and the BatchNorm buffers included; no timm norm/head
    backbone = {k[len("radio_model.model."):]: v for k, v in sd.items() if k.startswith("radio_model.model.")}
    expected_keys = {k for k in w.backbone if not k.startswith(("norm.", "head."))}
    assert set(backbone) == expected_keys
    stale = [k for k in expected_keys if k.endswith(".relative_bias")]
    assert len(stale) == 13 and any(k.endswith("num_batches_tracked") for k in backbone)
    for k in expected_keys:
        if k.endswith(".relative_bias"):
            # not the stale noise of the file: the bias of the exported MLP (the original's deploy
            # mode uses the stored buffer as is, eradio.md §8)
            prefix = k[: -len(".relative_bias")]
            ref = position_bias(_Ctx(w.backbone, False), prefix, 16).unsqueeze(0)
            assert_close_rel(backbone[k], ref, 1e-6)
            assert not torch.allclose(backbone[k], w.backbone[k])
        else:
            assert backbone[k].dtype == w.backbone[k].dtype and torch.equal(backbone[k], w.backbone[k]), k
    assert sd["radio_model.summary_idxs"].tolist() == [0]
    # loads back to identical outputs, adaptors and pyramid included
    model = _build(out, ERADIO_NAMES)
    x = images(1, 96, 64)
    for ta, tb in zip(all_tensors(_eradio_outputs(official, x)), all_tensors(_eradio_outputs(model, x))):
        assert torch.equal(ta, tb)
    errors = verify_safetensors_export(official, out)
    assert len(errors) == 2 * 2 * 4 and set(errors.values()) == {0.0}


def test_eradio_export_without_a_version_names_e_radio_v2(eradio, tmp_path):
    """hf-format.md §2.1: version must be a key of the version table; an E-RADIO file loaded without
    one is written as e-radio_v2 with that release's sizes (never null)."""
    import json

    from radio import radio_model
    from radio.export.safetensors_export import export_safetensors

    w, _, official = eradio
    assert official.version is None and official.max_resolution is None and official.preferred_resolution is None
    _, checkpoint = radio_model(w.path, return_checkpoint=True)
    out = export_safetensors(official, checkpoint["args"], tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert (config["version"], config["patch_size"], config["max_resolution"], config["preferred_resolution"]) == (
        "e-radio_v2", 16, 2048, [512, 512])
    meta = read_hf_directory(out).metadata
    assert (meta.version, meta.max_resolution, meta.preferred_resolution) == ("e-radio_v2", 2048, (512, 512))


def test_native_stored_summary_idxs_win_over_config(tmp_path, caplog, images):
    """transformers loads the persistent summary_idxs buffer over config.json's value."""
    import json

    from radio import radio_model

    w = make_checkpoint(tmp_path / "s.pth.tar", storage_dtype=torch.float32)  # T = 3, stored [0, 1]
    repo = write_native_repo(w, tmp_path / "native")
    config = json.loads((repo / "config.json").read_text())
    assert config["summary_idxs"] == [0, 1] and config["num_cls_tokens"] == 3
    config["summary_idxs"] = [0, 2]
    (repo / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="radio.hf"):
        model = _build(repo)
    assert "stored summary_idxs [0, 1] differ from config.json [0, 2]; using the stored buffer" in caplog.text
    assert model.summary_idxs.tolist() == [0, 1]
    _compare_models(radio_model(w.path), model, images(1, 32, 48), tol=0.0)


def test_remote_code_adaptor_names_in_metadata(plain, tmp_path, caplog):
    """A non-null config.json adaptor_names is what the original's from_pretrained builds."""
    assert read_hf_directory(write_remote_code_repo(plain, tmp_path / "a")).metadata.adaptor_names == ()
    repo = write_remote_code_repo(plain, tmp_path / "b", extra={"adaptor_names": ["sam", "clip"]})
    assert read_hf_directory(repo).metadata.adaptor_names == ("sam", "clip")
    repo = write_remote_code_repo(plain, tmp_path / "c", adaptors=["clip"], extra={"adaptor_names": ["clip", "sam"]})
    with caplog.at_level(logging.WARNING, logger="radio.hf"):
        assert read_hf_directory(repo).metadata.adaptor_names == ("clip",)
    assert "adaptor_names lists ['sam'], which adaptor_configs does not describe" in caplog.text
    repo = write_remote_code_repo(plain, tmp_path / "d", extra={"adaptor_names": {"clip": 1}})
    with pytest.raises(CheckpointError, match="adaptor_names=.* is not null or a list of names"):
        read_hf_directory(repo)
