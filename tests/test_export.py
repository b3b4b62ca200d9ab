"""Exports: pickle-free remote-code safetensors (round trip) and transformers.RadioModel (parity)."""

import json
import logging

import pytest
import torch

from ckpt_writer import make_checkpoint
from radio_test_utils import all_tensors, assert_close_rel
from radio import radio_model
from radio.export.parity import flatten_outputs, parity_key, relative_error
from radio.export.safetensors_export import export_safetensors, export_safetensors_from, verify_safetensors_export
from radio.export.transformers_export import export_transformers, parity_tolerance, verify_transformers_export
from radio.hf import read_hf_directory
from radio.outputs import RadioOutput

ALL = ["clip", "dino_v2", "sam"]


def test_relative_error():
    b = torch.tensor([3.0, 4.0])
    assert relative_error(b, b) == 0.0
    assert relative_error(torch.tensor([3.0, 5.0]), b) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="shapes"):
        relative_error(torch.zeros(2), torch.zeros(3))
    assert relative_error(torch.zeros(2), torch.zeros(2)) == 0.0
    assert relative_error(torch.ones(2), torch.zeros(2)) == float("inf")
    # float64 accumulation: a float16 input against a float32 reference
    a, ref = torch.tensor([1.0, 2.0], dtype=torch.float16), torch.tensor([1.0, 2.5])
    assert relative_error(a, ref) == pytest.approx(0.5 / (1.0 + 6.25) ** 0.5)


def test_flatten_outputs_and_key_format():
    s, f = torch.zeros(1, 2), torch.ones(1, 3, 2)
    out = {"backbone": RadioOutput(s, f), "clip": RadioOutput(s + 1, f + 1), "sam": RadioOutput(s + 2, f + 2)}
    flat = flatten_outputs(out)
    assert list(flat) == ["summary", "features", "clip.summary", "clip.features", "sam.summary", "sam.features"]
    assert flat["clip.features"] is out["clip"].features
    assert list(flatten_outputs(out, ["sam"])) == ["summary", "features", "sam.summary", "sam.features"]
    assert list(flatten_outputs(RadioOutput(s, f))) == ["summary", "features"]
    assert parity_key("clip.features", 48, 80) == "clip.features@48x80"


def test_safetensors_round_trip_of_a_spectral_checkpoint(tmp_path, images):
    w = make_checkpoint(tmp_path / "sn.pth.tar", spectral_reparam=True, layerscale="grandma",
                        feature_normalizer=True, intermediate_normalizer="shared", fd_upsample_factor=2,
                        teachers=[{"name": "clip", "type": "open_clip", "model": "ViT-B-16", "pretrained": "x"},
                                  {"name": "dino_v2", "type": "generic", "token_slot": 1},
                                  {"name": "sam", "type": "generic", "use_summary": False}])
    out, errors = export_safetensors_from(w.path, tmp_path / "out", verify=True, progress=False)
    assert errors and max(errors.values()) == 0.0
    assert {k.split("@")[0] for k in errors} == {f"{p}{o}" for p in ("", "clip.", "dino_v2.", "sam.")
                                                 for o in ("summary", "features")}
    config = json.loads((out / "config.json").read_text())
    assert "model_type" not in config and config["args"]["spectral_reparam"] is False
    assert config["adaptor_configs"]["dino_v2"]["head_idx"] == 1
    assert config["adaptor_configs"]["clip"]["feature"]["upsample_factor"] == 2
    assert config["adaptor_configs"]["clip"]["summary"] == {"input_dim": 32, "hidden_dim": 24, "output_dim": 16,
                                                            "num_inner": 1}
    assert config["inter_feature_normalizer_config"] == {"num_intermediates": 2, "embed_dim": 32,
                                                         "rot_per_layer": False}
    repo = read_hf_directory(out)
    assert not any("parametrizations" in k for k in repo.state_dict)
    # independent check: the realized weights of the writer are what the file holds
    for k, v in w.realized["backbone"].items():
        assert torch.equal(repo.state_dict["base_model." + k.replace("grandma", "gamma")], v), k
    source = radio_model(w.path, adaptor_names=ALL)
    with torch.no_grad():
        x = images(1, 48, 64)
        a, b = source(x), radio_model(str(out), adaptor_names=ALL)(x)
        assert torch.equal(a["clip"].features, b["clip"].features)
        fa = source.forward_intermediates(x, indices=[0, 1], output_fmt="NLC", aggregation="dense")
        fb = radio_model(str(out), adaptor_names=ALL).forward_intermediates(x, indices=[0, 1], output_fmt="NLC", aggregation="dense")
    flat = [torch.cat([t.flatten() for t in all_tensors(o)]) for o in (fa, fb)]
    assert flat[0].numel() > 0 and torch.equal(flat[0], flat[1])


def test_bf16_safetensors_round_trip(tmp_path, images):
    w = make_checkpoint(tmp_path / "bf.pth.tar", args_dtype=torch.bfloat16)
    model, ckpt = radio_model(w.path, adaptor_names=ALL, return_checkpoint=True)
    out = export_safetensors(model, ckpt["args"], tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["dtype"] == "bfloat16"
    sd = read_hf_directory(out).state_dict
    assert sd["base_model.blocks.0.mlp.fc1.weight"].dtype is torch.bfloat16
    assert sd["_heads.clip.fc1.weight"].dtype is torch.float32
    x = images(2, 32, 64)
    with torch.no_grad():
        a, b = model(x), radio_model(str(out), adaptor_names=ALL)(x)
    for name in a:
        assert torch.equal(a[name].summary, b[name].summary) and torch.equal(a[name].features, b[name].features)


def test_transformers_round_trip_with_layerscale(tmp_path):
    w = make_checkpoint(tmp_path / "ls.pth.tar", layerscale="grandma", embed_dim=32, num_heads=4,
                        cpe_max_size=128, storage_dtype=torch.float32)
    model = radio_model(w.path)
    with torch.no_grad():  # make LayerScale clearly non-identity so that dropping it would show
        for blk in model.model.blocks:
            assert blk.ls1.gamma.abs().sum() > 0
    out = export_transformers(model, tmp_path / "tf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "radio" and config["max_img_size"] == 128
    from safetensors.torch import load_file

    keys = load_file(str(out / "model.safetensors")).keys()
    assert "radio_model.model.blocks.0.layer_scale1.lambda1" in keys
    errors = verify_transformers_export(model, out, sizes=[(128, 128), (48, 80), (160, 32)])
    assert max(errors.values()) <= 1e-6, errors
    # and this package reads the transformers-native directory back to the same outputs
    back = radio_model(str(out))
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_close_rel(back(x).features, model(x).features, 0.0)


def test_transformers_export_blockers_and_opt_in(tmp_path, caplog):
    w = make_checkpoint(tmp_path / "n.pth.tar", feature_normalizer=True, model_norm=True)
    model = radio_model(w.path, adaptor_names="clip")
    with pytest.raises(ValueError, match="final norm.*adaptors \\['clip'\\].*feature normalizer"):
        export_transformers(model, tmp_path / "x")
    w2 = make_checkpoint(tmp_path / "f.pth.tar", feature_normalizer=True)
    model2 = radio_model(w2.path, adaptor_names="clip")
    with pytest.raises(ValueError, match="drop_unsupported=True"):
        export_transformers(model2, tmp_path / "y")
    with caplog.at_level(logging.WARNING, logger="radio.export.transformers_export"):
        out = export_transformers(model2, tmp_path / "y", drop_unsupported=True)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "Exporting without: adaptors ['clip'], feature normalizer. transformers.RadioModel outputs only the raw "
        "backbone summary and features."]
    errors = verify_transformers_export(model2, out, sizes=[(64, 64), (32, 96)])
    assert max(errors.values()) <= 1e-6, errors
    w3 = make_checkpoint(tmp_path / "d.pth.tar", depth=8)
    vit = radio_model(w3.path, vitdet_window_size=2)
    with pytest.raises(ValueError, match="ViTDet"):
        export_transformers(vit, tmp_path / "z", drop_unsupported=True)


def test_transformers_export_refuses_eradio_with_its_blocker(tmp_path):
    from eradio_writer import make_eradio_checkpoint

    w = make_eradio_checkpoint(tmp_path / "e.pth.tar", "eradio_xxxtiny")
    with pytest.raises(ValueError, match="not a RADIO CPE ViT \\(e.g. E-RADIO\\)"):
        export_transformers(radio_model(w.path), tmp_path / "e", drop_unsupported=True)
    assert not (tmp_path / "e").exists()


# ----------------------------------------------------------------------------------------------
# Layout A as the original writes it (hf-format.md §2-§3), compared with tests/hf_writer.py


def _keys(repo):
    from safetensors import safe_open

    with safe_open(str(repo / "model.safetensors"), "pt") as f:
        return set(f.keys())


def _tensors(repo):
    from safetensors.torch import load_file

    return load_file(str(repo / "model.safetensors"))


def _assert_same_outputs(a, b, x):
    with torch.no_grad():
        oa, ob = a(x), b(x)
    flat_a, flat_b = all_tensors(oa), all_tensors(ob)
    assert len(flat_a) == len(flat_b) > 0
    for ta, tb in zip(flat_a, flat_b):
        assert ta.dtype == tb.dtype and torch.equal(ta, tb)


def test_layout_a_export_uses_the_hub_names_of_the_originals_architectures(tmp_path, images):
    """vit_base_patch16_v2_224: LayerScale 'grandma', the unused reg_token saved with its stored value."""
    from importlib.metadata import version as installed

    from hf_writer import write_remote_code_repo

    w = make_checkpoint(tmp_path / "v2.pth.tar", model="vit_base_patch16_v2_224")
    out, _ = export_safetensors_from(w.path, tmp_path / "out", progress=False)
    ref = write_remote_code_repo(w, tmp_path / "ref")
    assert _keys(out) == _keys(ref)
    sd, stored = _tensors(out), w.checkpoint["state_dict"]
    assert "radio_model.model.blocks.1.ls2.grandma" in sd and not any(k.endswith(".gamma") for k in sd)
    assert torch.equal(sd["radio_model.model.blocks.1.ls2.grandma"], w.realized["backbone"]["blocks.1.ls2.grandma"])
    assert sd["radio_model.model.reg_token"].shape == (1, 4, 32)
    assert torch.equal(sd["radio_model.model.reg_token"], stored["base_model.reg_token"].float())
    # spec §2.1: the config's key set (auto_map, transformers_version) and no null release fields
    config = json.loads((out / "config.json").read_text())
    ref_config = json.loads((ref / "config.json").read_text())
    assert sorted(config) == sorted(ref_config)
    assert config["auto_map"] == {"AutoConfig": "hf_model.RADIOConfig", "AutoModel": "hf_model.RADIOModel"}
    assert config["transformers_version"] == installed("transformers")
    assert (config["version"], config["patch_size"], config["max_resolution"], config["preferred_resolution"]) == (
        "c-radio_v4-h", 16, 64, [64, 64])
    back = radio_model(str(out), adaptor_names=ALL)
    assert (back.version, back.max_resolution, tuple(back.preferred_resolution)) == ("c-radio_v4-h", 64, (64, 64))
    _assert_same_outputs(radio_model(w.path, adaptor_names=ALL), back, images(1, 48, 64))
    # without the source weights the unused parameter is zeros of its shape; same key set
    model, ckpt = radio_model(w.path, return_checkpoint=True)
    bare = export_safetensors(model, ckpt["args"], tmp_path / "bare", version="c-radio_v3-b")
    bare_config = json.loads((bare / "config.json").read_text())
    # the version given supplies the preferred resolution the file lacks; the table size stays the model's
    assert (bare_config["version"], bare_config["max_resolution"], bare_config["preferred_resolution"]) == (
        "c-radio_v3-b", 64, [512, 512])
    assert torch.equal(_tensors(bare)["radio_model.model.reg_token"], torch.zeros(1, 4, 32))
    assert _keys(bare) == {k for k in _keys(ref) if ".adaptors." not in k}
    with pytest.raises(ValueError, match="'radio-v9' is not a release name"):
        export_safetensors(model, ckpt["args"], tmp_path / "bad", version="radio-v9")


def test_layout_a_export_of_the_dinov2_wrapper_family(tmp_path, images, monkeypatch):
    """dino_v2_l_student (shrunk): keys under model.inner. with 'grandma' LayerScale, the unused
    inner.mask_token and the wrapper's own conditioner, as the hub model's state dict has them."""
    import dataclasses

    import radio.architectures as archs
    from hf_writer import write_remote_code_repo

    tiny = dataclasses.replace(archs.DINOV2_ARCHITECTURES["dino_v2_l_student"], embed_dim=32, depth=2,
                               num_heads=2, mlp_hidden=128)
    monkeypatch.setitem(archs.DINOV2_ARCHITECTURES, "dino_v2_l_student", tiny)
    ck = make_checkpoint(None, model="vit_huge_patch14_224", cpe_max_size=98, layerscale="grandma",
                         model_norm=True, write_final_norm=True, register_multiple=None, cpe_num_registers=4,
                         teachers=[{"name": "clip", "type": "generic"}])
    g = torch.Generator().manual_seed(3)
    bias, mask = torch.randn(32, generator=g), torch.randn(1, 32, generator=g)
    wrapper_cond = {"norm_mean": torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
                    "norm_std": torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)}
    sd = {(k.replace("base_model.", "base_model.inner.", 1) if k.startswith("base_model.") else k): v
          for k, v in ck.checkpoint["state_dict"].items()}
    sd["base_model.inner.patch_generator.embedder.bias"] = bias
    sd["base_model.inner.mask_token"] = mask
    sd.update({f"base_model.input_conditioner.{k}": v for k, v in wrapper_cond.items()})
    args = ck.checkpoint["args"]
    args.model, args.model_norm = "dino_v2_l_student", False
    torch.save({"args": args, "state_dict": sd}, tmp_path / "dino.pth.tar")

    out, _ = export_safetensors_from(str(tmp_path / "dino.pth.tar"), tmp_path / "out", progress=False)
    hub = {f"inner.{k}": v for k, v in ck.realized["backbone"].items()}  # ls*.grandma, norm.*
    hub["inner.patch_generator.embedder.bias"] = bias
    hub["inner.mask_token"] = mask
    hub.update({f"input_conditioner.{k}": v for k, v in wrapper_cond.items()})
    ref = write_remote_code_repo(ck, tmp_path / "ref", backbone=hub)
    assert _keys(out) == _keys(ref)
    got = _tensors(out)
    for k, v in hub.items():
        assert torch.equal(got[f"radio_model.model.{k}"], v), k
    back = radio_model(str(out), adaptor_names="clip")
    _assert_same_outputs(radio_model(str(tmp_path / "dino.pth.tar"), adaptor_names="clip"), back,
                         images(2, 56, 84))


def test_exports_after_make_preprocessor_external(tmp_path):
    w = make_checkpoint(tmp_path / "e.pth.tar")
    model, ckpt = radio_model(w.path, adaptor_names="clip", return_checkpoint=True)
    cond = model.make_preprocessor_external()
    with pytest.raises(ValueError, match="made external.*input_conditioner="):
        export_safetensors(model, ckpt["args"], tmp_path / "a")
    with pytest.raises(ValueError, match="made external.*input_conditioner="):
        export_transformers(model, tmp_path / "b", drop_unsupported=True)
    out = export_safetensors(model, ckpt["args"], tmp_path / "a", input_conditioner=cond)
    sd = _tensors(out)
    for name in ("norm_mean", "norm_std"):
        expected = w.realized["conditioner"][name]
        assert torch.equal(sd[f"radio_model.input_conditioner.{name}"], expected)
        assert torch.equal(getattr(radio_model(str(out)).input_conditioner, name), expected)
    errors = verify_safetensors_export(model, out)
    assert errors and set(errors.values()) == {0.0}
    tf = export_transformers(model, tmp_path / "b", drop_unsupported=True, input_conditioner=cond)
    native = json.loads((tf / "config.json").read_text())
    assert native["norm_mean"] == pytest.approx(w.realized["conditioner"]["norm_mean"].flatten().tolist())
    errors = verify_transformers_export(model, tf, sizes=[(64, 64)])
    assert max(errors.values()) <= 1e-6, errors


def test_verify_transformers_export_of_a_bf16_model(tmp_path):
    w = make_checkpoint(tmp_path / "bf.pth.tar", args_dtype=torch.bfloat16, storage_dtype=torch.float32)
    model = radio_model(w.path)
    assert parity_tolerance(model) == 2e-2
    out = export_transformers(model, tmp_path / "tf")
    errors = verify_transformers_export(model, out, sizes=[(64, 64), (32, 80)])
    assert len(errors) == 4
    # bf16 arithmetic differs (measured ~8e-3), well within the bf16 limit and far from a wrong model
    assert 0.0 < max(errors.values()) <= parity_tolerance(model), errors
    assert parity_tolerance(radio_model(make_checkpoint(tmp_path / "f.pth.tar").path)) == 1e-5
