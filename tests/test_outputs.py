"""radio.outputs: the public output types and the resolution rounding shared by the model and the tools."""

import subprocess
import sys

import pytest
import torch

from radio.outputs import FEATURE_FORMATS, RadioOutput, Resolution, check_feature_fmt, nearest_multiple, to_nchw


def test_resolution_is_a_named_height_width_pair():
    r = Resolution(224, 320)
    assert (r.height, r.width) == (224, 320) and tuple(r) == (224, 320)
    assert r == (224, 320) and r._fields == ("height", "width")
    h, w = r
    assert (h, w) == (224, 320)


def test_radio_output_fields_and_unpacking():
    s, f = torch.arange(6.0).view(2, 3), torch.arange(24.0).view(2, 4, 3)
    out = RadioOutput(s, f)
    assert out._fields == ("summary", "features")
    assert out.summary is s and out.features is f and out[0] is s and out[1] is f
    summary, features = out
    assert summary is s and features is f
    assert RadioOutput(summary=s, features=f) == out


@pytest.mark.parametrize("value,step,expected", [
    (40, 16, 32),     # 2.5 -> 2: halves round to even
    (56, 16, 64),     # 3.5 -> 4
    (24, 16, 32),     # 1.5 -> 2
    (8, 16, 16),      # 0.5 -> 0, clamped to one step
    (1, 16, 16),
    (0, 14, 14),
    (100, 14, 98),    # 7.14 -> 7
    (105, 14, 112),   # 7.5 -> 8
    (119, 14, 112),   # 8.5 -> 8
    (1000, 16, 992),  # 62.5 -> 62
    (47.9, 32, 32),   # 1.497 -> 1
])
def test_nearest_multiple_rounds_half_to_even(value, step, expected):
    got = nearest_multiple(value, step)
    assert got == expected and type(got) is int


def test_to_nchw_is_a_permuted_view_with_raster_order():
    b, h, w, c = 2, 3, 4, 5
    x = torch.randn(b, h * w, c)
    y = to_nchw(x, (h, w))
    assert y.shape == (b, c, h, w)
    assert y.data_ptr() == x.data_ptr() and not y.is_contiguous()  # a view, not a copy
    for bi in range(b):
        for r in range(h):
            for q in range(w):
                assert torch.equal(y[bi, :, r, q], x[bi, r * w + q])


def test_check_feature_fmt():
    assert FEATURE_FORMATS == ("NLC", "NCHW")
    for fmt in FEATURE_FORMATS:
        assert check_feature_fmt(fmt) is None
    with pytest.raises(ValueError, match=r"Unsupported feature format 'NHWC'; use one of 'NLC', 'NCHW'"):
        check_feature_fmt("NHWC")
    with pytest.raises(ValueError, match="'nlc'"):
        check_feature_fmt("nlc")


def test_module_does_not_import_torch():
    code = "import sys, radio.outputs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
