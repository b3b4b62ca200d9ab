"""PCA pictures of dense features, against a numpy SVD."""

import numpy as np
import torch
from PIL import Image

from radio.tools.visualization import pca_components, pca_rgb, side_by_side


def _features(d=8, h=5, w=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, h, w, generator=g) * torch.linspace(3, 0.1, d)[:, None, None]


def test_pca_components_match_numpy_svd_up_to_sign():
    f = _features()
    comps = pca_components(f, 3).numpy().reshape(-1, 3)
    x = f.reshape(8, -1).T.double().numpy()
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    ref = x @ vt[:3].T
    for c in range(3):
        sign = np.sign(ref[np.abs(ref[:, c]).argmax(), c])  # the documented sign rule
        np.testing.assert_allclose(comps[:, c], sign * ref[:, c], rtol=1e-4, atol=1e-4)
        assert comps[np.abs(comps[:, c]).argmax(), c] > 0


def test_pca_components_pads_missing_components():
    comps = pca_components(torch.randn(2, 3, 3), 3)
    assert comps.shape == (3, 3, 3)
    assert torch.all(comps[..., 2] == 0)  # only 2 feature dimensions: the third component is zero


def test_pca_rgb_scales_between_percentiles():
    f = _features()
    pic = pca_rgb(f, low=0.0, high=1.0)
    assert pic.shape == (5, 7, 3) and pic.dtype == np.uint8
    assert (pic.reshape(-1, 3).min(0) == 0).all() and (pic.reshape(-1, 3).max(0) == 255).all()
    assert (pca_rgb(torch.ones(4, 2, 2)) == 128).all()  # constant features: mid grey, not NaN


def test_side_by_side_layout():
    img = Image.fromarray(np.full((6, 4, 3), 10, np.uint8))
    pic = np.zeros((2, 2, 3), np.uint8)
    pic[0, 1] = 255
    out = np.asarray(side_by_side(img, pic))
    assert out.shape == (6, 8, 3)
    assert (out[:, :4] == 10).all()
    assert (out[:3, 6:] == 255).all() and (out[:3, 4:6] == 0).all() and (out[3:, 4:] == 0).all()
