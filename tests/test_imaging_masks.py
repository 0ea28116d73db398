"""Soft circular windows, spheres and soft-edged volume masks."""

import numpy as np
import pytest
import torch

from cryoscape.imaging.masks import soft_circular_window, soft_edge_mask, sphere_mask


def test_soft_circular_window_profile():
    D = 64
    w = soft_circular_window(D, 0.5, 0.9).numpy()
    c = D // 2
    assert w[c, c] == 1.0 and w[c, c + 15] == 1.0  # r = 15 < 0.5 * 32
    assert w[c, c + 29] == 0.0 and w[0, 0] == 0.0  # r = 29 > 0.9 * 32 = 28.8
    r_mid = 0.7 * 32  # half-way between the radii: raised cosine = 0.5
    assert np.interp(r_mid, np.arange(32), w[c, c:]) == pytest.approx(0.5, abs=0.03)
    assert np.all(np.diff(w[c, c:]) <= 1e-7)
    np.testing.assert_allclose(w, w.T)


def test_sphere_mask_volume():
    m = sphere_mask(32, 10).numpy()
    assert m.shape == (32, 32, 32) and m[16, 16, 16] and not m[16, 16, 26] and m[16, 16, 25]
    assert m.sum() == pytest.approx(4 / 3 * np.pi * 10**3, rel=0.03)


def test_soft_edge_mask():
    binary = sphere_mask(32, 6).numpy()
    out = soft_edge_mask(binary, dilate_px=2, edge_px=4)
    assert out.dtype == np.float32
    c = 16
    # radius 5 is inside; 7 within dilation; 8.x on the edge; 13 beyond dilation + edge
    assert out[c, c, c + 5] == 1.0 and out[c, c, c + 7] == 1.0
    assert out[c, c, c + 13] == 0.0
    # radius 9: 4 px from the last inside voxel (r = 5), 2 px into the 4 px edge -> raised cosine 0.5
    assert out[c, c, c + 9] == pytest.approx(0.5, abs=1e-6)
    assert np.all(np.diff(out[c, c, c:]) <= 1e-7)
    t = soft_edge_mask(torch.as_tensor(binary), 2, 4)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), out)
    assert soft_edge_mask(np.zeros((8, 8, 8)), 2, 2).sum() == 0
