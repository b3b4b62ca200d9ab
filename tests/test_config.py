"""radio.config: the configuration a model carries, and the rules derived from it."""

import dataclasses

import pytest

from ckpt_writer import make_checkpoint

from radio.args import config_from_args
from radio.config import ReleaseInfo, check_vitdet_window_size, vitdet_global_blocks
from radio.outputs import Resolution


@pytest.fixture(scope="module")
def cfg():
    return config_from_args(make_checkpoint(None, depth=8, cpe_max_size=128).args)


def test_derived_sizes_follow_release_then_architecture(cfg):
    assert (cfg.patch_size, cfg.position_grid_size, cfg.max_resolution, cfg.min_resolution_step) == (16, 8, 128, 16)
    rel = dataclasses.replace(cfg, release=ReleaseInfo(name="x", patch_size=16, max_resolution=512,
                                                       preferred_resolution=Resolution(256, 256)))
    assert rel.max_resolution == 512
    assert dataclasses.replace(cfg, vitdet_window_size=2).min_resolution_step == 32


@pytest.mark.parametrize("depth,windowed,glob,expected", [
    (8, None, None, [1, 3, 5, 7]),       # default: period depth // 4
    (12, 5, None, [5, 11]),              # num_windowed=5: period 6
    (12, None, 2, [5, 11]),              # num_global=2: period 6
    (10, 2, None, [2, 5, 8, 9]),         # the last block is always global
])
def test_vitdet_global_blocks(depth, windowed, glob, expected):
    assert vitdet_global_blocks(depth, windowed, glob) == expected


def test_vitdet_checks(cfg):
    assert dataclasses.replace(cfg, vitdet_window_size=2).vitdet_global_blocks() == [1, 3, 5, 7]
    assert cfg.vitdet_global_blocks() == []
    with pytest.raises(ValueError, match="period of 1"):
        vitdet_global_blocks(4, num_windowed=0)
    with pytest.raises(TypeError, match="positive int"):
        check_vitdet_window_size("4", ReleaseInfo())
    with pytest.raises(ValueError, match="does not support ViTDet"):
        check_vitdet_window_size(4, ReleaseInfo(name="c-radio_v3-b", supports_vitdet=False))
    # a release's trained range bounds the window; a file's position table does not (larger inputs
    # interpolate it, and the original accepts any window)
    assert dataclasses.replace(cfg, vitdet_window_size=16).vitdet_global_blocks() == [1, 3, 5, 7]
    released = dataclasses.replace(cfg, vitdet_window_size=16,
                                   release=ReleaseInfo(name="x", patch_size=16, max_resolution=128))
    with pytest.raises(ValueError, match="above this model's max_resolution 128"):
        released.vitdet_global_blocks()
