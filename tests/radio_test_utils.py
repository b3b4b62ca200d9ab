"""Helpers shared by the test modules (imported by name; ``conftest`` modules are pytest's, and
``tests/tools/conftest.py`` would shadow a plain ``from radio_test_utils import``)."""

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

#: ``shared/`` beside the repository, as the developers' machines and CI lay it out.
SHARED = Path(os.environ.get("RADIO_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))
CONFORMANCE_CASES = SHARED / "conformance" / "cases"


def require_shared(path: Path) -> None:
    """Skip when a fixture of ``../shared`` is absent, except in CI, where a missing fixture is a failure
    (a check that silently never runs in CI is worse than none)."""
    if path.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{path} is missing: CI must run with ../shared beside the repository")
    pytest.skip(f"{path} is not present")


def require_module(name: str) -> ModuleType:
    """Import an optional package (onnx, onnxruntime, open_clip, ...) and return it; skip the module when it
    is not installed, except in CI (environment ``CI`` set), where a missing package is a failure."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if os.environ.get("CI"):
            pytest.fail(f"the optional package {name} is not installed ({e}): CI must install every extra",
                        pytrace=False)
        pytest.skip(f"the optional package {name} is not installed", allow_module_level=True)


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    """Same shape and dtype, and ``||a - b|| / ||b|| <= tol`` (the conformance rule)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    a, b = actual.detach().double(), expected.detach().double()
    rel = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    assert rel <= tol, f"relative error {rel:.3e} > {tol}"


def all_tensors(obj) -> list:
    """Every tensor of a nested output (dicts, lists, tuples, NamedTuples), in order."""
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in all_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in all_tensors(v)]
    return []


def assert_outputs_close(actual, expected, tol: float = 1e-5) -> None:
    """Compare RadioOutput / dict outputs field by field."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and list(actual) == list(expected), (list(actual), list(expected))
        for k in expected:
            assert_outputs_close(actual[k], expected[k], tol)
        return
    assert hasattr(actual, "summary") and hasattr(actual, "features")
    assert_close_rel(actual.summary, expected.summary, tol)
    assert_close_rel(actual.features, expected.features, tol)


def assert_model_matches_reference(path, written, images, adaptor_names=("clip", "dino_v2", "sam")) -> None:
    """``radio_model(path)`` against the independent reference, NLC and NCHW, at two sizes."""
    from reference import ref_forward

    from radio import radio_model

    names = list(adaptor_names)
    model = radio_model(str(path), adaptor_names=names)
    assert not model.training
    ps = model.patch_size
    for h, w in [(4 * ps, 6 * ps), (3 * ps, 2 * ps)]:
        x = images(2, h, w)
        with torch.no_grad():
            out = model(x)
            out_nchw = model(x, feature_fmt="NCHW")
        assert_outputs_close(out, ref_forward(written.realized, written.args, x, adaptor_names=names))
        assert_outputs_close(out_nchw, ref_forward(written.realized, written.args, x, "NCHW", adaptor_names=names))
