"""radio.layers.windows: ViTDet window partitioning (spec vitdet.md), and the choice of global blocks
(radio.config.vitdet_global_blocks) for the official release settings."""

import pytest
import torch

from radio.config import vitdet_global_blocks
from radio.layers.windows import window_partition, window_unpartition


def test_partition_order_matches_spec_formula():
    b, h, w, ws, d = 2, 4, 6, 2, 3
    x = torch.randn(b, h * w, d)
    win = window_partition(x, (h, w), ws)
    n_wr, n_wc = h // ws, w // ws
    assert win.shape == (b * n_wr * n_wc, ws * ws, d)
    for bi in range(b):
        for wy in range(n_wr):
            for wx in range(n_wc):
                for py in range(ws):
                    for px in range(ws):
                        raster = (wy * ws + py) * w + (wx * ws + px)
                        row = bi * n_wr * n_wc + wy * n_wc + wx
                        assert torch.equal(win[row, py * ws + px], x[bi, raster])


def test_unpartition_inverts_partition():
    x = torch.randn(3, 8 * 4, 5)
    assert torch.equal(window_unpartition(window_partition(x, (8, 4), 4), (8, 4), 4), x)


def test_partition_rejects_grid_not_multiple_of_window():
    with pytest.raises(ValueError, match="multiple"):
        window_partition(torch.randn(1, 15, 2), (3, 5), 2)


@pytest.mark.parametrize("depth,windowed,num_global,expected", [
    (12, None, 4, [2, 5, 8, 11]),
    (24, None, 4, [5, 11, 17, 23]),
    (32, None, 4, [7, 15, 23, 31]),
    (32, 5, None, [5, 11, 17, 23, 29, 31]),
    (32, None, 8, [3, 7, 11, 15, 19, 23, 27, 31]),
    (40, None, 8, [4, 9, 14, 19, 24, 29, 34, 39]),
    (27, None, None, [5, 11, 17, 23, 26]),
    (8, 1, None, [1, 3, 5, 7]),
])
def test_global_blocks_of_official_settings(depth, windowed, num_global, expected):
    assert vitdet_global_blocks(depth, windowed, num_global) == expected


@pytest.mark.parametrize("depth,windowed,num_global", [(4, None, 4), (8, 0, None), (2, None, None)])
def test_period_one_is_rejected(depth, windowed, num_global):
    with pytest.raises(ValueError, match="period of 1"):
        vitdet_global_blocks(depth, windowed, num_global)
