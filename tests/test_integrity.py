"""``radio.integrity.verify_checkpoint``: checksums against the release record and finite weights."""

import dataclasses
import hashlib

import pytest
import torch
from safetensors.torch import save_file

from ckpt_writer import make_checkpoint
from radio.checkpoint import CheckpointError
from radio.integrity import IntegrityReport, sha256_of_file, verify_checkpoint
from radio.versions import VERSIONS


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("integrity") / "tiny.pth.tar"
    make_checkpoint(path, embed_dim=32, depth=1, num_heads=2, cpe_max_size=32, seed=1)
    payload = torch.load(path, weights_only=False)  # our own file: count its tensors independently
    n = sum(torch.is_tensor(v) for part in payload.values() if isinstance(part, dict) for v in part.values())
    return path, payload, n


def test_clean_file_without_release(ckpt):
    path, _, n = ckpt
    report = verify_checkpoint(path)
    assert report == IntegrityReport(path=path, release=None, sha256_expected=None, sha256_actual=None,
                                     tensors_checked=n, non_finite=())
    assert report.ok and not report.sha256_checked and report.sha256_ok is None
    assert report.describe()[-1] == "result: ok"


def test_checksum_match_and_mismatch(ckpt):
    path, _, n = ckpt
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_of_file(path, chunk_size=1000) == digest
    good = dataclasses.replace(VERSIONS["c-radio_v3-b"], sha256=digest.upper())
    report = verify_checkpoint(path, good)
    assert report.ok and report.sha256_ok and report.sha256_actual == digest and report.release == "c-radio_v3-b"
    assert f"sha256: ok ({digest}, as published for c-radio_v3-b)" in report.describe()
    bad = dataclasses.replace(VERSIONS["c-radio_v3-b"], sha256="0" * 64)
    report = verify_checkpoint(path, bad)
    assert not report.ok and report.sha256_ok is False and report.tensors_checked == n
    assert report.describe()[1] == f"sha256: MISMATCH: {digest}, published for c-radio_v3-b: {'0' * 64}"
    none = verify_checkpoint(path, VERSIONS["c-radio_v3-b"])  # the table has no checksum yet
    assert none.ok and none.sha256_expected is None and none.release == "c-radio_v3-b"


def test_non_finite_tensors_are_named(ckpt, tmp_path):
    _, payload, n = ckpt
    sd = dict(payload["state_dict"])
    keys = sorted(k for k, v in sd.items() if v.is_floating_point())[:2]
    sd[keys[0]] = sd[keys[0]].clone().fill_(float("nan"))
    sd[keys[1]] = sd[keys[1]].clone().fill_(float("-inf"))
    broken = tmp_path / "broken.pth.tar"
    torch.save({**payload, "state_dict": sd}, broken)
    report = verify_checkpoint(broken)
    assert not report.ok and report.tensors_checked == n
    assert sorted(report.non_finite) == [f"state_dict/{k}" for k in keys]  # file order, not sorted
    assert report.describe()[-1] == "result: FAILED"


def test_safetensors_file_and_directory(tmp_path):
    save_file({"a": torch.ones(2), "b": torch.arange(3)}, str(tmp_path / "one.safetensors"))
    (tmp_path / "sub").mkdir()
    save_file({"c": torch.tensor([1.0, float("inf")])}, str(tmp_path / "sub" / "two.safetensors"))
    single = verify_checkpoint(tmp_path / "one.safetensors")
    assert single.ok and single.tensors_checked == 2
    whole = verify_checkpoint(tmp_path)
    assert whole.tensors_checked == 3 and whole.non_finite == ("sub/two.safetensors/c",) and not whole.ok


def test_unreadable_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="Checkpoint file not found"):
        verify_checkpoint(tmp_path / "missing.pth.tar")
    with pytest.raises(FileNotFoundError, match="directory without .safetensors"):
        verify_checkpoint(tmp_path)
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth.tar"):
        verify_checkpoint(junk)
