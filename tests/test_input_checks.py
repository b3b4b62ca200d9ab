"""radio.input_checks: the shape checks and value warnings every forward path shares."""

import math
import warnings

import numpy as np
import pytest
import torch

from radio.input_checks import check_image_batch, check_image_values, is_tracing, nearest_supported_resolution


@pytest.mark.parametrize("h,w,step,cap,expected", [
    (100, 200, 16, None, (96, 192)),     # 12.5 patches: ties to even
    (1, 1, 16, None, (16, 16)),          # at least one step
    (3000, 50, 16, 256, (256, 48)),      # capped at the max
    (3000, 50, 32, 250, (224, 64)),      # the cap itself rounded down to the step
    (24, 24, 16, None, (32, 32)),        # ties to even, as Python's round
    (np.int64(100), np.float32(37.0), 16, None, (96, 32)),  # NumPy numbers (e.g. from an image's shape)
])
def test_nearest_supported_resolution(h, w, step, cap, expected):
    assert tuple(nearest_supported_resolution(h, w, step, cap)) == expected


@pytest.mark.parametrize("bad", [0, -5, math.nan, math.inf, True, "64"])
def test_nearest_supported_resolution_rejects(bad):
    with pytest.raises(ValueError, match="positive finite"):
        nearest_supported_resolution(bad, 64, 16)


@pytest.mark.parametrize("x,exc,match", [
    ([1.0], TypeError, "image tensor"),
    (torch.zeros(3, 32, 32), ValueError, "unsqueeze"),
    (torch.zeros(1, 4, 32, 32), ValueError, "3 \\(RGB\\) channels"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "/ 255"),
    (torch.zeros(1, 3, 0, 32), ValueError, "empty"),
    (torch.zeros(1, 3, 40, 32), ValueError, "nearest supported size is 32x32"),
])
def test_check_image_batch(x, exc, match):
    with pytest.raises(exc, match=match):
        check_image_batch(x, 16)


def test_values_warn_once_per_cause_and_nonfinite_names_images():
    warned = set()
    x = torch.rand(3, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_image_values(x * 1.02 - 0.01, standardizes=True, max_resolution=16, warned=warned)
        check_image_values(x * 255, standardizes=False, max_resolution=None, warned=warned)  # external preprocessing
    with pytest.warns(UserWarning, match="0-255"):
        check_image_values(x * 255, standardizes=True, max_resolution=None, warned=warned)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_image_values(x * 255, standardizes=True, max_resolution=None, warned=warned)  # once
    y = x.clone()
    y[2, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match=r"Images \[2\]"):
        check_image_values(y, standardizes=True, max_resolution=None, warned=warned)
    assert warned == {"scale"} and not is_tracing()


def test_values_of_an_input_that_requires_grad_raise_no_torch_warning():
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when a tensor that requires grad becomes a Python float
        check_image_values(x, standardizes=True, max_resolution=None, warned=set())
    with pytest.warns(UserWarning, match="0-255"):
        check_image_values(x * 255, standardizes=True, max_resolution=None, warned=set())


def test_the_suggested_size_is_what_the_models_helper_gives():
    """The error names get_nearest_supported_resolution(h, w), so it must suggest that helper's answer."""
    x = torch.zeros(1, 3, 2100, 20)
    with pytest.raises(ValueError, match="nearest supported size is 2048x16") as info:
        check_image_batch(x, 16, max_resolution=2048)
    assert tuple(nearest_supported_resolution(2100, 20, 16, 2048)) == (2048, 16)
    assert "get_nearest_supported_resolution(2100, 20)" in str(info.value)
