"""radio.layers.conditioner: ``(x - mean) / std`` in float32, buffers that stay float32 under casts."""

import pytest
import torch

from radio.layers.conditioner import CLIP_MEAN, CLIP_STD, InputConditioner


def _stats(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 1, 1, generator=g) * 0.5 + 0.25, torch.rand(3, 1, 1, generator=g) * 0.2 + 0.2


def _loaded() -> InputConditioner:
    cond = InputConditioner()
    mean, std = _stats()
    cond.load_state_dict({"norm_mean": mean, "norm_std": std})
    return cond


def test_defaults_are_clip_statistics_as_float32_buffers():
    cond = InputConditioner()
    assert dict(cond.named_buffers()).keys() == {"norm_mean", "norm_std"}
    assert cond.norm_mean.dtype == cond.norm_std.dtype == torch.float32
    assert cond.norm_mean.shape == cond.norm_std.shape == (3, 1, 1)
    assert cond.norm_mean.flatten().tolist() == list(torch.tensor(CLIP_MEAN).tolist())
    assert cond.norm_std.flatten().tolist() == list(torch.tensor(CLIP_STD).tolist())


def test_float32_formula_per_channel():
    cond = _loaded()
    mean, std = _stats()
    x = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    y = cond(x)
    assert y.dtype == torch.float32
    for c in range(3):  # an independent per-channel loop
        expected = (x[:, c] - mean[c, 0, 0].item()) / std[c, 0, 0].item()
        torch.testing.assert_close(y[:, c], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("in_dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_is_standardized_in_float32(in_dtype):
    cond = _loaded()
    mean, std = _stats()
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2)).to(in_dtype)
    expected = (x.float() - mean) / std  # float32 arithmetic, not in_dtype arithmetic
    assert torch.equal(cond(x), expected)
    in_dtype_math = ((x - mean.to(in_dtype)) / std.to(in_dtype)).float()
    assert not torch.equal(in_dtype_math, expected)  # the test distinguishes the two


def test_float64_input_stays_float64():
    cond = _loaded()
    mean, std = _stats()
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = cond(x)
    assert y.dtype == torch.float64
    assert torch.equal(y, (x - mean.double()) / std.double())


@pytest.mark.parametrize("cast", ["half", "bfloat16", "to_fp16", "double"])
def test_buffers_stay_float32_after_module_casts(cast):
    cond = _loaded()
    before = (cond.norm_mean.clone(), cond.norm_std.clone())
    if cast == "to_fp16":
        cond.to(torch.float16)
    else:
        getattr(cond, cast)()
    assert cond.norm_mean.dtype == cond.norm_std.dtype == torch.float32
    assert torch.equal(cond.norm_mean, before[0]) and torch.equal(cond.norm_std, before[1])  # never rounded


def test_output_is_float32_whatever_the_module_cast():
    cond = _loaded().half()  # the model casts to its backbone's dtype; the conditioner never rounds
    mean, std = _stats()
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(cond(x), (x - mean) / std)


def test_model_cast_back_to_float32_standardizes_without_rounding(tmp_path):
    """A bf16 checkpoint cast with .float() computes in float32 end to end (no stale bf16 cast)."""
    from ckpt_writer import make_checkpoint

    from radio import radio_model

    make_checkpoint(tmp_path / "b.pth.tar", args_dtype=torch.bfloat16)
    model = radio_model(str(tmp_path / "b.pth.tar")).float()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    cond = model.input_conditioner
    assert torch.equal(model._condition(x), (x - cond.norm_mean) / cond.norm_std)


def test_meta_built_conditioner_takes_assigned_weights():
    with torch.device("meta"):
        cond = InputConditioner()
    assert cond.norm_mean.is_meta
    cond.half()  # casting a meta module must not fail or materialize
    mean, std = _stats()
    cond.load_state_dict({"norm_mean": mean, "norm_std": std}, assign=True)
    assert torch.equal(cond.norm_mean, mean) and cond.norm_mean.dtype == torch.float32
