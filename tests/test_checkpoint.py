"""Safe reading of .pth.tar files: hostile, corrupt and foreign files; key checks through radio_model."""

import argparse
import warnings

import pytest
import torch

from ckpt_writer import (make_checkpoint, write_hostile_checkpoint, write_not_radio_checkpoint,
                         write_truncated_checkpoint)

from radio import CheckpointError, RadioOutput, UnsafeCheckpointError, radio_model
from radio.checkpoint import load_checkpoint


def test_hostile_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pth.tar"
    write_hostile_checkpoint(path, marker)
    with pytest.raises(UnsafeCheckpointError) as info:
        radio_model(str(path))
    assert not marker.exists()
    msg = str(info.value)
    assert "arbitrary code" in msg and "allow-list" in msg
    assert isinstance(info.value, ValueError)


def test_args_with_unexpected_global_is_refused(tmp_path):
    from pathlib import PurePosixPath

    ck = make_checkpoint(None)
    ck.checkpoint["args"].output = PurePosixPath("/some/dir")
    torch.save(ck.checkpoint, tmp_path / "p.pth.tar")
    with pytest.raises(UnsafeCheckpointError, match="PurePosixPath"):
        radio_model(str(tmp_path / "p.pth.tar"))
    # an explicitly allowed plain-data class is rebuilt (by the weights-only unpickler)
    model, raw = radio_model(str(tmp_path / "p.pth.tar"), extra_safe_globals=[PurePosixPath], return_checkpoint=True)
    assert raw["args"].output == PurePosixPath("/some/dir")


def test_truncated_file_is_a_clear_error(tmp_path):
    make_checkpoint(tmp_path / "ok.pth.tar")
    write_truncated_checkpoint(tmp_path / "ok.pth.tar", tmp_path / "cut.pth.tar")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        radio_model(str(tmp_path / "cut.pth.tar"))


@pytest.mark.parametrize("content", [b"definitely not a checkpoint" * 10, bytes(range(256)) * 8, b"\x80\x02}q\x00."[:3]])
def test_garbage_file_is_not_a_pytorch_checkpoint(tmp_path, content):
    (tmp_path / "junk.pth.tar").write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        radio_model(str(tmp_path / "junk.pth.tar"))
    assert not isinstance(info.value, UnsafeCheckpointError)  # random bytes are not an attack
    assert "not a PyTorch checkpoint" in str(info.value) or "truncated or corrupt" in str(info.value)
    assert "weights_only" not in str(info.value)  # never torch's advice to unpickle unsafely


@pytest.mark.parametrize("wrap", [False, True])
def test_not_a_radio_checkpoint(tmp_path, wrap):
    write_not_radio_checkpoint(tmp_path / "plain.pth", wrap_in_state_dict=wrap)
    with pytest.raises(CheckpointError, match="not a RADIO checkpoint"):
        radio_model(str(tmp_path / "plain.pth"))


def test_missing_backbone_keys_are_listed(tmp_path):
    ck = make_checkpoint(None)
    sd = ck.checkpoint["state_dict"]
    del sd["base_model.blocks.1.mlp.fc2.weight"], sd["base_model.patch_generator.pos_embed"]
    torch.save(ck.checkpoint, tmp_path / "m.pth.tar")
    with pytest.raises(CheckpointError) as info:
        radio_model(str(tmp_path / "m.pth.tar"))
    assert "blocks.1.mlp.fc2.weight" in str(info.value) and "patch_generator.pos_embed" in str(info.value)


def test_missing_conditioner_is_an_error(tmp_path):
    ck = make_checkpoint(None)
    del ck.checkpoint["state_dict"]["input_conditioner.norm_std"]
    torch.save(ck.checkpoint, tmp_path / "c.pth.tar")
    with pytest.raises(CheckpointError, match="input_conditioner.norm_std"):
        radio_model(str(tmp_path / "c.pth.tar"))


def test_missing_required_args_field(tmp_path):
    ck = make_checkpoint(None)
    del ck.checkpoint["args"].cpe_max_size
    torch.save(ck.checkpoint, tmp_path / "a.pth.tar")
    with pytest.raises(CheckpointError, match="cpe_max_size"):
        radio_model(str(tmp_path / "a.pth.tar"))


def test_documented_unused_keys_are_quiet_and_others_warn(tmp_path):
    make_checkpoint(tmp_path / "u.pth.tar", model="vit_base_patch16_v2_224", unused_keys=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = radio_model(str(tmp_path / "u.pth.tar"))
    # the stock-timm keys the CPE path never uses are dropped, not loaded
    keys = list(quiet.state_dict())
    assert "model.patch_generator.pos_embed" in keys
    assert not [k for k in keys if k in ("model.cls_token", "model.pos_embed")
                or k.startswith(("model.patch_embed.", "model.head."))]
    ck = make_checkpoint(None)
    ck.checkpoint["state_dict"]["base_model.blocks.0.attn.extra_thing"] = torch.zeros(2)
    torch.save(ck.checkpoint, tmp_path / "x.pth.tar")
    with pytest.warns(UserWarning, match="blocks.0.attn.extra_thing"):
        radio_model(str(tmp_path / "x.pth.tar"))


def test_spectral_keys_without_version_are_corrupt(tmp_path):
    ck = make_checkpoint(None, spectral_reparam=True)
    sd = ck.checkpoint["state_dict"]
    for k in [k for k in sd if k.startswith("base_model.blocks.0.mlp.fc1.") and k.endswith("_sn_version")]:
        del sd[k]
    torch.save(ck.checkpoint, tmp_path / "s.pth.tar")
    with pytest.raises(CheckpointError, match="_sn_version"):
        radio_model(str(tmp_path / "s.pth.tar"))


def test_ema_is_chosen_and_args_are_returned_as_stored(tmp_path):
    make_checkpoint(tmp_path / "e.pth.tar", ema=True, spectral_reparam=True, damp=True)
    ck = load_checkpoint(tmp_path / "e.pth.tar")
    assert ck.is_ema and ck.state_dict is not ck.raw["state_dict"]
    assert ck.args.spectral_reparam is True and ck.args.damp is True  # edits are radio.args' business


def test_return_checkpoint_carries_load_time_changes(tmp_path):
    ck = make_checkpoint(None, spectral_reparam=True)
    ck.checkpoint["args"].model_kwargs["weight_init"] = "jax"
    torch.save(ck.checkpoint, tmp_path / "w.pth.tar")
    model, raw = radio_model(str(tmp_path / "w.pth.tar"), return_checkpoint=True)
    assert isinstance(raw["args"], argparse.Namespace)
    assert raw["args"].spectral_reparam is False
    assert "weight_init" not in raw["args"].model_kwargs
    assert "state_dict" in raw


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_pickle_that_would_run_a_shell_command_is_refused(tmp_path):
    marker = tmp_path / "command_ran"
    ck = make_checkpoint(None)
    ck.checkpoint["args"].payload = _RunsCommand(marker)
    torch.save(ck.checkpoint, tmp_path / "cmd.pth.tar")
    with pytest.raises(UnsafeCheckpointError, match="system"):
        radio_model(str(tmp_path / "cmd.pth.tar"))
    assert not marker.exists()


def test_head_layout_mismatch_and_bad_versions_are_errors(tmp_path):
    ck = make_checkpoint(None)  # v2 heads
    ck.checkpoint["args"].teachers[0]["mlp_version"] = "v1"
    ck.checkpoint["args"].teachers[1]["mlp_version"] = "attn"
    ck.checkpoint["args"].teachers[2]["spatial_mlp_version"] = "v3"
    torch.save(ck.checkpoint, tmp_path / "h.pth.tar")
    backbone_only = radio_model(str(tmp_path / "h.pth.tar"))  # the backbone alone is fine
    assert len(backbone_only.adaptors) == 0
    with torch.no_grad():
        out = backbone_only(torch.rand(1, 3, 32, 32))
    assert isinstance(out, RadioOutput) and out.features.shape == (1, 4, backbone_only.embed_dim)
    with pytest.raises(CheckpointError, match="adaptor 'clip' summary head"):
        radio_model(str(tmp_path / "h.pth.tar"), adaptor_names="clip")
    with pytest.raises(CheckpointError, match="'attn' is not a valid summary head") as info:
        radio_model(str(tmp_path / "h.pth.tar"), adaptor_names="dino_v2")
    assert isinstance(info.value, KeyError)
    with pytest.raises(ValueError, match="'v3'"):
        radio_model(str(tmp_path / "h.pth.tar"), adaptor_names="sam")
