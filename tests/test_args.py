"""radio.args: a checkpoint's args -> RadioConfig (token counts, summary indices, teachers, release)."""

import copy

import pytest
import torch

from ckpt_writer import make_checkpoint

from radio.args import args_as_loaded, config_from_args, release_info
from radio.checkpoint import CheckpointError
from radio.config import ReleaseInfo
from radio.versions import VERSIONS

TEACHERS = [{"name": "clip", "type": "open_clip", "model": "ViT-B-16"},
            {"name": "dino_v2", "use_summary": True, "token_slot": 3},
            {"name": "sam", "use_summary": False},
            {"name": "clip", "type": "open_clip", "model": "other"}]


@pytest.mark.parametrize("per_teacher,register_multiple,num_registers,expected", [
    (True, 8, None, (3, 5, (0, 1))),     # 3 unique names, padded to 8, sam has no summary, dup clip skipped
    (True, 3, None, (3, 3, (0, 1))),     # already a multiple: a whole extra multiple (the original's rule)
    (True, None, 2, (3, 2, (0, 1))),     # cpe_num_registers wins
    (False, 4, None, (1, 3, (0,))),      # one shared summary token
])
def test_token_counts_and_summary_indices(per_teacher, register_multiple, num_registers, expected):
    args = make_checkpoint(None, teachers=TEACHERS, cls_token_per_teacher=per_teacher,
                           register_multiple=register_multiple, cpe_num_registers=num_registers).args
    cfg = config_from_args(args)
    assert (cfg.num_cls_tokens, cfg.num_registers, cfg.summary_idxs) == expected
    assert cfg.num_prefix_tokens == expected[0] + expected[1]


def test_teachers_token_slots_head_variants_and_text():
    args = make_checkpoint(None, teachers=TEACHERS, mlp_version="v2", spatial_mlp_version="v1").args
    cfg = config_from_args(args)
    clip, dino, sam = (cfg.teacher(n) for n in ("clip", "dino_v2", "sam"))
    assert (clip.index, clip.token_slot, clip.has_text) == (0, 0, True)
    assert (dino.token_slot, dino.has_text, sam.use_summary) == (3, False, False)
    assert (clip.summary_head, clip.feature_head) == ("v2", "v1")
    with pytest.raises(ValueError, match=r"Unknown adaptor 'siglip'.*\['clip', 'dino_v2', 'sam', 'clip'\]"):
        cfg.teacher("siglip")


def test_args_are_never_modified_and_load_time_edits_are_separate():
    args = make_checkpoint(None, spectral_reparam=True).args
    args.model_kwargs["weight_init"] = "jax"
    before = copy.deepcopy(vars(args))
    config_from_args(args)
    assert vars(args) == before
    loaded = args_as_loaded(args, is_ema=False)
    assert loaded.spectral_reparam is False and "weight_init" not in loaded.model_kwargs
    assert vars(args) == before  # a copy was edited
    ema = args_as_loaded(make_checkpoint(None, damp=True, spectral_heads=True).args, is_ema=True)
    assert (ema.spectral_reparam, ema.spectral_heads, ema.damp) == (False, False, None)


def test_release_info_overrides_and_file_release_match():
    rec = VERSIONS["radio_v2.5-g"]
    info = release_info(rec, max_resolution=1024, preferred_resolution=(448, 224))
    assert (info.name, info.patch_size, info.max_resolution) == ("radio_v2.5-g", 14, 1024)
    assert tuple(info.preferred_resolution) == (448, 224) and info.vitdet_num_global == 8
    assert release_info(None) == ReleaseInfo()
    args = make_checkpoint(None).args  # patch 16, width 32, depth 2
    with pytest.raises(CheckpointError, match=r"patch 16, width 32, depth 2\) does not match release 'radio_v2.5-g'"):
        config_from_args(args, named_release=rec)


def test_bad_args_are_checkpoint_errors():
    args = make_checkpoint(None).args
    bad = copy.copy(args)
    bad.cpe_max_size = None
    with pytest.raises(CheckpointError, match="cpe_max_size=None"):
        config_from_args(bad)
    bad = copy.copy(args)
    bad.dtype = "float16"
    with pytest.raises(CheckpointError, match="args.dtype must be a torch.dtype"):
        config_from_args(bad)
    bad = copy.copy(args)
    bad.teachers = [{"type": "x"}]
    with pytest.raises(CheckpointError, match=r"args.teachers\[0\]"):
        config_from_args(bad)


def test_dtype_and_final_norm():
    cfg = config_from_args(make_checkpoint(None, args_dtype=torch.bfloat16, model_norm=True).args)
    assert cfg.dtype == torch.bfloat16 and cfg.final_norm
    assert not config_from_args(make_checkpoint(None).args).final_norm
